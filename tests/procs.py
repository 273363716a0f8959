"""Processes seen through Linux's /proc, for the tests that kill processes and check what is left."""

from __future__ import annotations

import time
from pathlib import Path


def stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [0] state, [1] ppid, [11] utime,
    [12] stime, [19] start time. None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def ended(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` has ended: gone, a zombie, or (``start`` given) another process now."""
    f = stat_fields(pid)
    return f is None or f[0] in "ZX" or (start is not None and f[19] != start)


def gone(pid: int, within: float, start: str | None = None) -> bool:
    """Whether ``pid`` ends within ``within`` seconds (see :func:`ended`)."""
    deadline = time.monotonic() + within
    while not ended(pid, start):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
