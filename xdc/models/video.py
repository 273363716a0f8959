"""Video encoders: R(2+1)D-18 (both mid-channel conventions, any width), a per-frame 2D CNN and a
small 2D-then-3D net for CPU presets.

All follow the encoder contract: ``forward_features(x) -> (B, D)``, ``num_features == D``,
``forward is forward_features``; no classifier inside (heads live in :mod:`xdc.models.heads`).
Input: a clip of shape (B, 3, T, H, W), uint8 RGB or normalised float; the encoders own their input
normalisation (:func:`normalize_video`, with the Kinetics statistics ``VIDEO_MEAN``/``VIDEO_STD``).

Every encoder takes ``video_input``: ``"rgb"`` (the frames) or ``"rgb_diff"`` (the frames plus
their temporal differences, 6 channels into the first conv; see :func:`add_frame_differences`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from xdc.errors import ConfigError
from xdc.models.registry import build_named

MidRule = Literal["xdc", "torchvision"]
MID_RULES: tuple[str, ...] = ("xdc", "torchvision")
VideoInput = Literal["rgb", "rgb_diff"]
VIDEO_INPUTS: tuple[str, ...] = ("rgb", "rgb_diff")
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)  # [V] Kinetics statistics used by the XDC release
VIDEO_STD = (0.22803, 0.22145, 0.216989)


def normalize_video(video: Tensor, stats: Tensor | None = None) -> Tensor:
    """(B, 3, T, H, W) or (3, T, H, W) uint8 RGB → float32 normalised with the Kinetics mean and
    std [V]. Float input is returned unchanged: it is taken to be normalised already.

    Clips travel as uint8 from the DataLoader workers (4× less to copy between processes and to the
    GPU) and are normalised here, by the encoders, on their device. ``stats``: the (2, 3) tensor
    of :func:`video_stats` on the clip's device (the encoders keep it as a buffer, so that no
    constant is copied to the device at every forward); made here when not given.
    """
    if video.dtype != torch.uint8:
        return video
    if stats is None:
        stats = video_stats(video.device)
    mean, std = stats[0].view(3, 1, 1, 1), stats[1].view(3, 1, 1, 1)
    return (video.float() / 255.0 - mean) / std


def video_stats(device: torch.device | str | None = None) -> Tensor:
    """(2, 3) float32: ``VIDEO_MEAN`` and ``VIDEO_STD``, on ``device``."""
    return torch.tensor([VIDEO_MEAN, VIDEO_STD], dtype=torch.float32, device=device)


def input_channels(video_input: str) -> int:
    """Channels the first conv sees: 3 for ``rgb``, 6 for ``rgb_diff``."""
    if video_input not in VIDEO_INPUTS:
        raise ConfigError(
            f"video_input must be one of {list(VIDEO_INPUTS)}, got {video_input!r} (model.video_input)"
        )
    return 6 if video_input == "rgb_diff" else 3


def add_frame_differences(x: Tensor) -> Tensor:
    """(B, 3, T, H, W) normalised clip → (B, 6, T, H, W): the frames, then each frame minus the one
    before it (zero for the first frame).

    The RGB-difference input of TSN (Wang et al., ECCV 2016) given next to the frames: what moved
    is explicit at the first layer, and what stays still (most of the background) cancels out, so
    a small network does not have to learn motion from appearance alone.
    """
    diff = torch.zeros_like(x)
    diff[:, :, 1:] = x[:, :, 1:] - x[:, :, :-1]
    return torch.cat([x, diff], dim=1)


def prepare_input(x: Tensor, video_input: str, stats: Tensor | None = None) -> Tensor:
    """Normalise a (B, 3, T, H, W) clip (``normalize_video`` with ``stats``) and add its frame
    differences when asked (→ 3 or 6 channels)."""
    x = normalize_video(x, stats)
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"expected a clip of shape (B, 3, T, H, W), got {tuple(x.shape)}")
    return add_frame_differences(x) if video_input == "rgb_diff" else x


def mid_channels(in_planes: int, out_planes: int) -> int:
    """Channels between the spatial and temporal conv of a (2+1)D conv.

    Chosen so that the factorised conv has about as many parameters as a full 3x3x3 conv:
    ``(in * out * 27) // (in * 9 + 3 * out)``.
    """
    return (in_planes * out_planes * 27) // (in_planes * 9 + 3 * out_planes)


class Conv2Plus1D(nn.Sequential):
    """(1,3,3) spatial conv -> BN -> ReLU -> (3,1,1) temporal conv; no biases.

    Submodule indices 0, 1, 3 match VideoResNet's state-dict keys (2 is the ReLU).
    Shapes: (B, in_planes, T, H, W) -> (B, out_planes, T/stride, H/stride, W/stride).
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        mid_planes: int,
        stride: int = 1,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__(
            nn.Conv3d(
                in_planes,
                mid_planes,
                kernel_size=(1, 3, 3),
                stride=(1, stride, stride),
                padding=(0, 1, 1),
                bias=False,
            ),
            nn.BatchNorm3d(mid_planes, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                mid_planes,
                out_planes,
                kernel_size=(3, 1, 1),
                stride=(stride, 1, 1),
                padding=(1, 0, 0),
                bias=False,
            ),
        )


class BasicBlock2Plus1D(nn.Module):
    """Residual block of two (2+1)D convs; keys ``conv1.{0,1}``, ``conv2.{0,1}``, ``downsample.{0,1}``.

    ``mid_rule="xdc"`` recomputes the mid channels for conv2 from (planes, planes), as the released
    XDC weights and VMZ do; ``"torchvision"`` reuses conv1's (in_planes, planes) value, as
    torchvision's ``r2plus1d_18`` does. The two differ only when in_planes != planes.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        mid_rule: MidRule,
        bn_eps: float,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        mid1 = mid_channels(in_planes, planes)
        mid2 = mid_channels(planes, planes) if mid_rule == "xdc" else mid1
        self.conv1 = nn.Sequential(
            Conv2Plus1D(in_planes, planes, mid1, stride, bn_eps, bn_momentum),
            nn.BatchNorm3d(planes, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            Conv2Plus1D(planes, planes, mid2, 1, bn_eps, bn_momentum),
            nn.BatchNorm3d(planes, eps=bn_eps, momentum=bn_momentum),
        )
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes, eps=bn_eps, momentum=bn_momentum),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_planes, T, H, W) -> (B, planes, T/stride, H/stride, W/stride)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


class R2Plus1D18(nn.Module):
    """R(2+1)D-18 video encoder with VideoResNet's state-dict layout (without ``fc``).

    Args:
        mid_rule: ``"xdc"`` (released XDC weights, VMZ: 33,165,639 parameters at width 64) or
            ``"torchvision"`` (torchvision's ``r2plus1d_18``: 31,300,125).
        width: channels of stage 1; stages have width x (1, 2, 4, 8); 64 is the standard net.
            The stem's 45 mid channels scale as ``max(1, 45 * width // 64)``.
        bn_eps: BatchNorm epsilon (1e-3 in the XDC release, 1e-5 in torchvision).
        bn_momentum: PyTorch BatchNorm momentum (0.1 is Caffe2's 0.9).
        video_input: ``"rgb"`` (released weights) or ``"rgb_diff"`` (6-channel stem).

    ``forward_features``: (B, 3, T, H, W) -> (B, 8 * width), global average pool of stage 4.
    """

    input_stats: Tensor

    def __init__(
        self,
        mid_rule: MidRule = "xdc",
        width: int = 64,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        video_input: VideoInput = "rgb",
    ) -> None:
        super().__init__()
        if mid_rule not in MID_RULES:
            raise ConfigError(f"mid_rule must be one of {list(MID_RULES)}, got {mid_rule!r}")
        if width < 1:
            raise ConfigError(f"width must be >= 1, got {width}")
        self.mid_rule = mid_rule
        self.width = width
        self.video_input = video_input
        self.channels_last = False
        """Clips enter in the channels_last_3d memory format (:func:`use_channels_last`)."""
        self.register_buffer("input_stats", video_stats(), persistent=False)
        stem_mid = max(1, 45 * width // 64)
        self.stem = nn.Sequential(
            nn.Conv3d(
                input_channels(video_input),
                stem_mid,
                (1, 7, 7),
                stride=(1, 2, 2),
                padding=(0, 3, 3),
                bias=False,
            ),
            nn.BatchNorm3d(stem_mid, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, width, (3, 1, 1), stride=1, padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(inplace=True),
        )
        stage_planes = [width, 2 * width, 4 * width, 8 * width]
        in_planes = width
        for index, planes in enumerate(stage_planes):
            stride = 1 if index == 0 else 2
            blocks = [
                BasicBlock2Plus1D(in_planes, planes, stride, mid_rule, bn_eps, bn_momentum),
                BasicBlock2Plus1D(planes, planes, 1, mid_rule, bn_eps, bn_momentum),
            ]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.num_features: int = stage_planes[-1]
        init_conv_bn_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) clip, uint8 RGB or normalised float -> (B, num_features) pooled."""
        x = prepare_input(x, self.video_input, self.input_stats)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.stem(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        # Global average pooling as a mean: AdaptiveAvgPool3d's CUDA backward has no
        # deterministic kernel (train.deterministic=true would fail); the mean's has.
        return x.mean(dim=(2, 3, 4))

    forward = forward_features


class FrameCNN(nn.Module):
    """A small 2D CNN applied to every frame, pooled over space then time.

    Meant for small-data presets: with few clips a per-frame 2D net trained on a couple of random
    frames per clip generalises where a (2+1)D net memorises. Layout at width w (all 3x3 convs
    with BN and ReLU): conv 3->w stride 2, max-pool 3 stride 2, conv w->2w stride 2,
    conv 2w->4w stride 2, then a residual conv 4w->4w. About 241k parameters at w=32.

    Args:
        width: channels of the first conv; features are 4 * width.
        temporal_pool: how per-frame features are combined over time: ``"mean"`` or ``"max"``.
        video_input: ``"rgb"`` or ``"rgb_diff"`` (each frame also sees its change since the last).
        bottom: ``"fast"`` or ``"deep"`` per-frame layers (:func:`frame_bottom`).

    ``forward_features``: (B, 3, T, H, W), any T >= 1 and H, W >= 16 -> (B, 4 * width).
    """

    input_stats: Tensor

    def __init__(
        self,
        width: int = 32,
        temporal_pool: Literal["mean", "max"] = "mean",
        video_input: VideoInput = "rgb",
        bottom: str = "fast",
    ) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"width must be >= 1, got {width}")
        if temporal_pool not in ("mean", "max"):
            raise ConfigError(f"temporal_pool must be 'mean' or 'max', got {temporal_pool!r}")
        self.temporal_pool = temporal_pool
        self.video_input = video_input
        self.register_buffer("input_stats", video_stats(), persistent=False)
        self.features = frame_bottom(width, video_input, bottom)
        # One residual conv at the coarsest scale widens the receptive field at little cost.
        self.refine = nn.Sequential(
            nn.Conv2d(4 * width, 4 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
        )
        self.relu = nn.ReLU(inplace=True)
        self.num_features: int = 4 * width
        init_conv_bn_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) clip, uint8 RGB or normalised float -> (B, num_features)."""
        x = prepare_input(x, self.video_input, self.input_stats)
        per_frame, batch, frames = frames_as_images(x)
        maps = self.features(per_frame)
        maps = self.relu(maps + self.refine(maps))
        frame_features = maps.mean(dim=(2, 3)).view(batch, frames, -1)
        if self.temporal_pool == "max":
            return frame_features.amax(dim=1)
        return frame_features.mean(dim=1)

    forward = forward_features


class Mixed2D3D(nn.Module):
    """Per-frame 2D convolutions at the bottom, 3D convolutions on the coarse maps at the top.

    Meant for small clips on a CPU: the 2D bottom is as cheap as ``FrameCNN``, and the two 3D
    layers on top see how the coarse maps change over time, so it can tell motions apart (a
    per-frame net pooled over time cannot). On the demo data's classes, which need both shape and
    motion, it reached 96% test top-1 from true labels on 1,200 training clips at 8×32×32 in two
    CPU-minutes, where per-frame nets stayed below 40% (docs/presets.md).

    Layout at width w (3×3 2D convs with BN and ReLU): conv 3→w stride 2, max-pool 3 stride 2,
    conv w→2w stride 2, conv 2w→4w stride 2; then two 3×3×3 conv + BN + ReLU at 4w channels; mean
    over (T, H, W).

    ``forward_features``: (B, 3, T, H, W), any T >= 1 and H, W >= 16 -> (B, 4 * width).
    """

    input_stats: Tensor

    def __init__(
        self, width: int = 16, video_input: VideoInput = "rgb", bottom: str = "fast"
    ) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"width must be >= 1, got {width}")
        self.video_input = video_input
        self.register_buffer("input_stats", video_stats(), persistent=False)
        self.frames = frame_bottom(width, video_input, bottom)
        c = 4 * width
        self.temporal = nn.Sequential(
            nn.Conv3d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm3d(c),
            nn.ReLU(inplace=True),
            nn.Conv3d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm3d(c),
            nn.ReLU(inplace=True),
        )
        self.num_features: int = c
        init_conv_bn_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) clip, uint8 RGB or normalised float -> (B, num_features)."""
        x = prepare_input(x, self.video_input, self.input_stats)
        per_frame, batch, frames = frames_as_images(x)
        maps = self.frames(per_frame)
        maps = maps.view(batch, frames, *maps.shape[1:]).transpose(1, 2)
        return self.temporal(maps).mean(dim=(2, 3, 4))

    forward = forward_features


def frames_as_images(x: Tensor) -> tuple[Tensor, int, int]:
    """(B, C, T, H, W) prepared clip (:func:`prepare_input`) → ((B·T, C, H, W) frames, B, T)."""
    batch, channels, frames, height, width = x.shape
    return x.transpose(1, 2).reshape(batch * frames, channels, height, width), batch, frames


FRAME_BOTTOMS = ("fast", "deep")


def frame_bottom(width: int, video_input: str, bottom: str = "fast") -> nn.Sequential:
    """The per-frame 2D bottom of ``FrameCNN`` and ``Mixed2D3D``: (N, 3 or 6, H, W) →
    (N, 4·width, H/16, W/16).

    ``fast``: conv stride 2, max-pool 3 stride 2, two convs stride 2 (each layer at a coarser
    scale). ``deep``: conv, conv stride 2, conv, conv stride 2, conv stride 2, conv stride 2 — six
    convs, the first at full and the third at half resolution, no max-pool: what an object *is* (its outline, a
    written stroke) is read before the maps shrink. It costs 13-15× the multiply-adds of ``fast``
    (3.6× for a whole ``mixed2d3d``, whose 3D top dominates; 8-9× for ``frame2d``).
    """
    if bottom not in FRAME_BOTTOMS:
        raise ConfigError(
            f"model.video_bottom must be one of {list(FRAME_BOTTOMS)}, got {bottom!r}"
        )
    if bottom == "deep":
        return nn.Sequential(
            _conv_bn_relu(input_channels(video_input), width, stride=1),
            _conv_bn_relu(width, width, stride=2),
            _conv_bn_relu(width, 2 * width, stride=1),
            _conv_bn_relu(2 * width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 4 * width, stride=2),
            _conv_bn_relu(4 * width, 4 * width, stride=2),
        )
    return nn.Sequential(
        _conv_bn_relu(input_channels(video_input), width, stride=2),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        _conv_bn_relu(width, 2 * width, stride=2),
        _conv_bn_relu(2 * width, 4 * width, stride=2),
    )


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def init_conv_bn_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs; BatchNorm weight 1, bias 0 (the usual ResNet init)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def use_channels_last(encoder: nn.Module) -> bool:
    """Put an R(2+1)D-18's weights, and from now on its input clips, in the channels_last_3d
    memory format (the layout cuDNN's tensor-core 3D convolutions work in; on CUDA, with mixed
    precision). The same numbers in another layout: features, state dict and checkpoints do not
    change. Returns False, changing nothing, for the other encoders (their 2D convs have no 3D
    layout)."""
    if not isinstance(encoder, R2Plus1D18):
        return False
    encoder.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # not in torch's stubs
    encoder.channels_last = True
    return True


VIDEO_ENCODERS: dict[str, type[nn.Module]] = {
    "r2plus1d_18": R2Plus1D18,
    "frame2d": FrameCNN,
    "mixed2d3d": Mixed2D3D,
}


def build_video_encoder(name: str, **kwargs: object) -> R2Plus1D18 | FrameCNN | Mixed2D3D:
    """Build a video encoder by name: ``"r2plus1d_18"``, ``"frame2d"`` or ``"mixed2d3d"``.

    Keyword arguments go to the class (e.g. ``mid_rule``, ``width``, ``bn_eps``).
    Raises ConfigError for an unknown name or keyword.
    """
    return build_named("video", VIDEO_ENCODERS, name, **kwargs)  # type: ignore[return-value]


__all__ = [
    "MID_RULES",
    "VIDEO_INPUTS",
    "VIDEO_MEAN",
    "VIDEO_STD",
    "VideoInput",
    "add_frame_differences",
    "input_channels",
    "normalize_video",
    "prepare_input",
    "use_channels_last",
    "video_stats",
    "BasicBlock2Plus1D",
    "Conv2Plus1D",
    "FrameCNN",
    "MidRule",
    "Mixed2D3D",
    "R2Plus1D18",
    "build_video_encoder",
    "mid_channels",
    "init_conv_bn_weights",
]
