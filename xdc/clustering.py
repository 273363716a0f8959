"""k-means for deep clustering; the clustering step's other parts are re-exported from here.

One k-means (Lloyd) for CPU and GPU that also runs across DDP ranks: each rank holds a shard of
the points, centroids are identical on every rank, and the result equals a single-process run on
all the points (up to float rounding of the summed centroid statistics). ``FeaturePreprocessor``
(PCA-whitening, in :mod:`xdc.preprocess`) and ``cluster_statistics`` (in :mod:`xdc.cluster_metrics`)
are re-exported, so that the whole step imports from one place.

How the CPU version is made fast (measured with benchmarks/kmeans.py):
- The distance GEMM runs as a 1x1 convolution over a channels-last view of the same memory, which
  torch hands to oneDNN. ``torch.mm`` calls MKL, which on non-Intel processors runs without
  AVX-512; oneDNN uses AVX-512 where the processor has it (2.3x faster per core on an AMD EPYC).
- Work is split like scikit-learn's: one Python thread per ``torch.get_num_threads()``, each on its
  own contiguous rows with single-threaded ops, joined once per iteration. Multi-threaded torch
  ops open an OpenMP region each, whose threads spin while they wait; on a busy machine that made
  every small op cost milliseconds (2.5-9x slower overall than one thread).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xdc import distributed as xdist
from xdc import seeds
from xdc.cluster_metrics import cluster_statistics
from xdc.errors import ConfigError, DataError
from xdc.preprocess import STREAM_ROWS, FeaturePreprocessor, FeatureRows

__all__ = ["FeaturePreprocessor", "FeatureRows", "KMeansResult", "cluster_statistics", "kmeans"]

log = logging.getLogger(__name__)

# Relative size of the symmetric perturbation that splits a large cluster to refill an empty one.
SPLIT_EPS = 1.0 / 1024.0
# Rows per distance block: the (rows, K) float32 score block is about this big.
CPU_SCORE_BYTES = 2 << 20
GPU_SCORE_BYTES = 256 << 20
MIN_ROWS_PER_THREAD = 1024  # fewer rows than this per thread are not worth a thread
CONV_BATCH = 16  # see _score_function
POINTS_PER_CENTROID = 256  # fitting sample per cluster when there are more points (faiss's default)
PLUSPLUS_SAMPLE_PER_CLUSTER = (
    20  # k-means++ seeding looks at 20·K points (at least 2048; all when fewer)
)

R = TypeVar("R")
ScoreFn = Callable[[Tensor], Tensor]
RowMap = Callable[[Callable[[int, int], R]], list[R]]


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`.

    Attributes:
        centroids: ``(K, D)`` float32, identical on every rank.
        assignments: ``(N_local,)`` int64, nearest centroid of each of this rank's points.
        inertia: sum of squared distances of ALL points (every rank) to their centroid, as
            ``sum ||x||^2 + sum (||c||^2 - 2 x.c)`` accumulated in float64.
        n_iter: number of Lloyd updates done (always the ``n_iter`` asked for).
        n_empty_repaired: how many times an empty cluster was refilled by splitting a large one.
    """

    centroids: Tensor
    assignments: Tensor
    inertia: float
    n_iter: int
    n_empty_repaired: int


def kmeans(
    x: Tensor | np.ndarray | FeatureRows,
    k: int,
    n_iter: int = 20,
    seed: int = 0,
    init: Tensor | str = "k-means++",
    chunk_size: int | None = None,
    verbose: bool = False,
    *,
    points_per_centroid: int | None = POINTS_PER_CENTROID,
    device: torch.device | str | None = None,
) -> KMeansResult:
    """Lloyd's k-means with a fixed number of iterations, on ``x``'s device, across ranks.

    When there are more than ``k * points_per_centroid`` points (over all ranks), the centroids are
    fitted on a seeded sample of that many points, chosen by global index (each rank contributes
    the sampled rows it holds), and then every row is assigned in streamed chunks; otherwise every
    point takes part in every iteration. On CPU it uses ``torch.get_num_threads()`` threads and
    sets torch's thread count to 1 while it runs (restored on return), so do not run other torch
    work in parallel threads meanwhile. Results are deterministic for a given seed and thread
    count, and the same in one process as over ranks holding consecutive shards of the rows.

    Args:
        x: ``(N_local, D)`` points of this rank: a tensor, a numpy array or ``np.memmap`` (any real
            dtype, e.g. float16 on disk; read a chunk at a time) or a :class:`FeatureRows`;
            computed in float32.
        k: number of clusters; at most the total number of points over all ranks.
        n_iter: Lloyd iterations (assign + update), always all of them: no early stop.
        seed: picks the sample, the initial points and the empty-cluster split directions.
        init: ``(K, D)`` initial centroids (rank 0's are used), ``"random"`` (K distinct random
            points) or ``"k-means++"`` (D² sampling on a seeded sample of at most
            ``20·K`` points gathered from all ranks: far fewer bad local optima).
        chunk_size: rows per distance block (default: a (rows, K) block of about 2 MiB on CPU).
        verbose: log the inertia of every iteration at INFO level.
        points_per_centroid: sample size per cluster for fitting (faiss's default, 256); ``None``
            fits on every point.
        device: where to compute (default: the tensor's device; CPU for arrays).

    Returns:
        A :class:`KMeansResult` whose assignments (of every row), centroids and inertia (over every
        row) come from one final assignment pass after the last update, so they are consistent.
    """
    if isinstance(x, Tensor):
        _check_tensor(x)
        x = x if device is None else x.to(device)
    rows = x if isinstance(x, FeatureRows) else FeatureRows(x, device)
    n_local, dim = rows.shape
    counts_per_rank = xdist.all_gather_varlen(torch.tensor([n_local], device=rows.device))
    n_total = int(counts_per_rank.sum().item())
    _check_arguments(k, n_iter, n_total, dim, init, chunk_size, points_per_centroid)
    offset = int(counts_per_rank[: xdist.rank()].sum().item())
    sample_size = n_total if points_per_centroid is None else k * points_per_centroid
    if n_total <= sample_size:
        points = _as_float32_points(x) if isinstance(x, Tensor) else rows.read(0, n_local)
        return _lloyd(points, k, n_iter, seed, init, chunk_size, verbose)
    chosen = np.sort(seeds.rng(seed, "kmeans_sample").choice(n_total, sample_size, replace=False))
    local = chosen[(chosen >= offset) & (chosen < offset + n_local)] - offset
    log.info(
        "k-means: fitting K=%d on a sample of %d of %d points (%d per centroid), then assigning all",
        k, sample_size, n_total, points_per_centroid,
    )  # fmt: skip
    fit = _lloyd(rows.take(local), k, n_iter, seed, init, chunk_size, verbose)
    assignments, inertia = _assign_streamed(rows, fit.centroids, chunk_size)
    return KMeansResult(fit.centroids, assignments, inertia, n_iter, fit.n_empty_repaired)


def _lloyd(
    x: Tensor,
    k: int,
    n_iter: int,
    seed: int,
    init: Tensor | str,
    chunk_size: int | None,
    verbose: bool,
) -> KMeansResult:
    """:func:`kmeans` on float32 points ``x`` held in memory (this rank's shard)."""
    n_local = x.shape[0]
    counts_per_rank = xdist.all_gather_varlen(torch.tensor([n_local], device=x.device))
    n_total = int(counts_per_rank.sum().item())
    chunk = chunk_size or _default_chunk_size(x.device, k)
    with _row_workers(x) as map_rows:
        sq_norm_sum = _squared_norm_sum(x, chunk, map_rows)  # also rejects NaN/Inf features
        offset = int(counts_per_rank[: xdist.rank()].sum().item())
        if init == "random":
            centroids = _random_points(x, k, seed, n_total, offset)
        elif init == "k-means++":
            centroids = _plusplus_points(x, k, seed, n_total, offset)
        else:
            assert isinstance(init, Tensor)
            centroids = init.detach().to(device=x.device, dtype=torch.float32).contiguous().clone()
            xdist.broadcast_tensor(centroids)
            if not bool(torch.isfinite(centroids).all()):
                raise ConfigError("init (initial centroids) contains NaN or Inf values")
        data_rms = math.sqrt(sq_norm_sum / (n_total * x.shape[1]))
        split_generator = seeds.torch_generator(seed, "kmeans_split")
        assignments = torch.empty(n_local, dtype=torch.int64, device=x.device)
        n_repaired = 0
        for it in range(n_iter):
            score_sum, sums, counts = _lloyd_pass(x, centroids, chunk, assignments, map_rows)
            if verbose:
                inertia = sq_norm_sum + score_sum
                log.info("k-means iteration %d/%d: inertia %.6g", it + 1, n_iter, inertia)
            centroids = _new_centroids(sums, counts, centroids)
            n_repaired += _repair_empty_clusters(centroids, counts, data_rms, split_generator)
        score_sum, _, _ = _lloyd_pass(x, centroids, chunk, assignments, map_rows, update=False)
    # Rounding can make the sum a hair negative when every point sits on its centroid.
    inertia = max(0.0, sq_norm_sum + score_sum)
    return KMeansResult(centroids, assignments, inertia, n_iter, n_repaired)


def _assign_streamed(
    rows: FeatureRows, centroids: Tensor, chunk_size: int | None
) -> tuple[Tensor, float]:
    """Nearest centroid of every row of ``rows`` (read a chunk at a time) and the inertia of all
    rows of all ranks."""
    k = centroids.shape[0]
    chunk = chunk_size or _default_chunk_size(rows.device, k)
    scores_of = _score_function(centroids)
    assignments = torch.empty(rows.shape[0], dtype=torch.int64, device=rows.device)
    totals = torch.zeros(2, dtype=torch.float64, device=rows.device)  # sum ||x||^2, sum of scores
    for start, stop, block in rows.chunks(_stream_rows(rows.device, rows.widest)):
        with _row_workers(block) as map_rows:
            totals[0] += _local_squared_norms(block, chunk, map_rows)[0]
            parts = map_rows(_assigner(block, scores_of, chunk, assignments[start:stop], k))
            totals[1] += torch.stack([score for score, _, _ in parts]).sum()
    sq_norm_sum, score_sum = xdist.all_reduce_sum(totals).tolist()
    if not math.isfinite(sq_norm_sum):
        raise DataError("kmeans input: the features contain NaN or Inf values (or overflow)")
    # The best scores are -(||x - c||^2 - ||x||^2) / 2.
    return assignments, max(0.0, sq_norm_sum - 2.0 * score_sum)


@contextmanager
def _row_workers(x: Tensor) -> Iterator[RowMap]:
    """Yield ``map_rows(fn)``: ``fn(start, stop)`` on contiguous row ranges of ``x``, in parallel.

    On CPU, one Python thread per torch thread (ops release the GIL), each running one-threaded
    torch ops on its own rows; the ranges start at multiples of ``CONV_BATCH``. torch's thread
    count is 1 meanwhile (small inputs run in this thread alone) and is restored afterwards, also
    on errors. On GPU: one range, in this thread.
    """
    n, threads = x.shape[0], torch.get_num_threads()
    if x.device.type != "cpu":
        yield lambda fn: [fn(0, n)]
        return
    parts = max(1, min(threads, n // MIN_ROWS_PER_THREAD))
    bounds = [n * p // parts // CONV_BATCH * CONV_BATCH for p in range(parts)] + [n]
    ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
    torch.set_num_threads(1)  # this thread's ops (the small ones) and the workers' are one-threaded
    try:
        if parts == 1:
            yield lambda fn: [fn(0, n)]
        else:
            with ThreadPoolExecutor(
                parts, initializer=torch.set_num_threads, initargs=(1,)
            ) as pool:
                yield lambda fn: list(pool.map(lambda bounds: fn(*bounds), ranges))
    finally:
        torch.set_num_threads(threads)


def _squared_norm_sum(x: Tensor, chunk: int, map_rows: RowMap) -> float:
    """Sum over all ranks of ``||x||^2`` (float64 accumulation); rejects NaN/Inf features."""
    value = float(xdist.all_reduce_sum(_local_squared_norms(x, chunk, map_rows)).item())
    if not math.isfinite(value):
        raise DataError("kmeans input: the features contain NaN or Inf values (or overflow)")
    return value


def _local_squared_norms(x: Tensor, chunk: int, map_rows: RowMap) -> Tensor:
    """``(1,)`` float64: the sum of ``||x||^2`` over this rank's rows of ``x``."""

    def rows_sum(start: int, stop: int) -> Tensor:
        total = torch.zeros(1, dtype=torch.float64, device=x.device)
        for a, b in _blocks(stop - start, chunk):
            row_norms = torch.linalg.vector_norm(x[start + a : start + b], dim=1)  # one read of x
            total += row_norms.to(torch.float64).square().sum()
        return total

    return torch.stack(map_rows(rows_sum)).sum(0)


def _check_tensor(x: Tensor) -> None:
    if x.dim() != 2:
        raise ConfigError(f"kmeans expects x as a (N, D) tensor of features, got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise ConfigError(f"kmeans expects real-valued features, got dtype {x.dtype}")


def _as_float32_points(x: Tensor) -> Tensor:
    # Detached: clustering is not differentiated, and worker threads do not share the grad mode.
    return x.detach().to(torch.float32).contiguous()


def _check_arguments(
    k: int,
    n_iter: int,
    n_total: int,
    dim: int,
    init: Tensor | str,
    chunk_size: int | None,
    points_per_centroid: int | None,
) -> None:
    if n_total == 0:
        raise DataError("kmeans input: there are no points to cluster (N=0 on every rank)")
    if k < 1:
        raise ConfigError(f"k (number of clusters) must be at least 1, got k={k}")
    if k > n_total:
        raise ConfigError(
            f"k={k} clusters is more than the {n_total} points to cluster; lower k "
            "(the number of clusters) or cluster more points"
        )
    if n_iter < 0:
        raise ConfigError(f"n_iter (k-means iterations) must be >= 0, got n_iter={n_iter}")
    if isinstance(init, str):
        if init not in ("random", "k-means++"):
            raise ConfigError(
                f"init must be 'random', 'k-means++' or a (k, D) tensor, got {init!r}"
            )
    elif tuple(init.shape) != (k, dim):
        raise ConfigError(
            f"init must be a (k, D) = ({k}, {dim}) tensor of centroids, got {tuple(init.shape)}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1 (or None for the default), got {chunk_size}")
    if points_per_centroid is not None and points_per_centroid < 1:
        raise ConfigError(
            f"points_per_centroid must be >= 1 (or None to fit on every point), "
            f"got {points_per_centroid}"
        )


def _default_chunk_size(device: torch.device, k: int) -> int:
    budget = CPU_SCORE_BYTES if device.type == "cpu" else GPU_SCORE_BYTES
    return max(1024, budget // (4 * k))


def _stream_rows(device: torch.device, dim: int) -> int:
    """Rows per streamed chunk whose rows are at most ``dim`` wide while read (the stored width
    when PCA narrows them): ``STREAM_ROWS`` at D = 512 on CPU, proportionally more on a GPU."""
    rows = STREAM_ROWS * 512 // max(dim, 1)
    return max(CONV_BATCH, rows if device.type == "cpu" else 4 * rows)


def _random_points(x: Tensor, k: int, seed: int, n_total: int, offset: int) -> Tensor:
    """``(k, D)`` distinct points chosen by global index; each rank fills in the rows it holds."""
    generator = seeds.torch_generator(seed, "kmeans_init")
    chosen = torch.randperm(n_total, generator=generator)[:k].to(x.device)
    local = (chosen >= offset) & (chosen < offset + x.shape[0])
    centroids = torch.zeros(k, x.shape[1], dtype=torch.float32, device=x.device)
    centroids[local] = x[chosen[local] - offset]
    # Exactly one rank holds each row and the others add zeros, so the sum is exact.
    return xdist.all_reduce_sum(centroids)


def _plusplus_points(x: Tensor, k: int, seed: int, n_total: int, offset: int) -> Tensor:
    """Greedy k-means++ seeding (D² sampling, best of a few candidates per centroid, as
    scikit-learn does) on a seeded sample of the points of all ranks.

    The sample is chosen by global index, gathered in rank order (= global order), so every rank
    and a single process on the same data pick the same centroids.
    """
    generator = seeds.torch_generator(seed, "kmeans_init")
    size = min(n_total, max(2048, PLUSPLUS_SAMPLE_PER_CLUSTER * k))
    chosen = torch.randperm(n_total, generator=generator)[:size].sort().values.to(x.device)
    local = chosen[(chosen >= offset) & (chosen < offset + x.shape[0])] - offset
    sample = xdist.all_gather_varlen(x[local])
    sq_norms = sample.square().sum(1)
    sample_t = sample.t().contiguous()  # once: a transposed view would be copied at every step
    centroids = torch.empty(k, x.shape[1], dtype=torch.float32, device=x.device)
    first = int(torch.randint(len(sample), (1,), generator=generator))
    centroids[0] = sample[first]
    nearest = (sample - centroids[0]).square().sum(1)
    trials = 2 + int(math.log(k))  # greedy k-means++: the best of a few D²-sampled candidates
    for i in range(1, k):
        weights = nearest.double().cpu()
        if float(weights.sum()) <= 0:  # fewer distinct points than k: any point will do
            weights = torch.ones_like(weights)
        picks = torch.multinomial(weights, trials, replacement=True, generator=generator).to(
            x.device
        )
        cand = sample[picks]
        dist = torch.addmm(sq_norms[None, :], cand, sample_t, alpha=-2.0)
        dist.add_(sq_norms[picks][:, None]).clamp_(min=0)
        candidate_nearest = torch.minimum(nearest[None, :], dist)
        best = int(candidate_nearest.double().sum(1).argmin())
        centroids[i] = cand[best]
        nearest = candidate_nearest[best]
    return centroids


def _score_function(centroids: Tensor) -> ScoreFn:
    """Scores ``x.c - ||c||^2 / 2`` of a ``(n, D)`` block against all centroids -> ``(n, K)``.

    This is ``-(||x - c||^2 - ||x||^2) / 2``: ``||x||^2`` does not change which centroid is nearest,
    and the factor ``-1/2`` is a power of two, so the argmax of these scores is exactly the argmin
    of ``||c||^2 - 2 x.c``, while the GEMM uses the centroids as they are (no scaled copy).
    """
    k, dim = centroids.shape
    bias = torch.linalg.vector_norm(centroids, dim=1).square_().mul_(-0.5)
    centroids_t = centroids.t().contiguous()  # once per pass, not once per block

    def gemm_scores(block: Tensor) -> Tensor:
        return torch.addmm(bias, block, centroids_t)

    if centroids.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return gemm_scores
    kernel = centroids.reshape(k, dim, 1, 1)

    def conv_scores(block: Tensor) -> Tensor:
        n = block.shape[0]
        if n % CONV_BATCH:
            return gemm_scores(block)
        # The (n, D) rows are, in memory, a channels-last (B, D, 1, n/B) image, and the channels-last
        # (B, K, 1, n/B) output is (n, K) row-major. torch sends a 1x1 convolution to oneDNN when
        # B >= 16 (or when multi-threaded); oneDNN's kernel there is the GEMM we want.
        image = block.view(CONV_BATCH, 1, n // CONV_BATCH, dim).permute(0, 3, 1, 2)
        return F.conv2d(image, kernel, bias).permute(0, 2, 3, 1).reshape(n, k)

    return conv_scores


def _blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of at most ``chunk`` rows, all but the last a multiple of 16."""
    step = max(CONV_BATCH, chunk // CONV_BATCH * CONV_BATCH)
    blocks = [(start, min(start + step, n)) for start in range(0, n, step)]
    if blocks and (blocks[-1][1] - blocks[-1][0]) % CONV_BATCH:
        start, stop = blocks.pop()
        middle = stop - (stop - start) % CONV_BATCH
        blocks += [(start, middle), (middle, stop)] if middle > start else [(start, stop)]
    return blocks


def _lloyd_pass(
    x: Tensor,
    centroids: Tensor,
    chunk: int,
    assignments: Tensor,
    map_rows: RowMap,
    update: bool = True,
) -> tuple[float, Tensor, Tensor]:
    """Assign every row of ``x`` to its nearest centroid (written into ``assignments``).

    Returns:
        The sum over all ranks of ``||x - c||^2 - ||x||^2``; with ``update``, the per-cluster sums
        of the points ``(K, D)`` and the cluster sizes ``(K,)``, summed over all ranks.
    """
    k = centroids.shape[0]
    parts = map_rows(_assigner(x, _score_function(centroids), chunk, assignments, k, update))
    score_sum, sums, counts = (
        torch.stack(list(column)).sum(0) for column in zip(*parts, strict=True)
    )
    if update:
        xdist.all_reduce_sum(sums)
        xdist.all_reduce_sum(counts)
    # The best scores are -(||x - c||^2 - ||x||^2) / 2.
    return -2.0 * float(xdist.all_reduce_sum(score_sum).item()), sums, counts


def _assigner(
    x: Tensor, scores_of: ScoreFn, chunk: int, assignments: Tensor, k: int, update: bool = False
) -> Callable[[int, int], tuple[Tensor, Tensor, Tensor]]:
    """``fn(start, stop)`` that writes the nearest centroid of rows ``[start, stop)`` of ``x`` into
    ``assignments`` and returns (their best-score sum, per-cluster sums of the rows if ``update``,
    cluster sizes if ``update``), all local to this rank."""
    dim = x.shape[1]

    def rows_pass(start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        rows, out = x[start:stop], assignments[start:stop]
        best = torch.empty(min(chunk, stop - start) + CONV_BATCH, device=x.device)
        score_sum = torch.zeros(1, dtype=torch.float64, device=x.device)
        sums = torch.zeros(k if update else 0, dim, device=x.device)
        for a, b in _blocks(stop - start, chunk):
            values = best[: b - a]
            # One fused pass gives the best score and its index (the first one on ties).
            torch.max(scores_of(rows[a:b]), dim=1, out=(values, out[a:b]))
            score_sum += values.sum(dtype=torch.float64)
            if update:  # now, while the block's rows are still in cache
                sums.index_add_(0, out[a:b], rows[a:b])
        counts = torch.bincount(out, minlength=k) if update else out.new_empty(0)
        return score_sum, sums, counts

    return rows_pass


def _new_centroids(sums: Tensor, counts: Tensor, centroids: Tensor) -> Tensor:
    """Means ``(K, D)`` of the assigned points; empty clusters keep their old centroid."""
    empty = counts == 0
    if bool(empty.any()):
        sums[empty] = centroids[empty]  # divided by a count of 1 below: unchanged
    return sums.div_(counts.clamp_min(1).to(sums.dtype).unsqueeze(1))


def _repair_empty_clusters(
    centroids: Tensor, counts: Tensor, data_rms: float, generator: torch.Generator
) -> int:
    """Refill each empty cluster by splitting the currently largest one (in place).

    The largest cluster's centroid ``c`` becomes ``c - delta`` and the empty one ``c + delta``, with
    ``delta`` a random sign vector scaled to ``SPLIT_EPS`` of the data's RMS: the two centroids'
    bisector passes through ``c``, so its points split in two. Counts, centroids and the generator
    are the same on every rank, so every rank makes the same choices.
    """
    sizes = counts.tolist()
    empty = [j for j, size in enumerate(sizes) if size == 0]
    for j in empty:
        largest = max(range(len(sizes)), key=lambda i: (sizes[i], -i))
        signs = torch.randint(0, 2, (centroids.shape[1],), generator=generator) * 2 - 1
        delta = signs.to(centroids) * (SPLIT_EPS * max(data_rms, 1e-12))
        centroids[j] = centroids[largest] + delta
        centroids[largest] -= delta
        sizes[j] = sizes[largest] // 2
        sizes[largest] -= sizes[j]
    return len(empty)
