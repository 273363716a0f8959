"""The random numbers of a training clip: a fixed row of uniforms, a pure function of its seed.

Everything random about a training clip — its start, crop, flip, strong augmentation, SpecAugment
masks and the frames it keeps — is read from one row of uniforms in [0, 1) at fixed slots
(``START``, ``CROP``, ``AUGMENT``, ``SPEC``, ``FRAMES``). The row comes from a counter-based
generator: number ``j`` of seed ``s`` is ``mix(mix(s·γ + γ) + (j + 1)·γ)``, where ``mix`` is the
finaliser of SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014) and γ the golden-ratio increment 0x9E3779B97F4A7C15; its top 53 bits make the float.

Why not a ``numpy.random.Generator`` per clip: seeding one costs ~13 µs and each draw ~1–2 µs of
Python, ~35 µs a clip in all, a sixth of a ``tiny`` training step's data work. A counter-based row
needs no state, so the rows of a whole batch are a few numpy operations (~25 µs for 32 clips), and
the per-clip path (``ClipDataset.__getitem__``, a batch of one) and the batch path
(``ClipDataset.__getitems__``) read the same numbers at the same slots: the same clip either way,
whichever process loads it, before or after a resume.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

START = 0
"""The clip's start within the span its row allows (``ClipDataset.clip_start``)."""
CROP = slice(1, 4)
"""Crop top, crop left and the flip (< 0.5: mirrored) (``xdc.data.transforms.crop_and_flip``)."""
AUGMENT = slice(4, 14)
"""The strong augmentation (``xdc.data.transforms.draw_strong_augment``)."""
SPEC = slice(14, 18)
"""The SpecAugment masks (``xdc.data.transforms.draw_spec_augment``)."""
FRAMES = 18
"""From here, one number per decoded frame: with ``data.train_frames``, the frames of the lowest
numbers are kept."""

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def width(num_frames: int) -> int:
    """Length of the row of a clip of ``num_frames`` frames."""
    return FRAMES + num_frames


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (numpy's array arithmetic wraps modulo 2⁶⁴)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def clip_uniforms(seeds: Iterable[int], count: int) -> np.ndarray:
    """(len(seeds), count) float64 uniforms in [0, 1): row ``i`` is seed ``i``'s (any Python int:
    taken modulo 2⁶⁴); its first ``c`` numbers are the same whatever ``count`` ≥ ``c``."""
    keys = np.fromiter((int(s) & _MASK for s in seeds), dtype=np.uint64)
    base = _mix(keys * _GAMMA + _GAMMA)[:, None]
    bits = _mix(base + np.arange(1, count + 1, dtype=np.uint64) * _GAMMA)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def clip_draws(seed: int, count: int) -> np.ndarray:
    """The (count,) row of one seed: ``clip_uniforms([seed], count)[0]``."""
    return clip_uniforms((seed,), count)[0]
