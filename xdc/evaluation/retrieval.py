"""Nearest-neighbour retrieval with frozen features: recall@k by class, within and across modalities.

Two named protocols (``--protocol``, ``PROTOCOLS``); both query with every test video against the
training split as gallery, and a query scores a hit at k when one of its k nearest gallery items
has the query's label (k > gallery size counts the whole gallery; ties go to gallery order). A
test video that could not be read stays a query and is a miss at every k (the denominator is the
official test list; ``unreadable_*_queries`` says how many); an unreadable training video is simply
absent from the gallery.

``xdc`` (the default; xdc's own): the encoders' output (global average pool of the last stage,
the feature every other protocol uses) averaged over the clips of each video, cosine similarity,
R@1/5/10/20; video→video, audio→audio, and audio↔video through a CCA (below).

``selavi`` (Asano et al., NeurIPS 2020, code ``facebookresearch/selavi``, ``src/retrieval_utils.py``;
the video retrieval protocol of Xu et al., CVPR 2019): video→video only. Features are the last
convolutional stage's map (conv5 of R(2+1)D-18) max-pooled with a 2×2×2 window and stride 2 and
flattened; each clip's feature is L2-normalised, the clips of a video are averaged (not normalised
again), and neighbours are by Euclidean distance; R@1/5/10/20/50. Where a side of the map is
shorter than 2 (conv5 of an 8-frame clip has one time step) the window is clipped to it. SeLaVi
extracts the training videos' clips with training-time sampling (random crops and temporal
jitter) and 32-frame clips; xdc uses the same fixed, uniformly spaced centre clips for both
splits and the run's clip length (both recorded in the result).

Cross-modal (audio → video, xdc's own): the two encoders' feature spaces are unrelated, so both
are mapped into a shared space fitted on the *training* split's paired (video, audio) features:
canonical correlation analysis (CCA) in numpy — centre, whiten each side with a
ridge-regularised covariance, SVD of the whitened cross-covariance, keep
``d = min(64, D_video, D_audio, N_train - 1)`` components. Queries (test audio) and gallery
(training video) are compared by cosine in that space. The ridge (a fraction of each covariance's
mean eigenvalue) keeps the whitening stable when the training set is small next to the feature
dimension.

A hit is a shared class, so rows that carry several labels (``Manifest.label_sets``) are refused
(``require_single_labels``): ``xdc linear-probe`` scores such data by mAP.

A manifest of audio-only files (``has_video`` 0 on every row) gets audio→audio only under ``xdc``:
the video and cross-modal results are left out (said on stderr); likewise video→video only without
any audio. ``selavi`` needs video.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xdc.data.manifest import Manifest
from xdc.errors import ConfigError, DataError
from xdc.evaluation.encoders import EvalEncoders
from xdc.evaluation.extract import available_modalities, require_single_labels, split_rows
from xdc.evaluation.linear_probe import as_numpy
from xdc.evaluation.protocol import extract_train_test, protocol_record, unreadable_record
from xdc.features import ClipFeatures

KS: tuple[int, ...] = (1, 5, 10, 20)
SELAVI_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
CCA_DIM = 64
CCA_RIDGE = 1e-2
DISTANCES = ("cosine", "euclidean")


@dataclass(frozen=True)
class RetrievalProtocol:
    """A retrieval protocol's settings (module doc); ``record()`` is what its result says."""

    name: str
    reference: str
    ks: tuple[int, ...]
    features: str
    """``pooled``: the encoder's output; ``conv5_maxpool``: ``LastStageMaxPool``."""
    normalisation: str
    """``none``: clip features averaged as they are; ``l2_per_clip``: each clip's feature
    L2-normalised before the clips of a video are averaged."""
    distance: str
    modalities: tuple[str, ...]
    cross_modal: bool
    deviations: tuple[str, ...] = ()
    """Where xdc's implementation differs from the reference's code, and why."""

    def record(self, data: Any) -> dict[str, Any]:
        """Every setting, for the result JSON (``data``: the run's ``DataConfig``)."""
        features = {
            "pooled": "the encoder's output (global average pool of its last stage)",
            "conv5_maxpool": "last convolutional stage's map, max-pooled 2x2x2 with stride 2 "
            "(window clipped to sides shorter than 2), flattened",
        }[self.features]
        normalisation = {
            "none": "clip features averaged per video; cosine normalises",
            "l2_per_clip": "L2 per clip, then the mean over the video's clips (not renormalised)",
        }[self.normalisation]
        return {
            "protocol": self.name,
            "reference": self.reference,
            "queries": "test split, one per official test video (unreadable: a miss at every k)",
            "gallery": "training split, one item per readable video",
            "hit": "one of the k nearest gallery items has the query's label",
            "features": features,
            "normalisation": normalisation,
            "distance": self.distance,
            "ks": list(self.ks),
            "clip_sampling": "uniformly spaced clips, centre crop, same for both splits",
            "frames_per_clip": data.num_frames,
            "crop_size": data.crop_size,
            "tasks": (
                [f"{m}_to_{m}" for m in self.modalities]
                + (["audio_to_video", "video_to_audio"] if self.cross_modal else [])
            ),
            "cross_modal": (
                "xdc's own: CCA fitted on the training split's paired features, cosine"
                if self.cross_modal
                else "none"
            ),
            "deviations": list(self.deviations),
        }


PROTOCOLS: dict[str, RetrievalProtocol] = {
    "xdc": RetrievalProtocol(
        name="xdc",
        reference="xdc's own",
        ks=KS,
        features="pooled",
        normalisation="none",
        distance="cosine",
        modalities=("video", "audio"),
        cross_modal=True,
    ),
    "selavi": RetrievalProtocol(
        name="selavi",
        reference="Asano et al., Labelling unlabelled videos from scratch with multi-modal "
        "self-supervision, NeurIPS 2020 (code: facebookresearch/selavi, src/retrieval_utils.py); "
        "protocol of Xu et al., CVPR 2019",
        ks=SELAVI_KS,
        features="conv5_maxpool",
        normalisation="l2_per_clip",
        distance="euclidean",
        modalities=("video",),
        cross_modal=False,
        deviations=(
            "a pooling window is clipped to a map side shorter than 2 (conv5 of an 8-frame clip "
            "has one time step; SeLaVi uses 32-frame clips)",
            "training videos' clips are the fixed, uniformly spaced centre clips of the test side "
            "(SeLaVi samples them with random crops and temporal jitter); clip length is the "
            "run's (frames_per_clip)",
        ),
    ),
}
"""The named retrieval protocols (``xdc retrieval --protocol NAME``)."""


def retrieval_protocol(name: str) -> RetrievalProtocol:
    """``PROTOCOLS[name]``; an unknown name raises ``ConfigError`` naming ``--protocol``."""
    if name not in PROTOCOLS:
        raise ConfigError(f"--protocol {name!r}: choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


LAST_STAGES = ("layer4", "temporal")
"""Attribute names of the last convolutional stage in xdc's encoders (R(2+1)D-18 and the audio
ResNet-18: ``layer4``; ``Mixed2D3D``: ``temporal``)."""


class LastStageMaxPool(nn.Module):
    """An encoder's last convolutional stage's map, max-pooled (window 2, stride 2 on every axis
    but batch and channel, clipped to sides shorter than 2) and flattened: SeLaVi's conv5
    retrieval feature. The encoder runs as it is; its pooled output is discarded."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        stage = next((getattr(encoder, n) for n in LAST_STAGES if hasattr(encoder, n)), None)
        if not isinstance(stage, nn.Module):
            raise ConfigError(
                f"--protocol selavi: the {type(encoder).__name__} encoder has no last "
                f"convolutional stage ({' or '.join(LAST_STAGES)}) to pool; use --protocol xdc"
            )
        self.encoder = encoder
        self.stage = stage

    def forward(self, x: Tensor) -> Tensor:
        maps: list[Tensor] = []
        handle = self.stage.register_forward_hook(lambda _m, _i, out: maps.append(out))
        try:
            self.encoder(x)
        finally:
            handle.remove()
        return pool_map(maps[-1])


def pool_map(feature_map: Tensor) -> Tensor:
    """(B, C, *sides) → (B, C × pooled sides): max pool, window and stride min(2, side)."""
    window = tuple(min(2, s) for s in feature_map.shape[2:])
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(window)]
    return torch.flatten(pool(feature_map, window, window), 1)


def normalised_clips(features: ClipFeatures, normalisation: str) -> ClipFeatures:
    """``features`` with each clip's vector L2-normalised (``l2_per_clip``) or as they are."""
    if normalisation == "none":
        return features
    unit = {
        m: f / f.norm(dim=1, keepdim=True).clamp_min(1e-12) for m, f in features.features.items()
    }
    return ClipFeatures(features.rows, features.clip, unit, features.labels, features.failures)


def cosine_similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(Q, D) × (G, D) → (Q, G) cosine similarities (zero vectors get similarity 0)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return q @ g.T


def squared_distances(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(Q, D) × (G, D) → (Q, G) squared Euclidean distances, in float64."""
    q, g = queries.astype(np.float64), gallery.astype(np.float64)
    d = (q**2).sum(1)[:, None] + (g**2).sum(1)[None, :] - 2.0 * q @ g.T
    return np.maximum(d, 0.0)


def recall_at_k(
    queries: np.ndarray | Tensor,
    query_labels: np.ndarray,
    gallery: np.ndarray | Tensor,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = KS,
    missing_queries: int = 0,
    distance: str = "cosine",
) -> dict[str, float]:
    """``{"R@k": fraction of queries with a same-label item among their k nearest}``;
    ``missing_queries`` more queries (test videos that could not be read) are misses.
    ``distance``: ``cosine`` (most similar first) or ``euclidean`` (closest first).

    Ties are broken by gallery order (stable sort), so results are deterministic.
    """
    q, g = as_numpy(queries), as_numpy(gallery)
    q_y, g_y = np.asarray(query_labels), np.asarray(gallery_labels)
    if len(q) == 0 or len(g) == 0:
        raise DataError(
            f"retrieval needs queries and a gallery; got {len(q)} queries, {len(g)} items"
        )
    if distance == "cosine":
        order = np.argsort(-cosine_similarity(q, g), axis=1, kind="stable")
    elif distance == "euclidean":
        order = np.argsort(squared_distances(q, g), axis=1, kind="stable")
    else:
        raise ConfigError(f"distance {distance!r}: choose one of {', '.join(DISTANCES)}")
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
    distance: str = "cosine",
    normalisation: str = "none",
) -> dict[str, Any]:
    """Recall@k of video→video and audio→audio (each modality alone, all its videos) and of
    audio→video and video→audio through a CCA fitted on the training pairs.

    ``train``/``test``: ``{"video": ClipFeatures, "audio": ClipFeatures}`` (either may be absent:
    the cross-modal results need both). ``queries``: per modality, the official query rows (test
    rows with that modality); those absent from ``test`` (unreadable) are misses. None: the rows
    present in ``test``. ``distance`` and ``normalisation`` (``normalised_clips``) apply within a
    modality; the cross-modal results always compare by cosine in the CCA space.
    """
    result: dict[str, Any] = {"ks": list(ks)}
    official = {m: set(queries[m]) if queries else set(f.rows.tolist()) for m, f in test.items()}
    for m in ("video", "audio"):
        if m in train and m in test:
            _, g, g_y = normalised_clips(train[m], normalisation).video_level()
            rows, q, q_y = normalised_clips(test[m], normalisation).video_level()
            lost = len(official[m] - set(rows.tolist()))
            result[f"{m}_to_{m}"] = recall_at_k(q[m], q_y, g[m], g_y, ks, lost, distance)
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
    ks: Sequence[int] | None = None,
    cca_dim: int = CCA_DIM,
    cca_ridge: float = CCA_RIDGE,
    bn_statistics: str = "auto",
    protocol: str = "xdc",
) -> dict[str, Any]:
    """The whole retrieval protocol ``protocol`` (``PROTOCOLS``) for one pair of encoders, on the
    modalities the manifest has (see module doc); BatchNorm statistics per ``bn_statistics``.
    ``ks``: None = the protocol's."""
    start = time.perf_counter()
    recipe = retrieval_protocol(protocol)
    ks = tuple(ks) if ks is not None else recipe.ks
    splits = (train_split, test_split)
    rows = split_rows(manifest, train_split, "--train-split")
    rows += split_rows(manifest, test_split, "--test-split")
    require_single_labels(manifest, rows, "retrieval (a hit shares the query's class)")
    if recipe.modalities == ("video",) and not any(manifest.has_video(r) for r in rows):
        raise DataError(
            f"{manifest.source or manifest.root}: --protocol {recipe.name} retrieves videos and "
            "no row of the splits has a video stream; use --protocol xdc for audio→audio"
        )
    modalities = available_modalities(manifest, rows, recipe.modalities)
    if len(modalities) == 1 and recipe.cross_modal:
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
        wrap=LastStageMaxPool if recipe.features == "conv5_maxpool" else None,
    )
    official = sorted({r for rows in found.test_rows.values() for r in rows})
    lost = sorted({r for rows in found.unreadable.values() for r in rows})
    found_result = retrieval(
        found.train,
        found.test,
        ks,
        cca_dim,
        cca_ridge,
        found.test_rows,
        recipe.distance,
        recipe.normalisation,
    )
    return {
        **recipe.record(source.config.data),
        "evaluation": "retrieval",
        **found_result,
        "feature_dim": {m: int(f.features[m].shape[1]) for m, f in found.train.items()},
        **unreadable_record(manifest, len(official), lost),
        **protocol_record(
            source, manifest, splits, clips, found.bn_clips, start, found.bn_statistics
        ),
        "clips_per_video": clips,
    }
