"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the
target. A crash or a kill leaves the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A hidden temporary path next to ``path`` (ending in ``suffix``, for writers that infer the
    format from it), renamed over ``path`` when the block ends without an error and removed
    otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | Path, value: Any, **dumps: Any) -> Path:
    """Write ``value`` as indented JSON (and a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(value, indent=2, **dumps) + "\n")
