"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the
target. A crash or a kill leaves the old file or the new one, never half of either; a write that
fails (a full disk) removes its temporary file and leaves the old file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_TEMP_LETTERS = "[a-z0-9_]{8}"  # the random part of tempfile.mkstemp's names


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A hidden temporary path next to ``path`` (ending in ``suffix``, for writers that infer the
    format from it), renamed over ``path`` when the block ends without an error and removed
    otherwise. The new file gets the old one's permissions, or those ``open`` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, _mode_for(path))  # mkstemp makes it 0600
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:  # a failed write names no file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def temporaries(path: str | Path, suffix: str = ".tmp") -> list[Path]:
    """Temporary files of ``atomic_path(path, suffix)`` writes that are under way or were
    killed (SIGKILL, power loss) before they could remove them."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + _TEMP_LETTERS + re.escape(suffix))
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


@contextlib.contextmanager
def atomic_file(path: str | Path, binary: bool = False) -> Iterator[IO[Any]]:
    """A file to write ``path``'s new content to, flushed to disk and renamed over ``path`` when
    the block ends without an error. Text is UTF-8, newlines untranslated."""
    with atomic_path(path) as tmp, _open(tmp, binary) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def _open(path: Path, binary: bool) -> IO[Any]:
    return path.open("wb") if binary else path.open("w", encoding="utf-8", newline="")


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not every filesystem allows it: best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | Path, value: Any, **dumps: Any) -> Path:
    """Write ``value`` as indented JSON (and a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(value, indent=2, **dumps) + "\n")
