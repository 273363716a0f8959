"""Retrieval recall@k on hand-made examples (cosine and Euclidean), SeLaVi's pooled conv5 map,
and CCA on planted paired data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xdc.errors import ConfigError
from xdc.evaluation.retrieval import fit_cca, pool_map, recall_at_k, retrieval_protocol


def test_recall_at_k_hand_made() -> None:
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    gallery_labels = np.array([0, 1, 0, 1])
    queries = np.array(
        [
            [1.0, 0.1],  # nearest: item 0 (class 0), then item 1 (class 1): first hit at rank 2
            [0.1, 1.0],  # nearest: item 1 (class 1): hit at rank 1
            [-1.0, -0.2],  # class 2 is not in the gallery: never a hit
        ]
    )
    query_labels = np.array([1, 1, 2])
    recall = recall_at_k(queries, query_labels, gallery, gallery_labels, ks=(1, 2, 4, 10))
    assert recall == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@4": 2 / 3, "R@10": 2 / 3})


def test_recall_uses_cosine_not_distance() -> None:
    gallery = np.array([[10.0, 0.0], [0.9, 1.1]])  # far but same direction vs near but turned
    recall = recall_at_k(np.array([[1.0, 0.0]]), np.array([0]), gallery, np.array([0, 1]), ks=(1,))
    assert recall["R@1"] == 1.0


def planted_pairs(
    rng: np.random.Generator,
    n: int,
    mixing_x: np.ndarray,
    mixing_y: np.ndarray,
    centres: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two views of a shared latent (class centre + per-item variation), each mixed into its own
    space with its own noise: the 'video' and 'audio' features of the same clips."""
    labels = rng.integers(0, len(centres), n)
    latent = centres[labels] + rng.normal(0.0, 0.3, size=(n, centres.shape[1]))
    x = latent @ mixing_x + rng.normal(0.0, 0.3, size=(n, mixing_x.shape[1]))
    y = latent @ mixing_y + rng.normal(0.0, 0.3, size=(n, mixing_y.shape[1]))
    return x, y, labels


def test_cca_aligns_paired_views_and_not_unpaired_ones() -> None:
    rng = np.random.default_rng(0)
    mixing_x, mixing_y = rng.normal(size=(4, 20)), rng.normal(size=(4, 12))
    centres = rng.normal(0.0, 2.0, size=(5, 4))
    x_train, y_train, _ = planted_pairs(rng, 400, mixing_x, mixing_y, centres)
    x_test, y_test, test_labels = planted_pairs(rng, 200, mixing_x, mixing_y, centres)
    gallery_x, gallery_y, gallery_labels = planted_pairs(rng, 200, mixing_x, mixing_y, centres)

    def audio_to_video_r1(x_fit: np.ndarray, y_fit: np.ndarray) -> float:
        cca = fit_cca(x_fit, y_fit, dim=4)
        return recall_at_k(
            cca.transform_y(y_test),
            test_labels,
            cca.transform_x(gallery_x),
            gallery_labels,
            ks=(1,),
        )["R@1"]

    paired = audio_to_video_r1(x_train, y_train)
    unpaired = audio_to_video_r1(x_train, y_train[rng.permutation(len(y_train))])
    assert paired > 0.9
    assert unpaired < 0.5 and paired > unpaired + 0.4  # chance is 0.2


def test_cca_gives_whitened_maximally_correlated_pairs() -> None:
    rng = np.random.default_rng(1)
    shared = rng.normal(size=(2000, 3))
    x = np.hstack([shared, rng.normal(size=(2000, 2))]) @ rng.normal(size=(5, 5))
    y = np.hstack([shared[:, :2] + 0.5 * rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2))])
    cca = fit_cca(x, y, dim=64, ridge=1e-9)
    assert cca.proj_x.shape == (5, 4) and cca.proj_y.shape == (4, 4)  # d = min(64, 5, 4)
    u, v = cca.transform_x(x), cca.transform_y(y)
    np.testing.assert_allclose(np.cov(u.T), np.eye(4), atol=1e-6)
    np.testing.assert_allclose(np.cov(v.T), np.eye(4), atol=1e-6)
    pair_corr = [np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(4)]
    np.testing.assert_allclose(pair_corr, cca.correlations, atol=1e-6)
    # Two shared directions with noise of std 0.5: canonical correlation 1/sqrt(1.25) ≈ 0.894.
    assert cca.correlations[:2] == pytest.approx([0.894, 0.894], abs=0.03)
    assert cca.correlations[2:].max() < 0.1


def test_euclidean_recall_ranks_by_distance_not_direction() -> None:
    gallery = np.array([[10.0, 0.0], [0.9, 1.1]])  # far but same direction vs near but turned
    labels = np.array([0, 1])
    query, query_label = np.array([[1.0, 0.0]]), np.array([1])
    assert recall_at_k(query, query_label, gallery, labels, ks=(1,))["R@1"] == 0.0  # cosine
    euclid = recall_at_k(query, query_label, gallery, labels, ks=(1,), distance="euclidean")
    assert euclid["R@1"] == 1.0
    with pytest.raises(ConfigError, match="distance 'manhattan'"):
        recall_at_k(query, query_label, gallery, labels, distance="manhattan")


def test_pool_map_max_pools_two_by_two_and_clips_short_sides() -> None:
    x = torch.arange(2 * 3 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 3, 1, 4, 5)
    pooled = pool_map(x)  # time 1 (window 1), height 4 -> 2, width 5 -> 2 (floor)
    by_hand = x[:, :, :, :4, :4].reshape(2, 3, 1, 2, 2, 2, 2).amax(dim=(4, 6))
    assert pooled.shape == (2, 3 * 1 * 2 * 2)
    torch.testing.assert_close(pooled, by_hand.flatten(1))
    audio = torch.randn(2, 4, 6, 3)  # (B, C, freq, time) map of the audio encoder
    assert pool_map(audio).shape == (2, 4 * 3 * 1)


def test_selavi_protocol_settings() -> None:
    selavi = retrieval_protocol("selavi")
    assert selavi.ks == (1, 5, 10, 20, 50) and selavi.distance == "euclidean"
    assert selavi.modalities == ("video",) and not selavi.cross_modal
    assert retrieval_protocol("xdc").ks == (1, 5, 10, 20)
    with pytest.raises(ConfigError, match="--protocol 'avid'"):
        retrieval_protocol("avid")
