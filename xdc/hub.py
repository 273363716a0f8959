"""The encoders behind ``hubconf.py``: ``torch.hub.load(<xdc checkout>, NAME, source="local",
weights=PATH)``.

``weights`` may be:

- a released XDC weight file (``r2plus1d_18_xdc_ig65m_kinetics-f24f6ffb.pth``; its name's hash
  prefix is checked, torch.hub's convention), or the release's name alone
  (``"r2plus1d_18_xdc_ig65m_kinetics"``), looked up in torch.hub's cache folder
  (``torch.hub.get_dir()/checkpoints``, where ``torch.hub.load_state_dict_from_url`` puts it);
  nothing is downloaded;
- an ``xdc export`` folder, or its ``<modality>.safetensors`` or ``<modality>.json`` (the
  architecture comes from the sidecar; the file's SHA-256 must be the one the sidecar recorded);
- an xdc run folder or checkpoint file;
- None: random initialisation of the architecture the keyword arguments describe.

Loads are strict (every key must fit; released files may lack only ``fc.*``); the model comes
back in eval mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xdc.errors import CheckpointError
from xdc.models import (
    AudioResNet18,
    FrameCNN,
    Mixed2D3D,
    R2Plus1D18,
    build_audio_encoder,
    build_video_encoder,
    load_encoder_state,
    load_pretrained_video,
    load_weights_file,
)

RELEASED_VIDEO_WEIGHTS = {
    "r2plus1d_18_xdc_ig65m_kinetics": "f24f6ffb",
    "r2plus1d_18_xdc_ig65m_random": "189d23f4",
    "r2plus1d_18_xdc_audioset": "f29ffe8f",
    "r2plus1d_18_fs_kinetics": "622bdad9",
    "r2plus1d_18_fs_imagenet": "ff446670",
}
"""The XDC release's R(2+1)D-18 files (github HumamAlwassel/XDC, ``xdc.py``): name → the sha256
prefix its file name carries (``<name>-<prefix>.pth``)."""

Weights = str | os.PathLike[str] | None


def xdc_r2plus1d_18(weights: Weights = None, **kwargs: Any) -> R2Plus1D18:
    """R(2+1)D-18 video encoder: (B, 3, T, H, W) uint8 RGB or normalised clip → (B, 512 at
    width 64). ``kwargs`` (``mid_rule``, ``width``, ``bn_eps``, ``video_input``) build it when
    ``weights`` is None; a released file's mid-channel rule and width are read off the file."""
    model = _load("video", "r2plus1d_18", weights, kwargs)
    assert isinstance(model, R2Plus1D18)
    return model


def xdc_audio_resnet18(weights: Weights = None, **kwargs: Any) -> AudioResNet18:
    """ResNet-18 audio encoder on log-mel (B, 1, n_mels, n_frames) → (B, 512 at width 64).
    ``kwargs``: ``width``, ``n_mels``, ``pool``, ``input_norm``."""
    model = _load("audio", "resnet18", weights, kwargs)
    assert isinstance(model, AudioResNet18)
    return model


def xdc_mixed2d3d(weights: Weights = None, **kwargs: Any) -> Mixed2D3D:
    """The small 2D-then-3D video encoder of the CPU presets. ``kwargs``: ``width``,
    ``video_input``, ``bottom``."""
    model = _load("video", "mixed2d3d", weights, kwargs)
    assert isinstance(model, Mixed2D3D)
    return model


def xdc_frame2d(weights: Weights = None, **kwargs: Any) -> FrameCNN:
    """The per-frame 2D video encoder. ``kwargs``: ``width``, ``temporal_pool``,
    ``video_input``, ``bottom``."""
    model = _load("video", "frame2d", weights, kwargs)
    assert isinstance(model, FrameCNN)
    return model


def _load(modality: str, architecture: str, weights: Weights, kwargs: dict[str, Any]) -> nn.Module:
    if weights is None:
        return _build(modality, architecture, kwargs).eval()
    path = locate_weights(weights)
    from xdc.export import is_export

    if path.suffix in (".safetensors", ".json") and is_export(path.parent):
        path = path.parent
    if is_export(path):
        model = _from_export(path, modality, architecture, kwargs)
    elif path.is_dir() or is_xdc_checkpoint(path):
        model = _from_run(path, modality, architecture, kwargs)
    elif modality == "video" and architecture == "r2plus1d_18":
        model, _report = load_pretrained_video(path, **kwargs)
    else:
        model = _build(modality, architecture, kwargs)
        load_encoder_state(model, load_weights_file(path), source=str(path))
    return model.eval()


def _build(modality: str, architecture: str, kwargs: dict[str, Any]) -> nn.Module:
    build = build_video_encoder if modality == "video" else build_audio_encoder
    return build(architecture, **kwargs)


def locate_weights(weights: str | os.PathLike[str]) -> Path:
    """``weights`` as a path; a released name alone is looked up in torch.hub's cache."""
    path = Path(weights)
    if path.exists():
        return path
    name = str(weights)
    if name in RELEASED_VIDEO_WEIGHTS:
        file = f"{name}-{RELEASED_VIDEO_WEIGHTS[name]}.pth"
        cached = Path(torch.hub.get_dir()) / "checkpoints" / file
        if cached.is_file():
            return cached
        raise CheckpointError(
            f"{file}: not in torch.hub's cache {cached.parent}; xdc downloads nothing: fetch it "
            "from the XDC release (github.com/HumamAlwassel/XDC) into that folder, or pass its path"
        )
    raise CheckpointError(
        f"{weights}: no such file or folder; pass a released weight file, an `xdc export` folder, "
        f"a run folder, or a released name ({', '.join(RELEASED_VIDEO_WEIGHTS)})"
    )


def _refuse_kwargs(kwargs: dict[str, Any], where: Path) -> None:
    if kwargs:
        raise CheckpointError(
            f"{where} fixes the architecture; drop the keyword arguments {sorted(kwargs)}"
        )


def _check_architecture(found: str, architecture: str, where: Path) -> None:
    if found != architecture:
        raise CheckpointError(
            f"{where} holds a {found} encoder, not {architecture}: use the entry point "
            f"xdc_{found if found != 'resnet18' else 'audio_resnet18'}"
        )


def _from_export(
    folder: Path, modality: str, architecture: str, kwargs: dict[str, Any]
) -> nn.Module:
    from xdc.export import load_exported_encoder

    _refuse_kwargs(kwargs, folder)
    model, sidecar = load_exported_encoder(folder, modality)
    _check_architecture(sidecar["architecture"], architecture, folder)
    return model


def _from_run(path: Path, modality: str, architecture: str, kwargs: dict[str, Any]) -> nn.Module:
    from xdc.encoders import load_encoders

    _refuse_kwargs(kwargs, path)
    encoders, config, _meta = load_encoders(path)
    found = config.model.video if modality == "video" else config.model.audio
    _check_architecture(found, architecture, path)
    return encoders[modality]


def is_xdc_checkpoint(path: Path) -> bool:
    """An xdc checkpoint (a dict with ``format_version``) rather than a bare state dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch zip file: the weight loaders say why
        return False
    return isinstance(state, dict) and "format_version" in state


__all__ = [
    "RELEASED_VIDEO_WEIGHTS",
    "is_xdc_checkpoint",
    "locate_weights",
    "xdc_audio_resnet18",
    "xdc_frame2d",
    "xdc_mixed2d3d",
    "xdc_r2plus1d_18",
]
