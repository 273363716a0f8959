"""Full finetuning on labelled videos: the UCF101 / HMDB51 protocol of the paper.

An encoder (pretrained, or random for the baseline) gets a fresh linear classifier over the
manifest's classes and ALL its parameters are trained with cross-entropy on random clips (temporal
jittering, random crop, flip). Each test video is classified by averaging the softmax of
``test_clips`` uniformly spaced, centre-cropped clips (video-level top-1); the paper reports the
mean over the 3 official splits (manifest columns ``split_1`` … ``split_3``).

Each split has its own folder (``OUT/split_1`` …) with a checkpoint per epoch; re-running the same
command resumes an unfinished split and skips a finished one (``result.json`` marks it). Everything
random is a function of (seed, epoch, clip), so a resumed split ends with the same weights as an
uninterrupted one. Outputs per split: ``result.json``, ``per_class_accuracy.json``,
``confusion.csv`` / ``.npy`` (rows: true class, columns: predicted), ``predictions.csv``,
``curve.jsonl``; for the whole command: ``OUT/finetune_config.json`` and ``OUT/finetune.json``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from xdc.checkpoint import CHECKPOINT_NAME
from xdc.data.datasets import clip_loader, epoch_keys, fixed_keys
from xdc.data.manifest import read_manifest
from xdc.errors import DataError, XdcError
from xdc.evaluation.finetune_outputs import (
    RESULT_NAME,
    epoch_line,
    restore_split_state,
    save_split_state,
    summarize_splits,
    write_curve,
    write_split_outputs,
)
from xdc.evaluation.finetune_setup import (
    EncoderSource,
    FinetuneSettings,
    SplitData,
    check_identity,
    finetune_identity,
    load_encoder_source,
    load_split,
    prepare_folder,
    read_json,
    split_rows,
)
from xdc.features import calibrated_copy
from xdc.models.heads import ClassifierHead
from xdc.run import resolve_device

EpochCallback = Callable[[dict[str, Any]], None]


class FinetuneModel(nn.Module):
    """An encoder and a new linear classifier: clips (B, 3, T, H, W) or log-mel (B, 1, M, F) → (B, K)."""

    def __init__(self, encoder: nn.Module, num_classes: int, seed: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ClassifierHead(cast(int, encoder.num_features), num_classes)
        # Seeded apart from the global RNG: the same head whatever was drawn before.
        self.head.reset_parameters(generator=torch.Generator().manual_seed(seed))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


class TrainingDiverged(XdcError):
    """The finetuning loss became NaN or infinite; the last good checkpoint is kept."""


def finetune(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    splits: Sequence[int] | None = None,
    settings: FinetuneSettings | None = None,
    like: str | Path | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Finetune ``checkpoint`` (a run folder, a checkpoint file, or ``"random"``) on each split.

    ``splits=[1, 2, 3]`` uses the manifest columns ``split_N`` and folders ``out/split_N``; ``None``
    uses the ``split`` column and ``out/split``. Every input is checked before any training.
    Returns the summary also written to ``out/finetune.json``: per split top-1 / top-5 / mean class
    accuracy, and ``mean_top1`` / ``std_top1`` (sample standard deviation) over the splits.
    """
    settings = settings or FinetuneSettings()
    settings.validate()
    source = load_encoder_source(
        checkpoint, settings.modality, settings.seed, like, preset, overrides
    )
    columns = [f"split_{n}" for n in splits] if splits else ["split"]
    manifest = read_manifest(data)
    for column in columns:
        split_rows(manifest, column, settings)
    identity = finetune_identity(source, data, settings)
    out = Path(out)
    prepare_folder(out, identity, {"checkpoint": source.description["checkpoint"]})
    dev = resolve_device(device)
    results = {
        c: finetune_split(source, data, out / c, c, settings, dev, progress, on_epoch)
        for c in columns
    }
    return summarize_splits(results, source.description["checkpoint"], identity, out)


def finetune_split(
    source: EncoderSource,
    data: str | Path,
    out_dir: str | Path,
    column: str = "split",
    settings: FinetuneSettings | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Finetune on the training rows of manifest column ``column``, test on its test rows.

    Resumes from ``out_dir/checkpoint.pt``; a finished split (``out_dir/result.json``) returns its
    saved result at once. ``on_epoch(record)`` runs after each epoch's checkpoint is written.
    Returns the result: top1, top5, mean_class_accuracy, per_class, counts, failed test videos.
    """
    settings = settings or FinetuneSettings()
    settings.validate()
    out_dir = Path(out_dir)
    identity = finetune_identity(source, data, settings)
    if (out_dir / RESULT_NAME).is_file():
        result = read_json(out_dir / RESULT_NAME)
        check_identity(result.get("identity", {}), identity, out_dir / RESULT_NAME)
        print(f"{column}: finished (test top-1 {result['top1']:.4f}); nothing to do", flush=True)
        return result
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    split = load_split(data, column, settings, source.config.data, progress)
    model = FinetuneModel(source.fresh(), len(split.label_names), settings.seed).to(dev)
    optimizer = build_optimizer(model, settings)
    amp_dtype = _amp_dtype(dev, settings)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    epoch, seconds = 0, 0.0
    history: list[dict[str, Any]] = []
    ckpt = out_dir / CHECKPOINT_NAME
    if ckpt.is_file():
        epoch, history, seconds = restore_split_state(ckpt, identity, model, optimizer, scaler)
        print(f"{column}: resuming after epoch {epoch} of {settings.epochs}", flush=True)
    start = time.perf_counter() - seconds
    while epoch < settings.epochs:
        record = train_one_epoch(
            model, optimizer, scaler, split, epoch, settings, dev, amp_dtype, progress
        )
        epoch += 1
        if settings.eval_every and epoch % settings.eval_every == 0 and epoch < settings.epochs:
            record["test_top1"] = evaluate(model, split, settings, dev, amp_dtype, progress)["top1"]
        history.append(record)
        spent = time.perf_counter() - start
        save_split_state(ckpt, identity, model, optimizer, scaler, epoch, history, spent)
        write_curve(out_dir, history)
        print(epoch_line(column, record, settings.epochs), flush=True)
        if on_epoch is not None:
            on_epoch(record)
    evaluation = evaluate(model, split, settings, dev, amp_dtype, progress)
    history[-1]["test_top1"] = evaluation["top1"]
    write_curve(out_dir, history)
    return _finish(out_dir, split, evaluation, identity, time.perf_counter() - start, settings)


def _finish(
    out_dir: Path,
    split: SplitData,
    evaluation: dict[str, Any],
    identity: dict[str, Any],
    seconds: float,
    settings: FinetuneSettings,
) -> dict[str, Any]:
    """Write the split's result files (``result.json`` last) and print its test accuracy."""
    column = split.column
    evaluation["paths"] = [split.eval_set.manifest.rows[int(r)]["path"] for r in evaluation["rows"]]
    counts = {"train": len(split.train_rows), "test": len(split.test_rows)}
    result = write_split_outputs(
        out_dir, column, split.label_names, evaluation, counts, identity, seconds
    )
    print(
        f"{column}: test top-1 {result['top1']:.4f} (video level, {settings.test_clips} clips per video, "
        f"{result['num_test_videos']} videos)",
        flush=True,
    )
    return result


def build_optimizer(model: FinetuneModel, settings: FinetuneSettings) -> torch.optim.Optimizer:
    """SGD with two groups: the encoder (lr × encoder_lr_scale) and the new head (lr)."""
    groups = [
        {"params": list(model.encoder.parameters()), "lr_scale": settings.encoder_lr_scale},
        {"params": list(model.head.parameters()), "lr_scale": 1.0},
    ]
    return torch.optim.SGD(
        groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


def lr_at(position: float, settings: FinetuneSettings) -> float:
    """Learning rate of the head at ``position`` epochs: linear warm-up, then cosine / step / constant.

    A pure function of the position, so a resumed split uses the rates of an uninterrupted one.
    """
    s = settings
    if s.warmup_epochs > 0 and position < s.warmup_epochs:
        return s.lr * position / s.warmup_epochs
    if s.schedule == "constant":
        return s.lr
    if s.schedule == "step":
        return s.lr * 0.1 ** sum(position >= m for m in s.step_epochs)
    progress = (position - s.warmup_epochs) / max(1e-9, s.epochs - s.warmup_epochs)
    return s.lr_min + 0.5 * (s.lr - s.lr_min) * (1 + math.cos(math.pi * min(1.0, progress)))


def _amp_dtype(device: torch.device, settings: FinetuneSettings) -> torch.dtype | None:
    if device.type != "cuda" or not settings.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(
    device: torch.device, amp_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def train_one_epoch(
    model: FinetuneModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    split: SplitData,
    epoch: int,
    settings: FinetuneSettings,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """One epoch of random clips (clips_per_video per training video, keys from (seed, epoch)).

    Returns the curve record: epoch (1-based), loss, train_acc, lr (at the last step), clips_per_s.
    """
    per_epoch = len(split.train_rows) * split.train_set.config.clips_per_video
    keys = epoch_keys(split.train_rows, per_epoch, settings.seed, (epoch,))
    loader = clip_loader(
        split.train_set, keys, settings.batch_size, pin_memory=device.type == "cuda"
    )
    model.train()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, correct predictions
    seen, lr, start = 0, settings.lr, time.perf_counter()
    bar = tqdm(loader, desc=f"{split.column} epoch {epoch + 1}", disable=not progress, leave=False)
    for i, batch in enumerate(bar):
        split.report_failures(batch["failures"])
        lr = lr_at(epoch + (i + 0.5) / len(loader), settings)  # the step's midpoint: never 0
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        x = batch[settings.modality].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if settings.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        # Summed on the device: no host synchronisation per step.
        sums += torch.stack(
            [loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()]
        )
        seen += len(y)
    loss_sum, correct = (float(v) for v in sums.cpu())
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(
            f"{split.column}: the finetuning loss became {loss_sum} in epoch {epoch + 1}; the last good "
            "checkpoint is kept. Lower --lr or set --grad-clip, then re-run the same command"
        )
    return {
        "epoch": epoch + 1,
        "loss": loss_sum / max(1, seen),
        "train_acc": correct / max(1, seen),
        "lr": lr,
        "clips_per_s": seen / max(1e-9, time.perf_counter() - start),
    }


@torch.no_grad()
def evaluate(
    model: FinetuneModel,
    split: SplitData,
    settings: FinetuneSettings,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Video-level class probabilities of the test videos: softmax averaged over ``test_clips``
    uniformly spaced centre-cropped clips. BatchNorm statistics are first recomputed on training
    clips, on a copy (the trained model is left as it was), as for every evaluated encoder.

    Returns {"rows": (V,) rows of ``split.eval_set.manifest``, "probs": (V, K), "labels": (V,),
    "top1": float, "failed": paths of test videos none of whose clips decoded}.
    """
    encoder, pin = model.encoder, device.type == "cuda"
    n_cal = min(settings.bn_recalibration_clips, len(split.train_rows))
    if n_cal:
        rng = np.random.default_rng([settings.seed, 11])
        chosen = np.sort(rng.choice(split.train_rows, n_cal, replace=False)).tolist()
        batches = clip_loader(
            split.eval_set, fixed_keys(chosen), settings.batch_size, pin_memory=pin
        )
        encoder = calibrated_copy(encoder, (b[settings.modality] for b in batches), device)
    was_training = model.training
    encoder.eval()
    model.head.eval()
    test_keys = fixed_keys(split.test_rows, settings.test_clips)
    loader = clip_loader(split.eval_set, test_keys, settings.batch_size, pin_memory=pin)
    rows, probs = [], []
    bad: set[str] = set()
    for batch in tqdm(loader, desc=f"{split.column} test", disable=not progress, leave=False):
        split.report_failures(batch["failures"])
        valid = batch["valid"].bool()
        bad.update(p for p, ok in zip(batch["path"], valid.tolist(), strict=True) if not ok)
        if valid.any():
            with _autocast(device, amp_dtype):
                logits = model.head(encoder(batch[settings.modality][valid].to(device)))
            probs.append(logits.float().softmax(1).cpu())
            rows.append(batch["index"][valid].numpy())
    model.train(was_training)
    if not rows:
        raise DataError(
            f"{split.column}: no test clip could be decoded; re-run `xdc index` to re-probe the files"
        )
    videos, video_probs = video_level_probabilities(np.concatenate(rows), torch.cat(probs))
    labels = torch.as_tensor([split.eval_set.manifest.label(int(r)) for r in videos])
    failed = sorted(bad - {str(split.eval_set.manifest.path(int(r))) for r in videos})
    top1 = float((video_probs.argmax(1) == labels).double().mean())
    return {"rows": videos, "probs": video_probs, "labels": labels, "top1": top1, "failed": failed}


def video_level_probabilities(rows: np.ndarray, clip_probs: Tensor) -> tuple[np.ndarray, Tensor]:
    """Average the class probabilities of each video's clips.

    Args:
        rows: (N,) the video (manifest row) of each clip, in any order.
        clip_probs: (N, K) per-clip probabilities (softmax outputs).

    Returns:
        (V,) the distinct rows, sorted, and (V, K) the mean probabilities of their clips.
    """
    videos, inverse = np.unique(np.asarray(rows), return_inverse=True)
    index = torch.from_numpy(inverse.reshape(-1)).long()
    total = torch.zeros(len(videos), clip_probs.shape[1], dtype=clip_probs.dtype)
    total.index_add_(0, index, clip_probs)
    counts = torch.bincount(index, minlength=len(videos)).to(clip_probs.dtype).unsqueeze(1)
    return videos, total / counts
