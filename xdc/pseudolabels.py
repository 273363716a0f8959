"""From features to pseudo-labels: one k-means per clustering of the method, statistics, and the
cluster-balanced sampling weights (DeepCluster: sample uniformly over non-empty clusters).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xdc import distributed as dist
from xdc import seeds
from xdc.clustering import FeaturePreprocessor, FeatureRows, cluster_statistics, kmeans
from xdc.config import ClusterConfig, cluster_k
from xdc.diagnostics import feature_rank_of
from xdc.methods import LABELS, Method


@dataclass
class PseudoLabels:
    """Labels per clustering over the rows of the manifest (−1 = not labelled)."""

    labels: dict[str, Tensor]
    centroids: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)


def make_pseudo_labels(
    method: Method,
    features: Mapping[str, Tensor | np.ndarray],
    rows: np.ndarray,
    n_rows: int,
    config: ClusterConfig,
    seed: int,
    iteration: int = 0,
    previous: dict[str, Tensor] | None = None,
    true_labels: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> PseudoLabels:
    """Cluster this process's ``features`` (rows ``rows`` of the manifest) as the method says.

    In a distributed run each process passes its own shard; k-means and the preprocessing reduce
    across processes, and the returned labels cover every row on every process.
    ``true_labels`` (all rows) feed the monitoring statistics and the ``supervised`` method.
    The k-means of clustering ``c`` uses stream ``(seed, "kmeans", iteration, c)``.
    Features given as numpy arrays (the float16 memmaps of ``xdc.features.extract_to_store``) are
    streamed a chunk at a time through normalisation, PCA and k-means; tensors are used in RAM.
    ``device``: where the clustering computes (default: the tensors' device; CPU for arrays).
    """
    out = PseudoLabels(labels={})
    for c_index, clustering in enumerate(method.clusterings):
        if clustering.name == LABELS:
            assert true_labels is not None
            out.labels[LABELS] = torch.as_tensor(true_labels, dtype=torch.int64)
            continue
        x = _clustering_input([features[m] for m in clustering.modalities], device)
        pre = FeaturePreprocessor(
            pca_dim=config.pca_dim or None,
            whiten=config.whiten,
            l2_normalize=config.l2_normalize,
        )
        features_in = x
        if config.pca_dim or config.l2_normalize:
            x = pre.fit_transform(x) if isinstance(x, Tensor) else x.map(pre.fit(x).transform)
        if pre.spectrum is None:  # no PCA: the spectrum of the features, for the diagnostics only
            pre = FeaturePreprocessor(features_in.shape[1], whiten=False, l2_normalize=False)
            pre.fit(features_in)
        rank = feature_rank_of(pre.spectrum)
        k = cluster_k(config, clustering.name)
        result = kmeans(
            x,
            k,
            n_iter=config.kmeans_iters,
            seed=seeds.int_seed(seed, "kmeans", iteration, c_index),
        )
        full = torch.full((n_rows,), -1, dtype=torch.int64)
        all_rows = dist.all_gather_varlen(torch.as_tensor(rows, dtype=torch.int64))
        all_assign = dist.all_gather_varlen(result.assignments.cpu())
        full[all_rows] = all_assign
        out.labels[clustering.name] = full
        out.centroids[clustering.name] = result.centroids.cpu()
        prev = previous.get(clustering.name) if previous else None
        keep = full >= 0
        monitor = None if true_labels is None else np.asarray(true_labels)[keep.numpy()]
        stats = cluster_statistics(
            full[keep],
            k,
            previous=None if prev is None else prev[keep],
            labels=None if monitor is None or (monitor < 0).all() else torch.as_tensor(monitor),
        )
        extra: dict[str, Any] = {
            "inertia": float(result.inertia),
            "empty_repaired": int(result.n_empty_repaired),
            "k": k,
            "effective_rank": rank,
            "feature_dim": int(features_in.shape[1]),
        }
        stats.update(extra)
        out.stats[clustering.name] = stats
    return out


def _clustering_input(
    parts: list[Tensor | np.ndarray], device: torch.device | str | None
) -> Tensor | FeatureRows:
    """The rows to cluster: each modality's features L2-normalised, then concatenated."""
    tensors = [p if device is None else p.to(device) for p in parts if isinstance(p, Tensor)]
    if len(tensors) == len(parts):
        return torch.cat([F.normalize(p.float(), dim=1) for p in tensors], dim=1)
    return FeatureRows(parts, device, normalize_parts=True)


def balanced_weights(labels: dict[str, Tensor], rows: np.ndarray) -> np.ndarray:
    """Sampling weight of each row: the average over clusterings of 1 / (non-empty clusters × size
    of the row's cluster), so every non-empty cluster of every clustering is drawn equally often
    in expectation. Rows with a label of −1 get weight 0."""
    weights = np.zeros(len(rows), dtype=np.float64)
    for assign in labels.values():
        a = assign[torch.as_tensor(rows)].numpy()
        valid = a >= 0
        sizes = np.bincount(a[valid], minlength=int(a.max()) + 1 if valid.any() else 1)
        nonempty = max(1, int((sizes > 0).sum()))
        w = np.zeros(len(rows), dtype=np.float64)
        w[valid] = 1.0 / (nonempty * sizes[a[valid]])
        weights += w / len(labels)
    return weights


def format_stats(iteration: int, stats: dict[str, dict[str, Any]]) -> str:
    """A few readable lines of cluster statistics for the console."""
    lines = []
    for name, s in stats.items():
        parts = [
            f"iteration {iteration} {name:>5} clusters: K={s['k']}",
            f"empty {s['n_empty']}",
            f"largest {100 * s['largest_fraction']:.1f}%",
            f"balance {s['size_entropy']:.2f}",
        ]
        if s.get("effective_rank") is not None:
            parts.append(f"effective rank {s['effective_rank']:.1f} of {s['feature_dim']}")
        if s.get("nmi_previous") is not None:
            parts.append(f"NMI vs previous {s['nmi_previous']:.3f}")
        if s.get("nmi_labels") is not None:
            parts.append(
                f"NMI vs labels {s['nmi_labels']:.3f} (chance {s['nmi_chance']:.3f}), "
                f"purity {s['purity_labels']:.3f}"
            )
        lines.append(", ".join(parts))
    return "\n".join(lines)
