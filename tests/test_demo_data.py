"""The procedural demo data: files, manifest, determinism, audio-visual synchrony, nuisance factors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest

from xdc.data.demo import (
    MAX_CLASSES,
    class_names,
    class_spec,
    clip_seed,
    generate_demo_data,
    plan_clip,
    render_clip,
    render_plan,
    write_clip,
)
from xdc.data.manifest import MANIFEST_COLUMNS, read_manifest
from xdc.errors import ConfigError

SMALL = dict(duration_sec=1.0, size=32, fps=25.0, sample_rate=16000, audio_channels=2)


def _generate(out: Path, seed: int = 0, workers: int = 1) -> Path:
    return generate_demo_data(
        out,
        classes=3,
        per_class=2,
        seed=seed,
        test_fraction=0.5,
        workers=workers,
        progress=False,
        **SMALL,
    )


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray, int, list[bool]]:
    """(T, H, W, 3) frames, (C, N) audio, audio rate and the keyframe flag of each video packet."""
    with av.open(str(path)) as container:
        keyframes = [p.is_keyframe for p in container.demux(video=0) if p.size]
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return frames, audio, rate, keyframes


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    _generate(out)
    return out


def test_layout_and_manifest_describe_the_files(demo_dir: Path) -> None:
    manifest = read_manifest(demo_dir / "manifest.csv")
    names = class_names(3)
    assert len(manifest) == 6 and manifest.label_names == sorted(names)
    assert sorted(p.name for p in demo_dir.iterdir()) == sorted([*names, "manifest.csv"])
    for i, row in enumerate(manifest.rows):
        assert all(row[column] != "" for column in MANIFEST_COLUMNS), row
        assert manifest.path(i).is_file() and Path(row["path"]).parent.name == row["label"]
        assert (row["width"], row["height"], row["fps"], row["duration_sec"]) == (
            "32",
            "32",
            "25",
            "1",
        )
        assert (row["has_audio"], row["sample_rate"], row["audio_channels"]) == ("1", "16000", "2")
    for name in names:  # stratified: one test clip and one training clip per class
        splits = sorted(r["split"] for r in manifest.rows if r["label"] == name)
        assert splits == ["test", "train"]


def test_every_file_decodes_to_the_declared_video_and_audio(demo_dir: Path) -> None:
    manifest = read_manifest(demo_dir / "manifest.csv")
    for i in range(len(manifest)):
        frames, audio, rate, keyframes = _decode(manifest.path(i))
        assert frames.shape == (25, 32, 32, 3)
        assert rate == 16000 and audio.shape[0] == 2
        assert abs(audio.shape[1] / rate - 1.0) < 1024 / rate + 1e-9  # AAC pads its last frame
        assert np.abs(audio).max() > 1e-3
        # A keyframe every 0.5 s (12 frames at 25 fps) so that seeking to a clip start is cheap.
        assert [k for k, flag in enumerate(keyframes) if flag] == [0, 12, 24]


def test_encoded_file_keeps_the_rendered_picture_and_sound(tmp_path: Path) -> None:
    frames, audio = render_clip(4, 11, duration_sec=1.0, size=64, fps=25.0, sample_rate=16000)
    write_clip(tmp_path / "clip.mp4", frames, audio, 25.0, 16000)
    decoded, sound, _, _ = _decode(tmp_path / "clip.mp4")
    error = decoded.astype(float) - frames
    assert 10 * np.log10(255**2 / (error**2).mean()) > 28  # PSNR in dB: lossy (4:2:0), but close
    n = audio.shape[1]
    # No delay between the streams: the decoded sound lines up with the rendered one.
    assert np.corrcoef(sound[:, :n].ravel(), audio.ravel())[0, 1] > 0.8


def test_encoding_the_same_clip_gives_the_same_bytes(tmp_path: Path) -> None:
    # A clip on which libx264 with its default macroblock tree gave 5 different files in 8 runs.
    frames, audio = render_clip(4, clip_seed(0, 4, 0), 1.0, 48, 25.0, 16000, 1)
    for i in range(6):
        write_clip(tmp_path / f"{i}.mp4", frames, audio, 25.0, 16000)
    assert len({(tmp_path / f"{i}.mp4").read_bytes() for i in range(6)}) == 1


def test_same_seed_same_data_whatever_the_workers_other_seed_other_data(
    demo_dir: Path, tmp_path: Path
) -> None:
    again = _generate(tmp_path / "again", workers=2).parent
    other = _generate(tmp_path / "other", seed=1).parent
    text = (demo_dir / "manifest.csv").read_text()
    assert (again / "manifest.csv").read_text() == text
    for row in read_manifest(demo_dir / "manifest.csv").rows:
        first, second, third = (_decode(root / row["path"]) for root in (demo_dir, again, other))
        assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
        assert (demo_dir / row["path"]).read_bytes() == (again / row["path"]).read_bytes()
        assert not np.array_equal(first[0], third[0]) and not np.array_equal(first[1], third[1])


def test_render_clip_is_a_pure_function_of_its_seed() -> None:
    frames, audio = render_clip(2, 5, **SMALL)
    assert frames.shape == (25, 32, 32, 3) and frames.dtype == np.uint8
    assert audio.shape == (2, 16000) and audio.dtype == np.float32
    assert np.abs(audio).max() <= 1.0
    again = render_clip(2, 5, **SMALL)
    assert np.array_equal(frames, again[0]) and np.array_equal(audio, again[1])
    other = render_clip(2, 6, **SMALL)
    assert not np.array_equal(frames, other[0]) and not np.array_equal(audio, other[1])


def _object_centres(frames: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(T, 2) x, y in pixels of the pixels that differ from the background (the object)."""
    moved = np.abs(frames.astype(float) - background * 255).sum(-1) > 40
    ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
    count = moved.sum((1, 2))
    assert count.min() > 20, "the object must be visible in every frame"
    return np.stack([(moved * xs).sum((1, 2)) / count, (moved * ys).sum((1, 2)) / count], axis=1)


def _envelope(audio: np.ndarray, sample_rate: int, window_sec: float) -> np.ndarray:
    hop = int(window_sec * sample_rate)
    mono = audio.mean(0)[: len(audio[0]) // hop * hop]
    return np.sqrt((mono.reshape(-1, hop) ** 2).mean(1))


@pytest.mark.parametrize("seed", [3, 8])
def test_bounce_sounds_at_the_impacts_seen_in_the_frames(seed: int) -> None:
    assert class_spec(0)[0] == "bounce"
    plan = plan_clip(0, seed, duration_sec=2.0, size=64, fps=25.0, sample_rate=16000)
    plan = dataclasses.replace(plan, distractor=None)  # so that changed pixels are the object only
    frames, audio = render_plan(plan)
    impacts = plan.motion.impact_sec
    assert len(impacts) >= 3
    # Video: at each impact the object is at its lowest point on screen (largest y).
    height = _object_centres(frames, plan.background)[:, 1]
    for t in impacts:
        k = int(round(t * plan.fps))
        if 2 <= k < len(frames) - 2:
            assert height[k] >= height[k - 2 : k + 3].max() - 0.75, (t, height[k - 2 : k + 3])
    # Audio: loud just after each impact, quiet just before it; the loudest moments are impacts.
    envelope = _envelope(audio, 16000, 0.01)
    for t in impacts:
        k = int(t / 0.01)
        assert envelope[k : k + 3].max() > 4 * envelope[max(0, k - 6) : k - 1].mean(), t
    loudest = np.argsort(envelope)[::-1][:3] * 0.01
    assert np.abs(loudest[:, None] - impacts[None, :]).min(1).max() < 0.03


def test_slide_is_loud_while_the_object_moves() -> None:
    assert class_spec(1)[0] == "slide"
    plan = plan_clip(1, 3, duration_sec=2.0, size=64, fps=25.0, sample_rate=16000, audio_channels=1)
    frames, audio = render_plan(dataclasses.replace(plan, distractor=None))
    # Speed between frames k and k+1, and loudness over the same 40 ms.
    speed = np.abs(np.diff(_object_centres(frames, plan.background)[:, 0]))
    loudness = _envelope(audio, 16000, 0.04)[: len(speed)]

    def correlation(lag: int) -> float:
        return float(np.corrcoef(speed[10:40], loudness[10 + lag : 40 + lag])[0, 1])

    by_lag = {lag: correlation(lag) for lag in range(-4, 5)}
    best = max(by_lag, key=by_lag.__getitem__)
    # The sound peaks with the speed or up to two frames later (the material keeps ringing).
    assert best in (0, 1, 2) and by_lag[best] > 0.7 and by_lag[0] > 0.5, by_lag


def test_nuisance_factors_vary_within_a_class_and_do_not_depend_on_it() -> None:
    plans = [plan_clip(0, clip_seed(0, 0, i), **SMALL) for i in range(6)]
    for attribute in ("radius", "onset_sec", "level_db", "snr_db"):
        assert np.std([getattr(p, attribute) for p in plans]) > 0
    backgrounds = np.array([p.background.mean((0, 1)) for p in plans])
    assert backgrounds.std(0).max() > 0.05
    assert np.array([p.colour for p in plans]).std(0).max() > 0.05
    assert np.std([p.partial_hz[0] for p in plans]) > 10  # pitch
    frames = np.array([render_plan(p)[0].mean((0, 1, 2)) for p in plans])
    assert frames.std(0).max() > 10  # mean colour of whole clips differs
    # The same clip seed in another class gives the same scene: nuisances ignore the class.
    twin = plan_clip(7, clip_seed(0, 0, 0), **SMALL)
    assert np.array_equal(twin.background, plans[0].background)
    assert np.array_equal(twin.colour, plans[0].colour) and twin.radius == plans[0].radius
    assert twin.shape != plans[0].shape


def test_class_names_cross_motions_and_shapes() -> None:
    names = class_names(MAX_CLASSES)
    assert len(set(names)) == MAX_CLASSES == 20 and names[0] == "bounce_circle_thud"
    assert len({class_spec(k) for k in range(MAX_CLASSES)}) == MAX_CLASSES
    first_ten = [class_spec(k) for k in range(10)]
    for part in (0, 1):  # neither the motion nor the shape alone tells the class
        values = [spec[part] for spec in first_ten]
        assert min(values.count(v) for v in values) >= 2


@pytest.mark.parametrize(
    ("arguments", "flag"),
    [
        (dict(classes=MAX_CLASSES + 1), "--classes"),
        (dict(classes=0), "--classes"),
        (dict(per_class=0), "--per-class"),
        (dict(size=33), "--size"),
        (dict(sample_rate=12345), "--sample-rate"),
        (dict(audio_channels=6), "--audio-channels"),
        (dict(test_fraction=1.0), "--test-fraction"),
    ],
)
def test_bad_arguments_name_the_flag(tmp_path: Path, arguments: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        generate_demo_data(tmp_path, progress=False, **arguments)
    assert not any(tmp_path.iterdir())


def test_class_names_rejects_too_many_classes() -> None:
    with pytest.raises(ConfigError, match="--classes"):
        class_names(MAX_CLASSES + 1)
