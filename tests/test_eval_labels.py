"""Protocols that need one class per row (finetuning, retrieval, the audio probe) refuse rows that carry several
labels, naming the manifest and what to use instead; the linear probe scores such data by mAP
(tests/test_adapters.py). The refusal comes before any file is read: these manifests name files
that do not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdc import cli
from xdc.data.manifest import read_manifest
from xdc.errors import DataError
from xdc.evaluation.extract import require_single_labels, split_rows

FIX = "use xdc linear-probe, which scores multi-label data by mAP"


def write_manifest(folder: Path, several: str = "test") -> Path:
    """Six rows of two classes; the one of split ``several`` is tagged with both classes."""
    rows = [
        ("clips/a0.mp4", "cat", "train"),
        ("clips/a1.mp4", "dog", "train"),
        ("clips/a2.mp4", "cat", "train"),
        ("clips/a3.mp4", "dog", "train"),
        ("clips/b0.mp4", "cat", "test"),
        ("clips/both.mp4", "cat;dog", several),
    ]
    path = folder / "manifest.csv"
    lines = "".join(f"{p},{lab},{s},1,1\n" for p, lab, s in rows)
    path.write_text("path,label,split,has_video,has_audio\n" + lines)
    return path


@pytest.mark.parametrize(
    "command",
    [
        "finetune --checkpoint random --preset tiny --data {data} --out {out} --no-progress",
        "retrieval --checkpoint random --preset tiny --data {data} --out-dir {out} --no-progress",
        "retrieval --checkpoint random --preset tiny --data {data} --out-dir {out} "
        "--protocol selavi --no-progress",
        "audio-probe --checkpoint random --preset tiny --data {data} --out-dir {out} "
        "--folds-column split --no-progress",
    ],
)
def test_single_label_protocols_refuse_rows_with_several_labels(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, out = write_manifest(tmp_path), tmp_path / "out"
    argv = command.format(data=data, out=out).split()
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert str(data) in error and "clips/both.mp4" in error and "'cat;dog'" in error
    assert "1 of 6 rows carry several labels" in error and FIX in error
    assert not out.exists()  # refused before any work


def test_only_the_rows_a_protocol_uses_must_have_one_label(tmp_path: Path) -> None:
    manifest = read_manifest(write_manifest(tmp_path, several="extra"))
    used = split_rows(manifest, "train") + split_rows(manifest, "test")
    require_single_labels(manifest, used, "retrieval")  # the 'extra' row is not used: fine
    assert manifest.label(5) == -1 and manifest.label_sets()[5] == [0, 1]
    with pytest.raises(DataError, match="retrieval needs one class per row"):
        require_single_labels(manifest, range(len(manifest)), "retrieval")
