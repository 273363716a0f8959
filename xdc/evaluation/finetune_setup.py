"""What ``xdc finetune`` starts from (the loop is ``xdc.evaluation.finetune``):

- the settings, one field per command-line flag (``FinetuneSettings``);
- the encoder to start from, ``--checkpoint RUN|FILE|random`` (``EncoderSource``);
- the checks of the manifest's split columns and the datasets of one split (``SplitData``);
- the identity of a finetuning (data, encoder, settings) that an existing output folder, a split
  checkpoint or a finished result must match to be resumed or reused.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from xdc.config import DataConfig, PretrainConfig, config_diff
from xdc.data.datasets import ClipDataset
from xdc.data.manifest import Manifest, read_manifest
from xdc.errors import CheckpointError, ConfigError, DataError

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
        "encoder nearer its start while the new head catches up; 0 freezes its weights (BatchNorm "
        "statistics still adapt)",
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
    eval_every: int = _flag(0, "also test every N epochs (0 = only at the end)")
    bn_recalibration_clips: int = _flag(
        512, "training clips on which BatchNorm statistics are recomputed before testing (0 = off)"
    )
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
            (self.bn_recalibration_clips >= 0, "--bn-recalibration-clips", "must be >= 0"),
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
    from xdc.evaluation.encoders import RANDOM, load_eval_encoders, parse_overrides

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


def split_rows(
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
    values = [r.get(column, "") for r in manifest.rows]
    rows = {
        s: [i for i, v in enumerate(values) if v == s]
        for s in (settings.train_split, settings.test_split)
    }
    for name, flag in (
        (settings.train_split, "--train-split"),
        (settings.test_split, "--test-split"),
    ):
        if not rows[name]:
            found = ", ".join(sorted({repr(v) for v in values})) or "none"
            raise DataError(
                f"{src}: column {column!r} has no {name!r} rows (values: {found}); pass {flag} with the value it uses"
            )
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
    train, test = split_rows(manifest, column, settings)
    sub = manifest.subset(train + test)  # keeps the class numbering of the whole manifest
    modalities = (settings.modality,)
    train_set = ClipDataset(sub, clips, train=True, modalities=modalities)
    eval_set = ClipDataset(sub, clips, train=False, modalities=modalities, replace_failed=False)
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


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temporary file + rename): a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    write_json(path, {**identity, "info": info})
