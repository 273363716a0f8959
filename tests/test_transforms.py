"""The batched strong augmentation against its definition, one operation at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xdc.data import transforms
from xdc.data.transforms import (
    IDENTITY_AUGMENT,
    STRONG_AUGMENT_PARAMS,
    draw_strong_augment,
    hue_rotation,
    strong_augment_clips,
)

LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)


def colour_by_definition(clip: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """(3, T, H, W) uint8 clip, no warp → uint8: saturation (or grey), hue turn, then contrast
    towards each frame's mean and brightness, in float64, one step after the other."""
    v = clip.double() / 255.0
    brightness, contrast, saturation, grey, angle = (float(params[i]) for i in range(5, 10))
    y = torch.einsum("c,cthw->thw", LUMA, v)[None]
    v = y + (v - y) * (0.0 if grey else saturation)
    v = torch.einsum("dc,cthw->dthw", hue_rotation(angle), v)
    mean = v.mean(dim=(0, 2, 3), keepdim=True)
    v = ((v - mean) * contrast + mean) * brightness
    return (v.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


@pytest.mark.parametrize("hue", [False, True])
def test_the_colour_map_is_the_sequence_of_colour_changes(hue: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    # Smooth colours (as photographs are), some of them saturated, 4 frames of 12×12.
    coarse = torch.rand(6, 3, 4, 3, 3, generator=gen)
    clips = (torch.nn.functional.interpolate(coarse, size=(4, 12, 12)) * 255).to(torch.uint8)
    params = draw_strong_augment(np.random.default_rng(0).random((6, 10)), hue)
    params[:, :5] = IDENTITY_AUGMENT[:5]  # no warp: the colour part alone
    params[0, 8] = 1.0  # one clip turned grey
    out = strong_augment_clips(clips, torch.from_numpy(params), hue)
    assert out.dtype == torch.uint8 and out.shape == clips.shape
    for i in range(len(clips)):
        expected = colour_by_definition(clips[i], params[i] if hue else _no_hue(params[i]))
        assert (out[i].int() - expected.int()).abs().max() <= 1, i
    grey = out[0].int()
    assert (grey.max(dim=0).values - grey.min(dim=0).values).max() <= 1  # R = G = B


def _no_hue(params: np.ndarray) -> np.ndarray:
    params = params.copy()
    params[9] = 0.0
    return params


def test_the_identity_changes_nothing_and_a_clip_does_not_depend_on_its_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    clips = torch.randint(0, 256, (5, 3, 3, 10, 10), dtype=torch.uint8, generator=gen)
    identity = torch.from_numpy(np.stack([IDENTITY_AUGMENT] * 5))
    assert torch.equal(strong_augment_clips(clips, identity, hue=True), clips)
    params = torch.from_numpy(draw_strong_augment(np.random.default_rng(1).random((5, 10)), True))
    batch = strong_augment_clips(clips, params, hue=True)
    for i in range(5):
        assert torch.equal(
            batch[i : i + 1], strong_augment_clips(clips[i : i + 1], params[i : i + 1], True)
        )


def test_colour_constants_are_made_once_per_device_and_dtype() -> None:
    """A batch's colour maps reuse their constants: on a GPU, a fresh copy from host memory
    would wait for the queued steps, once per batch."""
    gen = torch.Generator().manual_seed(2)
    clips = torch.randint(0, 256, (2, 3, 2, 8, 8), dtype=torch.uint8, generator=gen)
    params = torch.from_numpy(draw_strong_augment(np.random.default_rng(2).random((2, 10)), True))
    strong_augment_clips(clips, params, hue=True)
    made = transforms._colour_constants.cache_info().misses
    for _ in range(3):
        strong_augment_clips(clips, params, hue=True)
    assert transforms._colour_constants.cache_info().misses == made


def test_draws_stay_in_their_ranges() -> None:
    draws = draw_strong_augment(np.random.default_rng(0).random((2000, 10)), True)
    assert draws.shape == (2000, STRONG_AUGMENT_PARAMS) and draws.dtype == np.float32
    low = [-math.radians(20), -math.radians(10), 0.8, -0.2, -0.2, 0.7, 0.7, 0.6, 0.0, -math.pi]
    high = [math.radians(20), math.radians(10), 1.2, 0.2, 0.2, 1.3, 1.3, 1.4, 1.0, math.pi]
    assert (draws >= np.array(low, np.float32) - 1e-6).all()
    assert (draws <= np.array(high, np.float32) + 1e-6).all()
    assert 0.07 < draws[:, 8].mean() < 0.13  # grey one time in ten
    assert set(np.unique(draws[:, 8])) == {0.0, 1.0}
    assert not draw_strong_augment(np.random.default_rng(1).random((50, 10)))[:, 9].any()
    one = draw_strong_augment(np.random.default_rng(2).random(10), True)  # a row is a batch's row
    assert np.array_equal(
        one, draw_strong_augment(np.random.default_rng(2).random((1, 10)), True)[0]
    )
