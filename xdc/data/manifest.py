"""The manifest: a plain CSV a person can read and edit, one row per video.

Columns: ``path`` (relative to the manifest's folder, or absolute), ``label``
(class name, empty when unknown), ``split`` (``train``/``test``/…, may be empty), ``duration_sec``,
``has_video`` (0/1: 0 for an audio-only file, e.g. an ESC-50 ``.wav``), ``fps``, ``width``,
``height`` (0 without video), ``has_audio`` (0/1), ``sample_rate``, ``audio_channels``, and any
column the user added, kept as is. A manifest written before ``has_video`` existed reads as
``has_video`` = 1 (every file it lists was a video).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
_TRUE = ("1", "true", "True")


@dataclass
class Manifest:
    """Rows of a manifest, with paths resolved against ``root`` (the manifest's folder).

    ``label_names`` is the sorted list of distinct non-empty labels of the *whole* manifest, so that
    a label maps to the same integer in every split taken from it.
    """

    root: Path
    rows: list[dict[str, str]]
    columns: list[str] = field(default_factory=lambda: list(MANIFEST_COLUMNS))
    label_names: list[str] = field(default_factory=list)
    source: Path | None = None

    def __post_init__(self) -> None:
        if not self.label_names:
            self.label_names = sorted({r.get("label", "") for r in self.rows} - {""})

    def __len__(self) -> int:
        return len(self.rows)

    def path(self, i: int) -> Path:
        """Absolute path of row ``i``."""
        p = Path(self.rows[i]["path"])
        return p if p.is_absolute() else self.root / p

    def label(self, i: int) -> int:
        """Integer label of row ``i`` (index into ``label_names``), or -1 when unknown."""
        name = self.rows[i].get("label", "")
        return self.label_names.index(name) if name else -1

    def labels(self) -> list[int]:
        lookup = {name: k for k, name in enumerate(self.label_names)}
        return [lookup.get(r.get("label", ""), -1) for r in self.rows]

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

    def duration(self, i: int) -> float:
        value = self.rows[i].get("duration_sec", "")
        return float(value) if value else 0.0

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
                "pass another --split or fill the manifest's 'split' column"
            )
        return self.subset(keep)


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest CSV. Raises ``DataError`` naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; create one with `xdc index SOURCE -o {path}`")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        if "path" not in columns:
            raise DataError(f"{path}: not a manifest (no 'path' column); columns are {columns}")
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return Manifest(path.parent.resolve(), rows, columns, source=path)


def write_manifest(
    rows: Sequence[dict[str, object]], path: str | Path, extra_columns: Sequence[str] = ()
) -> Path:
    """Write rows atomically (temporary file + rename), standard columns first, extras after."""
    path = Path(path)
    extras = list(extra_columns) or sorted({k for r in rows for k in r} - set(MANIFEST_COLUMNS))
    columns = list(MANIFEST_COLUMNS) + [c for c in extras if c not in MANIFEST_COLUMNS]
    with atomic_file(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c, "")) for c in columns})
    return path


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)
