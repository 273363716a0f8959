"""Diagnostics of a clustering: balance of the cluster sizes, stability between rounds, and
agreement with known labels (NMI, ARI, purity), each with its chance level where it has one."""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from xdc import seeds
from xdc.errors import ConfigError


def cluster_statistics(
    assignments: Tensor | np.ndarray | list[int],
    k: int,
    previous: Tensor | np.ndarray | list[int] | None = None,
    labels: Tensor | np.ndarray | list[int] | None = None,
    n_permutations: int = 5,
    seed: int = 0,
) -> dict[str, float | int | list[int]]:
    """Diagnostics of one clustering: balance, stability and agreement with known labels.

    Args:
        assignments: ``(N,)`` cluster ids in ``[0, k)``.
        k: number of clusters.
        previous: ``(N,)`` assignments of the previous round, for ``nmi_previous``.
        labels: ``(N,)`` integer class labels; ``-1`` marks unknown ones, which are ignored.
        n_permutations: random relabellings averaged for the chance levels.
        seed: seed of those permutations.

    Returns:
        ``sizes`` (list of K ints), ``n_empty``, ``size_entropy`` (entropy of the sizes over
        ``log K``: 1 = perfectly balanced), ``largest_fraction``; with ``previous``:
        ``nmi_previous`` and ``nmi_previous_chance``; with ``labels``: ``n_labelled``,
        ``nmi_labels``, ``ari_labels``, ``purity_labels`` and ``nmi_chance`` (expected NMI of a
        random labelling with the same cluster sizes against the same labels; with many clusters it
        is far from 0). Label metrics are NaN when no label is known.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    ids = _as_int_array(assignments, "assignments")
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        raise ConfigError(f"assignments must lie in [0, k={k}), got [{ids.min()}, {ids.max()}]")
    sizes = np.bincount(ids, minlength=k)
    n = max(1, ids.size)
    nonzero = sizes[sizes > 0] / n
    entropy = float(-(nonzero * np.log(nonzero)).sum())
    stats: dict[str, float | int | list[int]] = {
        "sizes": sizes.tolist(),
        "n_empty": int((sizes == 0).sum()),
        "size_entropy": entropy / math.log(k) if k > 1 else 1.0,
        "largest_fraction": float(sizes.max() / n) if ids.size else 0.0,
    }
    rng = seeds.rng(seed, "chance_nmi")
    if previous is not None:
        before = _as_int_array(previous, "previous", ids.size)
        stats["nmi_previous"] = float(normalized_mutual_info_score(before, ids))
        stats["nmi_previous_chance"] = _chance_nmi(before, ids, n_permutations, rng)
    if labels is not None:
        truth = _as_int_array(labels, "labels", ids.size)
        known = truth >= 0
        stats["n_labelled"] = int(known.sum())
        if not known.any():
            for key in ("nmi_labels", "ari_labels", "purity_labels", "nmi_chance"):
                stats[key] = float("nan")
            return stats
        truth, found = truth[known], ids[known]
        stats["nmi_labels"] = float(normalized_mutual_info_score(truth, found))
        stats["ari_labels"] = float(adjusted_rand_score(truth, found))
        contingency = np.zeros((k, truth.max() + 1), dtype=np.int64)
        np.add.at(contingency, (found, truth), 1)
        stats["purity_labels"] = float(contingency.max(1).sum() / found.size)
        stats["nmi_chance"] = _chance_nmi(truth, found, n_permutations, rng)
    return stats


def _as_int_array(
    values: Tensor | np.ndarray | list[int], name: str, length: int = -1
) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(
            f"{name} must be a 1-D array of integers, got {array.dtype} {array.shape}"
        )
    if length >= 0 and array.size != length:
        raise ConfigError(f"{name} has {array.size} entries but assignments has {length}")
    return array.astype(np.int64)


def _chance_nmi(reference: np.ndarray, ids: np.ndarray, n: int, rng: np.random.Generator) -> float:
    """Mean NMI between ``reference`` and random permutations of ``ids`` (same cluster sizes)."""
    from sklearn.metrics import normalized_mutual_info_score

    scores = [normalized_mutual_info_score(reference, rng.permutation(ids)) for _ in range(n)]
    return float(np.mean(scores)) if scores else float("nan")
