"""Prepare videos for training speed: ``xdc prepare SRC OUT``.

SRC is what ``xdc index`` reads: a folder of videos (label = parent folder name) or a CSV with a
``path`` column (a manifest; ``label``, ``split`` and any other column are kept). Each video is
re-encoded with PyAV into ``OUT``, at the same path relative to SRC (the CSV's folder for a CSV;
a file outside it goes under ``OUT/external/`` + its absolute path), as ``.mp4``:

- video: H.264 (libx264, ``--preset`` veryfast, ``--crf`` 23, no B-frames), short side
  ``--short-side`` (128; never upscaled; both sides even, the aspect ratio kept), keyframes at most
  ``--keyframe-interval`` seconds apart (1 s: 25 frames at 25 fps, 29 at 29.97; forced by time,
  so a variable frame rate gets them too, up to its own frame gaps), so that a clip's seek decodes
  at most that much video before its first frame; the source's frames at its timestamps;
- audio: AAC, ``--audio-rate`` Hz (16000, what the log-mel uses), ``--audio-channels`` (1); a file
  without audio stays without audio. Audio and video keep their timestamps, shifted together so
  that the file starts at 0: the A/V offset and the duration are those of the source.

Decoding a clip from the prepared copy skips the source's large frames and long GOPs: the loader's
clips/s on 720p sources rise several-fold (``benchmarks/data.py``).

Each source is probed first (``xdc.data.probe.probe_file``); a file the probe rejects (its
reason, as ``xdc index`` gives it), one without a video stream (``no video stream``), one whose
re-encoding fails or whose new file the probe rejects (``re-encoding failed``) and one that kills
the process preparing it twice (``worker died``) is listed in ``OUT/failed.csv`` with its reason
and left out; nothing stops the run. Failed files are tried again on the next run. Every output is written under a temporary name in its
folder and renamed when complete and probed (``xdc.atomic.atomic_path``), so an interrupted run
leaves no partial output; its temporaries are removed when the next run starts. Originals are only
read. ``OUT/prepare-state.jsonl`` records each output's source (size, mtime_ns) and settings: a
re-run skips outputs whose record matches and redoes the others (a changed source, other
settings, a deleted output). ``OUT/manifest.csv`` lists the prepared copies (paths relative to
``OUT``, so it is read without ``--data-root``) with their probed columns, the source's ``label``,
``split`` and other columns, and ``source_path``: the absolute path of the original.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av

from xdc import atomic
from xdc.data.index import read_source
from xdc.data.manifest import encode_path, text_cell, write_manifest
from xdc.data.pool import map_files
from xdc.data.probe import ProbeResult, probe_file
from xdc.errors import ConfigError, DataError
from xdc.progress import track

__all__ = [
    "ENCODE_FAILED",
    "NO_VIDEO",
    "WORKER_DIED",
    "PrepareResult",
    "PrepareSettings",
    "FileResult",
    "prepare_file",
    "prepare_videos",
]

NO_VIDEO = "no video stream"
ENCODE_FAILED = "re-encoding failed"
WORKER_DIED = "worker died"
MANIFEST_NAME, FAILED_NAME, STATE_NAME = "manifest.csv", "failed.csv", "prepare-state.jsonl"
_LOCK_NAME = ".prepare.lock"
_SUFFIX = ".mp4"
# Name of an ``atomic_path(output, ".mp4")`` temporary: "." + output name + 8 letters + ".mp4".
_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(_SUFFIX))
_STATE_VERSION = 1
# Slack of the keyframe interval: absorbs the rounding of timestamps (25 frames at 25 fps are 1.0 s,
# not 0.99999 s).
_KEY_EPS_SEC = 1e-6


@dataclass(frozen=True)
class PrepareSettings:
    """How the prepared copies are encoded (recorded per output: a change redoes it)."""

    short_side: int = 128  # px; a smaller source keeps its size
    keyframe_interval: float = 1.0  # s between keyframes, at most
    crf: int = 23  # x264 constant rate factor: 0 lossless … 51 worst; 23 is x264's default
    preset: str = "veryfast"  # x264 speed preset
    audio_rate: int = 16000  # Hz
    audio_channels: int = 1  # 1 mono, 2 stereo
    audio_bitrate: int = 48000  # bit/s of the AAC audio

    def check(self) -> None:
        """Raise ``ConfigError`` naming the flag of the first invalid value."""
        problems = [
            (self.short_side >= 2, f"--short-side must be at least 2 (got {self.short_side})"),
            (
                self.keyframe_interval > 0,
                f"--keyframe-interval must be > 0 seconds (got {self.keyframe_interval})",
            ),
            (0 <= self.crf <= 51, f"--crf must be in 0..51 (got {self.crf})"),
            (self.preset in _X264_PRESETS, f"--preset must be one of {', '.join(_X264_PRESETS)}"),
            (
                self.audio_rate >= 8000,
                f"--audio-rate must be at least 8000 (got {self.audio_rate})",
            ),
            (
                self.audio_channels in (1, 2),
                f"--audio-channels must be 1 or 2 (got {self.audio_channels})",
            ),
            (self.audio_bitrate > 0, f"audio_bitrate must be > 0 (got {self.audio_bitrate})"),
        ]
        for ok, message in problems:
            if not ok:
                raise ConfigError(message)


_X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)  # fmt: skip


@dataclass
class FileResult:
    """What preparing one file gave: the output's probe columns, or why it failed."""

    source: str
    output: str
    reason: str = ""  # empty when the output was written
    detail: str = ""
    source_size: int = 0
    source_mtime_ns: int = 0
    output_size: int = 0
    columns: dict[str, object] = field(default_factory=dict)  # the output's probe columns

    @property
    def ok(self) -> bool:
        return not self.reason


# ---------------------------------------------------------------------------------------------
# One file.


def prepare_file(
    source: str | Path, output: str | Path, settings: PrepareSettings, threads: int = 0
) -> FileResult:
    """Re-encode ``source`` into ``output`` (atomically) and probe the result.

    Never raises for a bad file: the result says why it failed. ``threads`` are the decoder's and
    encoder's codec threads (0: FFmpeg chooses; 1 in a pool of processes).
    """
    src, dst = os.fspath(source), os.fspath(output)
    try:
        info = os.stat(src)
    except (OSError, ValueError) as error:
        return _probe_failure(probe_file(src), dst, error)
    result = FileResult(src, dst, source_size=info.st_size, source_mtime_ns=info.st_mtime_ns)
    probe = probe_file(src)
    if not probe.ok:
        result.reason, result.detail = probe.reason, probe.detail
        return result
    if not probe.has_video:
        result.reason, result.detail = NO_VIDEO, "an audio-only file: use it as it is"
        return result
    try:
        with atomic.atomic_path(dst, suffix=_SUFFIX) as tmp:
            _transcode(src, str(tmp), settings, threads)
            written = probe_file(tmp)
            if not written.ok:
                raise _OutputRejected(
                    f"the new file is rejected: {written.reason} ({written.detail})"
                )
            result.output_size = tmp.stat().st_size
    except Exception as error:  # one file must not stop the run
        result.reason, result.detail = ENCODE_FAILED, text_cell(f"{type(error).__name__}: {error}")
        return result
    result.columns = written.columns()
    return result


class _OutputRejected(Exception):
    """The source cannot be re-encoded, or the new file did not pass the probe."""


def _probe_failure(probe: ProbeResult, output: str, error: Exception) -> FileResult:
    reason = probe.reason or "missing"
    return FileResult(probe.path, output, reason, probe.detail or str(error))


def _transcode(source: str, target: str, settings: PrepareSettings, threads: int) -> None:
    """Decode ``source`` and write its first video and audio streams to ``target`` (MP4)."""
    with av.open(source, metadata_errors="replace") as container:
        vin = container.streams.video[0]
        ain = container.streams.audio[0] if container.streams.audio else None
        for stream in (vin, ain):
            if stream is not None and stream.codec_context is None:
                raise _OutputRejected(f"this FFmpeg has no decoder for its {stream.type} codec")
        vin.codec_context.thread_count = threads
        if threads != 1:
            vin.thread_type = "AUTO"  # frame and slice threads
        # Both streams shift by the file's start, so that the copy starts at 0 in sync.
        offset = (container.start_time or 0) / av.time_base
        with av.open(target, "w", format="mp4", options={"movflags": "+faststart"}) as out:
            video = _VideoWriter(out, vin, settings, threads, offset)
            audio = None if ain is None else _AudioWriter(out, ain, settings, offset)
            streams = [vin] if ain is None else [vin, ain]
            for packet in container.demux(streams):
                for frame in packet.decode():
                    if packet.stream.type == "video":
                        video.write(frame)
                    elif audio is not None:
                        audio.write(frame)
            video.flush()
            if audio is not None:
                audio.flush()


def _output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` (never upscaled), both even."""
    scale = min(1.0, short_side / max(1, min(width, height)))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


class _VideoWriter:
    """H.264 at the output size; frames keep their timestamps; a keyframe forced each interval."""

    def __init__(
        self, out: Any, vin: Any, settings: PrepareSettings, threads: int, offset: float
    ) -> None:
        rate = vin.average_rate or vin.guessed_rate or vin.base_rate or Fraction(25)
        self.time_base = vin.time_base or Fraction(1, 1000)
        self.stream = out.add_stream("libx264", rate=rate)
        self.width, self.height = _output_size(
            vin.codec_context.width, vin.codec_context.height, settings.short_side
        )
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = self.time_base
        self.stream.codec_context.thread_count = threads
        gop = max(1, int(float(rate) * settings.keyframe_interval + _KEY_EPS_SEC))
        # The GOP length backs up the keyframes forced by time (``write``); scene cuts may add
        # more. No B-frames: decoding order is presentation order, so the container's duration
        # is the frames' (with B-frames and a variable frame rate, MP4's is short by the reorder
        # delay) and a seek decodes no frame it does not show.
        self.stream.options = {
            "crf": str(settings.crf),
            "preset": settings.preset,
            "g": str(gop),
            "bf": "0",
        }
        self.out, self.interval, self.threads = out, settings.keyframe_interval, threads
        self.offset = round(offset / self.time_base)
        self.period = 1 / float(rate)  # s between frames, nominally
        self.step = max(1, round(self.period / self.time_base))  # the same, in ticks
        self.last_pts: int | None = None
        self.last_key_sec = -float("inf")

    def write(self, frame: Any) -> None:
        if frame.pts is None:  # no timestamp: the frame after the last one
            pts = 0 if self.last_pts is None else self.last_pts + self.step
        else:
            pts = frame.pts - self.offset
        if self.last_pts is not None and pts <= self.last_pts:
            return  # a repeated or out-of-order timestamp: H.264 needs them increasing
        scaled = frame.reformat(
            self.width, self.height, format="yuv420p", interpolation="AREA", threads=self.threads
        )
        scaled.pts, scaled.time_base = pts, self.time_base
        seconds = float(pts * self.time_base)
        # A keyframe here when waiting for the next frame would exceed the interval: at 25 fps
        # and 1 s every 25th frame, at 29.97 fps every 29th (x264's GOP length agrees).
        if seconds + self.period > self.last_key_sec + self.interval + _KEY_EPS_SEC:
            scaled.pict_type = av.video.frame.PictureType.I
            self.last_key_sec = seconds
        self.last_pts = pts
        self.out.mux(self.stream.encode(scaled))

    def flush(self) -> None:
        self.out.mux(self.stream.encode(None))


class _AudioWriter:
    """AAC at the output rate and channels; samples keep their timestamps."""

    def __init__(self, out: Any, ain: Any, settings: PrepareSettings, offset: float) -> None:
        layout = "mono" if settings.audio_channels == 1 else "stereo"
        self.rate = settings.audio_rate
        self.stream = out.add_stream("aac", rate=self.rate, layout=layout)
        self.stream.bit_rate = settings.audio_bitrate
        self.resampler = av.AudioResampler(
            format="fltp", layout=layout, rate=self.rate, frame_size=1024
        )
        self.out = out
        self.offset = round(offset * self.rate)
        self.next_pts = 0

    def write(self, frame: Any) -> None:
        self._encode(self.resampler.resample(frame))

    def flush(self) -> None:
        self._encode(self.resampler.resample(None))
        self.out.mux(self.stream.encode(None))

    def _encode(self, frames: list[Any]) -> None:
        for frame in frames:
            frame.pts = self.next_pts if frame.pts is None else frame.pts - self.offset
            frame.time_base = Fraction(1, self.rate)
            self.next_pts = frame.pts + frame.samples
            self.out.mux(self.stream.encode(frame))


# ---------------------------------------------------------------------------------------------
# Many files: jobs, the state of earlier runs, a pool of processes.


@dataclass
class _Job:
    source: str  # absolute
    output: str  # absolute: OUT / relative
    relative: str  # the output's path relative to OUT
    columns: dict[str, str]  # label, split and the source CSV's other columns


def _jobs(source: Path, out: Path) -> tuple[list[_Job], list[str], list[FileResult]]:
    """(jobs, the source CSV's extra columns, rows of the CSV that name no file)."""
    entries, extras = read_source(source)
    if source.is_dir():
        root = os.path.abspath(source)
        inside_out = os.path.abspath(out).rstrip(os.sep) + os.sep
        if (root + os.sep).startswith(inside_out):
            raise ConfigError(
                f"OUT {out}: holds the source folder {source}; pass an OUT folder of its own "
                f"(e.g. {Path(root).parent / (Path(root).name + '-prepared')})"
            )
        entries = [e for e in entries if not e.path.startswith(inside_out)]  # earlier outputs
    else:
        root = os.path.abspath(source.parent)
    empty = [FileResult("", "", "missing", e.problem) for e in entries if not e.path]
    entries = [e for e in entries if e.path]
    relative = [_relative_output(e.path, root) for e in entries]
    folder = os.path.abspath(out)
    jobs = [
        _Job(e.path, os.path.join(folder, o), o, e.columns)
        for e, o in zip(entries, _unique_outputs(relative), strict=True)
    ]
    return jobs, extras, empty


def _relative_output(path: str, root: str) -> str:
    """Where ``path`` goes in OUT: its path relative to ``root``, or ``external/`` + its absolute
    path when it lies outside ``root``."""
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive (Windows)
        rel = ".."
    if rel == ".." or rel.startswith(".." + os.sep):
        drive, rest = os.path.splitdrive(os.path.abspath(path))
        rel = os.path.join("external", drive.strip(":\\/"), rest.lstrip(os.sep))
    return rel


def _unique_outputs(relative: list[str]) -> list[str]:
    """``name.mp4`` for each source; sources that would share one (``a.avi``, ``a.mkv``) keep
    their suffix (``a.avi.mp4``, ``a.mkv.mp4``); a clash left after that gets a number."""
    plain = [os.path.splitext(r)[0] + _SUFFIX for r in relative]
    counts = Counter(plain)
    names = [p if counts[p] == 1 else r + _SUFFIX for p, r in zip(plain, relative, strict=True)]
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{os.path.splitext(name)[0]}.{n}{_SUFFIX}"
        seen.add(candidate)
        unique.append(candidate)
    return unique


class _State:
    """``OUT/prepare-state.jsonl``: one JSON line per output written, the last line of an output
    wins. Appended (and flushed to disk) as outputs are written, so a killed run keeps what it
    finished; rewritten at the end with the current outputs only."""

    def __init__(self, path: Path, settings: PrepareSettings) -> None:
        self.path = path
        self.settings = asdict(settings)
        self.entries: dict[str, dict[str, Any]] = {}
        self.note = ""
        if path.is_file():
            self._read()
        self._fh: IO[str] | None = None

    def _read(self) -> None:
        bad = 0
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    if entry.get("version") == _STATE_VERSION:
                        self.entries[entry["output"]] = entry
                except (ValueError, KeyError, TypeError, AttributeError):
                    bad += 1  # the line a killed run was writing
        if bad:
            self.note = f"{self.path}: {bad} unreadable line(s) ignored (a run killed mid-write)"

    def done(self, job: _Job) -> dict[str, Any] | None:
        """The record of ``job``'s output when it is up to date, else None."""
        entry = self.entries.get(encode_path(job.output))
        if entry is None or entry.get("source") != encode_path(job.source):
            return None
        if entry.get("settings") != self.settings:
            return None
        try:
            src, dst = os.stat(job.source), os.stat(job.output)
        except (OSError, ValueError):
            return None
        unchanged = (src.st_size, src.st_mtime_ns) == (
            entry["source_size"],
            entry["source_mtime_ns"],
        )
        return entry if unchanged and dst.st_size == entry["output_size"] else None

    def record(self, result: FileResult) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "version": _STATE_VERSION,
            "output": encode_path(result.output),
            "source": encode_path(result.source),
            "source_size": result.source_size,
            "source_mtime_ns": result.source_mtime_ns,
            "output_size": result.output_size,
            "settings": self.settings,
            "columns": result.columns,
        }
        self.entries[entry["output"]] = entry
        if self._fh is None:
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(entry, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return entry

    def close(self, keep: list[_Job]) -> None:
        """Rewrite the file with the entries of ``keep``'s outputs only."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        wanted = [
            self.entries[k] for k in (encode_path(j.output) for j in keep) if k in self.entries
        ]
        atomic.write_text(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in wanted))


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``OUT/.prepare.lock``: a second ``xdc prepare`` into the same OUT is refused (it would
    remove the first one's temporaries)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one run at a time is the user's care
        yield
        return
    with (out / _LOCK_NAME).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DataError(
                f"{out}: another `xdc prepare` is writing there; wait for it to finish "
                "(or pass another OUT)"
            ) from None
        yield


def _remove_temporaries(jobs: list[_Job]) -> int:
    """Remove the temporaries a killed run left next to the outputs; how many there were."""
    by_folder: dict[str, set[str]] = {}
    for job in jobs:
        by_folder.setdefault(os.path.dirname(job.output), set()).add(os.path.basename(job.output))
    removed = 0
    for folder, names in by_folder.items():
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(folder):
                match = _TEMP.fullmatch(name)
                if match and match["name"] in names:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def _run(jobs: list[_Job], settings: PrepareSettings, workers: int) -> Iterator[FileResult]:
    """``prepare_file`` of every job; in ``workers`` processes when more than one."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield prepare_file(job.source, job.output, settings, threads=0)
        return
    work = functools.partial(_prepare_job, settings=settings)
    yield from map_files(
        work,
        jobs,
        workers,
        lambda job, detail: FileResult(job.source, job.output, WORKER_DIED, detail),
    )


def _prepare_job(job: _Job, settings: PrepareSettings) -> FileResult:
    return prepare_file(job.source, job.output, settings, 1)


# ---------------------------------------------------------------------------------------------
# The command.


@dataclass
class PrepareResult:
    """What ``prepare_videos`` wrote and counted."""

    out: Path
    prepared: int  # outputs written in this run
    skipped: int  # outputs already up to date
    failures: list[FileResult]
    without_audio: int  # outputs (prepared or skipped) without an audio track
    source_bytes: int  # sizes of the sources of every output in the manifest
    output_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        return self.out / MANIFEST_NAME

    @property
    def failed_path(self) -> Path:
        return self.out / FAILED_NAME

    def summary(self, listed: int = 20) -> str:
        """A few lines for a person: counts, sizes, time, failures and where the files are."""
        by_reason = Counter(f.reason for f in self.failures)
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(by_reason.items()))
        ratio = self.output_bytes / self.source_bytes if self.source_bytes else 0.0
        lines = [
            f"prepared {self.prepared}, skipped {self.skipped} (already done), failed "
            f"{len(self.failures)}"
            + (f" ({reasons})" if reasons else "")
            + f"; without audio {self.without_audio} (kept without audio)",
            f"size {_mib(self.source_bytes)} -> {_mib(self.output_bytes)} ({ratio:.2f}x) "
            f"in {self.seconds:.1f} s",
        ]
        for failure in self.failures[:listed]:
            lines.append(f"  failed: {failure.source}: {failure.reason} ({failure.detail})")
        if len(self.failures) > listed:
            lines.append(f"  … and {len(self.failures) - listed} more in {self.failed_path}")
        lines += self.notes
        lines.append(f"manifest: {self.manifest_path}")
        lines.append(f"failed: {self.failed_path}")
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def prepare_videos(
    source: str | Path,
    out: str | Path,
    settings: PrepareSettings | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Re-encode every video of ``source`` into ``out`` (module docstring), resuming earlier runs.

    Args:
        source: a folder of videos or a CSV with a ``path`` column (what ``xdc index`` reads).
        out: the output folder: the copies, ``manifest.csv``, ``failed.csv`` and the state file.
        settings: the encoding (default ``PrepareSettings()``).
        workers: processes (default ``os.cpu_count()``; 1 encodes in this process).
        progress: show a progress bar.
    """
    started = time.perf_counter()
    settings = settings or PrepareSettings()
    settings.check()
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    source, out = Path(source), Path(out)
    jobs, extras, failures = _jobs(source, out)
    out.mkdir(parents=True, exist_ok=True)
    _refuse_overwriting_sources(jobs, source, out)
    with _exclusive(out):
        removed = _remove_temporaries(jobs)
        state = _State(out / STATE_NAME, settings)
        records: dict[str, dict[str, Any]] = {}
        todo = []
        for job in jobs:
            entry = state.done(job)
            if entry is None:
                todo.append(job)
            else:
                records[job.output] = entry
        skipped = len(records)
        try:
            with track(total=len(todo), desc="preparing", unit="file", enabled=progress) as bar:
                for result in _run(todo, settings, workers or os.cpu_count() or 1):
                    if result.ok:
                        records[result.output] = state.record(result)
                    else:
                        failures.append(result)
                    bar.update()
        finally:
            state.close(jobs)
        order = {job.source: i for i, job in enumerate(jobs)}
        failures.sort(key=lambda f: order.get(f.source, -1))
        rows = _manifest_rows(jobs, records)
        write_manifest(rows, out / MANIFEST_NAME, [*extras, "source_path"])
        _write_failed(failures, out / FAILED_NAME)
    notes = [state.note] if state.note else []
    if removed:
        notes.append(f"removed {removed} temporary file(s) an interrupted run left in {out}")
    kept = [j for j in jobs if j.output in records]
    return PrepareResult(
        out=out,
        prepared=len(records) - skipped,
        skipped=skipped,
        failures=failures,
        without_audio=sum(1 for j in kept if not records[j.output]["columns"].get("has_audio")),
        source_bytes=sum(records[j.output]["source_size"] for j in kept),
        output_bytes=sum(records[j.output]["output_size"] for j in kept),
        seconds=time.perf_counter() - started,
        notes=notes,
    )


def _refuse_overwriting_sources(jobs: list[_Job], source: Path, out: Path) -> None:
    """Refuse an OUT where an output would replace a source (originals are never touched)."""
    ours = {os.path.abspath(out / n) for n in (MANIFEST_NAME, FAILED_NAME, STATE_NAME)}
    ours |= {j.output for j in jobs}
    theirs = {j.source for j in jobs} | ({os.path.abspath(source)} if source.is_file() else set())
    clash = sorted(ours & theirs)
    if clash:
        raise ConfigError(
            f"OUT {out}: writing there would replace the source file {clash[0]}; "
            "pass an OUT folder of its own"
        )


def _manifest_rows(jobs: list[_Job], records: dict[str, dict[str, Any]]) -> list[dict[str, object]]:
    """A row per prepared output, in the source's order: the source's columns, the output's path
    (relative to OUT) and probe columns, and the original's absolute path."""
    rows: list[dict[str, object]] = []
    for job in jobs:
        entry = records.get(job.output)
        if entry is None:
            continue
        rows.append(
            {
                **job.columns,
                "path": encode_path(Path(job.relative).as_posix()),
                **entry["columns"],
                "source_path": encode_path(job.source),
            }
        )
    return rows


def _write_failed(failures: list[FileResult], path: Path) -> None:
    lines = [["path", "reason", "detail"]]
    lines += [[encode_path(f.source), f.reason, text_cell(f.detail)] for f in failures]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    atomic.write_text(path, buffer.getvalue())
