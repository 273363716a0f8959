"""Clip decoding with PyAV: T frames at a target frame rate and the aligned mono audio window.

One clip costs one ``av.open`` and at most one seek: the decoder seeks (backward, to a keyframe)
a little before the earliest time the clip needs, then demuxes the video and audio streams in a
single pass and stops as soon as both are covered.

Time conventions (all in seconds, on the file's presentation timeline):

- Target frame times are ``t_i = start_sec + i / fps``. The frame chosen for ``t_i`` is the frame
  being displayed at ``t_i``: the last frame whose timestamp is ``<= t_i`` (plus 1 ms, which absorbs
  the millisecond rounding of Matroska timestamps). Before the first frame, the first frame.
  This works for variable frame rates and for target rates above (frames repeat) or below (frames
  are skipped) the source rate. Only the chosen frames are converted to RGB (and scaled, by
  swscale, in the same step).
- ``start_sec < 0`` is clamped to 0. A start at or beyond the end of the video is clamped to
  ``max(0, duration - clip_duration)`` so that the clip fits. A start inside the video whose clip
  runs past the end is kept, and ``ClipSpec.overflow`` decides: ``"pad"`` repeats the last frame,
  ``"loop"`` wraps the target times modulo the video duration (frames from the beginning).
- The audio window has ``audio_samples`` samples at ``sample_rate``; with ``audio_align="center"``
  it is centred on the clip's span ``[start_sec, start_sec + clip_duration)``, with ``"start"`` it
  begins at ``start_sec``. Its first sample sits on the sample grid: ``audio_start_sec`` is the
  ideal start rounded to the nearest ``1 / sample_rate``. Samples are placed by their timestamps
  (after swresample, whose output timestamps already account for its filter delay), so audio is
  aligned with video within a millisecond (exactly, where timestamps are exact, as in MP4).
  Audio outside the stream (before its first sample, after its last, in gaps) is zero; audio is
  never looped, even with ``overflow="loop"``. Mono is the mean of the channels (so it cannot
  clip), taken before resampling.
- Times are the file's own timestamps: for the rare file whose timeline does not start at 0
  (some MPEG-TS), ``start_sec`` is on that timeline too.
- A segment (``decode_clip(..., segment=(lo, hi))``: a row of a Kinetics or AudioSet list, 10 s of
  a longer video) plays the part of the whole video: the start is clamped into ``[lo, hi)`` by the
  rules above (``lo`` for 0, ``hi`` for the end), ``pad`` repeats the last frame shown before
  ``hi``, ``loop`` wraps to ``lo``, and audio outside ``[lo, hi)`` (on the sample grid:
  ``round(lo * rate)`` to ``round(hi * rate)``) is zero. Nothing outside the segment reaches the clip.
- Audio only (``ClipSpec.decode_video=False``): no video stream is needed and no frame is decoded;
  the audio window is placed by the same rules. With ``num_frames=0`` the clip's span is the audio
  window itself (audio-only files: the window starts at ``start_sec``, whatever the alignment).
- Audio is read from the seek point on: an audio packet that starts before the keyframe the seek
  lands on is not seen. Real files interleave short packets, so this never matters, except for
  files that hold their audio in a few long blocks (a whole PCM track in one Matroska block).
- Frame rate: frames are chosen by their timestamps, never by a declared rate, so a file whose
  header declares its time base as its rate (an AVI with a millisecond clock: "1000 fps", empty
  frames in the gaps) gives the frames a viewer sees; at the manifest's ``fps`` (the real rate,
  ``xdc.data.probe``) every source frame once.

Whatever the file holds, ``decode_clip`` returns a clip or raises ``DecodeError``: FFmpeg's errors
are wrapped with their message, a codec this FFmpeg cannot decode and a frame larger than
``MAX_FRAME_PIXELS`` (a damaged header) are refused before anything is decoded, audio that PyAV
cannot hand over as numpy arrays (planar with 8 or more channels, as 7.1 AAC; 64-bit integer
samples) is converted by FFmpeg first, and any other error on a damaged file becomes a
``DecodeError`` whose reason starts with "unexpected error".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import av.error
import numpy as np

from xdc.data.audio_window import AudioWindow
from xdc.data.probe import MAX_FRAME_PIXELS
from xdc.errors import ConfigError, DecodeError, XdcError

# What PyAV raises for bad files: FFmpeg errors, OS errors, and undecodable text (a subtitle).
_AV_ERRORS = (av.error.FFmpegError, OSError, UnicodeDecodeError)
# swscale threads: PyAV >= 17 defaults to one per CPU, which only costs on small frames and in
# DataLoader workers; older versions have no such argument and scale on one thread.
_RGB24 = (
    {"format": "rgb24", "threads": 1}
    if int(av.__version__.split(".")[0]) >= 17
    else {"format": "rgb24"}
)
# AVFrame's fixed list of plane pointers: PyAV cannot read planar audio with this many channels.
_PYAV_PLANE_POINTERS = 8
# Sample formats PyAV's AudioFrame.to_ndarray converts (the others are converted first).
_NUMPY_AUDIO_FORMATS = frozenset(
    ["dbl", "dblp", "flt", "fltp", "s16", "s16p", "s32", "s32p", "u8", "u8p"]
)
# Seek this much before the earliest time needed: gives the audio decoder (AAC frames overlap) and
# swresample's filter a few frames of history, and lands safely before keyframes at the exact time.
SEEK_MARGIN_SEC = 0.05
# Tolerance of "frame pts <= target time": Matroska stores milliseconds, so 30 fps frames sit up to
# 0.5 ms away from k/30.
FRAME_TIME_EPS_SEC = 1e-3
# Codec threads of the video decoder. The loader runs one decoder per DataLoader worker; measured on
# 112x112 H.264, extra threads only cost (frame threading adds a frame of latency per thread after
# each seek, slice threading has one slice to work on).
VIDEO_DECODER_THREADS = 1
# When the video ends (EOF) this much earlier than the declared duration and the clip needs frames
# there, the file is treated as truncated rather than padded silently.
TRUNCATION_TOLERANCE_SEC = 0.5
# A declared duration beyond this (a year) is a damaged header, not a recording: taken as unknown.
_MAX_DURATION_SEC = 366 * 24 * 3600.0


@dataclass(frozen=True)
class ClipSpec:
    """What to decode for one clip (see the module docstring for the time conventions)."""

    num_frames: int = 8
    """Frames per clip (T); 0 (audio only): the clip's span is the audio window."""
    fps: float = 8.0
    """Target frame rate; frames are chosen from the source by time."""
    resize_short: int | None = 128
    """Resize so that the short side has this many pixels (aspect kept); None = source size."""
    audio_samples: int | None = 16096
    """Samples of the audio window at ``sample_rate``; None = no audio."""
    sample_rate: int = 16000
    """Audio sample rate of the clip (mono float32)."""
    audio_align: Literal["center", "start"] = "center"
    """Audio window centred on the clip's time span, or starting at the clip start."""
    overflow: Literal["pad", "loop"] = "pad"
    """Past the end of the video: repeat the last frame (pad) or wrap around (loop)."""
    decode_video: bool = True
    """False: audio only, no video stream needed, ``Clip.frames`` empty (the audio window is the
    one a full decode gives: its span is still ``num_frames / fps`` unless ``num_frames`` is 0)."""

    def __post_init__(self) -> None:
        problems = []
        if self.num_frames < (1 if self.decode_video else 0):
            problems.append(f"num_frames must be >= 1 to decode video, got {self.num_frames}")
        if not self.decode_video and self.audio_samples is None:
            problems.append("decode_video=False needs audio_samples (nothing else to decode)")
        if not self.fps > 0:
            problems.append(f"fps must be > 0, got {self.fps}")
        if self.resize_short is not None and self.resize_short < 1:
            problems.append(f"resize_short must be >= 1 or None, got {self.resize_short}")
        if self.audio_samples is not None and self.audio_samples < 1:
            problems.append(f"audio_samples must be >= 1 or None, got {self.audio_samples}")
        if self.sample_rate < 1:
            problems.append(f"sample_rate must be >= 1, got {self.sample_rate}")
        if self.audio_align not in ("center", "start"):
            problems.append(f"audio_align must be 'center' or 'start', got {self.audio_align!r}")
        if self.overflow not in ("pad", "loop"):
            problems.append(f"overflow must be 'pad' or 'loop', got {self.overflow!r}")
        if problems:
            raise ConfigError("ClipSpec: " + "; ".join(problems))


@dataclass
class Clip:
    """A decoded clip.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB; (0, 0, 0, 3) when the spec decodes no video.
        frame_times: (T,) float64 presentation time (s) of each chosen source frame; (0,) likewise.
        start_sec: the clip start after clamping.
        audio: (audio_samples,) float32 mono at the spec's sample rate, or None without audio.
        audio_start_sec: time of ``audio[0]`` (on the sample grid), or of the log-mel's window.
        logmel: (n_mels, frames) float32 log-mel of the audio window in place of ``audio``: only
            from a RAM cache that holds the track's (``ClipCache.clip``).
    """

    frames: np.ndarray
    frame_times: np.ndarray
    start_sec: float
    audio: np.ndarray | None
    audio_start_sec: float
    logmel: np.ndarray | None = None


def clip_duration(spec: ClipSpec) -> float:
    """Time span of the clip: its frames' ``num_frames / fps`` seconds, or for ``num_frames=0``
    (audio-only files) the audio window's ``audio_samples / sample_rate``."""
    if spec.num_frames == 0:
        return (spec.audio_samples or 0) / spec.sample_rate
    return spec.num_frames / spec.fps


def video_duration(path: str | Path) -> float:
    """Duration (s) of the first video stream of ``path``, from the container's header (no decode).

    Raises:
        DecodeError: the file cannot be opened, has no video stream, or declares no duration.
    """
    path = str(path)
    try:
        with _open(path) as container:
            duration = _declared_video_duration(container, _video_stream(container, path))
    except _AV_ERRORS as error:
        raise DecodeError(path, f"cannot probe: {_describe(error)}") from error
    except XdcError:
        raise
    except Exception as error:  # a damaged file PyAV trips on: still this file's error
        raise DecodeError(path, f"unexpected error while probing: {_describe(error)}") from error
    if duration is None:
        raise DecodeError(path, "unknown duration (the container declares none)")
    return duration


def decode_clip(
    path: str | Path,
    start_sec: float,
    spec: ClipSpec,
    duration_sec: float | None = None,
    segment: tuple[float, float] | None = None,
) -> Clip:
    """Decode the clip of ``spec`` that starts at ``start_sec`` (one open, at most one seek).

    Args:
        path: a media file with a video stream (and an audio stream when ``spec.audio_samples``);
            with ``spec.decode_video`` False, any file with an audio stream.
        start_sec: requested clip start; clamped as described in the module docstring.
        spec: frames, rate, size and audio window.
        duration_sec: the video duration when known (manifest); otherwise read from the header.
        segment: ``(start, end)`` seconds of the file the clip must stay inside (see the module
            docstring); None: the whole file.

    Returns:
        The clip; ``frames`` (T, H, W, 3) uint8, ``audio`` (audio_samples,) float32 or None.

    Raises:
        DecodeError: cannot open, not a media file, no video stream, no audio stream while audio
            is asked for, no frame in the clip window, truncated or corrupt data.
    """
    path = str(path)
    try:
        container = _open(path)
    except _AV_ERRORS as error:
        raise DecodeError(path, f"cannot open: {_describe(error)}") from error
    except XdcError:
        raise
    except Exception as error:  # a damaged file PyAV trips on: still this file's error
        raise DecodeError(path, f"unexpected error while opening: {_describe(error)}") from error
    try:
        with container:
            return _decode_from_container(
                container, path, float(start_sec), spec, duration_sec, segment
            )
    except _AV_ERRORS as error:
        raise DecodeError(path, f"decoding failed: {_describe(error)}") from error
    except XdcError:
        raise
    except Exception as error:  # a damaged file PyAV trips on: still this file's error
        raise DecodeError(path, f"unexpected error while decoding: {_describe(error)}") from error


def _open(path: str) -> Any:
    if not Path(path).is_file():
        raise DecodeError(path, "file not found" if not Path(path).exists() else "not a file")
    # Metadata that is not UTF-8 (Latin-1 titles of old AVI and MP3 files) must not stop the
    # decoding of the media it describes: the probe keeps such files too.
    return av.open(path, metadata_errors="replace")


def _describe(error: Exception) -> str:
    """FFmpeg's message without the errno and the file name (the path is already in the error)."""
    text = getattr(error, "strerror", None) or str(error)
    return f"{type(error).__name__}: {text}"


def _video_stream(container: Any, path: str) -> Any:
    if not container.streams.video:
        raise DecodeError(path, "no video stream")
    return container.streams.video[0]


def _decodable(path: str, stream: Any) -> Any:
    """``stream``, checked before decoding: a decoder exists and a frame fits in memory."""
    context = stream.codec_context
    if context is None:
        raise DecodeError(path, f"this FFmpeg build has no decoder for its {stream.type} codec")
    if stream.type == "video":
        _check_frame_size(path, context.width, context.height)
    return stream


def _check_frame_size(path: str, width: int, height: int) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise DecodeError(
            path,
            f"frame size {width}x{height} is over the limit of {MAX_FRAME_PIXELS} pixels "
            "(a damaged header?)",
        )


def _declared_video_duration(container: Any, stream: Any) -> float | None:
    """Video duration from the header: the stream's, else Matroska's DURATION tag, else the file's.

    None when it declares none, or a time that is not positive, finite and under a year (a
    damaged header may say 0 or 1e18).
    """
    return _sane(_header_video_duration(container, stream))


def _header_video_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass  # a malformed tag: fall back to the container's duration
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


def _sane(duration: float | None) -> float | None:
    """``duration`` when it is a usable time span (positive, finite, under a year), else None."""
    if duration is None or not math.isfinite(duration) or not 0 < duration < _MAX_DURATION_SEC:
        return None
    return duration


def _cut_segment(
    path: str, segment: tuple[float, float] | None, duration: float | None
) -> tuple[float, float] | None:
    """``segment`` with its end cut at the file's ``duration`` (when known); raises when nothing
    of it lies in the file."""
    if segment is None:
        return None
    lo, hi = float(segment[0]), float(segment[1])
    hi = hi if duration is None else min(hi, duration)
    if not 0 <= lo < hi:
        raise DecodeError(
            path,
            f"segment [{segment[0]:g}, {segment[1]:g}] s lies outside the file"
            + (f" ({duration:.3f} s long)" if duration is not None else ""),
        )
    return lo, hi


def _clamp_start(start_sec: float, lo: float, hi: float | None, clip_sec: float) -> float:
    start = max(lo, start_sec)
    if hi is not None and start >= hi:
        start = max(lo, hi - clip_sec)
    return start


def _mask_outside(
    audio: np.ndarray, first_sample: int, segment: tuple[float, float] | None, rate: int
) -> np.ndarray:
    """``audio`` (its first sample at ``first_sample``) with the samples outside ``segment``
    zeroed (none without a segment)."""
    if segment is not None:
        lo, hi = round(segment[0] * rate) - first_sample, round(segment[1] * rate) - first_sample
        audio[: max(0, min(lo, len(audio)))] = 0.0
        audio[max(0, hi) :] = 0.0
    return audio


def _decode_from_container(
    container: Any,
    path: str,
    start_sec: float,
    spec: ClipSpec,
    duration_sec: float | None,
    segment: tuple[float, float] | None = None,
) -> Clip:
    if not spec.decode_video:
        return decode_audio_only(container, path, start_sec, spec, duration_sec, segment)
    vstream = _decodable(path, _video_stream(container, path))
    astream = None
    if spec.audio_samples is not None:
        if not container.streams.audio:
            raise DecodeError(path, "no audio stream")
        astream = _decodable(path, container.streams.audio[0])
    vstream.codec_context.thread_count = VIDEO_DECODER_THREADS
    duration = _sane(duration_sec) or _declared_video_duration(container, vstream)
    segment = _cut_segment(path, segment, duration)
    lo, hi = segment or (0.0, duration)

    start = _clamp_start(start_sec, lo, hi, clip_duration(spec))
    lookup_times = _lookup_times(path, start, spec, lo, hi, bounded=segment is not None)
    picker = _FramePicker(path, lookup_times, spec.resize_short)
    audio_window = None
    earliest = float(lookup_times.min())
    if astream is not None:
        audio_window = _audio_window(path, astream, start, spec)
        earliest = min(earliest, audio_window.start_sample / spec.sample_rate)

    seek_sec = earliest - SEEK_MARGIN_SEC
    if seek_sec > 0:  # a freshly opened file is already at its start
        container.seek(int(seek_sec * av.time_base), backward=True)
    reached_eof = _demux(container, vstream, astream, picker, audio_window)

    _check_frames_found(path, picker, lookup_times, duration, reached_eof)
    frames, frame_times = picker.result()
    return Clip(
        frames=frames,
        frame_times=frame_times,
        start_sec=start,
        audio=None
        if audio_window is None
        else _mask_outside(
            audio_window.result(), audio_window.start_sample, segment, spec.sample_rate
        ),
        audio_start_sec=(
            start if audio_window is None else audio_window.start_sample / spec.sample_rate
        ),
    )


def decode_audio_only(
    container: Any,
    path: str,
    start_sec: float,
    spec: ClipSpec,
    duration_sec: float | None,
    segment: tuple[float, float] | None = None,
) -> Clip:
    """The audio window of the clip starting at ``start_sec`` (one seek, audio packets only).

    ``decode_clip`` comes here for a ``ClipSpec`` with ``decode_video=False``: audio-only files
    (ESC-50 ``.wav``, FLAC, a soundtrack in MP4) and audio features of video files, where decoding
    frames would only cost time. The window is placed exactly as in a full decode (same start
    clamping, alignment and sample grid; zeros outside the track, never looped), so for a video
    file the samples equal the ``audio`` of the full decode.

    Returns:
        A ``Clip`` with ``frames`` (0, 0, 0, 3) uint8, ``frame_times`` (0,) and ``audio``
        (audio_samples,) float32 mono.

    Raises:
        DecodeError: no audio stream; FFmpeg errors propagate to ``decode_clip``, which wraps them.
    """
    if not container.streams.audio:
        raise DecodeError(path, "no audio stream")
    astream = _decodable(path, container.streams.audio[0])
    duration = _sane(duration_sec) or _declared_duration(container, astream)
    segment = _cut_segment(path, segment, duration)
    lo, hi = segment or (0.0, duration)
    start = _clamp_start(start_sec, lo, hi, clip_duration(spec))
    window = _audio_window(path, astream, start, spec)
    readable = _ReadableAudio()
    seek_sec = window.start_sample / spec.sample_rate - SEEK_MARGIN_SEC
    if seek_sec > 0:  # a freshly opened file is already at its start
        container.seek(int(seek_sec * av.time_base), backward=True)
    for packet in container.demux(astream):
        if window.wants(packet):
            for frame in readable(packet.decode()):
                window.push(frame)
        if window.done:
            break
    return Clip(
        frames=np.zeros((0, 0, 0, 3), dtype=np.uint8),
        frame_times=np.zeros(0, dtype=np.float64),
        start_sec=start,
        audio=_mask_outside(window.result(), window.start_sample, segment, spec.sample_rate),
        audio_start_sec=window.start_sample / spec.sample_rate,
    )


def _declared_duration(container: Any, astream: Any) -> float | None:
    """The duration a full decode would clamp with: the video's when there is a video stream,
    else the audio stream's, else the container's (None: nobody declares one)."""
    if container.streams.video:
        return _declared_video_duration(container, container.streams.video[0])
    if astream.duration is not None and astream.time_base is not None:
        return _sane(float(astream.duration * astream.time_base))
    if container.duration is not None:
        return _sane(float(container.duration / av.time_base))
    return None


def _lookup_times(
    path: str, start: float, spec: ClipSpec, lo: float, hi: float | None, bounded: bool = False
) -> np.ndarray:
    """(T,) times whose displayed frames form the clip: ``start + i / fps``, wrapped for 'loop'
    into ``[lo, hi)``; ``bounded`` (a segment) and 'pad': held just before ``hi``."""
    target_times = start + np.arange(spec.num_frames, dtype=np.float64) / spec.fps
    eps = FRAME_TIME_EPS_SEC
    if spec.overflow != "loop":
        if bounded and hi is not None:  # the frame shown last before the segment's end
            return np.minimum(target_times, max(lo, hi - 2 * eps))
        return target_times
    if hi is None:
        raise DecodeError(path, "unknown duration: overflow='loop' needs duration_sec")
    # Wrap with the tolerance of the frame lookup, so that a time a hair below a multiple of the
    # duration (float error) maps to the first frame, as the exact time would.
    if target_times[-1] + eps < hi:
        return target_times  # no wrap: seek near the clip, not to 0
    return lo + np.mod(target_times - lo + eps, hi - lo) - eps


def _check_frames_found(
    path: str,
    picker: _FramePicker,
    lookup_times: np.ndarray,
    duration: float | None,
    reached_eof: bool,
) -> None:
    """No frame at all, or the video stopping well before its declared end, is an error."""
    if picker.last_time is None:
        raise DecodeError(
            path, f"no video frame decodes in the clip window at {lookup_times[0]:.3f} s"
        )
    if not reached_eof or duration is None:
        return
    needed_until = min(float(lookup_times.max()), duration)
    if needed_until - picker.last_time > TRUNCATION_TOLERANCE_SEC:
        raise DecodeError(
            path,
            f"video ends at {picker.last_time:.3f} s, before the declared duration "
            f"{duration:.3f} s (truncated file?)",
        )


def _audio_window(path: str, stream: Any, start_sec: float, spec: ClipSpec) -> AudioWindow:
    """The audio window of the clip starting at ``start_sec``, its first sample on the grid."""
    assert spec.audio_samples is not None
    if spec.audio_align == "center":
        ideal = start_sec + clip_duration(spec) / 2 - spec.audio_samples / (2 * spec.sample_rate)
    else:
        ideal = start_sec
    first = round(ideal * spec.sample_rate)
    return AudioWindow(path, stream, first, spec.audio_samples, spec.sample_rate, SEEK_MARGIN_SEC)


def _demux(
    container: Any,
    vstream: Any,
    astream: Any | None,
    picker: _FramePicker,
    audio_window: AudioWindow | None,
) -> bool:
    """Decode both streams in one pass until the clip is covered; True when the file ended first.

    PyAV's demux yields an empty packet per stream at the end of the file; decoding it flushes the
    decoder, so the last frames still arrive.
    """
    streams = [vstream] if astream is None else [vstream, astream]
    readable = _ReadableAudio()
    for packet in container.demux(streams):
        if packet.stream is vstream:
            if not picker.done:
                for frame in packet.decode():
                    picker.push(frame)
        elif audio_window is not None and audio_window.wants(packet):
            for frame in readable(packet.decode()):
                audio_window.push(frame)
        if picker.done and (audio_window is None or audio_window.done):
            return False
    return True


class _ReadableAudio:
    """Decoded audio frames that PyAV can turn into numpy arrays; FFmpeg converts the others
    (keeping their samples, channels and timestamps) before they reach the audio window:

    - a planar frame with 8 or more channels (7.1 AAC, or the 44 channels a damaged stream
      announces) becomes one packed plane: PyAV (up to 18 at least) finds a frame's planes by
      reading its plane pointers up to the first null one, which runs past the end of the list
      for such a frame, and ``to_ndarray`` then reads memory that is not the frame's (a crash);
    - a sample format PyAV has no numpy type for (64-bit integers: a valid ``pcm_s64le`` WAV)
      becomes 64-bit floats.
    """

    def __init__(self) -> None:
        self._converters: dict[tuple[str, str, int], Any] = {}

    def __call__(self, frames: Any) -> Iterator[Any]:
        for frame in frames:
            name, planar = frame.format.name, frame.format.is_planar
            many = planar and frame.layout.nb_channels >= _PYAV_PLANE_POINTERS
            if name in _NUMPY_AUDIO_FORMATS and not many:
                yield frame
                continue
            key = (name, frame.layout.name, frame.sample_rate)
            if key not in self._converters:
                target = frame.format.packed.name if name in _NUMPY_AUDIO_FORMATS else "dbl"
                self._converters[key] = av.AudioResampler(
                    format=target, layout=frame.layout, rate=frame.sample_rate
                )
            yield from self._converters[key].resample(frame)


class _FramePicker:
    """Streams decoded frames and keeps, for each target time, the frame displayed at that time.

    Targets are visited in time order (loop wrapping can reorder them); a target is settled as
    soon as a frame later than it arrives, and only settled frames are converted to RGB.
    """

    def __init__(self, path: str, lookup_times: np.ndarray, resize_short: int | None) -> None:
        self.path = path
        self.order = np.argsort(lookup_times, kind="stable")
        self.sorted_times = lookup_times[self.order]
        self.resize_short = resize_short
        self.next_target = 0
        self.last_frame: Any = None
        self.last_time: float | None = None
        self.frames: np.ndarray | None = None
        self.frame_times = np.zeros(len(lookup_times), dtype=np.float64)
        self._converted: tuple[Any, np.ndarray] | None = None

    @property
    def done(self) -> bool:
        return self.next_target == len(self.sorted_times)

    def push(self, frame: Any) -> None:
        _check_frame_size(self.path, frame.width, frame.height)  # the header may not have said
        time = frame.time
        if time is None:  # no timestamp: assume it follows the previous frame closely
            time = (self.last_time or 0.0) + FRAME_TIME_EPS_SEC
        while not self.done and self.sorted_times[self.next_target] + FRAME_TIME_EPS_SEC < time:
            # before the first frame, the first frame is shown
            if self.last_frame is None:
                self._settle(frame, time)
            else:
                self._settle(self.last_frame, self.last_time)
        self.last_frame, self.last_time = frame, time

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(T, H, W, 3) uint8 frames and (T,) times; targets still open get the last frame."""
        while not self.done:
            self._settle(self.last_frame, self.last_time)
        assert self.frames is not None
        return self.frames, self.frame_times

    def _settle(self, frame: Any, time: float | None) -> None:
        slot = int(self.order[self.next_target])
        self.next_target += 1
        if self._converted is None or self._converted[0] is not frame:
            if self.frames is None:
                height, width = _output_size(frame.height, frame.width, self.resize_short)
                self.frames = np.empty((len(self.order), height, width, 3), dtype=np.uint8)
            _, height, width, _ = self.frames.shape
            rgb = frame.to_ndarray(width=width, height=height, **_RGB24)
            self._converted = (frame, rgb)
        assert self.frames is not None
        self.frames[slot] = self._converted[1]
        self.frame_times[slot] = time


def _output_size(height: int, width: int, resize_short: int | None) -> tuple[int, int]:
    """(height, width) with the short side ``resize_short`` and the aspect ratio kept."""
    if resize_short is None:
        return height, width
    if height <= width:
        return resize_short, max(1, round(width * resize_short / height))
    return max(1, round(height * resize_short / width)), resize_short
