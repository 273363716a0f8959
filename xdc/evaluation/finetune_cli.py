"""What ``xdc finetune`` takes in and writes out, around the training loop of
``xdc.evaluation.finetune``:

- in: the settings (one field per flag), the encoder to start from (``--checkpoint RUN|random``),
  the checks of the manifest's split columns, and of an existing output folder's settings;
- out: each split's result files (per-class accuracy, confusion matrix, predictions, curve) and
  the summary over splits (``finetune.json`` and the printed table);
- the argparse registration, ``add_finetune_parser`` / ``cmd_finetune``, in the pattern of
  ``xdc/cli.py``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xdc.config import PretrainConfig, config_diff
from xdc.data.manifest import Manifest
from xdc.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:  # torch is imported when finetuning starts, not when the CLI is built
    from torch import nn

SETTINGS_NAME = "finetune_config.json"
RESULT_NAME = "result.json"
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


SUMMARY_NAME = "finetune.json"


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
    from xdc.evaluation.finetune import finetune

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


def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--like", default=None, help="with --checkpoint random: copy this run's architecture"
    )
    p.add_argument(
        "--preset", default=None, help="with --checkpoint random: a preset's architecture"
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
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
