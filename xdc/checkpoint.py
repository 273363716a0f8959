"""One resumable state per run, written atomically, read without executing pickled code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (so ``torch.load`` with
``weights_only=True`` reads it): model and head weights, optimizer, grad scaler, pseudo-labels,
centroids, counters, RNG states and the resolved config. Writes go to a temporary file in the same
folder, are flushed to disk, then renamed over the old file: a crash leaves the previous checkpoint,
and a write that fails (a full disk) raises a ``CheckpointError`` and leaves it too.

Reading checks the file whole before unpickling it: a checkpoint is a zip archive whose every entry
carries a CRC-32, which ``torch.load`` does not verify (a flipped byte in the weights loads
silently). A damaged, empty or foreign file raises a ``CheckpointError`` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from xdc import atomic
from xdc.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1

_DAMAGED_FIX = (
    "xdc replaces a checkpoint atomically, so it was damaged after it was written (an interrupted "
    "copy, a failing disk): restore it from a copy, or delete it and run the command that made it "
    "again to start over"
)
_FOREIGN_FIX = (
    f"pass a run folder made by `xdc pretrain` or its {CHECKPOINT_NAME}; if this file was one, it "
    "was overwritten: restore it from a copy, or delete it and run the command that made it again "
    "to start over"
)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``state`` to ``path`` (temporary file + fsync + ``os.replace``).

    Temporary files left next to ``path`` by a killed write are removed first (one writer per
    checkpoint). A write that fails for want of space, a file size limit or permissions raises a
    ``CheckpointError`` saying so; the previous checkpoint is kept and no temporary file remains.
    """
    path = Path(path)
    for stale in atomic.temporaries(path):
        with contextlib.suppress(OSError):  # frees the space a killed write took
            stale.unlink()
    try:
        with _crc32_on(), atomic.atomic_file(path, binary=True) as fh:
            torch.save({"format_version": FORMAT_VERSION, **state}, fh)
    except Exception as err:  # torch wraps a failed write in a RuntimeError, the OSError chained
        cause = _os_error(err)
        if cause is None:
            raise
        raise CheckpointError(_write_failure(path, cause)) from err
    return path


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
    """Read a checkpoint safely (``weights_only=True``) after checking that the file is whole.

    Raises:
        CheckpointError: naming the file, what is wrong with it (missing, empty, truncated,
            corrupted, not a PyTorch file, a PyTorch file of something else, another format)
            and what to do.
    """
    path = resolve_checkpoint(run_or_file)
    problem = _damage(path)
    if problem:
        raise _unreadable(path, *problem)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unreadable(
            path,
            "it holds Python objects other than tensors, numbers, strings, lists and dicts, and "
            "xdc does not run pickled code (torch.load weights_only=True)",
            _FOREIGN_FIX,
        ) from err
    except Exception as err:  # torch raises several types for files it cannot parse
        raise _unreadable(path, f"not a PyTorch file ({_one_line(err)})", _FOREIGN_FIX) from err
    if not isinstance(state, dict) or "format_version" not in state:
        raise _unreadable(
            path,
            f"a PyTorch file of something else: {_describe(state)} (released weight files load "
            "with xdc.models.load_pretrained_video)",
            _FOREIGN_FIX,
        )
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: an xdc checkpoint of format {state['format_version']!r}, and this xdc reads "
            f"format {FORMAT_VERSION}; use the xdc version that wrote it"
        )
    return state


def _unreadable(path: Path, what: str, fix: str) -> CheckpointError:
    return CheckpointError(f"{path}: cannot be read as an xdc checkpoint: {what}; {fix}")


def _damage(path: Path) -> tuple[str, str] | None:
    """(what is wrong, what to do) with ``path`` as an archive written by ``torch.save``; None
    when it is whole (every entry passes its CRC-32 check)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "the file is empty (0 bytes)", _DAMAGED_FIX
        with path.open("rb") as fh:
            head = fh.read(4)
        if head != b"PK\x03\x04":  # every torch.save archive starts with a zip entry
            return f"not a PyTorch zip file (it starts with {head!r})", _FOREIGN_FIX
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every entry and checks its CRC-32
        if bad is not None:
            return f"the file is corrupted (its entry {bad} fails its CRC-32 check)", _DAMAGED_FIX
    except zipfile.BadZipFile as err:
        if str(err) == "File is not a zip file":  # no end-of-archive record
            what = f"the file is truncated ({size} bytes, without the end of a complete archive)"
        else:
            what = f"the file is corrupted ({size} bytes; {_one_line(err)})"
        return what, _DAMAGED_FIX
    except OSError as err:
        return f"{err.strerror or err}", "check the file and its permissions"
    except (EOFError, RuntimeError, ValueError) as err:  # a damaged directory: bad names, sizes
        return f"the file is corrupted ({size} bytes; {_one_line(err)})", _DAMAGED_FIX
    return None


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        keys = list(value)
        shown = ", ".join(repr(k) for k in keys[:4]) + (", …" if len(keys) > 4 else "")
        tensors = sum(isinstance(v, torch.Tensor) for v in value.values())
        return f"a dict of {len(keys)} keys ({shown}), {tensors} of them tensors"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


@contextlib.contextmanager
def _crc32_on() -> Iterator[None]:
    """``torch.save`` writes a CRC-32 per entry (its default; ``load_checkpoint`` checks them)."""
    get = getattr(torch.serialization, "get_crc32_options", None)
    if get is None or get():  # older torch always writes them
        yield
        return
    torch.serialization.set_crc32_options(True)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(False)


def _os_error(err: BaseException) -> OSError | None:
    """The ``OSError`` that ``err`` is or was raised from (torch chains it in a RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


_WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full", "free space on the disk that holds {folder}"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or raise the quota for {folder}"),
    errno.EFBIG: (
        "the file is too large (a file size limit, see `ulimit -f`, or the filesystem's maximum)",
        "lift the limit or write to another filesystem (--out)",
    ),
    errno.EROFS: ("the filesystem is read-only", "make {folder} writable or pass another --out"),
    errno.EACCES: ("permission denied", "make {folder} writable or pass another --out"),
    errno.EPERM: ("operation not permitted", "make {folder} writable or pass another --out"),
}


def _write_failure(path: Path, err: OSError) -> str:
    what, fix = _WRITE_FAILURES.get(
        err.errno or 0, (err.strerror or str(err), "fix the cause above")
    )
    kept = (
        "the previous checkpoint is kept unchanged"
        if path.is_file()
        else "no checkpoint had been written yet"
    )
    fix = fix.format(folder=path.parent)
    return (
        f"{path}: the checkpoint could not be written: {what} ([Errno {err.errno}] "
        f"{err.strerror}); {kept}. {fix[0].upper()}{fix[1:]}, then run the same command again: "
        "it resumes from the last checkpoint kept"
    )


def _one_line(err: BaseException) -> str:
    """``err`` on one line, shortened (torch's messages span many lines)."""
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]
