"""The evaluation commands of ``xdc``: ``extract``, ``linear-probe``, ``audio-probe``,
``retrieval`` and ``cluster-eval``.

Each ``add_*_parser(sub)`` registers one sub-command; each ``cmd_*`` function is what it runs,
typed and callable from Python, returning the exit code; ``EvalOptions`` (``cli_shared``) holds the
flags they share (which encoders, which manifest, how many clips). Results are JSON files under
``RUN/eval/`` (or ``--out-dir``) and a table on stdout; with ``--json`` stdout carries only the JSON
object. Progress bars and notes go to stderr.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from xdc.errors import ConfigError
from xdc.evaluation.cli_shared import (
    EvalOptions,
    Subcommands,
    add_encoder_arguments,
    add_output_arguments,
    add_protocol_parser,
    add_split_arguments,
    describe,
    emit,
    format_table,
    load_with_folder,
)
from xdc.evaluation.encoders import run_folder
from xdc.evaluation.protocol import unreadable_line
from xdc.progress import inform


def cmd_extract(
    options: EvalOptions,
    output: str,
    modality: str = "video",
    split: str | None = None,
    keep_clips: bool = False,
    bn_split: str | None = "train",
) -> int:
    """Frozen-encoder features of the videos of a manifest (split) to an ``.npz`` file."""
    from xdc.evaluation.extract import clip_features_to_npz, extract_splits

    o = options
    source, manifest = o.load()
    split = split or None
    found = extract_splits(
        source, manifest, [split], (modality,), bn_split=bn_split or None, **o.run_kwargs()
    )
    feats = found[split][modality]
    meta = {
        "checkpoint": o.checkpoint,
        "modality": modality,
        "split": split or "",
        "clips": o.clips,
        "data": manifest.source,
        "seed": o.seed if source.is_random else "",
    }
    path = clip_features_to_npz(output, feats, modality, manifest, keep_clips, meta)
    n_videos = len(set(feats.rows.tolist()))
    n_rows = len(feats.rows) if keep_clips else n_videos
    how = "kept" if keep_clips else "averaged"
    dim = feats.features[modality].shape[1]
    inform(
        f"wrote {n_rows} x {dim} {modality} features ({n_videos} videos, {o.clips} clips each, "
        f"{how}) of {describe(source)} to {path}"
    )
    return 0


def add_extract_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "extract",
        help="frozen-encoder features of a manifest's videos to an .npz file",
        description="Features of N uniformly spaced clips per video (averaged per video unless "
        "--keep-clips); BatchNorm statistics as --bn-statistics says (a trained encoder's stored "
        "ones; recomputed on --bn-split clips for random init).",
    )
    add_encoder_arguments(p)
    p.add_argument("--modality", choices=("video", "audio"), default="video")
    p.add_argument("-o", "--output", required=True, help="the .npz file to write")
    p.add_argument("--split", default=None, help="only the rows of this split (default: all)")
    p.add_argument("--keep-clips", action="store_true", help="one row per clip, not per video")
    p.add_argument("--bn-split", default="train", help="BatchNorm statistics from ('' = all rows)")
    p.set_defaults(
        run=lambda a: cmd_extract(
            EvalOptions.from_args(a), a.output, a.modality, a.split, a.keep_clips, a.bn_split
        )
    )


def cmd_linear_probe(
    options: EvalOptions,
    modality: str = "video",
    train_split: str = "train",
    test_split: str = "test",
    as_json: bool = False,
    out_dir: str | None = None,
) -> int:
    """Linear probe of one encoder; writes ``linear_probe_<modality>.json``."""
    from xdc.evaluation.linear_probe import evaluate_linear_probe, fit_gap_note

    source, manifest, folder = load_with_folder(options, out_dir, as_json)
    r = evaluate_linear_probe(
        source, manifest, modality, train_split, test_split, **options.run_kwargs()
    )
    title = (
        f"linear probe of {describe(source)}: {train_split!r} -> {test_split!r}, "
        f"{options.clips} clips/video, video level ({r['seconds']:.1f} s)"
    )
    if r.get("multi_label"):
        table = multilabel_probe_table(title, modality, r)
    else:
        header = ["modality", "top-1", "top-5", "top-1 clip", "n_train", "n_test", "C", "dim"]
        row = [
            modality,
            r["top1"],
            r["top5"],
            r["top1_clip"],
            r["n_train"],
            r["n_test"],
            f"{r['C']:g}",
            r["feature_dim"],
        ]
        table = format_table(title, header, [row])
    table += "\n" + statistics_line(r["bn_statistics"])
    table += "\n" + unreadable_line(r["unreadable_test_videos"], r["n_test_official"])
    emit(r, folder, f"linear_probe_{modality}.json", as_json, table)
    note = fit_gap_note(r, test_split)
    if note:  # on stderr, so that --json users see it too
        print(note, file=sys.stderr, flush=True)
    return 0


def multilabel_probe_table(title: str, modality: str, r: dict[str, Any]) -> str:
    """The table of a one-vs-rest probe (rows with several labels): mAP at video and clip level,
    hit@1 (one of a video's labels ranked first), and the classes with a positive test video."""
    header = ["modality", "mAP", "mAP clip", "hit@1", "n_train", "n_test"]
    header += ["classes scored", "C", "dim"]
    row = [
        modality,
        r["mAP"],
        r["mAP_clip"],
        r["top1"],
        r["n_train"],
        r["n_test"],
        f"{r['n_classes_scored']} of {r['n_classes']}",
        f"{r['C']:g}",
        r["feature_dim"],
    ]
    title = title.replace("linear probe", "linear probe (one-vs-rest, multi-label)", 1)
    return format_table(title, header, [row])


def statistics_line(statistics: dict[str, object]) -> str:
    """The line under a result table that says which BatchNorm statistics were used."""
    used = "; ".join(f"{m} {v}" for m, v in statistics.items() if m != "policy")
    return f"BatchNorm statistics ({statistics.get('policy')}): {used}"


def add_linear_probe_parser(sub: Subcommands) -> None:
    p = add_protocol_parser(
        sub,
        "linear-probe",
        help="logistic regression on frozen features (video-level top-1/top-5; mAP when rows "
        "carry several labels)",
        description="Features of N clips per video (BatchNorm statistics per --bn-statistics), "
        "StandardScaler + logistic regression with C cross-validated on the training split "
        "(grouped by video, or by the manifest's 'group' column), tested by averaging clip "
        "probabilities per test video; an unreadable test video counts as wrong. A manifest "
        "whose rows carry several labels (';'-joined, AudioSet) is probed one-vs-rest and "
        "scored by mAP (mean over classes of the test videos' average precision). A warning "
        "goes to stderr when the cross-validated top-1 on the training videos is 25 points or "
        "more above the test top-1: an encoder that memorised the videos it was pretrained on.",
    )
    p.add_argument("--modality", choices=("video", "audio"), default="video")
    add_split_arguments(p, "split to train on", "split to test on")
    p.set_defaults(
        run=lambda a: cmd_linear_probe(
            EvalOptions.from_args(a), a.modality, a.train_split, a.test_split, a.json, a.out_dir
        )
    )


def cmd_audio_probe(
    options: EvalOptions,
    folds_column: str | None = None,
    as_json: bool = False,
    out_dir: str | None = None,
    protocol: str = "standard",
    benchmark: str | None = None,
    window_sec: float | None = None,
) -> int:
    """Audio classification over folds or an official split (ESC-50, DCASE2014); writes
    ``audio_probe.json``. ``benchmark`` (esc50, dcase2014) gives the folds column and the windows
    per recording unless ``folds_column`` / ``options.clips`` say otherwise."""
    from xdc.evaluation.audio_probe import AUDIO_BENCHMARKS, WINDOW_SEC, audio_probe

    preset: dict[str, Any] = {"folds_column": "fold", "windows": 10}
    if benchmark:
        if benchmark not in AUDIO_BENCHMARKS:
            raise ConfigError(f"--benchmark {benchmark!r}: choose {' or '.join(AUDIO_BENCHMARKS)}")
        preset = AUDIO_BENCHMARKS[benchmark]
    if options.clips is None:
        options = dataclasses.replace(options, clips=preset["windows"])
    folds_column = folds_column or preset["folds_column"]
    source, manifest, folder = load_with_folder(options, out_dir, as_json)
    r = audio_probe(
        source,
        manifest,
        folds_column,
        protocol=protocol,
        window_sec=WINDOW_SEC if window_sec is None else window_sec,
        **options.run_kwargs(),
    )
    rows = [
        [
            f["fold"],
            f["top1"],
            f["top5"],
            f["n_train"],
            f["n_test"],
            f["unreadable_test_videos"],
            f"{f['C']:g}",
        ]
        for f in r["folds"]
    ]
    rows += [["mean", r["top1"], r["top5"]], ["std", r["top1_std"], r["top5_std"]]]
    rows = [row + [""] * (7 - len(row)) for row in rows]
    how = (
        f"{r['windows']} windows of {r['window_sec']:g} s per recording averaged into one vector"
        if protocol == "xdc-pooled"
        else f"trained on {r['windows']} windows of {r['window_sec']:g} s per recording, "
        "probabilities averaged per recording"
    )
    title = f"audio probe ({protocol}) of {describe(source)}: {r['evaluation']}, {how}"
    header = ["fold", "top-1", "top-5", "n_train", "n_test", "unreadable", "C"]
    table = format_table(title, header, rows)
    table += "\n" + statistics_line(r["bn_statistics"])
    table += "\n" + unreadable_line(r["unreadable_test_videos"], r["n_test_official"])
    lacking = r["without_modality"]["count"]
    if lacking:
        table += f"\nrows without an audio track: {lacking}, in no training or test set"
    emit(r, folder, "audio_probe.json", as_json, table)
    return 0


def add_audio_probe_parser(sub: Subcommands) -> None:
    from xdc.evaluation.audio_probe import AUDIO_BENCHMARKS, AUDIO_PROTOCOLS

    p = add_protocol_parser(
        sub,
        "audio-probe",
        help="linear classification of frozen audio features over folds or an official split "
        "(ESC-50, DCASE2014)",
        description="Folds from a manifest column, or its one official train/test split (DCASE). "
        "--protocol standard (default; AVTS as AVID-CMA and GDT run it): 2-s windows (--clips "
        "per recording: 10, or 60 with --benchmark dcase2014), the classifier trained on window "
        "features, probabilities averaged per recording. --protocol xdc-pooled (xdc's own): "
        "windows of the run's clip length averaged into one vector per recording. BatchNorm "
        "statistics per --bn-statistics (when recomputed, per fold on its training recordings); "
        "inner cross-validation grouped by recording or the 'group' column; an unreadable test "
        "recording counts as wrong; a row without audio is in no set (counted).",
        clips_help="windows per recording (10; with --benchmark dcase2014: 60)",
    )
    p.add_argument(
        "--folds-column",
        default=None,
        help="manifest column with each row's fold (default fold; dcase2014: split); a column "
        "holding train and test is one official split: train on train, test on test",
    )
    p.add_argument(
        "--protocol",
        choices=AUDIO_PROTOCOLS,
        default="standard",
        help="standard (default: window features, scores averaged per recording) or xdc-pooled",
    )
    p.add_argument(
        "--benchmark",
        choices=tuple(AUDIO_BENCHMARKS),
        default=None,
        help="esc50 (folds column fold, 10 windows) or dcase2014 (official split column split, "
        "60 windows per recording)",
    )
    p.add_argument(
        "--window-sec",
        type=float,
        default=None,
        help="standard: window length in seconds (2)",
    )
    p.set_defaults(
        clips=None,
        run=lambda a: cmd_audio_probe(
            EvalOptions.from_args(a),
            a.folds_column,
            a.json,
            a.out_dir,
            a.protocol,
            a.benchmark,
            a.window_sec,
        ),
    )


def cmd_retrieval(
    options: EvalOptions,
    train_split: str = "train",
    test_split: str = "test",
    as_json: bool = False,
    out_dir: str | None = None,
    protocol: str = "xdc",
) -> int:
    """Recall@k in the named protocol (``xdc``: video→video, audio→audio and audio↔video through
    CCA; ``selavi``: video→video as SeLaVi); writes ``retrieval.json`` (``retrieval_<protocol>.json``
    for protocols other than ``xdc``)."""
    from xdc.evaluation.retrieval import evaluate_retrieval, retrieval_protocol

    retrieval_protocol(protocol)  # an unknown name fails before any work
    source, manifest, folder = load_with_folder(options, out_dir, as_json)
    r = evaluate_retrieval(
        source, manifest, train_split, test_split, protocol=protocol, **options.run_kwargs()
    )
    tasks = ("video_to_video", "audio_to_audio", "audio_to_video", "video_to_audio")
    rows = [
        [t.replace("_to_", " -> "), *[r[t][f"R@{k}"] for k in r["ks"]]] for t in tasks if t in r
    ]
    how = f"{r['distance']}, {r['normalisation']}"
    if "cca_dim" in r:
        how += f"; cross-modal (xdc's own) through CCA (d={r['cca_dim']}) fitted on {train_split!r}"
    title = (
        f"retrieval ({r['protocol']} protocol) of {describe(source)}: {test_split!r} queries "
        f"against {train_split!r} by {how}"
    )
    table = format_table(title, ["query -> gallery", *[f"R@{k}" for k in r["ks"]]], rows)
    table += "\n" + statistics_line(r["bn_statistics"])
    table += "\n" + unreadable_line(r["unreadable_test_videos"], r["n_test_official"])
    table += " (a miss at every k)"
    name = "retrieval.json" if protocol == "xdc" else f"retrieval_{protocol}.json"
    emit(r, folder, name, as_json, table)
    return 0


def add_retrieval_parser(sub: Subcommands) -> None:
    from xdc.evaluation.retrieval import PROTOCOLS

    p = add_protocol_parser(
        sub,
        "retrieval",
        help="nearest-neighbour recall@k within and across modalities (xdc's or SeLaVi's protocol)",
        description="Test videos query the training videos; a hit is one of the k nearest of the "
        "query's class; an unreadable test video is a miss. --protocol xdc (default, xdc's own): "
        "clip-averaged pooled features, cosine, R@1/5/10/20, video->video, audio->audio, and "
        "audio<->video through a CCA fitted on the training split's paired features. "
        "--protocol selavi (Asano et al., NeurIPS 2020): video->video on conv5 maps max-pooled "
        "2x2x2, L2 per clip, averaged per video, Euclidean, R@1/5/10/20/50.",
    )
    add_split_arguments(p, "gallery split", "query split")
    p.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="xdc",
        help="xdc (default; xdc's own) or selavi (SeLaVi's video retrieval); result in "
        "retrieval.json (xdc) or retrieval_selavi.json",
    )
    p.set_defaults(
        run=lambda a: cmd_retrieval(
            EvalOptions.from_args(a), a.train_split, a.test_split, a.json, a.out_dir, a.protocol
        )
    )


def cmd_cluster_eval(run: str, as_json: bool = False, out_dir: str | None = None) -> int:
    """NMI / ARI / purity of every clustering of a run; writes ``clusters.json``."""
    from xdc.evaluation.cluster_eval import cluster_evaluation

    r = cluster_evaluation(run)
    keys = ("clustering", "iteration", "k", "nmi", "nmi_chance", "ari", "purity", "n_empty")
    rows = [[e[key] for key in keys] for e in r["iterations"]]
    rows += [[e["clustering"], "final", *[e[key] for key in keys[2:]]] for e in r["final"]]
    header = ["clustering", "iteration", "K", "NMI", "NMI chance", "ARI", "purity", "empty"]
    title = f"clusters of {run} against the labels of {r['data']} (split {r['split']!r})"
    folder = Path(out_dir) if out_dir else run_folder(run) / "eval"
    emit(r, folder, "clusters.json", as_json, format_table(title, header, rows))
    return 0


def add_cluster_eval_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "cluster-eval",
        help="NMI, ARI and purity of a run's clusterings against the labels (with chance NMI)",
    )
    p.add_argument("run_dir", metavar="RUN", help="run folder made by `xdc pretrain`")
    add_output_arguments(p)
    p.set_defaults(run=lambda a: cmd_cluster_eval(a.run_dir, a.json, a.out_dir))


EVALUATION_COMMANDS = [
    add_extract_parser,
    add_linear_probe_parser,
    add_audio_probe_parser,
    add_retrieval_parser,
    add_cluster_eval_parser,
]
"""Every registration function of this module, in the order ``xdc --help`` should list them."""
