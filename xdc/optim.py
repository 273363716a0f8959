"""What pretraining and finetuning share to take a step: SGD, the learning-rate schedule, mixed
precision and its grad scaler.

The schedule is one pure function of the position in epochs, so a resumed run uses the rates of an
uninterrupted one. Both loops evaluate it at the midpoint of each step (never 0 during warm-up).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch


class ScheduleSettings(Protocol):
    """The fields of ``TrainConfig`` and ``FinetuneSettings`` the schedule reads."""

    @property
    def lr(self) -> float: ...
    @property
    def lr_min(self) -> float: ...
    @property
    def schedule(self) -> str: ...
    @property
    def warmup_epochs(self) -> float: ...
    @property
    def step_epochs(self) -> Sequence[int]: ...


class SGDSettings(Protocol):
    """The fields of ``TrainConfig`` and ``FinetuneSettings`` SGD reads."""

    @property
    def lr(self) -> float: ...
    @property
    def momentum(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...


def lr_at(position: float, total: float, s: ScheduleSettings) -> float:
    """Learning rate at ``position`` epochs of a ``total``-epoch schedule.

    Linear warm-up over ``warmup_epochs``, then ``constant`` (the peak), ``step`` (×0.1 at each of
    ``step_epochs``) or ``cosine`` (from the peak to ``lr_min`` at ``total``).
    """
    if s.warmup_epochs > 0 and position < s.warmup_epochs:
        return s.lr * position / s.warmup_epochs
    if s.schedule == "constant":
        return s.lr
    if s.schedule == "step":
        return s.lr * 0.1 ** sum(position >= m for m in s.step_epochs)
    progress = (position - s.warmup_epochs) / max(1e-9, total - s.warmup_epochs)
    return s.lr_min + 0.5 * (s.lr - s.lr_min) * (1 + math.cos(math.pi * min(1.0, progress)))


def step_position(epoch: int | float, step: int, steps: int) -> float:
    """The position (in epochs) of the midpoint of step ``step`` of an epoch of ``steps`` steps."""
    return epoch + (step + 0.5) / max(1, steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr`` times its ``lr_scale`` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def sgd(params: Iterable[Any], s: SGDSettings) -> torch.optim.SGD:
    """SGD with momentum and weight decay over parameters or parameter groups."""
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


BF16_MIN_CAPABILITY = (8, 0)
"""CUDA compute capability from which GPUs run bf16 natively (Ampere); before it
``torch.cuda.is_bf16_supported()`` may still be true by emulation, without bf16 3D convolutions."""


def autocast_dtype(device_type: str, capability: tuple[int, int] | None) -> torch.dtype | None:
    """The mixed-precision dtype of a device: bf16 on a CUDA GPU of compute capability ≥ 8.0,
    fp16 (with a ``grad_scaler``) on an older one, None (fp32) on any other device."""
    if device_type != "cuda" or capability is None:
        return None
    return torch.bfloat16 if tuple(capability) >= BF16_MIN_CAPABILITY else torch.float16


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype of ``device`` (``autocast_dtype`` of its compute capability); None on
    CPU or when mixed precision is off."""
    if device.type != "cuda" or not enabled:
        return None
    return autocast_dtype("cuda", torch.cuda.get_device_capability(device))


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler fp16 needs; disabled (a no-op) otherwise."""
    return torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """Load a saved scaler state into ``scaler``, whichever precision either side ran in.

    A disabled scaler saves ``{}``: a run resumed where fp16 is now on (another GPU) starts its
    scaler afresh. A disabled ``scaler`` ignores any state (a run resumed in bf16 or fp32).
    """
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)
