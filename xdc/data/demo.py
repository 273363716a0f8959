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

The sound is caused by the motion through a source-filter model (see :mod:`xdc.data.demo_render`,
which renders the clips).

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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from xdc.data.demo_render import (
    MATERIALS,
    MOTION_MAKERS,
    ClipPlan,
    Distractor,
    Material,
    Motion,
    Rng,
    ease,
    render_plan,
)
from xdc.data.manifest import write_manifest
from xdc.errors import ConfigError

__all__ = [
    "AAC_RATES", "DEFAULT_CLASSES", "KEYFRAME_SEC", "MATERIALS", "MATERIAL_OF_SHAPE", "MAX_CLASSES",
    "MOTIONS", "MOTION_MAKERS", "SHAPES", "SOUND_WORDS", "ClipPlan", "Distractor", "Material",
    "Motion", "class_names", "class_spec", "clip_seed", "generate_demo_data", "held_out_indices",
    "plan_clip", "render_clip", "render_plan", "write_clip",
]  # fmt: skip

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
# Sample rates AAC can encode (FFmpeg's encoder refuses the others).
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200,
             96000)  # fmt: skip
KEYFRAME_SEC = 0.5


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
        "duration_sec": len(frames) / job.fps, "has_video": 1,
        "fps": job.fps, "width": job.size, "height": job.size,
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
