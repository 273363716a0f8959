"""Progress output that a terminal and a cluster log can both read, and ``--quiet``.

``track(...)`` is what every long loop uses. Its mode is chosen once per loop:

- ``bar``: a tqdm bar, when stderr is a terminal;
- ``lines``: when stderr is not a terminal (a SLURM log, a file, a pipe), one plain line such as
  ``probing: 1234/5000 (24.7%) 56.3 file/s, ETA 1m07s`` once at least ``XDC_PROGRESS_INTERVAL``
  seconds (default 30) *and* ``XDC_PROGRESS_PERCENT`` percent of the total (default 5) have passed
  since the last line, whichever comes later, and one final line when the loop ends; no carriage
  returns;
- ``off``: nothing, with ``--no-progress``, ``xdc --quiet`` or ``XDC_QUIET=1``.

``XDC_PROGRESS=bar|lines|off`` overrides the terminal check (not ``--no-progress`` or quiet).
``inform`` prints an informational line on stdout unless quiet; warnings and errors are not routed
through it and always print.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TextIO, TypeVar, overload

from xdc.errors import ConfigError

PROGRESS_ENV = "XDC_PROGRESS"
INTERVAL_ENV = "XDC_PROGRESS_INTERVAL"
PERCENT_ENV = "XDC_PROGRESS_PERCENT"
QUIET_ENV = "XDC_QUIET"
MODES = ("bar", "lines", "off")
DEFAULT_INTERVAL_S = 30.0
DEFAULT_PERCENT = 5.0

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Progress(Protocol[T_co]):
    """What the loops use of a progress reporter: tqdm's bar and ``LineProgress`` both have it."""

    def __iter__(self) -> Iterator[T_co]: ...
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, **values: Any) -> Any: ...
    def close(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> Any: ...


def quiet() -> bool:
    """Whether ``xdc --quiet`` (or ``XDC_QUIET=1``) is in force."""
    return os.environ.get(QUIET_ENV, "").strip() not in ("", "0")


def inform(message: str) -> None:
    """Print an informational line on stdout, unless quiet."""
    if not quiet():
        print(message, flush=True)


def progress_mode(enabled: bool = True, stream: TextIO | None = None) -> str:
    """``bar``, ``lines`` or ``off`` for a loop writing to ``stream`` (default stderr)."""
    if not enabled or quiet():
        return "off"
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ConfigError(f"{PROGRESS_ENV}={forced!r}: use one of {', '.join(MODES)}")
        return forced
    stream = sys.stderr if stream is None else stream
    if stream is None:  # no stderr at all (pythonw, some daemons)
        return "off"
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a replaced or closed stream
        return "lines"


@overload
def track(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
) -> Progress[T]: ...
@overload
def track(
    iterable: None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
) -> Progress[Any]: ...
def track(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
) -> Progress[Any]:
    """A progress reporter over ``iterable`` (or updated by hand with ``update``), in the mode
    ``progress_mode(enabled)`` picks. ``leave`` applies to the bar only."""
    mode = progress_mode(enabled)
    from tqdm import tqdm  # here: `xdc --help` and the CLI's other paths need not import it

    if mode == "lines":
        return LineProgress(iterable, total=total, desc=desc, unit=unit)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=mode == "off")


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ConfigError(f"{name}={text!r}: give a number ≥ 0, or unset it ({default:g})")
    return value


def format_duration(seconds: float) -> str:
    """``45s``, ``1m07s``, ``2h03m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineProgress(Generic[T]):
    """Plain progress lines for logs: one every ``interval`` seconds and ``percent`` % of
    ``total`` (whichever comes later; time only when the total is unknown), and a final line on
    ``close`` (also when the loop ends early: it then says "stopped")."""

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        stream: TextIO | None = None,
        interval: float | None = None,
        percent: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream = stream
        self.interval = (
            _env_float(INTERVAL_ENV, DEFAULT_INTERVAL_S) if interval is None else interval
        )
        self.percent = _env_float(PERCENT_ENV, DEFAULT_PERCENT) if percent is None else percent
        self.clock = clock
        self.n = 0
        self.start = self._last_time = clock()
        self._last_n = 0
        self._postfix = ""
        self._closed = False

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("LineProgress made without an iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LineProgress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the rate (the training loss, say), as ``key=value``."""
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total is not None and self.n >= self.total:
            return  # the final line follows
        now = self.clock()
        if now - self._last_time < self.interval:
            return
        if self.total and (self.n - self._last_n) * 100 < self.percent * self.total:
            return
        self._last_time, self._last_n = now, self.n
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total and rate > 0:
            tail = f"ETA {format_duration((self.total - self.n) / rate)}"
        else:
            tail = f"{format_duration(elapsed)} so far"
        self._write(f"{self._rate(rate)}, {tail}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = self.clock() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        ended = "done in" if self.total is None or self.n >= self.total else "stopped after"
        self._write(f"{self._rate(rate)}, {ended} {format_duration(elapsed)}")

    def _rate(self, rate: float) -> str:
        if 0 < rate < 1:
            return f"{1 / rate:.1f} s/{self.unit}"
        return f"{rate:.1f} {self.unit}/s"

    def _write(self, tail: str) -> None:
        count = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
        if self.total:
            count += f" ({100 * self.n / self.total:.1f}%)"
        line = f"{self.desc}: {count}" if self.desc else count
        line += f" {tail}"
        if self._postfix:
            line += f", {self._postfix}"
        print(line, file=self.stream if self.stream is not None else sys.stderr, flush=True)
