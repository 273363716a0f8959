"""Splits of a manifest: official UCF101 and HMDB51 split files, split folders, or held-out
fractions drawn per class.

Three ways ``xdc index`` fills the ``split`` column, besides a list's own ``split`` column:

- **Official split files** (``--splits-dir``), below.
- **Split folders**: a source folder whose top-level folders are all split names
  (``SPLIT_FOLDERS``: ``ROOT/train/<class>/…``, ``ROOT/val/…``, ``ROOT/test/…``) gives each file
  its folder's split.
- **Held-out fractions** (``--test-fraction``, ``--val-fraction``: ``hold_out``): the rows still
  without a split are split per label, ``held_out_counts`` of each label to test and val, the rest
  to train, in the order of a hash of (seed, path): the same files get the same splits whatever
  order they are listed in, and indexing again keeps them.

What is left without a split is ``train`` when no row has one (what ``xdc pretrain`` trains on).

UCF101 (``ucfTrainTestlist``): ``classInd.txt`` (``<class index> <Class>``), ``trainlist0N.txt``
(``Class/video.avi <class index>``) and ``testlist0N.txt`` (``Class/video.avi``); a video is keyed by
``Class/video.avi``. HMDB51 (``testTrainMulti_7030_splits``): ``<class>_test_splitN.txt``
(``video.avi <0|1|2>``: 1 train, 2 test, 0 "unused" — left out of that split on purpose); a video
is keyed by its file name.

UCF101 videos also get a ``group`` column (``Class_gNN``, from ``v_Class_gNN_cMM.avi``): the clips
of one group come from one longer video, and the linear probe's inner cross-validation keeps a
group on one side of every fold (``xdc.evaluation.linear_probe.GROUP_COLUMN``).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xdc.errors import DataError, XdcError

__all__ = [
    "SPLIT_FOLDERS",
    "OfficialSplits",
    "apply_official_splits",
    "check_fractions",
    "held_out_counts",
    "hold_out",
    "load_official_splits",
    "read_official_splits",
]

_UCF_LIST = re.compile(r"^(train|test)list0*(\d+)\.txt$", re.IGNORECASE)
_HMDB_LIST = re.compile(r"^(.+)_test_split(\d+)\.txt$", re.IGNORECASE)
_HMDB_CODES = {"1": "train", "2": "test", "0": "unused"}
_UCF_GROUP = re.compile(r"_g(\d+)_c\d+\.[^.]+$", re.IGNORECASE)


SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
"""Top-level folder names (any case) that name a split, and the split they name."""


def held_out_counts(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    """(test, val) videos of a class of ``n``: round(n × fraction) each, at least one when its
    fraction is above 0, and at least one video left for training (test is served first)."""
    counts = []
    for fraction in (test_fraction, val_fraction):
        count = round(n * fraction)
        if fraction > 0:
            count = max(count, 1)
        counts.append(count)
    spare = max(n - 1, 0)
    test = min(counts[0], spare)
    return test, min(counts[1], spare - test)


def check_fractions(
    test_fraction: float, val_fraction: float, error: type[XdcError] = DataError
) -> None:
    """Raise ``error`` naming the flag when the held-out fractions leave nothing to train on
    (``xdc index``; ``xdc demo-data`` raises a ``ConfigError``)."""
    for flag, value in (("--test-fraction", test_fraction), ("--val-fraction", val_fraction)):
        if not 0 <= value < 1:
            raise error(f"{flag} must be in [0, 1) (got {value}); e.g. {flag} 0.2")
    if test_fraction + val_fraction >= 1:
        raise error(
            f"--test-fraction + --val-fraction must leave videos for training (got "
            f"{test_fraction} + {val_fraction}); e.g. --test-fraction 0.2 --val-fraction 0.1"
        )


def hold_out(
    rows: list[dict[str, object]], test_fraction: float, val_fraction: float, seed: int = 0
) -> Counter[str]:
    """Fill the empty ``split`` cells of ``rows`` (manifest rows: ``path``, ``label``) in place.

    Per label, ``held_out_counts`` of its rows go to test, then val, the rest to train, in the
    order of a hash of (``seed``, path); rows without a label go to train (a probe cannot use
    them). Returns how many rows each split received.
    """
    check_fractions(test_fraction, val_fraction)
    by_label: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        if not row.get("split"):
            by_label.setdefault(str(row.get("label", "")), []).append(row)
    filled: Counter[str] = Counter()
    for label, members in by_label.items():
        members.sort(key=lambda row: _rank(seed, str(row["path"])))
        test, val = held_out_counts(len(members), test_fraction, val_fraction) if label else (0, 0)
        for i, row in enumerate(members):
            row["split"] = "test" if i < test else "val" if i < test + val else "train"
            filled[str(row["split"])] += 1
    return filled


def _rank(seed: int, path: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{path}".encode(), digest_size=8).digest()


def ucf101_group(path: str, label: str) -> str:
    """``Class_gNN`` of a UCF101 video ``.../v_Class_gNN_cMM.avi`` (``label``: its class); ""
    for a name without a group."""
    match = _UCF_GROUP.search(Path(path).name)
    return f"{label}_g{int(match.group(1)):02d}" if match and label else ""


@dataclass
class OfficialSplits:
    """Every split number's assignment, keyed as the dataset keys its videos.

    UCF101 keys are ``Class/v_Class_gXX_cYY.avi`` (the last two parts of a video's path), HMDB51
    keys are file names. ``classes`` maps a key to its official class name.
    """

    dataset: str
    splits: dict[int, dict[str, str]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)

    def key(self, path: str) -> str:
        """The key of a video path: ``Class/file`` for UCF101, the file name for HMDB51."""
        parts = Path(path).parts[-2:] if self.dataset == "UCF101" else Path(path).parts[-1:]
        return "/".join(parts)


def read_official_splits(splits_dir: str | Path, split_number: int) -> dict[str, str]:
    """``{key: "train" | "test" | "unused"}`` of one official split of UCF101 or HMDB51.

    Which dataset is told by the file names in ``splits_dir`` (see the module docstring): keys are
    ``Class/video.avi`` for UCF101, file names for HMDB51. Raises ``DataError`` when neither
    format is there or split ``split_number`` is absent.
    """
    return dict(load_official_splits(splits_dir, split_number).splits[split_number])


def load_official_splits(splits_dir: str | Path, split_number: int) -> OfficialSplits:
    """Every split of the UCF101 or HMDB51 split files in ``splits_dir``; split ``split_number``
    must be among them. Raises ``DataError`` naming the folder and the fix otherwise."""
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise DataError(
            f"{splits_dir}: splits folder not found; pass --splits-dir with the folder "
            "that holds the official split files"
        )
    names = sorted(p.name for p in splits_dir.iterdir() if p.is_file())
    if "classInd.txt" in names or any(_UCF_LIST.match(n) for n in names):
        official = _read_ucf_splits(splits_dir, names)
    elif any(_HMDB_LIST.match(n) for n in names):
        official = _read_hmdb_splits(splits_dir, names)
    else:
        raise DataError(
            f"{splits_dir}: neither UCF101 split files (classInd.txt, trainlist01.txt, "
            "testlist01.txt) nor HMDB51 ones (<class>_test_split1.txt); pass --splits-dir "
            "with the folder that holds them"
        )
    if split_number not in official.splits:
        found = ", ".join(map(str, sorted(official.splits)))
        raise DataError(
            f"{splits_dir}: no {official.dataset} split {split_number} (splits present: "
            f"{found}); pass --split-number with one of these"
        )
    return official


def _read_ucf_splits(splits_dir: Path, names: list[str]) -> OfficialSplits:
    if "classInd.txt" not in names:
        raise DataError(
            f"{splits_dir}: UCF101 split lists without classInd.txt; copy classInd.txt "
            "from the official ucfTrainTestlist folder next to them"
        )
    class_file = splits_dir / "classInd.txt"
    class_index = {
        _integer(words[0], class_file, number): words[1]
        for number, words in _split_lines(class_file, 2)
    }
    official = OfficialSplits("UCF101")
    by_folder = {name.lower(): name for name in class_index.values()}
    for name in names:
        match = _UCF_LIST.match(name)
        if not match:
            continue
        split, number = match.group(1).lower(), int(match.group(2))
        assignment = official.splits.setdefault(number, {})
        for line_number, words in _split_lines(splits_dir / name, 1):
            key = "/".join(words[0].replace("\\", "/").split("/")[-2:])
            folder = key.split("/")[0] if "/" in key else ""
            if len(words) > 1:
                index = _integer(words[1], splits_dir / name, line_number)
                official.classes[key] = class_index.get(index, folder)
            else:
                official.classes[key] = by_folder.get(folder.lower(), folder)
            assignment[key] = split
    return official


def _read_hmdb_splits(splits_dir: Path, names: list[str]) -> OfficialSplits:
    official = OfficialSplits("HMDB51")
    for name in names:
        match = _HMDB_LIST.match(name)
        if not match:
            continue
        label, number = match.group(1), int(match.group(2))
        assignment = official.splits.setdefault(number, {})
        for line_number, words in _split_lines(splits_dir / name, 2):
            if words[1] not in _HMDB_CODES:
                raise DataError(
                    f"{splits_dir / name}, line {line_number}: expected 0, 1 or 2 after "
                    f"the file name, found {words[1]!r}"
                )
            assignment[words[0]] = _HMDB_CODES[words[1]]
            official.classes[words[0]] = label
    return official


def _split_lines(path: Path, min_words: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, words) of the non-blank lines of a split file (CRLF and trailing blanks ok)."""
    for number, line in enumerate(
        path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
    ):
        words = line.split()
        if not words:
            continue
        if len(words) < min_words:
            raise DataError(f"{path}, line {number}: expected {min_words} fields, found {line!r}")
        yield number, words


def _integer(text: str, path: Path, line_number: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{path}, line {line_number}: expected a number, found {text!r}") from None


def apply_official_splits(
    rows: list[dict[str, object]],
    row_paths: list[str],
    official: OfficialSplits,
    split_number: int,
    all_paths: Iterable[str],
) -> tuple[list[str], str]:
    """Fill ``split`` and ``split_N`` (and for UCF101 ``group``) of the manifest rows; returns the
    added column names and a line for the summary. A matched video's label becomes its official
    class name. Matching ignores case: UCF101's own names mix ``HandstandPushups`` and
    ``HandStandPushups``."""
    numbers = sorted(official.splits)
    lookups = {n: {k.lower(): v for k, v in official.splits[n].items()} for n in numbers}
    classes = {k.lower(): v for k, v in official.classes.items()}
    for row, path in zip(rows, row_paths, strict=True):
        key = official.key(path).lower()
        for number in numbers:
            row[f"split_{number}"] = lookups[number].get(key, "")
        row["split"] = row[f"split_{split_number}"]
        row["label"] = classes.get(key, row.get("label", ""))
        if official.dataset == "UCF101":
            row["group"] = ucf101_group(path, str(row["label"]))
    counts = Counter(str(row["split"]) or "not listed" for row in rows)
    found = {official.key(p).lower() for p in all_paths}
    absent = len(set(lookups[split_number]) - found)
    account = ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "no rows"
    note = (
        f"{official.dataset} split {split_number} (of {', '.join(map(str, numbers))}): {account}; "
        f"listed in the split files but not in the source: {absent}"
    )
    columns = [f"split_{n}" for n in numbers]
    return columns + (["group"] if official.dataset == "UCF101" else []), note
