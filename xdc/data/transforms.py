"""Clip transforms: crops and flips on uint8 frames (cheap slicing first), optional strong
per-clip augmentation (in float, back to uint8) and SpecAugment on log-mel. Clips leave here as
uint8; the normalisation with the Kinetics statistics belongs to the encoders, which apply it on
their device (``xdc.models.video.normalize_video``).

All randomness comes from uniforms in [0, 1) the caller passes in — a training clip's come from its
key (``xdc.data.draws``) — so a clip is a pure function of its sample key (deterministic across
DataLoader workers and resumes). The ``draw_*`` functions turn uniforms into parameters elementwise:
one clip's (a row) or a batch's (rows) at once, with the same numbers either way.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def crop_box(height: int, width: int, size: int, u: np.ndarray | None) -> tuple[int, int]:
    """Top-left corner of a ``size`` square crop: from the uniforms ``u`` (top, left) when given,
    centred otherwise."""
    if height < size or width < size:
        raise ValueError(f"frames of {height}x{width} are smaller than the crop size {size}")
    if u is None:
        return (height - size) // 2, (width - size) // 2
    return int(u[0] * (height - size + 1)), int(u[1] * (width - size + 1))


def crop_and_flip(frames: np.ndarray, size: int, u: np.ndarray | None, flip: bool) -> np.ndarray:
    """(T, H, W, 3) uint8 → (T, size, size, 3) uint8: a view when not mirrored. ``u``: uniforms
    (top, left, flip) of a random crop, mirrored when ``flip`` and u[2] < 0.5 (``xdc.data.draws.CROP``);
    None: the centre crop."""
    top, left = crop_box(frames.shape[1], frames.shape[2], size, u)
    out = frames[:, top : top + size, left : left + size]
    if flip and u is not None and u[2] < 0.5:
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


@functools.lru_cache(maxsize=16)
def _colour_constants(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """RGB→YIQ, YIQ→RGB and the (1, 1, 3) luma weights on ``device``, made once per device and
    dtype: a copy from pageable host memory to a GPU waits for all its queued work, once per
    batch otherwise."""
    luma = torch.tensor(_LUMA, dtype=dtype).view(1, 1, 3)
    return tuple(t.to(device, dtype) for t in (_RGB_TO_YIQ, _YIQ_TO_RGB, luma))  # type: ignore[return-value]


def hue_rotation(angle: float) -> Tensor:
    """(3, 3) float64 matrix that turns the hue of RGB colours by ``angle`` radians, keeping their
    luma (a rotation of the chroma plane of YIQ)."""
    return _hue_rotations(torch.tensor([angle], dtype=torch.float64))[0]


STRONG_AUGMENT_PARAMS = 10
"""Length of a clip's ``draw_strong_augment`` vector: rotation, shear (radians), scale,
translation x, y (fractions of the half-size), brightness, contrast, saturation, the grey flag
(0/1) and the hue turn (radians, 0 without ``hue``)."""
IDENTITY_AUGMENT = np.array([0.0, 0, 1, 0, 0, 1, 1, 1, 0, 0], dtype=np.float32)
"""The ``draw_strong_augment`` vector that changes nothing (for samples that failed to load)."""

# Ranges of the uniform draws, in the order of the vector; the grey flag is u < 0.1.
_AUGMENT_LOW = np.array(
    [-math.radians(20), -math.radians(10), 0.8, -0.2, -0.2, 0.7, 0.7, 0.6, 0.0, -math.pi]
)
_AUGMENT_WIDTH = np.array(
    [math.radians(40), math.radians(20), 0.4, 0.4, 0.4, 0.6, 0.6, 0.8, 1.0, 2 * math.pi]
)


def draw_strong_augment(u: np.ndarray, hue: bool = False) -> np.ndarray:
    """Strong augmentation from uniforms ``u`` (..., ``STRONG_AUGMENT_PARAMS``) — one clip's or a
    batch's — as float32 vectors of the same shape for :func:`strong_augment_clips`.

    Rotation ±20°, scale 0.8–1.2, shear ±10°, translation ±10%, brightness/contrast ±30%,
    saturation 0.6–1.4, random grey (p = 0.1). ``hue``: also turn every hue by a random angle
    (the whole circle), so that colour — of the object, the background, the light — is a nuisance
    the encoder learns to ignore.
    """
    values = _AUGMENT_LOW + _AUGMENT_WIDTH * np.asarray(u, dtype=np.float64)
    values[..., 8] = values[..., 8] < 0.1
    if not hue:
        values[..., 9] = 0.0
    return values.astype(np.float32)


def _hue_rotations(angles: Tensor) -> Tensor:
    """(B,) angles → (B, 3, 3) hue turns (:func:`hue_rotation` for a batch)."""
    yiq, rgb, _ = _colour_constants(angles.device, angles.dtype)
    turn = torch.zeros(len(angles), 3, 3, dtype=angles.dtype, device=angles.device)
    cos, sin = angles.cos(), angles.sin()
    turn[:, 0, 0] = 1.0
    turn[:, 1, 1], turn[:, 1, 2], turn[:, 2, 1], turn[:, 2, 2] = cos, -sin, sin, cos
    return rgb @ turn @ yiq


def _inverse_affine(params: Tensor) -> Tensor:
    """(B, 10) augmentation vectors → (B, 2, 3) inverse maps (output → input coordinates) of
    rotation∘shear∘scale plus translation, in normalised coordinates, for ``affine_grid``."""
    angle, shear, scale, tx, ty = params[:, :5].unbind(1)
    cos, sin = angle.cos(), angle.sin()
    return torch.stack(
        [cos / scale, (-sin + shear.tan() * cos) / scale, tx, sin / scale, cos / scale, ty], 1
    ).view(-1, 2, 3)


def strong_augment_clips(clips: Tensor, params: Tensor, hue: bool = False) -> Tensor:
    """Each clip's random affine and colour change (``draw_strong_augment``), the same on every
    frame of a clip, for a batch at once on the clips' device.

    The colour changes are linear in RGB, so they are applied as one map per clip: a (3, 3)
    matrix (saturation or grey, then the hue turn) scaled by brightness × contrast, plus a
    per-frame offset (contrast pulls each frame towards its mean over channels and pixels),
    clamped to [0, 255] once, at the end.

    Args:
        clips: (B, 3, T, H, W) uint8 RGB.
        params: (B, ``STRONG_AUGMENT_PARAMS``) float32, one ``draw_strong_augment`` per clip.
        hue: apply the hue turns (``data.augment=strong_hue``).

    Returns:
        (B, 3, T, H, W) uint8, rounded from float.
    """
    b, _, t, h, w = clips.shape
    params = params.to(clips.device, torch.float32)
    # The frames of a clip share its affine map: warp its 3·T channels with one grid (the
    # channels of grid_sample are independent, so this is the per-frame warp at 1/T the grids).
    video = clips.reshape(b, 3 * t, h, w).float()
    grid = F.affine_grid(_inverse_affine(params), [b, 3 * t, h, w], align_corners=False)
    video = F.grid_sample(
        video, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    ).view(b, 3, t * h * w)
    brightness, contrast, saturation, to_grey = (params[:, i].view(b, 1, 1) for i in range(5, 9))
    # Saturation s: grey + (v - grey)·s = (s·I + (1 - s)·1·lumaᵀ) v; grey is s = 0, exactly.
    keep = saturation * (1.0 - to_grey)
    eye = torch.eye(3, dtype=video.dtype, device=video.device)
    luma = _colour_constants(video.device, video.dtype)[2]
    colour = keep * eye + (1.0 - keep) * luma
    if hue:
        colour = torch.bmm(_hue_rotations(params[:, 9]), colour)
    pixel_means = video.view(b, 3, t, h * w).mean(dim=3)  # (B, 3, T)
    frame_means = colour.sum(dim=1, keepdim=True).bmm(pixel_means) / 3.0  # (B, 1, T)
    # ((v' - mean)·c + mean)·brightness, + 0.5 so that the cast to uint8 rounds.
    offset = brightness * (1.0 - contrast) * frame_means + 0.5
    offset = offset.view(b, 1, t, 1).expand(b, 1, t, h * w).reshape(b, 1, t * h * w)
    out = torch.baddbmm(offset, brightness * contrast * colour, video)
    return out.clamp_(0.0, 255.0).to(torch.uint8).view(b, 3, t, h, w)


def strong_augment(video: Tensor, rng: np.random.Generator, hue: bool = False) -> Tensor:
    """One clip's strong augmentation drawn from ``rng`` (:func:`draw_strong_augment`), on a
    (T, 3, H, W) float clip in [0, 1]; returns the same layout, quantised to 1/255 steps as
    training clips are."""
    clip = video.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).transpose(0, 1)[None]
    params = draw_strong_augment(rng.random(STRONG_AUGMENT_PARAMS), hue)
    out = strong_augment_clips(clip, torch.from_numpy(params)[None], hue)
    return out[0].transpose(0, 1).float().div_(255.0)


SPEC_AUGMENT_PARAMS = 4
"""Length of a clip's ``draw_spec_augment`` vector: start and width of the frequency band, then
of the time span (widths 0: nothing masked)."""


def draw_spec_augment(
    u: np.ndarray,
    n_mels: int,
    n_frames: int,
    max_freq: float = 0.15,
    max_time: float = 0.15,
) -> np.ndarray:
    """SpecAugment masks from uniforms ``u`` (..., 4) — one clip's or a batch's: one band of up to
    ``max_freq`` of the mel bands and one span of up to ``max_time`` of the frames, as int64
    vectors ``(band start, band width, span start, span width)`` for :func:`spec_augment_batch`."""
    u = np.asarray(u, dtype=np.float64)
    band = (u[..., 0] * (int(max_freq * n_mels) + 1)).astype(np.int64)
    span = (u[..., 2] * (int(max_time * n_frames) + 1)).astype(np.int64)
    band_start = (u[..., 1] * (n_mels - band + 1)).astype(np.int64)
    span_start = (u[..., 3] * (n_frames - span + 1)).astype(np.int64)
    return np.stack([band_start, band, span_start, span], axis=-1)


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
    u = rng.random(SPEC_AUGMENT_PARAMS)
    params = draw_spec_augment(u, logmel.shape[-2], logmel.shape[-1], max_freq, max_time)
    return spec_augment_batch(logmel[None], torch.from_numpy(params)[None])[0]
