"""Clip transforms: crops and flips on uint8 frames (cheap slicing first), optional strong
per-clip augmentation (in float, back to uint8) and SpecAugment on log-mel. Clips leave here as
uint8; the normalisation with the Kinetics statistics belongs to the encoders, which apply it on
their device (``xdc.models.video.normalize_video``).

All randomness comes from a ``numpy.random.Generator`` the caller passes in, so a clip is a pure
function of its sample key (deterministic across DataLoader workers and resumes).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def crop_box(
    height: int, width: int, size: int, rng: np.random.Generator | None
) -> tuple[int, int]:
    """Top-left corner of a ``size`` square crop: random when ``rng`` is given, centred otherwise."""
    if height < size or width < size:
        raise ValueError(f"frames of {height}x{width} are smaller than the crop size {size}")
    if rng is None:
        return (height - size) // 2, (width - size) // 2
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def crop_and_flip(
    frames: np.ndarray, size: int, rng: np.random.Generator | None, flip: bool
) -> np.ndarray:
    """(T, H, W, 3) uint8 → (T, size, size, 3) uint8: a view when no flip is drawn."""
    top, left = crop_box(frames.shape[1], frames.shape[2], size, rng)
    out = frames[:, top : top + size, left : left + size]
    if flip and rng is not None and rng.random() < 0.5:
        out = out[:, :, ::-1]
    return out


def to_float_video(frames: np.ndarray) -> Tensor:
    """(T, H, W, 3) uint8 → (T, 3, H, W) float32 in [0, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames))
    return video.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8_clip(frames: np.ndarray) -> Tensor:
    """(T, H, W, 3) uint8 frames → (3, T, H, W) uint8 clip, the layout the encoders take."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).contiguous()


def float_to_uint8_clip(video: Tensor) -> Tensor:
    """(T, 3, H, W) float in [0, 1] → (3, T, H, W) uint8 (rounded)."""
    return video.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous()


_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)


def hue_rotation(angle: float) -> Tensor:
    """(3, 3) float64 matrix that turns the hue of RGB colours by ``angle`` radians, keeping their
    luma (a rotation of the chroma plane of YIQ)."""
    cos, sin = math.cos(angle), math.sin(angle)
    turn = torch.tensor([[1.0, 0, 0], [0, cos, -sin], [0, sin, cos]], dtype=torch.float64)
    return torch.linalg.inv(_RGB_TO_YIQ) @ turn @ _RGB_TO_YIQ


def strong_augment(video: Tensor, rng: np.random.Generator, hue: bool = False) -> Tensor:
    """The same random affine and colour change applied to every frame of one clip.

    Rotation ±20°, scale 0.8–1.2, shear ±10°, translation ±10%, brightness/contrast ±30%,
    saturation 0.6–1.4, random grey (p = 0.1). ``hue``: also turn every hue by a random angle
    (the whole circle), so that colour — of the object, the background, the light — is a nuisance
    the encoder learns to ignore. Input and output (T, 3, H, W) in [0, 1].
    """
    angle = math.radians(rng.uniform(-20, 20))
    shear = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.8, 1.2)
    tx, ty = rng.uniform(-0.1, 0.1, size=2) * 2
    cos, sin = math.cos(angle), math.sin(angle)
    # Inverse map (output → input coordinates) of rotation∘shear∘scale, in normalised coordinates.
    matrix = torch.tensor(
        [[cos / scale, (-sin + math.tan(shear) * cos) / scale, tx], [sin / scale, cos / scale, ty]],
        dtype=video.dtype,
    )
    grid = F.affine_grid(
        matrix.expand(video.shape[0], 2, 3), list(video.shape), align_corners=False
    )
    video = F.grid_sample(
        video, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    brightness = rng.uniform(0.7, 1.3)
    contrast = rng.uniform(0.7, 1.3)
    saturation = rng.uniform(0.6, 1.4)
    grey = video.mul(torch.tensor([0.299, 0.587, 0.114], dtype=video.dtype).view(1, 3, 1, 1))
    grey = grey.sum(dim=1, keepdim=True)
    to_grey = rng.random() < 0.1
    video = grey.expand_as(video) if to_grey else grey + (video - grey) * saturation
    if hue:
        turn = hue_rotation(rng.uniform(-math.pi, math.pi)).to(video.dtype)
        video = torch.einsum("ij,tjhw->tihw", turn, video).clamp_(0.0, 1.0)
    mean = video.mean(dim=(1, 2, 3), keepdim=True)
    video = (video - mean) * contrast + mean
    return (video * brightness).clamp_(0.0, 1.0)


def spec_augment(
    logmel: Tensor, rng: np.random.Generator, max_freq: float = 0.15, max_time: float = 0.15
) -> Tensor:
    """One frequency band and one time span of a (1, n_mels, n_frames) log-mel set to its mean."""
    out = logmel.clone()
    fill = out.mean()
    n_mels, n_frames = out.shape[-2:]
    width = int(rng.integers(0, int(max_freq * n_mels) + 1))
    start = int(rng.integers(0, n_mels - width + 1))
    out[..., start : start + width, :] = fill
    width = int(rng.integers(0, int(max_time * n_frames) + 1))
    start = int(rng.integers(0, n_frames - width + 1))
    out[..., :, start : start + width] = fill
    return out
