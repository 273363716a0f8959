"""Keep freed memory in the process heap on Linux (glibc), so that CPU training does not fault
the same pages in again at every batch.

A CPU training step allocates and frees the same tens of megabytes every batch (the float copy of
the clips, the warp grid, the short-time spectra, the activations). glibc serves blocks above a
threshold that starts at 128 KiB with ``mmap`` and gives them back to the system on ``free``, and
trims the top of the heap once 128 KiB or more of it is free, so the next batch takes a page fault
(and the kernel zeroes the page) for every 4 KiB again. Measured on the `tiny` loop on 2 cores:
the strong augmentation and the log-mel of a batch took 6.5 and 4.5 ms with glibc's defaults,
3.9 and 1.7 ms with :func:`keep_heap` (``benchmarks/train.py`` prints the loop's clips/s).

:func:`keep_heap` raises both thresholds with ``mallopt``: blocks up to 32 MiB (glibc's ceiling
for the mmap threshold on 64-bit systems) come from the heap, and up to 1 GiB of free heap is kept
for reuse. The cost is memory the process holds after a peak instead of returning it. ``xdc``
calls it at start-up; ``XDC_MALLOC=system`` leaves glibc's defaults. Elsewhere than Linux with
glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30


def keep_heap() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the processes it forks);
    True when they were set, False when not asked (``XDC_MALLOC=system``) or not glibc."""
    if os.environ.get("XDC_MALLOC", "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
