"""One resumable state per run, written atomically, read without executing pickled code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (so ``torch.load`` with
``weights_only=True`` reads it): model and head weights, optimizer, grad scaler, pseudo-labels,
centroids, counters, RNG states and the resolved config. Writes go to a temporary file in the same
folder, are flushed to disk, then renamed over the old file: a crash leaves the previous checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xdc.atomic import atomic_file
from xdc.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``state`` to ``path`` (temporary file + fsync + ``os.replace``)."""
    with atomic_file(path, binary=True) as fh:
        torch.save({"format_version": FORMAT_VERSION, **state}, fh)
    return Path(path)


def resolve_checkpoint(run_or_file: str | Path) -> Path:
    """``RUN`` (a run folder) or a checkpoint file → the checkpoint file; clear error when absent."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint; pass a run folder made by `xdc pretrain` (or its {CHECKPOINT_NAME})"
        )
    return path


def load_checkpoint(run_or_file: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); errors name the file."""
    path = resolve_checkpoint(run_or_file)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        reason = " ".join(str(err).split())[:300]  # torch's messages span many lines
        raise CheckpointError(f"{path}: cannot be read as an xdc checkpoint ({reason})") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: not an xdc checkpoint of format {FORMAT_VERSION} "
            f"(found {state.get('format_version') if isinstance(state, dict) else type(state).__name__})"
        )
    return state
