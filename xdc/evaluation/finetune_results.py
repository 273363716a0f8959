"""What ``xdc finetune`` writes: per split ``result.json`` (last: it marks the split finished),
``per_class_accuracy.json``, ``confusion.csv`` / ``.npy``, ``predictions.csv`` and ``curve.jsonl``;
for the whole command ``finetune.json`` and the printed table. Every result carries the protocol
record (``finetune_protocols.protocol_record``): a modified recipe says so in the table too.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xdc import atomic
from xdc.atomic import write_json
from xdc.evaluation.protocol import MODALITY_RULE, unreadable_line

RESULT_NAME = "result.json"
SUMMARY_NAME = "finetune.json"


def write_split_outputs(
    out_dir: Path,
    column: str,
    label_names: Sequence[str],
    evaluation: dict[str, Any],
    counts: dict[str, int],
    identity: dict[str, Any],
    seconds: float,
    protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a split's per-class accuracy, confusion matrix and predictions per video, then
    ``result.json`` (last: it marks the split as finished). Returns the result dict.

    ``evaluation`` holds ``paths`` (V,), ``probs`` (V, K) video-level probabilities, ``labels`` (V,),
    ``top1``, ``failed`` (paths of unreadable test videos) and ``missing_labels`` (their classes);
    ``counts`` the numbers of training and test videos. Unreadable test videos count as wrong in
    top-1, top-5 and per-class accuracy; they have no column in the confusion matrix and an empty
    prediction in ``predictions.csv``.
    """
    names = list(label_names)
    probs, labels = evaluation["probs"], evaluation["labels"]
    missing = np.asarray(evaluation.get("missing_labels", []), dtype=np.int64)
    predicted = probs.argmax(1)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), predicted.numpy()), 1)
    per_video = confusion.sum(1) + np.bincount(missing, minlength=len(names))
    per_class = {
        n: float(confusion[k, k] / per_video[k]) if per_video[k] else None
        for k, n in enumerate(names)
    }
    np.save(out_dir / "confusion.npy", confusion)
    with (out_dir / "confusion.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true \\ predicted", *names])
        writer.writerows([names[k], *confusion[k].tolist()] for k in range(len(names)))
    with (out_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "predicted", "probability"])
        for path, label, pred, p in zip(
            evaluation["paths"], labels.tolist(), predicted.tolist(), probs.tolist(), strict=True
        ):
            writer.writerow([path, names[label], names[pred], f"{p[pred]:.6f}"])
        for path, label in zip(evaluation["failed"], missing.tolist(), strict=True):
            writer.writerow([path, names[label], "", ""])  # unreadable: counted as wrong
    test_videos = dict(zip(names, per_video.tolist(), strict=True))
    write_json(
        out_dir / "per_class_accuracy.json", {"accuracy": per_class, "test_videos": test_videos}
    )
    official = len(labels) + len(missing)
    top5 = probs.topk(min(5, len(names)), dim=1).indices.eq(labels.unsqueeze(1)).any(1)
    result = {
        "split": column,
        "top1": evaluation["top1"],
        "top5": float(top5.double().sum()) / official,
        "mean_class_accuracy": float(np.mean([v for v in per_class.values() if v is not None])),
        "num_test_videos": official,
        "unreadable_test_videos": len(missing),
        "num_train_videos": counts["train"],
        "failed_test_videos": evaluation["failed"],
        "without_modality": {
            "rule": MODALITY_RULE,
            "count": len(evaluation.get("without_modality", [])),
            "paths": list(evaluation.get("without_modality", [])),
        },
        "per_class": per_class,
        "test": {
            "clips": identity["finetune"]["test_clips"],
            "crops": identity["finetune"]["test_crops"],
            "average": identity["finetune"]["test_average"],
            "bn_statistics": "learned while finetuning (model.eval(), nothing recomputed)",
        },
        "protocol": protocol or {},
        "seconds": seconds,
        "identity": identity,
    }
    write_json(out_dir / RESULT_NAME, result)
    return result


def write_curve(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """``curve.jsonl``: one record per epoch, rewritten from the checkpoint's history."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic.write_text(out_dir / "curve.jsonl", text)


def summarize_splits(
    results: dict[str, dict[str, Any]],
    checkpoint: str,
    identity: dict[str, Any],
    out: Path,
    protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out/finetune.json`` (each split's scores, the mean and sample std of top-1 over
    the splits, the protocol record), print the table, and return the summary."""
    top1 = np.array([r["top1"] for r in results.values()])
    keys = ("top1", "top5", "mean_class_accuracy", "num_test_videos", "unreadable_test_videos")
    summary = {
        "splits": {name: {k: r[k] for k in keys} for name, r in results.items()},
        "mean_top1": float(top1.mean()),
        "std_top1": float(top1.std(ddof=1)) if len(top1) > 1 else 0.0,
        "mean_top5": float(np.mean([r["top5"] for r in results.values()])),
        "checkpoint": checkpoint,
        "protocol": protocol or {},
        "identity": identity,
    }
    write_json(out / SUMMARY_NAME, summary)
    print(format_summary(summary), flush=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The printed table: one line per split, then the mean and standard deviation of top-1, and
    how many test videos could not be read (counted as wrong)."""
    lines = [
        f"{'split':<10} {'top-1':>7} {'top-5':>7} {'class acc':>9} {'videos':>7} {'unreadable':>10}"
    ]
    unreadable = official = 0
    for name, r in summary["splits"].items():
        lost = r.get("unreadable_test_videos", 0)
        unreadable, official = unreadable + lost, official + r["num_test_videos"]
        lines.append(
            f"{name:<10} {r['top1']:>7.4f} {r['top5']:>7.4f} {r['mean_class_accuracy']:>9.4f} "
            f"{r['num_test_videos']:>7} {lost:>10}"
        )
    lines.append(f"{'mean':<10} {summary['mean_top1']:>7.4f} {summary['mean_top5']:>7.4f}")
    lines.append(f"{'std':<10} {summary['std_top1']:>7.4f}")
    lines.append(unreadable_line(unreadable, official))
    protocol = summary.get("protocol") or {}
    if protocol:
        kind = "standard" if protocol["standard"] else "not the standard protocol"
        lines.append(f"protocol: {protocol['label']} ({kind})")
    return "\n".join(lines)
