"""BatchNorm recalibration: statistics of the given clips, weighted by clip, weights untouched;
no clip at all is an error that keeps the old statistics."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny_config
from xdc.data.manifest import read_manifest
from xdc.errors import DataError
from xdc.features import calibration_keys, recalibrate_batchnorm, valid_inputs
from xdc.run import open_run
from xdc.training import build_model, run_extraction


def test_recalibrated_mean_is_the_mean_over_all_clips_with_unequal_batches() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[0].running_mean.fill_(7.0)
    weight = model[1].weight.clone()
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(n, 3, generator=g) * 2 + torch.tensor([1.0, -2.0, 5.0]) for n in (8, 8, 2)
    ]
    seen = recalibrate_batchnorm(model, iter(batches))
    assert seen == 18
    torch.testing.assert_close(model[0].running_mean, torch.cat(batches).mean(0))
    assert model[0].momentum == 0.1, "the layer's own momentum is restored"
    assert not model.training and torch.equal(model[1].weight, weight)


def test_no_input_is_an_error_and_keeps_the_statistics() -> None:
    """The statistics are reset only once a first clip arrives: no clip, nothing is lost."""
    model = nn.Sequential(nn.BatchNorm1d(3))
    model[0].running_mean.fill_(7.0)
    model[0].running_var.fill_(3.0)
    with pytest.raises(DataError, match="BatchNorm recalibration received no clip"):
        recalibrate_batchnorm(model, iter([]))
    with pytest.raises(DataError):
        recalibrate_batchnorm(model, iter([torch.zeros(0, 3)]))  # empty batches are no input
    assert torch.equal(model[0].running_mean, torch.full((3,), 7.0))
    assert torch.equal(model[0].running_var, torch.full((3,), 3.0))
    assert model[0].momentum == 0.1
    assert recalibrate_batchnorm(nn.Linear(3, 2), iter([])) == 0, "no BatchNorm: nothing to do"


def test_calibration_on_files_that_all_fail_is_an_error_not_zero_statistics(
    demo_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every file broken after indexing: the clips come back invalid (zeros). The pretraining
    extraction must not compute BatchNorm statistics from those zeros: it stops, naming why, and
    the files were reported."""
    shutil.copytree(demo_manifest.parent, tmp_path / "data")
    manifest_path = tmp_path / "data" / demo_manifest.name
    manifest = read_manifest(manifest_path)
    for i in range(len(manifest)):
        manifest.path(i).write_bytes(b"not a video any more")
    config = tiny_config("xdc")
    run = open_run(config, manifest_path, tmp_path / "run", "train", "cpu", progress=False)
    model = build_model(config, run.method, run.num_labels, run.device)
    before = {k: v.clone() for k, v in model.encoders["video"].state_dict().items()}
    with pytest.raises(DataError, match="BatchNorm recalibration received no clip"):
        run_extraction(model, ("video", "audio"), run, iteration=0)
    after = model.encoders["video"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "skipped unreadable video" in capsys.readouterr().err
    assert (tmp_path / "run" / "failures.txt").read_text().count("\n") >= 1
    # The same clips, valid ones only, through ``valid_inputs``: nothing comes out.
    keys = calibration_keys(run.train_set.rows, 8, np.random.default_rng(0))
    assert list(valid_inputs(run.loader(run.eval_set, keys, shard=False), "video")) == []
