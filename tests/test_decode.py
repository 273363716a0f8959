"""Clip decoding on real files the tests write: exact pixels and samples from lossless files, frame
choice by time (fps resampling, variable frame rate), audio/video alignment through AAC and
resampling, overflow, clamping, resizing, and a DecodeError for every kind of bad file."""

from __future__ import annotations

import struct
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.media import (
    numbered_frames,
    random_frames,
    tone,
    untimed_matroska,
    write_media,
    write_video,
)
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


# --- damaged files the fuzzer (tests/test_fuzz.py) turned up, and limits ------------------------


def test_a_codec_this_ffmpeg_cannot_decode_is_a_decode_error(tmp_path: Path) -> None:
    # An AVI whose video fourcc is unknown: FFmpeg opens it, with no decoder for the stream.
    data = write_media(tmp_path / "ok.avi", "mpeg4", "pcm_s16le").read_bytes()
    assert data.count(b"FMP4") == 2  # the stream header and the bitmap header
    path = tmp_path / "unknown_codec.avi"
    path.write_bytes(data.replace(b"FMP4", b"ZZZZ"))
    with pytest.raises(DecodeError, match="no decoder for its video codec"):
        decode_clip(path, 0.0, ClipSpec())
    # the audio does not need the video's decoder
    audio_only = ClipSpec(num_frames=0, decode_video=False)
    assert decode_clip(path, 0.0, audio_only).audio.shape == (audio_only.audio_samples,)


def test_metadata_that_is_not_utf8_does_not_stop_decoding(tmp_path: Path) -> None:
    # Old AVI and MP3 files carry Latin-1 titles; the probe keeps such files, so must the decoder.
    path = tmp_path / "latin1_title.mkv"
    frames = random_frames(10, 32, 32, seed=4)
    with av.open(str(path), "w") as container:
        container.metadata["title"] = "TITLE_PLACEHOLDER"
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "bgr0"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = path.read_bytes().replace(b"TITLE_PLACEHOLDER", b"caf\xe9 \xe9t\xe9 latin-1!")
    path.write_bytes(data)
    with pytest.raises(UnicodeDecodeError):  # what PyAV does by default
        av.open(str(path)).close()
    clip = decode_clip(path, 0.0, ClipSpec(num_frames=10, fps=10.0, **VIDEO_ONLY))
    assert source_indices(clip.frames, frames) == list(range(10))


def _untimed_still(path: Path) -> Path:
    """One frame in Matroska whose header says it lasts 0 s (segment duration and tag zeroed,
    DefaultDuration renamed)."""
    return untimed_matroska(write_video(path, random_frames(1, 32, 32)))


def test_a_declared_duration_of_zero_is_unknown_not_a_division_by_zero(tmp_path: Path) -> None:
    path = _untimed_still(tmp_path / "still.mkv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warned of a remainder by 0 (NaN frame times)
        with pytest.raises(DecodeError, match="unknown duration"):
            decode_clip(path, 0.0, ClipSpec(overflow="loop", **VIDEO_ONLY))
        with pytest.raises(DecodeError, match="unknown duration"):
            video_duration(path)
        clip = decode_clip(path, 0.0, ClipSpec(num_frames=3, **VIDEO_ONLY))  # pad: the still
    assert clip.frames.shape == (3, 32, 32, 3)


def _avi_declaring_frame_size(path: Path, width: int, height: int) -> Path:
    """A raw-video AVI (frame size taken from the header) whose header declares another size."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "bgr24"
        for i, image in enumerate(random_frames(5, 32, 32)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = bytearray(path.read_bytes())
    at = data.index(b"strf") + 12  # BITMAPINFOHEADER: size, then width and height
    data[at : at + 8] = struct.pack("<ii", width, -height)
    path.write_bytes(data)
    return path


def test_a_header_declaring_a_giant_frame_is_refused_before_decoding(tmp_path: Path) -> None:
    fine = _avi_declaring_frame_size(tmp_path / "fine.avi", 32, 32)
    assert decode_clip(fine, 0.0, ClipSpec(**VIDEO_ONLY)).frames.shape == (8, 32, 32, 3)
    giant = _avi_declaring_frame_size(tmp_path / "giant.avi", 12000, 12000)  # 432 MB a frame
    with pytest.raises(DecodeError, match="12000x12000 is over the limit"):
        decode_clip(giant, 0.0, ClipSpec(**VIDEO_ONLY))
    with av.open(str(giant)) as container:  # FFmpeg itself would go ahead
        assert container.streams.video[0].codec_context.width == 12000
    # one that FFmpeg refuses itself (100000 x 100000) is a DecodeError too
    with pytest.raises(DecodeError):
        decode_clip(_avi_declaring_frame_size(tmp_path / "absurd.avi", 100_000, 100_000), 0, ClipSpec(**VIDEO_ONLY))  # fmt: skip


def test_the_decoder_picks_frames_by_time_in_an_avi_with_a_millisecond_clock(
    tmp_path: Path,
) -> None:
    # "1000 fps" in the header, 12 real frames a second with empty frames in between: at the
    # manifest's rate (probe: 12) the decoder returns every source frame once.
    from xdc.data.probe import probe_file

    times = np.arange(24) / 12
    path = write_media(tmp_path / "ms.avi", "ffv1", None, frame_times=times, pix_fmt="bgr0")
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == 1000
    fps = probe_file(path).fps
    assert fps == pytest.approx(12.0)
    clip = decode_clip(path, 0.0, ClipSpec(num_frames=24, fps=fps, **VIDEO_ONLY))
    assert clip.frame_times == pytest.approx(np.round(times, 3), abs=1e-3)
    assert len({frame.tobytes() for frame in clip.frames}) == 24


@pytest.mark.parametrize("layout", ["5.1", "7.1", "hexadecagonal"])
def test_planar_audio_with_many_channels_decodes(tmp_path: Path, layout: str) -> None:
    # AAC decodes to planar frames; PyAV reads the planes of one with 8 or more channels past the
    # end of their list (7.1 AAC crashed the process; the fuzzer found it with a damaged 5.1 MP4
    # whose AAC data announced 44 channels). The mono mean of a tone on every channel is the tone,
    # less the low-frequency channel, which the AAC encoder cuts off far below 440 Hz.
    path = write_media(
        tmp_path / "many.mp4", audio="aac", layout=layout, sample_rate=48000, seconds=2.0
    )
    clip = decode_clip(path, 0.5, ClipSpec())  # the window [0.5, 1.5] s lies inside the tone
    audio = clip.audio
    assert audio is not None and audio.shape == (16096,)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * SR / len(audio) == pytest.approx(440, abs=2)
    names = [channel.name for channel in av.AudioLayout(layout).channels]
    share = sum(name != "LFE" for name in names) / len(names)
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(share * 0.5 / np.sqrt(2), rel=0.1)
    audio_only = decode_clip(path, 0.5, ClipSpec(decode_video=False))
    np.testing.assert_array_equal(audio_only.audio, audio)


@pytest.mark.parametrize(
    ("codec", "tolerance"),
    [("pcm_s64le", 1e-6), ("pcm_f64le", 1e-6), ("pcm_s32le", 1e-6), ("pcm_s24le", 1e-6),
     ("pcm_s16le", 1e-4), ("pcm_u8", 1e-2), ("pcm_alaw", 2e-2)],
)  # fmt: skip
def test_every_pcm_sample_format_of_a_wav_decodes_to_the_same_audio(
    tmp_path: Path, codec: str, tolerance: float
) -> None:
    # 64-bit integer samples (the fuzzer made one from a WAV header) have no numpy type in PyAV:
    # a valid file that the probe keeps must decode too.
    spec = ClipSpec(num_frames=0, decode_video=False)
    reference = decode_clip(write_media(tmp_path / "f32.wav", None, "pcm_f32le"), 0.2, spec)
    clip = decode_clip(write_media(tmp_path / f"{codec}.wav", None, codec), 0.2, spec)
    assert clip.audio is not None and reference.audio is not None
    np.testing.assert_allclose(clip.audio, reference.audio, atol=tolerance)
