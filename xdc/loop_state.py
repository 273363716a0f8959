"""The loop's resumable state and the checkpoint that holds it with the model and optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xdc import distributed as dist
from xdc import optim
from xdc.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from xdc.deep_clustering import DeepClusteringModel
from xdc.run import RunContext
from xdc.runlog import RunLog


@dataclass
class LoopState:
    """Counters and pseudo-labels of the loop; saved in every checkpoint."""

    iteration: int = 0
    epoch: int = 0
    phase: str = "cluster"
    step: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    finished: bool = False
    log_seq: int = 0
    labels: dict[str, Tensor] = field(default_factory=dict)
    centroids: dict[str, Tensor] = field(default_factory=dict)
    val_rows: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    history: list[dict[str, Any]] = field(default_factory=list)
    last_nmi: dict[str, float] = field(default_factory=dict)
    """{clustering: NMI of the last clustering with the one before}, for the diagnostics."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def checkpoint(
    run: RunContext,
    state: LoopState,
    model: DeepClusteringModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    log: RunLog,
) -> None:
    """Everything needed to resume, written atomically by the main process (after the decode
    failures of every process are in RUN/failures.txt); every process waits for it."""
    run.sync_failures()
    state.log_seq = log.seq
    if dist.is_main():
        save_checkpoint(
            {
                "config": run.config.to_dict(),
                "loop": state.to_dict(),
                "encoders": {m: enc.state_dict() for m, enc in model.encoders.items()},
                "heads": model.heads.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
                "label_names": list(run.manifest.label_names),
            },
            run.out / CHECKPOINT_NAME,
        )
    dist.barrier()


def restore(
    path: Path,
    model: DeepClusteringModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> LoopState:
    """Load the checkpoint at ``path`` into the model, optimizer and scaler; return the loop state.

    Every process of a distributed run reads the file itself (a filesystem shared by all of them
    is assumed); nothing in it depends on the number of processes that wrote it.
    """
    state_dict = load_checkpoint(path)
    for m, enc in model.encoders.items():
        enc.load_state_dict(state_dict["encoders"][m])
    model.heads.load_state_dict(state_dict["heads"])
    optimizer.load_state_dict(state_dict["optimizer"])
    optim.load_scaler_state(scaler, state_dict["scaler"])
    torch.set_rng_state(state_dict["rng"]["torch"])
    state = LoopState()
    for key, value in state_dict["loop"].items():
        setattr(state, key, value)
    return state
