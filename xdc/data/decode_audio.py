"""Audio-only clip decoding: the audio window of a clip without decoding (or needing) video.

``decode_clip`` comes here for a ``ClipSpec`` with ``decode_video=False``: audio-only files
(ESC-50 ``.wav``, FLAC, a soundtrack in MP4) and audio features of video files, where decoding
frames would only cost time. The window is placed exactly as in a full decode (same start
clamping, alignment and sample grid; zeros outside the track, never looped), so for a video file
the samples equal the ``audio`` of the full decode.
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np

from xdc.data.decode import (
    SEEK_MARGIN_SEC,
    Clip,
    ClipSpec,
    _audio_window,
    _clamp_start,
    _declared_video_duration,
    clip_duration,
)
from xdc.errors import DecodeError

__all__ = ["decode_audio_only"]


def decode_audio_only(
    container: Any, path: str, start_sec: float, spec: ClipSpec, duration_sec: float | None
) -> Clip:
    """The audio window of the clip starting at ``start_sec`` (one seek, audio packets only).

    Returns:
        A ``Clip`` with ``frames`` (0, 0, 0, 3) uint8, ``frame_times`` (0,) and ``audio``
        (audio_samples,) float32 mono.

    Raises:
        DecodeError: no audio stream; FFmpeg errors propagate to ``decode_clip``, which wraps them.
    """
    if not container.streams.audio:
        raise DecodeError(path, "no audio stream")
    astream = container.streams.audio[0]
    duration = duration_sec if duration_sec else _declared_duration(container, astream)
    start = _clamp_start(start_sec, duration, clip_duration(spec))
    window = _audio_window(path, astream, start, spec)
    seek_sec = window.start_sample / spec.sample_rate - SEEK_MARGIN_SEC
    if seek_sec > 0:  # a freshly opened file is already at its start
        container.seek(int(seek_sec * av.time_base), backward=True)
    for packet in container.demux(astream):
        if window.wants(packet):
            for frame in packet.decode():
                window.push(frame)
        if window.done:
            break
    return Clip(
        frames=np.zeros((0, 0, 0, 3), dtype=np.uint8),
        frame_times=np.zeros(0, dtype=np.float64),
        start_sec=start,
        audio=window.result(),
        audio_start_sec=window.start_sample / spec.sample_rate,
    )


def _declared_duration(container: Any, astream: Any) -> float | None:
    """The duration a full decode would clamp with: the video's when there is a video stream,
    else the audio stream's, else the container's (None: nobody declares one)."""
    if container.streams.video:
        return _declared_video_duration(container, container.streams.video[0])
    if astream.duration is not None and astream.time_base is not None:
        return float(astream.duration * astream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None
