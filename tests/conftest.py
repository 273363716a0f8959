"""Shared pytest set-up: CPU-only, few threads, deterministic seeds, and small real data.

``demo_manifest`` is real demo data (H.264 + AAC mp4 files made by ``xdc.data.demo``), small enough
for a test suite; ``tiny_run`` is a real XDC pretraining run on it (one iteration, one epoch).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xdc.config import PretrainConfig, build_config
from xdc.data.manifest import DATA_ROOT_ENV

# One torch thread per test process: CI has 2 cores, and torch's OpenMP threads spin while they wait,
# so a second thread competing with DataLoader workers or subprocesses costs far more than it gives.
torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One torch thread during a test, whatever an earlier test left (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): for tiny encoders on a busy machine a second thread
    only spins (measured: the same extraction took 3 s with one thread, up to 100 s with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A configuration that trains in seconds on the demo data below.
TINY_OVERRIDES = {
    "model.video": "mixed2d3d",
    "model.video_width": 4,
    "model.audio_width": 4,
    "data.num_frames": 4,
    "data.fps": 4.0,
    "data.resize_short": 36,
    "data.crop_size": 32,
    "data.audio_frames": 48,
    "data.num_workers": 0,
    "data.clips_per_video": 1,
    "data.cache": "none",
    "cluster.k": 3,
    "cluster.pca_dim": 8,
    "cluster.kmeans_iters": 5,
    "cluster.bn_recalibration_clips": 8,
    "train.iterations": 1,
    "train.clips_per_epoch": 0,
    "train.max_epochs": 1,
    "train.batch_size": 4,
    "train.val_fraction": 0.2,
    "train.log_every": 2,
}


def tiny_config(method: str = "xdc", **overrides: object) -> PretrainConfig:
    """The tiny preset shrunk to test size; ``overrides`` use ``section__key`` names."""
    values: dict[str, object] = dict(TINY_OVERRIDES)
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config("tiny", values, method=method)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _data_root(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests write manifests in their own folders that list the session's shared demo videos:
    the session's temporary folder is their data root (``xdc --data-root``). The confinement
    rule itself is tested without it (tests/test_confinement.py)."""
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 6 clips of 1.2 s at 48×48 with sound: 15 train, 3 test videos."""
    from xdc.data.demo import generate_demo_data

    out = tmp_path_factory.mktemp("demo")
    return generate_demo_data(
        out, classes=3, per_class=6, seed=0, duration_sec=1.2, size=48, workers=1, progress=False,
        val_fraction=0.0,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_run(demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-iteration XDC run on ``demo_manifest``."""
    from xdc.training import pretrain

    out = tmp_path_factory.mktemp("runs") / "xdc"
    pretrain(tiny_config("xdc"), demo_manifest, out, progress=False)
    return out
