"""Linear probe on frozen features: StandardScaler + multinomial logistic regression.

Protocol (the linear variant of the paper's evaluation; README, "Evaluation protocols"):

- The classifier is trained on **clip** features of the training videos.
- Its inverse regularisation ``C`` is chosen by cross-validation on the training split only, over a
  small log-spaced grid. Folds are grouped by video (the clips of one video never straddle a fold)
  or, when the manifest has a ``group`` column (``GROUP_COLUMN``), by its value: the videos of one
  group (fragments of one ESC-50 source recording, the clips of one UCF101 group) all land on the
  same side, so near-duplicates cannot bias C. Folds are stratified by class; the score is the
  same video-level accuracy as the test metric, ties broken by the lower video-level log-loss.
  With fewer than 2 training groups in some class there is nothing to cross-validate: ``C = 1``
  is used and the result says so (``C_selection``).
- Testing is at **video level**: the class probabilities of the clips of a test video are
  averaged, and the video is predicted from the average (``top1_clip`` reports clip level too,
  over the clips that decoded). A test video none of whose clips decoded counts as wrong in
  ``top1``, ``top5`` and ``per_class``: the denominator is the official test list.
- ``fit_gap_note`` says when the cross-validated accuracy on the training videos is far above
  the test accuracy (``FIT_GAP`` points or more): the features of the training videos carry the
  class and those of the test videos do not, which is what an encoder that memorised the videos
  it was pretrained on gives (measured: `small`'s XDC video encoder after 320 `digits` videos,
  70.6 % cross-validated against 25.0 % on test; docs/presets.md, section 16), or a test split
  unlike the training split.
- top-k counts a hit when the true class is among the k most probable. With k or fewer classes
  every class is among them, so top-k is 1.0 (for a class the classifier knows; a test class absent
  from training is always a miss).

Multi-label manifests (rows with several labels, ``Manifest.multi_label``: AudioSet) are probed
one-vs-rest (``multilabel_probe``): StandardScaler + one logistic regression per class on the
training clips (a class with no positive, or no negative, training clip predicts its training
rate), test probabilities averaged per video, and the score is **mAP**: the mean over classes of
the average precision of the test videos ranked by that class's probability (scikit-learn's
``average_precision_score``, the definition AudioSet results are reported with; classes without a
positive test video have no AP and are left out of the mean, ``n_classes_scored`` says how many
count). An unreadable test video scores 0 for every class (ranked last). C is chosen by grouped
k-fold cross-validation on the training split (by video or ``group``; not stratified) on the same
video-level mAP, ties to the smaller C. ``top1``/``top5`` are then hit rates: the share of test
videos with one of their labels among the 1 or 5 most probable classes.
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
from xdc.evaluation.protocol import extract_train_test, protocol_record, unreadable_record
from xdc.features import ClipFeatures, mean_per_video

GROUP_COLUMN = "group"
"""Manifest column whose value names a video's source group for the inner cross-validation (empty:
the video is its own group). ``xdc index --splits-dir`` fills it for UCF101 (``Class_gNN``); for
ESC-50 write the source recording id, the second field of ``1-100032-A-0.wav``."""
C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2)
"""Inverse regularisation strengths tried by cross-validation (log-spaced)."""
MAX_ITER = 2000
SMALL_PROBLEM = 1_000_000
"""Training sets with fewer numbers than this are fitted with one BLAS thread."""
FIT_GAP = 0.25
"""Cross-validated top-1 on the training videos minus test top-1 at which ``fit_gap_note`` warns:
above the largest gap of encoders that learned (11.3 points on test, 10.2 on val), under those of
XDC encoders that memorised (29.5 and more); a supervised `digits` run sits at the line (29.8 on
test, 24.8 on val). docs/presets.md, section 16."""


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


def topk_hits(
    probabilities: np.ndarray, labels: np.ndarray, classes: np.ndarray, k: int
) -> np.ndarray:
    """(N,) bool: is each row's label among its ``k`` most probable ``classes`` (see module doc)."""
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return np.asarray((classes[top] == labels[:, None]).any(axis=1))


def topk_accuracy(
    probabilities: np.ndarray, labels: np.ndarray, classes: np.ndarray, k: int, missing: int = 0
) -> float:
    """Fraction of rows whose label is among the ``k`` most probable ``classes``; ``missing``
    more rows (videos that could not be read) count as wrong."""
    if len(labels) + missing == 0:
        return float("nan")
    return float(topk_hits(probabilities, labels, classes, k).sum() / (len(labels) + missing))


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


def inner_folds(
    y: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit indices, validation indices) of at most ``folds`` folds of the training clips,
    stratified by class ``y`` and grouped by ``groups`` (N,): all clips of a group fall on the same
    side. Fewer folds when a class has fewer groups; none (``[]``) when a class has only one."""
    from sklearn.model_selection import StratifiedGroupKFold

    pairs = np.unique(np.stack([np.unique(groups, return_inverse=True)[1], y]), axis=1)
    groups_per_class = np.bincount(np.unique(pairs[1], return_inverse=True)[1])
    n_splits = min(folds, int(groups_per_class.min()))
    if n_splits < 2:
        return []
    folds_seed = seeds.int_seed(seed, "probe_folds", bits=32)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=folds_seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def choose_c(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    c_grid: Sequence[float],
    folds: int,
    seed: int,
    cv_groups: np.ndarray | None = None,
) -> tuple[float, dict[str, float], str]:
    """Cross-validate ``C`` on the training clips, stratified by class and grouped by
    ``cv_groups`` (N,) when given (source groups), else by video ``groups``; the score is
    video-level accuracy.

    Returns (chosen C, {str(C): video-level CV accuracy}, how C was chosen).
    """
    by = "video" if cv_groups is None else f"the {GROUP_COLUMN!r} column"
    splits = inner_folds(y, groups if cv_groups is None else cv_groups, folds, seed)
    if not splits or len(c_grid) == 1:
        chosen = float(c_grid[0]) if len(c_grid) == 1 else 1.0
        why = f"fixed (a class has fewer than 2 training groups by {by})"
        return chosen, {}, why if not splits else "fixed"
    n_splits = len(splits)
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
        f"{n_splits}-fold cross-validation on the training split, grouped by {by}",
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
    cv_groups: np.ndarray | None = None,
    missing_test_labels: Sequence[int] | np.ndarray = (),
) -> dict[str, Any]:
    """Train on clip features (N, D), evaluate at video level on test clips (M, D).

    Args:
        train_labels, test_labels: (N,), (M,) integer classes (indices into ``label_names``).
        train_groups, test_groups: (N,), (M,) video id of each clip (None: each clip is a video).
        c_grid: values of C to cross-validate (one value: used as is).
        folds: cross-validation folds at most.
        cv_groups: (N,) source group of each training clip for the inner cross-validation
            (None: the video).
        missing_test_labels: classes of the test videos that could not be read: each counts as
            a wrong answer in top1, top5 and per_class.

    Returns:
        ``top1``, ``top5`` (video level, unreadable videos wrong), ``top1_clip`` (decoded clips),
        ``n_train``/``n_test`` (videos; ``n_test`` counts the unreadable ones),
        ``unreadable_test_videos``,
        ``n_train_clips``/``n_test_clips``, ``n_classes``, ``feature_dim``, ``C``,
        ``C_selection``, ``cv_accuracy`` ({C: accuracy}), ``cv_top1`` (at the chosen C; None when
        C was fixed), ``per_class`` ({name: top-1}), ``convergence_warnings``.

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
    if cv_groups is not None and len(cv_groups) != len(y_train):
        raise DataError(
            f"cv_groups ({len(cv_groups)},) does not match {len(y_train)} training clips"
        )
    c, cv_scores, how = choose_c(x_train, y_train, g_train, c_grid, folds, seed, cv_groups)
    probs, classes, n_warn = fit_predict(c, x_train, y_train, x_test, seed)
    _, video_probs, video_y = video_level(probs, g_test, y_test)
    missing = np.asarray(missing_test_labels, dtype=np.int64)
    names = (
        list(label_names)
        if label_names is not None
        else [str(k) for k in range(int(classes.max()) + 1)]
    )
    correct = classes[video_probs.argmax(1)] == video_y
    per_class = {
        names[int(k)]: float(
            correct[video_y == k].sum() / ((video_y == k).sum() + (missing == k).sum())
        )
        for k in np.unique(np.concatenate([video_y, missing]))
    }
    n_missing = len(missing)
    return {
        "top1": topk_accuracy(video_probs, video_y, classes, 1, n_missing),
        "top5": topk_accuracy(video_probs, video_y, classes, 5, n_missing),
        "top1_clip": topk_accuracy(probs, y_test, classes, 1),
        "n_train": int(len(np.unique(g_train))),
        "n_test": int(len(video_y)) + n_missing,
        "unreadable_test_videos": n_missing,
        "n_train_clips": int(len(y_train)),
        "n_test_clips": int(len(y_test)),
        "n_classes": int(len(classes)),
        "feature_dim": int(x_train.shape[1]),
        "C": c,
        "C_selection": how,
        "cv_accuracy": cv_scores,
        "cv_top1": cv_scores.get(f"{c:g}"),
        "per_class": per_class,
        "convergence_warnings": n_warn,
    }


ADVICE_FIT_GAP = (
    "an encoder pretrained on these training videos can have memorised them (their "
    "pseudo-labels, or their labels in a supervised run) instead of learning what carries the "
    "class; a test split unlike the training split does the same. If the supervised bound "
    "(--method supervised) shows the same gap, the set is too small for this network and more "
    "videos is what helps (fewer steps or clusters did not: docs/presets.md, sections 9-10); "
    "probe on videos the encoder never saw (--data, --train-split) to measure what it learned"
)
ADVICE_FIT_GAP_SENTENCE = f"{ADVICE_FIT_GAP[:1].upper()}{ADVICE_FIT_GAP[1:]}."
"""``ADVICE_FIT_GAP`` as a sentence of its own, as the warnings print it."""


def fit_gap(cv_top1: float | None, top1: float, split: str = "test") -> str | None:
    """What ``fit_gap_note`` says without its advice (``ADVICE_FIT_GAP``): None when the
    cross-validated top-1 on the training videos is unknown or less than ``FIT_GAP`` above the
    top-1 on ``split``."""
    if cv_top1 is None or cv_top1 - top1 < FIT_GAP:
        return None
    return (
        f"the probe scores {cv_top1:.1%} on held-out training videos (cross-validation) but "
        f"{top1:.1%} on the {split!r} videos"
    )


def fit_gap_note(result: dict[str, Any], split: str = "test") -> str | None:
    """A warning line when a probe's cross-validated accuracy on the training videos
    (``cv_top1``) is ``FIT_GAP`` or more above its top-1 on ``split``, with the likely causes
    and what to try; None otherwise, or when C was not cross-validated (no ``cv_top1``, as in a
    multi-label result)."""
    said = fit_gap(result.get("cv_top1"), result["top1"], split)
    return None if said is None else f"warning: {said}. {ADVICE_FIT_GAP_SENTENCE}"


def average_precisions(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(K,) average precision of each class (column) of ``scores`` (V, K) against 0/1
    ``targets`` (V, K); NaN for a class without a positive."""
    from sklearn.metrics import average_precision_score

    ap = np.full(targets.shape[1], np.nan)
    for k in np.flatnonzero(targets.sum(axis=0) > 0):
        ap[k] = average_precision_score(targets[:, k], scores[:, k])
    return ap


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP: the mean of ``average_precisions`` over the classes that have a positive."""
    ap = average_precisions(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def hit_rate(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of rows with one of their labels among their ``k`` highest-scored classes."""
    if len(scores) == 0:
        return float("nan")
    top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]
    return float(np.take_along_axis(targets, top, axis=1).any(axis=1).mean())


def fit_predict_multilabel(
    c: float, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int
) -> tuple[np.ndarray, int]:
    """One-vs-rest at ``C = c`` on 0/1 targets (N, K): (test probabilities (M, K), convergence
    warnings). A class with one value in training predicts it (its training rate)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    scaler = StandardScaler().fit(x_train)
    xs_train, xs_test = scaler.transform(x_train), scaler.transform(x_test)
    probs = np.empty((len(x_test), y_train.shape[1]))
    threads = 1 if x_train.size < SMALL_PROBLEM else None
    with (
        warnings.catch_warnings(record=True) as caught,
        threadpool_limits(threads, user_api="blas"),
    ):
        warnings.simplefilter("always", ConvergenceWarning)
        for k in range(y_train.shape[1]):
            column = y_train[:, k]
            if column.min() == column.max():
                probs[:, k] = float(column[0]) if len(column) else 0.0
                continue
            model = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)
            probs[:, k] = model.fit(xs_train, column).predict_proba(xs_test)[:, 1]
    n_warn = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return probs, n_warn


def video_targets(
    scores: np.ndarray, groups: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip scores (N, K) averaged per video: (videos (V,), (V, K) scores, (V, K) targets)."""
    unique, means = mean_per_video(groups, np.asarray(scores, dtype=np.float64))
    inverse = np.searchsorted(unique, groups)
    video_y = np.zeros((len(unique), targets.shape[1]), dtype=targets.dtype)
    video_y[inverse] = targets
    if np.any(video_y[inverse] != targets):
        raise DataError("clips of one video carry different labels; a video has one label set")
    return unique, means.numpy(), video_y


def choose_c_multilabel(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    c_grid: Sequence[float],
    folds: int,
    seed: int,
    cv_groups: np.ndarray | None = None,
) -> tuple[float, dict[str, float], str]:
    """C by grouped k-fold cross-validation on video-level mAP (module docstring): (C,
    {str(C): mAP}, how C was chosen)."""
    from sklearn.model_selection import GroupKFold

    by = "video" if cv_groups is None else f"the {GROUP_COLUMN!r} column"
    split_by = groups if cv_groups is None else cv_groups
    n_splits = min(folds, len(np.unique(split_by)))
    if len(c_grid) == 1 or n_splits < 2:
        why = "fixed" if len(c_grid) == 1 else f"fixed (fewer than 2 training groups by {by})"
        return float(c_grid[0]) if len(c_grid) == 1 else 1.0, {}, why
    splits = list(GroupKFold(n_splits=n_splits).split(x, y, split_by))
    scores: dict[str, float] = {}
    best: tuple[float, float] | None = None  # (-mAP, C)
    for c in c_grid:
        values = []
        for fit_idx, val_idx in splits:
            probs, _ = fit_predict_multilabel(c, x[fit_idx], y[fit_idx], x[val_idx], seed)
            _, video_probs, video_y = video_targets(probs, groups[val_idx], y[val_idx])
            values.append(mean_average_precision(video_probs, video_y))
        score = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
        scores[f"{c:g}"] = score
        if best is None or (-score, float(c)) < best:
            best = (-score, float(c))
    assert best is not None
    how = f"{n_splits}-fold cross-validation on the training split (mAP), grouped by {by}"
    return best[1], scores, how


def multilabel_probe(
    train_features: np.ndarray | Tensor,
    train_targets: np.ndarray,
    test_features: np.ndarray | Tensor,
    test_targets: np.ndarray,
    train_groups: np.ndarray | None = None,
    test_groups: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    c_grid: Sequence[float] = C_GRID,
    folds: int = 5,
    seed: int = 0,
    cv_groups: np.ndarray | None = None,
    missing_test_targets: np.ndarray | None = None,
) -> dict[str, Any]:
    """One-vs-rest probe on clip features (N, D) with 0/1 targets (N, K), scored at video level
    by mAP on the test clips (M, D) (module docstring).

    Args:
        missing_test_targets: (U, K) targets of the test videos that could not be read: each
            scores 0 for every class.

    Returns:
        ``multi_label`` (True), ``mAP`` (video level, unreadable videos included), ``mAP_clip``,
        ``per_class`` ({name: AP} of the scored classes), ``n_classes_scored``, ``top1``/``top5``
        (hit rates), ``top1_clip``, ``cv_mAP``, and the counts and settings of ``linear_probe``.

    Raises:
        DataError: mismatched shapes, a clip without a label, or no class with positives.
    """
    x_train, x_test = as_numpy(train_features), as_numpy(test_features)
    y_train, y_test = np.asarray(train_targets, np.int64), np.asarray(test_targets, np.int64)
    g_train = np.arange(len(y_train)) if train_groups is None else np.asarray(train_groups)
    g_test = np.arange(len(y_test)) if test_groups is None else np.asarray(test_groups)
    for x, y, g, which in ((x_train, y_train, g_train, "train"), (x_test, y_test, g_test, "test")):
        if y.ndim != 2 or y.shape[1] != y_train.shape[1]:
            raise DataError(f"{which} targets {y.shape} are not (clips, classes)")
        check_inputs(x, np.where(y.any(axis=1), 0, -1), g, which)  # a clip without a label
    if not y_train.any(axis=0).any():
        raise DataError("no class has a positive training clip; label the training split")
    c, cv_scores, how = choose_c_multilabel(
        x_train, y_train, g_train, c_grid, folds, seed, cv_groups
    )
    probs, n_warn = fit_predict_multilabel(c, x_train, y_train, x_test, seed)
    _, video_probs, video_y = video_targets(probs, g_test, y_test)
    missing = np.zeros((0, y_train.shape[1]), np.int64)
    if missing_test_targets is not None and len(missing_test_targets):
        missing = np.asarray(missing_test_targets, np.int64)
    all_probs = np.concatenate([video_probs, np.zeros(missing.shape)])
    all_y = np.concatenate([video_y, missing])
    ap = average_precisions(all_probs, all_y)
    names = list(label_names) if label_names is not None else [str(k) for k in range(len(ap))]
    return {
        "multi_label": True,
        "mAP": mean_average_precision(all_probs, all_y),
        "mAP_clip": mean_average_precision(probs, y_test),
        "top1": hit_rate(all_probs, all_y, 1),
        "top5": hit_rate(all_probs, all_y, 5),
        "top1_clip": hit_rate(probs, y_test, 1),
        "n_train": int(len(np.unique(g_train))),
        "n_test": int(len(all_y)),
        "unreadable_test_videos": int(len(missing)),
        "n_train_clips": int(len(y_train)),
        "n_test_clips": int(len(y_test)),
        "n_classes": int(y_train.shape[1]),
        "n_classes_scored": int(np.isfinite(ap).sum()),
        "feature_dim": int(x_train.shape[1]),
        "C": c,
        "C_selection": how,
        "cv_mAP": cv_scores,
        "per_class": {names[k]: float(ap[k]) for k in np.flatnonzero(np.isfinite(ap))},
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


def source_groups(manifest: Manifest) -> np.ndarray | None:
    """(rows,) integer source group of every manifest row from its ``group`` column
    (``GROUP_COLUMN``; an empty value: the row is its own group), or None without the column."""
    if GROUP_COLUMN not in manifest.columns:
        return None
    values = [r.get(GROUP_COLUMN, "") or f"\0row{i}" for i, r in enumerate(manifest.rows)]
    return np.unique(np.asarray(values, dtype=str), return_inverse=True)[1].reshape(-1)


def probe_clip_features(
    train: ClipFeatures,
    test: ClipFeatures,
    modality: str,
    label_names: Sequence[str] | None = None,
    pool_clips: bool = False,
    row_groups: np.ndarray | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``linear_probe`` on extracted features, grouped by manifest row (video).

    ``pool_clips``: average each video's clip features first and train/test on one vector per
    video (the audio protocol); otherwise train on clips and average test probabilities.
    ``row_groups``: ``source_groups`` of the manifest, to group the inner cross-validation by.
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
            cv_groups=None if row_groups is None else row_groups[train_rows],
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
        cv_groups=None if row_groups is None else row_groups[train.rows],
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
    bn_statistics: str = "auto",
) -> dict[str, Any]:
    """The whole linear-probe protocol for one encoder: check the splits and labels, extract
    ``clips`` clips per video (BatchNorm statistics per ``bn_statistics``), probe. Returns the
    result of ``linear_probe`` (of ``multilabel_probe``, with ``mAP``, when the manifest has rows
    with several labels) with the settings (modality, splits, clips, BatchNorm statistics,
    encoders, time) and the unreadable test videos (counted as wrong)."""
    if modality not in ("video", "audio"):
        raise ConfigError(f"--modality {modality!r}: choose video or audio")
    start = time.perf_counter()
    splits = (train_split, test_split)
    found = extract_train_test(
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
        bn_statistics=bn_statistics,
    )
    missing = found.unreadable[modality]
    if manifest.multi_label:
        train, test, targets = found.train[modality], found.test[modality], manifest.label_matrix()
        groups = source_groups(manifest)
        result = multilabel_probe(
            train.features[modality],
            targets[train.rows],
            test.features[modality],
            targets[test.rows],
            train.rows,
            test.rows,
            manifest.label_names,
            c_grid=c_grid,
            seed=seed,
            cv_groups=None if groups is None else groups[train.rows],
            missing_test_targets=targets[list(missing)],
        )
    else:
        result = probe_clip_features(
            found.train[modality],
            found.test[modality],
            modality,
            manifest.label_names,
            row_groups=source_groups(manifest),
            c_grid=c_grid,
            seed=seed,
            missing_test_labels=[manifest.label(r) for r in missing],
        )
    record = protocol_record(
        source, manifest, splits, clips, found.bn_clips.get(modality, 0), start, found.bn_statistics
    )
    return {
        "protocol": "linear_probe",
        "modality": modality,
        **result,
        **unreadable_record(manifest, len(found.test_rows[modality]), missing),
        **record,
    }
