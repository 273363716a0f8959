"""BatchNorm recalibration: statistics of the given clips, weighted by clip, weights untouched."""

from __future__ import annotations

import torch
from torch import nn

from xdc.features import recalibrate_batchnorm


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


def test_no_inputs_leaves_default_statistics() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3))
    assert recalibrate_batchnorm(model, iter([])) == 0
    assert torch.equal(model[0].running_mean, torch.zeros(3))
