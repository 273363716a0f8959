"""A real 2-process gloo run: distributed k-means and preprocessing equal single-process ones."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from xdc import distributed as xdist
from xdc.clustering import FeaturePreprocessor, kmeans

WORLD = 2
SHARD_SIZES = (230, 370)  # unequal shards, so rank offsets matter


def shared_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``(600, 24)`` features and an initialisation with a far-away centroid everywhere."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 24, generator=g) * 4.0
    x = centres[torch.randint(0, 8, (sum(SHARD_SIZES),), generator=g)]
    x = x + torch.randn(x.shape, generator=g)
    init = x[:8].clone()
    init[5] = 1e3  # empty at first: exercises the empty-cluster repair on every rank
    return x, init


def run_single_process() -> dict[str, torch.Tensor | float | int]:
    x, init = shared_data()
    random_start = kmeans(x, k=8, n_iter=15, seed=3)
    repaired = kmeans(x, k=8, n_iter=15, init=init)
    features = FeaturePreprocessor(pca_dim=10, whiten=True).fit_transform(x)
    return {
        "centroids": random_start.centroids,
        "assignments": random_start.assignments,
        "inertia": random_start.inertia,
        "repaired_centroids": repaired.centroids,
        "repaired_assignments": repaired.assignments,
        "n_empty_repaired": repaired.n_empty_repaired,
        "features": features,
    }


def worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: join the group the way torchrun would set it up, work on its shard, save."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    assert xdist.init_distributed(backend="gloo")
    try:
        x, init = shared_data()
        start = sum(SHARD_SIZES[:rank])
        shard = x[start : start + SHARD_SIZES[rank]]
        random_start = kmeans(shard, k=8, n_iter=15, seed=3)
        repaired = kmeans(shard, k=8, n_iter=15, init=init if rank == 0 else torch.zeros_like(init))
        features = FeaturePreprocessor(pca_dim=10, whiten=True).fit_transform(shard)
        rows = torch.arange(10 * rank, 10 * rank + 3 + 4 * rank).reshape(-1, 1).repeat(1, 2)
        empty_on_rank_1 = torch.ones(5 if rank == 0 else 0, 3)
        result = {
            "rank": xdist.rank(),
            "world_size": xdist.world_size(),
            "is_main": xdist.is_main(),
            "centroids": random_start.centroids,
            "assignments": xdist.all_gather_varlen(random_start.assignments),
            "inertia": random_start.inertia,
            "repaired_centroids": repaired.centroids,
            "repaired_assignments": xdist.all_gather_varlen(repaired.assignments),
            "n_empty_repaired": repaired.n_empty_repaired,
            "features": xdist.all_gather_varlen(features),
            "gathered_rows": xdist.all_gather_varlen(rows),
            "gathered_empty": xdist.all_gather_varlen(empty_on_rank_1),
            "summed": xdist.all_reduce_sum(torch.tensor([rank + 1.0])),
        }
        xdist.barrier()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        xdist.cleanup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.timeout(120)
def test_distributed_kmeans_equals_single_process(rank_results: list[dict]) -> None:
    single = run_single_process()
    for result in rank_results:
        torch.testing.assert_close(result["centroids"], single["centroids"], atol=1e-5, rtol=0)
        assert torch.equal(result["assignments"], single["assignments"])
        # ||x||² and the scores are summed in another order; they nearly cancel, so allow 1e-5.
        assert result["inertia"] == pytest.approx(single["inertia"], rel=1e-5)
        torch.testing.assert_close(
            result["repaired_centroids"], single["repaired_centroids"], atol=1e-5, rtol=0
        )
        assert torch.equal(result["repaired_assignments"], single["repaired_assignments"])
        assert result["n_empty_repaired"] == single["n_empty_repaired"] >= 1


@pytest.mark.timeout(120)
def test_distributed_preprocessor_equals_single_process(rank_results: list[dict]) -> None:
    single = run_single_process()
    for result in rank_results:
        torch.testing.assert_close(result["features"], single["features"], atol=1e-5, rtol=0)


@pytest.mark.timeout(120)
def test_helpers_gather_in_rank_order_and_reduce(rank_results: list[dict]) -> None:
    expected_rows = (
        torch.cat([torch.arange(0, 3), torch.arange(10, 17)]).reshape(-1, 1).repeat(1, 2)
    )
    for r, result in enumerate(rank_results):
        assert (result["rank"], result["world_size"], result["is_main"]) == (r, WORLD, r == 0)
        assert torch.equal(result["gathered_rows"], expected_rows)
        assert torch.equal(result["gathered_empty"], torch.ones(5, 3))
        assert torch.equal(result["summed"], torch.tensor([3.0]))


def test_helpers_are_identities_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not xdist.init_distributed()
    assert (xdist.rank(), xdist.world_size(), xdist.is_main()) == (0, 1, True)
    t = torch.arange(4.0)
    assert xdist.all_reduce_sum(t) is t and xdist.all_gather_varlen(t) is t
    xdist.barrier()
    xdist.cleanup()
