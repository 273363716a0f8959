"""Full finetuning on labelled videos: the UCF101 / HMDB51 protocol of the paper.

An encoder (pretrained, or random for the baseline) gets a fresh linear classifier over the
manifest's classes and ALL its parameters are trained with cross-entropy on random clips (temporal
jittering, random crop, flip); ``--encoder-lr-scale 0`` trains the head only, with the encoder in
eval mode (its weights and BatchNorm statistics stay exactly as loaded). Each test video is
classified by averaging the softmax of ``test_clips`` uniformly spaced clips × ``test_crops``
crops (1: centre; 3: both ends and the centre of the long side, as GDT tests), video-level top-1;
the paper reports the mean over the 3 official splits (manifest columns ``split_1`` … ``split_3``).
The test runs the model in eval mode with the BatchNorm statistics learned while finetuning, as
the field's published code does (nothing is recomputed). A test video none of whose clips decoded
stays in the denominator and counts as wrong (``unreadable_test_videos`` in every result).

Each split has its own folder (``OUT/split_1`` …) with a checkpoint per epoch; re-running the same
command resumes an unfinished split and skips a finished one (``result.json`` marks it). Everything
random is a function of (seed, epoch, clip), so a resumed split ends with the same weights as an
uninterrupted one. Outputs per split: ``result.json``, ``per_class_accuracy.json``,
``confusion.csv`` / ``.npy`` (rows: true class, columns: predicted), ``predictions.csv``,
``curve.jsonl``; for the whole command: ``OUT/finetune_config.json`` and ``OUT/finetune.json``.

The module reads top-down: what a finetuning starts from (``FinetuneSettings``, one field per
command-line flag; the encoder ``--checkpoint RUN|FILE|random`` names, ``EncoderSource``; the
split columns and datasets, ``SplitData``; the identity an output folder, a split checkpoint or a
finished result must match to be resumed or reused), the loop and the test, what it writes, and
the ``xdc finetune`` command (``add_finetune_parser`` / ``cmd_finetune``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xdc import atomic, optim, seeds
from xdc.atomic import write_json
from xdc.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from xdc.config import DataConfig, PretrainConfig, config_diff
from xdc.data.datasets import ClipDataset, ClipKey, clip_loader, epoch_keys, fixed_keys
from xdc.data.manifest import Manifest, read_manifest
from xdc.data.transforms import crop_and_flip
from xdc.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from xdc.evaluation.cli_shared import Subcommands, add_architecture_arguments, add_device_arguments
from xdc.evaluation.encoders import RANDOM, load_eval_encoders, parse_overrides
from xdc.evaluation.extract import split_rows
from xdc.evaluation.protocol import unreadable_line
from xdc.features import mean_per_video
from xdc.models.heads import ClassifierHead
from xdc.progress import inform, track
from xdc.run import resolve_device

# --- what a finetuning starts from ------------------------------------------------------------


SETTINGS_NAME = "finetune_config.json"
# Data settings that change how fast clips load, never which clips: free to differ on resume.
RUNTIME_DATA_KEYS = ("num_workers", "cache", "cache_gib")
# Finetuning defaults on top of the run's clip settings (user overrides win): the paper's recipe
# uses crops and flips, not the strong augmentation of the tiny pretraining preset.
FINETUNE_DATA_DEFAULTS = ("data.augment=none", "data.spec_augment=false")


def _flag(default: Any, help: str) -> Any:
    """A settings field whose ``help`` is also the help of its command-line flag."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FinetuneSettings:
    """How to finetune. Each field is the ``xdc finetune`` flag of the same name (``encoder_lr_scale``
    → ``--encoder-lr-scale``) and documents itself in ``metadata["help"]``. [U]: the paper does not
    publish its finetuning recipe; these defaults are sensible guesses, all configurable."""

    modality: str = _flag("video", "encoder to finetune: video (UCF101/HMDB51) or audio")
    epochs: int = _flag(10, "training epochs per split [U]")
    lr: float = _flag(0.01, "peak learning rate of the new classifier; SGD [U]")
    encoder_lr_scale: float = _flag(
        1.0,
        "the encoder learns at lr x this: 1 trains everything alike; below 1 keeps a pretrained "
        "encoder nearer its start while the new head catches up; 0 trains the head only: the "
        "encoder stays in eval mode, weights and BatchNorm statistics unchanged",
    )
    batch_size: int = _flag(16, "clips per step")
    momentum: float = _flag(0.9, "SGD momentum")
    weight_decay: float = _flag(5e-4, "L2 penalty on every parameter [U]")
    schedule: str = _flag("cosine", "after warm-up: cosine (to lr_min), step or constant")
    step_epochs: tuple[int, ...] = _flag(
        (), "epochs where the step schedule divides the lr by 10, e.g. 6,8"
    )
    warmup_epochs: float = _flag(1.0, "linear warm-up length in epochs")
    lr_min: float = _flag(0.0, "final learning rate of the cosine schedule")
    grad_clip: float = _flag(10.0, "clip the global gradient norm to this (0 = off)")
    test_clips: int = _flag(10, "uniformly spaced clips per test video whose softmax is averaged")
    test_crops: int = _flag(
        1, "crops per test clip: 1 (centre) or 3 (both ends and centre of the long side, as GDT)"
    )
    eval_every: int = _flag(0, "also test every N epochs (0 = only at the end)")
    train_split: str = _flag("train", "value of the split column that marks training videos")
    test_split: str = _flag("test", "value of the split column that marks test videos")
    seed: int = _flag(
        0, "seed of the head (and of a random encoder), the clips and their augmentation"
    )
    amp: bool = _flag(True, "mixed precision on CUDA (ignored on CPU)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the flag of the first invalid value."""
        checks = [
            (self.modality in ("video", "audio"), "--modality", "must be video or audio"),
            (self.epochs >= 1, "--epochs", "must be >= 1"),
            (self.lr > 0, "--lr", "must be > 0"),
            (self.encoder_lr_scale >= 0, "--encoder-lr-scale", "must be >= 0"),
            (self.batch_size >= 1, "--batch-size", "must be >= 1"),
            (0 <= self.momentum < 1, "--momentum", "must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay", "must be >= 0"),
            (
                self.schedule in ("cosine", "step", "constant"),
                "--schedule",
                "must be cosine, step or constant",
            ),
            (
                self.schedule != "step" or bool(self.step_epochs),
                "--step-epochs",
                "is needed by --schedule step",
            ),
            (self.warmup_epochs >= 0, "--warmup-epochs", "must be >= 0"),
            (0 <= self.lr_min <= self.lr, "--lr-min", "must be in [0, --lr]"),
            (self.grad_clip >= 0, "--grad-clip", "must be >= 0 (0 = off)"),
            (self.test_clips >= 1, "--test-clips", "must be >= 1"),
            (self.eval_every >= 0, "--eval-every", "must be >= 0 (0 = only at the end)"),
            (self.test_crops in (1, 3), "--test-crops", "must be 1 or 3"),
            (
                self.test_crops == 1 or self.modality == "video",
                "--test-crops",
                "3 crops apply to video; pass --test-crops 1 with --modality audio",
            ),
            (self.train_split != self.test_split, "--test-split", "must differ from --train-split"),
        ]
        for ok, flag, message in checks:
            if not ok:
                raise ConfigError(f"{flag}: {message}")


@dataclass
class EncoderSource:
    """The encoder finetuning starts from, its clip settings, and a description for the records."""

    encoder: nn.Module
    """Initial encoder of the modality (each split trains its own copy)."""
    config: PretrainConfig
    """Its architecture (``model``) and the clip parameters to train and test with (``data``)."""
    description: dict[str, Any]
    """JSON-friendly: ``checkpoint`` ("random" or the path), ``weights_sha256``, ``model``, ``clips``."""

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.encoder)


def load_encoder_source(
    checkpoint: str | Path,
    modality: str = "video",
    seed: int = 0,
    like: str | Path | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
) -> EncoderSource:
    """The encoder ``--checkpoint RUN|FILE|random`` names, with ``data.key=value`` overrides.

    A run's architecture is fixed by its checkpoint; ``random`` takes it from ``--like RUN`` or
    ``--preset`` (``model.key=value`` overrides allowed) and its weights from ``seed``.
    """
    is_random = str(checkpoint) == RANDOM
    for key, _ in parse_overrides(overrides):
        if not (key.startswith("data.") or (is_random and key.startswith("model."))):
            allowed = (
                "data.* and model.*"
                if is_random
                else "data.* (a checkpoint fixes the architecture)"
            )
            raise ConfigError(
                f"override {key}: finetuning accepts {allowed} overrides; set training with flags"
            )
    try:
        found = load_eval_encoders(
            str(checkpoint),
            None if like is None else str(like),
            preset,
            [*FINETUNE_DATA_DEFAULTS, *overrides],
            seed,
        )
    except CheckpointError as err:
        where = "" if str(checkpoint) in str(err) else f"--checkpoint {checkpoint}: "
        raise CheckpointError(f"{where}{one_line(err)}") from err
    encoder = found.encoders[modality]
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    data = {
        k: v for k, v in dataclasses.asdict(found.config.data).items() if k not in RUNTIME_DATA_KEYS
    }
    description = {
        "checkpoint": RANDOM if is_random else str(Path(checkpoint).resolve()),
        "weights_sha256": digest.hexdigest()[:16],
        "model": dataclasses.asdict(found.config.model),
        "clips": data,
    }
    return EncoderSource(encoder, found.config, description)


def finetune_rows(
    manifest: Manifest, column: str, settings: FinetuneSettings
) -> tuple[list[int], list[int]]:
    """(training rows, test rows) of manifest column ``column``; ``DataError`` naming the fix."""
    src = manifest.source or manifest.root
    if column not in manifest.columns:
        if column == "split":
            raise DataError(
                f"{src}: no 'split' column; fill one with train/test, or pass --splits 1,2,3"
            )
        raise DataError(
            f"{src}: no column {column!r} for --splits; write split_1..split_3 with "
            f"`xdc index SOURCE -o {src} --splits-dir DIR` (DIR: the official UCF101/HMDB51 split files)"
        )
    rows = {
        s: split_rows(manifest, s, flag, column)
        for s, flag in (
            (settings.train_split, "--train-split"),
            (settings.test_split, "--test-split"),
        )
    }
    unlabelled = [i for s in rows.values() for i in s if not manifest.rows[i].get("label", "")]
    if unlabelled:
        raise DataError(
            f"{src}: {len(unlabelled)} rows of {column!r} have no label (first: {manifest.rows[unlabelled[0]]['path']}); "
            "finetuning is supervised: fill the 'label' column"
        )
    if len(manifest.label_names) < 2:
        raise DataError(f"{src}: finetuning needs at least 2 classes in the 'label' column")
    return rows[settings.train_split], rows[settings.test_split]


@dataclass
class SplitData:
    """The videos of one split: ``train_rows`` / ``test_rows`` index ``train_set.manifest``."""

    column: str
    label_names: list[str]
    train_rows: list[int]
    test_rows: list[int]
    train_set: ClipDataset
    eval_set: ClipDataset
    failures: set[str] = field(default_factory=set)

    def report_failures(self, failures: Sequence[str]) -> None:
        for f in failures:
            if f not in self.failures:
                self.failures.add(f)
                print(f"xdc: skipped unreadable video {f}", file=sys.stderr)


def load_split(
    data: str | Path,
    column: str,
    settings: FinetuneSettings,
    clips: DataConfig,
    progress: bool = True,
) -> SplitData:
    """Datasets of one split: random training clips and fixed test clips of ``settings.modality``."""
    manifest = read_manifest(data)
    train, test = finetune_rows(manifest, column, settings)
    sub = manifest.subset(train + test)  # keeps the class numbering of the whole manifest
    modalities = (settings.modality,)
    train_set = ClipDataset(sub, clips, train=True, modalities=modalities)
    test_dataset = ThreeCropClips if settings.test_crops == 3 else ClipDataset
    eval_set = test_dataset(sub, clips, train=False, modalities=modalities, replace_failed=False)
    usable = set(train_set.rows)
    train_rows = [r for r in range(len(train)) if r in usable]
    test_rows = [r for r in range(len(train), len(sub)) if r in usable]
    if not train_rows or not test_rows:
        raise DataError(
            f"{data}: split {column!r} has no {settings.modality} videos left in its train or test set"
        )
    train_set.replacement_pool = train_rows  # a broken training video is replaced by another one
    if clips.cache == "memory":
        eval_set.cache = train_set.build_cache(progress)
    return SplitData(column, list(manifest.label_names), train_rows, test_rows, train_set, eval_set)


def one_line(err: Exception) -> str:
    """An error's message on one line: torch's multi-line load errors become a short reason."""
    lines = str(err).strip().splitlines()
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    return lines[0].split(" (")[0] + " (corrupt, or not a file written by xdc)"


def finetune_identity(
    source: EncoderSource, data: str | Path, settings: FinetuneSettings
) -> dict[str, Any]:
    """What makes two finetunings the same: the data, the starting encoder, clips and settings.

    The checkpoint's path is left out (its weights' hash is in), so a moved run still resumes.
    """
    encoder = {k: v for k, v in source.description.items() if k != "checkpoint"}
    return {"data": str(Path(data).resolve()), "encoder": encoder, "finetune": settings.to_dict()}


def check_identity(saved: dict[str, Any], identity: dict[str, Any], where: Path) -> None:
    diffs = config_diff(saved, identity)
    if diffs:
        raise ConfigError(
            f"{where} was made with other settings (differs in: {', '.join(diffs)}); pass the same "
            "flags to resume it, or a new --out"
        )


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{path}: unreadable ({err}); delete it to start that part again"
        ) from err
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object; delete it to start that part again")
    return value


def prepare_folder(out: Path, identity: dict[str, Any], info: dict[str, Any]) -> None:
    """Create ``out`` with its settings file, or check that an existing one has the same settings."""
    path = out / SETTINGS_NAME
    if path.is_file():
        saved = read_json(path)
        saved.pop("info", None)
        check_identity(saved, identity, path)
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"--out {out} exists and is not a finetuning folder; pass a new or empty folder"
        )
    atomic.write_json(path, {**identity, "info": info})


# --- the model, the loop and the test ---------------------------------------------------------


EpochCallback = Callable[[dict[str, Any]], None]


class FinetuneModel(nn.Module):
    """An encoder and a new linear classifier: clips (B, 3, T, H, W) or log-mel (B, 1, M, F) → (B, K)."""

    def __init__(self, encoder: nn.Module, num_classes: int, seed: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ClassifierHead(cast(int, encoder.num_features), num_classes)
        # Seeded apart from the global RNG: the same head whatever was drawn before.
        self.head.reset_parameters(generator=seeds.torch_generator(seed, "finetune_head"))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


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
        finetune_rows(manifest, column, settings)
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
        inform(f"{column}: finished (test top-1 {result['top1']:.4f}); nothing to do")
        return result
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    split = load_split(data, column, settings, source.config.data, progress)
    model = FinetuneModel(source.fresh(), len(split.label_names), settings.seed).to(dev)
    optimizer = build_optimizer(model, settings)
    amp_dtype = optim.amp_dtype(dev, settings.amp)
    scaler = optim.grad_scaler(amp_dtype)
    epoch, seconds = 0, 0.0
    history: list[dict[str, Any]] = []
    ckpt = out_dir / CHECKPOINT_NAME
    if ckpt.is_file():
        epoch, history, seconds = restore_split_state(ckpt, identity, model, optimizer, scaler)
        inform(f"{column}: resuming after epoch {epoch} of {settings.epochs}")
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
        inform(epoch_line(column, record, settings.epochs))
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
        f"{column}: test top-1 {result['top1']:.4f} (video level, {settings.test_clips} clips x "
        f"{settings.test_crops} crops per video, {result['num_test_videos']} videos; "
        f"{unreadable_line(result['unreadable_test_videos'], result['num_test_videos'])})",
        flush=True,
    )
    return result


def head_only(settings: FinetuneSettings) -> bool:
    """``--encoder-lr-scale 0``: only the head trains; the encoder stays frozen in eval mode."""
    return settings.encoder_lr_scale == 0


def build_optimizer(model: FinetuneModel, settings: FinetuneSettings) -> torch.optim.Optimizer:
    """SGD with two groups: the encoder (lr × encoder_lr_scale) and the new head (lr); the head
    alone when it trains alone (the frozen encoder gets no gradient and no weight decay)."""
    groups = [{"params": list(model.head.parameters()), "lr_scale": 1.0}]
    if not head_only(settings):
        encoder = {
            "params": list(model.encoder.parameters()),
            "lr_scale": settings.encoder_lr_scale,
        }
        groups.insert(0, encoder)
    return optim.sgd(groups, settings)


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
    rng = seeds.rng(settings.seed, "finetune_sample", epoch)
    keys = epoch_keys(split.train_rows, per_epoch, rng)
    loader = clip_loader(
        split.train_set, keys, settings.batch_size, pin_memory=device.type == "cuda"
    )
    model.train()
    frozen = head_only(settings)
    if frozen:  # head only: BatchNorm statistics stay those of the loaded encoder
        model.encoder.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, correct predictions
    seen, lr, start = 0, settings.lr, time.perf_counter()
    bar = track(loader, desc=f"{split.column} epoch {epoch + 1}", enabled=progress, leave=False)
    for i, batch in enumerate(bar):
        split.report_failures(batch["failures"])
        lr = optim.lr_at(optim.step_position(epoch, i, len(loader)), settings.epochs, settings)
        optim.set_lr(optimizer, lr)
        x = batch[settings.modality].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with optim.autocast(device, amp_dtype):
            if frozen:
                with torch.no_grad():
                    features = model.encoder(x)
                logits = model.head(features)
            else:
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


def long_side_windows(frames: np.ndarray, size: int) -> list[np.ndarray]:
    """(T, H, W, 3) frames → three windows of the full short side and ``size`` along the long side:
    at its start, its centre and its end. The centre crop of each is one of ``three_crops``."""
    height, width = frames.shape[1:3]
    if height < size or width < size:
        raise ValueError(f"frames of {height}x{width} are smaller than the crop size {size}")
    if width >= height:
        return [frames[:, :, x : x + size] for x in (0, (width - size) // 2, width - size)]
    return [frames[:, y : y + size] for y in (0, (height - size) // 2, height - size)]


def three_crops(frames: np.ndarray, size: int) -> list[np.ndarray]:
    """(T, H, W, 3) frames → three (T, size, size, 3) crops: at the start, the centre and the end
    of the long side, centred on the short side (top/centre/bottom for a portrait video)."""
    return [crop_and_flip(w, size, None, flip=False) for w in long_side_windows(frames, size)]


class ThreeCropClips(ClipDataset):
    """Test clips of ``three_crops`` each: a sample's video is (3 crops, 3, T, S, S) uint8.

    Each crop is the dataset's own centre crop of one ``long_side_windows`` window, so the clip
    pipeline (decoding, cache, resizing, whatever follows the crop) is the dataset's."""

    def _video(self, frames: np.ndarray, rng: np.random.Generator | None) -> dict[str, Tensor]:
        crop = super()._video
        views = [crop(w, rng) for w in long_side_windows(frames, self.config.crop_size)]
        return {k: torch.stack([v[k] for v in views]) for k in views[0]}

    def _invalid(self, row: int, key: ClipKey, failures: list[str]) -> dict[str, Any]:
        sample = super()._invalid(row, key, failures)
        for name in ("video", "video_raw"):
            if name in sample:
                sample[name] = sample[name].unsqueeze(0).repeat(3, *[1] * sample[name].dim())
        return sample


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
    uniformly spaced clips × ``test_crops`` crops, with the model in eval mode (the BatchNorm
    statistics it learned; nothing recomputed). A test video none of whose clips decoded has no
    probabilities and counts as wrong in ``top1``.

    Returns {"rows": (V,) rows of ``split.eval_set.manifest`` that decoded, "probs": (V, K),
    "labels": (V,), "top1": float over all ``split.test_rows``, "failed": paths of the test
    videos none of whose clips decoded, "missing_labels": their classes}.
    """
    pin = device.type == "cuda"
    was_training = model.training
    model.eval()
    test_keys = fixed_keys(split.test_rows, settings.test_clips)
    loader = clip_loader(split.eval_set, test_keys, settings.batch_size, pin_memory=pin)
    rows, probs = [], []
    for batch in track(loader, desc=f"{split.column} test", enabled=progress, leave=False):
        split.report_failures(batch["failures"])
        valid = batch["valid"].bool()
        if valid.any():
            x = batch[settings.modality][valid]
            crops = x.shape[1] if x.dim() == 6 else 1  # (B, crops, 3, T, S, S) with 3 crops
            with optim.autocast(device, amp_dtype):
                logits = model(x.flatten(0, 1).to(device) if crops > 1 else x.to(device))
            probs.append(logits.float().softmax(1).cpu())
            rows.append(np.repeat(batch["index"][valid].numpy(), crops))
    model.train(was_training)
    if not rows:
        raise DataError(
            f"{split.column}: no test clip could be decoded; re-run `xdc index` to re-probe the files"
        )
    videos, video_probs = mean_per_video(np.concatenate(rows), torch.cat(probs))
    manifest = split.eval_set.manifest
    labels = torch.as_tensor([manifest.label(int(r)) for r in videos])
    missing = sorted(set(split.test_rows) - set(videos.tolist()))
    correct = float((video_probs.argmax(1) == labels).sum())
    return {
        "rows": videos,
        "probs": video_probs,
        "labels": labels,
        "top1": correct / len(split.test_rows),
        "failed": [str(manifest.path(r)) for r in missing],
        "missing_labels": [manifest.label(r) for r in missing],
    }


# --- what it writes ---------------------------------------------------------------------------


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
        "per_class": per_class,
        "test": {
            "clips": identity["finetune"]["test_clips"],
            "crops": identity["finetune"]["test_crops"],
            "bn_statistics": "learned while finetuning (model.eval(), nothing recomputed)",
        },
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
    results: dict[str, dict[str, Any]], checkpoint: str, identity: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Write ``out/finetune.json`` (each split's scores, the mean and sample std of top-1 over
    the splits), print the table, and return the summary."""
    top1 = np.array([r["top1"] for r in results.values()])
    keys = ("top1", "top5", "mean_class_accuracy", "num_test_videos", "unreadable_test_videos")
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
    state = load_checkpoint(path)  # a damaged file: CheckpointError naming it and the fix
    if state.get("kind") != "finetune":
        raise CheckpointError(f"{path}: not a finetuning checkpoint; pass a new --out folder")
    check_identity(state.get("identity", {}), identity, path)
    try:
        model.encoder.load_state_dict(state["encoder"])
        model.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        optim.load_scaler_state(scaler, state["scaler"])
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


# --- the command ------------------------------------------------------------------------------


def parse_splits(text: str | None) -> list[int] | None:
    """``"1,2,3"`` → ``[1, 2, 3]``; None or "" → None (the ``split`` column)."""
    if not text:
        return None
    try:
        numbers = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1 or len(set(numbers)) != len(numbers):
        raise ConfigError(f"--splits {text!r}: expected distinct split numbers such as 1,2,3")
    return numbers


def cmd_finetune(
    checkpoint: str,
    data: str,
    out: str,
    settings: FinetuneSettings,
    splits: str | None = None,
    like: str | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    progress: bool = True,
) -> int:
    """Finetune an encoder on each split of a labelled manifest; resumes automatically."""
    finetune(
        checkpoint,
        data,
        out,
        parse_splits(splits),
        settings,
        like,
        preset,
        overrides,
        device,
        progress,
    )
    return 0


def _settings_from_args(args: argparse.Namespace) -> FinetuneSettings:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneSettings)}
    try:
        values["step_epochs"] = tuple(int(v) for v in args.step_epochs.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--step-epochs {args.step_epochs!r}: expected epochs such as 6,8"
        ) from None
    return FinetuneSettings(**values)


def add_finetune_parser(sub: Subcommands) -> None:
    """Register ``xdc finetune``: one flag per ``FinetuneSettings`` field, plus what to finetune."""
    p = sub.add_parser(
        "finetune",
        help="finetune a pretrained (or random) encoder on labelled videos: UCF101/HMDB51 protocol",
        description="Full finetuning: a new linear classifier, every parameter trained; test top-1 "
        "is video level (softmax averaged over --test-clips clips). Re-running the same command "
        "resumes; finished splits are skipped. Extra arguments are data.key=value overrides "
        "(model.key=value too with --checkpoint random), e.g. data.num_frames=32 as in the paper.",
    )
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint file, or 'random'")
    p.add_argument("--data", required=True, help="labelled manifest (split or split_1..3 columns)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per split)")
    p.add_argument("--splits", default=None, help="official splits, e.g. 1,2,3 (columns split_N)")
    for f in dataclasses.fields(FinetuneSettings):
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.name == "amp":
            p.add_argument("--no-amp", dest="amp", action="store_false", help="no " + text)
        elif f.name == "step_epochs":
            p.add_argument(flag, default="", help=text)
        else:
            p.add_argument(
                flag, type=type(f.default), default=f.default, help=f"{text} ({f.default})"
            )
    add_architecture_arguments(p)
    add_device_arguments(p)
    p.add_argument("overrides", nargs="*", help="data.key=value (and model.key=value for random)")
    p.set_defaults(
        run=lambda a: cmd_finetune(
            a.checkpoint,
            a.data,
            a.out,
            _settings_from_args(a),
            a.splits,
            a.like,
            a.preset,
            a.overrides,
            a.device,
            not a.no_progress,
        )
    )
