"""Procedural demo data: short videos of audio-visual events whose sound is caused by the motion.

Each class is an event: a shape moving in a pattern and sounding like its material. Five motions
(they set the sound's rhythm and envelope) cross four shapes (each made of a material that sets the
sound's timbre); class ``k`` takes motion ``k % 5`` and shape ``(k % 5 + k // 5) % 4``, so that among
the first 10 classes every motion and every shape occurs in two or three classes: neither the shape
nor the motion alone names a class, in video as in audio.

| id | name | video | audio (caused by the motion) |
|---|---|---|---|
| 0 | bounce_circle_thud | circle falls and bounces on an unseen floor | dull low thud at each impact, louder for faster impacts |
| 1 | slide_square_scrape | square slides left/right in stop-go moves | broadband scrape, loudness follows speed |
| 2 | spin_triangle_whine | triangle spins, speeding up and slowing down | ringing inharmonic tone; pitch follows angular speed |
| 3 | pulse_star_chime | star swells quickly and shrinks, periodically | glassy tone sounding while the star is swollen |
| 4 | shake_circle_patter | circle shakes in bursts | dull clicks at each reversal of the shake |
| 5 | bounce_square_knock | square bounces | woody knock at each impact |
| 6 | slide_triangle_screech | triangle slides | metallic screech while it moves |
| 7 | spin_star_whistle | star spins | high glassy whistle gliding with angular speed |
| 8 | pulse_circle_throb | circle pulses | low throb with each swell |
| 9 | shake_square_rattle | square shakes | woody rattle at each reversal |
| 10-19 | bounce_triangle_clang, slide_star_squeak, spin_circle_whoosh, pulse_square_thrum, shake_triangle_jingle, bounce_star_ping, slide_circle_rub, spin_square_buzz, pulse_triangle_hum, shake_star_tinkle | the remaining motion x shape pairs | the same motion rhythms on the other materials |

Sound model (source-filter): the motion makes an excitation (impulses at impacts or reversals for
bounce/shake; noise scaled by speed for slide; a pulse train whose rate follows the angular speed
for spin, or whose amplitude follows the swell for pulse); the material (rubber, wood, metal, glass:
partial ratios, decay times, attack noise) is an impulse response convolved with it. Stereo panning
follows the object's horizontal position.

Nuisance factors, drawn independently of the class from the same distributions for every class:
object position, size (radius 11-19 % of the frame), colour (any hue, kept in contrast with the
background), orientation, slow drift and rotation; speed, period, restitution, gravity, shake
frequency; onset of the event (0-20 % of the clip, object still and silent before); background
(flat, gradient, smooth clouds or stripes, random colours) and a silent moving blurred distractor
in half the clips; loudness (-32 to -16 dB RMS), coloured background noise (spectral slope 0-2)
at 6-24 dB SNR, stereo width, and pitch (material resonances and excitation pitch drawn per clip
from per-class ranges that overlap between classes).

Every clip is a pure function of (seed, class, index), whatever the number of workers. Workers
are started with "spawn": a script that calls ``generate_demo_data`` with ``workers > 1`` needs
the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from math import lgamma
from multiprocessing import get_context
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from xdc.data.manifest import write_manifest
from xdc.errors import ConfigError

DEFAULT_CLASSES: int = 10
MOTIONS = ("bounce", "slide", "spin", "pulse", "shake")
SHAPES = ("circle", "square", "triangle", "star")
MATERIAL_OF_SHAPE = {"circle": "rubber", "square": "wood", "triangle": "metal", "star": "glass"}
SOUND_WORDS = {
    "bounce": ("thud", "knock", "clang", "ping"),
    "slide": ("rub", "scrape", "screech", "squeak"),
    "spin": ("whoosh", "buzz", "whine", "whistle"),
    "pulse": ("throb", "thrum", "hum", "chime"),
    "shake": ("patter", "rattle", "jingle", "tinkle"),
}
MAX_CLASSES = len(MOTIONS) * len(SHAPES)
AAC_RATES = (
    7350,
    8000,
    11025,
    12000,
    16000,
    22050,
    24000,
    32000,
    44100,
    48000,
    64000,
    88200,
    96000,
)
KEYFRAME_SEC = 0.5
Array = np.ndarray
Rng = np.random.Generator


@dataclass(frozen=True)
class Material:
    """Modal impulse response: partials at ``base * ratios`` with their amplitudes and decays."""

    base_hz: tuple[float, float]  # range of the lowest partial, drawn per clip
    ratios: tuple[float, ...]
    amps: tuple[float, ...]
    decays_sec: tuple[float, ...]
    noise: float  # level of the attack noise burst
    noise_decay_sec: float
    noise_smooth: int  # moving-average length (samples at 44.1 kHz) that darkens the attack noise


MATERIALS = {
    "rubber": Material((90, 260), (1.0, 2.1), (1.0, 0.3), (0.035, 0.02), 0.6, 0.012, 60),
    "wood": Material(
        (200, 700), (1.0, 2.76, 5.4, 8.93), (1.0, 0.6, 0.35, 0.2), (0.06, 0.035, 0.02, 0.012),
        0.35, 0.003, 1,
    ),
    "metal": Material(
        (250, 900), (1.0, 1.58, 2.41, 3.37, 4.53), (1.0, 0.8, 0.6, 0.45, 0.3),
        (0.3, 0.25, 0.2, 0.15, 0.1), 0.1, 0.002, 1,
    ),
    "glass": Material((600, 1800), (1.0, 2.71, 5.2), (1.0, 0.4, 0.15), (0.2, 0.1, 0.05), 0.05, 0.001, 1),
}  # fmt: skip


def class_spec(class_id: int) -> tuple[str, str]:
    """(motion, shape) of a class; every pair occurs once among the ``MAX_CLASSES`` classes."""
    motion = class_id % len(MOTIONS)
    return MOTIONS[motion], SHAPES[(motion + class_id // len(MOTIONS)) % len(SHAPES)]


def class_names(classes: int) -> list[str]:
    """Readable names ``motion_shape_sound`` of the first ``classes`` classes."""
    _check_classes(classes)
    names = []
    for k in range(classes):
        motion, shape = class_spec(k)
        names.append(f"{motion}_{shape}_{SOUND_WORDS[motion][SHAPES.index(shape)]}")
    return names


@dataclass
class Motion:
    """The event's trajectory sampled at the audio rate (N samples), and its sound sources.

    ``x``, ``y`` are the centre in fractions of the frame; ``angle`` in radians; ``scale`` multiplies
    the size. ``impact_sec``/``impact_strength`` (K,) are impulses; ``drive`` (N,) scales continuous
    excitation; ``pitch`` (N,) is the rate of the tonal pulse train in multiples of the material's
    lowest partial (None when not tonal).
    """

    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray
    scale: np.ndarray
    kind: str  # "impacts" | "friction" | "tonal"
    impact_sec: np.ndarray = field(default_factory=lambda: np.zeros(0))
    impact_strength: np.ndarray = field(default_factory=lambda: np.zeros(0))
    drive: np.ndarray | None = None
    pitch: np.ndarray | None = None


@dataclass(frozen=True)
class Distractor:
    """A silent blurred blob moving in a straight line across the frame (fractions of the frame)."""

    start: Array  # (2,) x, y at time 0
    end: Array  # (2,) x, y at the end of the clip
    sigma: float
    colour: Array  # (3,)
    alpha: float


@dataclass
class ClipPlan:
    """Everything random about one clip, drawn from its seed; ``render_plan`` turns it into media."""

    class_id: int
    shape: str
    material: str
    duration_sec: float
    size: int
    fps: float
    sample_rate: int
    audio_channels: int
    onset_sec: float
    radius: float  # object size, fraction of the frame
    colour: np.ndarray  # (3,) in [0, 1]
    marker_colour: np.ndarray  # (3,)
    background: np.ndarray  # (size, size, 3) float32 in [0, 1]
    distractor: Distractor | None
    motion: Motion
    partial_hz: np.ndarray  # (P,) material resonances of this clip
    partial_amp: np.ndarray
    partial_decay: np.ndarray
    level_db: float
    snr_db: float
    noise_slope: float
    stereo_width: float
    audio_seed: int


def clip_seed(seed: int, class_id: int, index: int) -> int:
    """The seed of clip ``index`` of class ``class_id`` in a data set generated with ``seed``."""
    return int(np.random.SeedSequence([seed, class_id, index]).generate_state(1, np.uint64)[0])


def plan_clip(
    class_id: int, clip_seed: int, duration_sec: float = 2.0, size: int = 112, fps: float = 25.0,
    sample_rate: int = 44100, audio_channels: int = 2,
) -> ClipPlan:  # fmt: skip
    """Draw the motion and every nuisance factor of one clip (see the module docstring).

    Nuisances come from their own random stream, drawn before anything that depends on the class,
    so that one clip seed gives the same scene, colours and levels in every class.
    """
    motion_name, shape = class_spec(class_id)
    material = MATERIALS[MATERIAL_OF_SHAPE[shape]]
    nuisance = np.random.default_rng([clip_seed, 0])
    rng = np.random.default_rng([clip_seed, 1])  # the class's own parameters
    background = _background(nuisance, size)
    colour = _contrasting_colour(nuisance, float(_luma(background.reshape(-1, 3).mean(0))))
    onset, radius = nuisance.uniform(0.0, 0.2 * duration_sec), nuisance.uniform(0.11, 0.19)
    distractor = _distractor(nuisance)
    level_db, snr_db, noise_slope, stereo_width = nuisance.uniform(
        [-32, 6, 0, 0.3], [-16, 24, 2, 1]
    )
    audio_seed = int(nuisance.integers(2**31))
    t = np.arange(round(duration_sec * sample_rate)) / sample_rate
    motion = MOTION_MAKERS[motion_name](rng, nuisance, t, onset, radius)
    count = len(material.ratios)
    return ClipPlan(
        class_id=class_id, shape=shape, material=MATERIAL_OF_SHAPE[shape], duration_sec=duration_sec,
        size=size, fps=fps, sample_rate=sample_rate, audio_channels=audio_channels, motion=motion,
        partial_hz=rng.uniform(*material.base_hz) * np.array(material.ratios) * rng.uniform(0.98, 1.02, count),
        partial_amp=np.array(material.amps) * rng.uniform(0.7, 1.3, count),
        partial_decay=np.array(material.decays_sec) * rng.uniform(0.8, 1.25, count),
        onset_sec=onset, radius=radius, colour=colour, marker_colour=_marker_colour(colour),
        background=background, distractor=distractor, level_db=level_db, snr_db=snr_db,
        noise_slope=noise_slope, stereo_width=stereo_width, audio_seed=audio_seed,
    )  # fmt: skip


def render_clip(
    class_id: int, clip_seed: int, duration_sec: float = 2.0, size: int = 112, fps: float = 25.0,
    sample_rate: int = 44100, audio_channels: int = 2,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Frames (T, H, W, 3) uint8 RGB and audio (C, N) float32 in [-1, 1] of one clip.

    T = round(duration_sec * fps), H = W = size, C = audio_channels, N = round(duration_sec * sample_rate).
    """
    plan = plan_clip(class_id, clip_seed, duration_sec, size, fps, sample_rate, audio_channels)
    return render_plan(plan)


def render_plan(plan: ClipPlan) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and audio (C, N) float32 of a planned clip."""
    return _render_frames(plan), _render_audio(plan)


# --- motions: each returns the trajectory at audio rate and the sound sources it causes ---------


def _ease(u: np.ndarray) -> np.ndarray:
    """Smooth 0 → 1 step on u in [0, 1] (clipped outside)."""
    u = np.clip(u, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * u)


def _drift(nuisance: Rng, t: Array, radius: float, span: float) -> tuple[Array, Array, Array]:
    """Slow linear drift of the centre and orientation (a nuisance common to every motion)."""
    lo, hi = radius + 0.04, 1.0 - radius - 0.04
    x0, y0 = nuisance.uniform(lo, hi, 2)
    dx, dy = nuisance.uniform(-span, span, 2)
    u = t / max(float(t[-1]), 1e-9)
    x = np.clip(x0 + dx * u, lo, hi)
    y = np.clip(y0 + dy * u, lo, hi)
    angle = nuisance.uniform(0, 2 * np.pi) + nuisance.uniform(-0.4, 0.4) * t
    return x, y, angle


def _bounce(rng: Rng, nuisance: Rng, t: Array, onset: float, radius: float) -> Motion:
    """Dropped at ``onset``, bounces on an unseen floor; an impulse at each impact, as strong as
    the impact is fast. A minimum bounce speed keeps it bouncing for any duration."""
    floor = nuisance.uniform(0.82, 0.96) - radius  # centre height at contact
    drop = rng.uniform(0.45, 0.9) * (floor - radius - 0.02)
    gravity = rng.uniform(6.0, 12.0)  # frame heights / s^2
    restitution, v_min = rng.uniform(0.7, 0.9), np.sqrt(2 * gravity * drop * rng.uniform(0.2, 0.5))
    v_in = np.sqrt(2 * gravity * drop)
    times, speeds_in, speeds_out = [onset + v_in / gravity], [v_in], []
    while True:
        speeds_out.append(max(restitution * speeds_in[-1], v_min))
        if times[-1] > t[-1]:
            break
        times.append(times[-1] + 2 * speeds_out[-1] / gravity)
        speeds_in.append(speeds_out[-1])
    impacts, v_out = np.array(times), np.array(speeds_out)
    k = np.searchsorted(impacts, t, side="right") - 1
    since = t - impacts[np.maximum(k, 0)]
    falling = np.maximum(t - onset, 0.0)
    height = np.where(
        k < 0,
        drop - 0.5 * gravity * falling**2,
        v_out[np.maximum(k, 0)] * since - 0.5 * gravity * since**2,
    )
    x, _, angle = _drift(nuisance, t, radius, 0.3)
    keep = impacts <= t[-1]
    return Motion(x, floor - np.maximum(height, 0.0), angle, np.ones_like(t), "impacts",
                  impacts[keep], (np.array(speeds_in) / speeds_in[0])[keep])  # fmt: skip


def _slide(rng: Rng, nuisance: Rng, t: Array, onset: float, radius: float) -> Motion:
    """Stop-go moves left and right (smooth speed profile, pauses); friction as loud as it is fast."""
    lo, hi = radius + 0.03, 1.0 - radius - 0.03
    x_now, start, direction = nuisance.uniform(lo, hi), onset, rng.choice([-1.0, 1.0])
    x = np.full_like(t, x_now)
    speed = np.zeros_like(t)
    while start < t[-1]:
        duration = rng.uniform(0.3, 0.7)
        target = float(np.clip(x_now + direction * rng.uniform(0.3, 0.7) * (hi - lo), lo, hi))
        if abs(target - x_now) < 0.15 * (hi - lo):  # stuck against an edge: go the other way
            direction = -direction
            continue
        u = (t - start) / duration
        x = np.where(u >= 0, x_now + (target - x_now) * _ease(u), x)
        inside = (u >= 0) & (u < 1)
        speed[inside] = abs(target - x_now) * np.pi / (2 * duration) * np.sin(np.pi * u[inside])
        x_now, direction = target, -direction
        start += duration + rng.uniform(0.05, 0.3)
    _, y, angle = _drift(nuisance, t, radius, 0.05)
    angle = np.full_like(t, angle[0])
    return Motion(x, y, angle, np.ones_like(t), "friction", drive=speed)


def _spin(rng: Rng, nuisance: Rng, t: Array, onset: float, radius: float) -> Motion:
    """Spins up from rest, then its angular speed swings ±20-50 %; a tone whose pitch and
    loudness follow the angular speed."""
    mean_rate = rng.uniform(4.0, 9.0)  # rad / s
    depth, mod_hz, phase = rng.uniform(0.2, 0.5), rng.uniform(0.4, 1.2), rng.uniform(0, 2 * np.pi)
    since = t - onset
    relative = (1 + depth * np.sin(2 * np.pi * mod_hz * since + phase)) * _ease(since / 0.25)
    rate = rng.choice([-1.0, 1.0]) * mean_rate * relative
    x, y, angle = _drift(nuisance, t, radius, 0.15)
    angle = angle[0] + np.cumsum(rate) * (float(t[1] - t[0]) if len(t) > 1 else 0.0)
    pitch = rng.uniform(0.8, 1.25) * np.maximum(relative, 1e-3)
    return Motion(x, y, angle, np.ones_like(t), "tonal", drive=relative, pitch=pitch)


def _pulse(rng: Rng, nuisance: Rng, t: Array, onset: float, radius: float) -> Motion:
    """Swells fast and shrinks slowly, periodically; a steady-pitched hum as loud as the swell."""
    period, depth, rise = rng.uniform(0.35, 0.8), rng.uniform(0.25, 0.5), rng.uniform(0.15, 0.35)
    u = np.mod(t - onset, period) / period
    swell = np.where(u < rise, _ease(u / rise), 1.0 - _ease((u - rise) / (1 - rise)))
    swell = np.where(t >= onset, swell, 0.0)
    x, y, angle = _drift(nuisance, t, radius * (1 + depth), 0.15)
    pitch = rng.uniform(0.4, 0.6) * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
    return Motion(x, y, angle, 1 + depth * swell, "tonal", drive=swell**1.5, pitch=pitch)


def _shake(rng: Rng, nuisance: Rng, t: Array, onset: float, radius: float) -> Motion:
    """Bursts of fast back-and-forth shaking; a click (and two fainter echoes of loose parts) at
    each reversal, as strong as the burst is wide there."""
    reach, heading = rng.uniform(0.05, 0.1), nuisance.uniform(0, np.pi)
    offset = np.zeros_like(t)
    times, strengths, start = [], [], onset
    while start < t[-1]:
        duration, hz = rng.uniform(0.3, 0.6), rng.uniform(4.0, 7.0)
        u = (t - start) / duration
        inside = (u >= 0) & (u < 1)
        offset[inside] = (
            reach * np.sin(np.pi * u[inside]) * np.sin(2 * np.pi * hz * (t[inside] - start))
        )
        for turn in start + (np.arange(int(2 * hz * duration)) + 0.5) / (2 * hz):
            strength = np.sin(np.pi * (turn - start) / duration)
            echoes = turn + np.concatenate([[0.0], rng.uniform(0.005, 0.025, 2)])  # loose parts
            times += list(echoes)
            strengths += list(strength * np.array([1.0, *rng.uniform(0.2, 0.5, 2)]))
        start += duration + rng.uniform(0.1, 0.35)
    x, y, angle = _drift(nuisance, t, radius + reach, 0.1)
    x, y = x + offset * np.cos(heading), y + offset * np.sin(heading)
    times_arr = np.array(times)
    keep = times_arr <= t[-1]
    return Motion(x, y, angle + 2 * offset, np.ones_like(t), "impacts",
                  times_arr[keep], np.array(strengths)[keep])  # fmt: skip


MOTION_MAKERS: dict[str, Callable[..., Motion]] = {
    "bounce": _bounce, "slide": _slide, "spin": _spin, "pulse": _pulse, "shake": _shake,
}  # fmt: skip


# --- pictures ---------------------------------------------------------------------------------


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _random_colour(rng: Rng) -> np.ndarray:
    """A colour of any hue, saturation 0.3-1, value 0.15-1 (HSV), as RGB in [0, 1]."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.3, 1.0), rng.uniform(0.15, 1.0)
    channel = np.clip(np.abs(np.mod(hue * 6 + np.array([0.0, 4.0, 2.0]), 6) - 3) - 1, 0, 1)
    return val * (1 - sat + sat * channel)


def _contrasting_colour(rng: Rng, background_luma: float) -> np.ndarray:
    """An object colour whose brightness differs from the background's by at least 0.25."""
    for _ in range(50):
        colour = _random_colour(rng)
        if abs(float(_luma(colour)) - background_luma) >= 0.25:
            return colour
    return np.full(3, 0.05 if background_luma > 0.5 else 0.95)


def _marker_colour(colour: np.ndarray) -> np.ndarray:
    """A darker or lighter version of the object's colour for the spoke that shows rotation."""
    return colour * 0.35 if _luma(colour) > 0.45 else colour + (1 - colour) * 0.65


def _background(rng: Rng, size: int) -> np.ndarray:
    """(size, size, 3) float32: flat, linear gradient, smooth clouds or stripes between two colours."""
    first = _random_colour(rng)
    second = np.clip(first + rng.uniform(-0.3, 0.3, 3), 0, 1)
    grid = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    kind = rng.integers(4)
    if kind == 0:
        mix = np.zeros((size, size))
    elif kind == 1:
        heading = rng.uniform(0, 2 * np.pi)
        mix = _ease(
            xx * np.cos(heading)
            + yy * np.sin(heading)
            + 0.5 * (1 - np.cos(heading) - np.sin(heading))
        )
    elif kind == 2:
        cells = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 1, (cells + 1, cells + 1))
        at = grid * cells
        i, f = np.minimum(at.astype(int), cells - 1), at - np.minimum(at.astype(int), cells - 1)
        rows = coarse[i] * (1 - f[:, None]) + coarse[i + 1] * f[:, None]
        mix = _ease(rows[:, i] * (1 - f) + rows[:, i + 1] * f)
    else:
        heading, cycles = rng.uniform(0, np.pi), rng.uniform(2, 7)
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * (xx * np.cos(heading) + yy * np.sin(heading)))
    return (first + (second - first) * mix[..., None]).astype(np.float32)  # (size, size, 3)


def _distractor(rng: Rng) -> Distractor | None:
    """A silent blurred blob crossing the frame in half of the clips."""
    if rng.uniform() < 0.5:
        return None
    start, end = rng.uniform(-0.1, 1.1, 2), rng.uniform(-0.1, 1.1, 2)
    return Distractor(
        start, end, rng.uniform(0.05, 0.12), _random_colour(rng), rng.uniform(0.4, 0.8)
    )


def _shape_distance(shape: str, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Signed distance (positive inside, in object radii) to a shape of circumradius ~1 at local
    coordinates (lx, ly); a vertex points along +x so that the marker spoke aims at it."""
    if shape == "circle":
        return 1.0 - np.hypot(lx, ly)
    if shape == "square":
        return 0.82 - np.maximum(np.abs(lx), np.abs(ly))
    if shape == "triangle":
        normals = np.pi / 3 + 2 * np.pi * np.arange(3) / 3
        reach = lx[..., None] * np.cos(normals) + ly[..., None] * np.sin(normals)
        return 0.65 - reach.max(-1)
    sector = 2 * np.pi / 5  # star: radius falls linearly from the tips to the valleys
    off_tip = np.abs(np.mod(np.arctan2(ly, lx) + sector / 2, sector) - sector / 2) / (sector / 2)
    return 0.5 * (1.25 - 0.7 * off_tip - np.hypot(lx, ly))


def _box(
    size: int, cx: float, cy: float, half: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The pixels within ``half`` (frame fractions) of a centre: their slices and offsets dx (1, w),
    dy (h, 1) from the centre; empty when the box is off the frame."""
    x0, x1 = max(0, int((cx - half) * size)), min(size, int(np.ceil((cx + half) * size)) + 1)
    y0, y1 = max(0, int((cy - half) * size)), min(size, int(np.ceil((cy + half) * size)) + 1)
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5) / size - cx
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5) / size - cy
    return (slice(y0, max(y0, y1)), slice(x0, max(x0, x1))), dx[None, :], dy[:, None]


def _render_frames(plan: ClipPlan) -> np.ndarray:
    """(T, S, S, 3) uint8: background, distractor, then the object with a spoke showing its angle.

    Only the pixels near the object (and the distractor) are computed, frame by frame.
    """
    n_frames, size, m = round(plan.duration_sec * plan.fps), plan.size, plan.motion
    frames = np.repeat(plan.background[None], n_frames, axis=0)
    for i, image in enumerate(frames):
        at = min(round(i / plan.fps * plan.sample_rate), len(m.x) - 1)
        if plan.distractor is not None:
            blob = plan.distractor
            cx, cy = blob.start + (blob.end - blob.start) * (i / plan.fps / plan.duration_sec)
            box, dx, dy = _box(size, cx, cy, 3 * blob.sigma)
            weight = blob.alpha * np.exp(-(dx**2 + dy**2) / (2 * blob.sigma**2))
            image[box] += (blob.colour - image[box]) * weight[..., None]
        radius = plan.radius * m.scale[at]
        box, dx, dy = _box(size, m.x[at], m.y[at], 1.35 * radius + 2 / size)
        cos, sin = np.cos(m.angle[at]), np.sin(m.angle[at])
        lx, ly = (cos * dx + sin * dy) / radius, (cos * dy - sin * dx) / radius
        to_pixels = radius * size  # distances in radii → pixels, for one-pixel anti-aliasing
        cover = np.clip(0.5 + _shape_distance(plan.shape, lx, ly) * to_pixels, 0, 1)[..., None]
        spoke = np.minimum(np.minimum(0.12 - np.abs(ly), lx - 0.1), 0.8 - lx)
        marker = cover * np.clip(0.5 + spoke * to_pixels, 0, 1)[..., None]
        image[box] += (plan.colour - image[box]) * cover
        image[box] += (plan.marker_colour - image[box]) * marker
    return np.clip(frames * 255 + 0.5, 0, 255).astype(np.uint8)


# --- sounds -----------------------------------------------------------------------------------


def _convolve(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear convolution by FFT, cut to len(signal)."""
    n = len(signal) + len(kernel) - 1
    fft_len = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(signal, fft_len) * np.fft.rfft(kernel, fft_len)
    return np.fft.irfft(spectrum, fft_len)[: len(signal)]


def _impulse_response(plan: ClipPlan, rng: Rng, max_decay: float) -> np.ndarray:
    """The material's ring: decaying partials (those below 0.45 × sample rate) + attack noise.

    Decays are cut to ``max_decay`` for a driven tone, whose resonances then act as broad formants
    that let the pitch of the drive through instead of ringing at their own frequencies.
    """
    sr, material = plan.sample_rate, MATERIALS[plan.material]
    decays = np.minimum(plan.partial_decay, max_decay)
    length = max(2, int(min(5 * float(decays.max()), 1.5) * sr))
    t = np.arange(length) / sr
    audible = plan.partial_hz < 0.45 * sr
    ring = np.zeros(length)
    for hz, amp, decay in zip(
        plan.partial_hz[audible], plan.partial_amp[audible], decays[audible], strict=True
    ):
        ring += amp * np.exp(-t / decay) * np.sin(2 * np.pi * hz * t)
    smooth = max(1, round(material.noise_smooth * sr / 44100))
    burst = rng.standard_normal(length)
    for _ in range(2):  # two box filters: a gentle low-pass that darkens rubber's attack
        burst = np.convolve(burst, np.ones(smooth) / np.sqrt(smooth), "same")
    ring += material.noise * burst * np.exp(-t / material.noise_decay_sec)
    return ring * np.minimum(1.0, (length - np.arange(length)) / (0.05 * length))  # fade out


def _excitation(plan: ClipPlan, rng: Rng) -> np.ndarray:
    """(N,) source signal caused by the motion: impulses, speed-scaled noise or a pulse train."""
    m, sr = plan.motion, plan.sample_rate
    n = len(m.x)
    if m.kind == "impacts":
        source = np.zeros(n)
        np.add.at(
            source, np.minimum(np.round(m.impact_sec * sr).astype(int), n - 1), m.impact_strength
        )
        return source
    assert m.drive is not None
    if m.kind == "friction":  # grainy noise: white noise with a slowly varying roughness
        roughness = 1 + 0.6 * np.repeat(rng.standard_normal(n // 200 + 1), 200)[:n]
        return rng.standard_normal(n) * roughness * m.drive
    assert m.pitch is not None
    pitch_hz = m.pitch * plan.partial_hz[0]
    # Narrow pulses (1 + cos)^p / 2^p: harmonic n has relative level exp(-n^2 / p), so p is set
    # as high (bright) as the sample rate allows without aliasing at the highest pitch.
    p = float(np.clip((0.5 * sr / pitch_hz.max()) ** 2 / 5, 4, 400))
    phase = 2 * np.pi * np.cumsum(pitch_hz) / sr
    mean = np.exp(lgamma(2 * p + 1) - 2 * lgamma(p + 1) - p * np.log(4))  # over one period
    return (((1 + np.cos(phase)) / 2) ** p - mean) * m.drive


def _coloured_noise(rng: Rng, shape: tuple[int, int], slope: float, sr: int) -> np.ndarray:
    """Noise with power ∝ 1 / f^slope (0 white, 1 pink, 2 brown), unit RMS per channel."""
    spectrum = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    hz = np.maximum(np.fft.rfftfreq(shape[-1], 1 / sr), 20.0)
    noise = np.fft.irfft(spectrum * hz ** (-slope / 2), shape[-1], axis=-1)
    return noise / np.maximum(noise.std(axis=-1, keepdims=True), 1e-12)


def _render_audio(plan: ClipPlan) -> np.ndarray:
    """(C, N) float32 in [-1, 1]: the event panned with the object, plus background noise."""
    rng = np.random.default_rng(plan.audio_seed)
    max_decay = 0.004 if plan.motion.kind == "tonal" else 10.0
    event = _convolve(_excitation(plan, rng), _impulse_response(plan, rng, max_decay))
    event /= max(float(np.sqrt(np.mean(event**2))), 1e-12)
    if plan.audio_channels == 2:  # constant-power pan that follows the object's x
        pan = (np.clip((plan.motion.x - 0.5) * 2 * plan.stereo_width, -1, 1) + 1) * np.pi / 4
        event = np.stack([np.cos(pan), np.sin(pan)]) * event * np.sqrt(2)
    else:
        event = event[None]
    noise = _coloured_noise(rng, event.shape, plan.noise_slope, plan.sample_rate)
    audio = 10 ** (plan.level_db / 20) * (event + noise * 10 ** (-plan.snr_db / 20))
    peak = float(np.abs(audio).max())
    if peak > 0.99:  # limit by scaling, which keeps the SNR
        audio *= 0.99 / peak
    return audio.astype(np.float32)


# --- files ------------------------------------------------------------------------------------


def write_clip(
    path: Path, frames: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int
) -> None:
    """Write (T, H, W, 3) uint8 frames and (C, N) float audio as H.264 yuv420p + AAC in MP4.

    One encoder thread and no macroblock tree, so that the bytes depend only on the input (tested);
    a keyframe every ~0.5 s and none at scene cuts, so that seeking to a random clip start decodes
    little; packets fed in time order; written to a hidden temporary file and renamed, so that an
    interrupted run leaves no truncated video.
    """
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    try:
        _encode(tmp, frames, audio, fps, sample_rate)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _encode(
    path: Path, frames: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int
) -> None:
    gop = str(max(1, round(KEYFRAME_SEC * fps)))
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.codec_context.thread_count = 1
        # mbtree off: with it, this libx264 gives different bytes for the same frames from run to
        # run (measured: 9 of 25 small clips), which breaks "same seed, same data".
        video.options = {"preset": "veryfast", "crf": "20", "g": gop, "keyint_min": gop,
                         "sc_threshold": "0", "threads": "1", "x264-params": "mbtree=0"}  # fmt: skip
        sound = container.add_stream("aac", rate=sample_rate, layout=layout)
        sound.bit_rate = 64000 * audio.shape[0]
        sound.options = {"aac_coder": "fast"}  # 4x faster than the default "twoloop" (measured)
        chunk, written = sound.codec_context.frame_size or 1024, 0
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
            while written < audio.shape[1] and written / sample_rate <= (i + 1) / fps:
                piece = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(audio[:, written : written + chunk]),
                    format="fltp",
                    layout=layout,
                )
                piece.sample_rate, piece.pts = sample_rate, written
                container.mux(sound.encode(piece))
                written += chunk
        container.mux(video.encode())
        container.mux(sound.encode())


@dataclass(frozen=True)
class _Job:
    out_dir: str
    class_id: int
    class_name: str
    index: int
    seed: int
    split: str
    duration_sec: float
    size: int
    fps: float
    sample_rate: int
    audio_channels: int


def _make_clip(job: _Job) -> dict[str, object]:
    """Render, encode and describe one clip (runs in a worker process)."""
    frames, audio = render_clip(
        job.class_id, clip_seed(job.seed, job.class_id, job.index), job.duration_sec, job.size,
        job.fps, job.sample_rate, job.audio_channels,
    )  # fmt: skip
    relative = f"{job.class_name}/{job.index:04d}.mp4"
    write_clip(Path(job.out_dir) / relative, frames, audio, job.fps, job.sample_rate)
    return {
        "path": relative, "label": job.class_name, "split": job.split,
        "duration_sec": len(frames) / job.fps, "fps": job.fps, "width": job.size, "height": job.size,
        "has_audio": 1, "sample_rate": job.sample_rate, "audio_channels": job.audio_channels,
    }  # fmt: skip


def held_out_indices(seed: int, class_id: int, per_class: int, test_fraction: float) -> set[int]:
    """Indices of a class's clips in the test split: round(per_class × test_fraction) of them, at
    least one when test_fraction > 0 and at least one left for training, drawn from the seed."""
    count = round(per_class * test_fraction)
    if test_fraction > 0 and per_class > 1:
        count = min(max(count, 1), per_class - 1)
    order = np.random.default_rng([seed, class_id, 2**32 - 1]).permutation(per_class)
    return {int(i) for i in order[:count]}


def generate_demo_data(
    out_dir: str | Path, classes: int = DEFAULT_CLASSES, per_class: int = 40, seed: int = 0,
    duration_sec: float = 2.0, size: int = 112, fps: float = 25.0, sample_rate: int = 44100,
    audio_channels: int = 2, test_fraction: float = 0.2, workers: int | None = None,
    progress: bool = True,
) -> Path:  # fmt: skip
    """Write ``out_dir/<class>/<index>.mp4`` for every class and ``out_dir/manifest.csv``.

    The split is stratified: each class puts ``round(per_class × test_fraction)`` clips in "test".
    Returns the manifest's path. Raises ``ConfigError`` naming the flag of a bad argument.
    """
    _check_arguments(classes, per_class, seed, duration_sec, size, fps, sample_rate,
                     audio_channels, test_fraction, workers)  # fmt: skip
    out = Path(out_dir)
    names = class_names(classes)
    jobs = []
    for class_id, name in enumerate(names):
        (out / name).mkdir(parents=True, exist_ok=True)
        tests = held_out_indices(seed, class_id, per_class, test_fraction)
        jobs += [
            _Job(str(out), class_id, name, i, seed, "test" if i in tests else "train", duration_sec,
                 size, fps, sample_rate, audio_channels)
            for i in range(per_class)
        ]  # fmt: skip
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    bar = tqdm(total=len(jobs), desc="demo videos", unit="clip", disable=not progress)
    if workers == 1:
        rows = []
        for job in jobs:
            rows.append(_make_clip(job))
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            rows = []
            for row in pool.map(_make_clip, jobs, chunksize=4):
                rows.append(row)
                bar.update()
    bar.close()
    return write_manifest(rows, out / "manifest.csv")


def _check_classes(classes: int) -> None:
    if not 1 <= classes <= MAX_CLASSES:
        raise ConfigError(f"--classes must be between 1 and {MAX_CLASSES} (got {classes})")


def _check_arguments(
    classes: int, per_class: int, seed: int, duration_sec: float, size: int, fps: float,
    sample_rate: int, audio_channels: int, test_fraction: float, workers: int | None,
) -> None:  # fmt: skip
    _check_classes(classes)
    checks = [
        (per_class >= 1, f"--per-class must be at least 1 (got {per_class})"),
        (seed >= 0, f"--seed must be a non-negative integer (got {seed})"),
        (0 < duration_sec <= 600, f"--duration must be in (0, 600] seconds (got {duration_sec})"),
        (
            16 <= size <= 1024 and size % 2 == 0,
            f"--size must be even, 16 to 1024 pixels (got {size})",
        ),
        (0 < fps <= 240, f"--fps must be in (0, 240] (got {fps})"),
        (sample_rate in AAC_RATES, f"--sample-rate must be one of {AAC_RATES} (got {sample_rate})"),
        (audio_channels in (1, 2), f"--audio-channels must be 1 or 2 (got {audio_channels})"),
        (0 <= test_fraction < 1, f"--test-fraction must be in [0, 1) (got {test_fraction})"),
        (workers is None or workers >= 1, f"--workers must be at least 1 (got {workers})"),
        (round(duration_sec * fps) >= 1, "--duration × --fps must make at least one frame"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
