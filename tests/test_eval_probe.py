"""The linear probe's classifier, cross-validation and video-level averaging, on planted features
whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from xdc.errors import DataError
from xdc.evaluation.linear_probe import (
    C_GRID,
    FIT_GAP,
    fit_gap_note,
    linear_probe,
    topk_accuracy,
    video_level,
)


def blobs(
    rng: np.random.Generator, classes: int, videos: int, clips: int, dim: int, spread: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips of ``videos`` videos per class around a per-class centre: (N, dim), labels, video ids."""
    centres = rng.normal(0.0, 5.0, size=(classes, dim))
    labels = np.repeat(np.arange(classes), videos * clips)
    groups = np.repeat(np.arange(classes * videos), clips)
    features = centres[labels] + rng.normal(0.0, spread, size=(len(labels), dim))
    return features, labels, groups


def test_separable_blobs_are_classified_perfectly() -> None:
    rng = np.random.default_rng(0)
    x, y, g = blobs(rng, classes=4, videos=30, clips=3, dim=16, spread=1.0)
    train, test = g % 3 != 0, g % 3 == 0  # a third of the videos (all their clips) for testing
    result = linear_probe(x[train], y[train], x[test], y[test], g[train], g[test], list("abcd"))
    assert result["top1"] == 1.0 and result["top1_clip"] == 1.0 and result["top5"] == 1.0
    assert result["n_train"] == 80 and result["n_test"] == 40
    assert result["n_train_clips"] == 240 and result["n_test_clips"] == 120
    assert result["per_class"] == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    assert result["C"] in C_GRID and set(result["cv_accuracy"]) == {f"{c:g}" for c in C_GRID}
    assert result["feature_dim"] == 16 and result["n_classes"] == 4


def test_random_features_stay_near_chance() -> None:
    rng = np.random.default_rng(1)
    y_train, y_test = rng.integers(0, 4, 600), rng.integers(0, 4, 400)
    x_train, x_test = rng.normal(size=(600, 32)), rng.normal(size=(400, 32))
    result = linear_probe(x_train, y_train, x_test, y_test)
    assert 0.15 < result["top1"] < 0.35  # chance is 0.25
    assert result["top5"] == 1.0  # 4 classes: all of them are in the top 5


def test_video_level_averages_clip_probabilities() -> None:
    """Two classes on a line (class 0 left of 0, class 1 right). Each test video of class 0 has two
    clips barely on the wrong side and one far on the right side: clip level gets 1/3 right, a
    majority vote would be wrong, and averaging the probabilities gets every video right."""
    rng = np.random.default_rng(2)
    y_train = np.repeat([0, 1], 400)
    x_train = (np.where(y_train == 0, -1.0, 1.0) + rng.normal(0.0, 1.0, 800))[:, None]
    x_test = np.tile([0.1, 0.1, -5.0], 4)[:, None]
    y_test = np.zeros(12, dtype=np.int64)
    groups = np.repeat(np.arange(4), 3)
    result = linear_probe(x_train, y_train, x_test, y_test, test_groups=groups, c_grid=[1.0])
    assert result["top1_clip"] == pytest.approx(1 / 3)
    assert result["top1"] == 1.0 and result["n_test"] == 4 and result["n_test_clips"] == 12
    assert result["C"] == 1.0 and result["C_selection"] == "fixed"


def test_video_level_helper_means_per_video() -> None:
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.6, 0.4]])
    videos, mean, labels = video_level(probs, np.array([7, 7, 3, 3]), np.array([1, 1, 0, 0]))
    assert videos.tolist() == [3, 7] and labels.tolist() == [0, 1]
    np.testing.assert_allclose(mean, [[0.4, 0.6], [0.5, 0.5]])
    with pytest.raises(DataError, match="different labels"):
        video_level(probs, np.array([1, 1, 2, 2]), np.array([0, 1, 0, 0]))


def test_topk_definition() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.4, 0.35, 0.25]])
    classes = np.array([0, 1, 2])
    labels = np.array([1, 2, 2])
    assert topk_accuracy(probs, labels, classes, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(probs, labels, classes, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(probs, labels, classes, 5) == 1.0  # 3 classes <= 5: every class is in
    # A test class the classifier never saw is always a miss.
    assert topk_accuracy(probs, np.array([9, 9, 9]), classes, 5) == 0.0


def test_cross_validation_keeps_the_clips_of_a_video_together() -> None:
    """Random labels per video, near-identical clips within a video. A fold that split a video
    would let the classifier recognise its twin clips (high CV accuracy); grouped folds cannot."""
    rng = np.random.default_rng(3)
    videos, clips = 60, 4
    video_features = rng.normal(size=(videos, 40))
    video_labels = rng.integers(0, 2, videos)
    g = np.repeat(np.arange(videos), clips)
    x = video_features[g] + rng.normal(0.0, 0.01, size=(videos * clips, 40))
    y = video_labels[g]
    result = linear_probe(x, y, x[:8], y[:8], g, g[:8])
    assert max(result["cv_accuracy"].values()) < 0.75


def test_fit_gap_note_speaks_when_training_videos_are_memorised() -> None:
    """Training clips carry their class (an encoder that memorised the videos it was trained
    on), test clips of the same classes do not: cross-validation scores near 100 %, the test
    near chance, and the note says so with both numbers. With test clips drawn like the
    training clips (the same class centres) it stays silent, as it does for features that carry
    nothing anywhere."""
    rng = np.random.default_rng(4)
    x, y, g = blobs(rng, classes=4, videos=30, clips=3, dim=16, spread=1.0)
    train, test = g % 3 != 0, g % 3 == 0
    unlike = rng.normal(0.0, 5.0, size=(int(test.sum()), 16))  # no class centre in the test clips
    memorised = linear_probe(x[train], y[train], unlike, y[test], g[train], g[test])
    assert memorised["cv_top1"] == max(memorised["cv_accuracy"].values()) > 0.95
    assert memorised["cv_top1"] - memorised["top1"] >= FIT_GAP
    note = fit_gap_note(memorised)
    assert note is not None and "memorised" in note
    assert f"{memorised['cv_top1']:.1%}" in note and f"{memorised['top1']:.1%}" in note
    alike = linear_probe(x[train], y[train], x[test], y[test], g[train], g[test])
    assert alike["top1"] == 1.0 and fit_gap_note(alike) is None
    y_train, y_test = rng.integers(0, 4, 600), rng.integers(0, 4, 400)
    noise = linear_probe(rng.normal(size=(600, 32)), y_train, rng.normal(size=(400, 32)), y_test)
    assert fit_gap_note(noise) is None
    fixed = linear_probe(x[train], y[train], unlike, y[test], g[train], g[test], c_grid=[1.0])
    assert fixed["cv_top1"] is None and fit_gap_note(fixed) is None  # nothing cross-validated


def test_probe_refuses_unusable_labels() -> None:
    x = np.zeros((4, 2))
    with pytest.raises(DataError, match="at least 2"):
        linear_probe(x, np.zeros(4, dtype=int), x, np.zeros(4, dtype=int))
    with pytest.raises(DataError, match="no label"):
        linear_probe(x, np.array([0, 1, 0, -1]), x, np.array([0, 1, 0, 1]))
