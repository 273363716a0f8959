"""The lists ``xdc index`` reads: a CSV of paths, and the published lists of Kinetics, AudioSet,
VGGSound and ESC-50, each as its authors distribute it.

A list's format is detected from its first lines (``detect_format``) or named with ``--format``
(``FORMATS``). Every format gives ``SourceEntry`` rows: the file found for the row, and the
columns the manifest keeps (``label``, ``split``, the list's own columns, and for a row that is a
part of a longer file its segment, ``start_sec``/``end_sec``: ``xdc.data.manifest``).

- ``paths``: a header with a ``path`` column (relative to the CSV's folder); ``label``, ``split``
  and every other column are kept (``start_sec``/``end_sec`` name a segment).
- ``kinetics``: ``label,youtube_id,time_start,time_end,split`` (``is_cc`` and other columns kept;
  ``label`` may be absent, as in a test list). A row is 10 s of a YouTube video.
- ``audioset``: ``# ...`` comment lines, then ``YTID, start_seconds, end_seconds,
  "positive_labels"`` (quoted, comma-separated MIDs): several labels per row, joined by ``;`` in
  ``label``. MIDs become display names when ``class_labels_indices.csv`` (``index,mid,
  display_name``) is given or lies next to the list; ``positive_labels`` keeps the MIDs. ``split``
  comes from the list's name: ``test`` for ``eval_segments.csv`` (or a name with "test"), ``train``
  for a name with "train".
- ``vggsound``: no header, ``youtube_id,start_seconds,label,split``; a row is the 10 s from
  ``start_seconds``.
- ``esc50``: ESC-50's ``meta/esc50.csv``, ``filename,fold,target,category,esc10,src_file,take``;
  ``label`` = ``category``, ``fold`` kept (the cross-validation fold, ``xdc audio-probe
  --folds-column fold``), ``group`` = ``src_file`` (the linear probe keeps one source recording on
  one side of its inner folds), files in ``audio/`` next to ``meta/``.

Where the files are (``videos``, ``--videos DIR``; default: the list's folder, for ESC-50 its
``audio`` folder): the folder is scanned once and a row's file is looked up by name, wherever it
lies under it (``<split>/<label>/`` subfolders or flat). A YouTube row is found either as the
downloaded segment — ``{id}_{start}_{end}.<ext>`` (start and end as ``000014``, ``14``,
``14.000``, ``14.0`` or milliseconds), ``{id}_{start}.<ext>`` (VGGSound's downloaders) or
``Y{id}.<ext>`` (AudioSet as PANNs stores it) — or as the full video ``{id}.<ext>``, which then
gets the row's times as its segment. A file named ``{id}`` that is no longer than its segment plus
0.5 s (``CUT_TOLERANCE_SEC``) mostly cannot hold the segment where the list says (a full video
lasts at least to the segment's end): when the segment starts after 0, such a file is taken as the
downloaded segment itself, the whole file (``xdc index`` counts such rows). A row whose file is not found is rejected (``missing``, with
the names looked for), as a missing file of a ``paths`` list is.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xdc.data.manifest import LABEL_SEPARATOR, MANIFEST_COLUMNS, decode_path
from xdc.errors import DataError

__all__ = [
    "AUDIO_EXTENSIONS",
    "FORMATS",
    "VIDEO_EXTENSIONS",
    "ListedSource",
    "SourceEntry",
    "detect_format",
    "read_list",
]

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    [
        ".mp4",
        ".mkv",
        ".webm",
        ".avi",
        ".mov",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".flv",
        ".ogv",
        ".3gp",
        ".ts",
        ".wmv",
    ]
)
"""Video suffixes (lower case, with the dot) that a folder scan picks up."""

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    [".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff"]
)
"""Audio-only suffixes that a folder scan picks up too (audio-only rows: ``has_video`` 0)."""

MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS

FORMATS = ("paths", "kinetics", "audioset", "vggsound", "esc50")
"""What ``--format`` accepts (module docstring)."""

MISSING = "missing"  # xdc.data.probe's reason for a file that is not there
BAD_ROW = "bad row"
"""Rejection reason of a list row that names no file (a time that is not a number)."""
VGGSOUND_SECONDS = 10.0
"""Length of a VGGSound row's clip (the list gives its start only)."""
CUT_TOLERANCE_SEC = 0.5
"""A file named by the video's id is the downloaded segment itself when it is no longer than its
segment by more than this (module docstring)."""

_KINETICS_COLUMNS = ("youtube_id", "time_start", "time_end")
_ESC50_COLUMNS = ("filename", "fold", "category")
_AUDIOSET_HEADER = ("ytid", "start_seconds", "end_seconds")
_MID = re.compile(r"^/[a-z]/\w+$")
_FORMATS_HINT = "pass --format kinetics|audioset|vggsound|esc50|paths"


@dataclass
class SourceEntry:
    """One file to index: its absolute path and the columns the source gave it."""

    path: str  # empty when the row names no file that exists
    columns: dict[str, str]  # label, split, the list's other columns, start_sec/end_sec
    problem: str = ""  # why the row names no file
    reason: str = MISSING  # the rejection reason when ``path`` is empty
    cut_if_short: bool = False  # found as the full video {id}.<ext>: see the module docstring


@dataclass
class ListedSource:
    """What ``read_list`` read: the rows, the extra columns in order, the format, notes."""

    entries: list[SourceEntry]
    extras: list[str]
    format: str
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading the text and telling the formats apart.


def _read_text(source: Path) -> str:
    try:
        return source.read_text(encoding="utf-8-sig")  # -sig: spreadsheets add a BOM
    except UnicodeDecodeError as error:
        raise DataError(
            f"{source}: not a readable CSV ({error}); save it as UTF-8 CSV (a path that is not "
            "UTF-8 can be written as file: followed by the path with %XX escapes)"
        ) from None
    except OSError as error:
        raise DataError(
            f"{source}: cannot be read ({error.strerror or error}); check the path"
        ) from None


def _rows(text: str, source: Path) -> list[list[str]]:
    """The CSV records of ``text`` (spaces after commas dropped, as AudioSet writes them)."""
    try:
        return [
            [cell.strip() for cell in record]
            for record in csv.reader(io.StringIO(text), skipinitialspace=True)
        ]
    except csv.Error as error:
        raise DataError(f"{source}: not a readable CSV ({error}); save it as UTF-8 CSV") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def detect_format(source: str | Path) -> str:
    """The format (one of ``FORMATS``) of the list ``source``, from its first lines.

    Raises:
        DataError: naming the file, its first line, and the fix, when no format fits.
    """
    source = Path(source)
    text = _read_text(source)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{source}: empty; a list needs a header row with a 'path' column")
    return _detect(lines, source)


def _detect(lines: list[str], source: Path) -> str:
    if lines[0].lstrip().startswith("#"):
        return "audioset"
    first = _rows(lines[0], source)[0]
    header = {c.strip().lower() for c in first}
    if "path" in header:
        return "paths"
    if set(_KINETICS_COLUMNS) <= header:
        return "kinetics"
    if set(_ESC50_COLUMNS) <= header:
        return "esc50"
    if set(_AUDIOSET_HEADER) <= header:
        return "audioset"
    numbers = len(first) >= 4 and _is_number(first[1]) and _is_number(first[2])
    if numbers and _MID.match(first[3].split(",")[0].strip()):
        return "audioset"
    if len(first) == 4 and _is_number(first[1]) and not _is_number(first[2]):
        return "vggsound"
    raise DataError(
        f"{source}: no 'path' column (columns: {first}) and not a Kinetics, AudioSet, VGGSound "
        "or ESC-50 list; add a header row with a 'path' column of video paths, relative to the "
        f"CSV's folder, or {_FORMATS_HINT} for a published list"
    )


# ---------------------------------------------------------------------------------------------
# Finding a row's file under the videos folder.


class MediaFiles:
    """The media files under ``root``, by name without suffix (scanned once, hidden ones
    skipped)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_stem: dict[str, list[str]] = {}
        for folder, subfolders, files in os.walk(os.path.abspath(root)):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in sorted(files):
                stem, ext = os.path.splitext(name)
                if not name.startswith(".") and ext.lower() in MEDIA_EXTENSIONS:
                    self.by_stem.setdefault(stem, []).append(os.path.join(folder, name))

    def find(self, stems: Iterable[str], label: str = "") -> str:
        """The first file named by one of ``stems`` (in their order), or "". Among files of the
        same name, one in a folder named like ``label`` (spaces or underscores) comes first."""
        for stem in stems:
            found = self.by_stem.get(stem, [])
            if len(found) == 1:
                return found[0]
            if found:
                folders = {label, label.replace(" ", "_")} - {""}
                named = (p for p in found if os.path.basename(os.path.dirname(p)) in folders)
                return next(named, found[0])
        return ""


def _time_forms(seconds: float) -> dict[str, str]:
    """How downloaders write a time in a file name, by style."""
    forms = {}
    if seconds == int(seconds):
        whole = int(seconds)
        forms.update({"06d": f"{whole:06d}", "int": str(whole), "ms": str(whole * 1000)})
    forms.update({"3f": f"{seconds:.3f}", "1f": f"{seconds:.1f}", "g": f"{seconds:g}"})
    return forms


def _segment_stems(video_id: str, start: float, end: float, start_only: bool = False) -> list[str]:
    """Names (without suffix) of a downloaded segment of ``video_id`` (module docstring), the
    common ones first (``start_only``: ``{id}_{start}`` before ``{id}_{start}_{end}``)."""
    starts, ends = _time_forms(start), _time_forms(end)
    pairs = [f"{video_id}_{starts[k]}_{ends[k]}" for k in starts if k in ends]
    singles = [f"{video_id}_{s}" for s in starts.values()]
    stems = singles + pairs if start_only else pairs + singles
    stems.append(f"Y{video_id}")
    return list(dict.fromkeys(stems))


def _youtube_entry(
    files: MediaFiles,
    video_id: str,
    start: float,
    end: float,
    columns: dict[str, str],
    where: str,
    start_only: bool = False,
) -> SourceEntry:
    """The entry of a YouTube row: its downloaded segment, else its full video + the segment."""
    label = columns.get("label", "")
    segment_stems = _segment_stems(video_id, start, end, start_only)
    path = files.find(segment_stems, label)
    if path:
        return SourceEntry(path, {**columns, "start_sec": "", "end_sec": ""})
    path = files.find([video_id], label)
    if path:
        segment = {"start_sec": f"{start:g}", "end_sec": f"{end:g}"}
        return SourceEntry(path, {**columns, **segment}, cut_if_short=start > 0)
    looked = f"{segment_stems[0]}.*, {video_id}.*"
    problem = f"{where}: no file for {video_id!r} (looked for {looked} under {files.root})"
    return SourceEntry("", {**columns, "start_sec": "", "end_sec": ""}, problem)


def _bad_row(columns: dict[str, str], problem: str) -> SourceEntry:
    return SourceEntry("", {**columns, "start_sec": "", "end_sec": ""}, problem, BAD_ROW)


# ---------------------------------------------------------------------------------------------
# The formats.


def read_list(
    source: str | Path,
    list_format: str | None = None,
    videos: str | Path | None = None,
    class_labels: str | Path | None = None,
) -> ListedSource:
    """The rows of the list ``source`` in ``list_format`` (one of ``FORMATS``; None: detected).

    Args:
        videos: the folder holding the files (default: the list's folder; ESC-50: its ``audio``
            folder).
        class_labels: AudioSet's ``class_labels_indices.csv`` (default: the one next to the list,
            if any).

    Raises:
        DataError: the file is not a list of that format, or the format is unknown; the
            message names the file and the fix.
    """
    source = Path(source)
    if list_format is not None and list_format not in FORMATS:
        raise DataError(f"--format {list_format!r}: unknown; choose one of {', '.join(FORMATS)}")
    text = _read_text(source)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{source}: empty; a list needs a header row with a 'path' column")
    fmt = list_format or _detect(lines, source)
    folder = Path(videos) if videos is not None else None
    if folder is not None and not folder.is_dir():
        raise DataError(f"--videos {folder}: not a folder; pass the folder that holds the files")
    if fmt == "paths":
        return _read_paths(text, source)
    if fmt == "esc50":
        return _read_esc50(text, source, folder)
    files = MediaFiles(folder or source.parent)
    if fmt == "kinetics":
        listed = _read_kinetics(text, source, files)
    elif fmt == "vggsound":
        listed = _read_vggsound(text, source, files)
    else:
        listed = _read_audioset(text, source, files, class_labels)
    if listed.entries and not any(e.path for e in listed.entries):
        listed.notes.append(
            f"no file of the {len(listed.entries)} rows of {source} was found under {files.root}; "
            "pass --videos with the folder that holds them"
        )
    return listed


def _wrong_format(source: Path, fmt: str, expected: str, lines: list[str]) -> DataError:
    """The error for a list that is not what ``--format`` says, with the format it looks like."""
    try:
        looks = f"; it looks like a {_detect(lines, source)!r} list"
    except DataError:
        looks = ""
    return DataError(
        f"{source}: does not read as --format {fmt} (expected {expected}; first line: "
        f"{lines[0][:120]!r}){looks}; "
        f"{_FORMATS_HINT} to match the file, or leave --format out to detect it"
    )


def _dict_rows(
    text: str, source: Path, fmt: str, required: tuple[str, ...], expected: str
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(columns, [(line, row)]) of a list with a header row holding ``required``."""
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip() for c in reader.fieldnames or []]
        numbered = [
            (reader.line_num, {k.strip(): (v or "").strip() for k, v in r.items() if k is not None})
            for r in reader
        ]
    except csv.Error as error:
        raise DataError(f"{source}: not a readable CSV ({error}); save it as UTF-8 CSV") from None
    if not set(required) <= set(columns):
        lines = [line for line in text.splitlines() if line.strip()]
        raise _wrong_format(source, fmt, expected, lines)
    return columns, numbered


def _read_paths(text: str, source: Path) -> ListedSource:
    """A CSV with a ``path`` column (relative to the CSV's folder, or absolute)."""
    columns, numbered = _dict_rows(
        text, source, "paths", ("path",), "a header row with a 'path' column"
    )
    extras = [c for c in columns if c not in MANIFEST_COLUMNS]
    folder = source.parent.absolute()
    entries = []
    for line, row in numbered:
        # the manifest's form (file: + %XX escapes) names any path; a plain cell is itself
        path = Path(decode_path(row["path"])).expanduser() if row.get("path") else None
        absolute = os.path.abspath(folder / path) if path else ""
        kept = {c: row.get(c, "") for c in ("label", "split", *extras)}
        problem = "" if path else f"line {line} of {source} has an empty 'path'"
        entries.append(SourceEntry(absolute, kept, problem))
    return ListedSource(entries, extras, "paths")


def _read_kinetics(text: str, source: Path, files: MediaFiles) -> ListedSource:
    expected = "a header label,youtube_id,time_start,time_end,split"
    columns, numbered = _dict_rows(text, source, "kinetics", _KINETICS_COLUMNS, expected)
    extras = [c for c in columns if c not in ("label", "split")] + ["start_sec", "end_sec"]
    entries = []
    for line, row in numbered:
        kept = {c: row.get(c, "") for c in ("label", "split", *columns)}
        where = f"line {line} of {source}"
        times = row["time_start"], row["time_end"]
        if not all(_is_number(t) for t in times):
            entries.append(_bad_row(kept, f"{where}: time_start/time_end {times} are not numbers"))
            continue
        start, end = float(times[0]), float(times[1])
        entries.append(_youtube_entry(files, row["youtube_id"], start, end, kept, where))
    return ListedSource(entries, extras, "kinetics")


def _numbered_records(text: str, source: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each non-empty line that is not a ``#`` comment (lists whose
    records never span lines)."""
    return [
        (number, _rows(line, source)[0])
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _read_vggsound(text: str, source: Path, files: MediaFiles) -> ListedSource:
    records = _numbered_records(text, source)
    expected = "no header, rows youtube_id,start_seconds,label,split"
    if not records or len(records[0][1]) != 4 or not _is_number(records[0][1][1]):
        raise _wrong_format(source, "vggsound", expected, text.splitlines() or [""])
    entries = []
    for line, record in records:
        where = f"line {line} of {source}"
        cells = (record + ["", "", "", ""])[:4]
        video_id, start_cell, label, split = cells
        kept = {"label": label, "split": split, "youtube_id": video_id, "start_seconds": start_cell}
        if len(record) != 4 or not _is_number(start_cell):
            entries.append(_bad_row(kept, f"{where}: not youtube_id,start_seconds,label,split"))
            continue
        start = float(start_cell)
        end = start + VGGSOUND_SECONDS
        entries.append(_youtube_entry(files, video_id, start, end, kept, where, start_only=True))
    extras = ["youtube_id", "start_seconds", "start_sec", "end_sec"]
    return ListedSource(entries, extras, "vggsound")


def split_from_name(source: Path) -> str:
    """The split an AudioSet list's name says: ``test`` (eval, test), ``train`` or ""."""
    name = source.stem.lower()
    if "eval" in name or "test" in name:
        return "test"
    return "train" if "train" in name else ""


def read_class_labels(path: Path) -> dict[str, str]:
    """{MID: display name} of AudioSet's ``class_labels_indices.csv`` (index,mid,display_name)."""
    columns, numbered = _dict_rows(
        _read_text(path), path, "class labels", ("mid", "display_name"),
        "a header index,mid,display_name",
    )  # fmt: skip
    names = {row["mid"]: row["display_name"] for _, row in numbered}
    bad = [name for name in names.values() if LABEL_SEPARATOR in name or not name]
    if bad:
        raise DataError(
            f"{path}: display name {bad[0]!r} is empty or holds {LABEL_SEPARATOR!r}, which joins "
            "the labels of a row; edit the name"
        )
    return names


def _read_audioset(
    text: str, source: Path, files: MediaFiles, class_labels: str | Path | None
) -> ListedSource:
    expected = "'# YTID, start_seconds, end_seconds, positive_labels' comments, then rows"
    records = _numbered_records(text, source)
    if records and set(_AUDIOSET_HEADER) <= {c.lower() for c in records[0][1]}:
        records = records[1:]  # a copy with a plain header row
    if records and (len(records[0][1]) < 4 or not _is_number(records[0][1][1])):
        raise _wrong_format(source, "audioset", expected, text.splitlines())
    labels_path = Path(class_labels) if class_labels else source.parent / "class_labels_indices.csv"
    names = read_class_labels(labels_path) if class_labels or labels_path.is_file() else {}
    split = split_from_name(source)
    entries = []
    for line, record in records:
        where = f"line {line} of {source}"
        video_id, start_cell, end_cell = record[0], record[1], record[2] if len(record) > 2 else ""
        mids = [m.strip() for m in ",".join(record[3:]).split(",") if m.strip()]
        kept = {
            "label": LABEL_SEPARATOR.join(names.get(m, m) for m in mids),
            "split": split,
            "youtube_id": video_id,
            "start_seconds": start_cell,
            "end_seconds": end_cell,
            "positive_labels": ",".join(mids),
        }
        if not (_is_number(start_cell) and _is_number(end_cell)):
            entries.append(_bad_row(kept, f"{where}: start/end {start_cell!r}/{end_cell!r}"))
            continue
        start, end = float(start_cell), float(end_cell)
        entries.append(_youtube_entry(files, video_id, start, end, kept, where))
    extras = [
        "youtube_id",
        "start_seconds",
        "end_seconds",
        "positive_labels",
        "start_sec",
        "end_sec",
    ]
    listed = ListedSource(entries, extras, "audioset")
    unknown = sorted(
        {m for e in entries for m in e.columns["positive_labels"].split(",") if m} - set(names)
    )
    if names and unknown:
        listed.notes.append(
            f"{len(unknown)} label MIDs of {source} are not in {labels_path} (first: {unknown[0]}); "
            "they are kept as MIDs"
        )
    return listed


def _read_esc50(text: str, source: Path, videos: Path | None) -> ListedSource:
    expected = "a header filename,fold,target,category,esc10,src_file,take"
    columns, numbered = _dict_rows(text, source, "esc50", _ESC50_COLUMNS, expected)
    root = videos or _esc50_audio_folder(source)
    extras = [c for c in columns if c not in ("filename", "category")]
    if "src_file" in columns:
        extras.append("group")
    entries = []
    for line, row in numbered:
        kept = {c: row.get(c, "") for c in extras}
        kept.update(label=row["category"], split="")
        if "src_file" in columns:
            kept["group"] = row["src_file"]
        path = root / row["filename"] if row["filename"] else None
        if path is None:
            entries.append(SourceEntry("", kept, f"line {line} of {source} has an empty filename"))
            continue
        entries.append(SourceEntry(os.path.abspath(path), kept))
    return ListedSource(entries, extras, "esc50")


def _esc50_audio_folder(source: Path) -> Path:
    """ESC-50's ``audio/`` folder: next to ``meta/`` (the repository's layout), or beside the
    list; else the list's own folder."""
    for folder in (source.parent.parent / "audio", source.parent / "audio"):
        if folder.is_dir():
            return folder.absolute()
    return source.parent.absolute()
