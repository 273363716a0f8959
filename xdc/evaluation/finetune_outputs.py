"""What ``xdc finetune`` writes (the loop is ``xdc.evaluation.finetune``): each split's checkpoint
(``checkpoint.pt``, one per epoch), curve (``curve.jsonl``) and result files (per-class accuracy,
confusion matrix, predictions per video, ``result.json`` last), and the summary over the splits
(``finetune.json`` and the printed table).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xdc.checkpoint import load_checkpoint, save_checkpoint
from xdc.errors import CheckpointError
from xdc.evaluation.finetune_setup import check_identity, one_line, write_json

if TYPE_CHECKING:  # finetune imports this module
    from xdc.evaluation.finetune import FinetuneModel

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
) -> dict[str, Any]:
    """Write a split's per-class accuracy, confusion matrix and predictions per video, then
    ``result.json`` (last: it marks the split as finished). Returns the result dict.

    ``evaluation`` holds ``paths`` (V,), ``probs`` (V, K) video-level probabilities, ``labels`` (V,),
    ``top1`` and ``failed``; ``counts`` the numbers of training and test videos.
    """
    names = list(label_names)
    probs, labels = evaluation["probs"], evaluation["labels"]
    predicted = probs.argmax(1)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), predicted.numpy()), 1)
    per_video = confusion.sum(1)
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
    test_videos = dict(zip(names, per_video.tolist(), strict=True))
    write_json(
        out_dir / "per_class_accuracy.json", {"accuracy": per_class, "test_videos": test_videos}
    )
    top5 = probs.topk(min(5, len(names)), dim=1).indices.eq(labels.unsqueeze(1)).any(1)
    result = {
        "split": column,
        "top1": evaluation["top1"],
        "top5": float(top5.double().mean()),
        "mean_class_accuracy": float(np.mean([v for v in per_class.values() if v is not None])),
        "num_test_videos": len(labels),
        "num_train_videos": counts["train"],
        "failed_test_videos": evaluation["failed"],
        "per_class": per_class,
        "seconds": seconds,
        "identity": identity,
    }
    write_json(out_dir / RESULT_NAME, result)
    return result


def write_curve(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """``curve.jsonl``: one record per epoch, rewritten from the checkpoint's history."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in history)
    (out_dir / "curve.jsonl").write_text(text, encoding="utf-8")


def summarize_splits(
    results: dict[str, dict[str, Any]], checkpoint: str, identity: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Write ``out/finetune.json`` (each split's scores, the mean and sample std of top-1 over
    the splits), print the table, and return the summary."""
    top1 = np.array([r["top1"] for r in results.values()])
    keys = ("top1", "top5", "mean_class_accuracy", "num_test_videos")
    summary = {
        "splits": {name: {k: r[k] for k in keys} for name, r in results.items()},
        "mean_top1": float(top1.mean()),
        "std_top1": float(top1.std(ddof=1)) if len(top1) > 1 else 0.0,
        "mean_top5": float(np.mean([r["top5"] for r in results.values()])),
        "checkpoint": checkpoint,
        "identity": identity,
    }
    write_json(out / SUMMARY_NAME, summary)
    print(format_summary(summary), flush=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The printed table: one line per split, then the mean and standard deviation of top-1."""
    lines = [f"{'split':<10} {'top-1':>7} {'top-5':>7} {'class acc':>9} {'videos':>7}"]
    for name, r in summary["splits"].items():
        lines.append(
            f"{name:<10} {r['top1']:>7.4f} {r['top5']:>7.4f} {r['mean_class_accuracy']:>9.4f} "
            f"{r['num_test_videos']:>7}"
        )
    lines.append(f"{'mean':<10} {summary['mean_top1']:>7.4f} {summary['mean_top5']:>7.4f}")
    lines.append(f"{'std':<10} {summary['std_top1']:>7.4f}")
    return "\n".join(lines)


def save_split_state(
    path: Path,
    identity: dict[str, Any],
    model: FinetuneModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    history: list[dict[str, Any]],
    seconds: float,
) -> None:
    """Write a split's checkpoint (atomically): weights, optimizer, scaler, curve, time spent."""
    state = {
        "kind": "finetune",
        "identity": identity,
        "epoch": epoch,
        "history": history,
        "seconds": seconds,
        "encoder": model.encoder.state_dict(),
        "head": model.head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    }
    save_checkpoint(state, path)


def restore_split_state(
    path: Path,
    identity: dict[str, Any],
    model: FinetuneModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> tuple[int, list[dict[str, Any]], float]:
    """Load a split's checkpoint; returns (epochs done, curve records, seconds spent)."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{one_line(err)}; delete it to restart this split") from err
    if state.get("kind") != "finetune":
        raise CheckpointError(f"{path}: not a finetuning checkpoint; pass a new --out folder")
    check_identity(state.get("identity", {}), identity, path)
    try:
        model.encoder.load_state_dict(state["encoder"])
        model.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: does not fit this model ({one_line(err)}); delete it or pass a new --out"
        ) from err
    return int(state["epoch"]), list(state["history"]), float(state.get("seconds", 0.0))


def epoch_line(column: str, record: dict[str, Any], epochs: int) -> str:
    """The line printed after each epoch."""
    test = f" | test top-1 {record['test_top1']:.4f}" if "test_top1" in record else ""
    return (
        f"{column} epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f} acc {record['train_acc']:.4f} "
        f"lr {record['lr']:.5f}{test} ({record['clips_per_s']:.1f} clips/s)"
    )
