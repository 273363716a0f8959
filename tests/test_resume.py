"""A run killed with SIGKILL in the middle of an epoch, then resumed by running the same command
again, ends with bit-identical weights to a run that was never interrupted (CPU, deterministic)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import TINY_OVERRIDES
from xdc.checkpoint import load_checkpoint
from xdc.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _command(manifest: Path, out: Path) -> list[str]:
    overrides = {
        **TINY_OVERRIDES,
        "train.iterations": 2,
        "train.max_epochs": 2,
        "train.clips_per_epoch": 48,
        "train.log_every": 1,
        "train.deterministic": "true",
    }
    return [
        sys.executable, "-m", "xdc.cli", "pretrain", "--data", str(manifest), "--out", str(out),
        "--method", "xdc", "--preset", "tiny", "--no-progress",
        *[f"{k}={v}" for k, v in overrides.items()],
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run)
    flat = {f"encoders.{m}.{k}": v for m, sd in state["encoders"].items() for k, v in sd.items()}
    flat.update({f"heads.{k}": v for k, v in state["heads"].items()})
    return flat


def _kill_mid_epoch(
    cmd: list[str], run: Path, iteration: int, epoch: int, timeout: float = 180
) -> None:
    """Start the run and SIGKILL it once a training step of (iteration, epoch) is logged."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            steps = [
                r for r in read_metrics(run, "train")
                if r["iteration"] == iteration and r["epoch"] == epoch
            ]  # fmt: skip
            if len(steps) >= 3:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                return
            if proc.poll() is not None:
                raise AssertionError(f"run ended before it could be killed: {proc.stderr.read()!r}")
            time.sleep(0.02)
        raise AssertionError("the run never reached the step to kill it at")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigkill_mid_epoch_then_resume_is_bit_identical(
    demo_manifest: Path, tmp_path: Path
) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_command(demo_manifest, straight), env=_env(), check=True, capture_output=True)

    # Killed twice: in the second epoch of the first iteration, and in the first epoch of the second.
    _kill_mid_epoch(_command(demo_manifest, killed), killed, iteration=0, epoch=1)
    assert load_checkpoint(killed)["loop"]["epoch"] == 1, "the checkpoint of epoch 1 was kept"
    _kill_mid_epoch(_command(demo_manifest, killed), killed, iteration=1, epoch=0)
    done = subprocess.run(
        _command(demo_manifest, killed), env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout

    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    # The metrics log holds each step once, as if the run had never been interrupted.
    steps = [(r["iteration"], r["epoch"], r["step"]) for r in read_metrics(killed, "train")]
    assert steps == [
        (r["iteration"], r["epoch"], r["step"]) for r in read_metrics(straight, "train")
    ]
    assert json.loads((killed / "config.json").read_text()) == json.loads(
        (straight / "config.json").read_text()
    )
