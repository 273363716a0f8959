"""Work on many media files in a pool of processes that survives a process dying on one file.

FFmpeg can crash on a malformed file and take its process with it, which breaks a whole
``ProcessPoolExecutor``. ``map_files`` hands out at most two items per process at a time, so the
items in flight when a process dies are known: each is then run alone in a process of its own,
the one that kills it again gets ``on_error``, and the rest continue in a new pool. Used by
``xdc index`` (probing) and ``xdc prepare`` (re-encoding).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from xdc.processes import die_with_parent

__all__ = ["DIED", "map_files"]

T = TypeVar("T")
R = TypeVar("R")

DIED = "the process died on this file (FFmpeg crashed?)"


def map_files(
    work: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    on_error: Callable[[T, str], R],
) -> Iterator[R]:
    """``work(item)`` of every item in ``workers`` processes, yielded in the order they finish.

    ``work`` must be picklable (a module-level function, or a ``functools.partial`` of one).
    An item whose process dies twice, or whose ``work`` raises or returns something that cannot
    be sent back, yields ``on_error(item, detail)`` (run in this process) instead: ``detail`` is
    ``DIED`` or ``"ExceptionType: message"``. Nothing is lost and nothing stops the others.
    """
    todo = deque(items)
    while todo:
        suspects: list[T] = []
        with ProcessPoolExecutor(
            max(1, min(workers, len(todo))), initializer=die_with_parent
        ) as pool:
            running: dict[Future[R], T] = {}
            while todo or running:
                while todo and len(running) < 2 * workers:
                    item = todo.popleft()
                    running[pool.submit(work, item)] = item
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    item = running.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        suspects.append(item)
                        broken = True
                    except Exception as error:
                        yield on_error(item, f"{type(error).__name__}: {error}")
                if broken:
                    suspects += running.values()
                    break
        for item in suspects:
            yield _alone(work, item, on_error)


def _alone(work: Callable[[T], R], item: T, on_error: Callable[[T, str], R]) -> R:
    """``work(item)`` in a process of its own."""
    with ProcessPoolExecutor(max_workers=1, initializer=die_with_parent) as pool:
        try:
            return pool.submit(work, item).result()
        except BrokenProcessPool:
            detail = DIED
        except Exception as error:
            detail = f"{type(error).__name__}: {error}"
    return on_error(item, detail)
