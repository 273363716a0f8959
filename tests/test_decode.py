"""Clip decoding on real files the tests write: exact pixels and samples from lossless files, frame
choice by time (fps resampling, variable frame rate), audio/video alignment through AAC and
resampling, overflow, clamping, resizing, and a DecodeError for every kind of bad file."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.media import numbered_frames, random_frames, tone, write_video
from xdc.data.decode import ClipSpec, clip_duration, decode_clip, video_duration
from xdc.errors import ConfigError, DecodeError

SR = 16000


def source_indices(frames: np.ndarray, source: np.ndarray) -> list[int]:
    """Index of the source frame each decoded frame equals exactly (lossless files)."""
    indices = []
    for frame in frames:
        matches = np.flatnonzero((source == frame).all(axis=(1, 2, 3)))
        assert len(matches) == 1, "decoded frame equals no (or several) source frames"
        indices.append(int(matches[0]))
    return indices


def displayed_at(times: np.ndarray, frame_times: np.ndarray) -> list[int]:
    """Reference rule: the last frame whose time is <= t (the first frame before it)."""
    return [max(0, int(np.searchsorted(frame_times, t + 1e-9, side="right")) - 1) for t in times]


def s16(audio: np.ndarray) -> np.ndarray:
    """What a float signal becomes after PCM s16 coding and decoding to float."""
    return (np.clip(np.round(audio * 32767.0), -32768, 32767) / 32768.0).astype(np.float32)


@pytest.fixture(scope="module")
def lossless_av(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """2 s, 10 fps, 32x32 noise frames + 16 kHz mono PCM (noise over a tone), FFV1 in Matroska."""
    frames = random_frames(20, 32, 32, seed=1)
    rng = np.random.default_rng(2)
    audio = (tone(2.0, SR, freq=440.0, amp=0.3) + 0.2 * rng.uniform(-1, 1, 2 * SR)).astype(
        np.float32
    )
    path = write_video(tmp_path_factory.mktemp("lossless") / "av.mkv", frames, 10.0, audio, SR)
    return path, frames, audio


@pytest.fixture(scope="module")
def frames_30fps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """1 s of distinct lossless frames at 30 fps, no audio."""
    frames = random_frames(30, 32, 32, seed=3)
    return write_video(tmp_path_factory.mktemp("fps") / "v30.mkv", frames, 30.0), frames


def write_interleaved_lossless(
    path: Path, frames: np.ndarray, fps: int, audio: np.ndarray, chunk: int = 1024
) -> Path:
    """FFV1 + PCM mkv whose audio is muxed in ``chunk``-sample packets between the video packets,
    as in real files. (``write_video`` muxes lossless audio as one block at time 0, which a seek
    past 0 skips.) 1024 samples at 16 kHz are exactly 64 ms, so Matroska's millisecond
    timestamps stay exact."""
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)[None, :]
    with av.open(str(path), "w") as container:
        vstream = container.add_stream("ffv1", rate=Fraction(fps))
        vstream.pix_fmt = "bgr0"
        vstream.height, vstream.width = frames.shape[1:3]
        astream = container.add_stream("pcm_s16le", rate=SR, layout="mono")
        next_frame, next_sample = 0, 0
        while next_frame < len(frames) or next_sample < pcm.shape[1]:
            if next_sample >= pcm.shape[1] or (
                next_frame < len(frames) and next_frame / fps <= next_sample / SR
            ):
                image = av.VideoFrame.from_ndarray(frames[next_frame], format="rgb24")
                image.pts = next_frame
                container.mux(vstream.encode(image))
                next_frame += 1
            else:
                piece = np.ascontiguousarray(pcm[:, next_sample : next_sample + chunk])
                sound = av.AudioFrame.from_ndarray(piece, format="s16", layout="mono")
                sound.sample_rate, sound.pts = SR, next_sample
                container.mux(astream.encode(sound))
                next_sample += chunk
        container.mux(vstream.encode())
        container.mux(astream.encode())
    return path


VIDEO_ONLY = dict(resize_short=None, audio_samples=None)


def test_lossless_file_decodes_to_the_same_pixels_and_samples(lossless_av) -> None:
    path, frames, audio = lossless_av
    spec = ClipSpec(
        num_frames=20, fps=10.0, resize_short=None, audio_samples=2 * SR, audio_align="start"
    )
    clip = decode_clip(path, 0.0, spec)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(clip.frames, frames)
    np.testing.assert_allclose(clip.frame_times, np.arange(20) / 10.0, atol=1e-3)
    assert clip.audio is not None and clip.audio.dtype == np.float32
    np.testing.assert_array_equal(clip.audio, s16(audio))
    assert clip.audio_start_sec == 0.0


def test_centered_audio_window_after_a_seek_with_zeros_past_the_end(lossless_av, tmp_path) -> None:
    _, frames, audio = lossless_av
    path = write_interleaved_lossless(tmp_path / "interleaved.mkv", frames, 10, audio)
    spec = ClipSpec(num_frames=8, fps=8.0, resize_short=None, audio_samples=16096)
    clip = decode_clip(path, 1.5, spec)  # clip 1.5-2.5 s runs past the 2 s file
    centre = 1.5 + clip_duration(spec) / 2
    assert clip.audio_start_sec == pytest.approx(centre - 16096 / (2 * SR), abs=0.5 / SR)
    first = round(clip.audio_start_sec * SR)
    assert clip.audio is not None
    inside = 2 * SR - first
    np.testing.assert_array_equal(clip.audio[:inside], s16(audio)[first:])
    assert not clip.audio[inside:].any(), "audio after the end of the stream must be zero"
    np.testing.assert_array_equal(clip.frames[0], frames[15])


def test_millisecond_timestamps_do_not_tear_the_audio(lossless_av, tmp_path) -> None:
    """1000-sample packets are 62.5 ms: Matroska rounds their times to 62 or 63 ms. The window
    must still be the source shifted by one constant (no gaps or repeats at packet boundaries),
    within 1 ms of the requested time."""
    _, frames, audio = lossless_av
    path = write_interleaved_lossless(tmp_path / "ms.mkv", frames, 10, audio, chunk=1000)
    expected = s16(audio)
    for start in (0.3, 0.77):  # windows inside the 2 s file
        clip = decode_clip(path, start, ClipSpec(resize_short=None))
        assert clip.audio is not None
        first = round(clip.audio_start_sec * SR)
        shifts = [
            shift
            for shift in range(-16, 17)
            if np.array_equal(clip.audio, expected[first + shift : first + shift + 16096])
        ]
        assert len(shifts) == 1, "the audio window is not one contiguous piece of the source"


def test_audio_before_the_stream_is_zero(lossless_av) -> None:
    path, _, audio = lossless_av
    clip = decode_clip(path, 0.0, ClipSpec(resize_short=None))  # window starts at -3 ms
    lead = -round(clip.audio_start_sec * SR)
    assert lead == 48 and clip.audio is not None
    assert not clip.audio[:lead].any()
    np.testing.assert_array_equal(clip.audio[lead:], s16(audio)[: 16096 - lead])


def test_lower_fps_skips_source_frames(frames_30fps) -> None:
    path, frames = frames_30fps
    clip = decode_clip(path, 0.2, ClipSpec(num_frames=5, fps=10.0, **VIDEO_ONLY))
    assert source_indices(clip.frames, frames) == [6, 9, 12, 15, 18]
    np.testing.assert_allclose(clip.frame_times, np.array([6, 9, 12, 15, 18]) / 30, atol=1e-3)


def test_higher_fps_repeats_source_frames(frames_30fps) -> None:
    path, frames = frames_30fps
    clip = decode_clip(path, 0.1, ClipSpec(num_frames=8, fps=60.0, **VIDEO_ONLY))
    assert source_indices(clip.frames, frames) == [3, 3, 4, 4, 5, 5, 6, 6]


def test_variable_frame_rate_picks_the_frame_displayed_at_each_time(tmp_path: Path) -> None:
    times = np.array([0.0, 0.05, 0.21, 0.23, 0.5, 0.52, 0.9, 0.95, 1.3, 1.31, 1.7, 1.9])
    frames = random_frames(len(times), 32, 32, seed=4)
    path = write_video(tmp_path / "vfr.mkv", frames, fps=10.0, frame_times=times.tolist())
    for start in (0.0, 0.45, 1.05):
        clip = decode_clip(path, start, ClipSpec(num_frames=6, fps=7.0, **VIDEO_ONLY))
        expected = displayed_at(start + np.arange(6) / 7.0, times)
        assert source_indices(clip.frames, frames) == expected
        np.testing.assert_allclose(clip.frame_times, times[expected], atol=1e-6)


def burst_file(path: Path, onset_sec: float, sample_rate: int = 44100) -> Path:
    """2 s H.264 + AAC stereo at 44.1 kHz: silence, then a 1 kHz tone burst from ``onset_sec``."""
    t = np.arange(2 * sample_rate) / sample_rate
    burst = np.where(
        (t >= onset_sec) & (t < onset_sec + 0.2),
        0.6 * np.sin(2 * np.pi * 1000 * (t - onset_sec)),
        0,
    )
    audio = np.stack([burst, burst]).astype(np.float32)
    return write_video(path, numbered_frames(50), 25.0, audio, sample_rate, lossless=False)


@pytest.mark.parametrize(("start", "align"), [(0.8, "center"), (0.95, "start"), (0.31, "center")])
def test_tone_burst_lands_on_the_expected_sample(tmp_path: Path, start: float, align: str) -> None:
    onset = 1.1237
    path = burst_file(tmp_path / "burst.mp4", onset)
    spec = ClipSpec(audio_align=align)  # type: ignore[arg-type]
    clip = decode_clip(path, start, spec)
    expected_start = start + (0.5 - 16096 / (2 * SR) if align == "center" else 0.0)
    assert clip.audio_start_sec == pytest.approx(expected_start, abs=0.5 / SR)
    assert clip.audio is not None
    found = int(np.flatnonzero(np.abs(clip.audio) > 0.3)[0])
    expected = (onset - clip.audio_start_sec) * SR
    assert abs(found - expected) <= SR / 1000, f"onset at sample {found}, expected {expected:.1f}"
    assert np.abs(clip.audio).max() < 0.7  # mono = mean of two equal channels, not their sum


def test_pad_repeats_the_last_frame_and_loop_wraps(tmp_path: Path) -> None:
    frames = random_frames(10, 32, 32, seed=5)
    path = write_video(tmp_path / "v10.mkv", frames, fps=10.0)  # 1 s
    pad = decode_clip(path, 0.6, ClipSpec(num_frames=8, fps=10.0, **VIDEO_ONLY))
    assert pad.start_sec == 0.6
    assert source_indices(pad.frames, frames) == [6, 7, 8, 9, 9, 9, 9, 9]
    loop_spec = ClipSpec(num_frames=8, fps=10.0, overflow="loop", **VIDEO_ONLY)
    loop = decode_clip(path, 0.6, loop_spec)
    assert source_indices(loop.frames, frames) == [6, 7, 8, 9, 0, 1, 2, 3]
    longer = decode_clip(
        path, 0.55, ClipSpec(num_frames=12, fps=5.0, overflow="loop", **VIDEO_ONLY)
    )
    expected = displayed_at(np.mod(0.55 + np.arange(12) / 5.0, 1.0), np.arange(10) / 10.0)
    assert source_indices(longer.frames, frames) == expected
    # the manifest's duration is used when given; 0.3 + 3 / 5 falls a hair below 0.9 in floats
    # and must still wrap to the first frame
    spec = ClipSpec(num_frames=5, fps=5.0, overflow="loop", **VIDEO_ONLY)
    short = decode_clip(path, 0.3, spec, duration_sec=0.9)
    assert source_indices(short.frames, frames) == [3, 5, 7, 0, 2]


def test_start_is_clamped_into_the_video(frames_30fps) -> None:
    path, frames = frames_30fps
    spec = ClipSpec(num_frames=4, fps=10.0, **VIDEO_ONLY)
    before = decode_clip(path, -2.0, spec)
    assert before.start_sec == 0.0 and source_indices(before.frames, frames) == [0, 3, 6, 9]
    after = decode_clip(path, 7.0, spec)  # beyond the 1 s file: the clip is made to fit
    assert after.start_sec == pytest.approx(0.6)
    assert source_indices(after.frames, frames) == [18, 21, 24, 27]
    assert video_duration(path) == pytest.approx(1.0)


@pytest.mark.parametrize(("height", "width"), [(32, 48), (48, 32), (40, 40)])
def test_resize_sets_the_short_side_and_keeps_the_aspect(tmp_path: Path, height, width) -> None:
    colour = np.array([200, 60, 30], np.uint8)
    frames = np.broadcast_to(colour, (5, height, width, 3)).copy()
    path = write_video(tmp_path / "flat.mkv", frames, fps=10.0)
    clip = decode_clip(path, 0.0, ClipSpec(num_frames=2, resize_short=16, audio_samples=None))
    short, long = sorted((height, width))
    expected_long = round(long * 16 / short)
    assert clip.frames.shape[1:3] == (
        (16, expected_long) if height <= width else (expected_long, 16)
    )
    assert np.abs(clip.frames.astype(int) - colour).max() <= 2  # a flat frame stays flat


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=SR, layout="mono")
        samples = (tone(0.5) * 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = SR
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def truncated(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def test_every_bad_file_raises_decode_error_naming_file_and_reason(tmp_path: Path) -> None:
    video_only = write_video(tmp_path / "silent.mkv", random_frames(20, 32, 32), fps=10.0)
    lossy = burst_file(tmp_path / "lossy.mp4", 1.0)
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "notes.txt").write_text("not a video\n")
    cases = [
        (tmp_path / "missing.mp4", ClipSpec(), 0.0, "file not found"),
        (tmp_path / "noise.mp4", ClipSpec(), 0.0, "cannot open"),
        (tmp_path / "notes.txt", ClipSpec(), 0.0, "cannot open"),
        (video_only, ClipSpec(), 0.0, "no audio stream"),
        (write_audio_only(tmp_path / "sound.wav"), ClipSpec(audio_samples=None), 0.0, "no video"),
        # the index of an MP4 is written last: cut it off and the file cannot be opened
        (truncated(lossy, tmp_path / "cut.mp4", 0.6), ClipSpec(), 0.0, "cannot open"),
        # a cut Matroska file opens and decodes until the cut
        (
            truncated(video_only, tmp_path / "cut.mkv", 0.4),
            ClipSpec(audio_samples=None),
            1.0,
            "truncated",
        ),
    ]
    for path, spec, start, reason in cases:
        with pytest.raises(DecodeError) as caught:
            decode_clip(path, start, spec)
        assert caught.value.path == str(path)
        assert reason in caught.value.reason and str(path) in str(caught.value)
    with pytest.raises(DecodeError, match="cannot probe"):
        video_duration(tmp_path / "noise.mp4")
    # the intact files decode
    assert decode_clip(video_only, 1.0, ClipSpec(audio_samples=None)).frames.shape[0] == 8


def test_clip_spec_rejects_impossible_values() -> None:
    with pytest.raises(ConfigError, match="fps"):
        ClipSpec(fps=0)
    with pytest.raises(ConfigError, match="overflow"):
        ClipSpec(overflow="wrap")  # type: ignore[arg-type]
