"""Encoders (video, audio), classifier heads, and loading of released weights.

Every encoder has ``forward_features(x) -> (B, D)`` and ``num_features == D``; heads are separate.
"""

from __future__ import annotations

from xdc.models.audio import AudioResNet18, build_audio_encoder
from xdc.models.heads import ClassifierHead
from xdc.models.video import (
    FrameCNN,
    Mixed2D3D,
    R2Plus1D18,
    build_video_encoder,
    mid_channels,
)
from xdc.models.weights import (
    LoadReport,
    detect_mid_rule,
    load_encoder_state,
    load_pretrained_video,
    load_weights_file,
)

__all__ = [
    "AudioResNet18",
    "ClassifierHead",
    "FrameCNN",
    "Mixed2D3D",
    "LoadReport",
    "R2Plus1D18",
    "build_audio_encoder",
    "build_video_encoder",
    "detect_mid_rule",
    "load_encoder_state",
    "load_pretrained_video",
    "load_weights_file",
    "mid_channels",
]
