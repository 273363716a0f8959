"""Features on disk: extraction into a FeatureStore (float16 memmaps, one file per rank and
modality), stale files of interrupted runs, pseudo-labels from stored features, and k-means over
memmap shards on two real gloo processes."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import adjusted_rand_score
from torch import nn

from xdc import distributed as xdist
from xdc.clustering import kmeans
from xdc.config import ClusterConfig
from xdc.features import FeatureStore, extract_features, extract_to_store
from xdc.methods import get_method
from xdc.pseudolabels import make_pseudo_labels


def batches(n_batches: int, fail_at: int | None = None) -> Iterator[dict]:
    """Collated-clip-like batches of 10 samples (the third of each invalid), planted in 3 groups."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=g) * 10
    for b in range(n_batches):
        if b == fail_at:
            raise RuntimeError("killed")
        group = torch.arange(10 * b, 10 * b + 10) % 3
        valid = torch.ones(10, dtype=torch.bool)
        valid[2] = False
        yield {
            "index": torch.arange(10 * b, 10 * b + 10),
            "label": group,
            "valid": valid,
            "video": centres[group] + torch.randn(10, 6, generator=g),
            "audio": centres[group].flip(1) + torch.randn(10, 6, generator=g),
        }


ENCODERS = {"video": nn.Linear(6, 5), "audio": nn.Linear(6, 4)}


def test_stored_features_equal_the_in_ram_ones_and_stale_files_are_never_read(
    tmp_path: Path,
) -> None:
    store = FeatureStore(tmp_path / "features", rank=0)
    final = store.path("video")
    final.parent.mkdir()
    final.write_bytes(b"stale features of an earlier extraction")
    killed = final.parent / f".{final.name}.abcd1234.tmp"  # a write killed halfway
    killed.write_bytes(b"half")
    stored = extract_to_store(ENCODERS, batches(4), store, progress=False)
    in_ram = extract_features(ENCODERS, batches(4), progress=False)
    assert not killed.exists()
    assert np.array_equal(stored.rows, in_ram.rows) and np.array_equal(stored.labels, in_ram.labels)
    for name, features in in_ram.features.items():
        array = stored.features[name]
        assert isinstance(array, np.memmap) and array.dtype == np.float16
        assert array.shape == (36, features.shape[1])
        assert torch.equal(torch.from_numpy(np.array(array)), features.half())
    assert final.stat().st_size == 36 * 5 * 2
    # An extraction that fails halfway leaves the finished files and no temporary behind.
    before = np.array(stored.features["video"])
    with pytest.raises(RuntimeError, match="killed"):
        extract_to_store(ENCODERS, batches(4, fail_at=2), store, progress=False)
    assert sorted(p.name for p in final.parent.iterdir()) == [
        "features.rank0.audio.f16",
        "features.rank0.video.f16",
    ]
    assert np.array_equal(np.array(stored.features["video"]), before)
    store.clear()
    assert list(final.parent.iterdir()) == []


def test_pseudo_labels_from_stored_features_match_those_from_tensors(tmp_path: Path) -> None:
    stored = extract_to_store(ENCODERS, batches(12), FeatureStore(tmp_path), progress=False)
    in_ram = extract_features(ENCODERS, batches(12), progress=False)
    config = ClusterConfig(k=3, pca_dim=3, kmeans_iters=10)
    args = (get_method("mdc"), stored.rows, 120, config, 0)
    from_disk = make_pseudo_labels(args[0], stored.features, *args[1:])
    from_ram = make_pseudo_labels(args[0], in_ram.features, *args[1:])
    for name, labels in from_ram.labels.items():
        keep = labels >= 0
        assert int(keep.sum()) == 108
        assert adjusted_rand_score(labels[keep], from_disk.labels[name][keep]) == 1.0
        assert len(labels[keep].unique()) == 3


SHARDS = (1700, 2300)


def shared_points() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 12)) * 8
    return (centres[rng.integers(0, 6, sum(SHARDS))] + rng.normal(size=(sum(SHARDS), 12))).astype(
        np.float16
    )


def worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE="2", GLOO_SOCKET_IFNAME="lo",
    )  # fmt: skip
    torch.set_num_threads(1)
    assert xdist.init_distributed(backend="gloo")
    try:
        start = sum(SHARDS[:rank])
        path = Path(folder) / f"shard{rank}.f16"
        shared_points()[start : start + SHARDS[rank]].tofile(path)
        shard = np.memmap(path, dtype=np.float16, mode="r", shape=(SHARDS[rank], 12))
        result = kmeans(shard, k=6, seed=5, points_per_centroid=100)  # 600 of 4000 points
        assignments = xdist.all_gather_varlen(result.assignments)
        torch.save((result.centroids, assignments, result.inertia), Path(folder) / f"{rank}.pt")
    finally:
        xdist.cleanup()


def test_two_ranks_streaming_their_own_memmap_shards_equal_one_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    single = kmeans(torch.from_numpy(shared_points()), k=6, seed=5, points_per_centroid=100)
    for rank in range(2):
        centroids, assignments, inertia = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(centroids, single.centroids, atol=1e-5, rtol=0)
        assert torch.equal(assignments, single.assignments)
        assert inertia == pytest.approx(single.inertia, rel=1e-6)
