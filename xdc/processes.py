"""Child processes that end with their parent.

A process that xdc starts for work (a DataLoader worker, a worker of ``xdc index``'s or ``xdc
demo-data``'s process pools) has nothing left to do once the process that asked for the work is
gone, whatever killed it: a SIGKILL, the OOM killer, a scheduler's preemption. Left alone such a
child can wait for work forever, holding memory. :func:`die_with_parent`, run first in the child
(a DataLoader's ``worker_init_fn``, a pool's ``initializer``), makes it end with its parent.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from pathlib import Path

__all__ = ["die_with_parent"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> bool:
    """In a child process: ask Linux to SIGKILL it when its parent ends, and end it at once if
    the parent has already ended. True when the request was made (Linux, in a child process).

    torch's DataLoader workers watch their parent themselves, but only from the end of their
    start-up: each records ``os.getppid()`` after ``worker_init_fn`` has run and later checks that
    it has not changed. A parent killed within the start-up leaves workers that recorded their new
    parent, PID 1, and wait for work forever; a process pool's workers do not watch at all.
    Asking the kernel first and then checking the parent closes that window.

    Linux counts the *thread* that started the child as its parent: xdc starts its workers from
    the main thread; a loader first iterated on a thread that ends before it loses its workers.
    Children of a forkserver are the server's: the request then follows the server, which
    outlives a killed parent (xdc's DataLoaders fork: ``xdc.data.datasets.WORKER_START``).
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None or not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    # Under a forkserver the child's parent process is the server, not ``parent``.
    if os.getppid() != parent.pid and _ended(parent.pid):
        os._exit(1)  # the parent ended before the request: nobody is left to ask for work
    return True


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie not yet waited for); Linux."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    except (OSError, IndexError):  # a /proc that hides it: taken as running
        return False
    return state in "ZX"
