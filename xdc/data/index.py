"""Index video files into a manifest: ``xdc index SOURCE [SOURCE ...] -o manifest.csv``.

SOURCE is a folder (scanned recursively; label = the parent folder's name, the UCF101/ImageFolder
convention), a CSV with a ``path`` column (``label``, ``split`` and any other column are kept), or
a published list — Kinetics, AudioSet, VGGSound, ESC-50 — read by ``xdc.data.adapters`` (format
detected or ``--format``; files found under ``--videos``). Several sources go into one manifest
(AudioSet's train and eval lists). A row that is a part of a longer file keeps its segment in
``start_sec``/``end_sec`` (``xdc.data.manifest``); a segment that does not lie in its file is
rejected (``bad segment``), as is a list row whose times are not numbers (``bad row``).
Every file is probed (``xdc.data.probe.probe_file``: open, read the stream info, decode the first
video frame, check that the video data reaches the declared end) in a process pool. Usable files go
to the manifest; the others go to ``rejected.csv`` next to it with one reason of
``REJECTION_REASONS`` (missing, unreadable, empty file, not a media file, corrupt, truncated, no
video or audio stream, undecodable video, undecodable audio, zero duration, probe failed:
``xdc.data.probe`` says what each means).

No file can stop the index: an error nobody foresaw while probing one file rejects that file
(``probe failed``, with the error), and a probing process that dies (FFmpeg crashing on a file)
costs only the file it was probing (``_probe_in_pool``). Any name the file system allows is
indexed: paths are written in the manifest's cell form (``xdc.data.manifest.encode_path``: the
path itself, or ``file:`` + the path with ``%XX`` escapes when it holds bytes that are not
UTF-8, control characters or whitespace at an end), in the manifest, ``rejected.csv`` and the
probe cache alike, and read back byte for byte; a folder name that is not UTF-8 becomes a label
with ``\\xNN`` escapes. A source CSV may name files in that form too.

Files without audio are kept (``has_audio`` 0, ``sample_rate`` and ``audio_channels`` 0), and so
are audio-only files (``has_video`` 0: ESC-50 ``.wav`` files for ``xdc audio-probe``; a folder scan
picks up ``AUDIO_EXTENSIONS`` too). Pretraining and video features leave audio-only rows out.
Re-runs re-use probes (kept and rejected) from ``<manifest>.probe-cache.json`` for files whose
size and mtime_ns did not change; "missing", "unreadable" and "probe failed" are checked again
every run (a chmod does not change mtime). ``--splits-dir`` fills ``split`` (and ``split_1``… for
every official split present) from UCF101 or HMDB51 split files (``xdc.data.splits``); a folder
whose top-level folders are ``train``/``val``/``test`` gives each file its folder's split; rows
still without one are split per label by ``--test-fraction``/``--val-fraction``, or, when no row
has a split and no fraction is asked for, are all ``train``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xdc import atomic
from xdc.data.adapters import (
    AUDIO_EXTENSIONS,
    CUT_TOLERANCE_SEC,
    MEDIA_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ListedSource,
    SourceEntry,
    read_list,
)
from xdc.data.manifest import (
    SEGMENT_COLUMNS,
    encode_path,
    segment_problem,
    text_cell,
    write_manifest,
)
from xdc.data.pool import map_files
from xdc.data.probe import (
    MISSING,
    PROBE_FAILED,
    REJECTION_REASONS,
    UNREADABLE,
    ProbeResult,
    probe_file,
)
from xdc.data.splits import (
    SPLIT_FOLDERS,
    apply_official_splits,
    check_fractions,
    hold_out,
    load_official_splits,
    read_official_splits,
)
from xdc.errors import DataError
from xdc.progress import track

__all__ = [
    "REJECTION_REASONS",
    "AUDIO_EXTENSIONS",
    "BAD_SEGMENT",
    "VIDEO_EXTENSIONS",
    "IndexResult",
    "ProbeResult",
    "SourceEntry",
    "index_source",
    "probe_file",
    "read_official_splits",
    "read_source",
    "read_sources",
]

BAD_SEGMENT = "bad segment"
"""Rejection reason of a row whose ``start_sec``/``end_sec`` do not name a part of its file."""
# 2: probes record has_video (version 1 entries predate audio-only files and are probed again).
_CACHE_VERSION = 2


# ---------------------------------------------------------------------------------------------
# Sources: a folder of videos or a CSV listing them.


def read_source(
    source: Path,
    list_format: str | None = None,
    videos: str | Path | None = None,
    class_labels: str | Path | None = None,
) -> tuple[list[SourceEntry], list[str]]:
    """(entries, extra column names) of a folder or a list (``read_sources`` has the rest)."""
    listed = read_sources([source], list_format, videos, class_labels)
    return listed.entries, listed.extras


def read_sources(
    sources: list[Path],
    list_format: str | None = None,
    videos: str | Path | None = None,
    class_labels: str | Path | None = None,
) -> ListedSource:
    """The rows of every source in turn (folders, or lists read by ``xdc.data.adapters.read_list``
    with ``list_format``, ``videos`` and ``class_labels``), their extra columns in order."""
    entries: list[SourceEntry] = []
    extras: list[str] = []
    notes: list[str] = []
    formats = []
    for source in sources:
        if source.is_dir():
            entries += _scan_folder(source)
            formats.append("folder")
            continue
        if not source.exists():
            raise DataError(
                f"{source}: not found; pass a folder of videos or a CSV with a 'path' column"
            )
        if not source.is_file() or source.suffix.lower() != ".csv":
            raise DataError(
                f"{source}: not a folder or a .csv file; pass a folder of videos or a CSV "
                "with a 'path' column"
            )
        listed = read_list(source, list_format, videos, class_labels)
        entries += listed.entries
        extras += [c for c in listed.extras if c not in extras]
        notes += listed.notes
        formats.append(listed.format)
    return ListedSource(entries, extras, "+".join(dict.fromkeys(formats)), notes)


def _scan_folder(source: Path) -> list[SourceEntry]:
    """Video files under ``source`` (hidden files and folders skipped), in a stable order."""
    entries = []
    root = os.path.abspath(source)
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        label = "" if folder == root else text_cell(os.path.basename(folder))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS:
                entries.append(
                    SourceEntry(os.path.join(folder, name), {"label": label, "split": ""})
                )
    _apply_split_folders(root, entries)
    return entries


def _apply_split_folders(root: str, entries: list[SourceEntry]) -> None:
    """``ROOT/train/<class>/…``, ``ROOT/test/…``: when every file lies in a top-level folder and
    every such folder is a split name (``SPLIT_FOLDERS``), each file takes its folder's split; a
    file directly in a split folder has no label (the split folder is not its class)."""
    parts = [Path(os.path.relpath(e.path, root)).parts for e in entries]
    if not parts or any(len(p) < 2 or p[0].lower() not in SPLIT_FOLDERS for p in parts):
        return
    for entry, part in zip(entries, parts, strict=True):
        entry.columns["split"] = SPLIT_FOLDERS[part[0].lower()]
        if len(part) == 2:
            entry.columns["label"] = ""


# ---------------------------------------------------------------------------------------------
# The probe cache next to the manifest.


class _ProbeCache:
    """Probe results of earlier runs, valid while size and mtime_ns hold.

    Keyed by absolute path in the manifest's cell form (``encode_path``), so that the JSON stays
    valid UTF-8 whatever the names. Files that were missing or unreadable, and files whose probe
    failed unexpectedly, are probed again on every run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.note = ""
        self.entries: dict[str, dict] = {}
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != _CACHE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {_CACHE_VERSION}")
            self.entries = dict(data["files"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            # The cache only saves time: say that it was not used, and probe everything again.
            self.note = f"probe cache {path} not used ({error}); probed every file again"

    def get(self, path: str, stat: os.stat_result) -> ProbeResult | None:
        entry = self.entries.get(encode_path(path))
        if (
            not entry
            or entry.get("size") != stat.st_size
            or entry.get("mtime_ns") != stat.st_mtime_ns
        ):
            return None
        try:
            return ProbeResult(path=path, **entry["probe"])
        except (KeyError, TypeError):  # written by another version: probe again
            return None

    def save(self, results: dict[str, tuple[ProbeResult, os.stat_result | None]]) -> None:
        """Write the entries of ``results`` (only files still present), atomically."""
        files = {}
        for path, (result, stat) in results.items():
            if stat is not None and result.reason not in (MISSING, UNREADABLE, PROBE_FAILED):
                probe = {k: v for k, v in asdict(result).items() if k != "path"}
                files[encode_path(path)] = {
                    "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "probe": probe,
                }
        text = json.dumps({"version": _CACHE_VERSION, "files": files}, indent=0, sort_keys=True)
        atomic.write_text(self.path, text)


# ---------------------------------------------------------------------------------------------
# Probing every file, in a pool.


def _probe_all(
    paths: list[str], cache: _ProbeCache, workers: int, progress: bool
) -> tuple[dict[str, tuple[ProbeResult, os.stat_result | None]], int]:
    """{path: (result, stat before probing)} of every path, and how many came from the cache.

    The cache is saved even when probing stops half-way (an error, Ctrl-C), so a re-run resumes.
    """
    results: dict[str, tuple[ProbeResult, os.stat_result | None]] = {}
    stats: dict[str, os.stat_result | None] = {}
    for path in dict.fromkeys(paths):
        try:
            stat: os.stat_result | None = os.stat(path)
        except (OSError, ValueError):  # missing, unreadable, a NUL in the name: probe_file says
            stat = None
        stats[path] = stat
        cached = cache.get(path, stat) if stat is not None else None
        if cached is not None:
            results[path] = (cached, stat)
    reused = len(results)
    todo = [p for p in stats if p not in results]
    try:
        for result in _run_probes(todo, workers, progress):
            results[result.path] = (result, stats[result.path])
    finally:
        cache.save(results)
    return results, reused


def _run_probes(paths: list[str], workers: int, progress: bool) -> Iterator[ProbeResult]:
    with track(total=len(paths), desc="probing", unit="file", enabled=progress) as bar:
        if workers <= 1 or len(paths) <= 1:
            for path in paths:
                yield _probe_here(path)
                bar.update()
            return
        for result in _probe_in_pool(paths, min(workers, len(paths))):
            yield result
            bar.update()


def _probe_here(path: str) -> ProbeResult:
    """``probe_file`` in this process; it never raises, but this is the last line of defence."""
    try:
        return probe_file(path)
    except Exception as error:  # one file must not stop the index
        return ProbeResult(path, PROBE_FAILED, f"{type(error).__name__}: {error}")


def _probe_in_pool(paths: list[str], workers: int) -> Iterator[ProbeResult]:
    """Probe ``paths`` in ``workers`` processes; results come in the order they finish. A file
    whose probe kills its process twice is rejected (``probe failed``), see ``map_files``."""
    return map_files(
        probe_file, paths, workers, lambda path, detail: ProbeResult(path, PROBE_FAILED, detail)
    )


# ---------------------------------------------------------------------------------------------
# Indexing: source -> probe -> manifest + rejected.csv.


@dataclass
class IndexResult:
    """What ``index_source`` wrote and counted."""

    manifest_path: Path
    rejected_path: Path
    kept: int
    rejected_by_reason: dict[str, int]
    without_audio: int  # kept files that have no audio track
    reused_from_cache: int  # files whose probe came from the cache (unchanged size and mtime)
    probed: int = 0  # files probed in this run
    audio_only: int = 0  # kept files that have no video (has_video 0): audio protocols only
    notes: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)  # kept rows per split

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def summary(self) -> str:
        """A few lines for a person: counts, reasons, where the files are."""
        reasons = sorted(self.rejected_by_reason.items(), key=lambda item: (-item[1], item[0]))
        by_reason = ", ".join(f"{reason}: {n}" for reason, n in reasons)
        lines = [
            f"kept {self.kept}, rejected {self.rejected}"
            + (f" ({by_reason})" if by_reason else "")
            + f", without audio {self.without_audio}"
            + (f", audio-only {self.audio_only}" if self.audio_only else ""),
            f"re-used {self.reused_from_cache} probes from the cache, probed {self.probed} files",
        ]
        if self.kept == 0:
            why = (
                f"see {self.rejected_path} for why"
                if self.rejected
                else "no video or audio files were found"
            )
            lines.append(f"nothing kept: the manifest has no rows; {why}")
        if self.splits:
            order = ["train", "val", "test"]
            names = [n for n in order if n in self.splits]
            names += sorted(n for n in self.splits if n not in order)
            lines.append("splits: " + ", ".join(f"{n or '(none)'} {self.splits[n]}" for n in names))
        lines += self.notes
        lines.append(f"manifest: {self.manifest_path}")
        lines.append(f"rejected: {self.rejected_path}")
        return "\n".join(lines)


def index_source(
    source: str | Path | Sequence[str | Path],
    output: str | Path,
    splits_dir: str | Path | None = None,
    split_number: int = 1,
    workers: int | None = None,
    progress: bool = True,
    list_format: str | None = None,
    videos: str | Path | None = None,
    class_labels: str | Path | None = None,
    test_fraction: float = 0.0,
    val_fraction: float = 0.0,
    split_seed: int = 0,
) -> IndexResult:
    """Probe every video of ``source`` and write the manifest ``output`` and ``rejected.csv``.

    Args:
        source: a folder of videos (label = parent folder name), a CSV with a ``path`` column,
            a Kinetics, AudioSet, VGGSound or ESC-50 list (``xdc.data.adapters``), or several
            of these (one manifest of all their rows).
        output: the manifest to write; ``rejected.csv`` and the probe cache go next to it.
        splits_dir: a folder of UCF101 or HMDB51 split files (see ``read_official_splits``).
        split_number: which official split fills the ``split`` column.
        workers: probing processes (default ``os.cpu_count()``; 1 probes in this process).
        progress: show a progress bar.
        list_format: the lists' format (``--format``; None: detected from each file).
        videos: the folder holding a published list's files (``--videos``; default: the list's).
        class_labels: AudioSet's ``class_labels_indices.csv`` (default: next to the list).
        test_fraction, val_fraction: the share of each label's videos that rows without a split
            (no split file, folder or column gave one) put in test and val (``hold_out``); with
            both 0 and no split anywhere, every row is ``train``.
        split_seed: the seed of that draw.
    """
    sources = (
        [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(s) for s in source]
    )
    output = Path(output)
    check_fractions(test_fraction, val_fraction)
    listed = read_sources(sources, list_format, videos, class_labels)
    entries, extra_columns = listed.entries, listed.extras
    official = None if splits_dir is None else load_official_splits(splits_dir, split_number)
    _check_writable(output)
    cache = _ProbeCache(Path(f"{output}.probe-cache.json"))
    paths = [e.path for e in entries if e.path]
    results, reused = _probe_all(paths, cache, workers or os.cpu_count() or 1, progress)
    kept, kept_paths, rejected, cut = _sort_rows(entries, results, os.path.abspath(output.parent))
    notes = ([cache.note] if cache.note else []) + listed.notes
    segments = sum(1 for row in kept if row.get("start_sec") or row.get("end_sec"))
    if segments:
        notes.append(f"{segments} rows are segments of longer files (start_sec, end_sec)")
    if cut:
        notes.append(
            f"{cut} files named by the video's id are no longer than their segment: taken as the "
            "downloaded segment itself (whole file)"
        )
    if listed.format not in ("folder", "paths") and not segments:  # no column of empty cells
        extra_columns = [c for c in extra_columns if c not in SEGMENT_COLUMNS]
    if official is not None:
        split_columns, note = apply_official_splits(kept, kept_paths, official, split_number, paths)
        extra_columns = [c for c in extra_columns if c not in split_columns] + split_columns
        notes.append(note)
    notes += _fill_splits(kept, test_fraction, val_fraction, split_seed)
    write_manifest(kept, output, extra_columns)
    outside = [p for p in kept_paths if not _inside(p, output.parent)]
    if outside:
        notes.append(
            f"{len(outside)} of the files lie outside {os.path.abspath(output.parent)} (first: "
            f"{outside[0]}): commands reading this manifest need `xdc --data-root DIR ...` for "
            "their folder (or a manifest written in a folder above them)"
        )
    rejected_path = _write_rejected(rejected, output.parent / "rejected.csv")
    return IndexResult(
        manifest_path=output,
        rejected_path=rejected_path,
        kept=len(kept),
        rejected_by_reason=dict(Counter(str(r["reason"]) for r in rejected)),
        without_audio=sum(1 for row in kept if not row["has_audio"]),
        audio_only=sum(1 for row in kept if not row["has_video"]),
        reused_from_cache=reused,
        probed=len(results) - reused,
        notes=notes,
        splits=dict(Counter(str(row.get("split", "")) for row in kept)),
    )


def _fill_splits(
    rows: list[dict[str, object]], test_fraction: float, val_fraction: float, seed: int
) -> list[str]:
    """Held-out fractions for the rows without a split, or ``train`` for all when no row has one
    and no fraction is asked for; the notes that say what was done."""
    empty = sum(1 for row in rows if not row.get("split"))
    asked = bool(test_fraction or val_fraction)
    if not empty:
        if asked and rows:
            return ["every row has a split from the source: the held-out fractions changed none"]
        return []
    if asked:
        filled = hold_out(rows, test_fraction, val_fraction, seed)
        counts = ", ".join(f"{name} {filled[name]}" for name in ("train", "val", "test"))
        return [
            f"{empty} rows without a split were split per label (--test-fraction {test_fraction}, "
            f"--val-fraction {val_fraction}, --split-seed {seed}): {counts}"
        ]
    if empty < len(rows):
        return [f"{empty} rows have no split (the source gave the others one)"]
    for row in rows:
        row["split"] = "train"
    return [
        "no split given: every row is 'train' (what xdc pretrain trains on); to probe on your "
        "labels, index again with --test-fraction 0.2 (and --val-fraction 0.1 to choose settings "
        "on), or put the videos in train/ and test/ folders"
    ]


def _sort_rows(
    entries: list[SourceEntry],
    results: dict[str, tuple[ProbeResult, os.stat_result | None]],
    root: str,
) -> tuple[list[dict[str, object]], list[str], list[dict[str, object]], int]:
    """(manifest rows, their absolute paths, rejected rows, rows whose full-video file was the
    segment itself), in the source's order."""
    kept: list[dict[str, object]] = []
    kept_paths: list[str] = []
    rejected: list[dict[str, object]] = []
    cut = 0
    for entry in entries:
        if entry.path:
            result = results[entry.path][0]
        else:
            result = ProbeResult("", entry.reason or MISSING, entry.problem)
        shown = encode_path(_manifest_path(entry.path, root)) if entry.path else ""
        columns = dict(entry.columns)
        if result.ok:
            problem, is_cut = _place_segment(entry, columns, result.duration_sec)
            if problem:
                result = ProbeResult(entry.path, BAD_SEGMENT, problem)
            cut += is_cut
        if result.ok:
            kept.append({**columns, "path": shown, **result.columns()})
            kept_paths.append(entry.path)
        else:
            rejected.append({"path": shown, "reason": result.reason, "detail": result.detail})
    return kept, kept_paths, rejected, cut


def _place_segment(
    entry: SourceEntry, columns: dict[str, str], duration: float
) -> tuple[str, bool]:
    """(why the row's segment is unusable or "", whether its file is the segment itself, in
    which case ``columns`` loses the segment: see ``xdc.data.adapters``)."""
    start, end = columns.get("start_sec", ""), columns.get("end_sec", "")
    # cut_if_short: a row of a published list, whose times the adapter has read as numbers
    if entry.cut_if_short and duration <= float(end) - float(start) + CUT_TOLERANCE_SEC:
        columns["start_sec"] = columns["end_sec"] = ""
        return "", True
    return segment_problem(start, end, duration), False


def _check_writable(output: Path) -> None:
    """Fail before probing (which may take hours), not after, when the output cannot be written."""
    if output.is_dir():
        raise DataError(
            f"{output}: is a folder; pass -o with a file name, e.g. {output / 'manifest.csv'}"
        )
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise DataError(
            f"{folder}: cannot write the manifest there ({error.strerror or error}); "
            "pass -o with a path in a writable folder"
        ) from None


def _inside(path: str | Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` once normalised (the manifest reader's rule)."""
    root = os.path.abspath(folder).rstrip(os.sep) + os.sep
    return os.path.normpath(os.path.abspath(path)).startswith(root)


def _manifest_path(path: str, root: str) -> str:
    """``path`` relative to the manifest's folder, or absolute when on another drive (Windows)."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return path


def _write_rejected(rows: list[dict[str, object]], path: Path) -> Path:
    lines: list[list[str]] = [["path", "reason", "detail"]]
    lines += [[text_cell(str(r[c])) for c in ("path", "reason", "detail")] for r in rows]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    atomic.write_text(path, buffer.getvalue())
    return path
