"""train.deterministic on a GPU, checked on a CPU: the cuBLAS workspace setting CUDA needs, scoped
to the run, and encoders free of operations whose CUDA backward has no deterministic kernel."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from xdc.errors import ConfigError
from xdc.models.audio import build_audio_encoder
from xdc.models.video import R2Plus1D18, build_video_encoder
from xdc.run import deterministic_algorithms

CUDA = torch.device("cuda", 0)
VAR = "CUBLAS_WORKSPACE_CONFIG"
# torch.use_deterministic_algorithms raises in the CUDA backward of these (its documentation).
NO_DETERMINISTIC_CUDA_BACKWARD = (
    nn.AvgPool3d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d,
    nn.MaxPool3d,
    nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.Upsample,
)


def test_cuda_run_sets_the_cublas_workspace_for_the_block_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(VAR, raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True, CUDA):
        assert os.environ[VAR] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
    assert VAR not in os.environ and torch.are_deterministic_algorithms_enabled() == before
    with deterministic_algorithms(True, torch.device("cpu")):
        assert VAR not in os.environ, "a CPU run does not touch the environment"
    with deterministic_algorithms(False, CUDA):
        assert VAR not in os.environ and torch.are_deterministic_algorithms_enabled() == before


def test_a_users_cublas_setting_is_kept_or_refused_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(VAR, ":16:8")
    with deterministic_algorithms(True, CUDA):
        assert os.environ[VAR] == ":16:8"
    assert os.environ[VAR] == ":16:8"
    monkeypatch.setenv(VAR, ":0:0")
    before = torch.are_deterministic_algorithms_enabled()
    with (
        pytest.raises(ConfigError, match=r"CUBLAS_WORKSPACE_CONFIG=:4096:8.*train.deterministic"),
        deterministic_algorithms(True, CUDA),
    ):
        pass
    assert torch.are_deterministic_algorithms_enabled() == before


def test_r2plus1d_global_pool_is_the_mean_adaptive_avg_pool_computed() -> None:
    """Same features and same gradients as AdaptiveAvgPool3d(1) on the last stage's map."""
    model = R2Plus1D18(width=4).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    features = model(x)
    maps = model.stem(x)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        maps = getattr(model, name)(maps)
    torch.testing.assert_close(features, nn.AdaptiveAvgPool3d(1)(maps).flatten(1))
    leaf = maps.detach().requires_grad_()
    (grad_mean,) = torch.autograd.grad(leaf.mean(dim=(2, 3, 4)).sum(), leaf)
    leaf2 = maps.detach().requires_grad_()
    (grad_pool,) = torch.autograd.grad(nn.AdaptiveAvgPool3d(1)(leaf2).sum(), leaf2)
    torch.testing.assert_close(grad_mean, grad_pool)


@pytest.mark.parametrize("name", ["r2plus1d_18", "mixed2d3d", "frame2d", "audio"])
def test_encoders_have_no_op_without_a_deterministic_cuda_backward(name: str) -> None:
    if name == "audio":
        encoder: nn.Module = build_audio_encoder("resnet18", width=4, pool="avgmax")
    else:
        encoder = build_video_encoder(name, width=4)
    found = [type(m).__name__ for m in encoder.modules()]
    assert not [m for m in encoder.modules() if isinstance(m, NO_DETERMINISTIC_CUDA_BACKWARD)], (
        found
    )
