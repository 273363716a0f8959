"""Audio classification with frozen audio features (ESC-50, DCASE2014): k-fold over a fold column,
or one official train/test split.

Folds come from a manifest column (ESC-50's ``fold`` = 1…5). For each fold in turn, the
recordings of that fold are the test set and all the others the training set. A column whose
values include ``train`` and ``test`` (DCASE2014's one official split, e.g. ``--folds-column
split``) is an official split, not folds: the classifier trains on the ``train`` rows only and is
tested once on the ``test`` rows (other values, e.g. ``val``, are not used) — k-fold over it would
train on the test set.

Two protocols (``--protocol``; ``AUDIO_PROTOCOLS``):

- ``standard`` (the default): each recording is cut into ``windows`` uniformly spaced windows of
  ``window_sec`` seconds (2 s; ``--benchmark esc50``: 10 per 5-s recording, ``dcase2014``: 60 per
  30-s recording); the classifier trains on one feature per window and a test recording is
  classified from its windows' class probabilities averaged — the recipe of AVTS (Korbar et al.,
  NeurIPS 2018), as AVID-CMA (configs/benchmark/esc50|dcase/audio-svm.yaml, eval-snd-recg-svm.py)
  and GDT (datasets/ESC50.py, DCASE2014.py) implement it.
- ``xdc-pooled`` (xdc's earlier mode): ``windows`` windows of the run's own clip length averaged
  into one vector per recording, one training example per recording.

The classifier is xdc's linear probe (``xdc.evaluation.linear_probe``: StandardScaler + logistic
regression, C by cross-validation inside the training folds, grouped by recording or by the
manifest's ``group`` column — fragments of one ESC-50 source file stay on one side). The result
is the mean and the standard deviation (over folds, ddof=0) of the per-fold accuracy.

BatchNorm statistics follow ``--bn-statistics`` (``xdc.evaluation.extract``): a trained encoder
keeps its stored ones and its features are extracted once for all folds; a random init (or any
encoder with ``recalibrated``) gets them recomputed **per fold, on that fold's training recordings
only** (the same clips for every encoder evaluated), so no statistic of a test recording ever
reaches the encoder — one calibration and one extraction per fold.

A recording none of whose windows decoded stays in its fold's test set and counts as wrong
(``unreadable_test_videos`` per fold and in total). A row without an audio track (a video with no
sound) is not a recording of this protocol: it is in no training or test set, and the result
counts and lists it (``without_modality``). Rows with an empty fold value are not used (their
count is reported).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from xdc.data.manifest import Manifest
from xdc.errors import ConfigError, DataError
from xdc.evaluation.encoders import EvalEncoders
from xdc.evaluation.extract import (
    EvalClips,
    FeatureExtractor,
    recalibrates,
    require_labels,
    require_single_labels,
    unreadable_rows,
)
from xdc.evaluation.linear_probe import C_GRID, probe_clip_features, source_groups
from xdc.features import ClipFeatures


def fold_rows(manifest: Manifest, column: str) -> dict[str, list[int]]:
    """``{fold value: rows}`` from a manifest column, in natural order (1, 2, …, 10).

    Raises:
        DataError: the column is absent, or it holds fewer than 2 distinct folds.
    """
    where = manifest.source or manifest.root
    if column not in manifest.columns:
        raise DataError(
            f"{where}: no column {column!r} (columns: {', '.join(manifest.columns)}); add a fold "
            f"column (e.g. ESC-50's 'fold') or pass --folds-column with an existing one"
        )
    folds: dict[str, list[int]] = {}
    for i, row in enumerate(manifest.rows):
        value = row.get(column, "")
        if value:
            folds.setdefault(value, []).append(i)
    if len(folds) < 2:
        raise DataError(
            f"{where}: column {column!r} has {len(folds)} distinct fold value(s); k-fold evaluation "
            "needs at least 2 (ESC-50 has 1-5)"
        )
    return dict(sorted(folds.items(), key=lambda kv: _natural_key(kv[0])))


OFFICIAL_SPLIT = ("train", "test")
"""Values of a folds column that make it one official train/test split (``fold_plan``)."""


def fold_plan(
    manifest: Manifest, column: str
) -> tuple[list[tuple[str, list[int], list[int]]], str]:
    """The (test fold name, training rows, test rows) of each evaluation, and how they were made:
    one official split when ``column`` holds ``train`` and ``test``, else k-fold over its values."""
    folds = fold_rows(manifest, column)
    if all(v in folds for v in OFFICIAL_SPLIT):
        mode = f"official split: train on {column!r} = train, test on {column!r} = test"
        return [("test", folds["train"], folds["test"])], mode
    used = sorted(r for rows in folds.values() for r in rows)
    plan = []
    for fold, test_rows in folds.items():
        held_out = set(test_rows)
        plan.append((fold, [r for r in used if r not in held_out], test_rows))
    return plan, f"{len(folds)}-fold over {column!r}"


def _natural_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def summarize_folds(per_fold: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (ddof=0) of per-fold ``top1`` and ``top5``."""
    top1 = np.array([f["top1"] for f in per_fold], dtype=np.float64)
    top5 = np.array([f["top5"] for f in per_fold], dtype=np.float64)
    return {
        "top1": float(top1.mean()),
        "top1_std": float(top1.std()),
        "top5": float(top5.mean()),
        "top5_std": float(top5.std()),
        "n_folds": len(per_fold),
        "folds": list(per_fold),
    }


AUDIO_PROTOCOLS = ("standard", "xdc-pooled")
"""Values of ``--protocol`` (module docstring)."""
AUDIO_BENCHMARKS: dict[str, dict[str, Any]] = {
    "esc50": {"folds_column": "fold", "windows": 10},
    "dcase2014": {"folds_column": "split", "windows": 60},
}
"""``--benchmark``: the fold column and windows per recording of each data set (2-s windows)."""
WINDOW_SEC = 2.0
"""Window length of the standard protocol (AVTS, AVID-CMA, GDT)."""
STANDARD_REFERENCE = (
    "AVTS (Korbar et al., NeurIPS 2018) as implemented by AVID-CMA (facebookresearch/AVID-CMA "
    "configs/benchmark/esc50/audio-svm.yaml, dcase/audio-svm.yaml, eval-snd-recg-svm.py) and GDT "
    "(facebookresearch/GDT datasets/ESC50.py, DCASE2014.py): 2-s windows, 10 per ESC-50 "
    "recording, 60 per DCASE2014 recording, a linear classifier on window features, scores "
    "averaged per recording"
)
STANDARD_NOTES = (
    "the classifier is xdc's linear probe (standardised logistic regression, C by grouped inner "
    "cross-validation, probabilities averaged); AVID-CMA uses a one-vs-rest linear SVM with a "
    "fixed C (10 for ESC-50, 1 for DCASE) and averages its decision scores",
    "the training windows are the test's fixed, uniformly spaced windows (centred in equal parts "
    "of the recording); AVID-CMA draws ESC-50 training windows at random starts with +-10% "
    "volume jitter, and both peers space windows from the start to the end (np.linspace)",
    "features are the encoder's pooled output; AVID-CMA also reports pooled conv2-conv5 maps",
)
POOLED_REFERENCE = (
    "xdc's own: the run's clip-length windows averaged into one vector per recording, one "
    "training example per recording; not a published protocol"
)


def audio_frames_for(seconds: float, hop_ms: float = 10.0) -> int:
    """Log-mel frames of a ``seconds`` window (10 ms hop: 2 s → 200)."""
    return max(1, round(seconds * 1000.0 / hop_ms))


def probe_fold(
    fold: str,
    train: ClipFeatures,
    test: ClipFeatures,
    label_names: Sequence[str],
    c_grid: Sequence[float] = C_GRID,
    seed: int = 0,
    row_groups: np.ndarray | None = None,
    missing_test_labels: Sequence[int] = (),
    pool_windows: bool = True,
) -> dict[str, Any]:
    """One fold: a linear classifier on audio features; ``pool_windows`` (``xdc-pooled``): one
    averaged vector per recording; otherwise (``standard``) one example per window and a
    recording's window probabilities averaged at test. ``missing_test_labels``: classes of the
    fold's unreadable test recordings (counted wrong)."""
    result = probe_clip_features(
        train,
        test,
        "audio",
        label_names,
        pool_clips=pool_windows,
        row_groups=row_groups,
        c_grid=c_grid,
        seed=seed,
        missing_test_labels=missing_test_labels,
    )
    return {"fold": fold, **result}


def select_rows(feats: ClipFeatures, rows: Sequence[int]) -> ClipFeatures:
    """The clips of ``feats`` that belong to ``rows``."""
    keep = np.isin(feats.rows, np.asarray(list(rows), dtype=feats.rows.dtype))
    return ClipFeatures(
        feats.rows[keep],
        feats.clip[keep],
        {m: f[keep] for m, f in feats.features.items()},
        feats.labels[keep],
    )


def audio_probe(
    source: EvalEncoders,
    manifest: Manifest,
    folds_column: str = "fold",
    clips: int = 10,
    bn_clips: int = 512,
    device: str | None = None,
    progress: bool = True,
    c_grid: Sequence[float] = C_GRID,
    seed: int = 0,
    batch_size: int | None = None,
    bn_statistics: str = "auto",
    protocol: str = "standard",
    window_sec: float = WINDOW_SEC,
) -> dict[str, Any]:
    """The audio probe of ``source``'s audio encoder (see the module docstring): ``clips``
    windows per recording, of ``window_sec`` seconds (``standard``) or of the run's clip length
    (``xdc-pooled``).

    Returns ``summarize_folds`` of the per-fold results plus ``protocol``, ``reference``,
    ``windows``, ``window_sec``, ``audio_frames``, ``training`` / ``test`` (what a training
    example and a test score are), ``notes``, ``evaluation`` (k-fold or the official split),
    ``n_recordings``, ``n_without_fold`` (rows not used), ``without_modality`` (rows without
    audio), ``unreadable_test_videos`` (over all folds) and ``bn_statistics``.
    """
    if protocol not in AUDIO_PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: choose {' or '.join(AUDIO_PROTOCOLS)}")
    if window_sec <= 0:
        raise ConfigError(f"--window-sec {window_sec}: must be > 0")
    plan, mode = fold_plan(manifest, folds_column)
    listed = sorted({r for _, train_rows, test_rows in plan for r in train_rows + test_rows})
    without = [r for r in listed if not manifest.has_audio(r)]
    if without:
        gone = set(without)
        plan = [
            (f, [r for r in tr if r not in gone], [r for r in te if r not in gone])
            for f, tr, te in plan
        ]
    used = [r for r in listed if manifest.has_audio(r)]
    for fold, train_rows, test_rows in plan:
        if not train_rows or not test_rows:
            raise DataError(
                f"{manifest.source or manifest.root}: fold {fold!r} of --folds-column "
                f"{folds_column} has no recording with an audio track in its "
                f"{'training' if not train_rows else 'test'} set; check the has_audio column "
                "(re-run `xdc index`) or the folds"
            )
    require_single_labels(manifest, used, "the audio probe")
    require_labels(manifest, used, None, f"--folds-column {folds_column}")
    pooled = protocol == "xdc-pooled"
    data = source.config.data
    if not pooled:
        data = dataclasses.replace(data, audio_frames=audio_frames_for(window_sec))
    reader = EvalClips(
        manifest,
        data,
        ("audio",),
        batch_size or source.config.train.batch_size,
        cache_rows=used,
        progress=progress,
    )
    per_fold_statistics = recalibrates(bn_statistics, source.is_random) and bn_clips > 0
    shared = None
    if not per_fold_statistics:  # the same encoder for every fold: extract once
        shared = FeatureExtractor(source, reader, used, 0, device, progress, bn_statistics)
        everything = shared.extract(used, ("audio",), clips)["audio"]
    row_groups = source_groups(manifest)
    per_fold, statistics = [], {}
    for fold, train_rows, test_rows in plan:
        if shared is None:
            extractor = FeatureExtractor(
                source, reader, train_rows, bn_clips, device, progress, bn_statistics
            )
            train = extractor.extract(train_rows, ("audio",), clips)["audio"]
            test = extractor.extract(test_rows, ("audio",), clips)["audio"]
        else:
            extractor = shared
            train, test = select_rows(everything, train_rows), select_rows(everything, test_rows)
        missing = unreadable_rows(reader, test_rows, test, "audio")
        result = probe_fold(
            fold,
            train,
            test,
            manifest.label_names,
            c_grid,
            seed,
            row_groups,
            [manifest.label(r) for r in missing],
            pool_windows=pooled,
        )
        result["bn_clips"] = extractor.calibration_counts.get("audio", 0)
        result["unreadable_test_paths"] = [str(manifest.rows[r]["path"]) for r in missing]
        statistics = extractor.statistics()
        per_fold.append(result)
        if progress:
            print(f"fold {fold}: top-1 {result['top1']:.3f} (C={result['C']:g})", file=sys.stderr)
    frames = data.audio_frames
    summary: dict[str, Any] = {
        "protocol": protocol,
        "reference": POOLED_REFERENCE if pooled else STANDARD_REFERENCE,
        "checkpoint": source.checkpoint,
        "windows": clips,
        "window_sec": round(frames / 100.0, 3) if pooled else window_sec,
        "audio_frames": frames,
        "training": "one vector per recording (its windows averaged)"
        if pooled
        else "one example per window",
        "test": "the averaged vector of a recording"
        if pooled
        else "class probabilities averaged over a recording's windows",
        "notes": [] if pooled else list(STANDARD_NOTES),
    }
    summary.update(summarize_folds(per_fold))
    summary["n_recordings"] = len(used)
    summary["n_without_fold"] = len(manifest) - len(listed)
    summary["without_modality"] = {
        "rule": "a row without an audio track is in no training or test set (counted and listed)",
        "count": len(without),
        "paths": [str(manifest.rows[r]["path"]) for r in without],
    }
    summary["n_test_official"] = sum(f["n_test"] for f in per_fold)
    summary["unreadable_test_videos"] = sum(f["unreadable_test_videos"] for f in per_fold)
    summary["folds_column"] = folds_column
    summary["evaluation"] = mode
    summary["clips"] = clips
    summary["bn_statistics"] = statistics
    summary["data"] = str(manifest.source)
    summary["encoders"] = source.describe()
    return summary
