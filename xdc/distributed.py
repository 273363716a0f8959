"""Launch-agnostic distributed helpers that degrade to one process.

The same code runs as ``python script.py`` (one process; every helper is then an identity or a
no-op) or under ``torchrun`` (one process per rank; the helpers call ``torch.distributed``).
Only public ``torch.distributed`` APIs are used. Collectives run on the tensor's own device: the
process group of a CUDA run routes CPU tensors to gloo and CUDA tensors to nccl
(``process_group_backend``), so clustering may run on either device; a CPU run uses gloo alone.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from xdc.errors import ConfigError

_REQUIRED_ENV = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def process_group_backend(cuda: bool) -> str:
    """The backend string of the process group: ``"cpu:gloo,cuda:nccl"`` for a run on CUDA (each
    collective goes to the backend of its tensor's device — NCCL takes only CUDA tensors, and the
    run also reduces CPU tensors), ``"gloo"`` otherwise (gloo takes CPU tensors)."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_distributed(backend: str | None = None, device: torch.device | None = None) -> bool:
    """Join the process group described by torchrun's environment variables.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without
    ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and ``False`` is returned, so a
    plain ``python`` launch works unchanged. ``backend`` defaults to
    ``process_group_backend(device is CUDA)`` (without ``device``: whether CUDA is available);
    the caller sets the CUDA device first (``xdc.run.resolve_device``).

    Returns:
        Whether this process is now part of a process group with more than one rank.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not dist.is_available():
        raise ConfigError(
            f"WORLD_SIZE={world} asks for a distributed run, but this torch build has no "
            "torch.distributed; launch with plain `python` (one process) instead"
        )
    missing = [name for name in _REQUIRED_ENV if name not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} is not; launch with torchrun "
            "or set RANK, MASTER_ADDR and MASTER_PORT as torchrun does"
        )
    if backend is None:
        cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
        backend = process_group_backend(cuda)
    dist.init_process_group(
        backend=backend, init_method="env://", rank=int(os.environ["RANK"]), world_size=world
    )
    return True


def is_distributed() -> bool:
    """Whether a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's GPU index on its machine (``LOCAL_RANK`` under torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this machine (``LOCAL_WORLD_SIZE`` under torchrun; 1 otherwise)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and logs."""
    return rank() == 0


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over all ranks, in place; returns ``t`` (unchanged when not distributed)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a CPU tensor, so gloo in any group): for
    decisions that every rank must take together, such as stopping."""
    if not is_distributed():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


def broadcast_tensor(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` on every rank with rank ``src``'s ``t``, in place; returns ``t``."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t


def all_gather_varlen(t: Tensor) -> Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order.

    Args:
        t: ``(n_r, ...)`` on this rank; ``n_r`` may differ between ranks (and be 0), the trailing
            shape and dtype must be the same everywhere.

    Returns:
        ``(sum_r n_r, ...)``, identical on every rank; ``t`` itself when not distributed.
    """
    if not is_distributed():
        return t
    t = t.contiguous()
    n_local = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    counts = [torch.zeros_like(n_local) for _ in range(world_size())]
    dist.all_gather(counts, n_local)
    sizes = [int(c.item()) for c in counts]
    # all_gather needs equal shapes: pad every shard to the longest, then cut the padding off.
    longest = max(sizes)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)], dim=0)


def all_gather_strings(items: list[str]) -> list[str]:
    """Concatenate every rank's ``items`` in rank order (``items`` itself when not distributed).

    Sent as UTF-8 bytes in CPU tensors (gloo in every process group this module makes).
    """
    if not is_distributed():
        return items
    encoded = [s.encode("utf-8", errors="surrogateescape") for s in items]
    lengths = all_gather_varlen(torch.tensor([len(b) for b in encoded], dtype=torch.int64))
    blob = all_gather_varlen(torch.tensor(list(b"".join(encoded)), dtype=torch.uint8))
    data = blob.numpy().tobytes()
    out, offset = [], 0
    for n in lengths.tolist():
        out.append(data[offset : offset + n].decode("utf-8", errors="surrogateescape"))
        offset += n
    return out


def barrier() -> None:
    """Wait until every rank gets here (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
