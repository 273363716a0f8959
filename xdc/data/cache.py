"""An in-memory cache of decoded videos, for data sets small enough to hold in RAM.

With a few hundred or thousand short clips, decoding dominates a CPU training step: the cache
decodes every video once (all frames at the resize size, the whole audio track at the target rate)
and then cuts clips out of memory with the same rules as ``decode_clip``: the frame shown at each
target time, start clamping, ``pad``/``loop`` overflow, an audio window on the sample grid with
zeros outside the track. It is built in the main process before DataLoader workers start, so the
workers share it (copy-on-write) instead of each holding a copy.

Only what the spec asks for and the file has is held: no frames for an audio-only file
(``has_video`` 0) or an audio-only spec (``decode_video=False``: the audio of video files is then
decoded without their frames), no audio without ``audio_samples`` or without an audio track.
One cache can serve datasets whose specs differ (``clip(row, start, spec)``): a video dataset and
an audio one over the same rows.

With a ``LogMel`` (``ClipDataset.build_cache`` passes its own), the cache also holds each track's
log-mel spectrogram, computed once over the zero-padded track: a clip's log-mel is then a slice of
it (``clip(..., logmel=)``) rather than a short-time transform per clip and epoch. The slice is
exactly the log-mel of the clip's audio window moved to the track's hop grid (10 ms by default):
the window starts at most half a hop (5 ms) from where ``decode_clip`` starts it; its frames are
the ones the window would give, zeros outside the track included.

A row with a segment (``Manifest.segment``: 10 s of a longer video) caches that segment only —
its frames and its audio — and its clips stay inside it by ``decode_clip``'s segment rules.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from xdc.data.audio import LogMel
from xdc.data.decode import Clip, ClipSpec, clip_duration, decode_clip
from xdc.data.manifest import Manifest
from xdc.errors import ConfigError, DecodeError
from xdc.progress import track

log = logging.getLogger(__name__)
FRAME_TIME_EPS_SEC = 1e-3  # as in decode_clip: absorbs millisecond rounding of timestamps


@dataclass
class CachedVideo:
    frames: np.ndarray | None  # (N, H, W, 3) uint8, every source frame shown; None: not cached
    times: np.ndarray  # (N,) float64, presentation time of each frame
    audio: np.ndarray | None  # (S,) float32 mono at the spec's sample rate, from audio_first
    end: float  # clips come from [first, end): the file's duration, or the segment's end
    path: str = ""
    first: float = 0.0  # the segment's start (0: the whole file)
    audio_first: int = 0  # sample index (on the spec's rate grid) of audio[0]
    logmel: np.ndarray | None = None  # (n_mels, F) float32 log-mel of the zero-padded track
    logmel_first: int = 0  # index into ``audio`` (≤ 0: in the padding) of log-mel frame 0's start


class ClipCache:
    """Decoded videos of some manifest rows, and clips cut from them.

    Args:
        manifest: the rows' files and durations.
        rows: rows to cache (the others are decoded from disk as usual).
        spec: clip parameters; its size and sample rate fix what is cached.
        max_bytes: refuse to cache more than this (estimated from the manifest before decoding).
        logmel: also keep each audio track's log-mel, for ``clip(..., logmel=)`` (see the module
            docstring); its sample rate must be the spec's.
    """

    def __init__(
        self,
        manifest: Manifest,
        rows: list[int],
        spec: ClipSpec,
        max_bytes: int,
        progress: bool = True,
        logmel: LogMel | None = None,
    ) -> None:
        self.spec = spec
        if logmel is not None and logmel.sample_rate != spec.sample_rate:
            raise ValueError(
                f"the cache's LogMel takes {logmel.sample_rate} Hz, its spec {spec.sample_rate} Hz"
            )
        self.logmel = logmel if spec.audio_samples else None
        self.videos: dict[int, CachedVideo] = {}
        self.failed: dict[int, str] = {}
        estimate = sum(self._estimate_bytes(manifest, r) for r in rows)
        if estimate > max_bytes:
            raise ConfigError(
                f"data.cache=memory would hold about {estimate / 2**30:.1f} GiB of decoded video "
                f"(limit {max_bytes / 2**30:.1f} GiB, data.cache_gib); set data.cache=none for a "
                "data set this large, or raise data.cache_gib"
            )
        for row in track(rows, desc="cache", enabled=progress, leave=False):
            try:
                self.videos[row] = self._with_logmel(self._decode_whole(manifest, row))
            except DecodeError as err:
                self.failed[row] = f"{err.path}: {err.reason}"
                log.warning("skipping unreadable video %s (%s)", err.path, err.reason)

    def _wants(self, manifest: Manifest, row: int) -> tuple[bool, bool]:
        """(cache frames, cache audio) of ``row``: what the spec asks for and the file has."""
        video = self.spec.decode_video and manifest.has_video(row)
        return video, bool(self.spec.audio_samples) and manifest.has_audio(row)

    def _estimate_bytes(self, manifest: Manifest, row: int) -> int:
        want_video, want_audio = self._wants(manifest, row)
        audio = manifest.duration(row) * self.spec.sample_rate * 4 if want_audio else 0
        if want_audio and self.logmel is not None:  # its log-mel: n_mels floats a hop
            audio *= 1 + self.logmel.n_mels / self.logmel.hop_length
        if not want_video:
            return int(audio)
        info = manifest.rows[row]
        fps = float(info.get("fps") or 30.0)
        width, height = int(info.get("width") or 320), int(info.get("height") or 240)
        scale = (self.spec.resize_short or min(width, height)) / max(1, min(width, height))
        frames = math.ceil(manifest.duration(row) * fps) + 1
        return int(frames * width * height * scale * scale * 3 + audio)

    def _decode_whole(self, manifest: Manifest, row: int) -> CachedVideo:
        """The row's whole file, or only its segment (frames shown in it, its audio)."""
        path = manifest.path(row)
        duration, segment = manifest.file_duration(row), manifest.segment(row)
        first, end = segment or (0.0, duration)
        rate = self.spec.sample_rate
        want_video, want_audio = self._wants(manifest, row)
        if segment is None:
            audio_first, audio_samples = 0, int(math.ceil(duration * rate)) + 1
        else:  # exactly the samples decode_clip keeps of the segment
            audio_first = round(first * rate)
            audio_samples = max(1, round(end * rate) - audio_first)
        if not want_video:
            return self._decode_whole_audio(
                str(path), duration, segment, audio_first, audio_samples
            )
        fps = float(manifest.rows[row].get("fps") or 0.0)
        if duration <= 0 or fps <= 0 or end <= first:
            raise DecodeError(
                str(path), "duration or fps unknown in the manifest; re-run xdc index"
            )
        # Ask for frames at twice the nominal rate over the whole file (segment): every source
        # frame is then picked at least once (also for variable frame rates up to 2× nominal).
        n = int(math.ceil((end - first) * fps * 2)) + 2
        whole = replace(
            self.spec,
            num_frames=n,
            fps=2 * fps,
            audio_samples=audio_samples if want_audio else None,
            audio_align="start",
            overflow="pad",
        )
        clip = decode_clip(path, first, whole, duration_sec=duration, segment=segment)
        keep = np.concatenate([[True], np.diff(clip.frame_times) > 0])
        return CachedVideo(
            frames=np.ascontiguousarray(clip.frames[keep]),
            times=clip.frame_times[keep].copy(),
            audio=clip.audio,
            end=end,
            path=str(path),
            first=first,
            audio_first=audio_first,
        )

    def _decode_whole_audio(
        self,
        path: str,
        duration: float,
        segment: tuple[float, float] | None,
        audio_first: int,
        audio_samples: int,
    ) -> CachedVideo:
        """The whole audio track (or the segment's), no frames (an audio-only file, or an
        audio-only spec)."""
        if duration <= 0:
            raise DecodeError(path, "duration unknown in the manifest; re-run xdc index")
        first, end = segment or (0.0, duration)
        whole = replace(
            self.spec, decode_video=False, num_frames=0, audio_samples=audio_samples
        )  # num_frames=0: the span is the window, which then starts at `first` whatever the alignment
        clip = decode_clip(path, first, whole, duration_sec=duration, segment=segment)
        return CachedVideo(None, np.zeros(0), clip.audio, end, path, first, audio_first)

    def __contains__(self, row: int) -> bool:
        return row in self.videos or row in self.failed

    def clip(
        self,
        row: int,
        start_sec: float,
        spec: ClipSpec | None = None,
        logmel: LogMel | None = None,
    ) -> Clip:
        """The clip of ``spec`` (default ``self.spec``; same size and sample rate) starting at
        ``start_sec``, cut from memory: frames (T, H, W, 3) uint8 (empty when ``spec`` decodes no
        video), audio (audio_samples,) float32 or None.

        ``logmel``: the caller's log-mel transform; when it computes what the cache's does
        (``LogMel.signature``) and the row's track has one, the clip holds ``logmel`` (a slice of
        the track's, on its hop grid: the module docstring) and no ``audio``.
        """
        if row in self.failed:
            path, _, reason = self.failed[row].partition(": ")
            raise DecodeError(path, reason)
        video = self.videos[row]
        spec = spec or self.spec
        span = clip_duration(spec)
        first, end = video.first, video.end
        start = max(first, start_sec)
        if start >= end:  # as decode_clip: a start past the end is moved to fit
            start = max(first, end - span)
        frames, frame_times = np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0)
        if spec.decode_video:
            if video.frames is None:
                raise DecodeError(video.path, "no video stream (audio-only row or cache)")
            # Past the end, 'pad' takes the last cached frame: the last one shown before `end`.
            times = _frame_offsets(spec.num_frames, spec.fps) + start
            if spec.overflow == "loop":
                eps = FRAME_TIME_EPS_SEC
                times = first + np.mod(times - first + eps, end - first) - eps
            index = np.searchsorted(video.times, times + FRAME_TIME_EPS_SEC, side="right") - 1
            np.minimum(np.maximum(index, 0, out=index), len(video.times) - 1, out=index)
            frames, frame_times = video.frames[index], video.times[index]
        audio, audio_start = None, 0.0
        if spec.audio_samples:
            if video.audio is None:
                raise DecodeError(video.path, "no audio stream (or not cached)")
            offset = _window_start(start, span, spec) - video.audio_first  # an index of the track
            ours = self.logmel.signature if self.logmel is not None else None
            cut = None
            if logmel is not None and logmel.signature == ours:
                cut = self._logmel_window(video, offset, spec)
            if cut is not None:
                return Clip(frames, frame_times, start, None, cut[1], logmel=cut[0])
            audio, audio_start = self._audio_window(video, offset, spec)
        return Clip(frames, frame_times, start, audio, audio_start)

    def _with_logmel(self, video: CachedVideo) -> CachedVideo:
        """``video`` with the log-mel of its audio track zero-padded by a window on the left and a
        window and a hop on the right (a window partly outside the track is then a slice too)."""
        lm = self.logmel
        if lm is None or video.audio is None:
            return video
        hop, win, n = lm.hop_length, lm.win_length, int(self.spec.audio_samples or 0)
        pad = -(-n // hop) * hop
        wave = torch.from_numpy(np.concatenate([np.zeros(pad, np.float32), video.audio,
                                                np.zeros(n + hop, np.float32)]))  # fmt: skip
        frames = lm.num_frames(len(wave))
        chunk = 8192  # frames a call: bounds the transform's memory for a long track
        with torch.no_grad():
            parts = [
                lm(wave[j * hop : (min(j + chunk, frames) - 1) * hop + win])
                for j in range(0, frames, chunk)
            ]
        spectrogram = torch.cat(parts, dim=1).numpy()
        return replace(video, logmel=spectrogram, logmel_first=-pad)

    def _logmel_window(
        self, video: CachedVideo, offset: int, spec: ClipSpec
    ) -> tuple[np.ndarray, float] | None:
        """(n_mels, frames) slice of the track's log-mel for the window starting at ``offset``
        (an index of the track) moved to the hop grid, and the window's start time; None when
        the window leaves the padded track."""
        lm, spectrogram = self.logmel, video.logmel
        if lm is None or spectrogram is None:
            return None
        hop = lm.hop_length
        steps = round(offset / hop)
        first = steps - video.logmel_first // hop
        count = lm.num_frames(int(spec.audio_samples or 0))
        if first < 0 or first + count > spectrogram.shape[1] or count == 0:
            return None
        start = (video.audio_first + steps * hop) / spec.sample_rate
        return spectrogram[:, first : first + count], start

    def _audio_window(
        self, video: CachedVideo, offset: int, spec: ClipSpec
    ) -> tuple[np.ndarray, float]:
        """The window of ``spec.audio_samples`` starting at ``offset`` (an index of the track),
        zeros outside the track, and its start time."""
        n = int(spec.audio_samples or 0)
        out = np.zeros(n, dtype=np.float32)
        track = video.audio if video.audio is not None else np.zeros(0, np.float32)
        lo, hi = max(0, offset), min(len(track), offset + n)
        if hi > lo:
            out[lo - offset : hi - offset] = track[lo:hi]
        return out, (offset + video.audio_first) / spec.sample_rate


def _window_start(start: float, span: float, spec: ClipSpec) -> int:
    """First sample (on the spec's rate grid) of the audio window of a clip starting at
    ``start``: centred on the clip, or at its start (``spec.audio_align``), as ``decode_clip``."""
    n, rate = int(spec.audio_samples or 0), spec.sample_rate
    ideal = start + span / 2 - n / (2 * rate) if spec.audio_align == "center" else start
    return int(round(ideal * rate))


@functools.lru_cache(maxsize=16)
def _frame_offsets(num_frames: int, fps: float) -> np.ndarray:
    """Times of a clip's frames after its start (read-only: shared by every clip)."""
    offsets = np.arange(num_frames) / fps
    offsets.flags.writeable = False
    return offsets
