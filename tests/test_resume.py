"""Fault injection: real ``xdc pretrain`` processes killed with SIGKILL at named points of the loop,
then resumed by running the same command again, end with bit-identical weights, pseudo-labels and
metrics to a run that was never interrupted (CPU, ``train.deterministic=true``).

Kill points (each checked after the kill, from what the killed process left on disk):

- ``train``: in the middle of an epoch (training steps of that epoch are in ``metrics.jsonl``).
- ``epoch-checkpoint`` / ``cluster-checkpoint``: while the checkpoint after an epoch / after the
  clustering is being written (its hidden temporary file ``.checkpoint.pt.*.tmp`` exists).
- ``extract``: in the feature extraction before a clustering (the checkpoint says the iteration
  is to be clustered, no ``cluster`` record yet, the process has worked 30 ms of CPU on it: that
  is in the BatchNorm recalibration that starts the extraction, or in its extraction pass).
- ``cluster``: in k-means. k-means is made the long part of the relabelling step with
  ``cluster.kmeans_iters`` (~1 s of CPU instead of milliseconds), and the process is killed once
  it has worked 0.5 s since the relabelling began and read nothing for the last 0.3 s.

Where these land was checked once by killing with SIGABRT under ``PYTHONFAULTHANDLER=1`` instead
(the traceback shows ``recalibrate_batchnorm`` / ``decode_clip``, ``kmeans``, ``torch.save``).

The process is frozen (SIGSTOP) before each look at its files, so what the test sees is exactly the
state the kill leaves; it runs in short slices (SIGCONT … SIGSTOP) near the kill point. Nothing
is timed: slices only set how finely the kill point is hit.

The default suite covers every method, kill point, 2 DataLoader workers, the RAM cache and a
manifest with a truncated video once; ``XDC_FAULTS=long`` runs every combination of method ×
workers × cache × broken file, each killed at every point in turn (about half an hour on 2 cores).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY_OVERRIDES
from tests.procs import ended, stat_fields
from xdc.checkpoint import CHECKPOINT_NAME, load_checkpoint
from xdc.runlog import METRICS_NAME, read_metrics

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="watches processes through Linux's /proc"
)
ROOT = Path(__file__).resolve().parents[1]
LONG = os.environ.get("XDC_FAULTS", "") == "long"
TIMEOUT = 600.0  # a guard against a hung process, not a speed requirement
KMEANS_CPU_ITERS = 7_000  # Lloyd iterations per relabelling (~1.2 s of CPU) when killed in k-means
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# What is run


@dataclass(frozen=True)
class Setup:
    """One configuration of ``xdc pretrain``; one uninterrupted reference run each."""

    method: str
    workers: int = 0
    cache: str = "none"
    broken: bool = False
    long_kmeans: bool = False
    mixup: bool = False  # train.mixup on both modalities: its draws resume with the run

    @property
    def id(self) -> str:
        parts = [self.method, f"w{self.workers}", self.cache]
        parts += ["broken"] * self.broken + ["longkm"] * self.long_kmeans + ["mixup"] * self.mixup
        return "-".join(parts)

    def overrides(self) -> dict[str, object]:
        clusterings = 1 if self.method == "cdc" else 2
        return {
            **TINY_OVERRIDES,
            "data.num_workers": self.workers,
            "data.cache": self.cache,
            "train.iterations": 2,
            "train.max_epochs": 2,
            "train.clips_per_epoch": 32,
            "train.log_every": 1,
            "train.deterministic": "true",
            **(
                {"cluster.kmeans_iters": KMEANS_CPU_ITERS // clusterings}
                if self.long_kmeans
                else {}
            ),
            **({"train.mixup": 0.4, "train.mixup_on": "both"} if self.mixup else {}),
        }

    def command(self, manifest: Path, out: Path) -> list[str]:
        return [
            sys.executable, "-m", "xdc.cli", "pretrain", "--data", str(manifest), "--out", str(out),
            "--method", self.method, "--preset", "tiny", "--no-progress",
            *[f"{k}={v}" for k, v in self.overrides().items()],
        ]  # fmt: skip


@dataclass(frozen=True)
class Kill:
    """A point of the loop to SIGKILL the process at.

    ``train`` and ``epoch-checkpoint`` are in epoch ``epoch`` of ``iteration``; ``final-checkpoint``
    is the write that marks the run finished, after that epoch (the last); ``extract``,
    ``cluster`` and ``cluster-checkpoint`` are in the relabelling that starts ``iteration`` (≥ 1,
    so that a checkpoint exists before it).
    """

    point: str
    iteration: int
    epoch: int = 0

    def __post_init__(self) -> None:
        assert self.point in IN_EPOCH | IN_RELABELLING
        assert self.iteration >= 1 or self.point in IN_EPOCH

    @property
    def id(self) -> str:
        where = f"{self.iteration}.{self.epoch}" if self.point in IN_EPOCH else self.iteration
        return f"{self.point}@{where}"

    def kept_position(self) -> tuple[int, int, str]:
        """(iteration, epoch, phase) of the checkpoint the kill must leave in place."""
        if self.point == "final-checkpoint":  # the one written after the last epoch
            return (self.iteration + 1, 0, "cluster")
        if self.point in IN_EPOCH:
            return (self.iteration, self.epoch, "train")
        return (self.iteration, 0, "cluster")


IN_EPOCH = {"train", "epoch-checkpoint", "final-checkpoint"}
IN_RELABELLING = {"extract", "cluster", "cluster-checkpoint"}
TRAIN_01, TRAIN_10, TRAIN_11 = Kill("train", 0, 1), Kill("train", 1, 0), Kill("train", 1, 1)
EXTRACT, CLUSTER = Kill("extract", 1), Kill("cluster", 1)
EPOCH_CKPT_01, EPOCH_CKPT_10 = Kill("epoch-checkpoint", 0, 1), Kill("epoch-checkpoint", 1, 0)
CLUSTER_CKPT, FINAL_CKPT = Kill("cluster-checkpoint", 1), Kill("final-checkpoint", 1, 1)
# Every point in turn, in the order a run reaches them (each kill resumes from the last one's).
EVERY_POINT = (TRAIN_01, EPOCH_CKPT_01, EXTRACT, CLUSTER, CLUSTER_CKPT, TRAIN_11, FINAL_CKPT)

DEFAULT_CASES = [
    (Setup("xdc", long_kmeans=True, mixup=True), (TRAIN_01, CLUSTER)),
    (Setup("sdc", workers=2), (EPOCH_CKPT_01, TRAIN_10, FINAL_CKPT)),
    (Setup("mdc", cache="memory"), (EXTRACT, CLUSTER_CKPT)),
    (Setup("cdc", workers=2, broken=True), (EXTRACT, EPOCH_CKPT_10)),
]
LONG_CASES = [
    (Setup(method, workers, cache, broken, long_kmeans=True), EVERY_POINT)
    for method in ("xdc", "sdc", "mdc", "cdc")
    for workers in (0, 2)
    for cache in ("none", "memory")
    for broken in (False, True)
]
CASES = LONG_CASES if LONG else DEFAULT_CASES


# --------------------------------------------------------------------------------------------
# Data and reference runs


@pytest.fixture(scope="module")
def broken_manifest(demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo data where one training video is cut to 40 % of its bytes."""
    root = tmp_path_factory.mktemp("broken") / "data"
    shutil.copytree(demo_manifest.parent, root)
    with (root / demo_manifest.name).open(newline="") as fh:
        victim = root / next(r["path"] for r in csv.DictReader(fh) if r["split"] == "train")
    with victim.open("r+b") as fh:
        fh.truncate(victim.stat().st_size * 4 // 10)
    return root / demo_manifest.name


@pytest.fixture(scope="module")
def reference(
    demo_manifest: Path, broken_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Setup], Path]:
    """``reference(setup)``: the uninterrupted run of ``setup`` (made once per module)."""
    runs: dict[Setup, Path] = {}

    def get(setup: Setup) -> Path:
        if setup not in runs:
            out = tmp_path_factory.mktemp("reference") / setup.id
            done = subprocess.run(
                setup.command(manifest_of(setup, demo_manifest, broken_manifest), out),
                env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            runs[setup] = out
        return runs[setup]

    return get


def manifest_of(setup: Setup, demo: Path, broken: Path) -> Path:
    return broken if setup.broken else demo


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------
# A process, frozen to be looked at


@dataclass
class Attempt:
    """One ``xdc pretrain`` process; its output is collected by threads."""

    cmd: list[str]
    run: Path
    started: float = 0.0
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    stale_temporaries: set[Path] = field(default_factory=set)
    children: list[tuple[int, str]] = field(default_factory=list)  # (pid, start time) when killed

    def __post_init__(self) -> None:
        self.started = time.time()
        self.stale_temporaries = set(temporaries(self.run))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DIE_WITH_PARENT, *self.cmd],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=_collect, args=(stream, lines), daemon=True).start()
        self._records: tuple[tuple[int, int], list[dict[str, Any]]] = ((-1, -1), [])
        self._position: tuple[tuple[int, int, int], tuple[int, int, str] | None] = ((0, 0, 0), None)

    # What the process has done, read while it is frozen ---------------------------------------

    def records(self, event: str) -> list[dict[str, Any]]:
        """This process's records of ``event`` (older ones are from killed attempts)."""
        path = self.run / METRICS_NAME
        try:
            st = path.stat()
        except FileNotFoundError:
            return []
        key = (st.st_ino, st.st_mtime_ns + st.st_size)
        if key != self._records[0]:
            found = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:  # a line being written when the process was stopped
                    continue
            self._records = (key, [r for r in found if r.get("time", 0) >= self.started])
        return [r for r in self._records[1] if r["event"] == event]

    def position(self) -> tuple[int, int, str] | None:
        """(iteration, epoch, phase) of the checkpoint on disk, None without one."""
        path = self.run / CHECKPOINT_NAME
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._position[0]:
            self._position = (key, position(self.run))
        return self._position[1]

    def new_temporaries(self) -> list[Path]:
        return [p for p in temporaries(self.run) if p not in self.stale_temporaries]

    def looping(self) -> bool:
        """Past start-up: the process has resumed, or has finished an epoch."""
        return any(ln.startswith(("resuming", "iteration ")) for ln in list(self.stdout))

    def cpu(self) -> int:
        """CPU time of the main process, in clock ticks."""
        fields = stat_fields(self.proc.pid)
        assert fields is not None, "the process is gone"
        return int(fields[11]) + int(fields[12])

    def bytes_read(self) -> int:
        """Bytes the main process has read (files, pipes); 0 where /proc hides it."""
        try:
            text = Path(f"/proc/{self.proc.pid}/io").read_text()
        except PermissionError:  # then the k-means kill waits on CPU time alone
            return 0
        return next(int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("rchar:"))

    # Control --------------------------------------------------------------------------------

    def freeze(self) -> bool:
        """SIGSTOP the process and wait until it is stopped; False if it has ended."""
        if self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGSTOP)
        while True:
            state = (stat_fields(self.proc.pid) or ["X"])[0]
            if state in "Tt":
                return True
            if state in "ZX" or self.proc.poll() is not None:
                return False
            time.sleep(0.0002)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the process; its children (DataLoader workers) must end with it: see
        :meth:`survivors`."""
        self.children += _children(self.proc.pid)  # the process is frozen: no new ones
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def survivors(self, within: float = 10.0) -> list[str]:
        """Command lines of the killed process's children still running after ``within`` s
        (torch's workers check on their parent every 5 s; xdc's are killed with it at once)."""
        deadline = time.monotonic() + within
        while True:
            alive = [cmd for child in self.children if (cmd := _running(child))]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.05)

    def finish(self) -> int:
        try:
            return self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.kill()

    def output(self) -> str:
        return "".join(self.stdout[-5:] + self.stderr[-20:])


# ``python -c DIE_WITH_PARENT PROGRAM ARGS...`` becomes PROGRAM (same process) after asking Linux
# to SIGKILL it when the test process dies: a test killed itself leaves no frozen process behind.
DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL); "  # PDEATHSIG
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def _collect(stream: Any, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of ``pid``'s child processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := stat_fields(entry.name)) and f[1] == str(pid):
            found.append((int(entry.name), f[19]))
    return found


def _running(child: tuple[int, str]) -> str:
    """The command line of ``child`` if it is still running (not a zombie, not a reused pid)."""
    if ended(*child):
        return ""
    try:
        return Path(f"/proc/{child[0]}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return ""


def temporaries(run: Path) -> list[Path]:
    """Hidden temporary files of checkpoint writes in ``run`` (see ``xdc.atomic``)."""
    return sorted(run.glob(f".{CHECKPOINT_NAME}.*.tmp"))


def position(run: Path) -> tuple[int, int, str]:
    loop = load_checkpoint(run)["loop"]
    return (loop["iteration"], loop["epoch"], loop["phase"])


# --------------------------------------------------------------------------------------------
# Kill points


class Watcher:
    """Decides, on a frozen process, whether it is at ``kill``'s point."""

    def __init__(self, kill: Kill, attempt: Attempt) -> None:
        self.kill, self.a = kill, attempt
        self.start_cpu: int | None = None  # CPU ticks when the relabelling was first seen
        self.read: tuple[int, int] = (-1, 0)  # (bytes read, CPU ticks when that count changed)

    def near(self) -> bool:
        """Close to the point: from here on the process runs in fine slices (a checkpoint write
        takes milliseconds: coarse slices would step over it)."""
        k = self.kill
        if k.point == "train":
            return False
        if k.point in {"epoch-checkpoint", "final-checkpoint"}:
            return bool(self._steps())
        return self._relabelling() or bool(self._clusterings())

    def at(self) -> bool:
        k, a = self.kill, self.a
        if k.point == "train":
            return len(self._steps()) >= 3
        if k.point == "epoch-checkpoint":
            return bool(self._steps()) and self._writing()
        if k.point == "final-checkpoint":  # the checkpoint after the last epoch is on disk
            return self._writing()
        if k.point == "cluster-checkpoint":
            return bool(self._clusterings()) and self._writing()
        if not self._relabelling():
            return False
        cpu, read = a.cpu(), a.bytes_read()
        if self.start_cpu is None:
            self.start_cpu, self.read = cpu, (read, cpu)
        if read != self.read[0]:
            self.read = (read, cpu)
        worked = cpu - self.start_cpu
        if k.point == "extract":
            return worked >= 0.03 * TICK  # a few batches into BatchNorm calibration / extraction
        # k-means reads nothing; extraction reads videos (or batches from its workers) all along,
        # or, from the RAM cache with no workers, takes well under the 0.5 s waited here (0.1-0.3 s).
        return worked >= 0.5 * TICK and cpu - self.read[1] >= 0.3 * TICK

    def missed(self) -> bool:
        """The checkpoint to kill the process in the write of has been written already."""
        k, a = self.kill, self.a
        if k.point == "epoch-checkpoint":
            return bool(self._steps()) and a.position() != k.kept_position()
        if k.point == "cluster-checkpoint":
            return bool(self._clusterings()) and a.position() != k.kept_position()
        return False

    def _writing(self) -> bool:
        """A checkpoint write is under way and the one before it is what the kill must keep."""
        return bool(self.a.new_temporaries()) and self.a.position() == self.kill.kept_position()

    def _steps(self) -> list[dict[str, Any]]:
        k = self.kill
        return [
            r for r in self.a.records("train")
            if (r["iteration"], r["epoch"]) == (k.iteration, k.epoch)
        ]  # fmt: skip

    def _clusterings(self) -> list[dict[str, Any]]:
        return [r for r in self.a.records("cluster") if r["iteration"] == self.kill.iteration]

    def _relabelling(self) -> bool:
        """Between the checkpoint that ends iteration - 1 and the first ``cluster`` record."""
        k, a = self.kill, self.a
        return (
            a.looping() and a.position() == (k.iteration, 0, "cluster") and not self._clusterings()
        )


def kill_at(attempt: Attempt, kill: Kill) -> None:
    """Run ``attempt`` until it is at ``kill``'s point, then SIGKILL it there."""
    watcher = Watcher(kill, attempt)
    caught = step_until(attempt, watcher.at, watcher.near, watcher.missed, what=kill.id)
    assert caught, f"{kill.id}: the process wrote that checkpoint between two looks at it"


def step_until(
    attempt: Attempt,
    at: Callable[[], bool],
    near: Callable[[], bool] = lambda: True,
    too_late: Callable[[], bool] = lambda: False,
    what: str = "the kill point",
) -> bool:
    """Run ``attempt`` in slices (fine ones once ``near()``) and SIGKILL it as soon as ``at()``
    holds while it is frozen: True. False when ``too_late()`` holds first (it is killed too)."""
    deadline = time.monotonic() + TIMEOUT
    fine = False
    try:
        while time.monotonic() < deadline:
            if not attempt.freeze():
                raise AssertionError(
                    f"the run ended before {what} (exit {attempt.proc.returncode}): "
                    f"{attempt.output()}"
                )
            fine = fine or near()
            if at():
                attempt.kill()
                return True
            if too_late():
                attempt.kill()
                return False
            attempt.thaw()
            time.sleep(0.001 if fine else 0.02)
        raise AssertionError(f"the run never reached {what}")
    finally:
        if attempt.proc.poll() is None:
            attempt.kill()


# --------------------------------------------------------------------------------------------
# Comparison with the reference


def state_of(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor that must be bit-identical: weights, heads, pseudo-labels, centroids."""
    state = load_checkpoint(run)
    flat = {f"encoders.{m}.{k}": v for m, sd in state["encoders"].items() for k, v in sd.items()}
    flat.update({f"heads.{k}": v for k, v in state["heads"].items()})
    for part in ("labels", "centroids"):
        flat.update({f"{part}.{k}": v for k, v in state["loop"][part].items()})
    flat["val_rows"] = state["loop"]["val_rows"]
    return flat


def log_of(run: Path) -> list[dict[str, Any]]:
    """The metrics log without wall-clock times and speeds."""
    drop = {"time", "clips_per_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(run)]


def assert_same_run(run: Path, ref: Path) -> None:
    a, b = state_of(ref), state_of(run)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{run} differs from the uninterrupted run in {different[:5]}"
    assert load_checkpoint(run)["loop"]["finished"]
    # The log holds every record once, with the same values, as if never interrupted.
    assert log_of(run) == log_of(ref)
    for name in ("config.json", "warnings.json"):
        assert _json_or_none(run / name) == _json_or_none(ref / name), name
    # Files that failed to decode: the same ones (a resumed process reports them again).
    assert _lines(run / "failures.txt") == _lines(ref / "failures.txt")
    assert not temporaries(run), "a temporary file of a killed checkpoint write was left behind"


def _json_or_none(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _lines(path: Path) -> set[str]:
    return set(path.read_text().splitlines()) if path.is_file() else set()


def case_id(case: tuple[Setup, tuple[Kill, ...]]) -> str:
    setup, kills = case
    return f"{setup.id}:{'+'.join(k.id for k in kills)}"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_sigkill_then_resume_is_bit_identical(
    case: tuple[Setup, tuple[Kill, ...]],
    reference: Callable[[Setup], Path],
    demo_manifest: Path,
    broken_manifest: Path,
    tmp_path: Path,
) -> None:
    setup, kills = case
    ref = reference(setup)
    run = tmp_path / "killed"
    cmd = setup.command(manifest_of(setup, demo_manifest, broken_manifest), run)
    for kill in kills:
        attempt = Attempt(cmd, run)
        kill_at(attempt, kill)
        assert not attempt.survivors(), f"{kill.id}: workers outlived their killed parent"
        assert position(run) == kill.kept_position(), f"{kill.id}: {attempt.output()}"
        if "checkpoint" in kill.point:
            assert attempt.new_temporaries(), f"{kill.id}: not killed while writing"
        if kill.point in {"extract", "cluster"}:
            done = [r for r in attempt.records("cluster") if r["iteration"] == kill.iteration]
            assert not done, f"{kill.id}: killed after the clustering"
    last = Attempt(cmd, run)
    assert last.finish() == 0, last.output()
    assert any(line.startswith("resuming") for line in last.stdout)
    assert_same_run(run, ref)


# A real file size limit, then the CLI: ``python -c LIMITED SIZE PROGRAM ARGS...`` runs PROGRAM
# with RLIMIT_FSIZE = SIZE bytes (SIGXFSZ ignored, so a write past it raises OSError EFBIG).
LIMITED = (
    "import os, resource, signal, sys; n = int(sys.argv[1]); "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_then_resume_is_bit_identical(
    reference: Callable[[Setup], Path], demo_manifest: Path, tmp_path: Path
) -> None:
    """The checkpoint after the first epoch (weights and momentum) does not fit under the limit,
    the one after the first clustering (no momentum yet) does: the run stops with one line, keeps
    that one, and the same command resumes it once the limit is gone."""
    setup = Setup("mdc", cache="memory")
    ref = reference(setup)
    limit = (ref / CHECKPOINT_NAME).stat().st_size * 3 // 4
    run = tmp_path / "full"
    cmd = setup.command(demo_manifest, run)
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *cmd],
        env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    error = done.stderr.splitlines()[-1]
    assert error.startswith(f"xdc: error: {run / CHECKPOINT_NAME}: "), done.stderr
    assert "too large" in error and "the previous checkpoint is kept" in error, error
    assert "Traceback" not in done.stderr, done.stderr
    assert position(run) == (0, 0, "train"), "the checkpoint after the clustering was kept"
    assert not temporaries(run), "the failed write left its temporary file"

    last = Attempt(cmd, run)
    assert last.finish() == 0, last.output()
    assert_same_run(run, ref)


@pytest.mark.slow
def test_sigkill_during_the_first_write_of_the_config_then_resume(
    reference: Callable[[Setup], Path], demo_manifest: Path, tmp_path: Path
) -> None:
    """The first thing a new run writes is RUN/config.json (atomically); a kill in that write
    leaves the folder with the write's temporary file only. Running the command again must start
    the run (and end as an uninterrupted one)."""
    setup = Setup("sdc", workers=2)
    for attempt_no in range(3):  # a retry when the write was too fast to be caught
        run = tmp_path / f"try{attempt_no}"
        cmd = setup.command(demo_manifest, run)
        attempt = Attempt(cmd, run)
        caught = step_until(
            attempt,
            at=lambda run=run: any(run.glob(".config.json.*.tmp")),
            too_late=lambda run=run: (run / "config.json").exists(),
            what="the write of config.json",
        )
        if caught:
            break
    else:
        pytest.skip("the write of config.json was never caught in the act on this filesystem")
    assert not (run / "config.json").exists()
    last = Attempt(cmd, run)
    assert last.finish() == 0, last.output()
    assert_same_run(run, reference(setup))
