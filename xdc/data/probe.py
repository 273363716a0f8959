"""Probe one video file: its stream info, or the reason it cannot be used.

``probe_file`` opens the file, reads the stream info, decodes the first video frame and checks that
the video data reaches the declared end. A file it rejects gets one reason of ``REJECTION_REASONS``:

- ``missing``: listed in the CSV (or a broken link) but not on disk.
- ``unreadable``: the operating system refuses to read it (permission, I/O error, a directory, a
  symbolic link loop), or it is no regular file (a named pipe, a socket, a device: never opened,
  as reading a pipe waits for a writer).
- ``empty file``: 0 bytes.
- ``not a media file``: FFmpeg cannot open it and it starts like no container we know.
- ``corrupt``: it starts like a known container but FFmpeg cannot parse its headers.
- ``truncated``: the data stops early: an MP4 whose boxes run past the end of the file (moov at
  the end: the index is lost), a file that ends inside its headers, or video packets that stop
  well before the duration (or, for AVI and MP4, the frame count) the header declares (moov at the
  start, Matroska, AVI, FLV). MPEG-TS/PS have no such header: FFmpeg measures their duration from
  the data, so a cut one reads as a shorter, consistent file and is kept with its real duration.
- ``no video or audio stream``: neither a video stream (a cover picture does not count as
  video) nor an audio stream (e.g. subtitles or data only).
- ``undecodable video``: a video stream with packets, none of which decodes to a frame.
- ``undecodable audio``: an audio-only file whose first audio packets decode to nothing.
- ``zero duration``: a video (or, for an audio-only file, audio) stream that declares no time span
  and holds no data (a single untimed still, an empty recording).
- ``probe failed``: anything else went wrong while probing this one file (an error no reason above
  foresees, or FFmpeg crashing the probing process); the detail names the error. The file is
  rejected, the index goes on, and the file is probed again on the next run.

Frame rate (``fps``): the stream's real rate, FFmpeg's average rate, else its guess from the
timestamps, else the codec's base rate, else frames / duration, skipping any of them that is only
the stream's time base (an AVI or FLV written with a millisecond clock declares 1000 "frames" per
second and fills the gaps with empty frames). The clip decoder picks frames by their timestamps,
so the same file gives ``fps`` distinct frames a second at this rate. A declared frame larger than
``MAX_FRAME_PIXELS`` is refused (``undecodable video``) rather than allocated.

Files without audio are usable (``has_audio`` False, ``sample_rate`` and ``audio_channels`` 0).
Audio-only files (ESC-50 ``.wav``, a soundtrack in ``.mp4``/``.flac``/``.ogg``) are usable too:
``has_video`` False, ``fps``/``width``/``height`` 0, the duration that of the audio.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from xdc.data.manifest import PROBE_COLUMNS, text_cell

__all__ = ["MAX_FRAME_PIXELS", "REJECTION_REASONS", "ProbeResult", "probe_file"]

MISSING, UNREADABLE, EMPTY_FILE = "missing", "unreadable", "empty file"
NOT_MEDIA, CORRUPT, TRUNCATED = "not a media file", "corrupt", "truncated"
NO_STREAMS, UNDECODABLE, ZERO_DURATION = (
    "no video or audio stream",
    "undecodable video",
    "zero duration",
)
UNDECODABLE_AUDIO = "undecodable audio"
PROBE_FAILED = "probe failed"
REJECTION_REASONS = (
    MISSING,
    UNREADABLE,
    EMPTY_FILE,
    NOT_MEDIA,
    CORRUPT,
    TRUNCATED,
    NO_STREAMS,
    UNDECODABLE,
    UNDECODABLE_AUDIO,
    ZERO_DURATION,
    PROBE_FAILED,
)

MAX_FRAME_PIXELS = 8192 * 8192
"""Largest frame (width x height) a file may declare: 8K UHD is half of it. A damaged header that
declares more is refused instead of decoded (a frame of 100000 x 100000 would need 30 GB)."""

# Give up looking for a first frame after this many video packets: a keyframe interval of 250 is
# x264's default, so a healthy stream that starts mid-GOP still shows a frame well before this.
_FIRST_FRAME_PACKET_LIMIT = 300
# Give up looking for decodable audio after this many packets: a healthy stream decodes at once
# (an AAC or Opus decoder may swallow a priming packet or two).
_FIRST_AUDIO_PACKET_LIMIT = 50
# The video data may end this much before the declared duration without calling the file truncated:
# declared durations are rounded, shifted by edit lists or, in some containers, estimated.
_END_SLACK_SEC, _END_SLACK_FRAMES, _END_SLACK_FRACTION = 0.25, 3, 0.01
# A stream whose every rate is its tick rate (1 / time base) films at that rate up to this; above
# it (a millisecond clock) the rate is measured from the first packets' timestamps.
_MAX_TICK_RATE = 240.0
_RATE_SAMPLE_PACKETS = 500


@dataclass
class ProbeResult:
    """What probing one file found: the manifest's probe columns, or why the file is rejected."""

    path: str
    reason: str = ""  # one of REJECTION_REASONS; empty when the file is usable
    detail: str = ""  # what exactly was wrong, for a person reading rejected.csv
    duration_sec: float = 0.0
    has_video: bool = False  # False for an audio-only file (fps, width and height are then 0)
    fps: float = 0.0  # 0 when neither the container nor the stream says
    width: int = 0
    height: int = 0
    has_audio: bool = False
    sample_rate: int = 0
    audio_channels: int = 0

    @property
    def ok(self) -> bool:
        return not self.reason

    def columns(self) -> dict[str, object]:
        """The manifest's probe columns (``PROBE_COLUMNS``) of this file."""
        return {name: getattr(self, name) for name in PROBE_COLUMNS}


def probe_file(path: str | Path) -> ProbeResult:
    """Probe one file cheaply but honestly. Never raises for a bad media file: the result says why.

    Opens it, reads the stream info, decodes the first video frame and checks that the video
    packets reach the duration the header declares (a seek near the end, or one pass over the
    packets without decoding when seeking finds nothing).
    """
    name = os.fspath(path)
    try:
        result = _probe(name)
    except Exception as error:  # an error no reason foresees: reject this file, not the index
        result = ProbeResult(name, PROBE_FAILED, f"{type(error).__name__}: {error}")
    result.detail = text_cell(result.detail)  # FFmpeg's messages may quote an undecodable name
    return result


def _probe(name: str) -> ProbeResult:
    try:
        info = os.stat(name)
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            # a named pipe would block the open until someone writes to it; a device never ends
            return ProbeResult(name, UNREADABLE, f"not a regular file ({_file_kind(info.st_mode)})")
        size = info.st_size
        with open(name, "rb") as fh:  # our own read: FFmpeg reports a short file as EIO too
            head = fh.read(192)
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if os.path.islink(name) else ""
        return ProbeResult(name, MISSING, f"no such file{broken}")
    except OSError as error:  # permission denied, I/O error, a directory, a symbolic link loop
        return ProbeResult(name, UNREADABLE, error.strerror or str(error))
    except ValueError:  # a CSV listing a name with a NUL character: no file has such a name
        return ProbeResult(name, MISSING, "not a valid file name (it contains a NUL character)")
    if not head:
        return ProbeResult(name, EMPTY_FILE, "0 bytes")
    try:
        container = av.open(name, metadata_errors="replace")
    except av.FFmpegError as error:
        return ProbeResult(name, *_explain_open_failure(name, head, size, error))
    with container:
        return _probe_container(name, container)


def _probe_container(name: str, container: av.container.InputContainer) -> ProbeResult:
    video = next((s for s in container.streams.video if not _is_cover_picture(s)), None)
    if video is None:
        if container.streams.audio:
            return probe_audio_only(name, container, container.streams.audio[0])
        found = [f"{s.type} ({s.codec_context.name})" for s in container.streams if s.codec_context]
        return ProbeResult(name, NO_STREAMS, f"streams found: {', '.join(found) or 'none'}")
    if video.codec_context is None:
        return ProbeResult(
            name, UNDECODABLE, "this FFmpeg build has no decoder for its video codec"
        )
    video.codec_context.thread_count = 1  # one file per process: decoder threads only add start-up
    oversize = _oversize(video.codec_context.width, video.codec_context.height)
    if oversize:
        return ProbeResult(name, UNDECODABLE, oversize)
    declared, declared_by = _declared_duration(container, video)
    frame, packets, error = _decode_first_frame(container, video)
    if frame is None and packets == 0:
        if declared:
            detail = f"the header declares {declared:.3f} s but no video packet can be read"
            return ProbeResult(name, TRUNCATED, _with_cause(detail, error))
        return ProbeResult(name, ZERO_DURATION, "the video stream holds no frames")
    if frame is None:
        detail = f"none of the first {packets} video packets decodes to a frame"
        return ProbeResult(name, UNDECODABLE, _with_cause(detail, error))
    oversize = _oversize(frame.width, frame.height)
    if oversize:
        return ProbeResult(name, UNDECODABLE, oversize)
    count_rate = _count_rate(video, declared)
    data_end, shortfall = _data_end_and_shortfall(
        name, container, video, declared, declared_by, count_rate
    )
    if shortfall:
        return ProbeResult(name, TRUNCATED, shortfall)
    duration = declared or data_end or 0.0
    if duration <= 0:
        return ProbeResult(
            name, ZERO_DURATION, "the video stream spans 0 s (a single untimed frame?)"
        )
    audio = next((s for s in container.streams.audio if s.codec_context is not None), None)
    has_audio = bool(audio and audio.codec_context.sample_rate and audio.codec_context.channels)
    return ProbeResult(
        name,
        duration_sec=duration,
        has_video=True,
        fps=_frame_rate(name, video, duration),
        width=frame.width,
        height=frame.height,
        has_audio=has_audio,
        sample_rate=audio.codec_context.sample_rate if audio and has_audio else 0,
        audio_channels=audio.codec_context.channels if audio and has_audio else 0,
    )


def probe_audio_only(
    name: str, container: av.container.InputContainer, audio: av.audio.stream.AudioStream
) -> ProbeResult:
    """The probe result of ``name``, whose only media stream is ``audio`` (never raises).

    For an audio-only file (ESC-50 ``.wav``, DCASE recordings, a soundtrack in ``.mp4``/``.flac``):
    ``probe_file`` hands a container without a (non-cover-picture) video stream here. The file is
    usable when its first audio stream has a decoder, one of its first packets decodes to samples,
    and it spans some time: the stream's declared duration, else the container's, else the end of
    its last packet. The manifest row then has ``has_video`` 0 and ``fps``/``width``/``height`` 0;
    the audio protocol (``xdc audio-probe``) uses it, the video-based ones leave it out.
    """
    context = audio.codec_context
    if context is None:
        return ProbeResult(
            name, UNDECODABLE_AUDIO, "this FFmpeg build has no decoder for its audio"
        )
    context.thread_count = 1
    declared = _declared_audio_duration(container, audio)
    decoded, packets, error = _decode_first_samples(container, audio)
    if not decoded and packets == 0:
        if declared:
            detail = f"the header declares {declared:.3f} s but no audio packet can be read"
            return ProbeResult(name, TRUNCATED, _with_cause(detail, error))
        return ProbeResult(name, ZERO_DURATION, "the audio stream holds no samples")
    if not decoded:
        detail = f"none of the first {packets} audio packets decodes to samples"
        return ProbeResult(name, UNDECODABLE_AUDIO, _with_cause(detail, error))
    duration = declared or _measured_duration(name, audio)
    if duration <= 0:
        return ProbeResult(name, ZERO_DURATION, "the audio stream spans 0 s")
    rate, channels = context.sample_rate or decoded[0], context.channels or decoded[1]
    return ProbeResult(
        name,
        duration_sec=duration,
        has_video=False,
        has_audio=True,
        sample_rate=rate,
        audio_channels=channels,
    )


def _declared_audio_duration(
    container: av.container.InputContainer, audio: av.stream.Stream
) -> float:
    """Seconds the header declares for the audio stream, else for the container (0.0: neither)."""
    if audio.duration and audio.time_base:
        return float(audio.duration * audio.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return 0.0


def _decode_first_samples(
    container: av.container.InputContainer, audio: av.stream.Stream
) -> tuple[tuple[int, int] | None, int, str]:
    """((sample rate, channels) of the first decoded frame, or None; packets read; last error)."""
    packets, error = 0, ""
    frames: list[Any]
    try:
        for packet in _demux(container, audio):
            packets += 1 if packet.size else 0
            try:
                frames = [f for f in packet.decode() if isinstance(f, av.AudioFrame) and f.samples]
            except av.FFmpegError as failure:  # a damaged packet: try the next one
                error, frames = _message(failure), []
            if frames:
                return (frames[0].sample_rate, len(frames[0].layout.channels)), packets, ""
            if packets >= _FIRST_AUDIO_PACKET_LIMIT:
                break
    except (av.FFmpegError, _UnannouncedStream) as failure:  # the data ends or is damaged
        error = _message(failure)
    return None, packets, error


def _measured_duration(name: str, audio: av.stream.Stream) -> float:
    """End of the last audio packet, read from a fresh open (no duration in the header)."""
    start = float((audio.start_time or 0) * audio.time_base) if audio.time_base else 0.0
    try:
        with av.open(name, metadata_errors="replace") as again:
            end, _ = _last_packet_end(again, again.streams[audio.index], start, False)
    except av.FFmpegError:  # it opened a moment ago: the file changed under us
        return 0.0
    return end or 0.0


def _is_cover_picture(stream: av.stream.Stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _declared_duration(
    container: av.container.InputContainer, video: av.stream.Stream
) -> tuple[float, str]:
    """Seconds the header declares for the video (0.0 when it declares nothing) and who says so.

    The video stream's own duration first (Matroska keeps it in a ``DURATION`` tag), then the
    container's, which may include a longer audio track.
    """
    if video.duration and video.time_base:
        return float(video.duration * video.time_base), "video"
    tag = video.metadata.get("DURATION") or video.metadata.get("duration") or ""
    hours, _, rest = tag.rpartition(":")
    hours, _, minutes = hours.rpartition(":")
    try:
        seconds = float(hours or 0) * 3600 + float(minutes or 0) * 60 + float(rest)
    except ValueError:  # no tag, or one we cannot read: the container's duration decides
        seconds = 0.0
    if seconds > 0:
        return seconds, "video"
    if container.duration and container.duration > 0:
        return container.duration / av.time_base, "container"
    return 0.0, "nobody"


def _decode_first_frame(
    container: av.container.InputContainer, video: av.stream.Stream
) -> tuple[av.VideoFrame | None, int, str]:
    """(first decoded frame or None, video packets read, last FFmpeg error message)."""
    packets, error = 0, ""
    try:
        for packet in _demux(container, video):
            packets += 1 if packet.size else 0  # the last, empty packet only flushes the decoder
            try:
                frames = [f for f in packet.decode() if isinstance(f, av.VideoFrame)]
            except av.FFmpegError as failure:  # a damaged packet: try the next one
                error, frames = _message(failure), []
            if frames:
                return frames[0], packets, ""
            if packets >= _FIRST_FRAME_PACKET_LIMIT:
                break
    except (av.FFmpegError, _UnannouncedStream) as failure:  # the data ends or is damaged
        error = _message(failure)
    return None, packets, error


def _data_end_and_shortfall(
    name: str,
    container: av.container.InputContainer,
    video: av.stream.Stream,
    declared: float,
    declared_by: str,
    fps: float,
) -> tuple[float | None, str]:
    """(seconds of video data found, why the data falls short of the header's claim or "")."""
    # Frame counts in the header (AVI, MP4) are a claim too: for a cut AVI, FFmpeg re-indexes
    # what is left and reports a shorter stream duration, but the header still counts every frame.
    counted = video.frames / fps if video.frames and fps else 0.0
    claimed = max(declared, counted)
    data_end, error = _video_data_end(name, container, video, claimed, declared_by == "container")
    if not claimed or data_end is None:
        return data_end, ""
    slack = max(
        _END_SLACK_SEC, _END_SLACK_FRAMES / fps if fps else 0.0, _END_SLACK_FRACTION * claimed
    )
    if claimed - data_end <= slack:
        return data_end, ""
    claim = "its header declares"
    if counted > declared:
        claim = f"its header's {video.frames} frames at {fps:g} fps span"
    detail = f"video data ends at {data_end:.3f} s of the {claimed:.3f} s {claim}"
    return data_end, _with_cause(detail, error)


def _video_data_end(
    name: str,
    container: av.container.InputContainer,
    video: av.stream.Stream,
    declared: float,
    include_audio: bool,
) -> tuple[float | None, str]:
    """Seconds from the stream's start to the end of its last readable packet, and any error.

    Seeks to a second before the declared end and reads packets (no decoding) to the end of the
    file. When the header declares no duration, or the seek finds no packet (an MP4 cut after
    its index: the index points past the end of the file), reads every packet from the start.
    When the declared duration is the container's, audio packets count too (the audio may be the
    longer track).
    """
    start = float((video.start_time or 0) * video.time_base) if video.time_base else 0.0
    if declared and video.time_base:
        target = start + max(0.0, declared - 1.0)
        try:
            container.seek(int(target / video.time_base), stream=video, backward=True)
            end, error = _last_packet_end(container, video, start, include_audio)
        except av.FFmpegError as failure:  # no index to seek with: the full pass below decides
            end, error = None, _message(failure)
        if end is not None:
            return end, error
    try:
        with av.open(name, metadata_errors="replace") as again:
            return _last_packet_end(again, again.streams[video.index], start, include_audio)
    except av.FFmpegError as failure:  # it opened a moment ago: the file changed under us
        return None, _message(failure)


def _last_packet_end(
    container: av.container.InputContainer,
    video: av.stream.Stream,
    start: float,
    include_audio: bool,
) -> tuple[float | None, str]:
    streams = [video, *container.streams.audio] if include_audio else [video]
    end: float | None = None
    try:
        for packet in _demux(container, *streams):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or not packet.size or packet.is_corrupt or not packet.time_base:
                continue  # flush packets, and a last packet cut short, say nothing about the end
            stop = float((stamp + (packet.duration or 0)) * packet.time_base) - start
            end = stop if end is None else max(end, stop)
    except (av.FFmpegError, _UnannouncedStream) as failure:  # the data stops here
        return end, _message(failure)
    return end, ""


class _UnannouncedStream(Exception):
    """A damaged file announces a new stream mid-way (seen with FLV); PyAV cannot follow it."""


def _demux(
    container: av.container.InputContainer, *streams: av.stream.Stream
) -> Iterator[av.Packet]:
    try:
        yield from container.demux(*streams)
    except IndexError as error:  # PyAV's stream list lacks the new stream's index
        raise _UnannouncedStream(
            "a stream appears mid-file that the header did not announce"
        ) from error


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def _oversize(width: int, height: int) -> str:
    """Why a frame of ``width`` x ``height`` is refused, or "" when it is not."""
    if width * height <= MAX_FRAME_PIXELS:
        return ""
    return (
        f"the frame size {width}x{height} is over the limit of {MAX_FRAME_PIXELS} pixels "
        "(a damaged header?)"
    )


def _count_rate(video: av.stream.Stream, duration: float) -> float:
    """The rate the header's frame count is in (AVI counts ticks of its time base, with empty
    frames in the gaps), to turn that count into the span it claims: FFmpeg's average rate, else
    its guess, else frames / duration (0 if none)."""
    for rate in (video.average_rate, video.guessed_rate):
        if _as_rate(rate):
            return _as_rate(rate)
    return video.frames / duration if video.frames and duration else 0.0


def _frame_rate(name: str, video: av.stream.Stream, duration: float) -> float:
    """The stream's real frame rate (module docstring), never its time base; 0 when unknown.

    FFmpeg's average rate, else its guess from the timestamps, else the codec's base rate, else
    frames / duration: the first that is not only the time base's tick rate. When every one of
    them is that tick rate, it is the rate if a camera could film at it (a constant-rate AVI:
    25 fps in ticks of 1/25 s); above ``_MAX_TICK_RATE`` (a millisecond clock, irregular frames)
    the rate is measured from the timestamps of the first frames.
    """
    tick = 1.0 / float(video.time_base) if video.time_base else 0.0
    counted = video.frames / duration if video.frames and duration else 0.0
    candidates = (video.average_rate, video.guessed_rate, video.base_rate, counted)
    rates = [rate for rate in map(_as_rate, candidates) if rate]
    for rate in rates:
        if not tick or not math.isclose(rate, tick, rel_tol=1e-6):
            return rate
    if tick > _MAX_TICK_RATE:
        return _measured_frame_rate(name, video.index) or tick
    return rates[0] if rates else 0.0


def _measured_frame_rate(name: str, index: int) -> float:
    """Frames per second over the first ``_RATE_SAMPLE_PACKETS`` video packets that hold a frame
    (empty packets are an AVI's fillers), from their timestamps; 0.0 when it cannot tell."""
    stamps: set[int] = set()
    try:
        with av.open(name, metadata_errors="replace") as again:
            stream = again.streams[index]
            for packet in _demux(again, stream):
                if packet.size and packet.pts is not None:
                    stamps.add(packet.pts)
                if len(stamps) >= _RATE_SAMPLE_PACKETS:
                    break
            time_base = stream.time_base
    except (av.FFmpegError, _UnannouncedStream):
        return 0.0
    span = (max(stamps) - min(stamps)) * time_base if len(stamps) > 1 and time_base else 0
    return float((len(stamps) - 1) / span) if span > 0 else 0.0


def _as_rate(rate: Fraction | float | None) -> float:
    """``rate`` in frames per second, or 0.0 when it is none, not positive or not finite."""
    value = float(rate) if rate is not None else 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _explain_open_failure(
    name: str, head: bytes, size: int, error: av.FFmpegError
) -> tuple[str, str]:
    """(reason, detail) for a file FFmpeg could not open."""
    message = _message(error)
    if isinstance(error, PermissionError):
        return UNREADABLE, message
    kind = _container_kind(head)
    if kind is None:
        return NOT_MEDIA, f"FFmpeg cannot open it and it starts like no known container ({message})"
    if kind == "MP4/MOV":
        shortfall = _iso_box_shortfall(name, size)
        if shortfall:
            return TRUNCATED, f"{kind}: {shortfall}"
    if isinstance(error, EOFError) or getattr(error, "errno", None) == errno.EIO:
        return TRUNCATED, f"{kind}: the file ends inside its headers ({message})"
    return CORRUPT, f"{kind} file whose headers FFmpeg cannot parse ({message})"


_ISO_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin")
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


def _container_kind(head: bytes) -> str | None:
    """Name of the container the first bytes announce, or None when they announce none we know."""
    if head[4:8] in _ISO_FIRST_BOXES:
        return "MP4/MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "AVI"
    if head.startswith(_ASF_GUID):
        return "ASF/WMV"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "WAV"
    if head.startswith(b"fLaC"):
        return "FLAC"
    if head.startswith((b"FLV", b"OggS")):
        return head[:4].decode("latin-1").strip("\x01")
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "MPEG"
    if len(head) > 188 and head[0] == head[188] == 0x47:
        return "MPEG-TS"
    return None


def _iso_box_shortfall(name: str, size: int) -> str:
    """Why the top-level MP4 boxes show the file was cut short, or "" when they do not."""
    seen, offset = [], 0
    with open(name, "rb") as fh:
        while offset < size:
            fh.seek(offset)
            header = fh.read(16)
            if len(header) < 8:
                return f"the file ends inside a box header at byte {offset}"
            box_size, box_type = struct.unpack(">I4s", header[:8])
            if box_size == 1 and len(header) == 16:  # a 64-bit size follows the type
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:  # "runs to the end of the file"
                box_size = size - offset
            if box_size < 8:
                return ""  # not a box layout we can follow: make no claim
            kind = box_type.decode("latin-1")
            seen.append(kind)
            if offset + box_size > size:
                return (
                    f"box '{kind}' at byte {offset} declares {box_size} bytes but the file "
                    f"ends after {size - offset}"
                )
            offset += box_size
    if "moov" not in seen:
        return "no 'moov' box (the index): the recording was never finished or the file was cut"
    return ""


def _message(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


def _with_cause(detail: str, error: str) -> str:
    return f"{detail} ({error})" if error else detail
