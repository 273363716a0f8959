"""The ``xdc finetune`` command: ``add_finetune_parser`` registers it (in the pattern of
``xdc/cli.py``, one flag per ``FinetuneSettings`` field) and ``cmd_finetune`` runs it.

What it takes in is ``xdc.evaluation.finetune_setup``, the loop ``xdc.evaluation.finetune``, what
it writes ``xdc.evaluation.finetune_outputs``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from xdc.errors import ConfigError
from xdc.evaluation.cli_shared import add_architecture_arguments, add_device_arguments
from xdc.evaluation.finetune_setup import FinetuneSettings


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
