"""The clips of finetuning beyond what the loader cuts: the published recipes' training
augmentation and GDT's three test crops.

``TrainAugment``: a random resized crop (random area and aspect, resized to the crop size) and
colour jitter with torchvision's ``ColorJitter`` semantics, drawn per clip and the same for every
frame of a clip. The loader delivers square clips with a random position and flip
(``ClipDataset``); this does the rest on the model's device. Every draw of a clip comes from its
``ClipKey`` seed (a stream of its own, ``spawn_key=(2,)``), so an epoch is the same however it is
loaded and resumed.

``ThreeCropClips``: test clips of three crops along the long side (GDT's test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xdc.data.datasets import ClipDataset, ClipKey
from xdc.data.transforms import crop_and_flip
from xdc.models.video import video_stats

LUMA = (0.299, 0.587, 0.114)
"""Grey level weights of torchvision's ``rgb_to_grayscale``."""
ASPECT = (3 / 4, 4 / 3)
"""Aspect-ratio range of torchvision's ``RandomResizedCrop``."""


def clip_rng(key: ClipKey) -> np.random.Generator:
    """The augmentation stream of one training clip (a child of its key's seed)."""
    return np.random.default_rng(np.random.SeedSequence(key.seed, spawn_key=(2,)))


def draw_resized_crop(
    rng: np.random.Generator, size: int, min_area: float, attempts: int = 10
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop of a ``size`` square: area a uniform fraction
    in [``min_area``, 1], aspect log-uniform in ``ASPECT``; after ``attempts`` misfits the whole
    square (torchvision's ``RandomResizedCrop.get_params`` on a square input)."""
    area = size * size
    log_ratio = (math.log(ASPECT[0]), math.log(ASPECT[1]))
    for _ in range(attempts):
        target = area * rng.uniform(min_area, 1.0)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= size and 0 < h <= size:
            return int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1)), h, w
    return 0, 0, size, size


def draw_colour_jitter(
    rng: np.random.Generator, strengths: Sequence[float], p: float
) -> tuple[list[int], list[float]]:
    """(order of the operations, factors) of one clip's colour jitter: brightness, contrast and
    saturation factors uniform in [max(0, 1-s), 1+s], a hue shift uniform in [-h, h] turns; no
    operation (``[]``) with probability 1 - ``p``."""
    apply = rng.random() < p
    factors = [
        float(rng.uniform(max(0.0, 1 - s), 1 + s)) if i < 3 else float(rng.uniform(-s, s))
        for i, s in enumerate(strengths)
    ]
    order = [int(i) for i in rng.permutation(len(strengths)) if strengths[i] > 0]
    return (order if apply else []), factors


def grey(x: Tensor) -> Tensor:
    """(3, ...) RGB → (1, ...) grey level (torchvision's weights)."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(3, *[1] * (x.dim() - 1))
    return (x * w).sum(0, keepdim=True)


def shift_hue(x: Tensor, turns: float) -> Tensor:
    """(3, T, H, W) RGB in [0, 1] with every hue turned by ``turns`` of the HSV circle."""
    maxc, argmax = x.max(0)
    minc = x.min(0).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = x[0], x[1], x[2]
    hue = torch.where(
        argmax == 0,
        ((g - b) / safe) % 6,
        torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + turns) % 1.0
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), maxc)
    # HSV → RGB: each channel from the distance of the hue to its own phase.
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(3, 1, 1, 1) + hue * 6) % 6
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return maxc - maxc * sat * ramp


def jitter_colour(x: Tensor, order: Sequence[int], factors: Sequence[float]) -> Tensor:
    """Apply the colour operations of ``order`` (0 brightness, 1 contrast, 2 saturation, 3 hue)
    to one clip (3, T, H, W) in [0, 1]; contrast blends each frame with its mean grey level."""
    for op in order:
        f = factors[op]
        if op == 0:
            x = (x * f).clamp(0, 1)
        elif op == 1:
            mean = grey(x).mean(dim=(2, 3), keepdim=True)
            x = (f * x + (1 - f) * mean).clamp(0, 1)
        elif op == 2:
            x = (f * x + (1 - f) * grey(x)).clamp(0, 1)
        else:
            x = shift_hue(x, f)
    return x


class TrainAugment:
    """The resized crop and colour jitter of a recipe, applied to a batch of square uint8 clips.

    Args:
        crop_size: side of the clips the model sees.
        resized_crop: draw a random resized crop (else the clips are already ``crop_size``).
        min_area: smallest area of the resized crop, as a fraction of the square.
        colour: brightness, contrast, saturation[, hue] strengths (empty: no colour jitter).
        colour_p: probability that a clip is jittered.
    """

    def __init__(
        self,
        crop_size: int,
        resized_crop: bool,
        min_area: float,
        colour: Sequence[float],
        colour_p: float,
    ) -> None:
        self.crop_size = crop_size
        self.resized_crop = resized_crop
        self.min_area = min_area
        self.colour = tuple(colour)
        self.colour_p = colour_p

    @property
    def active(self) -> bool:
        return self.resized_crop or bool(self.colour)

    def __call__(self, video: Tensor, keys: Sequence[ClipKey]) -> Tensor:
        """(B, 3, T, S, S) uint8 clips drawn with ``keys`` → (B, 3, T, crop, crop) float32,
        normalised as the encoders expect (they pass float input through unchanged)."""
        stats = video_stats(video.device)
        out = []
        for clip, key in zip(video, keys, strict=True):
            rng = clip_rng(key)
            x = clip.float().div_(255.0)
            if self.resized_crop:
                top, left, h, w = draw_resized_crop(rng, x.shape[-1], self.min_area)
                x = F.interpolate(
                    x[:, :, top : top + h, left : left + w].transpose(0, 1),
                    size=(self.crop_size, self.crop_size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                ).transpose(0, 1)
            if self.colour:
                order, factors = draw_colour_jitter(rng, self.colour, self.colour_p)
                x = jitter_colour(x.clamp(0, 1), order, factors)
            out.append(x)
        mean, std = stats[0].view(1, 3, 1, 1, 1), stats[1].view(1, 3, 1, 1, 1)
        return (torch.stack(out) - mean) / std


def long_side_windows(frames: np.ndarray, size: int) -> list[np.ndarray]:
    """(T, H, W, 3) frames → three windows of the full short side and ``size`` along the long side:
    at its start, its centre and its end. The centre crop of each is one of ``three_crops``."""
    height, width = frames.shape[1:3]
    if height < size or width < size:
        raise ValueError(f"frames of {height}x{width} are smaller than the crop size {size}")
    if width >= height:
        return [frames[:, :, x : x + size] for x in (0, (width - size) // 2, width - size)]
    return [frames[:, y : y + size] for y in (0, (height - size) // 2, height - size)]


def three_crops(frames: np.ndarray, size: int) -> list[np.ndarray]:
    """(T, H, W, 3) frames → three (T, size, size, 3) crops: at the start, the centre and the end
    of the long side, centred on the short side (top/centre/bottom for a portrait video)."""
    return [crop_and_flip(w, size, None, flip=False) for w in long_side_windows(frames, size)]


class ThreeCropClips(ClipDataset):
    """Test clips of ``three_crops`` each: a sample's video is (3 crops, 3, T, S, S) uint8
    (an unreadable clip's: three blank crops).

    Each crop is the dataset's own view (``ClipDataset.video_views``: the centre crop) of one
    ``long_side_windows`` window, so the clip pipeline (decoding, cache, resizing, whatever
    follows the crop) is the dataset's."""

    def video_views(self, frames: np.ndarray, u: np.ndarray | None) -> dict[str, Any]:
        crop = super().video_views
        views = [crop(w, u) for w in long_side_windows(frames, self.config.crop_size)]
        return {k: torch.stack([v[k] for v in views]) for k in views[0]}


__all__ = [
    "ThreeCropClips",
    "TrainAugment",
    "clip_rng",
    "draw_colour_jitter",
    "draw_resized_crop",
    "jitter_colour",
    "long_side_windows",
    "shift_hue",
    "three_crops",
]
