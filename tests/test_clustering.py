"""k-means, feature preprocessing and cluster statistics, in RAM and streamed from memmaps
(single process; see test_distributed and test_feature_store)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from xdc import clustering, preprocess
from xdc.clustering import FeaturePreprocessor, FeatureRows, cluster_statistics, kmeans
from xdc.errors import ConfigError, DataError


def make_blobs(
    n_per_blob: int, n_blobs: int, dim: int, spread: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n_per_blob * n_blobs, dim)`` float32 points around random centres, and their blob ids."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_blobs, dim, generator=g) * spread
    labels = torch.arange(n_blobs).repeat_interleave(n_per_blob)
    points = centres[labels] + torch.randn(labels.numel(), dim, generator=g)
    return points, labels


def nearest_centroids(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Brute-force reference: argmin of the exact float64 squared distances."""
    return torch.cdist(x.double(), centroids.double()).argmin(1)


def test_recovers_well_separated_blobs_exactly() -> None:
    x, labels = make_blobs(n_per_blob=60, n_blobs=6, dim=16, spread=20.0, seed=1)
    init = x[torch.arange(6) * 60 + 7]  # one point of each blob
    result = kmeans(x, k=6, n_iter=10, init=init)
    assert adjusted_rand_score(labels.numpy(), result.assignments.numpy()) == 1.0
    # Cluster j started in blob j, so the ids match without permutation; centroids = blob means.
    assert torch.equal(result.assignments, labels)
    means = torch.stack([x[labels == j].mean(0) for j in range(6)])
    torch.testing.assert_close(result.centroids, means, atol=1e-4, rtol=1e-5)
    assert result.n_iter == 10 and result.n_empty_repaired == 0


def test_result_is_self_consistent_nearest_centroid_assignment() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 48, generator=g)
    result = kmeans(x, k=20, n_iter=5, seed=2, chunk_size=700)  # chunks that do not divide N
    assert result.centroids.shape == (20, 48) and result.centroids.dtype == torch.float32
    assert result.assignments.shape == (3000,) and result.assignments.dtype == torch.int64
    assert torch.equal(result.assignments, nearest_centroids(x, result.centroids))
    exact = (x.double() - result.centroids.double()[result.assignments]).pow(2).sum().item()
    assert result.inertia == pytest.approx(exact, rel=1e-6)


def test_matches_scikit_learn_inertia_from_the_same_initialisation() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 32, generator=g)
    init = x[torch.randperm(4000, generator=g)[:24]]
    ours = kmeans(x, k=24, n_iter=20, init=init)
    theirs = KMeans(24, init=init.numpy(), n_init=1, max_iter=20, tol=0.0, algorithm="lloyd").fit(
        x.numpy()
    )
    assert ours.inertia == pytest.approx(theirs.inertia_, rel=5e-3)
    assert adjusted_rand_score(theirs.labels_, ours.assignments.numpy()) > 0.95


def test_far_away_initial_centroid_is_repaired() -> None:
    x, _ = make_blobs(n_per_blob=50, n_blobs=4, dim=8, spread=10.0, seed=4)
    init = x[torch.tensor([0, 50, 100, 150])].clone()
    init[2] = 1e4  # no point is ever nearest to it
    result = kmeans(x, k=4, n_iter=10, init=init)
    assert result.n_empty_repaired >= 1
    assert cluster_statistics(result.assignments, 4)["n_empty"] == 0
    assert torch.isfinite(result.centroids).all()
    assert result.centroids.abs().max() < 100


def test_duplicate_initial_centroids_leave_no_empty_cluster() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(500, 8, generator=g)
    init = x[:6].clone()
    init[3:] = init[0]  # four copies of the same centroid: three start empty
    result = kmeans(x, k=6, n_iter=10, init=init)
    assert result.n_empty_repaired >= 3
    stats = cluster_statistics(result.assignments, 6)
    assert stats["n_empty"] == 0
    assert len(torch.unique(result.centroids, dim=0)) == 6


def test_same_seed_is_deterministic_and_another_seed_starts_elsewhere() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1000, 16, generator=g)
    first, again = kmeans(x, k=10, seed=7), kmeans(x, k=10, seed=7)
    assert torch.equal(first.centroids, again.centroids)
    assert torch.equal(first.assignments, again.assignments)
    assert first.inertia == again.inertia
    start_7, start_8 = kmeans(x, k=10, n_iter=0, seed=7), kmeans(x, k=10, n_iter=0, seed=8)
    assert not torch.equal(start_7.centroids, start_8.centroids)
    # The random start is K distinct points of x.
    rows = {tuple(row.tolist()) for row in x}
    assert all(tuple(row.tolist()) in rows for row in start_7.centroids)
    assert len(torch.unique(start_7.centroids, dim=0)) == 10


def test_bad_arguments_raise_clear_errors() -> None:
    x = torch.randn(50, 4)
    with pytest.raises(ConfigError, match=r"k=51"):
        kmeans(x, k=51)
    with pytest.raises(ConfigError, match=r"k \(number of clusters\)"):
        kmeans(x, k=0)
    with pytest.raises(ConfigError, match="init"):
        kmeans(x, k=3, init=torch.zeros(3, 5))
    with pytest.raises(ConfigError, match="init"):
        kmeans(x, k=3, init=torch.full((3, 4), float("nan")))
    with pytest.raises(ConfigError, match="chunk_size"):
        kmeans(x, k=3, chunk_size=0)
    with pytest.raises(ConfigError, match=r"\(N, D\)"):
        kmeans(torch.randn(50), k=3)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        kmeans(bad, k=3)


def test_cpu_threads_split_rows_and_torch_thread_count_is_restored() -> None:
    g = torch.Generator().manual_seed(15)
    x, _ = make_blobs(n_per_blob=400, n_blobs=10, dim=24, spread=1.0, seed=15)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = kmeans(x, k=10, seed=4)  # 4000 rows: two threads of 2000 rows
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one = kmeans(x, k=10, seed=4)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        bad = torch.randn(4000, 8, generator=g)
        bad[3999, 0] = float("inf")
        with pytest.raises(DataError):
            kmeans(bad, k=3)
        assert torch.get_num_threads() == 2  # restored after an error too
    finally:
        torch.set_num_threads(before)
    # Only the order of float additions differs between one and two threads.
    torch.testing.assert_close(two.centroids, one.centroids, atol=1e-5, rtol=0)
    assert torch.equal(two.assignments, one.assignments)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_input_dtypes_are_clustered_in_float32(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(600, 12, generator=g).to(dtype)
    result = kmeans(x, k=5, seed=1)
    reference = kmeans(x.to(torch.float32).requires_grad_(), k=5, seed=1)
    assert result.centroids.dtype == torch.float32
    assert torch.equal(result.centroids, reference.centroids)
    assert torch.equal(result.assignments, reference.assignments)


def test_verbose_logs_every_iteration(caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(200, 4)
    with caplog.at_level(logging.INFO, logger="xdc.clustering"):
        kmeans(x, k=3, n_iter=4, verbose=True)
    assert sum("k-means iteration" in r.getMessage() for r in caplog.records) == 4


def correlated_features(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g) * torch.logspace(0, -2, dim)
    return torch.randn(n, dim, generator=g) @ mixing + 3.0


def test_whitened_pca_has_identity_covariance() -> None:
    x = correlated_features(4000, 32, seed=9)
    out = FeaturePreprocessor(pca_dim=12, whiten=True, l2_normalize=False, eps=0.0).fit_transform(x)
    assert out.shape == (4000, 12)
    centred = out.double() - out.double().mean(0)
    covariance = centred.T @ centred / out.shape[0]
    torch.testing.assert_close(covariance, torch.eye(12, dtype=torch.float64), atol=1e-3, rtol=0)


def test_pca_keeps_the_top_principal_directions() -> None:
    x = correlated_features(3000, 24, seed=10)
    prep = FeaturePreprocessor(pca_dim=6, whiten=False, l2_normalize=False).fit(x)
    expected = np.linalg.eigvalsh(np.cov(x.double().numpy(), rowvar=False, bias=True))[::-1][:6]
    assert prep.eigenvalues is not None
    np.testing.assert_allclose(prep.eigenvalues.numpy(), expected, rtol=1e-6)
    variances = prep.transform(x).double().var(0, correction=0)
    np.testing.assert_allclose(variances.numpy(), expected, rtol=1e-4)


def test_preprocessor_output_rows_have_unit_norm_and_dim_is_clamped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    x = correlated_features(500, 16, seed=11)
    with caplog.at_level(logging.INFO, logger="xdc.clustering"):
        out = FeaturePreprocessor(pca_dim=256).fit_transform(x.half())
    assert out.shape == (500, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(500), atol=1e-5, rtol=0)
    assert any("clamped to 16" in r.getMessage() for r in caplog.records)


def test_preprocessor_transform_before_fit_fails() -> None:
    with pytest.raises(Exception, match="before fit"):
        FeaturePreprocessor().transform(torch.randn(3, 4))


def entropy(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)


def test_cluster_statistics_on_a_hand_made_example() -> None:
    assignments = [0, 0, 0, 1, 1, 2]
    labels = [0, 0, 1, 1, 1, -1]  # the last point's label is unknown
    stats = cluster_statistics(torch.tensor(assignments), k=4, labels=labels)
    assert stats["sizes"] == [3, 2, 1, 0]
    assert stats["n_empty"] == 1
    assert stats["size_entropy"] == pytest.approx(entropy([3, 2, 1]) / math.log(4))
    assert stats["largest_fraction"] == pytest.approx(0.5)
    assert stats["n_labelled"] == 5
    assert stats["purity_labels"] == pytest.approx(4 / 5)  # cluster 0: 2 of 3, cluster 1: 2 of 2
    # NMI of the 5 labelled points by hand: clusters {0,0,0,1,1} vs labels {0,0,1,1,1}.
    h_c, h_l = entropy([3, 2]), entropy([2, 3])
    joint = entropy([2, 1, 2])  # (c0,l0)=2, (c0,l1)=1, (c1,l1)=2
    assert stats["nmi_labels"] == pytest.approx((h_c + h_l - joint) / ((h_c + h_l) / 2))
    balanced = cluster_statistics([0, 1, 2, 3] * 5, k=4)
    assert balanced["size_entropy"] == pytest.approx(1.0)
    assert balanced["n_empty"] == 0


def test_nmi_chance_is_the_nmi_of_a_random_labelling() -> None:
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 10, size=1000)
    random_clusters = rng.integers(0, 100, size=1000)
    stats = cluster_statistics(random_clusters, k=100, labels=labels, previous=random_clusters)
    assert stats["nmi_chance"] > 0.1  # far from zero with many clusters
    assert stats["nmi_labels"] == pytest.approx(stats["nmi_chance"], abs=0.01)
    assert stats["nmi_previous"] == pytest.approx(1.0)
    assert stats["nmi_previous_chance"] < 0.7
    perfect = cluster_statistics(labels, k=10, labels=labels)
    assert perfect["nmi_labels"] == pytest.approx(1.0) and perfect["ari_labels"] == pytest.approx(
        1.0
    )
    assert perfect["nmi_chance"] < 0.02


def test_cluster_statistics_rejects_out_of_range_ids_and_unknown_labels_give_nan() -> None:
    with pytest.raises(ConfigError, match="k=3"):
        cluster_statistics([0, 3], k=3)
    stats = cluster_statistics([0, 1], k=2, labels=[-1, -1])
    assert stats["n_labelled"] == 0 and math.isnan(float(stats["nmi_labels"]))  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kmeans_and_preprocessor_match_cpu() -> None:
    x, _ = make_blobs(n_per_blob=500, n_blobs=32, dim=64, spread=2.0, seed=13)
    cpu = kmeans(x, k=32, seed=0)
    gpu = kmeans(x.cuda(), k=32, seed=0)
    assert gpu.centroids.device.type == "cuda" and gpu.assignments.device.type == "cuda"
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-4)
    agreement = (gpu.assignments.cpu() == cpu.assignments).float().mean().item()
    assert agreement > 0.999
    torch.testing.assert_close(gpu.centroids.cpu(), cpu.centroids, atol=1e-3, rtol=0)
    features = correlated_features(3000, 32, seed=14)
    on_gpu = FeaturePreprocessor(pca_dim=8).fit_transform(features.cuda())
    on_cpu = FeaturePreprocessor(pca_dim=8).fit_transform(features)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=0)


def test_kmeans_plusplus_seeding_avoids_the_local_optima_of_random_seeding() -> None:
    """Eight well-separated blobs: random seeding often puts two centroids in one blob and never
    recovers (no cluster is empty, so no repair happens); k-means++ seeding finds every blob."""
    x, labels = make_blobs(n_per_blob=60, n_blobs=8, dim=8, spread=20.0, seed=3)
    plus = [adjusted_rand_score(labels, kmeans(x, 8, seed=s).assignments) for s in range(10)]
    rand = [
        adjusted_rand_score(labels, kmeans(x, 8, seed=s, init="random").assignments)
        for s in range(10)
    ]
    assert min(plus) == pytest.approx(1.0)
    assert min(rand) < 0.99, "the data should trap random seeding for some seed"
    with pytest.raises(ConfigError, match="init"):
        kmeans(x, 8, init="farthest")


def write_memmap(path: Path, values: np.ndarray) -> np.memmap:
    """``values`` written to a file at ``path`` and opened back as a read-only memmap."""
    values.tofile(path)
    return np.memmap(path, dtype=values.dtype, mode="r", shape=values.shape)


def test_kmeans_of_a_float16_memmap_equals_the_tensor_of_the_same_values(tmp_path: Path) -> None:
    x, _ = make_blobs(n_per_blob=300, n_blobs=8, dim=16, spread=3.0, seed=21)
    stored = write_memmap(tmp_path / "x.f16", x.numpy().astype(np.float16))
    on_disk = kmeans(stored, k=8, seed=1)  # 2400 points <= 8 * 256: every point, every iteration
    in_ram = kmeans(torch.from_numpy(np.array(stored)), k=8, seed=1)
    assert torch.equal(on_disk.centroids, in_ram.centroids)
    assert torch.equal(on_disk.assignments, in_ram.assignments)
    assert on_disk.inertia == in_ram.inertia


def test_more_points_than_k_times_points_per_centroid_fit_on_a_sample_and_assign_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    x, labels = make_blobs(n_per_blob=2500, n_blobs=8, dim=16, spread=20.0, seed=22)
    x16 = x.half()
    stored = write_memmap(tmp_path / "x.f16", x16.numpy())
    monkeypatch.setattr(clustering, "STREAM_ROWS", 100)  # 3200 rows a chunk at D=16: 7 chunks
    with caplog.at_level(logging.INFO, logger="xdc.clustering"):
        sampled = kmeans(stored, k=8, seed=2, points_per_centroid=50)
    assert any("sample of 400 of 20000" in r.getMessage() for r in caplog.records)
    # Every row is assigned to its nearest centroid, and the inertia is over every row.
    exact = x16.float()
    assert sampled.assignments.shape == (20000,)
    assert torch.equal(sampled.assignments, nearest_centroids(exact, sampled.centroids))
    inertia = (exact.double() - sampled.centroids.double()[sampled.assignments]).pow(2).sum()
    # ||x||^2 + (||c||^2 - 2 x.c) in float32 cancels ~400x here (blobs far from the origin).
    assert sampled.inertia == pytest.approx(inertia.item(), rel=1e-4)
    assert adjusted_rand_score(labels.numpy(), sampled.assignments.numpy()) == 1.0
    # The tensor takes the same path; fitting on every point gives other centroids, same labels.
    as_tensor = kmeans(x16, k=8, seed=2, points_per_centroid=50)
    assert torch.equal(as_tensor.centroids, sampled.centroids)
    assert torch.equal(as_tensor.assignments, sampled.assignments)
    everything = kmeans(stored, k=8, seed=2, points_per_centroid=None)
    assert not torch.equal(everything.centroids, sampled.centroids)
    assert adjusted_rand_score(everything.assignments, sampled.assignments) == 1.0
    with pytest.raises(ConfigError, match="points_per_centroid"):
        kmeans(stored, k=8, points_per_centroid=0)
    with pytest.raises(ConfigError, match=r"\(N, D\)"):
        kmeans(np.zeros(10, dtype=np.float16), k=2)


def test_streamed_pca_of_a_memmap_matches_the_in_memory_pca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preprocess, "STREAM_ROWS", 2 * preprocess.GRAM_BLOCK_ROWS)
    features = correlated_features(40000, 32, seed=23)  # 3 chunks, the last one partial
    stored = write_memmap(tmp_path / "x.f32", features.numpy())
    in_ram = FeaturePreprocessor(pca_dim=8).fit(features)
    streamed = FeaturePreprocessor(pca_dim=8).fit(stored)
    assert in_ram.mean is not None and streamed.mean is not None
    assert in_ram.projection is not None and streamed.projection is not None
    torch.testing.assert_close(streamed.mean, in_ram.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(streamed.projection, in_ram.projection, atol=1e-5, rtol=1e-5)
    rows = FeatureRows(stored).map(streamed.transform)
    assert rows.shape == (40000, 8)
    out = torch.cat([block for _, _, block in rows.chunks()])
    torch.testing.assert_close(out, in_ram.transform(features), atol=1e-5, rtol=0)


def test_streamed_assignment_sizes_chunks_by_the_stored_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows narrowed by PCA on the way in are read at their stored width: a chunk holds as many
    rows as that width allows (not 64 times more for 512 → 8), and the labels are those of
    clustering the transformed rows in RAM."""
    monkeypatch.setattr(clustering, "STREAM_ROWS", 1024)
    features = correlated_features(5000, 512, seed=5)
    stored = write_memmap(tmp_path / "x.f32", features.numpy())
    pca = FeaturePreprocessor(pca_dim=8).fit(features)
    seen: list[int] = []

    def transform(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return pca.transform(x)

    rows = FeatureRows(stored).map(transform)
    assert rows.widest == 512 and rows.shape == (5000, 8)
    streamed = kmeans(rows, k=4, seed=1, points_per_centroid=100)
    assert 0 < max(seen) <= 1024  # 1,024 rows of 512 at a time; 65,536 rows of 8 before
    in_ram = kmeans(pca.transform(features), k=4, seed=1, points_per_centroid=100)
    assert torch.equal(streamed.assignments, in_ram.assignments)
