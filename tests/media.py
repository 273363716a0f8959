"""Helpers that write small real media files for the tests (PyAV, no external tools).

Every test makes its own data: lossless files (FFV1 video + PCM audio in Matroska) when a test
compares decoded pixels and samples exactly, lossy ones (H.264 + AAC in MP4) when it needs the
formats users have.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    lossless: bool = True,
    frame_times: Sequence[float] | None = None,
    gop: int = 12,
) -> Path:
    """Write ``frames`` (T, H, W, 3) uint8 RGB and optional ``audio`` (C, N) or (N,) float in [-1, 1].

    Args:
        path: output file; its suffix picks the container (``.mkv``, ``.mp4``, ``.webm``, ``.avi``).
        fps: nominal frame rate (also the time base denominator unless ``frame_times`` is given).
        lossless: FFV1 (``bgr0``) + PCM s16 when True; H.264 (``yuv420p``) + AAC otherwise.
        frame_times: explicit presentation times in seconds, for variable-frame-rate files
            (written with a 1/1000 s time base).
        gop: keyframe interval of lossy video.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    _, height, width, _ = frames.shape
    with av.open(str(path), "w") as container:
        if lossless:
            vstream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001))
            vstream.pix_fmt = "bgr0"
        else:
            vstream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"g": str(gop), "preset": "ultrafast", "bf": "0"}
        vstream.width, vstream.height = width, height
        if frame_times is not None:
            vstream.codec_context.time_base = Fraction(1, 1000)
        astream = None
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim == 1:
                audio = audio[None, :]
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            codec = "pcm_s16le" if lossless else "aac"
            astream = container.add_stream(codec, rate=sample_rate, layout=layout)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if frame_times is not None:
                frame.pts = int(round(frame_times[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            else:
                frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode())
        if astream is not None and audio is not None:
            _write_audio(container, astream, audio, sample_rate, lossless)
    return path


def _write_audio(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    audio: np.ndarray,
    sample_rate: int,
    lossless: bool,
) -> None:
    channels = audio.shape[0]
    layout = "mono" if channels == 1 else "stereo"
    if lossless:
        # 1024-sample frames, so that the muxer interleaves audio with video as real files do.
        data = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
        for start in range(0, data.shape[1], 1024):
            packed = np.ascontiguousarray(data[:, start : start + 1024].T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start
            container.mux(stream.encode(frame))
    else:
        chunk = stream.codec_context.frame_size or 1024
        for start in range(0, audio.shape[1], chunk):
            piece = np.ascontiguousarray(audio[:, start : start + chunk])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start
            container.mux(stream.encode(frame))
    container.mux(stream.encode())


def random_frames(n: int, height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8 noise frames; each frame differs, so frame identity is testable."""
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def numbered_frames(n: int, height: int = 32, width: int = 32) -> np.ndarray:
    """Flat frames whose grey level encodes the frame number (robust to lossy coding)."""
    levels = np.linspace(8, 247, n).round().astype(np.uint8) if n > 1 else np.array([128], np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def tone(
    seconds: float, sample_rate: int = 16000, freq: float = 440.0, amp: float = 0.5
) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_media(
    path: str | Path,
    video: str | None = "libx264",
    audio: str | None = "aac",
    *,
    seconds: float = 1.0,
    fps: float = 10.0,
    width: int = 32,
    height: int = 32,
    frame_times: Sequence[float] | None = None,
    pix_fmt: str | None = None,
    sample_rate: int = 16000,
    layout: str = "mono",
    video_options: dict[str, str] | None = None,
    video_metadata: dict[str, str] | None = None,
    container_format: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """A small real file with any codecs this FFmpeg can encode: ``video`` and ``audio`` are
        encoder names (None: no such stream), e.g. ``mpeg4``/``mjpeg`` in ``.avi``, ``libvpx`` +
        ``libopus`` in ``.webm``, ``pcm_s16le`` in ``.wav``, ``libmp3lame`` in ``.mp3``.

        Frames are a moving gradient (cheap to encode, every frame different); audio a 440 Hz tone on
        every channel of ``layout``. ``container_options`` go to the muxer (``{"movflags": "faststart"}``:
    an MP4 with its index first). ``frame_times`` (seconds) makes a variable-frame-rate stream with
        a 1/1000 s clock; otherwise frames are 1/``fps`` apart. The encoder's own sample format and
        frame size are used (the tone is converted with PyAV's resampler).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    times = list(frame_times) if frame_times is not None else None
    count = len(times) if times is not None else max(1, round(seconds * fps))
    with av.open(
        str(path), "w", format=container_format, options=container_options or {}
    ) as container:
        vstream = None
        if video is not None:
            vstream = container.add_stream(video, rate=Fraction(fps).limit_denominator(1001))
            vstream.width, vstream.height = width, height
            vstream.pix_fmt = pix_fmt or _default_pix_fmt(video)
            if video_options:
                vstream.options = dict(video_options)
            if video_metadata:
                vstream.metadata.update(video_metadata)
            if times is not None:
                vstream.codec_context.time_base = Fraction(1, 1000)
        astream = None
        if audio is not None:
            astream = container.add_stream(audio, rate=sample_rate, layout=layout)
        if vstream is not None:
            for i in range(count):
                frame = av.VideoFrame.from_ndarray(_gradient(i, height, width), format="rgb24")
                if times is not None:
                    frame.pts, frame.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
                else:
                    frame.pts = i
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode())
        if astream is not None:
            _encode_tone(container, astream, seconds, sample_rate, layout)
    return path


def _default_pix_fmt(codec: str) -> str:
    return {"ffv1": "bgr0", "mjpeg": "yuvj420p", "png": "rgb24", "gif": "rgb8"}.get(
        codec, "yuv420p"
    )


def _gradient(i: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 7 + i * 9) % 256, (y * 5 + i * 3) % 256, (x + y + i * 17) % 256], -1)
    return image.astype(np.uint8)


def _encode_tone(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    seconds: float,
    sample_rate: int,
    layout: str,
) -> None:
    channels = av.AudioLayout(layout).nb_channels
    # packed samples (one plane): PyAV cannot fill planar frames of 8 or more channels
    packed = np.repeat(tone(seconds, sample_rate)[:, None], channels, axis=1).reshape(1, -1)
    source = av.AudioFrame.from_ndarray(np.ascontiguousarray(packed), format="flt", layout=layout)
    source.sample_rate, source.pts = sample_rate, 0
    frame_size = stream.codec_context.frame_size or 1024
    resampler = av.AudioResampler(
        format=stream.codec_context.format.name,
        layout=layout,
        rate=sample_rate,
        frame_size=frame_size,
    )
    for frame in [*resampler.resample(source), *resampler.resample(None)]:
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def untimed_matroska(path: Path) -> Path:
    """Rewrite the one-frame Matroska file ``path`` (25 fps) so that its header says it lasts
    0 s: segment duration and DURATION tag zeroed, DefaultDuration renamed to an element
    demuxers skip."""
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89\x88")
    data[at + 3 : at + 11] = struct.pack(">d", 0.0)
    at = data.index(b"00:00:00.040000000")
    data[at : at + 18] = b"00:00:00.000000000"
    at = data.index(b"\x23\xe3\x83")
    data[at : at + 3] = b"\x23\xe3\x84"
    path.write_bytes(data)
    return path
