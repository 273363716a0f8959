"""Build the two encoders a config describes, and load them back from a run's checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xdc.checkpoint import load_checkpoint
from xdc.config import ModelConfig, PretrainConfig, config_from_dict
from xdc.errors import CheckpointError
from xdc.models import build_audio_encoder, build_video_encoder
from xdc.models.audio import AudioResNet18
from xdc.models.video import FrameCNN, Mixed2D3D, use_channels_last
from xdc.models.weights import load_encoder_state


def encoder_specs(model: ModelConfig, n_mels: int) -> dict[str, tuple[str, dict[str, object]]]:
    """``{"video": (name, kwargs), "audio": (name, kwargs)}``: the builder name and keyword
    arguments (``build_video_encoder`` / ``build_audio_encoder``) of each encoder the config says."""
    options: dict[str, object] = {"width": model.video_width, "video_input": model.video_input}
    if model.video == "r2plus1d_18":
        options |= {"mid_rule": model.video_mid_rule, "bn_eps": model.bn_eps}
    else:
        options["bottom"] = model.video_bottom
    if model.video == "frame2d":
        options["temporal_pool"] = model.video_temporal_pool
    audio: dict[str, object] = {
        "width": model.audio_width,
        "n_mels": n_mels,
        "pool": model.audio_pool,
    }
    return {"video": (model.video, options), "audio": (model.audio, audio)}


def build_encoders(model: ModelConfig, n_mels: int) -> dict[str, nn.Module]:
    """``{"video": …, "audio": …}`` as the config says, randomly initialised (seed beforehand)."""
    specs = encoder_specs(model, n_mels)
    video = build_video_encoder(specs["video"][0], **specs["video"][1])
    audio = build_audio_encoder(specs["audio"][0], **specs["audio"][1])
    return {"video": video, "audio": audio}


def use_fast_layout(encoders: dict[str, nn.Module], device: torch.device) -> list[str]:
    """Put the encoders' convolution weights, and so their activations, in the memory layout
    their convolutions run fastest in on ``device``: channels-last for every 2D convolution (the
    per-frame bottom of ``mixed2d3d``, ``frame2d``, the audio ResNet) on any device, and
    ``channels_last_3d`` for an R(2+1)D-18 on CUDA (:func:`xdc.models.video.use_channels_last`).

    The same numbers in another layout (features equal to float rounding; state dicts and
    checkpoints unchanged). On CPU, one training step of ``tiny`` or ``small`` runs 1.26× faster
    in oneDNN's channels-last 2D convolutions; a 3D convolution is not faster there, so the 3D
    layers keep theirs. Call before the optimizer is made. Returns what was changed.

    On CPU an encoder with a strided 1×1 convolution of fewer than 16 input channels (a width
    below 16) keeps its layout: oneDNN's channels-last 1×1 backward-weights kernel writes past its
    buffer when the input channels are fewer than its channel block (8 with AVX2, 16 with
    AVX-512; oneDNN issue #6035) — heap corruption with one thread, wrong gradients with more.
    """
    changed = []
    for name, encoder in encoders.items():
        if device.type == "cpu" and _narrow_strided_1x1(encoder):
            continue
        if isinstance(encoder, Mixed2D3D):
            encoder.frames.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stubs
            changed.append(f"{name}: per-frame 2D convolutions in channels_last")
        elif isinstance(encoder, (FrameCNN, AudioResNet18)):
            encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            changed.append(f"{name}: 2D convolutions in channels_last")
        elif device.type == "cuda" and use_channels_last(encoder):
            changed.append(f"{name}: 3D convolutions in channels_last_3d")
    return changed


def in_run_layout(encoder: nn.Module, channels_last: bool, device: torch.device) -> nn.Module:
    """``encoder`` in the memory layout its run trained in (``train.channels_last``): a copy in
    :func:`use_fast_layout`'s layout, so that the caller's module keeps its own (the features
    equal the default layout's to float rounding), or ``encoder`` itself when the run trained in
    the default layout. For frozen-feature extraction: probes, retrieval, ``xdc.embed``, the
    report's cluster members."""
    if not channels_last:
        return encoder
    clone = copy.deepcopy(encoder)
    use_fast_layout({"encoder": clone}, device)
    return clone


ONEDNN_SAFE_CHANNELS = 16
"""Fewest input channels of a strided 1×1 convolution that oneDNN's channels-last CPU kernels
handle on every x86 ISA (the AVX-512 channel block; oneDNN issue #6035)."""


def _narrow_strided_1x1(encoder: nn.Module) -> bool:
    """Whether ``encoder`` has a 2D 1×1 convolution with a stride and fewer than
    ``ONEDNN_SAFE_CHANNELS`` input channels (see ``use_fast_layout``)."""
    return any(
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.stride != (1, 1)
        and m.in_channels < ONEDNN_SAFE_CHANNELS
        for m in encoder.modules()
    )


def load_encoders(
    run_or_file: str | Path,
) -> tuple[dict[str, nn.Module], PretrainConfig, dict[str, Any]]:
    """Encoders of a run (or checkpoint file) with their trained weights, strictly loaded.

    Returns (encoders in eval mode, the run's config, the checkpoint's metadata without weights).
    """
    state = load_checkpoint(run_or_file)
    try:
        config = config_from_dict(state["config"])
        weights = state["encoders"]
    except KeyError as err:
        raise CheckpointError(
            f"{run_or_file}: checkpoint lacks {err}; was it written by xdc pretrain?"
        ) from err
    encoders = build_encoders(config.model, config.data.n_mels)
    for name, enc in encoders.items():
        if name not in weights:
            raise CheckpointError(f"{run_or_file}: checkpoint has no {name} encoder")
        load_encoder_state(
            enc, weights[name], ignore_prefixes=(), source=f"{run_or_file} ({name} encoder)"
        )
        enc.eval()
    meta = {k: v for k, v in state.items() if k not in ("encoders", "heads", "optimizer", "scaler")}
    return encoders, config, meta
