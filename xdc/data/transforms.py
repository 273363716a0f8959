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


def to_uint8_clip(frames: np.ndarray) -> Tensor:
    """(T, H, W, 3) uint8 frames → (3, T, H, W) uint8 clip, the layout the encoders take (one
    copy, from any view of the frames)."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2)))


_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_LUMA = (0.299, 0.587, 0.114)


_RGB_TO_YIQ_NP = _RGB_TO_YIQ.numpy()
_YIQ_TO_RGB_NP = _YIQ_TO_RGB.numpy()


def _hue_rotation_np(angle: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    turn = np.array([[1.0, 0, 0], [0, cos, -sin], [0, sin, cos]])
    return _YIQ_TO_RGB_NP @ turn @ _RGB_TO_YIQ_NP


def hue_rotation(angle: float) -> Tensor:
    """(3, 3) float64 matrix that turns the hue of RGB colours by ``angle`` radians, keeping their
    luma (a rotation of the chroma plane of YIQ)."""
    return torch.from_numpy(_hue_rotation_np(angle))


STRONG_AUGMENT_PARAMS = 19
"""Length of a clip's ``draw_strong_augment`` vector: the (2, 3) inverse affine map, brightness,
contrast, saturation, the grey flag, and the (3, 3) hue turn (the identity without ``hue``)."""
IDENTITY_AUGMENT = torch.tensor(
    [1.0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1], dtype=torch.float32
)
"""The ``draw_strong_augment`` vector that changes nothing (for samples that failed to load)."""


def draw_strong_augment(rng: np.random.Generator, hue: bool = False) -> Tensor:
    """Draw one clip's strong augmentation from ``rng``: a (``STRONG_AUGMENT_PARAMS``,) float32
    vector for :func:`strong_augment_clips`.

    Rotation ±20°, scale 0.8–1.2, shear ±10°, translation ±10%, brightness/contrast ±30%,
    saturation 0.6–1.4, random grey (p = 0.1). ``hue``: also turn every hue by a random angle
    (the whole circle), so that colour — of the object, the background, the light — is a nuisance
    the encoder learns to ignore. Draws ``rng`` in a fixed order (the clip is a function of it).
    """
    angle = math.radians(rng.uniform(-20, 20))
    shear = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.8, 1.2)
    tx, ty = rng.uniform(-0.1, 0.1, size=2) * 2
    cos, sin = math.cos(angle), math.sin(angle)
    # Inverse map (output → input coordinates) of rotation∘shear∘scale, in normalised coordinates.
    affine = [cos / scale, (-sin + math.tan(shear) * cos) / scale, tx, sin / scale, cos / scale, ty]
    brightness = rng.uniform(0.7, 1.3)
    contrast = rng.uniform(0.7, 1.3)
    saturation = rng.uniform(0.6, 1.4)
    grey = float(rng.random() < 0.1)
    turn = _hue_rotation_np(rng.uniform(-math.pi, math.pi)) if hue else np.eye(3)
    values = np.empty(STRONG_AUGMENT_PARAMS, dtype=np.float32)
    values[:10] = affine + [brightness, contrast, saturation, grey]
    values[10:] = turn.ravel()
    return torch.from_numpy(values)


def strong_augment_clips(clips: Tensor, params: Tensor, hue: bool = False) -> Tensor:
    """Each clip's random affine and colour change (``draw_strong_augment``), the same on every
    frame of a clip, for a batch at once on the clips' device.

    Args:
        clips: (B, 3, T, H, W) uint8 RGB.
        params: (B, ``STRONG_AUGMENT_PARAMS``) float32, one ``draw_strong_augment`` per clip.
        hue: apply the hue turns (``data.augment=strong_hue``).

    Returns:
        (B, 3, T, H, W) uint8: computed in float in [0, 1], rounded back.
    """
    b, _, t, h, w = clips.shape
    params = params.to(clips.device, torch.float32)
    # The frames of a clip share its affine map: warp its 3·T channels with one grid (the
    # channels of grid_sample are independent, so this is the per-frame warp at 1/T the grids).
    video = clips.reshape(b, 3 * t, h, w).float().div_(255.0)
    grid = F.affine_grid(params[:, :6].view(b, 2, 3), [b, 3 * t, h, w], align_corners=False)
    video = F.grid_sample(
        video, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    ).view(b, 3, t, h, w)
    brightness, contrast, saturation, to_grey = (
        params[:, i].view(b, 1, 1, 1, 1) for i in range(6, 10)
    )
    luma = torch.tensor(_LUMA, dtype=video.dtype, device=video.device).view(1, 3, 1, 1, 1)
    grey = video.mul(luma).sum(dim=1, keepdim=True)
    # Saturation 0 is grey: grey + (video - grey) · 0 is grey exactly.
    video.sub_(grey).mul_(saturation * (1.0 - to_grey)).add_(grey)
    if hue:
        turn = params[:, 10:19].view(b, 3, 3)
        video = torch.bmm(turn, video.view(b, 3, -1)).view(b, 3, t, h, w).clamp_(0.0, 1.0)
    mean = video.mean(dim=(1, 3, 4), keepdim=True)  # of each frame
    video.sub_(mean).mul_(contrast).add_(mean).mul_(brightness).clamp_(0.0, 1.0)
    return video.mul_(255.0).round_().to(torch.uint8)


def strong_augment(video: Tensor, rng: np.random.Generator, hue: bool = False) -> Tensor:
    """One clip's strong augmentation drawn from ``rng`` (:func:`draw_strong_augment`), on a
    (T, 3, H, W) float clip in [0, 1]; returns the same layout, quantised to 1/255 steps as
    training clips are."""
    clip = video.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).transpose(0, 1)[None]
    out = strong_augment_clips(clip, draw_strong_augment(rng, hue)[None], hue)
    return out[0].transpose(0, 1).float().div_(255.0)


SPEC_AUGMENT_PARAMS = 4
"""Length of a clip's ``draw_spec_augment`` vector: start and width of the frequency band, then
of the time span (widths 0: nothing masked)."""


def draw_spec_augment(
    rng: np.random.Generator,
    n_mels: int,
    n_frames: int,
    max_freq: float = 0.15,
    max_time: float = 0.15,
) -> Tensor:
    """Draw one clip's SpecAugment masks from ``rng``: one band of up to ``max_freq`` of the mel
    bands and one span of up to ``max_time`` of the frames, as a (4,) int64 vector
    ``(band start, band width, span start, span width)`` for :func:`spec_augment_batch`."""
    band = int(rng.integers(0, int(max_freq * n_mels) + 1))
    band_start = int(rng.integers(0, n_mels - band + 1))
    span = int(rng.integers(0, int(max_time * n_frames) + 1))
    span_start = int(rng.integers(0, n_frames - span + 1))
    return torch.tensor([band_start, band, span_start, span], dtype=torch.int64)


def spec_augment_batch(logmel: Tensor, params: Tensor) -> Tensor:
    """Each clip's frequency band and time span (``draw_spec_augment``) set to the mean of its
    log-mel, for a batch at once: (B, 1, n_mels, n_frames) → the same shape."""
    b, _, n_mels, n_frames = logmel.shape
    params = params.to(logmel.device).view(b, 4, 1)
    mels = torch.arange(n_mels, device=logmel.device).view(1, -1)
    frames = torch.arange(n_frames, device=logmel.device).view(1, -1)
    in_band = (mels >= params[:, 0]) & (mels < params[:, 0] + params[:, 1])  # (B, n_mels)
    in_span = (frames >= params[:, 2]) & (frames < params[:, 2] + params[:, 3])  # (B, n_frames)
    masked = (in_band[:, :, None] | in_span[:, None, :]).unsqueeze(1)
    fill = logmel.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(masked, fill, logmel)


def spec_augment(
    logmel: Tensor, rng: np.random.Generator, max_freq: float = 0.15, max_time: float = 0.15
) -> Tensor:
    """One frequency band and one time span of a (1, n_mels, n_frames) log-mel set to its mean
    (:func:`draw_spec_augment` then :func:`spec_augment_batch` on a batch of one)."""
    params = draw_spec_augment(rng, logmel.shape[-2], logmel.shape[-1], max_freq, max_time)
    return spec_augment_batch(logmel[None], params[None])[0]
