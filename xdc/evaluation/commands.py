"""The evaluation commands of ``xdc``: ``extract``, ``linear-probe``, ``audio-probe``,
``retrieval`` and ``cluster-eval``.

Each ``add_*_parser(sub)`` registers one sub-command; each ``cmd_*`` function is what it runs,
typed and callable from Python, returning the exit code; ``EvalOptions`` holds the flags they
share (which encoders, which manifest, how many clips). Results are JSON files under ``RUN/eval/``
(or ``--out-dir``) and a table on stdout; with ``--json`` stdout carries only the JSON object.
Progress bars and notes go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from xdc.data.manifest import Manifest, read_manifest
from xdc.errors import ConfigError
from xdc.evaluation.encoders import EvalEncoders, load_eval_encoders, run_folder

DEFAULT_CLIPS = 10
DEFAULT_BN_CLIPS = 512


@dataclass(frozen=True)
class EvalOptions:
    """The flags every command that evaluates encoders shares.

    ``checkpoint``: a run folder, its checkpoint file, or ``random`` (then ``like`` or ``preset``
    give the architecture and ``seed`` the weights). ``data``: the manifest (default: the one the
    run trained on). ``clips`` per video; ``bn_clips`` training clips recompute BatchNorm.
    """

    checkpoint: str
    data: str | None = None
    like: str | None = None
    preset: str | None = None
    seed: int = 0
    overrides: Sequence[str] = ()
    clips: int = DEFAULT_CLIPS
    bn_clips: int = DEFAULT_BN_CLIPS
    batch_size: int | None = None
    device: str | None = None
    progress: bool = True

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> EvalOptions:
        """From the flags ``add_encoder_arguments`` defines."""
        names = [f.name for f in fields(cls) if f.name != "progress"]
        return cls(**{name: getattr(a, name) for name in names}, progress=not a.no_progress)

    def load(self) -> tuple[EvalEncoders, Manifest]:
        """Check the numbers, then load the encoders and the manifest (errors name the flag)."""
        if self.clips < 1:
            raise ConfigError(f"--clips {self.clips}: must be >= 1")
        if self.bn_clips < 0:
            raise ConfigError(f"--bn-clips {self.bn_clips}: must be >= 0 (0 = stored statistics)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be >= 1")
        source = load_eval_encoders(
            self.checkpoint, self.like, self.preset, self.overrides, self.seed
        )
        if self.data:
            return source, read_manifest(self.data)
        if source.data is None:
            raise ConfigError(
                f"--data: no manifest given and none recorded for --checkpoint {self.checkpoint}; "
                "pass --data MANIFEST"
            )
        return source, read_manifest(source.data)

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the ``evaluate_*`` functions: clips, BatchNorm, device."""
        names = ("clips", "bn_clips", "device", "progress", "batch_size")
        return {name: getattr(self, name) for name in names}


def results_dir(source: EvalEncoders, out_dir: str | None, as_json: bool) -> Path | None:
    """Where result files go: ``--out-dir``, else ``RUN/eval``; None = print only (random + --json)."""
    if out_dir:
        return Path(out_dir)
    if source.run_dir is not None:
        return source.run_dir / "eval"
    if as_json:
        return None
    raise ConfigError(
        "--out-dir: --checkpoint random has no run folder to write results to; "
        "pass --out-dir DIR (or --json to print the results only)"
    )


def jsonable(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null; tuples and numpy scalars plain values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if isinstance(value, Path) else value


def emit(result: dict[str, Any], folder: Path | None, name: str, as_json: bool, table: str) -> None:
    """Write ``folder/name`` atomically (when a folder is given); print the table or the JSON."""
    text = json.dumps(jsonable(result), indent=2, allow_nan=False)
    path = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(path)
    if as_json:
        print(text)
        return
    print(table)
    if path is not None:
        print(f"wrote {path}")


def format_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A title line and left-aligned columns; floats with 3 decimals, None/NaN as '-'."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [list(header)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([title, lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def describe(source: EvalEncoders) -> str:
    """``RUN`` or ``random encoders (like RUN, seed 0)`` for table titles."""
    if source.is_random:
        basis = f"like {source.like}" if source.like else f"preset {source.config.preset}"
        return f"random encoders ({basis}, seed {source.seed})"
    return source.checkpoint


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """The ``EvalOptions`` flags."""
    add = p.add_argument
    add("--checkpoint", required=True, help="run folder (or its checkpoint.pt), or 'random'")
    add("--data", default=None, help="manifest CSV (default: the one the run trained on)")
    add("--like", default=None, help="random only: copy the architecture of this run")
    add("--preset", default=None, help="random only: the architecture of a preset (tiny, ...)")
    add("--seed", type=int, default=0, help="random only: initialisation seed (default 0)")
    add("--clips", type=int, default=DEFAULT_CLIPS, help="uniformly spaced clips per video (10)")
    add(
        "--bn-clips",
        type=int,
        default=DEFAULT_BN_CLIPS,
        help="training clips that recompute BatchNorm statistics, for every encoder (512; 0 = off)",
    )
    add("--batch-size", type=int, default=None, help="clips per batch (default: the config's)")
    add("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    add("--no-progress", action="store_true", help="no progress bars")
    add("overrides", nargs="*", help="config overrides, e.g. data.num_workers=4 (random: model.*)")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (only) on stdout")
    p.add_argument("--out-dir", default=None, help="folder for the result JSON (default RUN/eval)")


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
    print(
        f"wrote {n_rows} x {dim} {modality} features ({n_videos} videos, {o.clips} clips each, "
        f"{how}) of {describe(source)} to {path}"
    )
    return 0


def add_extract_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="frozen-encoder features of a manifest's videos to an .npz file",
        description="Recompute BatchNorm statistics on training clips, then extract features of "
        "N uniformly spaced clips per video (averaged per video unless --keep-clips).",
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
    from xdc.evaluation.linear_probe import evaluate_linear_probe

    source, manifest = options.load()
    folder = results_dir(source, out_dir, as_json)
    r = evaluate_linear_probe(
        source, manifest, modality, train_split, test_split, **options.run_kwargs()
    )
    title = (
        f"linear probe of {describe(source)}: {train_split!r} -> {test_split!r}, "
        f"{options.clips} clips/video, video level ({r['seconds']:.1f} s)"
    )
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
    emit(r, folder, f"linear_probe_{modality}.json", as_json, format_table(title, header, [row]))
    return 0


def add_linear_probe_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "linear-probe",
        help="logistic regression on frozen features (video-level top-1/top-5)",
        description="BatchNorm recalibrated on training clips, features of N clips per video, "
        "StandardScaler + logistic regression with C cross-validated on the training split "
        "(grouped by video), tested by averaging clip probabilities per test video.",
    )
    add_encoder_arguments(p)
    add_output_arguments(p)
    p.add_argument("--modality", choices=("video", "audio"), default="video")
    p.add_argument("--train-split", default="train", help="split to train on (default train)")
    p.add_argument("--test-split", default="test", help="split to test on (default test)")
    p.set_defaults(
        run=lambda a: cmd_linear_probe(
            EvalOptions.from_args(a), a.modality, a.train_split, a.test_split, a.json, a.out_dir
        )
    )


def cmd_audio_probe(
    options: EvalOptions,
    folds_column: str = "fold",
    as_json: bool = False,
    out_dir: str | None = None,
) -> int:
    """k-fold audio classification (ESC-50 / DCASE style); writes ``audio_probe.json``."""
    from xdc.evaluation.audio_probe import audio_probe

    source, manifest = options.load()
    folder = results_dir(source, out_dir, as_json)
    r = audio_probe(source, manifest, folds_column, **options.run_kwargs())
    rows = [
        [f["fold"], f["top1"], f["top5"], f["n_train"], f["n_test"], f"{f['C']:g}"]
        for f in r["folds"]
    ]
    rows += [["mean", r["top1"], r["top5"]], ["std", r["top1_std"], r["top5_std"]]]
    rows = [row + [""] * (6 - len(row)) for row in rows]
    title = (
        f"audio probe of {describe(source)}: {r['n_folds']} folds ({folds_column!r}), "
        f"{options.clips} sub-clips per recording, BatchNorm per fold"
    )
    table = format_table(title, ["fold", "top-1", "top-5", "n_train", "n_test", "C"], rows)
    emit(r, folder, "audio_probe.json", as_json, table)
    return 0


def add_audio_probe_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audio-probe",
        help="k-fold linear classification of frozen audio features (ESC-50, DCASE)",
        description="Folds from a manifest column; per fold, BatchNorm recalibrated on the "
        "training recordings, features averaged over N sub-clips, logistic regression.",
    )
    add_encoder_arguments(p)
    add_output_arguments(p)
    p.add_argument("--folds-column", default="fold", help="manifest column with each row's fold")
    p.set_defaults(
        run=lambda a: cmd_audio_probe(EvalOptions.from_args(a), a.folds_column, a.json, a.out_dir)
    )


def cmd_retrieval(
    options: EvalOptions,
    train_split: str = "train",
    test_split: str = "test",
    as_json: bool = False,
    out_dir: str | None = None,
) -> int:
    """Video→video, audio→audio and audio↔video (CCA) recall@k; writes ``retrieval.json``."""
    from xdc.evaluation.retrieval import evaluate_retrieval

    source, manifest = options.load()
    folder = results_dir(source, out_dir, as_json)
    r = evaluate_retrieval(source, manifest, train_split, test_split, **options.run_kwargs())
    tasks = ("video_to_video", "audio_to_audio", "audio_to_video", "video_to_audio")
    rows = [
        [t.replace("_to_", " -> "), *[r[t][f"R@{k}"] for k in r["ks"]]] for t in tasks if t in r
    ]
    title = (
        f"retrieval of {describe(source)}: {test_split!r} queries against {train_split!r} by "
        f"cosine; cross-modal through CCA (d={r.get('cca_dim', '-')}) fitted on {train_split!r}"
    )
    table = format_table(title, ["query -> gallery", *[f"R@{k}" for k in r["ks"]]], rows)
    emit(r, folder, "retrieval.json", as_json, table)
    return 0


def add_retrieval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrieval",
        help="nearest-neighbour recall@1/5/10/20 within and across modalities",
        description="Test videos query the training videos by cosine similarity of clip-averaged "
        "features; a hit is a retrieved item of the query's class. Audio->video goes through a "
        "CCA fitted on the training split's paired features.",
    )
    add_encoder_arguments(p)
    add_output_arguments(p)
    p.add_argument("--train-split", default="train", help="gallery split (default train)")
    p.add_argument("--test-split", default="test", help="query split (default test)")
    p.set_defaults(
        run=lambda a: cmd_retrieval(
            EvalOptions.from_args(a), a.train_split, a.test_split, a.json, a.out_dir
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


def add_cluster_eval_parser(sub: argparse._SubParsersAction) -> None:
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
