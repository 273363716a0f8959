"""Progress output (xdc.progress): a bar on a terminal, plain lines in a log, nothing when quiet.

A cluster job's log is a file: it must get a few readable lines with rate and ETA, never a
carriage-return flood.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from xdc.cli import main
from xdc.errors import ConfigError
from xdc.progress import (
    INTERVAL_ENV,
    PERCENT_ENV,
    PROGRESS_ENV,
    QUIET_ENV,
    LineProgress,
    format_duration,
    progress_mode,
    track,
)


@pytest.fixture(autouse=True)
def _no_progress_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (PROGRESS_ENV, INTERVAL_ENV, PERCENT_ENV, QUIET_ENV):
        monkeypatch.delenv(name, raising=False)


class FakeClock:
    """A clock the test moves by hand: every call returns ``now``."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_interval_and_percent_whichever_comes_later() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(total=100, desc="probing", unit="file", stream=out, interval=30, percent=5,
                       clock=clock)  # fmt: skip
    for _ in range(4):  # 4 % after 40 s: time has passed, the percentage has not
        clock.now += 10
        bar.update()
    assert out.getvalue() == ""
    clock.now += 10
    bar.update()  # 5 % after 50 s
    assert out.getvalue() == "probing: 5/100 (5.0%) 10.0 s/file, ETA 15m50s\n"
    bar.update(10)  # 15 %, no time passed: waits for the interval
    assert out.getvalue().count("\n") == 1
    clock.now += 100
    bar.update(5)  # 20 files in 150 s
    assert out.getvalue().splitlines()[-1] == "probing: 20/100 (20.0%) 7.5 s/file, ETA 10m00s"
    bar.set_postfix(loss="0.123")
    bar.update(80)  # the end: only the final line, on close
    clock.now += 50
    bar.close()
    bar.close()  # once only
    assert out.getvalue().splitlines()[2:] == [
        "probing: 100/100 (100.0%) 2.0 s/file, done in 3m20s, loss=0.123"
    ]


def test_iterating_counts_itself_and_says_when_a_loop_stopped_early() -> None:
    clock, out = FakeClock(), io.StringIO()
    items = LineProgress(list(range(10)), desc="cache", stream=out, interval=0, percent=50,
                         clock=clock)  # fmt: skip
    for i in items:
        clock.now += 1
        if i == 6:
            break
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("cache: 5/10 (50.0%) 1.0 it/s, ETA 5s")
    # the generator's finally runs on break (CPython closes it when the loop drops it)
    assert lines[-1] == "cache: 6/10 (60.0%) 1.2 s/it, stopped after 7s"


def test_unknown_total_reports_count_and_elapsed_time() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(desc="features", stream=out, interval=30, clock=clock)
    for _ in range(3):
        clock.now += 20
        bar.update(4)
    bar.close()
    assert out.getvalue().splitlines() == [
        "features: 8 5.0 s/it, 40s so far",  # 30 s since the start reached at 40 s
        "features: 12 5.0 s/it, done in 1m00s",
    ]


def test_durations() -> None:
    assert [format_duration(s) for s in (0, 59.4, 67, 3599, 7380)] == [
        "0s", "59s", "1m07s", "59m59s", "2h03m",
    ]  # fmt: skip


def test_mode_follows_the_terminal_and_the_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty, io.StringIO() as log:
            assert progress_mode(stream=tty) == "bar"
            assert progress_mode(stream=log) == "lines"
            assert progress_mode(enabled=False, stream=tty) == "off"  # --no-progress
            monkeypatch.setenv(PROGRESS_ENV, "lines")
            assert progress_mode(stream=tty) == "lines"
            monkeypatch.setenv(QUIET_ENV, "1")
            assert progress_mode(stream=tty) == "off"  # quiet wins over XDC_PROGRESS
            monkeypatch.setenv(QUIET_ENV, "0")
            monkeypatch.setenv(PROGRESS_ENV, "loud")
            with pytest.raises(ConfigError, match="XDC_PROGRESS='loud': use one of bar, lines"):
                progress_mode(stream=tty)
    finally:
        os.close(leader)
        os.close(follower)


def test_a_bar_on_a_real_terminal_and_lines_in_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    leader, follower = pty.openpty()
    # 80 columns: tqdm draws nothing on a terminal of width 0, a new pty's size
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            monkeypatch.setattr(sys, "stderr", tty)
            for _ in track(range(3), desc="on a tty"):
                pass
            tty.flush()
        written = b""
        while select.select([leader], [], [], 0)[0]:
            written += os.read(leader, 65536)

    finally:
        os.close(leader)
        os.close(follower)
    text = written.decode()
    assert "\ron a tty: 100%" in text and "3/3" in text  # tqdm redraws the bar in place
    with (tmp_path / "log").open("w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        monkeypatch.setenv(INTERVAL_ENV, "0")
        monkeypatch.setenv(PERCENT_ENV, "50")
        for _ in track(range(4), desc="in a file"):
            pass
    text = (tmp_path / "log").read_text()
    assert "\r" not in text
    assert [line.split(" it/s")[0].rsplit(" ", 1)[0] for line in text.splitlines()] == [
        "in a file: 2/4 (50.0%)",
        "in a file: 4/4 (100.0%)",
    ]


def test_bad_interval_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ConfigError, match="XDC_PROGRESS_INTERVAL='soon': give a number ≥ 0"):
        LineProgress(total=3)


def test_demo_data_log_in_a_file_has_lines_not_carriage_returns(tmp_path: Path) -> None:
    """A real `xdc demo-data` with stdout and stderr in files, as under SLURM."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", INTERVAL_ENV: "0", PERCENT_ENV: "25"}
    for name in (PROGRESS_ENV, QUIET_ENV):
        env.pop(name, None)
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        subprocess.run(
            [sys.executable, "-m", "xdc.cli", "demo-data", str(tmp_path / "demo"), "--classes",
             "2", "--per-class", "2", "--workers", "1"],
            stdout=out, stderr=err, env=env, check=True, timeout=120,
        )  # fmt: skip
    err_text = (tmp_path / "err").read_text()
    assert "\r" not in err_text
    counts = [line.split(" clip/s")[0].rsplit(" ", 1)[0] for line in err_text.splitlines()]
    assert counts == [f"demo videos: {n}/4 ({25 * n:.1f}%)" for n in (1, 2, 3, 4)]
    assert err_text.splitlines()[-1].split(", ")[-1].startswith("done in ")
    assert (tmp_path / "out").read_text().startswith("wrote 4 videos")


def test_quiet_silences_progress_and_information_not_errors(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, demo_manifest: Path
) -> None:
    videos = demo_manifest.parent
    assert main(["index", str(videos), "-o", str(tmp_path / "loud.csv")]) == 0
    loud = capfd.readouterr()
    assert "probing: " in loud.err and loud.out  # lines (stderr is not a terminal) and a summary
    for flag in ("--quiet", "-q"):
        assert main([flag, "index", str(videos), "-o", str(tmp_path / f"{flag}.csv")]) == 0
        assert capfd.readouterr() == ("", "")
        assert (tmp_path / f"{flag}.csv").is_file()
    assert QUIET_ENV not in os.environ  # restored after the command
    assert main(["-q", "index", str(tmp_path / "missing"), "-o", str(tmp_path / "m.csv")]) == 2
    assert "xdc: error: " in capfd.readouterr().err


def test_quiet_from_the_environment(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, demo_manifest: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv(QUIET_ENV, "1")
    assert main(["index", str(demo_manifest.parent), "-o", str(tmp_path / "m.csv")]) == 0
    assert capfd.readouterr() == ("", "")
