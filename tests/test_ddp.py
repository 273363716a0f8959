"""A real two-process run under torchrun (gloo on CPU): it finishes, its processes agree, and its
first clustering — features extracted on two shards, k-means across both — equals the one of a
single-process run on the same data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_OVERRIDES, tiny_config
from xdc.checkpoint import load_checkpoint
from xdc.runlog import read_metrics
from xdc.training import pretrain

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("views", [1, 2])
def test_two_process_run_equals_single_process_clustering(
    views: int, demo_manifest: Path, tmp_path: Path
) -> None:
    """Also with cluster.views=2: each video's augmented views are averaged on one process."""
    extra = {"cluster.views": views} | ({"data.augment": "strong_hue"} if views > 1 else {})
    single = tmp_path / "single"
    config = tiny_config("xdc", **{k.replace(".", "__"): v for k, v in extra.items()})
    pretrain(config, demo_manifest, single, progress=False)

    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "xdc.cli", "pretrain", "--data", str(demo_manifest), "--out", str(ddp),
        "--method", "xdc", "--preset", "tiny", "--no-progress", "--device", "cpu",
        *[f"{k}={v}" for k, v in (TINY_OVERRIDES | extra).items()],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    a, b = load_checkpoint(single)["loop"], load_checkpoint(ddp)["loop"]
    assert b["finished"]
    for name in ("video", "audio"):
        assert torch.equal(a["labels"][name], b["labels"][name]), f"{name} clusters differ"
        assert torch.allclose(a["centroids"][name], b["centroids"][name], atol=1e-5)
    # Each process trained on its half of the clips; the log counts the clips of both.
    assert read_metrics(ddp, "epoch")[-1]["clips_per_s"] > 0
    assert len(read_metrics(ddp, "finished")) == 1
    # Diagnostics use global quantities (the spectrum of all features), and only rank 0 reports.
    ranks = [
        {r["clustering"]: r["effective_rank"] for r in read_metrics(run, "cluster")}
        for run in (single, ddp)
    ]
    assert ranks[1] == pytest.approx(ranks[0], rel=1e-6)
    assert done.stderr.count("xdc: warning: ") == len(read_metrics(ddp, "warning"))
