"""A real 3-process gloo group, joined the way ``xdc pretrain`` joins one under torchrun:
distributed k-means and preprocessing equal single-process ones, also with a rank that holds no
row; and the process group of a CUDA run routes each tensor to a backend that takes its device."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xdc import distributed as xdist
from xdc.clustering import FeaturePreprocessor, kmeans
from xdc.data.datasets import ClipKey, KeySampler
from xdc.deep_clustering import check_replicas_agree
from xdc.errors import ConfigError
from xdc.run import choose_device

WORLD = 3
SHARD_SIZES = (230, 0, 370)  # unequal shards, so rank offsets matter; rank 1 has none


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
    assert xdist.init_distributed(device=torch.device("cpu"))  # the backend xdc chooses
    try:
        x, init = shared_data()
        start = sum(SHARD_SIZES[:rank])
        shard = x[start : start + SHARD_SIZES[rank]]
        random_start = kmeans(shard, k=8, n_iter=15, seed=3)
        repaired = kmeans(shard, k=8, n_iter=15, init=init if rank == 0 else torch.zeros_like(init))
        features = FeaturePreprocessor(pca_dim=10, whiten=True).fit_transform(shard)
        rows = torch.arange(10 * rank, 10 * rank + 3 + 4 * rank).reshape(-1, 1).repeat(1, 2)
        empty_on_rank_1 = torch.ones(5 if rank == 0 else 0, 3)
        names = [f"rank {rank} file {i} é" for i in range(rank)]  # none on rank 0
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
            "any_rank": (xdist.any_rank(rank == 2), xdist.any_rank(False)),  # a NaN on one rank
            "strings": xdist.all_gather_strings(names),
            "backend": dist.get_backend(),
            "replicas": _replica_checks(rank),
        }
        xdist.barrier()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        xdist.cleanup()


def _replica_checks(rank: int) -> str:
    """``check_replicas_agree`` on equal weights (passes), then with rank 2's changed (raises)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    check_replicas_agree(model)
    with torch.no_grad():
        model.bias[1] += 1e-3 if rank == 2 else 0.0
    try:
        check_replicas_agree(model)
    except RuntimeError as err:
        return str(err)
    return "no error"


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
        torch.cat([torch.arange(0, 3), torch.arange(10, 17), torch.arange(20, 31)])
        .reshape(-1, 1)
        .repeat(1, 2)
    )
    for r, result in enumerate(rank_results):
        assert (result["rank"], result["world_size"], result["is_main"]) == (r, WORLD, r == 0)
        assert torch.equal(result["gathered_rows"], expected_rows)
        assert torch.equal(result["gathered_empty"], torch.ones(5, 3))
        assert torch.equal(result["summed"], torch.tensor([6.0]))
        assert result["any_rank"] == (True, False)  # every rank stops when one must
        assert result["strings"] == ["rank 1 file 0 é", "rank 2 file 0 é", "rank 2 file 1 é"]
        assert result["backend"] == xdist.process_group_backend(cuda=False) == "gloo"
        assert "1 of 2 parameter tensors differ" in result["replicas"]


def test_a_cuda_run_routes_cpu_tensors_to_gloo_and_cuda_tensors_to_nccl() -> None:
    """NCCL takes CUDA tensors only, and a GPU run also reduces CPU tensors (k-means statistics,
    pseudo-labels, decode failures): its process group sends each device to a backend that takes
    it (torch's own table of backend capabilities). A bare "nccl" would leave CPU tensors out."""
    routes = dist.BackendConfig(xdist.process_group_backend(cuda=True)).get_device_backend_map()
    assert routes == {"cpu": "gloo", "cuda": "nccl"}
    for device, backend in routes.items():
        assert device in dist.Backend.backend_capability[backend]
    assert "cpu" not in dist.BackendConfig("nccl").get_device_backend_map()
    cpu_routes = dist.BackendConfig(
        xdist.process_group_backend(cuda=False)
    ).get_device_backend_map()
    assert cpu_routes["cpu"] == "gloo"


def test_helpers_are_identities_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not xdist.init_distributed()
    assert (xdist.rank(), xdist.world_size(), xdist.is_main()) == (0, 1, True)
    t = torch.arange(4.0)
    assert xdist.all_reduce_sum(t) is t and xdist.all_gather_varlen(t) is t
    assert xdist.any_rank(True) and not xdist.any_rank(False)
    xdist.barrier()
    xdist.cleanup()


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_training_shards_are_padded_to_equal_length_and_extraction_shards_are_blocks(
    world: int,
) -> None:
    """Every rank takes the same number of training steps whatever N (DDP would hang otherwise):
    the strided shards wrap around to the first keys. Extraction blocks are never padded (a clip
    counted twice would change the clustering) and may be empty when N < world size."""
    for n in range(8):
        keys = [ClipKey(row=r, seed=r) for r in range(n)]
        train = [list(KeySampler(keys, r, world)) for r in range(world)]
        assert {len(s) for s in train} == {-(-n // world)}
        assert {k.row for s in train for k in s} == set(range(n))
        blocks = [list(KeySampler(keys, r, world, contiguous=True)) for r in range(world)]
        assert [k for b in blocks for k in b] == keys
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    five = [ClipKey(row=r, seed=r) for r in range(5)]
    if world == 3:  # 5 keys on 3 ranks: 6 slots, the first key repeated once
        assert [[k.row for k in KeySampler(five, r, 3)] for r in range(3)] == [
            [0, 3],
            [1, 4],
            [2, 0],
        ]
        assert [len(KeySampler(five[:2], r, 3, contiguous=True)) for r in range(3)] == [0, 1, 1]


def test_device_choice_under_torchrun_and_in_one_process() -> None:
    """Each torchrun process uses GPU LOCAL_RANK; an explicit --device cuda:K is kept in one
    process and refused with several processes on a machine (all on GPU K)."""
    assert choose_device(None, cuda_devices=0) == torch.device("cpu")
    assert choose_device("cpu", cuda_devices=4, local_rank=2, local_world_size=4).type == "cpu"
    assert choose_device(None, 4, local_rank=2, local_world_size=4) == torch.device("cuda", 2)
    assert choose_device("cuda", 4, local_rank=3, local_world_size=4) == torch.device("cuda", 3)
    assert choose_device("cuda:1", 4) == torch.device("cuda", 1)  # one process
    assert choose_device("cuda:1", 4, local_world_size=1) == torch.device("cuda", 1)
    with pytest.raises(
        ConfigError, match=r"--device cuda:1 under torchrun with 4 processes.*--device cuda"
    ):
        choose_device("cuda:1", 4, local_rank=0, local_world_size=4)
    with pytest.raises(ConfigError, match="sees 2 GPU"):
        choose_device(None, 2, local_rank=2, local_world_size=4)
    with pytest.raises(ConfigError, match="CUDA is not available.*--device cpu"):
        choose_device("cuda", cuda_devices=0)
