"""What the evaluation commands share (``commands.py``, ``finetune.py``, ``report.py``).

``EvalOptions`` holds the flags of every command that evaluates encoders (which encoders, which
manifest, how many clips) and ``add_encoder_arguments`` defines them; the other ``add_*`` functions
register the flag groups several commands have. ``results_dir`` / ``emit`` / ``format_table`` write
a result: a JSON file under ``RUN/eval/`` (or ``--out-dir``) and a table on stdout, or with
``--json`` only the JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from xdc import atomic
from xdc.data.manifest import Manifest, read_manifest
from xdc.errors import ConfigError
from xdc.evaluation.encoders import EvalEncoders, load_eval_encoders
from xdc.evaluation.extract import BN_STATISTICS
from xdc.progress import inform

DEFAULT_CLIPS = 10
DEFAULT_BN_CLIPS = 512


class Subcommands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as the commands use it (argparse's own
    class for it is private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


@dataclass(frozen=True)
class EvalOptions:
    """The flags every command that evaluates encoders shares.

    ``checkpoint``: a run folder, its checkpoint file, or ``random`` (then ``like`` or ``preset``
    give the architecture and ``seed`` the weights). ``data``: the manifest (default: the one the
    run trained on). ``clips`` per video; ``bn_statistics`` which BatchNorm statistics the
    encoders use (``auto``: stored for a trained encoder, recomputed on ``bn_clips`` training clips
    for a random init; ``stored``; ``recalibrated``: recomputed for every encoder).
    """

    checkpoint: str
    data: str | None = None
    like: str | None = None
    preset: str | None = None
    seed: int = 0
    overrides: Sequence[str] = ()
    clips: int = DEFAULT_CLIPS
    bn_clips: int = DEFAULT_BN_CLIPS
    bn_statistics: str = "auto"
    batch_size: int | None = None
    device: str | None = None
    progress: bool = True

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> EvalOptions:
        """From the flags ``add_encoder_arguments`` defines."""
        names = [f.name for f in fields(cls) if f.name != "progress"]
        return cls(**{name: getattr(a, name) for name in names}, progress=not a.no_progress)

    def load(self) -> tuple[EvalEncoders, Manifest]:
        """Check the numbers, then load the encoders and the manifest (errors name the flag)."""
        if self.clips < 1:
            raise ConfigError(f"--clips {self.clips}: must be >= 1")
        if self.bn_clips < 0:
            raise ConfigError(f"--bn-clips {self.bn_clips}: must be >= 0 (0 = stored statistics)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be >= 1")
        source = load_eval_encoders(
            self.checkpoint, self.like, self.preset, self.overrides, self.seed
        )
        if self.data:
            return source, read_manifest(self.data)
        if source.data is None:
            raise ConfigError(
                f"--data: no manifest given and none recorded for --checkpoint {self.checkpoint}; "
                "pass --data MANIFEST"
            )
        return source, read_manifest(source.data)

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the ``evaluate_*`` functions: clips, BatchNorm, device."""
        names = ("clips", "bn_clips", "device", "progress", "batch_size", "bn_statistics")
        return {name: getattr(self, name) for name in names}


def results_dir(source: EvalEncoders, out_dir: str | None, as_json: bool) -> Path | None:
    """Where result files go: ``--out-dir``, else ``RUN/eval``; None = print only (random + --json)."""
    if out_dir:
        return Path(out_dir)
    if source.run_dir is not None:
        return source.run_dir / "eval"
    if as_json:
        return None
    raise ConfigError(
        "--out-dir: --checkpoint random has no run folder to write results to; "
        "pass --out-dir DIR (or --json to print the results only)"
    )


def jsonable(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null; tuples and numpy scalars plain values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if isinstance(value, Path) else value


def emit(result: dict[str, Any], folder: Path | None, name: str, as_json: bool, table: str) -> None:
    """Write ``folder/name`` atomically (when a folder is given); print the table or the JSON."""
    text = json.dumps(jsonable(result), indent=2, allow_nan=False)
    path = None
    if folder is not None:
        path = atomic.write_text(folder / name, text + "\n")
    if as_json:
        print(text)
        return
    print(table)
    if path is not None:
        inform(f"wrote {path}")


def format_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A title line and left-aligned columns; floats with 3 decimals, None/NaN as '-'."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [list(header)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([title, lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def describe(source: EvalEncoders) -> str:
    """``RUN`` or ``random encoders (like RUN, seed 0)`` for table titles."""
    if source.is_random:
        basis = f"like {source.like}" if source.like else f"preset {source.config.preset}"
        return f"random encoders ({basis}, seed {source.seed})"
    return source.checkpoint


def add_encoder_arguments(
    p: argparse.ArgumentParser, clips_help: str = "uniformly spaced clips per video (10)"
) -> None:
    """The ``EvalOptions`` flags; ``clips_help``: what ``--clips`` means to this command."""
    add = p.add_argument
    add("--checkpoint", required=True, help="run folder (or its checkpoint.pt), or 'random'")
    add("--data", default=None, help="manifest CSV (default: the one the run trained on)")
    add_architecture_arguments(p)
    add("--seed", type=int, default=0, help="random only: initialisation seed (default 0)")
    add("--clips", type=int, default=DEFAULT_CLIPS, help=clips_help)
    add(
        "--bn-statistics",
        choices=BN_STATISTICS,
        default="auto",
        help="BatchNorm statistics of the encoders: auto (default) = a trained encoder's stored "
        "ones, as published protocols use, recomputed on training clips only for random init; "
        "stored; recalibrated = recomputed for every encoder (xdc's variant, labelled in the result)",
    )
    add(
        "--bn-clips",
        type=int,
        default=DEFAULT_BN_CLIPS,
        help="training clips BatchNorm statistics are recomputed on, when they are (512; 0 = never)",
    )
    add("--batch-size", type=int, default=None, help="clips per batch (default: the config's)")
    add_device_arguments(p)
    add("overrides", nargs="*", help="config overrides, e.g. data.num_workers=4 (random: model.*)")


def add_architecture_arguments(p: argparse.ArgumentParser) -> None:
    """``--like`` / ``--preset``: where ``--checkpoint random`` takes its architecture from."""
    p.add_argument("--like", default=None, help="random only: copy the architecture of this run")
    p.add_argument(
        "--preset", default=None, help="random only: the architecture of a preset (tiny, ...)"
    )


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--no-progress``, for every command that runs an encoder."""
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (only) on stdout")
    p.add_argument("--out-dir", default=None, help="folder for the result JSON (default RUN/eval)")


def add_split_arguments(p: argparse.ArgumentParser, train_role: str, test_role: str) -> None:
    """``--train-split`` / ``--test-split``; the roles say what each split is for."""
    p.add_argument("--train-split", default="train", help=f"{train_role} (default train)")
    p.add_argument("--test-split", default="test", help=f"{test_role} (default test)")


def add_protocol_parser(
    sub: Subcommands, name: str, help: str, description: str, **encoder_flags: str
) -> argparse.ArgumentParser:
    """A sub-command that evaluates encoders and writes a result: the ``EvalOptions`` flags
    (``encoder_flags``: ``add_encoder_arguments`` keywords) and ``--json`` / ``--out-dir``."""
    p = sub.add_parser(name, help=help, description=description)
    add_encoder_arguments(p, **encoder_flags)
    add_output_arguments(p)
    return p


def load_with_folder(
    options: EvalOptions, out_dir: str | None, as_json: bool
) -> tuple[EvalEncoders, Manifest, Path | None]:
    """``options.load()`` and the ``results_dir`` of the result (checked before any work)."""
    source, manifest = options.load()
    return source, manifest, results_dir(source, out_dir, as_json)
