"""``xdc.Embedder``: embeddings of files from a run, an export or a released weight file, equal to
what ``xdc extract`` writes for the same files; the README's example, run as written."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xdc import Embedder, cli
from xdc.data.manifest import read_manifest
from xdc.errors import ConfigError, DataError
from xdc.export import export_run
from xdc.models import R2Plus1D18

ROOT = Path(__file__).resolve().parents[1]
README_MARKER = "<!-- embeddings-example -->"


@pytest.fixture(scope="module")
def test_videos(demo_manifest: Path) -> list[Path]:
    manifest = read_manifest(demo_manifest)
    return [manifest.path(i) for i, r in enumerate(manifest.rows) if r["split"] == "test"]


def extracted(
    run: Path, manifest: Path, out: Path, modality: str, extra: str = ""
) -> np.lib.npyio.NpzFile:
    argv = f"extract --checkpoint {run} --data {manifest} --split test --modality {modality} "
    argv += f"--clips 2 --no-progress -o {out / (modality + '.npz')} {extra}"
    assert cli.main(argv.split()) == 0
    return np.load(out / f"{modality}.npz")


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_embeddings_equal_xdc_extract_from_a_run_and_from_its_export(
    modality: str, tiny_run: Path, demo_manifest: Path, test_videos: list[Path], tmp_path: Path
) -> None:
    npz = extracted(tiny_run, demo_manifest, tmp_path, modality)
    assert [Path(p) for p in npz["paths"]] == test_videos
    from_run = getattr(Embedder.load(tiny_run), modality)(test_videos, clips=2)
    np.testing.assert_array_equal(from_run, npz["features"])
    export_run(tiny_run, tmp_path / "export", formats=("safetensors",), modalities=(modality,))
    emb = Embedder.load(tmp_path / "export")
    from_export = getattr(emb, modality)(test_videos, clips=2, as_torch=True)
    assert isinstance(from_export, torch.Tensor)
    np.testing.assert_array_equal(from_export.numpy(), npz["features"])


def test_kept_clips_one_file_and_a_folder(
    tiny_run: Path, demo_manifest: Path, test_videos: list[Path], tmp_path: Path
) -> None:
    npz = extracted(tiny_run, demo_manifest, tmp_path, "video", "--keep-clips")
    emb = Embedder.load(tiny_run)
    clips = emb.video(test_videos, clips=2, keep_clips=True)
    assert clips.shape == (3, 2, 16)
    np.testing.assert_array_equal(clips.reshape(6, 16), npz["features"])
    one = emb.video(test_videos[1], clips=2)
    assert one.shape == (16,)
    np.testing.assert_allclose(one, clips[1].mean(axis=0), atol=1e-6)
    folder = tmp_path / "videos"
    (folder / "b").mkdir(parents=True)
    shutil.copy(test_videos[0], folder / "b" / "x.mp4")
    shutil.copy(test_videos[2], folder / "a.mp4")
    assert Embedder.files(folder) == [folder / "a.mp4", folder / "b" / "x.mp4"]
    both = emb.video(folder, clips=2)
    np.testing.assert_allclose(both, clips[[2, 0]].mean(axis=1), atol=1e-6)


def test_unusable_files_are_named(tiny_run: Path, tmp_path: Path) -> None:
    emb = Embedder.load(tiny_run)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(DataError, match=r"notes\.mp4: not a media file"):
        emb.video(text)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no video or audio files"):
        emb.video(tmp_path / "empty")
    with pytest.raises(ConfigError, match="clips=0"):
        emb.video(text, clips=0)


def test_released_weights_give_video_embeddings_only(
    test_videos: list[Path], tmp_path: Path
) -> None:
    model = R2Plus1D18(width=4).eval()
    tmp = tmp_path / "w.pth"
    torch.save(model.state_dict(), tmp)
    path = tmp.rename(tmp_path / f"tiny-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth")
    emb = Embedder.load(path, preset="tiny")
    assert emb.video(test_videos[0], clips=1).shape == (32,)
    with pytest.raises(ConfigError, match="no audio encoder"):
        emb.audio(test_videos[0])


def readme_example() -> str:
    """The Python block that follows the marker in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert README_MARKER in text, f"README.md lost its {README_MARKER} marker"
    block = re.search(r"```python\n(.*?)```", text.split(README_MARKER, 1)[1], re.DOTALL)
    assert block is not None
    return block.group(1)


def test_the_readme_example_runs_as_written(
    tiny_run: Path, test_videos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = readme_example()
    names = re.findall(r'"([^"]+)"', code)
    assert names[:2] == ["runs/xdc", "clip.mp4"]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "xdc").symlink_to(tiny_run)
    shutil.copy(test_videos[0], tmp_path / "clip.mp4")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    feats = scope["feats"]
    assert isinstance(feats, np.ndarray) and feats.shape == (16,) and feats.dtype == np.float32
