"""Full finetuning on labelled videos: the UCF101 / HMDB51 protocol.

An encoder (pretrained, or random for the baseline) gets a fresh linear classifier over the
manifest's classes and ALL its parameters are trained with cross-entropy on random clips (temporal
jittering, random crop, flip); ``--encoder-lr-scale 0`` trains the head only, with the encoder in
eval mode (its weights and BatchNorm statistics stay exactly as loaded). ``--protocol NAME`` sets
everything as a published recipe did (``finetune_protocols``: ``xdc``, ``xdc-32``, ``avid-cma``,
``avid-cma-32``, ``gdt``; ``quick``, the default, is xdc's own): clips per video, optimizer,
per-epoch learning rates, head warm-up, dropout, resized crops and colour jitter
(``finetune_clips``), test clips x crops and what is averaged. Flags on top of a recipe are
recorded and the result is labelled "modified". Each test video is classified from the average
over ``test_clips`` uniformly spaced clips x ``test_crops`` crops (1: centre; 3: both ends and
the centre of the long side, as GDT tests) of the softmax (or the logits, GDT), video-level
top-1; the paper reports the mean over the 3 official splits (manifest columns ``split_1`` ...
``split_3``); a manifest whose rows carry several labels is refused (one class per row: ``xdc
linear-probe`` scores multi-label data by mAP). The test runs the model in eval mode with the
BatchNorm statistics learned while finetuning, as the field's published code does (nothing is
recomputed). A test video none of whose clips decoded stays in the denominator and counts as
wrong (``unreadable_test_videos`` in every result); a test video without the modality finetuned
(``--modality audio``: no audio track) is not part of the test set, and the result counts and
lists it (``without_modality``).

Each split has its own folder (``OUT/split_1`` ...) with a checkpoint per epoch; re-running the same
command resumes an unfinished split and skips a finished one (``result.json`` marks it). Everything
random is a function of (seed, epoch, clip), so a resumed split ends with the same weights as an
uninterrupted one. Outputs per split: ``result.json``, ``per_class_accuracy.json``,
``confusion.csv`` / ``.npy`` (rows: true class, columns: predicted), ``predictions.csv``,
``curve.jsonl``; for the whole command: ``OUT/finetune_config.json`` and ``OUT/finetune.json``.

The module reads top-down: what a finetuning starts from (``FinetuneSettings`` from
``finetune_protocols``, one field per command-line flag; the encoder ``--checkpoint
RUN|FILE|random`` names, ``EncoderSource``; the split columns and datasets, ``SplitData``; the
identity an output folder, a split checkpoint or a finished result must match to be resumed or
reused), the loop and the test, what it writes, and the ``xdc finetune`` command
(``add_finetune_parser`` / ``cmd_finetune``).
"""

from __future__ import annotations

import argparse
import copy
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
from xdc.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from xdc.config import DataConfig, PretrainConfig, config_diff
from xdc.data.datasets import ClipDataset, ClipKey, clip_loader, epoch_keys, fixed_keys
from xdc.data.manifest import Manifest, read_manifest
from xdc.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from xdc.evaluation.cli_shared import Subcommands, add_architecture_arguments, add_device_arguments
from xdc.evaluation.encoders import RANDOM, load_eval_encoders, parse_overrides
from xdc.evaluation.extract import require_single_labels, split_rows
from xdc.evaluation.finetune_clips import ThreeCropClips, TrainAugment
from xdc.evaluation.finetune_protocols import (
    BENCHMARKS,
    PROTOCOLS,
    FinetuneSettings,
    data_overrides,
    protocol_record,
    recipe_settings,
)
from xdc.evaluation.finetune_results import (
    RESULT_NAME,
    summarize_splits,
    write_curve,
    write_split_outputs,
)
from xdc.evaluation.protocol import unreadable_line
from xdc.features import mean_per_video
from xdc.models.heads import ClassifierHead
from xdc.progress import inform, track
from xdc.run import resolve_device

# --- what a finetuning starts from ------------------------------------------------------------


SETTINGS_NAME = "finetune_config.json"
# Data settings that change how fast clips load, never which clips: free to differ on resume.
RUNTIME_DATA_KEYS = ("num_workers", "cache", "cache_gib")


@dataclass
class EncoderSource:
    """The encoder finetuning starts from, its clip settings, and a description for the records."""

    encoder: nn.Module
    """Initial encoder of the modality (each split trains its own copy)."""
    config: PretrainConfig
    """Its architecture (``model``) and the clip parameters to train and test with (``data``):
    the run's, then the recipe's clip settings, then the user's ``data.*`` overrides."""
    description: dict[str, Any]
    """JSON-friendly: ``checkpoint`` ("random" or the path), ``weights_sha256``, ``model``, ``clips``."""
    overrides: list[str] = field(default_factory=list)
    """The user's ``data.*`` / ``model.*`` overrides, as given."""

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.encoder)


def load_encoder_source(
    checkpoint: str | Path,
    modality: str = "video",
    seed: int = 0,
    like: str | Path | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    recipe_data: Sequence[str] = (),
) -> EncoderSource:
    """The encoder ``--checkpoint RUN|FILE|random`` names, its clip settings with the recipe's
    (``recipe_data``, ``data.key=value``) and then the user's ``overrides`` applied.

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
            [*recipe_data, *overrides],
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
    return EncoderSource(encoder, found.config, description, list(overrides))


def describe_protocol(source: EncoderSource, settings: FinetuneSettings) -> dict[str, Any]:
    """``protocol_record`` of a finetuning: the recipe, what was used, what differs from it."""
    recipe_keys = {
        o.split("=", 1)[0] for o in data_overrides(settings.protocol, settings.benchmark)
    }
    runtime = {f"data.{k}" for k in RUNTIME_DATA_KEYS}
    extra = [o for o in source.overrides if o.split("=", 1)[0].strip() not in recipe_keys | runtime]
    notes = []
    video = source.config.model.video
    if settings.protocol != "quick" and not video.startswith("r2plus1d"):
        notes.append(
            f"the published numbers of this recipe use an R(2+1)D video encoder; this one is {video}"
        )
    data = dataclasses.asdict(source.config.data)
    return protocol_record(settings, data, extra, notes)


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
    require_single_labels(manifest, [i for s in rows.values() for i in s], "finetuning")
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
    without_modality: list[str] = field(default_factory=list)
    """Test videos without the finetuned modality: not in the test set (counted and listed)."""

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
    """Datasets of one split: random training clips and fixed test clips of ``settings.modality``.

    With ``--augment resized-crop`` the training clips are squares of the full short side
    (``data.resize_short``), cut down to ``data.crop_size`` by ``TrainAugment``."""
    manifest = read_manifest(data)
    train, test = finetune_rows(manifest, column, settings)
    sub = manifest.subset(train + test)  # keeps the class numbering of the whole manifest
    modalities = (settings.modality,)
    train_clips = clips
    if settings.augment == "resized-crop":
        if clips.resize_short < clips.crop_size:
            raise ConfigError(
                f"--augment resized-crop crops inside the short side's square: data.resize_short "
                f"({clips.resize_short}) must be >= data.crop_size ({clips.crop_size})"
            )
        train_clips = dataclasses.replace(clips, crop_size=clips.resize_short)
    train_set = ClipDataset(sub, train_clips, train=True, modalities=modalities)
    test_dataset = ThreeCropClips if settings.test_crops == 3 else ClipDataset
    eval_set = test_dataset(sub, clips, train=False, modalities=modalities, replace_failed=False)
    usable = set(train_set.rows)
    train_rows = [r for r in range(len(train)) if r in usable]
    test_rows = [r for r in range(len(train), len(sub)) if r in usable]
    without = [r for r in range(len(train), len(sub)) if r not in usable]
    if not train_rows or not test_rows:
        raise DataError(
            f"{data}: split {column!r} has no {settings.modality} videos left in its train or test set"
        )
    train_set.replacement_pool = train_rows  # a broken training video is replaced by another one
    if clips.cache == "memory":
        eval_set.cache = train_set.build_cache(progress)
    split = SplitData(
        column, list(manifest.label_names), train_rows, test_rows, train_set, eval_set
    )
    split.without_modality = [str(sub.path(r)) for r in without]
    return split


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


class SeededDropout(nn.Module):
    """Dropout whose masks come from ``generator`` (set per batch by the loop, so that a resumed
    epoch draws the masks an uninterrupted one did); the global generator when it is None."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, dtype=torch.float32)
        mask = (keep >= self.p).to(device=x.device, dtype=x.dtype)
        return x * mask / (1 - self.p)


class FinetuneModel(nn.Module):
    """An encoder, dropout and a new linear classifier: clips (B, 3, T, H, W) or log-mel
    (B, 1, M, F) → (B, K) logits.

    ``head_init``: ``normal`` (N(0, 0.01), bias 0), ``orthogonal`` (orthogonal weights, bias 0:
    GDT) or ``pytorch`` (``nn.Linear``'s own: AVID-CMA); always drawn from ``seed``."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        seed: int,
        dropout: float = 0.0,
        head_init: str = "normal",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = SeededDropout(dropout)
        self.head = ClassifierHead(cast(int, encoder.num_features), num_classes)
        # Seeded apart from the global RNG: the same head whatever was drawn before.
        generator = seeds.torch_generator(seed, "finetune_head")
        if head_init == "normal":
            self.head.reset_parameters(generator=generator)
        else:
            with torch.no_grad():
                weight = torch.empty(self.head.weight.shape)
                if head_init == "orthogonal":
                    nn.init.orthogonal_(weight, gain=1.0, generator=generator)
                    bias = torch.zeros(num_classes)
                else:
                    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
                    bound = 1 / math.sqrt(weight.shape[1])
                    bias = torch.empty(num_classes).uniform_(-bound, bound, generator=generator)
                self.head.weight.copy_(weight)
                self.head.bias.copy_(bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.encoder(x)))

    def classify(self, features: Tensor) -> Tensor:
        """Logits of pooled features (B, D): dropout (when training), then the classifier."""
        return self.head(self.dropout(features))


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

    ``settings`` (default: the ``quick`` recipe; ``recipe_settings(NAME, BENCHMARK, ...)`` for a
    named one) say how; the recipe's clip settings apply before ``overrides``.
    ``splits=[1, 2, 3]`` uses the manifest columns ``split_N`` and folders ``out/split_N``; ``None``
    uses the ``split`` column and ``out/split``. Every input is checked before any training.
    Returns the summary also written to ``out/finetune.json``: per split top-1 / top-5 / mean class
    accuracy, ``mean_top1`` / ``std_top1`` (sample standard deviation) over the splits, and the
    ``protocol`` record.
    """
    settings = settings or FinetuneSettings()
    settings.validate()
    source = load_encoder_source(
        checkpoint,
        settings.modality,
        settings.seed,
        like,
        preset,
        overrides,
        data_overrides(settings.protocol, settings.benchmark),
    )
    columns = [f"split_{n}" for n in splits] if splits else ["split"]
    manifest = read_manifest(data)
    for column in columns:
        finetune_rows(manifest, column, settings)
    identity = finetune_identity(source, data, settings)
    record = describe_protocol(source, settings)
    out = Path(out)
    info = {"checkpoint": source.description["checkpoint"], "protocol": record}
    prepare_folder(out, identity, info)
    inform(f"protocol: {record['label']}")
    dev = resolve_device(device)
    results = {
        c: finetune_split(source, data, out / c, c, settings, dev, progress, on_epoch)
        for c in columns
    }
    return summarize_splits(results, source.description["checkpoint"], identity, out, record)


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

    ``settings.head_warmup_epochs`` epochs train the classifier alone first (their own optimizer,
    at ``lr``), then ``settings.epochs`` epochs train everything. Resumes from
    ``out_dir/checkpoint.pt``; a finished split (``out_dir/result.json``) returns its saved result
    at once. ``on_epoch(record)`` runs after each epoch's checkpoint is written.
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
    model = FinetuneModel(
        source.fresh(), len(split.label_names), settings.seed, settings.dropout, settings.head_init
    ).to(dev)
    optimizers = build_optimizers(model, settings)
    amp_dtype = optim.amp_dtype(dev, settings.amp)
    scaler = optim.grad_scaler(amp_dtype)
    epoch, seconds = 0, 0.0
    history: list[dict[str, Any]] = []
    ckpt = out_dir / CHECKPOINT_NAME
    total = settings.head_warmup_epochs + settings.epochs
    if ckpt.is_file():
        epoch, history, seconds = restore_split_state(ckpt, identity, model, optimizers, scaler)
        inform(f"{column}: resuming after epoch {epoch} of {total}")
    start = time.perf_counter() - seconds
    while epoch < total:
        warm = epoch < settings.head_warmup_epochs
        optimizer = optimizers["head_warmup" if warm else "finetune"]
        record = train_one_epoch(
            model, optimizer, scaler, split, epoch, settings, dev, amp_dtype, progress
        )
        epoch += 1
        if settings.eval_every and epoch % settings.eval_every == 0 and epoch < total:
            record["test_top1"] = evaluate(model, split, settings, dev, amp_dtype, progress)["top1"]
        history.append(record)
        spent = time.perf_counter() - start
        save_split_state(ckpt, identity, model, optimizers, scaler, epoch, history, spent)
        write_curve(out_dir, history)
        inform(epoch_line(column, record, total))
        if on_epoch is not None:
            on_epoch(record)
    evaluation = evaluate(model, split, settings, dev, amp_dtype, progress)
    history[-1]["test_top1"] = evaluation["top1"]
    write_curve(out_dir, history)
    record = describe_protocol(source, settings)
    spent = time.perf_counter() - start
    return _finish(out_dir, split, evaluation, identity, spent, settings, record)


def _finish(
    out_dir: Path,
    split: SplitData,
    evaluation: dict[str, Any],
    identity: dict[str, Any],
    seconds: float,
    settings: FinetuneSettings,
    protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the split's result files (``result.json`` last) and print its test accuracy."""
    column = split.column
    evaluation["paths"] = [split.eval_set.manifest.rows[int(r)]["path"] for r in evaluation["rows"]]
    evaluation["without_modality"] = list(split.without_modality)
    counts = {"train": len(split.train_rows), "test": len(split.test_rows)}
    result = write_split_outputs(
        out_dir, column, split.label_names, evaluation, counts, identity, seconds, protocol
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


def make_optimizer(
    groups: list[dict[str, Any]], settings: FinetuneSettings
) -> torch.optim.Optimizer:
    """``settings.optimizer`` over parameter groups (each with its ``lr_scale``)."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        groups,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.nesterov,
    )


def build_optimizers(
    model: FinetuneModel, settings: FinetuneSettings
) -> dict[str, torch.optim.Optimizer]:
    """``finetune``: two groups, the encoder (lr × encoder_lr_scale) and the new head (lr); the
    head alone when it trains alone (the frozen encoder gets no gradient and no weight decay).
    ``head_warmup`` (with ``head_warmup_epochs``): the head alone, for the warm-up epochs."""
    head = {"params": list(model.head.parameters()), "lr_scale": 1.0}
    groups = [head]
    if not head_only(settings):
        encoder = {
            "params": list(model.encoder.parameters()),
            "lr_scale": settings.encoder_lr_scale,
        }
        groups.insert(0, encoder)
    found = {"finetune": make_optimizer(groups, settings)}
    if settings.head_warmup_epochs:
        found["head_warmup"] = make_optimizer([dict(head)], settings)
    return found


def epoch_lr(settings: FinetuneSettings, epoch: int, step: int, steps: int) -> float:
    """The learning rate of step ``step`` of ``steps`` in epoch ``epoch`` (0-based, warm-up
    epochs included): ``lr`` during the head warm-up; then ``lr x lr_factors[e]`` for the
    ``epochs`` schedule (constant within an epoch, as the published recipes step), else
    ``xdc.optim.lr_at`` at the step's midpoint."""
    if epoch < settings.head_warmup_epochs:
        return settings.lr
    e = epoch - settings.head_warmup_epochs
    if settings.schedule == "epochs":
        return settings.lr * settings.lr_factors[e]
    return optim.lr_at(optim.step_position(e, step, steps), settings.epochs, settings)


def epoch_clip_keys(split: SplitData, epoch: int, settings: FinetuneSettings) -> list[ClipKey]:
    """The training clips of an epoch, a function of (seed, epoch): ``epoch_clips`` of them, or
    ``clips_per_video`` (else the run's ``data.clips_per_video``) per training video, each video
    in turn in a random order; with ``drop_last`` cut to whole batches."""
    per_video = settings.clips_per_video or split.train_set.config.clips_per_video
    count = settings.epoch_clips or len(split.train_rows) * per_video
    keys = epoch_keys(split.train_rows, count, seeds.rng(settings.seed, "finetune_sample", epoch))
    if settings.drop_last and len(keys) >= settings.batch_size:
        keys = keys[: len(keys) // settings.batch_size * settings.batch_size]
    return keys


def batch_generator(keys: Sequence[ClipKey]) -> torch.Generator:
    """The dropout stream of a batch: a child of its first clip's seed (``spawn_key=(3,)``)."""
    state = np.random.SeedSequence(keys[0].seed, spawn_key=(3,)).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


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
    """One epoch (0-based ``epoch``, head warm-up epochs first) of the clips of
    ``epoch_clip_keys``, augmented by the recipe's ``TrainAugment``.

    During the head warm-up the encoder runs in train mode (its BatchNorm statistics move, as in
    AVID-CMA) without gradients; with ``encoder_lr_scale`` 0 it stays in eval mode throughout.
    Returns the curve record: epoch (1-based), phase, loss, train_acc, clips (seen), lr (at the
    last step), clips_per_s.
    """
    keys = epoch_clip_keys(split, epoch, settings)
    loader = clip_loader(
        split.train_set, keys, settings.batch_size, pin_memory=device.type == "cuda"
    )
    augment = TrainAugment(
        split.eval_set.config.crop_size,
        settings.augment == "resized-crop",
        settings.crop_min_area,
        settings.colour_jitter,
        settings.colour_jitter_p,
    )
    warm = epoch < settings.head_warmup_epochs
    model.train()
    frozen = head_only(settings)
    if frozen:  # head only: BatchNorm statistics stay those of the loaded encoder
        model.encoder.eval()
    no_encoder_grad = frozen or warm
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, correct predictions
    seen, lr, start = 0, settings.lr, time.perf_counter()
    bar = track(loader, desc=f"{split.column} epoch {epoch + 1}", enabled=progress, leave=False)
    for i, batch in enumerate(bar):
        split.report_failures(batch["failures"])
        batch_keys = keys[i * settings.batch_size : (i + 1) * settings.batch_size]
        lr = epoch_lr(settings, epoch, i, len(loader))
        optim.set_lr(optimizer, lr)
        x = batch[settings.modality].to(device, non_blocking=True)
        if augment.active:
            x = augment(x, batch_keys)
        y = batch["label"].to(device, non_blocking=True)
        model.dropout.generator = batch_generator(batch_keys)
        with optim.autocast(device, amp_dtype):
            if no_encoder_grad:
                with torch.no_grad():
                    features = model.encoder(x)
                logits = model.classify(features)
            else:
                logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if settings.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        # Summed on the device: no host synchronisation per step.
        sums += torch.stack(
            [loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()]
        )
        seen += len(y)
    model.dropout.generator = None
    loss_sum, correct = (float(v) for v in sums.cpu())
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(
            f"{split.column}: the finetuning loss became {loss_sum} in epoch {epoch + 1}; the last good "
            "checkpoint is kept. Lower --lr or set --grad-clip, then re-run the same command"
        )
    return {
        "epoch": epoch + 1,
        "phase": "head warm-up" if warm else "finetune",
        "loss": loss_sum / max(1, seen),
        "train_acc": correct / max(1, seen),
        "clips": seen,
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
    """Video-level class probabilities of the test videos: the softmax averaged over
    ``test_clips`` uniformly spaced clips × ``test_crops`` crops (``test_average`` logits: the
    softmax of the averaged logits, GDT's rule), with the model in eval mode (the BatchNorm
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
            scores = logits.float()
            probs.append((scores if settings.test_average == "logits" else scores.softmax(1)).cpu())
            rows.append(np.repeat(batch["index"][valid].numpy(), crops))
    model.train(was_training)
    if not rows:
        raise DataError(
            f"{split.column}: no test clip could be decoded; re-run `xdc index` to re-probe the files"
        )
    videos, video_probs = mean_per_video(np.concatenate(rows), torch.cat(probs))
    if settings.test_average == "logits":
        video_probs = video_probs.softmax(1)
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


def save_split_state(
    path: Path,
    identity: dict[str, Any],
    model: FinetuneModel,
    optimizers: dict[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    epoch: int,
    history: list[dict[str, Any]],
    seconds: float,
) -> None:
    """Write a split's checkpoint (atomically): weights, optimizers (``optimizer``: the
    finetuning one; ``head_warmup_optimizer`` when there is a warm-up), scaler, curve, time."""
    state = {
        "kind": "finetune",
        "identity": identity,
        "epoch": epoch,
        "history": history,
        "seconds": seconds,
        "encoder": model.encoder.state_dict(),
        "head": model.head.state_dict(),
        "optimizer": optimizers["finetune"].state_dict(),
        "scaler": scaler.state_dict(),
    }
    if "head_warmup" in optimizers:
        state["head_warmup_optimizer"] = optimizers["head_warmup"].state_dict()
    save_checkpoint(state, path)


def restore_split_state(
    path: Path,
    identity: dict[str, Any],
    model: FinetuneModel,
    optimizers: dict[str, torch.optim.Optimizer],
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
        optimizers["finetune"].load_state_dict(state["optimizer"])
        if "head_warmup" in optimizers:
            optimizers["head_warmup"].load_state_dict(state["head_warmup_optimizer"])
        optim.load_scaler_state(scaler, state["scaler"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: does not fit this model ({one_line(err)}); delete it or pass a new --out"
        ) from err
    return int(state["epoch"]), list(state["history"]), float(state.get("seconds", 0.0))


def epoch_line(column: str, record: dict[str, Any], epochs: int) -> str:
    """The line printed after each epoch."""
    test = f" | test top-1 {record['test_top1']:.4f}" if "test_top1" in record else ""
    warm = " (head warm-up)" if record.get("phase") == "head warm-up" else ""
    return (
        f"{column} epoch {record['epoch']}/{epochs}{warm}: loss {record['loss']:.4f} acc {record['train_acc']:.4f} "
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


TUPLE_FLAGS = {"step_epochs": int, "lr_factors": float, "colour_jitter": float}
"""List-valued settings: comma-separated on the command line (e.g. ``--step-epochs 6,8``)."""


def _settings_from_args(args: argparse.Namespace) -> FinetuneSettings:
    """The recipe of ``--protocol`` / ``--benchmark`` with every flag given on top of it."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(FinetuneSettings):
        value = getattr(args, f.name)
        if f.name in TUPLE_FLAGS and value is not None:
            try:
                value = tuple(TUPLE_FLAGS[f.name](v) for v in value.split(",") if v.strip())
            except ValueError:
                flag = "--" + f.name.replace("_", "-")
                raise ConfigError(f"{flag} {value!r}: expected numbers such as 6,8") from None
        changes[f.name] = value
    protocol, benchmark = changes.pop("protocol"), changes.pop("benchmark") or ""
    return recipe_settings(protocol, benchmark, **changes)


def add_finetune_parser(sub: Subcommands) -> None:
    """Register ``xdc finetune``: one flag per ``FinetuneSettings`` field, plus what to finetune."""
    p = sub.add_parser(
        "finetune",
        help="finetune a pretrained (or random) encoder on labelled videos: UCF101/HMDB51 "
        "protocols (xdc, avid-cma, gdt recipes)",
        description="Full finetuning: a new linear classifier, every parameter trained; test top-1 "
        "is video level (over --test-clips clips x --test-crops crops). --protocol sets every "
        "setting as a published recipe did (xdc, xdc-32: XDC's release via VMZ; avid-cma, "
        "avid-cma-32: AVID-CMA; gdt: GDT; quick, the default: xdc's own, not a published "
        "protocol); --benchmark ucf101|hmdb51 picks the recipe's values for the data set. Any "
        "flag or data.key=value given on top is recorded and the result is labelled 'modified'. "
        "Re-running the same command resumes; finished splits are skipped. Extra arguments are "
        "data.key=value overrides (model.key=value too with --checkpoint random).",
    )
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint file, or 'random'")
    p.add_argument("--data", required=True, help="labelled manifest (split or split_1..3 columns)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per split)")
    p.add_argument("--splits", default=None, help="official splits, e.g. 1,2,3 (columns split_N)")
    quick = FinetuneSettings()
    for f in dataclasses.fields(FinetuneSettings):
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        default = getattr(quick, f.name)
        if f.name == "protocol":
            p.add_argument(flag, choices=PROTOCOLS, default="quick", help=text + " (quick)")
        elif f.name == "benchmark":
            p.add_argument(flag, choices=BENCHMARKS, default=None, help=text)
        elif f.name == "amp":
            p.add_argument(
                "--no-amp", dest="amp", action="store_const", const=False, help="no " + text
            )
        elif isinstance(default, bool):
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{text} (quick: {default})",
            )
        elif f.name in TUPLE_FLAGS:
            shown = ",".join(str(v) for v in default) or "none"
            p.add_argument(flag, default=None, help=f"{text} (quick: {shown})")
        else:
            p.add_argument(
                flag, type=type(default), default=None, help=f"{text} (quick: {default})"
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
