"""Encoders and heads: the shared contract, gradients, documented sizes, pooling options, factories."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from xdc.encoders import use_fast_layout
from xdc.errors import CheckpointError, ConfigError
from xdc.models import (
    AudioResNet18,
    ClassifierHead,
    FrameCNN,
    Mixed2D3D,
    R2Plus1D18,
    build_audio_encoder,
    build_video_encoder,
    load_encoder_state,
)
from xdc.models.video import add_frame_differences, normalize_video, use_channels_last


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def conv3d(model: nn.Module, key: str) -> nn.Conv3d:
    module = model.get_submodule(key)
    assert isinstance(module, nn.Conv3d)
    return module


# (name, encoder factory, input shape): narrow widths and tiny inputs keep these fast on CPU.
ENCODER_CASES = [
    ("r2plus1d_xdc_w8", lambda: R2Plus1D18(width=8), (2, 3, 4, 32, 32)),
    ("r2plus1d_tv_w8", lambda: R2Plus1D18(mid_rule="torchvision", width=8), (2, 3, 4, 32, 32)),
    ("frame2d_mean", lambda: FrameCNN(), (2, 3, 3, 32, 32)),
    ("frame2d_max", lambda: FrameCNN(width=8, temporal_pool="max"), (2, 3, 3, 32, 32)),
    ("mixed2d3d", lambda: Mixed2D3D(width=4), (2, 3, 4, 32, 32)),
    ("mixed2d3d_diff", lambda: Mixed2D3D(width=4, video_input="rgb_diff"), (2, 3, 4, 32, 32)),
    ("frame2d_diff", lambda: FrameCNN(width=4, video_input="rgb_diff"), (2, 3, 3, 32, 32)),
    ("r2plus1d_diff", lambda: R2Plus1D18(width=8, video_input="rgb_diff"), (2, 3, 4, 32, 32)),
    ("audio_avg", lambda: AudioResNet18(width=8), (2, 1, 40, 100)),
    ("audio_max", lambda: AudioResNet18(width=8, pool="max"), (2, 1, 40, 100)),
    ("audio_avgmax", lambda: AudioResNet18(width=8, pool="avgmax"), (2, 1, 40, 100)),
    ("audio_no_norm", lambda: AudioResNet18(width=8, input_norm=False), (2, 1, 40, 100)),
]


@pytest.mark.parametrize(
    ("build", "shape"), [case[1:] for case in ENCODER_CASES], ids=[c[0] for c in ENCODER_CASES]
)
def test_every_parameter_gets_a_gradient_and_output_is_batch_by_num_features(build, shape) -> None:
    model = build()
    model.train()
    features = model(torch.randn(*shape))
    assert features.shape == (shape[0], model.num_features)
    # A random projection, so that no parameter's gradient cancels by symmetry of a plain sum.
    (features * torch.randn_like(features)).sum().backward()
    without_gradient = [
        name
        for name, parameter in model.named_parameters()
        if parameter.grad is None or not torch.any(parameter.grad != 0)
    ]
    assert without_gradient == []


def test_forward_is_forward_features() -> None:
    for model in (R2Plus1D18(width=4), FrameCNN(width=4), AudioResNet18(width=4)):
        assert type(model).forward is type(model).forward_features


def test_num_features_scale_with_width() -> None:
    assert R2Plus1D18().num_features == 512
    assert R2Plus1D18(width=8).num_features == 64
    assert FrameCNN().num_features == 128
    assert AudioResNet18().num_features == 512
    assert AudioResNet18(width=16).num_features == 128


def test_r2plus1d_parameter_counts_match_both_conventions() -> None:
    fc_400 = 512 * 400 + 400
    xdc = R2Plus1D18(mid_rule="xdc")
    torchvision_rule = R2Plus1D18(mid_rule="torchvision")
    assert count_parameters(xdc) == 33_165_639
    assert count_parameters(xdc) + fc_400 == 33_370_839
    assert count_parameters(torchvision_rule) + fc_400 == 31_505_325


def test_mid_channels_differ_only_in_conv2_of_first_block_of_stages_2_to_4() -> None:
    xdc = R2Plus1D18(mid_rule="xdc")
    torchvision_rule = R2Plus1D18(mid_rule="torchvision")

    def mids(model: R2Plus1D18, key: str) -> int:
        return conv3d(model, key).out_channels

    first_conv2 = [f"layer{stage}.0.conv2.0.0" for stage in (2, 3, 4)]
    assert [mids(xdc, key) for key in first_conv2] == [288, 576, 1152]
    assert [mids(torchvision_rule, key) for key in first_conv2] == [230, 460, 921]
    others = [
        f"layer{stage}.{block}.{conv}.0.0"
        for stage in (1, 2, 3, 4)
        for block in (0, 1)
        for conv in ("conv1", "conv2")
        if f"layer{stage}.{block}.{conv}.0.0" not in first_conv2
    ]
    assert [mids(xdc, key) for key in others] == [mids(torchvision_rule, key) for key in others]


def test_r2plus1d_initialisation_is_kaiming_fan_out_and_unit_batchnorm() -> None:
    model = R2Plus1D18(width=16)
    conv = conv3d(model, "layer4.0.conv1.0.0")
    fan_out = conv.out_channels * math.prod(conv.kernel_size)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
            assert module.eps == 1e-3 and module.momentum == 0.1
        if isinstance(module, nn.Conv3d):
            assert module.bias is None


def test_r2plus1d_stem_halves_space_and_stages_2_to_4_halve_time_and_space() -> None:
    model = R2Plus1D18(width=4).eval()
    x = torch.randn(1, 3, 16, 64, 64)
    for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
        x = model.get_submodule(name)(x)
    stage4 = x
    # stem halves space; stages 2-4 halve time and space.
    assert stage4.shape == (1, 32, 2, 4, 4)


def test_frame_cnn_size_is_near_242k_parameters() -> None:
    assert abs(count_parameters(FrameCNN()) - 242_000) < 0.05 * 242_000


@pytest.mark.parametrize("shape", [(1, 3, 1, 16, 16), (2, 3, 5, 20, 24), (1, 3, 2, 112, 112)])
def test_frame_cnn_takes_any_clip_length_and_small_frames(shape) -> None:
    model = FrameCNN(width=8).eval()
    assert model(torch.randn(*shape)).shape == (shape[0], 32)


@pytest.mark.parametrize("temporal_pool", ["mean", "max"])
def test_frame_cnn_pools_per_frame_features_over_time(temporal_pool) -> None:
    model = FrameCNN(width=8, temporal_pool=temporal_pool).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        per_frame = torch.stack([model(clip[:, :, t : t + 1]) for t in range(4)], dim=1)
        pooled = model(clip)
    expected = per_frame.mean(dim=1) if temporal_pool == "mean" else per_frame.amax(dim=1)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


def test_audio_avgmax_is_the_sum_of_avg_and_max_with_the_same_weights() -> None:
    models = {pool: AudioResNet18(width=8, pool=pool).eval() for pool in ("avg", "max", "avgmax")}
    models["max"].load_state_dict(models["avg"].state_dict())
    models["avgmax"].load_state_dict(models["avg"].state_dict())
    spectrogram = torch.randn(3, 1, 40, 100)
    with torch.no_grad():
        out = {pool: model(spectrogram) for pool, model in models.items()}
    assert not torch.allclose(out["avg"], out["max"])
    torch.testing.assert_close(out["avgmax"], out["avg"] + out["max"])


def test_audio_max_pool_keeps_a_short_event_that_average_pool_dilutes() -> None:
    model = AudioResNet18(width=8, pool="max", input_norm=False).eval()
    average = AudioResNet18(width=8, pool="avg", input_norm=False).eval()
    average.load_state_dict(model.state_dict())
    silence = torch.zeros(1, 1, 40, 400)
    event = silence.clone()
    event[..., 200:220] = 3.0  # a 0.2 s burst in a 4 s window
    with torch.no_grad():
        max_change = (model(event) - model(silence)).abs().max()
        avg_change = (average(event) - average(silence)).abs().max()
    assert max_change > 2 * avg_change


def test_audio_input_norm_removes_per_band_offsets_in_training() -> None:
    model = AudioResNet18(width=8, n_mels=16).train()
    spectrogram = torch.randn(4, 1, 16, 48)
    band_offset = torch.linspace(-5.0, 5.0, 16).view(1, 1, 16, 1)
    torch.testing.assert_close(
        model(spectrogram + band_offset), model(spectrogram), rtol=1e-4, atol=1e-4
    )
    without_norm = AudioResNet18(width=8, n_mels=16, input_norm=False).train()
    assert not torch.allclose(without_norm(spectrogram + band_offset), without_norm(spectrogram))


def test_audio_takes_inputs_as_small_as_16_bands_by_32_frames() -> None:
    model = AudioResNet18(width=8, n_mels=16)
    assert model.train()(torch.randn(2, 1, 16, 32)).shape == (2, 64)
    assert model.eval()(torch.randn(1, 1, 16, 32)).shape == (1, 64)


def test_audio_rejects_a_spectrogram_with_the_wrong_number_of_bands() -> None:
    with pytest.raises(ValueError, match="40"):
        AudioResNet18(width=8)(torch.randn(2, 1, 64, 100))


@pytest.mark.parametrize(
    ("build", "shape"), [case[1:] for case in ENCODER_CASES], ids=[c[0] for c in ENCODER_CASES]
)
def test_eval_mode_is_deterministic(build, shape) -> None:
    model = build().eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_video_factory_builds_each_name_with_its_options() -> None:
    model = build_video_encoder("r2plus1d_18", mid_rule="torchvision", width=8, bn_eps=1e-5)
    assert isinstance(model, R2Plus1D18) and model.mid_rule == "torchvision"
    assert model.num_features == 64 and model.stem[1].eps == 1e-5
    frames = build_video_encoder("frame2d", width=8, temporal_pool="max")
    assert isinstance(frames, FrameCNN) and frames.temporal_pool == "max"


def test_audio_factory_builds_resnet18() -> None:
    model = build_audio_encoder("resnet18", width=8, n_mels=64, pool="avgmax")
    assert isinstance(model, AudioResNet18) and model.num_features == 64 and model.pool == "avgmax"


def test_factories_reject_unknown_names_and_list_valid_ones() -> None:
    with pytest.raises(ConfigError, match="r2plus1d_18") as video_error:
        build_video_encoder("r3d_18")
    assert "frame2d" in str(video_error.value)
    with pytest.raises(ConfigError, match="resnet18"):
        build_audio_encoder("vggish")
    with pytest.raises(ConfigError, match="depth"):
        build_video_encoder("r2plus1d_18", depth=34)


def test_invalid_options_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="mid_rule"):
        R2Plus1D18(mid_rule="caffe2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pool"):
        AudioResNet18(pool="mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="temporal_pool"):
        FrameCNN(temporal_pool="attention")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="width"):
        R2Plus1D18(width=0)


def test_classifier_head_init_and_reset_follow_deepcluster() -> None:
    head = ClassifierHead(512, 1000)
    assert head(torch.randn(3, 512)).shape == (3, 1000)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(head.bias == 0)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.fill_(2.0)
    head.reset_parameters()
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert head.weight.mean().abs().item() < 0.001
    assert torch.all(head.bias == 0)
    assert set(head.state_dict()) == {"weight", "bias"}


def _square_clip(positions: list[int], size: int = 32) -> torch.Tensor:
    """(1, 3, T, size, size) uint8: a grey background with a white 6-px square at x = position."""
    clip = torch.full((1, 3, len(positions), size, size), 90, dtype=torch.uint8)
    for t, x in enumerate(positions):
        clip[0, :, t, 12:18, x : x + 6] = 250
    return clip


def test_frame_differences_are_zero_where_nothing_moves() -> None:
    moving = normalize_video(_square_clip([4, 8, 12, 12]))
    out = add_frame_differences(moving)
    assert out.shape == (1, 6, 4, 32, 32)
    assert torch.equal(out[:, :3], moving)
    diff = out[:, 3:]
    assert torch.count_nonzero(diff[:, :, 0]) == 0, "the first frame has no predecessor"
    assert torch.count_nonzero(diff[:, :, 3]) == 0, "the square stood still between frames 2 and 3"
    changed = diff[0, 0, 1].abs() > 0
    # Moving 4 px right: the 4 columns it left and the 4 it entered change, rows 12-17 only.
    assert changed.sum() == 2 * 4 * 6 and changed[12:18, 4:8].all() and changed[12:18, 10:14].all()


@pytest.mark.parametrize("name", ["mixed2d3d", "frame2d", "r2plus1d_18"])
def test_rgb_diff_encoder_adds_only_motion_to_the_rgb_encoder(name: str) -> None:
    """With the difference channels' weights at zero, rgb_diff computes exactly what rgb does;
    with them non-zero, a still clip still gives the rgb features and only a moving one differs."""
    torch.manual_seed(0)
    width = 8 if name == "r2plus1d_18" else 4
    rgb = build_video_encoder(name, width=width).eval()
    both = build_video_encoder(name, width=width, video_input="rgb_diff").eval()
    first = next(key for key, value in both.state_dict().items() if value.dim() >= 4)
    state = rgb.state_dict()
    state[first] = torch.cat([state[first], torch.zeros_like(state[first])], dim=1)
    both.load_state_dict(state)
    still, moving = _square_clip([10] * 4), _square_clip([4, 8, 12, 16])
    with torch.no_grad():
        assert torch.allclose(both(moving), rgb(moving), atol=1e-6)
        both.state_dict()[first][:, 3:].normal_()
        assert torch.allclose(both(still), rgb(still), atol=1e-6)
        assert not torch.allclose(both(moving), rgb(moving), atol=1e-3)


def test_rgb_weights_into_an_rgb_diff_encoder_name_the_video_input() -> None:
    rgb_state = Mixed2D3D(width=4).state_dict()
    with pytest.raises(CheckpointError, match="video_input=rgb;"):
        load_encoder_state(Mixed2D3D(width=4, video_input="rgb_diff"), rgb_state, source="w.pt")
    with pytest.raises(ConfigError, match="model.video_input"):
        Mixed2D3D(video_input="flow")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mixed2d3d", "frame2d"])
def test_deep_frame_bottom_keeps_the_contract_and_reads_full_resolution(name: str) -> None:
    """``bottom="deep"``: same features and map size as ``fast``, three more convs, the first at
    full resolution (stride 1) and no max-pool; an unknown bottom names the config key."""
    from xdc.models import build_video_encoder

    torch.manual_seed(0)
    fast = build_video_encoder(name, width=8, video_input="rgb_diff")
    deep = build_video_encoder(name, width=8, video_input="rgb_diff", bottom="deep")
    clip = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    assert deep(clip).shape == fast(clip).shape == (2, 32)
    convs = [m for m in deep.modules() if isinstance(m, nn.Conv2d)]
    fast_convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(fast_convs) + 3 and convs[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in deep.modules())
    with pytest.raises(ConfigError, match="model.video_bottom"):
        build_video_encoder(name, width=8, bottom="wide")


def test_channels_last_r2plus1d_computes_the_same_features_in_the_3d_layout() -> None:
    """``use_channels_last`` (on CUDA in training) changes the layout, not the numbers: the
    same features and the same state dict; other encoders are left as they are."""
    plain = R2Plus1D18(width=4).eval()
    fast = R2Plus1D18(width=4).eval()
    fast.load_state_dict(plain.state_dict())
    assert use_channels_last(fast)
    conv = conv3d(fast, "layer2.0.conv1.0.0")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not conv.weight.is_contiguous()
    clip = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(fast(clip), plain(clip), atol=1e-5, rtol=1e-4)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert "input_stats" not in plain.state_dict(), "constants stay out of checkpoints"
    assert not use_channels_last(Mixed2D3D(width=4)) and not use_channels_last(FrameCNN(width=4))


def test_encoders_keep_the_normalisation_constants_on_their_device() -> None:
    model = Mixed2D3D(width=4).to(torch.float64)  # .to moves the buffer as it would to a GPU
    stats = model.get_buffer("input_stats")
    assert stats.dtype == torch.float64
    clip = torch.randint(0, 256, (1, 3, 2, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(normalize_video(clip, stats), normalize_video(clip).double())


@pytest.mark.parametrize(
    ("make", "shape", "dtype"),
    [
        (lambda: Mixed2D3D(width=4, video_input="rgb_diff"), (2, 3, 4, 32, 32), torch.uint8),
        (lambda: FrameCNN(width=4), (2, 3, 4, 32, 32), torch.uint8),
        (lambda: AudioResNet18(width=16, n_mels=40), (2, 1, 40, 100), torch.float32),
    ],
)
def test_fast_layout_puts_2d_convs_in_channels_last_with_the_same_numbers(
    make: Callable[[], nn.Module], shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    """``use_fast_layout`` (what pretraining does, on CPU too): every 2D conv weight in
    channels_last, 3D convs as they were; the same features and gradients, the same state dict."""
    torch.manual_seed(0)
    plain, fast = make(), make()
    fast.load_state_dict(plain.state_dict())
    assert use_fast_layout({"video": fast}, torch.device("cpu"))
    convs2d = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs2d
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs2d)
    assert not all(c.weight.is_contiguous() for c in convs2d)  # 1-channel or 1x1: both layouts
    assert all(m.weight.is_contiguous() for m in fast.modules() if isinstance(m, nn.Conv3d))
    x = (torch.randint(0, 256, shape) if dtype == torch.uint8 else torch.randn(shape)).to(dtype)
    out_plain, out_fast = plain(x), fast(x)
    torch.testing.assert_close(out_fast, out_plain, atol=1e-4, rtol=1e-4)
    out_plain.square().sum().backward()
    out_fast.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert q.grad is not None and p.grad is not None
        torch.testing.assert_close(q.grad, p.grad, atol=1e-3, rtol=1e-3, msg=name)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    make().load_state_dict(fast.state_dict())  # a checkpoint of it loads into a plain encoder


@pytest.mark.parametrize(
    "make",
    [lambda: AudioResNet18(width=4, n_mels=40), lambda: AudioResNet18(width=8, n_mels=40)],
)
def test_fast_layout_keeps_narrow_encoders_as_they_are_on_cpu(
    make: Callable[[], nn.Module],
) -> None:
    """Below width 16 a strided 1x1 conv has fewer input channels than oneDNN's channel block,
    where its channels-last backward pass writes past its buffer (oneDNN issue #6035): on CPU
    such an encoder keeps its layout; on CUDA (cuDNN) it is changed as usual."""
    model = make()
    assert any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
        for m in model.modules()
    ), "the encoder has the convolution the rule is about"
    assert use_fast_layout({"video": model}, torch.device("cpu")) == []
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.device("meta"):
        meta = make()
    assert use_fast_layout({"video": meta}, torch.device("cuda"))


def test_fast_layout_leaves_r2plus1d_as_it_is_on_cpu() -> None:
    """R(2+1)D-18's channels_last_3d is for cuDNN; on CPU its 3D convs are not faster, so the
    encoder is left alone (on CUDA ``use_channels_last`` changes it, tested above)."""
    model = R2Plus1D18(width=4)
    assert use_fast_layout({"video": model}, torch.device("cpu")) == []
    assert conv3d(model, "layer2.0.conv1.0.0").weight.is_contiguous()
    with torch.device("meta"):
        meta = R2Plus1D18(width=4)
    assert use_fast_layout({"video": meta}, torch.device("cuda")) == [
        "video: 3D convolutions in channels_last_3d"
    ]
