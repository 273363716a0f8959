"""The audio half of clip decoding: collect decoded audio frames, then resample and place them.

:class:`AudioWindow` receives the decoded frames of one audio stream (as the demuxer meets them)
and returns the mono float32 window ``[start_sample, start_sample + num_samples)`` at the target
sample rate. Samples are placed by their timestamps (after swresample, whose output timestamps
already account for its filter delay); audio outside the stream (before its first sample, after
its last, in gaps) is zero. Mono is the mean of the channels, taken before resampling.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import numpy as np

from xdc.errors import DecodeError

# Consecutive audio frames whose timestamps are this close to contiguous are placed contiguously
# (timestamps in ms jitter; the samples themselves are continuous).
AUDIO_SNAP_SEC = 2e-3
# Audio is decoded this far past the window end so that swresample's filter sees real samples.
AUDIO_TAIL_SEC = 0.01


class AudioWindow:
    """Collects the decoded audio of the window, then resamples it to mono and places it by time.

    Decoded frames are grouped into runs of contiguous samples and each run is downmixed and
    resampled in one call (one swresample call per frame costs more than the resampling itself).
    Packets that end more than ``history_sec`` before the window are not decoded at all.

    Args:
        path: the file, named in errors.
        stream: the PyAV audio stream the packets come from.
        start_sample: index of the window's first sample on the ``sample_rate`` grid (time 0 = 0).
        num_samples: length of the window.
        sample_rate: rate of the window (any source rate is resampled to it).
        history_sec: audio decoded before the window, for the decoder (AAC frames overlap) and
            swresample's filter.
    """

    def __init__(
        self,
        path: str,
        stream: Any,
        start_sample: int,
        num_samples: int,
        sample_rate: int,
        history_sec: float,
    ) -> None:
        self.path = path
        self.packet_time_base = float(stream.time_base)
        self.sample_rate = sample_rate
        self.start_sample = start_sample
        self.samples = np.zeros(num_samples, dtype=np.float32)
        self.end_sample = start_sample + num_samples
        self.decode_from_sec = start_sample / sample_rate - history_sec
        self.decode_until_sec = self.end_sample / sample_rate + AUDIO_TAIL_SEC
        self.runs: list[_AudioRun] = []

    @property
    def done(self) -> bool:
        return bool(self.runs) and self.runs[-1].end_sec >= self.decode_until_sec

    def wants(self, packet: Any) -> bool:
        """Whether to decode this packet (False once covered, or when it ends before the window)."""
        if self.done:
            return False
        if packet.pts is None or not packet.duration:  # unknown extent: decode to find out
            return True
        return (packet.pts + packet.duration) * self.packet_time_base >= self.decode_from_sec

    def push(self, frame: Any) -> None:
        """Append a decoded frame to the current run, or start a new run at a gap or format change."""
        run = self.runs[-1] if self.runs else None
        first = None
        if frame.pts is not None and frame.time_base is not None:
            first = _to_samples(frame.pts, frame.time_base, frame.sample_rate)
        elif run is None or not run.accepts(frame):  # nothing it could continue
            raise DecodeError(self.path, "audio frame without a timestamp")
        contiguous = first is None or (
            run is not None and abs(first - run.next_sample) <= AUDIO_SNAP_SEC * frame.sample_rate
        )
        if run is None or not run.accepts(frame) or not contiguous:
            run = _AudioRun(frame)
            self.runs.append(run)
        run.append(frame, first)

    def result(self) -> np.ndarray:
        """(num_samples,) float32 mono; zero where the stream has no audio."""
        for run in self.runs:
            try:
                pieces = run.resample(self.sample_rate)
            except ValueError as error:  # a sample format we do not convert
                raise DecodeError(self.path, f"unsupported audio ({error})") from error
            for pts, data in pieces:
                lo, hi = max(pts, self.start_sample), min(pts + len(data), self.end_sample)
                if lo < hi:
                    self.samples[lo - self.start_sample : hi - self.start_sample] = data[
                        lo - pts : hi - pts
                    ]
        return self.samples


class _AudioRun:
    """Contiguous decoded audio, kept as decoded (to_ndarray chunks) until it is resampled.

    Its position is the mean over its frames of "frame timestamp minus samples before it": one
    timestamp can be off by a millisecond (Matroska rounds to ms; after a seek, an Opus decoder
    shifts the first frame's), the run as a whole is not.
    """

    def __init__(self, frame: Any) -> None:
        self.format = frame.format.name
        self.layout = frame.layout.name
        self.channels = len(frame.layout.channels)
        self.rate = frame.sample_rate
        self.num_samples = 0
        self.chunks: list[np.ndarray] = []
        self._anchor_sum = 0
        self._anchor_count = 0

    @property
    def first_sample(self) -> int:
        return round(self._anchor_sum / max(1, self._anchor_count))

    @property
    def next_sample(self) -> int:
        return self.first_sample + self.num_samples

    @property
    def end_sec(self) -> float:
        return self.next_sample / self.rate

    def accepts(self, frame: Any) -> bool:
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        return source == (self.format, self.layout, self.rate)

    def append(self, frame: Any, first_sample: int | None) -> None:
        """Add a frame whose first sample has timestamp ``first_sample`` (None: unknown)."""
        if first_sample is not None:
            self._anchor_sum += first_sample - self.num_samples
            self._anchor_count += 1
        self.chunks.append(frame.to_ndarray())
        self.num_samples += frame.samples

    def resample(self, sample_rate: int) -> list[tuple[int, np.ndarray]]:
        """Mono float32 pieces at ``sample_rate``, each with its first sample index on that grid.

        Mono is the mean of the channels, taken before resampling (one channel to resample).
        """
        channels = _float_planar(np.concatenate(self.chunks, axis=1), self.format, self.channels)
        mono = channels.mean(axis=0, keepdims=True) if self.channels > 1 else channels
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono), format="fltp", layout="mono")
        frame.sample_rate = self.rate
        frame.time_base = Fraction(1, self.rate)
        frame.pts = self.first_sample
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
        pieces = []
        next_pos: int | None = None
        outputs: list[Any] = [*resampler.resample(frame), *resampler.resample(None)]
        for out in outputs:
            if out is None:  # a pass-through resampler (same rate) answers a flush with [None]
                continue
            # swresample's output timestamps already account for its filter delay
            pos = _to_samples(out.pts, out.time_base, sample_rate)
            if next_pos is not None and abs(pos - next_pos) <= 1:
                pos = next_pos
            data = out.to_ndarray().reshape(-1)
            pieces.append((pos, data))
            next_pos = pos + len(data)
        return pieces


# Full scale of the integer sample formats (what swresample divides by when converting to float).
_FULL_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63}


def _float_planar(raw: np.ndarray, sample_format: str, channels: int) -> np.ndarray:
    """(channels, n) float32 from ``AudioFrame.to_ndarray`` output: (channels, n) for planar
    formats, (1, n * channels) interleaved for packed ones."""
    planar = sample_format.endswith("p")
    base = sample_format[:-1] if planar else sample_format
    data = raw if planar else raw.reshape(-1, channels).T
    if base in ("flt", "dbl"):
        return data.astype(np.float32, copy=False)
    if base not in _FULL_SCALE:
        raise ValueError(f"sample format {sample_format!r}")
    if base == "u8":  # unsigned: silence is 128
        return (data.astype(np.float32) - 128.0) / 128.0
    return (data.astype(np.float64) / _FULL_SCALE[base]).astype(np.float32)


def _to_samples(pts: int, time_base: Fraction, sample_rate: int) -> int:
    """``pts * time_base`` in samples, rounded half up (integer arithmetic: Fractions are slow)."""
    num, den = time_base.numerator, time_base.denominator
    return (2 * pts * num * sample_rate + den) // (2 * den)
