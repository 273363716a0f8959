"""The checks at the top of the run report (``xdc.evaluation.report``): the warnings the run logged
(``xdc.diagnostics``), and each trained encoder against a randomly initialised one of the same
architecture.

The comparison runs when the manifest has labels and a train and a val (else test) split: a linear
probe (``probe_clip_features``) on the frozen features (``extract_splits``) of the run's encoders
and of ``load_eval_encoders("random", like=RUN, seed=train.seed)``, on at most
``MAX_VIDEOS`` labelled videos per split and ``CLIPS`` clip per video, the trained encoders with
their stored BatchNorm statistics and the random ones with statistics recomputed on at most one clip
per training video (and no more than the run's ``cluster.bn_recalibration_clips``) — the
``--bn-statistics auto`` rule of every frozen-feature protocol; a quick sanity check, not the full protocol of ``xdc linear-probe``. Its result is cached in ``RUN/eval/CACHE_NAME``, keyed
by the checkpoint's position and these settings, so re-writing the report is cheap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xdc import atomic, seeds
from xdc.data.manifest import Manifest, read_manifest
from xdc.diagnostics import heldout_margin, not_clearly_above, read_warnings
from xdc.errors import DataError, XdcError
from xdc.evaluation.encoders import RANDOM, load_eval_encoders
from xdc.evaluation.extract import extract_splits
from xdc.evaluation.linear_probe import ADVICE_FIT_GAP, fit_gap, probe_clip_features
from xdc.evaluation.report_plots import esc, grid_table
from xdc.methods import MODALITIES
from xdc.runlog import read_metrics


class RunContents(Protocol):
    """What this module reads of the report's ``RunContents`` (a protocol, so that this module
    does not import the report, which imports it)."""

    run: Path
    config: Any
    manifest: Manifest
    meta: dict[str, Any]


CACHE_NAME = "random_init_check.json"
CLIPS = 1
MAX_VIDEOS = {"train": 1000, "test": 500}
TEST_SPLITS = ("val", "validation", "test")
"""Where the probe is scored: the validation split when there is one (the test split stays for
final numbers, as in ``xdc demo``), else the test split."""
PROTOCOL = "report_random_init_check/2"  # 2: cv_top1 stored too
ADVICE_RANDOM = (
    "pretraining did not make this encoder better than its initialisation for these labels: see "
    "the run's warnings above, try the supervised upper bound (--method supervised) to check the "
    "architecture can learn this data, more iterations (train.iterations) or a smaller cluster.k"
)


def random_init_check(
    contents: RunContents, device: str | None, progress: bool
) -> dict[str, Any] | None:
    """Linear-probe top-1 of the trained and of random-init encoders (see the module docstring),
    from the cache when its key matches; ``{"skipped": reason}`` when the manifest cannot tell,
    None when there is no manifest source to read."""
    source = contents.manifest.source
    if source is None:
        return None
    manifest = read_manifest(source)
    splits = _splits(manifest)
    if isinstance(splits, str):
        return {"skipped": splits}
    train_split, test_split = splits
    loop = contents.meta.get("loop", {})
    key = {
        "protocol": PROTOCOL,
        "step": int(loop.get("step", 0)),
        "iteration": int(loop.get("iteration", 0)),
        "manifest": str(Path(source).resolve()),
        "splits": [train_split, test_split],
        "clips": CLIPS,
        "max_videos": [MAX_VIDEOS["train"], MAX_VIDEOS["test"]],
        "seed": contents.config.train.seed,
        "bn_statistics": "auto",
    }
    cache = contents.run / "eval" / CACHE_NAME
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("key") == key:
                return cached
        except (OSError, json.JSONDecodeError):
            pass
    subset = _sampled(manifest, train_split, test_split, contents.config.train.seed)
    try:
        result = _probe(contents, subset, train_split, test_split, device, progress)
    except XdcError as err:  # e.g. no decodable video in a split: say so, keep the report
        return {"skipped": f"the linear probe failed: {err}"}
    result["key"] = key
    atomic.write_json(cache, result)
    return result


def _splits(manifest: Manifest) -> tuple[str, str] | str:
    """(train split, test split) of labelled rows, or why the check cannot run."""
    labelled = {r.get("split", "") for r in manifest.rows if r.get("label", "")}
    test = next((s for s in TEST_SPLITS if s in labelled), None)
    if "train" not in labelled or test is None:
        return (
            "the manifest needs labelled rows in a 'train' split and a 'val' (or 'test') split "
            f"(labelled splits present: {', '.join(sorted(repr(s) for s in labelled)) or 'none'})"
        )
    return "train", test


def _sampled(manifest: Manifest, train: str, test: str, seed: int) -> Manifest:
    """The labelled rows of both splits, at most ``MAX_VIDEOS`` of each (a seeded sample)."""
    rng = seeds.rng(seed, "report_sample")
    keep: list[int] = []
    for split, cap in ((train, MAX_VIDEOS["train"]), (test, MAX_VIDEOS["test"])):
        rows = [
            i
            for i, r in enumerate(manifest.rows)
            if r.get("split", "") == split and r.get("label", "")
        ]
        if len(rows) > cap:
            rows = sorted(rng.choice(rows, cap, replace=False).tolist())
        keep.extend(rows)
    return manifest.subset(sorted(keep))


def _probe(
    contents: RunContents,
    manifest: Manifest,
    train: str,
    test: str,
    device: str | None,
    progress: bool,
) -> dict[str, Any]:
    run = str(contents.run)
    sources = {
        "trained": load_eval_encoders(run),
        "random": load_eval_encoders(RANDOM, like=run, seed=contents.config.train.seed),
    }
    top1: dict[str, dict[str, float]] = {m: {} for m in MODALITIES}
    cv_top1: dict[str, dict[str, float]] = {m: {} for m in MODALITIES}
    n_test: dict[str, int] = {}
    skipped: dict[str, str] = {}
    test_labels = np.asarray([manifest.label(i) for i, r in enumerate(manifest.rows)])
    n_train = sum(r.get("split", "") == train for r in manifest.rows)
    # BatchNorm statistics on at most one clip per training video, and no more than the run used.
    bn_clips = min(contents.config.cluster.bn_recalibration_clips, n_train)
    for name, source in sources.items():
        feats = extract_splits(
            source,
            manifest,
            [train, test],
            MODALITIES,
            clips=CLIPS,
            bn_clips=bn_clips,
            device=device,
            progress=progress,
        )
        for m in MODALITIES:
            try:
                probe = probe_clip_features(
                    feats[train][m], feats[test][m], m, manifest.label_names
                )
            except DataError as err:
                skipped[m] = str(err)
                continue
            top1[m][name] = float(probe["top1"])
            if probe.get("cv_top1") is not None:
                cv_top1[m][name] = float(probe["cv_top1"])
            n_test[m] = int(probe["n_test"])
    test_rows = [i for i, r in enumerate(manifest.rows) if r.get("split", "") == test]
    counts = np.bincount(test_labels[test_rows])
    return {
        "protocol": "linear probe (report check)",
        "train_split": train,
        "test_split": test,
        "clips_per_video": CLIPS,
        "n_train_videos": n_train,
        "bn_clips": bn_clips,
        "bn_statistics": "auto: stored for the trained encoders, recomputed for random init",
        "n_test_videos": n_test,
        "chance_top1": float(counts.max() / counts.sum()),
        "top1": {m: v for m, v in top1.items() if v},
        "cv_top1": {m: v for m, v in cv_top1.items() if v},
        "skipped": skipped,
    }


def random_init_warnings(check: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A warning per trained encoder whose top-1 is not above its random init's, or not clearly
    above it (``not_clearly_above``: the margin of the held-out rule) when the test set can tell."""
    if not check or "top1" not in check:
        return []
    out = []
    for m, v in check["top1"].items():
        trained, random = v.get("trained"), v.get("random")
        n = int(check.get("n_test_videos", {}).get(m, 0))
        if trained is None or random is None:
            continue
        verdict = not_clearly_above(trained, random, n)
        if verdict or trained <= random:
            out.append(
                {
                    "iteration": None,
                    "code": "not_above_random_init",
                    "subject": m,
                    "message": (
                        f"the trained {m} encoder is not {'' if trained <= random else 'clearly '}"
                        "above its random init on a linear probe "
                        f"(top-1 {100 * trained:.1f}% vs {100 * random:.1f}%, margin "
                        f"{100 * heldout_margin(random, n):.1f} points, {n} test videos)"
                    ),
                    "advice": ADVICE_RANDOM,
                }
            )
    return out


def fit_gap_warnings(check: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A warning per trained encoder whose probe fits the training videos far better than the
    videos it is scored on (``fit_gap``): what a network that memorised its training videos
    gives."""
    if not check:
        return []
    out = []
    for m, v in (check.get("cv_top1") or {}).items():
        top1 = check["top1"].get(m, {}).get("trained")
        said = None if top1 is None else fit_gap(v.get("trained"), top1, check["test_split"])
        if said:
            out.append(
                {
                    "iteration": None,
                    "code": "memorised_training_videos",
                    "subject": m,
                    "message": f"trained {m} encoder: {said}",
                    "advice": ADVICE_FIT_GAP,
                }
            )
    return out


def warnings_html(run: Path, extra: list[dict[str, Any]]) -> str:
    """Every warning of the run (RUN/warnings.json) and of this report, or a clear 'no warnings'."""
    items = [*read_warnings(run), *extra]
    parts = ['<section id="warnings"><h2>Warnings</h2>']
    if not items:
        checked = any("effective_rank" in r for r in read_metrics(run, "cluster"))
        note = "" if checked else " (this run may predate the diagnostics: see RUN/metrics.jsonl)"
        parts.append(f'<p class="ok">no warnings: training found nothing wrong{note}.</p>')
        return "".join(parts) + "</section>"
    parts.append(
        f"<p>{len(items)} warning(s), from the training loop (RUN/warnings.json) and this report; "
        'the rules are in the README (Runs: resume, logs, many GPUs).</p><ul class="warnings">'
    )
    for w in items:
        it = w.get("iteration")
        where = f"iteration {int(it) + 1}" if isinstance(it, int) else "report"
        parts.append(
            f'<li><b>{esc(where)}</b> <span class="tag">{esc(str(w.get("code")))}</span> '
            f"{esc(str(w.get('subject')))}: {esc(str(w.get('message')))}."
            f"<br><i>{esc(_sentence(str(w.get('advice', ''))))}</i></li>"
        )
    return "".join(parts) + "</ul></section>"


def random_init_html(check: dict[str, Any] | None, warnings: list[dict[str, Any]]) -> str:
    """The table video/audio × trained / random init / chance (linear-probe top-1 %)."""
    head = '<section id="random-init"><h2>Trained vs random init</h2>'
    if check is None:
        return head + '<p class="note">no manifest to probe with</p></section>'
    if "skipped" in check and "top1" not in check:
        return head + f'<p class="note">not compared: {esc(str(check["skipped"]))}</p></section>'
    rows = []
    flagged = {w["subject"] for w in warnings if w["code"] == "not_above_random_init"}
    for m in MODALITIES:
        v = check["top1"].get(m)
        if v is None:
            reason = check.get("skipped", {}).get(m, "no features")
            rows.append([m, "—", "—", _pct(check["chance_top1"]), esc(f"skipped: {reason}")])
            continue
        verdict = "not clearly above its random init" if m in flagged else "above its random init"
        rows.append(
            [m, _pct(v.get("trained")), _pct(v.get("random")), _pct(check["chance_top1"]), verdict]
        )
    n_test = ", ".join(f"{m} {n}" for m, n in check.get("n_test_videos", {}).items())
    return (
        head + f"<p>Linear probe, top-1 % on the {esc(check['test_split'])} split ({n_test} "
        f"videos; trained on {check['n_train_videos']} {esc(check['train_split'])} videos, "
        f"{check['clips_per_video']} clip each): the run's encoders, randomly initialised "
        "encoders of the same architecture, and the majority-class rate. A quick check: "
        "<code>xdc linear-probe RUN</code> runs the full protocol.</p>"
        + grid_table(rows, ["encoder", "trained", "random init", "chance", ""])
        + "</section>"
    )


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("." if text and not text.endswith(".") else "")


def _pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"
