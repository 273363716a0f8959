"""Audio classification with frozen audio features, k-fold (ESC-50 / DCASE style; AVTS protocol).

Folds come from a manifest column (ESC-50's ``fold`` = 1…5). For each fold in turn, the
recordings of that fold are the test set and all the others the training set. A column whose
values include ``train`` and ``test`` (DCASE2014's one official split, e.g. ``--folds-column
split``) is an official split, not folds: the classifier trains on the ``train`` rows only and is
tested once on the ``test`` rows (other values, e.g. ``val``, are not used) — k-fold over it would
train on the test set. Each recording is
described by its audio features averaged over ``clips`` uniformly spaced sub-clips; a linear
classifier (``xdc.evaluation.linear_probe``: StandardScaler + logistic regression, C by grouped
cross-validation inside the training folds) is trained on the training recordings and scored on
the test fold. The result is the mean and the standard deviation (over folds, ddof=0) of the
per-fold accuracy.

BatchNorm statistics follow ``--bn-statistics`` (``xdc.evaluation.extract``): a trained encoder
keeps its stored ones and its features are extracted once for all folds; a random init (or any
encoder with ``recalibrated``) gets them recomputed **per fold, on that fold's training recordings
only** (the same clips for every encoder evaluated), so no statistic of a test recording ever
reaches the encoder — one calibration and one extraction per fold.

A recording none of whose sub-clips decoded stays in its fold's test set and counts as wrong
(``unreadable_test_videos`` per fold and in total). The inner cross-validation for C is grouped by
the manifest's ``group`` column when it has one (fragments of one ESC-50 source recording).
Rows with an empty fold value are not used (their count is reported).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from xdc.data.manifest import Manifest
from xdc.errors import DataError
from xdc.evaluation.encoders import EvalEncoders
from xdc.evaluation.extract import (
    EvalClips,
    FeatureExtractor,
    recalibrates,
    require_labels,
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


def probe_fold(
    fold: str,
    train: ClipFeatures,
    test: ClipFeatures,
    label_names: Sequence[str],
    c_grid: Sequence[float] = C_GRID,
    seed: int = 0,
    row_groups: np.ndarray | None = None,
    missing_test_labels: Sequence[int] = (),
) -> dict[str, Any]:
    """One fold: a linear classifier on recording-level (sub-clip averaged) audio features;
    ``missing_test_labels``: classes of the fold's unreadable test recordings (counted wrong)."""
    result = probe_clip_features(
        train,
        test,
        "audio",
        label_names,
        pool_clips=True,
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
) -> dict[str, Any]:
    """k-fold audio probe of ``source``'s audio encoder (see the module docstring).

    Returns ``summarize_folds`` of the per-fold results plus ``evaluation`` (k-fold or the official
    split), ``n_recordings``, ``n_without_fold`` (rows not used), ``unreadable_test_videos`` (over all folds) and ``bn_statistics``.
    """
    plan, mode = fold_plan(manifest, folds_column)
    used = sorted({r for _, train_rows, test_rows in plan for r in train_rows + test_rows})
    require_labels(manifest, used, None, f"--folds-column {folds_column}")
    reader = EvalClips(
        manifest,
        source.config.data,
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
        )
        result["bn_clips"] = extractor.calibration_counts.get("audio", 0)
        result["unreadable_test_paths"] = [str(manifest.rows[r]["path"]) for r in missing]
        statistics = extractor.statistics()
        per_fold.append(result)
        if progress:
            print(f"fold {fold}: top-1 {result['top1']:.3f} (C={result['C']:g})", file=sys.stderr)
    summary: dict[str, Any] = {"protocol": "audio_probe", "checkpoint": source.checkpoint}
    summary.update(summarize_folds(per_fold))
    summary["n_recordings"] = len(used)
    summary["n_without_fold"] = len(manifest) - len(used)
    summary["n_test_official"] = sum(f["n_test"] for f in per_fold)
    summary["unreadable_test_videos"] = sum(f["unreadable_test_videos"] for f in per_fold)
    summary["folds_column"] = folds_column
    summary["evaluation"] = mode
    summary["clips"] = clips
    summary["bn_statistics"] = statistics
    summary["data"] = str(manifest.source)
    summary["encoders"] = source.describe()
    return summary
