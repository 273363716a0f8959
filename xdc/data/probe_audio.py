"""Probe an audio-only file (ESC-50 ``.wav``, DCASE recordings, a soundtrack in ``.mp4``/``.flac``).

``xdc.data.probe.probe_file`` hands a container without a (non-cover-picture) video stream here.
The file is usable when its first audio stream has a decoder, one of its first packets decodes to
samples, and it spans some time: the stream's declared duration, else the container's, else the
end of its last packet. The manifest row then has ``has_video`` 0 and ``fps``/``width``/``height``
0; the audio protocol (``xdc audio-probe``) uses it, the video-based ones leave it out.
"""

from __future__ import annotations

from typing import Any

import av

from xdc.data.probe import (
    TRUNCATED,
    UNDECODABLE_AUDIO,
    ZERO_DURATION,
    ProbeResult,
    _demux,
    _last_packet_end,
    _message,
    _UnannouncedStream,
    _with_cause,
)

__all__ = ["probe_audio_only"]

# Give up looking for decodable audio after this many packets: a healthy stream decodes at once
# (an AAC or Opus decoder may swallow a priming packet or two).
_FIRST_AUDIO_PACKET_LIMIT = 50


def probe_audio_only(
    name: str, container: av.container.InputContainer, audio: av.audio.stream.AudioStream
) -> ProbeResult:
    """The probe result of ``name``, whose only media stream is ``audio`` (never raises)."""
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
