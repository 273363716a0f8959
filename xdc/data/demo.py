"""Procedural demo data in three families (``xdc demo-data --family NAME``) that differ in what
carries the class: ``motion`` (this module: how a shape moves and the sound the motion causes),
``appearance`` and ``digits`` (:mod:`xdc.data.demo_families`: what the object is, with a sound that
identifies it but whose timing has nothing to do with the picture). Every family writes
train / val / test splits: choose settings on ``val``, report ``test`` once, at the end.

The ``motion`` family: short videos of audio-visual events whose sound is caused by the motion.

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

from xdc.atomic import atomic_path
from xdc.data.demo_families import (
    APPEARANCE_NAMES,
    DIGIT_NAMES,
    digit_scan_count,
    plan_appearance,
    plan_digits,
    render_sprite_clip,
)
from xdc.data.demo_render import (
    MATERIALS,
    MOTION_MAKERS,
    ClipPlan,
    Distractor,
    Material,
    Motion,
    _background,
    _contrasting_colour,
    _distractor,
    _luma,
    _marker_colour,
    render_plan,
)
from xdc.data.manifest import write_manifest
from xdc.data.splits import check_fractions, held_out_counts
from xdc.errors import ConfigError
from xdc.processes import die_with_parent
from xdc.progress import track

__all__ = [
    "AAC_RATES", "DEFAULT_CLASSES", "FAMILIES", "KEYFRAME_SEC", "MATERIALS", "MATERIAL_OF_SHAPE", "MAX_CLASSES",
    "MOTIONS", "MOTION_MAKERS", "SHAPES", "SOUND_WORDS", "ClipPlan", "Distractor", "Material",
    "Motion", "class_names", "class_spec", "clip_seed", "generate_demo_data", "held_out_indices",
    "max_classes", "plan_clip", "render_clip", "render_plan", "split_of", "write_clip",
]  # fmt: skip

DEFAULT_CLASSES: int = 10
FAMILIES = ("motion", "appearance", "digits")
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


def max_classes(family: str = "motion") -> int:
    """How many classes a family has."""
    _check_family(family)
    return {"motion": MAX_CLASSES, "appearance": len(APPEARANCE_NAMES), "digits": 10}[family]


def class_names(classes: int, family: str = "motion") -> list[str]:
    """Readable names of the first ``classes`` classes: ``motion_shape_sound`` (motion),
    ``shape_vowel`` (appearance), the digit's name (digits)."""
    _check_classes(classes, family)
    if family == "appearance":
        return list(APPEARANCE_NAMES[:classes])
    if family == "digits":
        return list(DIGIT_NAMES[:classes])
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
    sample_rate: int = 44100, audio_channels: int = 2, family: str = "motion", index: int = 0,
    dataset_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Frames (T, H, W, 3) uint8 RGB and audio (C, N) float32 in [-1, 1] of one clip.

    T = round(duration_sec * fps), H = W = size, C = audio_channels, N = round(duration_sec * sample_rate).
    ``index`` and ``dataset_seed`` matter for ``digits`` only: which handwritten scan the clip shows.
    """
    args = (duration_sec, size, fps, sample_rate, audio_channels)
    if family == "appearance":
        sprite = plan_appearance(class_id, clip_seed, *args)
    elif family == "digits":
        sprite = plan_digits(class_id, clip_seed, index, dataset_seed, *args)
    else:
        _check_family(family)
        return render_plan(plan_clip(class_id, clip_seed, *args))
    assert sprite.audio is not None
    return render_sprite_clip(sprite), sprite.audio


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
    with atomic_path(path, suffix=".mp4") as tmp:
        _encode(tmp, frames, audio, fps, sample_rate)


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
    family: str


def _make_clip(job: _Job) -> dict[str, object]:
    """Render, encode and describe one clip (runs in a worker process)."""
    frames, audio = render_clip(
        job.class_id, clip_seed(job.seed, job.class_id, job.index), job.duration_sec, job.size,
        job.fps, job.sample_rate, job.audio_channels, job.family, job.index, job.seed,
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
    return {i for i, split in split_of(seed, class_id, per_class, test_fraction, 0.0).items()
            if split == "test"}  # fmt: skip


def split_of(
    seed: int, class_id: int, per_class: int, test_fraction: float, val_fraction: float
) -> dict[int, str]:
    """Split of each clip index of a class: ``test``, ``val`` or ``train``, stratified.

    Each held-out split takes round(per_class × fraction) clips, at least one when its fraction is
    above 0, and at least one clip is left for training; test clips are drawn first, from the
    same shuffled order as data sets made before the val split existed.
    """
    order = np.random.default_rng([seed, class_id, 2**32 - 1]).permutation(per_class)
    test, val = held_out_counts(per_class, test_fraction, val_fraction)
    splits = {int(i): "train" for i in order}
    splits.update({int(i): "test" for i in order[:test]})
    splits.update({int(i): "val" for i in order[test : test + val]})
    return splits


def generate_demo_data(
    out_dir: str | Path, classes: int = DEFAULT_CLASSES, per_class: int = 40, seed: int = 0,
    duration_sec: float = 2.0, size: int = 112, fps: float = 25.0, sample_rate: int = 44100,
    audio_channels: int = 2, test_fraction: float = 0.2, workers: int | None = None,
    progress: bool = True, family: str = "motion", val_fraction: float = 0.2,
) -> Path:  # fmt: skip
    """Write ``out_dir/<class>/<index>.mp4`` for every class and ``out_dir/manifest.csv``.

    The split is stratified (:func:`split_of`): each class puts ``round(per_class × fraction)``
    clips in "test" and in "val", the rest in "train". Returns the manifest's path. Raises
    ``ConfigError`` naming the flag of a bad argument.
    """
    _check_arguments(classes, per_class, seed, duration_sec, size, fps, sample_rate,
                     audio_channels, test_fraction, workers, family, val_fraction)  # fmt: skip
    out = Path(out_dir)
    names = class_names(classes, family)
    jobs = []
    for class_id, name in enumerate(names):
        (out / name).mkdir(parents=True, exist_ok=True)
        splits = split_of(seed, class_id, per_class, test_fraction, val_fraction)
        jobs += [
            _Job(str(out), class_id, name, i, seed, splits[i], duration_sec, size, fps,
                 sample_rate, audio_channels, family)
            for i in range(per_class)
        ]  # fmt: skip
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    bar = track(total=len(jobs), desc="demo videos", unit="clip", enabled=progress)
    if workers == 1:
        rows = []
        for job in jobs:
            rows.append(_make_clip(job))
            bar.update()
    else:
        spawn = get_context("spawn")
        with ProcessPoolExecutor(workers, spawn, initializer=die_with_parent) as pool:
            rows = []
            for row in pool.map(_make_clip, jobs, chunksize=4):
                rows.append(row)
                bar.update()
    bar.close()
    return write_manifest(rows, out / "manifest.csv")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"--family must be one of {', '.join(FAMILIES)} (got {family!r})")


def _check_classes(classes: int, family: str = "motion") -> None:
    most = max_classes(family)
    if not 1 <= classes <= most:
        raise ConfigError(
            f"--classes must be between 1 and {most} for --family {family} (got {classes})"
        )


def _check_arguments(
    classes: int, per_class: int, seed: int, duration_sec: float, size: int, fps: float,
    sample_rate: int, audio_channels: int, test_fraction: float, workers: int | None,
    family: str, val_fraction: float,
) -> None:  # fmt: skip
    _check_classes(classes, family)
    check_fractions(test_fraction, val_fraction, ConfigError)
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
        (workers is None or workers >= 1, f"--workers must be at least 1 (got {workers})"),
        (round(duration_sec * fps) >= 1, "--duration × --fps must make at least one frame"),
    ]
    if family == "digits":
        most = min(digit_scan_count(d) for d in range(classes))
        checks.append((
            per_class <= most,
            f"--per-class can be at most {most} for --family digits: every clip shows a "
            f"different handwritten scan (got {per_class})",
        ))  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
