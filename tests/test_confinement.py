"""Manifest paths stay in the manifest's folder (or a named data root) unless the user allows
any path: a shared manifest must not make xdc read, or a report embed, whatever it names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from xdc import cli
from xdc.data.index import index_source
from xdc.data.manifest import (
    ALLOW_OUTSIDE_ROOT_ENV,
    DATA_ROOT_ENV,
    read_manifest,
    write_manifest,
)
from xdc.errors import DataError


def _manifest(folder: Path, paths: list[str]) -> Path:
    rows = [{"path": p, "label": "a", "split": "train"} for p in paths]
    return write_manifest(rows, folder / "manifest.csv")


@pytest.fixture(autouse=True)
def _no_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.delenv(ALLOW_OUTSIDE_ROOT_ENV, raising=False)


@pytest.mark.parametrize("escape", ["../x.mp4", "sub/../../x.mp4", "/etc/passwd"])
def test_a_path_that_leaves_the_manifest_folder_is_refused(tmp_path: Path, escape: str) -> None:
    folder = tmp_path / "data"
    manifest = _manifest(folder, ["ok/a.mp4", escape])
    with pytest.raises(
        DataError, match=r"1 path\(s\) lie outside .*row 2.*--data-root.*--allow-outside-root"
    ):
        read_manifest(manifest)


def test_paths_inside_or_under_a_data_root_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, videos = tmp_path / "runs", tmp_path / "videos"
    inside = _manifest(folder, ["a.mp4", "sub/../b.mp4", str(folder / "c.mp4")])
    assert len(read_manifest(inside)) == 3
    outside = _manifest(tmp_path / "runs2", ["../videos/a.mp4", str(videos / "b.mp4")])
    with pytest.raises(DataError, match="2 path"):
        read_manifest(outside)
    monkeypatch.setenv(DATA_ROOT_ENV, os.pathsep.join(["/nonexistent", str(videos)]))
    assert read_manifest(outside).path(0) == tmp_path / "runs2" / "../videos/a.mp4"
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "vid"))  # a prefix of the name is not a folder
    with pytest.raises(DataError):
        read_manifest(outside)
    monkeypatch.delenv(DATA_ROOT_ENV)
    monkeypatch.setenv(ALLOW_OUTSIDE_ROOT_ENV, "1")
    assert len(read_manifest(outside)) == 2


def test_the_cli_flags_allow_for_one_command_and_are_restored(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "runs", ["../videos/a.mp4"])
    seen: dict[str, str | None] = {}
    with cli._manifest_roots([str(tmp_path / "videos")], allow_outside=False):
        seen["root"] = os.environ.get(DATA_ROOT_ENV)
        assert len(read_manifest(manifest)) == 1
    with cli._manifest_roots([], allow_outside=True):
        seen["any"] = os.environ.get(ALLOW_OUTSIDE_ROOT_ENV)
    assert seen == {"root": str(tmp_path / "videos"), "any": "1"}
    assert DATA_ROOT_ENV not in os.environ and ALLOW_OUTSIDE_ROOT_ENV not in os.environ
    # A command on such a manifest stops at once with one line naming the flag.
    code = cli.main(
        ["pretrain", "--data", str(manifest), "--out", str(tmp_path / "run"), "--no-progress"]
    )
    assert code == 2 and not (tmp_path / "run").exists()


def test_index_says_when_its_manifest_will_need_a_data_root(
    tmp_path: Path, demo_manifest: Path
) -> None:
    videos = tmp_path / "videos" / "one"
    videos.mkdir(parents=True)
    shutil.copy(read_manifest(demo_manifest).path(0), videos / "v.mp4")
    result = index_source(
        tmp_path / "videos", tmp_path / "runs" / "m.csv", workers=1, progress=False
    )
    assert any("--data-root" in note for note in result.notes)
    with pytest.raises(DataError, match="outside"):
        read_manifest(tmp_path / "runs" / "m.csv")
    assert cli.main(["--data-root", str(tmp_path / "videos"), "config"]) == 0
    with cli._manifest_roots([str(tmp_path / "videos")], allow_outside=False):
        assert read_manifest(tmp_path / "runs" / "m.csv").path(0).is_file()
