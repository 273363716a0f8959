"""Rendering of the demo clips (:mod:`xdc.data.demo`): a :class:`ClipPlan` in, frames and audio out.

A motion gives the object's trajectory at the audio rate and the sound sources it causes; frames
draw the object (and the distractor) over the plan's background; audio follows a source-filter
model: the motion makes an excitation (impulses at impacts or reversals for bounce/shake; noise
scaled by speed for slide; a pulse train whose rate follows the angular speed for spin, or whose
amplitude follows the swell for pulse); the material (rubber, wood, metal, glass: partial ratios,
decay times, attack noise) is an impulse response convolved with it. Stereo panning follows the
object's horizontal position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import lgamma

import numpy as np

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
    """Everything random about one clip, drawn from its seed by ``xdc.data.demo.plan_clip``.

    :func:`render_plan` turns it into media.
    """

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


def render_plan(plan: ClipPlan) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and audio (C, N) float32 of a planned clip."""
    return _render_frames(plan), _render_audio(plan)


# --- motions: each returns the trajectory at audio rate and the sound sources it causes ---------


def ease(u: np.ndarray) -> np.ndarray:
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
        x = np.where(u >= 0, x_now + (target - x_now) * ease(u), x)
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
    relative = (1 + depth * np.sin(2 * np.pi * mod_hz * since + phase)) * ease(since / 0.25)
    rate = rng.choice([-1.0, 1.0]) * mean_rate * relative
    x, y, angle = _drift(nuisance, t, radius, 0.15)
    angle = angle[0] + np.cumsum(rate) * (float(t[1] - t[0]) if len(t) > 1 else 0.0)
    pitch = rng.uniform(0.8, 1.25) * np.maximum(relative, 1e-3)
    return Motion(x, y, angle, np.ones_like(t), "tonal", drive=relative, pitch=pitch)


def _pulse(rng: Rng, nuisance: Rng, t: Array, onset: float, radius: float) -> Motion:
    """Swells fast and shrinks slowly, periodically; a steady-pitched hum as loud as the swell."""
    period, depth, rise = rng.uniform(0.35, 0.8), rng.uniform(0.25, 0.5), rng.uniform(0.15, 0.35)
    u = np.mod(t - onset, period) / period
    swell = np.where(u < rise, ease(u / rise), 1.0 - ease((u - rise) / (1 - rise)))
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


# (class rng, nuisance rng, times (N,) s, onset s, object radius) -> the motion.
MotionMaker = Callable[[Rng, Rng, Array, float, float], Motion]
MOTION_MAKERS: dict[str, MotionMaker] = {
    "bounce": _bounce, "slide": _slide, "spin": _spin, "pulse": _pulse, "shake": _shake,
}  # fmt: skip


# --- scene: the nuisances of the picture, drawn with the plan ----------------------------------


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
        mix = ease(
            xx * np.cos(heading)
            + yy * np.sin(heading)
            + 0.5 * (1 - np.cos(heading) - np.sin(heading))
        )
    elif kind == 2:
        cells = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 1, (cells + 1, cells + 1))
        at = grid * cells
        i = np.minimum(at.astype(int), cells - 1)
        f = at - i
        rows = coarse[i] * (1 - f[:, None]) + coarse[i + 1] * f[:, None]
        mix = ease(rows[:, i] * (1 - f) + rows[:, i + 1] * f)
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


# --- frames -----------------------------------------------------------------------------------


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
