"""Two more kinds of demo data, where the class is carried by *what the object is*, not by how it
moves: ``appearance`` and ``digits`` (``xdc demo-data --family NAME``; the first family,
``motion``, is :mod:`xdc.data.demo`).

In both, an object wanders over the frame (drifting, bouncing off the edges, turning a little and
breathing in size) and a sound plays whose *timing has nothing to do with the picture*: the two
modalities are paired only through the class. Everything but the class is a nuisance drawn from
the same distributions in every class.

``appearance`` — the class is a shape and a vowel:

| id | shape | vowel (F1, F2, F3 in Hz, Peterson & Barney 1952, adult male means) |
|---|---|---|
| 0-9 | circle, square, triangle, star, cross, ring, hexagon, crescent, tee, half-disc | i (270, 2290, 3010), ɪ (390, 1990, 2550), ɛ (530, 1840, 2480), æ (660, 1720, 2410), ɑ (730, 1090, 2440), ɔ (570, 840, 2410), ʊ (440, 1020, 2240), u (300, 870, 2240), ʌ (640, 1190, 2390), ɝ (490, 1350, 1690) |

Video nuisances: position, path, speed, size (radius 15-31 % of the frame, breathing), orientation (±25°),
colour, background (flat, gradient, clouds, stripes), a silent distractor blob in half the clips.
Audio nuisances: the voice — fundamental 85-300 Hz with vibrato and intonation, formants scaled by
the speaker's vocal tract (×0.92-1.15), spectral tilt —, how many syllables and when, loudness,
coloured noise at 3-24 dB SNR. The sound "names" the object in many voices.

``digits`` — real-world content that ships with scikit-learn (nothing is downloaded): the class is
a digit 0-9. The picture is a real handwritten digit (the UCI optical-digits scans bundled as
``sklearn.datasets.load_digits``: 1,797 8×8 images written by 43 people; each clip of a class uses
a different scan, so train, val and test never share one) over crops of the two real photographs
bundled as ``sklearn.datasets.load_sample_images``, or over a procedural background. The sound is
the digit's telephone key tone (DTMF, ITU-T Q.23: one of 697/770/852/941 Hz plus one of
1209/1336/1477 Hz; 0 is 941 + 1336 Hz) pressed a random number of times, off-tune by up to ±1.5 %
(the standard's tolerance), with random twist between the two tones, through a random telephone
band-pass, under noise at 0-20 dB SNR. Video nuisances: the writer, ink colour, size, position,
path, orientation, background photo crop and tint, distractor blob.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from xdc.data.demo_render import (
    Distractor,
    Rng,
    _background,
    _box,
    _coloured_noise,
    _contrasting_colour,
    _distractor,
    _luma,
    _shape_distance,
)

__all__ = [
    "APPEARANCE_NAMES", "DIGIT_NAMES", "DTMF_HZ", "SHAPES", "VOWELS", "SpriteClip",
    "plan_appearance", "plan_digits", "render_sprite_clip",
]  # fmt: skip

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent", "tee",
          "halfdisc")  # fmt: skip
# (name, F1, F2, F3) in Hz: Peterson & Barney (1952), adult male averages.
VOWELS = (
    ("ee", 270, 2290, 3010), ("ih", 390, 1990, 2550), ("eh", 530, 1840, 2480),
    ("ae", 660, 1720, 2410), ("ah", 730, 1090, 2440), ("aw", 570, 840, 2410),
    ("oo", 440, 1020, 2240), ("uu", 300, 870, 2240), ("uh", 640, 1190, 2390),
    ("er", 490, 1350, 1690),
)  # fmt: skip
APPEARANCE_NAMES = tuple(f"{s}_{v[0]}" for s, v in zip(SHAPES, VOWELS, strict=True))
# ITU-T Q.23 keypad: digit → (row Hz, column Hz).
DTMF_HZ = {
    1: (697, 1209), 2: (697, 1336), 3: (697, 1477), 4: (770, 1209), 5: (770, 1336),
    6: (770, 1477), 7: (852, 1209), 8: (852, 1336), 9: (852, 1477), 0: (941, 1336),
}  # fmt: skip
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class SpriteClip:
    """Everything random about one clip of the appearance or digits family."""

    duration_sec: float
    size: int
    fps: float
    x: np.ndarray  # (T,) centre, fractions of the frame, one per video frame
    y: np.ndarray
    angle: np.ndarray  # (T,) radians
    radius: np.ndarray  # (T,) half-size of the object, fractions of the frame
    colour: np.ndarray  # (3,)
    background: np.ndarray  # (size, size, 3) float32
    distractor: Distractor | None
    shape: str | None = None  # appearance: the shape
    template: np.ndarray | None = None  # digits: (h, w) ink coverage in [0, 1]
    audio: np.ndarray | None = None  # (C, N) float32, rendered with the plan


def _wander(rng: Rng, n_frames: int, fps: float, radius: np.ndarray) -> tuple[np.ndarray, ...]:
    """A path that drifts with a random velocity, turns smoothly and bounces off the edges."""
    pos = rng.uniform(0.3, 0.7, 2)
    speed, heading = rng.uniform(0.05, 0.45), rng.uniform(0, 2 * np.pi)
    turn = rng.uniform(-1.5, 1.5)  # rad/s
    x, y = np.empty(n_frames), np.empty(n_frames)
    for i in range(n_frames):
        lo, hi = radius[i] + 0.02, 1 - radius[i] - 0.02
        x[i], y[i] = np.clip(pos, lo, hi) if lo < hi else (0.5, 0.5)
        heading += turn / fps
        step = speed / fps * np.array([np.cos(heading), np.sin(heading)])
        pos = pos + step
        for axis in range(2):  # bounce
            if not lo <= pos[axis] <= hi:
                pos[axis] = np.clip(pos[axis], lo, hi)
                heading = np.pi - heading if axis == 0 else -heading
    spin = rng.uniform(-0.3, 0.3)  # rad/s, within ±25° of upright over a 2-s clip
    angle = rng.uniform(-0.2, 0.2) + spin * np.arange(n_frames) / fps
    return x, y, np.clip(angle, -0.44, 0.44)


def _breathing(rng: Rng, n_frames: int, fps: float, lo: float, hi: float) -> np.ndarray:
    """Object radius over time: a base size with a slow ±0-12 % oscillation."""
    base, depth = rng.uniform(lo, hi), rng.uniform(0.0, 0.12)
    hz, phase = rng.uniform(0.2, 1.0), rng.uniform(0, 2 * np.pi)
    return base * (1 + depth * np.sin(2 * np.pi * hz * np.arange(n_frames) / fps + phase))


def _scene(
    nuisance: Rng, size: int, photo: bool
) -> tuple[np.ndarray, np.ndarray, Distractor | None]:
    """Background, object colour and distractor, drawn from the motion family's distributions
    (plus crops of real photographs when ``photo``)."""
    background = _photo_background(nuisance, size) if photo else _background(nuisance, size)
    colour = _contrasting_colour(nuisance, float(_luma(background.reshape(-1, 3).mean(0))))
    return background, colour, _distractor(nuisance)


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(
        np.asarray(image, dtype=np.float32) / 255.0 for image in load_sample_images().images
    )


def _photo_background(rng: Rng, size: int) -> np.ndarray:
    """A random square crop of one of scikit-learn's two bundled photographs, resized, tinted."""
    photo = _photos()[int(rng.integers(2))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.25, 0.95) * min(h, w))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    at = ((np.arange(size) + 0.5) * side / size).astype(int)
    crop = photo[top + at[:, None], left + at[None, :]]
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    tint = rng.uniform(0.7, 1.3, 3) * rng.uniform(0.6, 1.1)
    return np.clip(crop * tint, 0, 1).astype(np.float32)


# --- appearance ---------------------------------------------------------------------------------


def _appearance_distance(shape: str, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Signed distance (in radii, positive inside) to the shapes of this family."""
    if shape in ("circle", "square", "triangle", "star"):
        return _shape_distance(shape, lx, ly)
    ax, ay, r = np.abs(lx), np.abs(ly), np.hypot(lx, ly)
    if shape == "cross":
        return np.maximum(np.minimum(0.28 - ax, 0.9 - ay), np.minimum(0.28 - ay, 0.9 - ax))
    if shape == "ring":
        return np.minimum(0.95 - r, r - 0.55)
    if shape == "hexagon":
        normals = np.pi / 6 + np.pi * np.arange(6) / 3
        reach = lx[..., None] * np.cos(normals) + ly[..., None] * np.sin(normals)
        return 0.82 - reach.max(-1)
    if shape == "crescent":
        return np.minimum(0.95 - r, np.hypot(lx - 0.5, ly) - 0.7)
    if shape == "tee":
        bar = np.minimum(0.9 - ax, 0.22 - np.abs(ly + 0.65))
        stem = np.minimum(0.22 - ax, 0.85 - np.abs(ly - 0.05))
        return np.maximum(bar, stem)
    if shape == "halfdisc":
        return np.minimum(0.95 - np.hypot(lx, ly + 0.35), ly + 0.35)
    raise ValueError(f"unknown shape {shape!r}")


def plan_appearance(
    class_id: int, clip_seed: int, duration_sec: float, size: int, fps: float, sample_rate: int,
    audio_channels: int,
) -> SpriteClip:  # fmt: skip
    """Draw one clip of class ``class_id`` (0-9) of the appearance family; renders its audio."""
    nuisance = np.random.default_rng([clip_seed, 0])
    n_frames = max(1, round(duration_sec * fps))
    background, colour, distractor = _scene(nuisance, size, photo=False)
    radius = _breathing(nuisance, n_frames, fps, 0.17, 0.28)
    x, y, angle = _wander(nuisance, n_frames, fps, radius)
    audio = _vowel_audio(
        np.random.default_rng([clip_seed, 1]), VOWELS[class_id][1:], duration_sec, sample_rate,
        audio_channels,
    )  # fmt: skip
    return SpriteClip(duration_sec, size, fps, x, y, angle, radius, colour, background, distractor,
                      shape=SHAPES[class_id], audio=audio)  # fmt: skip


def _segments(rng: Rng, duration: float, length: tuple[float, float], gap: tuple[float, float]):
    """Random (start, end) spans that fill the clip: sounds separated by short gaps."""
    spans, at = [], rng.uniform(0.0, gap[1])
    while at < duration:
        end = at + rng.uniform(*length)
        spans.append((at, min(end, duration)))
        at = end + rng.uniform(*gap)
    return spans


def _envelope(t: np.ndarray, spans: list[tuple[float, float]], ramp: float) -> np.ndarray:
    env = np.zeros_like(t)
    for start, end in spans:
        rise = np.clip((t - start) / ramp, 0, 1) * np.clip((end - t) / ramp, 0, 1)
        env = np.maximum(env, np.where((t >= start) & (t <= end), rise, 0.0))
    return env


def _finish(rng: Rng, event: np.ndarray, channels: int, sr: int, level_db: float,
            snr_db: float) -> np.ndarray:  # fmt: skip
    """Normalise, spread to ``channels`` with a random fixed pan, add coloured noise, limit."""
    event = event / max(float(np.sqrt(np.mean(event**2))), 1e-12)
    if channels == 2:
        pan = rng.uniform(0.15, 0.85) * np.pi / 2
        event = np.array([[np.cos(pan)], [np.sin(pan)]]) * event * np.sqrt(2)
    else:
        event = event[None]
    noise = _coloured_noise(rng, event.shape, rng.uniform(0, 2), sr)
    audio = 10 ** (level_db / 20) * (event + noise * 10 ** (-snr_db / 20))
    peak = float(np.abs(audio).max())
    if peak > 0.99:
        audio *= 0.99 / peak
    return audio.astype(np.float32)


def _vowel_audio(rng: Rng, formants: tuple[int, ...], duration: float, sr: int,
                 channels: int) -> np.ndarray:  # fmt: skip
    """A voice singing a vowel in syllables: harmonics of a moving fundamental shaped by the
    vowel's formants (additive source-filter synthesis)."""
    t = np.arange(round(duration * sr)) / sr
    f0 = rng.uniform(85, 300)
    contour = 1 + rng.uniform(-0.15, 0.15) * t / max(duration, 1e-9)  # intonation
    vibrato = 1 + rng.uniform(0.0, 0.02) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
    pitch = f0 * contour * vibrato
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    tract = rng.uniform(0.92, 1.15)  # vocal tract length: every formant scales together
    centres = np.array(formants, dtype=float) * tract * rng.uniform(0.97, 1.03, 3)
    widths = np.array([70.0, 100.0, 140.0]) * rng.uniform(0.8, 1.3, 3)
    gains = np.array([1.0, 0.7, 0.35])
    tilt = rng.uniform(0.6, 1.2)  # source roll-off per octave, in powers of the harmonic number
    voice = np.zeros_like(t)
    for h in range(1, int(min(5000, 0.45 * sr) / (f0 * 0.85)) + 1):
        hz = h * pitch
        resonance = (gains / (1 + ((hz[:, None] - centres) / widths) ** 2)).sum(-1)
        voice += h**-tilt * resonance * np.sin(h * phase) * (hz < 0.45 * sr)
    spans = _segments(rng, duration, (0.2, 0.7), (0.03, 0.2))
    event = voice * _envelope(t, spans, 0.03)
    return _finish(rng, event, channels, sr, rng.uniform(-32, -16), rng.uniform(3, 24))


# --- digits -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digit_scans() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.asarray(data.images, dtype=np.float32) / 16.0, np.asarray(data.target)


def digit_scan_count(digit: int) -> int:
    """How many different handwritten scans of ``digit`` there are (174 to 183)."""
    return int((_digit_scans()[1] == digit).sum())


def plan_digits(
    class_id: int, clip_seed: int, index: int, dataset_seed: int, duration_sec: float, size: int,
    fps: float, sample_rate: int, audio_channels: int,
) -> SpriteClip:  # fmt: skip
    """Draw clip ``index`` of digit ``class_id``: scan number ``index`` in a per-(seed, digit)
    shuffled order, so that the clips of a data set use distinct scans (up to 174 per class)."""
    images, targets = _digit_scans()
    scans = np.flatnonzero(targets == class_id)
    order = np.random.default_rng([dataset_seed, class_id, 2**32 - 2]).permutation(len(scans))
    scan = images[scans[order[index % len(scans)]]]
    nuisance = np.random.default_rng([clip_seed, 0])
    n_frames = max(1, round(duration_sec * fps))
    background, colour, distractor = _scene(nuisance, size, photo=nuisance.uniform() < 0.7)
    radius = _breathing(nuisance, n_frames, fps, 0.2, 0.32)
    x, y, angle = _wander(nuisance, n_frames, fps, radius)
    audio = _dtmf_audio(np.random.default_rng([clip_seed, 1]), DTMF_HZ[class_id], duration_sec,
                        sample_rate, audio_channels)  # fmt: skip
    return SpriteClip(duration_sec, size, fps, x, y, angle, radius, colour, background, distractor,
                      template=scan, audio=audio)  # fmt: skip


def _dtmf_audio(rng: Rng, pair: tuple[int, int], duration: float, sr: int,
                channels: int) -> np.ndarray:  # fmt: skip
    """Key presses of one DTMF digit, off-tune and twisted, through a random telephone band."""
    t = np.arange(round(duration * sr)) / sr
    low, high = (hz * rng.uniform(0.985, 1.015) for hz in pair)
    twist = 10 ** (rng.uniform(-4, 4) / 20)
    tone = np.sin(2 * np.pi * low * t + rng.uniform(0, 6.3)) + twist * np.sin(
        2 * np.pi * high * t + rng.uniform(0, 6.3)
    )
    spans = _segments(rng, duration, (0.07, 0.3), (0.04, 0.2))
    event = tone * _envelope(t, spans, 0.005)
    # Telephone band: a random band-pass (low edge 200-400 Hz, high 2.8-3.6 kHz) by FFT mask.
    spectrum = np.fft.rfft(event)
    hz = np.fft.rfftfreq(len(event), 1 / sr)
    lo_edge, hi_edge = rng.uniform(200, 400), rng.uniform(2800, 3600)
    spectrum *= (
        1 / np.sqrt(1 + (lo_edge / np.maximum(hz, 1.0)) ** 4) / np.sqrt(1 + (hz / hi_edge) ** 8)
    )
    event = np.fft.irfft(spectrum, len(event))
    return _finish(rng, event, channels, sr, rng.uniform(-32, -14), rng.uniform(0, 20))


# --- frames -------------------------------------------------------------------------------------


def _template_cover(template: np.ndarray, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Bilinear ink coverage of a small scan at local coordinates in [-1, 1] (outside: 0)."""
    h, w = template.shape
    padded = np.pad(template, 1)
    u = (lx + 1) / 2 * w + 1.0  # padded-grid coordinates: scan pixel j is centred at j + 1.5
    v = (ly + 1) / 2 * h + 1.0
    u = np.clip(u, 0, w + 1 - 1e-6)
    v = np.clip(v, 0, h + 1 - 1e-6)
    i0, j0 = np.floor(v - 0.5).astype(int), np.floor(u - 0.5).astype(int)
    i0, j0 = np.clip(i0, 0, h), np.clip(j0, 0, w)
    fv, fu = np.clip(v - 0.5 - i0, 0, 1), np.clip(u - 0.5 - j0, 0, 1)
    top = padded[i0, j0] * (1 - fu) + padded[i0, j0 + 1] * fu
    bottom = padded[i0 + 1, j0] * (1 - fu) + padded[i0 + 1, j0 + 1] * fu
    cover = top * (1 - fv) + bottom * fv
    # Sharpen the blurry 8×8 scan into strokes: a soft threshold around half ink.
    inside = (np.abs(lx) <= 1) & (np.abs(ly) <= 1)
    return np.clip((cover - 0.3) * 3.0, 0, 1) * inside


def render_sprite_clip(plan: SpriteClip) -> np.ndarray:
    """(T, S, S, 3) uint8 frames: background, distractor, then the object."""
    n_frames, size = len(plan.x), plan.size
    frames = np.repeat(plan.background[None], n_frames, axis=0)
    for i, image in enumerate(frames):
        if plan.distractor is not None:
            blob = plan.distractor
            cx, cy = blob.start + (blob.end - blob.start) * (i / max(n_frames - 1, 1))
            box, dx, dy = _box(size, cx, cy, 3 * blob.sigma)
            weight = blob.alpha * np.exp(-(dx**2 + dy**2) / (2 * blob.sigma**2))
            image[box] += (blob.colour - image[box]) * weight[..., None]
        radius = float(plan.radius[i])
        box, dx, dy = _box(size, plan.x[i], plan.y[i], 1.45 * radius + 2 / size)
        cos, sin = np.cos(plan.angle[i]), np.sin(plan.angle[i])
        lx, ly = (cos * dx + sin * dy) / radius, (cos * dy - sin * dx) / radius
        if plan.template is not None:
            cover = _template_cover(plan.template, lx, ly)
        else:
            assert plan.shape is not None
            cover = np.clip(0.5 + _appearance_distance(plan.shape, lx, ly) * radius * size, 0, 1)
        image[box] += (plan.colour - image[box]) * cover[..., None]
    return np.clip(frames * 255 + 0.5, 0, 255).astype(np.uint8)
