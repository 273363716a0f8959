"""How well the clusterings a run made agree with the true labels: NMI, ARI and purity, each
next to the NMI a random labelling with the same cluster sizes would get (chance).

Two sources, both against the labels of the manifest the run trained on (``RUN/run.json``):

- the **final** clusterings, stored in the checkpoint (``loop.labels``: one id per row of that
  manifest's training split, −1 = not clustered), recomputed here with
  ``xdc.cluster_metrics.cluster_statistics``;
- the clustering of **every iteration**, as logged in ``RUN/metrics.jsonl`` (``cluster`` events)
  when it was made. Iterations are counted from 1, as the training printed them.

Rows without a label, and rows the clustering left out, are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xdc.checkpoint import load_checkpoint
from xdc.cluster_metrics import cluster_statistics
from xdc.config import cluster_k, config_from_dict
from xdc.data.manifest import read_manifest
from xdc.errors import CheckpointError, DataError
from xdc.methods import LABELS
from xdc.run import read_run_info
from xdc.runlog import read_metrics

METRIC_KEYS = ("nmi", "ari", "purity", "nmi_chance")


def final_clusterings(run: str | Path) -> list[dict[str, Any]]:
    """Statistics of each clustering stored in the run's checkpoint, against the manifest labels."""
    info = read_run_info(run)
    manifest = read_manifest(info["data"]).select(info.get("split") or None)
    truth = np.asarray(manifest.labels(), dtype=np.int64)
    if not (truth >= 0).any():
        raise DataError(
            f"{info['data']}: no row of the run's split has a label; cluster evaluation compares "
            "clusters with the 'label' column, fill it to use cluster-eval"
        )
    state = load_checkpoint(run)
    try:
        labels = state["loop"]["labels"]
        config = config_from_dict(state["config"])
    except KeyError as err:
        raise CheckpointError(
            f"{run}: checkpoint lacks {err}; was it written by xdc pretrain?"
        ) from err
    results = []
    for name, assignments in labels.items():
        ids = np.asarray(assignments, dtype=np.int64)
        if len(ids) != len(truth):
            raise DataError(
                f"{info['data']}: the run's split has {len(truth)} rows but its clustering "
                f"{name!r} covers {len(ids)}; the manifest changed since pretraining — restore it"
            )
        keep = ids >= 0
        k = len(manifest.label_names) if name == LABELS else cluster_k(config.cluster, name)
        k = max(k, int(ids.max()) + 1 if keep.any() else k)
        stats = cluster_statistics(ids[keep], k, labels=truth[keep])
        results.append(
            {
                "clustering": name,
                "source": "checkpoint",
                "k": k,
                "n": int(keep.sum()),
                "n_labelled": int((truth[keep] >= 0).sum()),
                "nmi": stats["nmi_labels"],
                "ari": stats["ari_labels"],
                "purity": stats["purity_labels"],
                "nmi_chance": stats["nmi_chance"],
                "n_empty": stats["n_empty"],
                "size_entropy": stats["size_entropy"],
            }
        )
    return results


def logged_clusterings(run: str | Path) -> list[dict[str, Any]]:
    """Per-iteration statistics from ``RUN/metrics.jsonl`` (empty when none were logged)."""
    rows = []
    for event in read_metrics(run, "cluster"):
        rows.append(
            {
                "iteration": int(event.get("iteration", -1)) + 1,
                "clustering": event.get("clustering", "?"),
                "k": event.get("k"),
                "nmi": _number(event.get("nmi_labels")),
                "ari": _number(event.get("ari_labels")),
                "purity": _number(event.get("purity_labels")),
                "nmi_chance": _number(event.get("nmi_chance")),
                "n_empty": event.get("n_empty"),
                "size_entropy": _number(event.get("size_entropy")),
            }
        )
    return rows


def _number(value: Any) -> float:
    """A logged number (non-finite ones are logged as strings) as a float; absent → NaN."""
    if value is None:
        return float("nan")
    return float(value)


def cluster_evaluation(run: str | Path) -> dict[str, Any]:
    """``{"run", "data", "split", "final": [...], "iterations": [...]}`` (see the module doc)."""
    info = read_run_info(run)
    return {
        "run": str(Path(run).resolve()),
        "data": info["data"],
        "split": info.get("split"),
        "final": final_clusterings(run),
        "iterations": logged_clusterings(run),
    }
