"""Audio classification with frozen audio features, k-fold (ESC-50 / DCASE style; AVTS protocol).

Folds come from a manifest column (ESC-50's ``fold`` = 1…5). For each fold in turn, the
recordings of that fold are the test set and all the others the training set. Each recording is
described by its audio features averaged over ``clips`` uniformly spaced sub-clips; a linear
classifier (``xdc.evaluation.linear_probe``: StandardScaler + logistic regression, C by grouped
cross-validation inside the training folds) is trained on the training recordings and scored on
the test fold. The result is the mean and the standard deviation (over folds, ddof=0) of the
per-fold accuracy.

BatchNorm statistics are recomputed **per fold, on that fold's training recordings only** (the
same clips for every encoder evaluated), so no statistic of a test recording ever reaches the
encoder. It costs one calibration and one extraction per fold.

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
from xdc.evaluation.extract import EvalClips, FeatureExtractor, require_labels
from xdc.evaluation.linear_probe import C_GRID, probe_clip_features
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
) -> dict[str, Any]:
    """One fold: a linear classifier on recording-level (sub-clip averaged) audio features."""
    result = probe_clip_features(
        train, test, "audio", label_names, pool_clips=True, c_grid=c_grid, seed=seed
    )
    return {"fold": fold, **result}


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
) -> dict[str, Any]:
    """k-fold audio probe of ``source``'s audio encoder (see the module docstring).

    Returns ``summarize_folds`` of the per-fold results plus ``n_recordings`` and
    ``n_without_fold``.
    """
    folds = fold_rows(manifest, folds_column)
    used = sorted(r for rows in folds.values() for r in rows)
    require_labels(manifest, used, None, f"--folds-column {folds_column}")
    reader = EvalClips(
        manifest,
        source.config.data,
        ("audio",),
        batch_size or source.config.train.batch_size,
        cache_rows=used,
        progress=progress,
    )
    per_fold = []
    for fold, test_rows in folds.items():
        held_out = set(test_rows)
        train_rows = [r for r in used if r not in held_out]
        extractor = FeatureExtractor(source, reader, train_rows, bn_clips, device, progress)
        train = extractor.extract(train_rows, ("audio",), clips)["audio"]
        test = extractor.extract(test_rows, ("audio",), clips)["audio"]
        result = probe_fold(fold, train, test, manifest.label_names, c_grid, seed)
        result["bn_clips"] = extractor.calibration_counts.get("audio", 0)
        per_fold.append(result)
        if progress:
            print(f"fold {fold}: top-1 {result['top1']:.3f} (C={result['C']:g})", file=sys.stderr)
    summary: dict[str, Any] = {"protocol": "audio_probe", "checkpoint": source.checkpoint}
    summary.update(summarize_folds(per_fold))
    summary["n_recordings"] = len(used)
    summary["n_without_fold"] = len(manifest) - len(used)
    summary["folds_column"] = folds_column
    summary["clips"] = clips
    summary["data"] = str(manifest.source)
    summary["encoders"] = source.describe()
    return summary
