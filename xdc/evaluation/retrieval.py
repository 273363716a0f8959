"""Nearest-neighbour retrieval with frozen features: recall@k by class, within and across modalities.

Protocol: every test video is a query; the gallery is the training split. Features are averaged
over the clips of each video; similarity is the cosine. A query scores a hit at k when one of its k
nearest gallery items has the query's label (recall@k, k > gallery size counts the whole gallery).
A test video that could not be read stays a query and is a miss at every k (the denominator is the
official test list; ``unreadable_queries`` says how many); an unreadable training video is simply
absent from the gallery.

Cross-modal (audio → video): the two encoders' feature spaces are unrelated, so both are mapped into
a shared space fitted on the *training* split's paired (video, audio) features: canonical
correlation analysis (CCA) in numpy — centre, whiten each side with a ridge-regularised covariance,
SVD of the whitened cross-covariance, keep ``d = min(64, D_video, D_audio, N_train - 1)``
components. Queries (test audio) and gallery (training video) are compared by cosine in that space.
The ridge (a fraction of each covariance's mean eigenvalue) keeps the whitening stable when the
training set is small next to the feature dimension.

A manifest of audio-only files (``has_video`` 0 on every row) gets audio→audio only: the video and
cross-modal results are left out (said on stderr); likewise video→video only without any audio.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from xdc.data.manifest import Manifest
from xdc.errors import DataError
from xdc.evaluation.encoders import EvalEncoders
from xdc.evaluation.extract import available_modalities, split_rows
from xdc.evaluation.linear_probe import as_numpy
from xdc.evaluation.protocol import extract_train_test, protocol_record, unreadable_record
from xdc.features import ClipFeatures

KS: tuple[int, ...] = (1, 5, 10, 20)
CCA_DIM = 64
CCA_RIDGE = 1e-2


def cosine_similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(Q, D) × (G, D) → (Q, G) cosine similarities (zero vectors get similarity 0)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return q @ g.T


def recall_at_k(
    queries: np.ndarray | Tensor,
    query_labels: np.ndarray,
    gallery: np.ndarray | Tensor,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = KS,
    missing_queries: int = 0,
) -> dict[str, float]:
    """``{"R@k": fraction of queries with a same-label item among their k most similar}``;
    ``missing_queries`` more queries (test videos that could not be read) are misses.

    Ties in similarity are broken by gallery order (stable sort), so results are deterministic.
    """
    q, g = as_numpy(queries), as_numpy(gallery)
    q_y, g_y = np.asarray(query_labels), np.asarray(gallery_labels)
    if len(q) == 0 or len(g) == 0:
        raise DataError(
            f"retrieval needs queries and a gallery; got {len(q)} queries, {len(g)} items"
        )
    order = np.argsort(-cosine_similarity(q, g), axis=1, kind="stable")
    same = g_y[order] == q_y[:, None]  # (Q, G): is the j-th nearest item of the query's class
    never = np.iinfo(np.int64).max  # no item of the query's class in the gallery
    first_hit = np.where(same.any(axis=1), same.argmax(axis=1), never)
    total = len(q) + missing_queries
    return {f"R@{k}": float((first_hit < k).sum() / total) for k in ks}


@dataclass
class CCAProjection:
    """A fitted CCA: ``x → (x - mean_x) @ proj_x`` and likewise for y, into (N, d)."""

    mean_x: np.ndarray
    mean_y: np.ndarray
    proj_x: np.ndarray
    proj_y: np.ndarray
    correlations: np.ndarray

    def transform_x(self, x: np.ndarray | Tensor) -> np.ndarray:
        return (as_numpy(x) - self.mean_x) @ self.proj_x

    def transform_y(self, y: np.ndarray | Tensor) -> np.ndarray:
        return (as_numpy(y) - self.mean_y) @ self.proj_y


def _inverse_sqrt(cov: np.ndarray, ridge: float) -> np.ndarray:
    """(C + ridge · mean eigenvalue · I)^(-1/2) of a symmetric PSD matrix."""
    scale = max(float(np.trace(cov)) / len(cov), 1e-12)
    values, vectors = np.linalg.eigh(cov + ridge * scale * np.eye(len(cov)))
    return (vectors / np.sqrt(np.maximum(values, 1e-12 * scale))) @ vectors.T


def fit_cca(
    x: np.ndarray | Tensor, y: np.ndarray | Tensor, dim: int = CCA_DIM, ridge: float = CCA_RIDGE
) -> CCAProjection:
    """CCA of paired rows ``x`` (N, Dx) and ``y`` (N, Dy), keeping ``min(dim, Dx, Dy, N-1)`` pairs."""
    xa, ya = as_numpy(x), as_numpy(y)
    if len(xa) != len(ya) or len(xa) < 2:
        raise DataError(f"CCA needs at least 2 paired rows; got {len(xa)} and {len(ya)}")
    mean_x, mean_y = xa.mean(0), ya.mean(0)
    xc, yc = xa - mean_x, ya - mean_y
    n = len(xa) - 1
    wx = _inverse_sqrt(xc.T @ xc / n, ridge)
    wy = _inverse_sqrt(yc.T @ yc / n, ridge)
    u, s, vt = np.linalg.svd(wx @ (xc.T @ yc / n) @ wy)
    d = max(1, min(dim, xa.shape[1], ya.shape[1], len(xa) - 1))
    return CCAProjection(mean_x, mean_y, wx @ u[:, :d], wy @ vt.T[:, :d], s[:d])


def paired(
    features: Mapping[str, ClipFeatures],
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Video-level features of the rows present in every modality: (rows, {m: (V, D)}, labels)."""
    levels = {m: f.video_level() for m, f in features.items()}
    common = None
    for rows, _, _ in levels.values():
        common = rows if common is None else np.intersect1d(common, rows)
    assert common is not None
    out: dict[str, np.ndarray] = {}
    labels = np.zeros(0, dtype=np.int64)
    for m, (rows, pooled, y) in levels.items():
        index = np.searchsorted(rows, common)
        out[m] = as_numpy(pooled[m])[index]
        labels = y[index]
    return common, out, labels


def retrieval(
    train: Mapping[str, ClipFeatures],
    test: Mapping[str, ClipFeatures],
    ks: Sequence[int] = KS,
    cca_dim: int = CCA_DIM,
    cca_ridge: float = CCA_RIDGE,
    queries: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Recall@k of video→video and audio→audio (each modality alone, all its videos) and of
    audio→video and video→audio through a CCA fitted on the training pairs.

    ``train``/``test``: ``{"video": ClipFeatures, "audio": ClipFeatures}`` (either may be absent:
    the cross-modal results need both). ``queries``: per modality, the official query rows (test
    rows with that modality); those absent from ``test`` (unreadable) are misses. None: the rows
    present in ``test``.
    """
    result: dict[str, Any] = {"ks": list(ks)}
    official = {m: set(queries[m]) if queries else set(f.rows.tolist()) for m, f in test.items()}
    for m in ("video", "audio"):
        if m in train and m in test:
            _, g, g_y = train[m].video_level()
            rows, q, q_y = test[m].video_level()
            lost = len(official[m] - set(rows.tolist()))
            result[f"{m}_to_{m}"] = recall_at_k(q[m], q_y, g[m], g_y, ks, lost)
            result[f"n_{m}_queries"], result[f"n_{m}_gallery"] = len(q_y) + lost, len(g_y)
            result[f"unreadable_{m}_queries"] = lost
    if all(m in train and m in test for m in ("video", "audio")):
        _, train_pairs, train_y = paired(train)
        test_common, test_pairs, test_y = paired(test)
        lost = len((official["video"] & official["audio"]) - set(test_common.tolist()))
        cca = fit_cca(train_pairs["video"], train_pairs["audio"], cca_dim, cca_ridge)
        gallery_v, gallery_a = (
            cca.transform_x(train_pairs["video"]),
            cca.transform_y(train_pairs["audio"]),
        )
        query_v, query_a = (
            cca.transform_x(test_pairs["video"]),
            cca.transform_y(test_pairs["audio"]),
        )
        result["audio_to_video"] = recall_at_k(query_a, test_y, gallery_v, train_y, ks, lost)
        result["video_to_audio"] = recall_at_k(query_v, test_y, gallery_a, train_y, ks, lost)
        result["n_pairs_train"], result["n_pairs_test"] = len(train_y), len(test_y) + lost
        result["unreadable_pair_queries"] = lost
        result["cca_dim"] = int(len(cca.correlations))
        result["cca_ridge"] = cca_ridge
        result["cca_correlations"] = [round(float(c), 4) for c in cca.correlations[:8]]
    return result


def evaluate_retrieval(
    source: EvalEncoders,
    manifest: Manifest,
    train_split: str = "train",
    test_split: str = "test",
    clips: int = 10,
    bn_clips: int = 512,
    device: str | None = None,
    progress: bool = True,
    batch_size: int | None = None,
    ks: Sequence[int] = KS,
    cca_dim: int = CCA_DIM,
    cca_ridge: float = CCA_RIDGE,
    bn_statistics: str = "auto",
) -> dict[str, Any]:
    """The whole retrieval protocol for one pair of encoders (the modalities the manifest has;
    see module doc); BatchNorm statistics per ``bn_statistics``."""
    start = time.perf_counter()
    splits = (train_split, test_split)
    rows = split_rows(manifest, train_split, "--train-split")
    rows += split_rows(manifest, test_split, "--test-split")
    modalities = available_modalities(manifest, rows, ("video", "audio"))
    if len(modalities) == 1:
        missing = "video" if modalities == ("audio",) else "audio"
        print(
            f"xdc: no row of the splits has {missing}: {missing}→{missing} and cross-modal "
            f"retrieval skipped, {modalities[0]}→{modalities[0]} only",
            file=sys.stderr,
        )
    found = extract_train_test(
        source,
        manifest,
        modalities,
        splits,
        clips,
        bn_clips,
        device,
        progress,
        batch_size,
        bn_statistics=bn_statistics,
    )
    official = sorted({r for rows in found.test_rows.values() for r in rows})
    lost = sorted({r for rows in found.unreadable.values() for r in rows})
    return {
        "protocol": "retrieval",
        **retrieval(found.train, found.test, ks, cca_dim, cca_ridge, found.test_rows),
        **unreadable_record(manifest, len(official), lost),
        **protocol_record(
            source, manifest, splits, clips, found.bn_clips, start, found.bn_statistics
        ),
    }
