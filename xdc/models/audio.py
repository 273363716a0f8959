"""Audio encoder: a 2D ResNet-18 on log-mel spectrograms (B, 1, n_mels, n_frames).

Follows the encoder contract: ``forward_features(x) -> (B, D)``, ``num_features == D``,
``forward is forward_features``; no classifier inside.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from xdc.errors import ConfigError
from xdc.models.registry import build_named
from xdc.models.video import init_conv_bn_weights

AudioPool = Literal["avg", "max", "avgmax"]
AUDIO_POOLS: tuple[str, ...] = ("avg", "max", "avgmax")


class BasicBlock2D(nn.Module):
    """Two 3x3 convs with BN and a residual; keys ``conv1, bn1, conv2, bn2, downsample.{0,1}``."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_planes, F, T) -> (B, planes, F/stride, T/stride)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class AudioResNet18(nn.Module):
    """ResNet-18 (BasicBlocks [2, 2, 2, 2]) over a log-mel spectrogram seen as a 1-channel image.

    Args:
        width: channels of stage 1; stages have width x (1, 2, 4, 8); 64 is the standard net.
        n_mels: number of mel bands of the input (the frequency axis).
        pool: how the final (freq, time) map becomes a vector: ``"avg"``, ``"max"`` or
            ``"avgmax"`` (their sum; same D). Max pooling over time keeps short sound events
            (a word, a bark) from being averaged away in a long window.
        input_norm: normalise each mel band with a learnable BatchNorm before the stem, so that
            bands of very different loudness enter on a common scale.

    ``forward_features``: (B, 1, n_mels, n_frames), as small as (B, 1, 16, 32) -> (B, 8 * width).
    """

    def __init__(
        self,
        width: int = 64,
        n_mels: int = 40,
        pool: AudioPool = "avg",
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"width must be >= 1, got {width}")
        if n_mels < 1:
            raise ConfigError(f"n_mels must be >= 1, got {n_mels}")
        if pool not in AUDIO_POOLS:
            raise ConfigError(f"pool must be one of {list(AUDIO_POOLS)}, got {pool!r}")
        self.n_mels = n_mels
        self.pool = pool
        self.input_norm: nn.BatchNorm2d | None = nn.BatchNorm2d(n_mels) if input_norm else None
        self.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = width
        for index, planes in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock2D(in_planes, planes, stride), BasicBlock2D(planes, planes, 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.num_features: int = 8 * width
        init_conv_bn_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 1, n_mels, n_frames) log-mel -> (B, num_features)."""
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != self.n_mels:
            raise ValueError(
                f"expected a log-mel of shape (B, 1, {self.n_mels}, n_frames), got {tuple(x.shape)}"
            )
        if self.input_norm is not None:
            # Mel bands become BatchNorm channels: (B, 1, M, T) -> (B, M, 1, T) and back.
            x = self.input_norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        if self.pool == "avg":
            return x.mean(dim=(2, 3))
        if self.pool == "max":
            return x.amax(dim=(2, 3))
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))

    forward = forward_features


AUDIO_ENCODERS: dict[str, type[AudioResNet18]] = {"resnet18": AudioResNet18}


def build_audio_encoder(name: str, **kwargs: object) -> AudioResNet18:
    """Build an audio encoder by name: ``"resnet18"``; keyword arguments go to the class.

    Raises ConfigError for an unknown name or keyword.
    """
    return build_named("audio", AUDIO_ENCODERS, name, **kwargs)


__all__ = ["AUDIO_POOLS", "AudioPool", "AudioResNet18", "BasicBlock2D", "build_audio_encoder"]
