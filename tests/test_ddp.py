"""A real three-process run under torchrun (gloo on CPU) over 13 videos — shards of uneven size,
an empty held-out shard on rank 0, a training epoch of 13 clips padded to 15 — stopped after its
first iteration and resumed by one process.

The first clustering (features extracted on three shards and averaged over two augmented views,
k-means across processes) equals a single-process run's; every process ends the iteration with the
same weights after the same number of steps; and the one-process resume finishes the run.

Run as a module (``python -m tests.test_ddp pretrain …``), this file is ``xdc pretrain`` stopped
cleanly on every process at the start of iteration ``XDC_TEST_STOP_AT``, each process first saving
its weights and step count in ``XDC_TEST_DUMPS/rank<R>.pt``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY_OVERRIDES, tiny_config
from xdc import distributed as xdist
from xdc import training
from xdc.checkpoint import load_checkpoint
from xdc.runlog import read_metrics
from xdc.training import pretrain

ROOT = Path(__file__).resolve().parents[1]
WORLD = 3
# 13 training videos: extraction shards of 4, 4 and 5; two held out (none on rank 0); an epoch is
# 13 clips of the other 11, padded to 15: 5 per process, 3 steps of batches of 2, 2 and 1.
EXTRA = {
    "cluster.views": 2,
    "data.augment": "strong_hue",
    "train.iterations": 2,
    "train.val_fraction": 0.15,
    "train.batch_size": 2,
}


class StopRun(Exception):
    """Raised on every process at the start of iteration ``XDC_TEST_STOP_AT``."""


def _stopping_relabel(stop_at: int, dumps: Path) -> Any:
    original = training.relabel

    def relabel(state: Any, model: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        if state.iteration == stop_at:
            # The parameters (DDP keeps them equal; each process's BatchNorm statistics are its own).
            weights = {k: v.detach().clone() for k, v in model.named_parameters()}
            torch.save({"step": state.step, "weights": weights}, dumps / f"rank{xdist.rank()}.pt")
            raise StopRun
        original(state, model, *args, **kwargs)

    return relabel


def _manifest(demo_manifest: Path, out: Path) -> Path:
    """The demo manifest less two training videos (13 left), paths made absolute."""
    with demo_manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [r for r in rows if r["split"] == "train"]
    keep = [r for r in rows if r not in train[:2]]
    for r in keep:
        r["path"] = str((demo_manifest.parent / r["path"]).resolve())
    path = out / "manifest.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    assert sum(r["split"] == "train" for r in keep) == 13
    return path


@pytest.mark.timeout(400)
def test_three_processes_equal_one_then_resume_in_one(
    demo_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest(demo_manifest, tmp_path)
    config = tiny_config("xdc", **{k.replace(".", "__"): v for k, v in EXTRA.items()})

    single = tmp_path / "single"
    with monkeypatch.context() as patch, pytest.raises(StopRun):
        patch.setattr(training, "relabel", _stopping_relabel(1, tmp_path))
        pretrain(config, manifest, single, progress=False)

    ddp, dumps = tmp_path / "ddp", tmp_path / "dumps"
    dumps.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
        str(WORLD), "-m", "tests.test_ddp", "pretrain", "--data", str(manifest), "--out", str(ddp),
        "--method", "xdc", "--preset", "tiny", "--no-progress", "--device", "cpu",
        *[f"{k}={v}" for k, v in (TINY_OVERRIDES | EXTRA).items()],
    ]  # fmt: skip
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
        "XDC_TEST_STOP_AT": "1", "XDC_TEST_DUMPS": str(dumps),
    }  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # The first clustering: the same pseudo-labels as one process.
    a, b = load_checkpoint(single)["loop"], load_checkpoint(ddp)["loop"]
    assert (b["iteration"], b["phase"]) == (a["iteration"], a["phase"]) == (1, "cluster")
    for name in ("video", "audio"):
        assert torch.equal(a["labels"][name], b["labels"][name]), f"{name} clusters differ"
        assert torch.allclose(a["centroids"][name], b["centroids"][name], atol=1e-5)
    assert torch.equal(a["val_rows"], b["val_rows"]) and len(b["val_rows"]) == 2
    ranks = [
        {r["clustering"]: r["effective_rank"] for r in read_metrics(run, "cluster")}
        for run in (single, ddp)
    ]
    assert ranks[1] == pytest.approx(ranks[0], rel=1e-6)
    # Every process trained as many steps and ended the iteration with the same weights.
    dumped = [torch.load(dumps / f"rank{r}.pt") for r in range(WORLD)]
    assert [d["step"] for d in dumped] == [3] * WORLD == [b["step"]] * WORLD
    for r in range(1, WORLD):
        for name, value in dumped[0]["weights"].items():
            assert torch.equal(dumped[r]["weights"][name], value), name
    assert read_metrics(ddp, "epoch")[-1]["clips"] == 15
    assert done.stderr.count("xdc: warning: ") == len(read_metrics(ddp, "warning"))

    # One process resumes the three-process run and finishes it, saying so in the log.
    state = pretrain(config, manifest, ddp, progress=False)
    assert state.finished and state.iteration == 2
    notes = read_metrics(ddp, "note")
    assert len(notes) == 1 and "trained by 3 processes and resumes with 1" in notes[0]["message"]
    info = json.loads((ddp / "run.json").read_text())
    assert info["world_size"] == 1 and info["history"][-1]["world_size"] == WORLD
    assert read_metrics(ddp, "finished")[0]["steps_per_process"] == [state.step]


if __name__ == "__main__":  # `xdc pretrain` stopped at iteration XDC_TEST_STOP_AT (see above)
    from xdc.cli import main

    training.relabel = _stopping_relabel(
        int(os.environ["XDC_TEST_STOP_AT"]), Path(os.environ["XDC_TEST_DUMPS"])
    )
    try:
        sys.exit(main(sys.argv[1:]))
    except StopRun:
        xdist.cleanup()
        sys.exit(0)
