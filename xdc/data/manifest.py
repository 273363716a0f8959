"""The manifest: a plain CSV a person can read and edit, one row per video.

Columns: ``path`` (relative to the manifest's folder, or absolute), ``label``
(class name, empty when unknown), ``split`` (``train``/``test``/…, may be empty), ``duration_sec``
(of the file), ``has_video`` (0/1: 0 for an audio-only file, e.g. an ESC-50 ``.wav``), ``fps``,
``width``, ``height`` (0 without video), ``has_audio`` (0/1), ``sample_rate``, ``audio_channels``,
and any column the user added, kept as is. A manifest written before ``has_video`` existed reads as
``has_video`` = 1 (every file it lists was a video).

Optional columns with a meaning:

- ``start_sec``, ``end_sec`` (``SEGMENT_COLUMNS``): the row is the segment ``[start_sec,
  end_sec)`` of its file (a Kinetics or AudioSet row pointing into the full video). Every clip of
  the row — training, evaluation, features, the cache — lies inside it (``decode_clip``'s
  ``segment``). Both empty: the whole file; ``end_sec`` empty: to the end of the file; an end past
  the file's end is cut there. ``Manifest.duration`` is the segment's length. A row's segment is
  checked when the manifest is read (numbers, ``0 <= start_sec < end_sec``, start inside the file).
- Several labels (multi-label data, AudioSet): the ``label`` cell holds the class names joined by
  ``;`` (``LABEL_SEPARATOR``), e.g. ``Speech;Music``. ``label_names`` lists the single classes.
  Code that wants one class per row (``Manifest.label``, cluster metrics) sees such a row as
  unlabelled (-1), and finetuning and retrieval refuse it; ``Manifest.label_sets`` and
  ``label_matrix`` give every label, and the linear probe of a manifest with such rows is
  one-vs-rest, scored by mAP.

The file is UTF-8 text, standard CSV quoting (a name with a comma, a quote or a newline is quoted).
Paths: every file name the file system allows survives a round trip, byte for byte
(``encode_path`` / ``decode_path``). A path is written as it is, unless it could not be kept as is:
bytes that are not UTF-8 (Linux names are bytes; Python holds them as ``os.fsdecode`` gives them),
control characters (a newline, a tab, …), whitespace at its start or end (cells are stripped
when read) or a path that itself starts with ``file:``. Such a path is written as ``file:``
followed by the path with each of those bytes, and each ``%``, as ``%XX`` (hex of the byte; a
UTF-8 character that needs it: each of its bytes) — every other character as it is. Examples:
``videos/café.mp4`` saved in Latin-1 (the byte E9 alone is not UTF-8) →
``file:videos/caf%E9.mp4``; the same name in UTF-8 stays ``videos/café.mp4``; ``a<newline>b.mp4``
→ ``file:a%0Ab.mp4``; ``100%.mp4`` stays ``100%.mp4``. A person may write either form by hand.
Other cells that are not valid text (a label from a folder whose name is not UTF-8) are written
with Python's ``backslashreplace`` escapes (``\\xe9``).
"""

from __future__ import annotations

import csv
import os
import unicodedata
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xdc.atomic import atomic_file
from xdc.errors import DataError

PROBE_COLUMNS = (
    "duration_sec",
    "has_video",
    "fps",
    "width",
    "height",
    "has_audio",
    "sample_rate",
    "audio_channels",
)
MANIFEST_COLUMNS = ("path", "label", "split", *PROBE_COLUMNS)
SEGMENT_COLUMNS = ("start_sec", "end_sec")
"""The segment of its file a row stands for (module docstring); absent or empty: the whole file."""
LABEL_SEPARATOR = ";"
"""Joins the class names of a row with several labels in its ``label`` cell."""
_TRUE = ("1", "true", "True")


def split_labels(cell: str) -> list[str]:
    """The class names of a ``label`` cell: none (empty), one, or several joined by ``;``."""
    return [name.strip() for name in cell.split(LABEL_SEPARATOR) if name.strip()]


@dataclass
class Manifest:
    """Rows of a manifest, with paths resolved against ``root`` (the manifest's folder).

    ``label_names`` is the sorted list of distinct non-empty labels of the *whole* manifest (each
    class of a row with several labels counted on its own), so that a label maps to the same
    integer in every split taken from it.
    """

    root: Path
    rows: list[dict[str, str]]
    columns: list[str] = field(default_factory=lambda: list(MANIFEST_COLUMNS))
    label_names: list[str] = field(default_factory=list)
    source: Path | None = None

    def __post_init__(self) -> None:
        if not self.label_names:
            self.label_names = sorted(
                {n for r in self.rows for n in split_labels(r.get("label", ""))}
            )

    def __len__(self) -> int:
        return len(self.rows)

    def path(self, i: int) -> Path:
        """Absolute path of row ``i``."""
        p = Path(decode_path(self.rows[i]["path"]))
        return p if p.is_absolute() else self.root / p

    def label(self, i: int) -> int:
        """Integer label of row ``i`` (index into ``label_names``), or -1 when unknown or when the
        row has several labels (``label_sets`` has them)."""
        names = split_labels(self.rows[i].get("label", ""))
        return self.label_names.index(names[0]) if len(names) == 1 else -1

    def labels(self) -> list[int]:
        """``label(i)`` of every row."""
        lookup = {name: k for k, name in enumerate(self.label_names)}
        single = [split_labels(r.get("label", "")) for r in self.rows]
        return [lookup.get(names[0], -1) if len(names) == 1 else -1 for names in single]

    def label_sets(self) -> list[list[int]]:
        """Every label of every row (indices into ``label_names``; [] when unlabelled)."""
        lookup = {name: k for k, name in enumerate(self.label_names)}
        return [
            sorted({lookup[n] for n in split_labels(r.get("label", "")) if n in lookup})
            for r in self.rows
        ]

    def label_matrix(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """(len(rows), len(label_names)) 0/1 int8 targets of ``rows`` (default: all)."""
        sets = self.label_sets()
        rows = range(len(self)) if rows is None else rows
        out = np.zeros((len(rows), len(self.label_names)), dtype=np.int8)
        for k, r in enumerate(rows):
            out[k, sets[int(r)]] = 1
        return out

    @property
    def multi_label(self) -> bool:
        """Whether some row has several labels (then the linear probe is one-vs-rest, mAP)."""
        return any(len(split_labels(r.get("label", ""))) > 1 for r in self.rows)

    def has_audio(self, i: int) -> bool:
        return self.rows[i].get("has_audio", "") in _TRUE

    def has_video(self, i: int) -> bool:
        """Whether row ``i`` has a video stream. Without a ``has_video`` value (a manifest older
        than the column, or written by hand), a row is a video unless its ``width`` says 0."""
        row = self.rows[i]
        value = row.get("has_video", "")
        if value:
            return value in _TRUE
        width = row.get("width", "")
        try:
            return not width or float(width) > 0
        except ValueError:  # a hand-written cell we cannot read: the old default, video
            return True

    def file_duration(self, i: int) -> float:
        """Duration (s) of row ``i``'s file (``duration_sec``; 0 when unknown)."""
        value = self.rows[i].get("duration_sec", "")
        return float(value) if value else 0.0

    def segment(self, i: int) -> tuple[float, float] | None:
        """``(start, end)`` seconds of the file that row ``i`` stands for, the end cut at the
        file's end (module docstring); None when the row is the whole file."""
        row = self.rows[i]
        start, end = row.get("start_sec", ""), row.get("end_sec", "")
        if not start and not end:
            return None
        length = self.file_duration(i)
        lo = float(start) if start else 0.0
        hi = float(end) if end else length
        return lo, min(hi, length) if length > 0 else hi

    def duration(self, i: int) -> float:
        """Length (s) of what row ``i`` stands for: its segment's, or the whole file's."""
        segment = self.segment(i)
        if segment is None:
            return self.file_duration(i)
        return max(0.0, segment[1] - segment[0])

    def splits(self) -> list[str]:
        return sorted({r.get("split", "") for r in self.rows})

    def subset(self, keep: Iterable[int]) -> Manifest:
        """A manifest of the given rows; keeps the label mapping of this one."""
        rows = [self.rows[i] for i in keep]
        return Manifest(self.root, rows, list(self.columns), list(self.label_names), self.source)

    def select(self, split: str | None) -> Manifest:
        """Rows of one split (all rows when ``split`` is None). Raises when the split is empty."""
        if split is None:
            return self
        keep = [i for i, r in enumerate(self.rows) if r.get("split", "") == split]
        if not keep:
            where = self.source or self.root
            found = ", ".join(repr(s) for s in self.splits()) or "none"
            raise DataError(
                f"{where}: split {split!r} has no rows (splits present: {found}); "
                "pass another --split, or fill the manifest's 'split' column (xdc index "
                "--test-fraction 0.2 --val-fraction 0.1 draws one per label)"
            )
        return self.subset(keep)


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest CSV. Raises ``DataError`` naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; create one with `xdc index SOURCE -o {path}`")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            if "path" not in columns:
                raise DataError(f"{path}: not a manifest (no 'path' column); columns are {columns}")
            rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(
            f"{path}: not a readable manifest ({error}); save it as UTF-8 CSV or write it again "
            "with `xdc index`"
        ) from None
    manifest = Manifest(path.parent.resolve(), rows, columns, source=path)
    check_confined(manifest)
    check_segments(manifest)
    return manifest


def segment_problem(start: str, end: str, duration: float) -> str:
    """Why the cells ``start_sec``/``end_sec`` name no usable segment of a file ``duration`` s
    long (0: unknown); "" when they do (or are both empty: the whole file)."""
    if not start and not end:
        return ""
    try:
        lo, hi = float(start or 0.0), float(end) if end else float("inf")
    except ValueError:
        return f"start_sec {start!r} / end_sec {end!r} are not numbers of seconds"
    if not 0 <= lo < hi:
        return f"segment [{start or 0}, {end or 'end'}] is empty or negative"
    if duration > 0 and lo >= duration:
        return f"segment [{start or 0}, {end or 'end'}] starts after the file ends ({duration:g} s)"
    return ""


def check_segments(manifest: Manifest) -> None:
    """Refuse a manifest whose ``start_sec``/``end_sec`` cells name no usable segment."""
    if not any(c in manifest.columns for c in SEGMENT_COLUMNS):
        return
    for i, row in enumerate(manifest.rows):
        problem = segment_problem(
            row.get("start_sec", ""), row.get("end_sec", ""), manifest.file_duration(i)
        )
        if problem:
            raise DataError(
                f"{manifest.source or manifest.root}: row {i + 1} ({row.get('path')}): {problem}; "
                "fix the row's start_sec/end_sec (both empty: the whole file) or re-run `xdc index`"
            )


ALLOW_OUTSIDE_ROOT_ENV = "XDC_ALLOW_OUTSIDE_ROOT"
DATA_ROOT_ENV = "XDC_DATA_ROOT"


def allowed_roots(manifest: Manifest) -> list[Path] | None:
    """The folders the paths of ``manifest`` may lie in: its own folder and every folder of
    ``XDC_DATA_ROOT`` (``os.pathsep``-separated; ``xdc --data-root DIR``); None when
    ``XDC_ALLOW_OUTSIDE_ROOT=1`` (``xdc --allow-outside-root``) allows any path."""
    if os.environ.get(ALLOW_OUTSIDE_ROOT_ENV, "") not in ("", "0"):
        return None
    extra = [Path(d) for d in os.environ.get(DATA_ROOT_ENV, "").split(os.pathsep) if d]
    return [Path(os.path.abspath(r)) for r in (manifest.root, *extra)]


def check_confined(manifest: Manifest) -> None:
    """Refuse a manifest whose paths leave the allowed folders (``allowed_roots``): a shared
    manifest must not make xdc read, and a report embed, whatever a ``../`` or absolute path
    names. The check is on the normalised path (``..`` removed), not on symlinks' targets: a
    symlink inside an allowed folder is the owner's choice."""
    roots = allowed_roots(manifest)
    if roots is None:
        return
    outside = []
    for i in range(len(manifest)):
        p = os.path.normpath(manifest.path(i))
        if not any(p == str(r) or p.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots):
            outside.append(i)
    if outside:
        first = manifest.path(outside[0])
        raise DataError(
            f"{manifest.source or manifest.root}: {len(outside)} path(s) lie outside the manifest's "
            f"folder {manifest.root} (first: row {outside[0] + 1}, {os.path.normpath(first)}); "
            "keep the manifest in a folder above the videos, name their folder with "
            f"`xdc --data-root DIR ...` (or {DATA_ROOT_ENV}), or accept any path with "
            f"`xdc --allow-outside-root ...` (or {ALLOW_OUTSIDE_ROOT_ENV}=1) for a manifest you trust"
        )


def write_manifest(
    rows: Sequence[dict[str, object]], path: str | Path, extra_columns: Sequence[str] = ()
) -> Path:
    """Write rows atomically (temporary file + rename), standard columns first, extras after.

    ``path`` values are cells (what ``read_manifest`` gives, or ``encode_path`` of a path); one
    that cannot be a cell (a name with bytes that are not UTF-8, as ``os.fsdecode`` gives it) is
    encoded here. Other text that is not valid UTF-8 is written with ``backslashreplace`` escapes.
    """
    path = Path(path)
    extras = list(extra_columns) or sorted({k for r in rows for k in r} - set(MANIFEST_COLUMNS))
    columns = list(MANIFEST_COLUMNS) + [c for c in extras if c not in MANIFEST_COLUMNS]
    with atomic_file(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            cells = {c: format_cell(row.get(c, "")) for c in columns}
            if isinstance(row.get("path"), os.PathLike) or not is_text(cells["path"]):
                cells["path"] = encode_path(cells["path"])  # a path, not yet a cell
            writer.writerow({c: text_cell(v) for c, v in cells.items()})
    return path


def format_cell(value: object) -> str:
    """A value as a manifest cell: floats with 6 significant digits, booleans as 1/0, None empty."""
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------
# Paths in cells: any name the file system allows, as valid UTF-8 text (see the module docstring).

PATH_PREFIX = "file:"
"""Start of an encoded path cell: the rest is the path with ``%XX`` escapes."""


def encode_path(path: str) -> str:
    """The manifest cell of ``path``: the path itself, or ``file:`` + the path with ``%XX``
    escapes when it could not be kept as is (module docstring). ``decode_path`` reverses it."""
    if not _needs_escape(path):
        return path
    last = len(path) - len(path.rstrip())
    first = len(path) - len(path.lstrip())
    out = []
    for i, char in enumerate(path):
        escape = (
            char == "%"
            or _is_control(char)
            or _is_surrogate(char)
            or i < first
            or i >= len(path) - last
        )
        out.append(_percent(char) if escape else char)
    return PATH_PREFIX + "".join(out)


def decode_path(cell: str) -> str:
    """The path a manifest cell names (the inverse of ``encode_path``; any other cell: itself).

    Bytes that are not UTF-8 come back as ``os.fsdecode`` gives them, so the result opens the
    very file that was indexed.
    """
    if not cell.startswith(PATH_PREFIX):
        return cell
    return os.fsdecode(urllib.parse.unquote_to_bytes(cell[len(PATH_PREFIX) :]))


def is_text(value: str) -> bool:
    """Whether ``value`` encodes to UTF-8 (False for names holding ``os.fsdecode``'s escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text_cell(value: str) -> str:
    """``value`` as valid UTF-8 text: undecodable bytes (surrogate escapes) as ``\\xNN``."""
    if is_text(value):
        return value
    try:  # the bytes the name had on disk, their undecodable ones escaped
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate of another kind (Windows names)
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _needs_escape(path: str) -> bool:
    return (
        path.startswith(PATH_PREFIX)
        or path != path.strip()
        or any(_is_control(c) or _is_surrogate(c) for c in path)
    )


def _is_control(char: str) -> bool:
    # Cc: C0/C1 controls and DEL; Zl/Zp: the line and paragraph separators that split lines too.
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _is_surrogate(char: str) -> bool:
    return "\ud800" <= char <= "\udfff"


def _percent(char: str) -> str:
    try:
        raw = os.fsencode(char)  # a surrogate escape: the byte it stands for
    except UnicodeEncodeError:  # a lone surrogate os.fsdecode never makes here: keep its code
        raw = char.encode("utf-8", "surrogatepass")
    return "".join(f"%{b:02X}" for b in raw)
