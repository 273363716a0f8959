"""Linear probe on frozen features: StandardScaler + multinomial logistic regression.

Protocol (the linear variant of the paper's evaluation; README, "Evaluation protocols"):

- The classifier is trained on **clip** features of the training videos.
- Its inverse regularisation ``C`` is chosen by cross-validation on the training split only, over a
  small log-spaced grid. Folds are grouped by video (the clips of one video never straddle a fold)
  and stratified by class; the score is the same video-level accuracy as the test metric, ties
  broken by the lower video-level log-loss. With fewer than 2 training videos in some class there
  is nothing to cross-validate: ``C = 1`` is used and the result says so (``C_selection``).
- Testing is at **video level**: the class probabilities of the clips of a test video are
  averaged, and the video is predicted from the average (``top1_clip`` reports clip level too).
- top-k counts a hit when the true class is among the k most probable. With k or fewer classes
  every class is among them, so top-k is 1.0 (for a class the classifier knows; a test class absent
  from training is always a miss).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from xdc import seeds
from xdc.data.manifest import Manifest
from xdc.errors import ConfigError, DataError
from xdc.evaluation.encoders import EvalEncoders
from xdc.evaluation.protocol import extract_train_test, protocol_record
from xdc.features import ClipFeatures, mean_per_video

C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2)
"""Inverse regularisation strengths tried by cross-validation (log-spaced)."""
MAX_ITER = 2000
SMALL_PROBLEM = 1_000_000
"""Training sets with fewer numbers than this are fitted with one BLAS thread."""


def as_numpy(x: np.ndarray | Tensor) -> np.ndarray:
    """A float64 numpy copy of features (torch or numpy)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def make_classifier(c: float, seed: int = 0) -> Any:
    """StandardScaler + logistic regression (lbfgs: multinomial softmax for 3+ classes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)
    )


def video_level(
    probabilities: np.ndarray, groups: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average clip probabilities (N, C) per group (video): returns (groups (V,), (V, C), labels (V,))."""
    unique, means = mean_per_video(groups, np.asarray(probabilities, dtype=np.float64))
    inverse = np.searchsorted(unique, groups)
    video_labels = np.full(len(unique), -1, dtype=np.int64)
    video_labels[inverse] = labels
    if np.any(video_labels[inverse] != labels):
        raise DataError("clips of one video carry different labels; a video has exactly one label")
    return unique, means.numpy(), video_labels


def topk_accuracy(
    probabilities: np.ndarray, labels: np.ndarray, classes: np.ndarray, k: int
) -> float:
    """Fraction of rows whose label is among the ``k`` most probable ``classes`` (see module doc)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    hits = (classes[top] == labels[:, None]).any(axis=1)
    return float(hits.mean())


def log_loss_of(probabilities: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> float:
    """Mean negative log-probability of the true class (a class unknown to the model: p = 1e-15)."""
    lookup = {int(c): i for i, c in enumerate(classes)}
    p = np.array(
        [
            probabilities[i, lookup[int(y)]] if int(y) in lookup else 0.0
            for i, y in enumerate(labels)
        ]
    )
    return float(-np.log(np.clip(p, 1e-15, 1.0)).mean())


def fit_predict(
    c: float, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit at ``C = c`` and return (test probabilities (M, C), classes (C,), convergence warnings)."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    model = make_classifier(c, seed)
    # On small problems multi-threaded BLAS only adds synchronisation (3x slower measured on a
    # busy 2-core machine); large ones keep every thread.
    threads = 1 if x_train.size < SMALL_PROBLEM else None
    with (
        warnings.catch_warnings(record=True) as caught,
        threadpool_limits(threads, user_api="blas"),
    ):
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
    n_warn = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model.predict_proba(x_test), model.classes_, n_warn


def choose_c(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, c_grid: Sequence[float], folds: int, seed: int
) -> tuple[float, dict[str, float], str]:
    """Cross-validate ``C`` on the training clips, grouped by video and stratified by class.

    Returns (chosen C, {str(C): video-level CV accuracy}, how C was chosen).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    _, first = np.unique(groups, return_index=True)
    videos_per_class = np.bincount(np.unique(y[first], return_inverse=True)[1])
    n_splits = min(folds, int(videos_per_class.min()))
    if n_splits < 2 or len(c_grid) == 1:
        chosen = float(c_grid[0]) if len(c_grid) == 1 else 1.0
        return (
            chosen,
            {},
            "fixed (a class has fewer than 2 training videos)" if n_splits < 2 else "fixed",
        )
    folds_seed = seeds.int_seed(seed, "probe_folds", bits=32)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=folds_seed)
    splits = list(splitter.split(x, y, groups))
    scores: dict[str, float] = {}
    best: tuple[float, float, float] | None = None  # (-accuracy, log-loss, C)
    for c in c_grid:
        correct, losses, n = 0.0, 0.0, 0
        for fit_idx, val_idx in splits:
            probs, classes, _ = fit_predict(c, x[fit_idx], y[fit_idx], x[val_idx], seed)
            _, video_probs, video_y = video_level(probs, groups[val_idx], y[val_idx])
            correct += topk_accuracy(video_probs, video_y, classes, 1) * len(video_y)
            losses += log_loss_of(video_probs, video_y, classes) * len(video_y)
            n += len(video_y)
        scores[f"{c:g}"] = correct / n
        candidate = (-correct / n, losses / n, float(c))
        if best is None or candidate < best:
            best = candidate
    assert best is not None
    return (
        best[2],
        scores,
        f"{n_splits}-fold cross-validation on the training split, grouped by video",
    )


def linear_probe(
    train_features: np.ndarray | Tensor,
    train_labels: np.ndarray,
    test_features: np.ndarray | Tensor,
    test_labels: np.ndarray,
    train_groups: np.ndarray | None = None,
    test_groups: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    c_grid: Sequence[float] = C_GRID,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Train on clip features (N, D), evaluate at video level on test clips (M, D).

    Args:
        train_labels, test_labels: (N,), (M,) integer classes (indices into ``label_names``).
        train_groups, test_groups: (N,), (M,) video id of each clip (None: each clip is a video).
        c_grid: values of C to cross-validate (one value: used as is).
        folds: cross-validation folds at most.

    Returns:
        ``top1``, ``top5`` (video level), ``top1_clip``, ``n_train``/``n_test`` (videos),
        ``n_train_clips``/``n_test_clips``, ``n_classes``, ``feature_dim``, ``C``,
        ``C_selection``, ``cv_accuracy`` ({C: accuracy}), ``per_class`` ({name: top-1}),
        ``convergence_warnings``.

    Raises:
        DataError: fewer than 2 classes, an unlabelled clip, or mismatched lengths.
    """
    x_train, x_test = as_numpy(train_features), as_numpy(test_features)
    y_train, y_test = (
        np.asarray(train_labels, dtype=np.int64),
        np.asarray(test_labels, dtype=np.int64),
    )
    g_train = np.arange(len(y_train)) if train_groups is None else np.asarray(train_groups)
    g_test = np.arange(len(y_test)) if test_groups is None else np.asarray(test_groups)
    check_inputs(x_train, y_train, g_train, "train")
    check_inputs(x_test, y_test, g_test, "test")
    if len(np.unique(y_train)) < 2:
        raise DataError(
            f"the training split has {len(np.unique(y_train))} class; a classifier needs at least 2 "
            "labelled classes in the training split"
        )
    c, cv_scores, how = choose_c(x_train, y_train, g_train, c_grid, folds, seed)
    probs, classes, n_warn = fit_predict(c, x_train, y_train, x_test, seed)
    _, video_probs, video_y = video_level(probs, g_test, y_test)
    names = (
        list(label_names)
        if label_names is not None
        else [str(k) for k in range(int(classes.max()) + 1)]
    )
    predicted = classes[video_probs.argmax(1)]
    per_class = {
        names[int(k)]: float((predicted[video_y == k] == k).mean()) for k in np.unique(video_y)
    }
    return {
        "top1": topk_accuracy(video_probs, video_y, classes, 1),
        "top5": topk_accuracy(video_probs, video_y, classes, 5),
        "top1_clip": topk_accuracy(probs, y_test, classes, 1),
        "n_train": int(len(np.unique(g_train))),
        "n_test": int(len(video_y)),
        "n_train_clips": int(len(y_train)),
        "n_test_clips": int(len(y_test)),
        "n_classes": int(len(classes)),
        "feature_dim": int(x_train.shape[1]),
        "C": c,
        "C_selection": how,
        "cv_accuracy": cv_scores,
        "per_class": per_class,
        "convergence_warnings": n_warn,
    }


def check_inputs(x: np.ndarray, y: np.ndarray, groups: np.ndarray, which: str) -> None:
    """Shapes agree, there is data, and every clip has a label."""
    if x.ndim != 2 or len(x) != len(y) or len(groups) != len(y):
        raise DataError(
            f"{which} features {x.shape}, labels ({len(y)},) and groups ({len(groups)},) do not match"
        )
    if len(y) == 0:
        raise DataError(f"no {which} clips to evaluate on; check the split and the files")
    if (y < 0).any():
        raise DataError(
            f"{int((y < 0).sum())} {which} clips have no label; probes need labelled videos"
        )
    if not np.isfinite(x).all():
        raise DataError(
            f"{which} features contain NaN or infinity; the encoder's outputs are broken"
        )


def probe_clip_features(
    train: ClipFeatures,
    test: ClipFeatures,
    modality: str,
    label_names: Sequence[str] | None = None,
    pool_clips: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """``linear_probe`` on extracted features, grouped by manifest row (video).

    ``pool_clips``: average each video's clip features first and train/test on one vector per
    video (the audio protocol); otherwise train on clips and average test probabilities.
    """
    if pool_clips:
        train_rows, train_pooled, train_y = train.video_level()
        test_rows, test_pooled, test_y = test.video_level()
        return linear_probe(
            train_pooled[modality],
            train_y,
            test_pooled[modality],
            test_y,
            train_rows,
            test_rows,
            label_names,
            **options,
        )
    return linear_probe(
        train.features[modality],
        train.labels,
        test.features[modality],
        test.labels,
        train.rows,
        test.rows,
        label_names,
        **options,
    )


def evaluate_linear_probe(
    source: EvalEncoders,
    manifest: Manifest,
    modality: str = "video",
    train_split: str = "train",
    test_split: str = "test",
    clips: int = 10,
    bn_clips: int = 512,
    device: str | None = None,
    progress: bool = True,
    batch_size: int | None = None,
    c_grid: Sequence[float] = C_GRID,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole linear-probe protocol for one encoder: check the splits and labels, recalibrate
    BatchNorm on training clips, extract ``clips`` clips per video, probe. Returns the result of
    ``linear_probe`` with the settings (modality, splits, clips, encoders, time)."""
    if modality not in ("video", "audio"):
        raise ConfigError(f"--modality {modality!r}: choose video or audio")
    start = time.perf_counter()
    splits = (train_split, test_split)
    train, test, calibrated = extract_train_test(
        source,
        manifest,
        (modality,),
        splits,
        clips,
        bn_clips,
        device,
        progress,
        batch_size,
        min_train_classes=2,
    )
    result = probe_clip_features(
        train[modality], test[modality], modality, manifest.label_names, c_grid=c_grid, seed=seed
    )
    return {
        "protocol": "linear_probe",
        "modality": modality,
        **result,
        **protocol_record(source, manifest, splits, clips, calibrated.get(modality, 0), start),
    }
