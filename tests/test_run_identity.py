"""A run folder records the data it was trained on (RUN/run.json: manifest path and content hash,
split, number of processes) and resumes only on that data, unless --allow-data-change says so; a
manifest that only moved, or another number of processes, resumes with a note."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES, tiny_config
from xdc.cli import main
from xdc.data.manifest import read_manifest
from xdc.errors import ConfigError
from xdc.run import manifest_hash
from xdc.training import pretrain


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished tiny run (trained on ``demo_manifest``, split train)."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def _info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _copy_data(demo_manifest: Path, dst: Path, **changes: dict[str, str]) -> Path:
    """The demo data copied to ``dst``; ``changes`` maps a row number (``r3``) to new cells."""
    shutil.copytree(demo_manifest.parent, dst)
    path = dst / demo_manifest.name
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for name, cells in changes.items():
        rows[int(name[1:])].update(cells)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cli(data: Path, out: Path, *extra: str) -> list[str]:
    flags = [f"{k}={v}" for k, v in TINY_OVERRIDES.items()]
    return [
        "pretrain", "--data", str(data), "--out", str(out), "--preset", "tiny", "--no-progress",
        *extra, *flags,
    ]  # fmt: skip


def test_run_json_records_manifest_hash_split_and_world_size(
    run: Path, demo_manifest: Path
) -> None:
    info = _info(run)
    manifest = read_manifest(demo_manifest).select("train")
    assert info["data"] == str(demo_manifest.resolve()) and info["split"] == "train"
    assert info["manifest_sha256"] == manifest_hash(manifest) and len(info["manifest_sha256"]) == 64
    assert info["world_size"] == 1 and info["num_videos"] == len(manifest)
    # What the hash covers: a duration, a label, a path; not a column the user added.
    rows = manifest.rows
    for column, value in (("duration_sec", "9.5"), ("label", "other"), ("path", "x.mp4")):
        changed = [dict(r) for r in rows]
        changed[2][column] = value
        assert manifest_hash(type(manifest)(manifest.root, changed)) != info["manifest_sha256"]
    extra = [{**r, "notes": "mine"} for r in rows]
    assert manifest_hash(type(manifest)(manifest.root, extra)) == info["manifest_sha256"]
    # Empty segment columns are the whole files, as before; a segment changes what clips are.
    unsegmented = [{**r, "start_sec": "", "end_sec": ""} for r in rows]
    assert manifest_hash(type(manifest)(manifest.root, unsegmented)) == info["manifest_sha256"]
    segmented = [dict(r) for r in unsegmented]
    segmented[1]["start_sec"], segmented[1]["end_sec"] = "0.5", "1.5"
    moved = [dict(r) for r in segmented]
    moved[1]["end_sec"] = "1.75"
    hashes = {manifest_hash(type(manifest)(manifest.root, m)) for m in (segmented, moved)}
    assert len(hashes) == 2 and info["manifest_sha256"] not in hashes


def test_other_manifest_content_is_refused_naming_old_new_and_the_flag(
    run: Path, demo_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _info(run)
    changed = _copy_data(demo_manifest, tmp_path / "data", r1={"duration_sec": "1.1"})
    new_hash = manifest_hash(read_manifest(changed).select("train"))
    code = main(_cli(changed, run))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "manifest content" in err and before["manifest_sha256"][:12] in err
    assert new_hash[:12] in err and "--allow-data-change" in err
    assert str(demo_manifest.resolve()) in err and str(changed.resolve()) in err  # old and new path
    assert _info(run) == before, "a refused resume leaves run.json as it was"
    # The flag resumes it and run.json keeps what the run was trained on before.
    assert main([*_cli(changed, run, "--allow-data-change")]) == 0
    out = capsys.readouterr().out
    assert "--allow-data-change" in out and "manifest content" in out
    info = _info(run)
    assert info["manifest_sha256"] == new_hash and info["data"] == str(changed.resolve())
    (previous,) = info["history"]
    assert previous["manifest_sha256"] == before["manifest_sha256"]
    assert previous["replaced_by"] == "allow_data_change"


def test_a_moved_but_identical_manifest_resumes_with_a_note(
    run: Path, demo_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _info(run)
    moved = _copy_data(demo_manifest, tmp_path / "moved")
    state = pretrain(tiny_config("xdc"), moved, run, progress=False)
    assert state.finished
    out = capsys.readouterr().out
    assert "moved" in out and str(moved.resolve()) in out and "nothing to do" in out
    info = _info(run)
    assert info["data"] == str(moved.resolve())
    assert info["manifest_sha256"] == before["manifest_sha256"]
    assert info["history"] == [{**before, "replaced_by": "moved"}]


def test_other_split_is_refused_unless_allowed(run: Path, demo_manifest: Path) -> None:
    config = tiny_config("xdc")
    with pytest.raises(ConfigError) as err:
        pretrain(config, demo_manifest, run, split="test", progress=False)
    message = str(err.value)
    assert "--allow-data-change" in message
    assert "split ('train' when trained, 'test' now)" in message


def test_another_number_of_processes_resumes_with_a_note(
    run: Path, demo_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As if the run had been made by `torchrun --nproc-per-node 2` (tests/test_ddp.py resumes a
    real three-process run in one process)."""
    info = _info(run)
    (run / "run.json").write_text(json.dumps({**info, "world_size": 2}))
    pretrain(tiny_config("xdc"), demo_manifest, run, progress=False)
    assert "trained by 2 processes and resumes with 1" in capsys.readouterr().out
    assert _info(run)["world_size"] == 1
    assert _info(run)["history"][-1] == {**info, "world_size": 2, "replaced_by": "world_size"}


def test_other_rows_are_refused_even_with_the_flag(
    run: Path, demo_manifest: Path, tmp_path: Path
) -> None:
    """The stored pseudo-labels index the rows: a split with another number of rows cannot resume."""
    fewer = _copy_data(demo_manifest, tmp_path / "data", r0={"split": "val"})
    with pytest.raises(ConfigError, match=r"trained on 15 videos and the data now has 14"):
        pretrain(tiny_config("xdc"), fewer, run, progress=False, allow_data_change=True)


def test_pretrain_help_documents_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--allow-data-change" in text and "world size" in text
