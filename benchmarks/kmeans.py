"""k-means side by side: xdc (CPU, and GPU when present), scikit-learn (Lloyd) and faiss if installed.

In memory: same data (seeded Gaussian blobs, float32), same initial centroids and the same number
of Lloyd iterations for every method, on every point (``points_per_centroid=None``); seconds are
the best of ``--repeats`` runs. scikit-learn runs with ``tol=0`` so it does every iteration
(checked: its ``n_iter_`` is printed when it differs).

On disk: N x 512 float16 features in a memory-mapped file (seeded blobs written chunk by chunk to a
temporary folder), K = 1024, clustered by xdc with its defaults (fit on 256 points per centroid,
then every row assigned in streamed chunks), in a child process whose peak RSS is reported. Beside
it: a bare float32 GEMM of the same FLOPs timed in the same child, and scikit-learn fitting the same
sample (random init, the cheapest for it) then predicting every row a chunk at a time (up to 1M).

    .venv/bin/python benchmarks/kmeans.py            # N = 10k, 100k in memory; 1M on disk (~2 min)
    .venv/bin/python benchmarks/kmeans.py --quick    # N = 10k only, one run each; nothing on disk
    .venv/bin/python benchmarks/kmeans.py --scale    # also 10M on disk (10 GB file; ~15 min)

On some processors OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set in the environment and slow the
OpenBLAS behind numpy/scikit-learn. The fair comparison is the environment the user has; when they
are set, scikit-learn is also timed in a child process with both unset, and shown as a second row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xdc import seeds  # noqa: E402
from xdc.clustering import POINTS_PER_CENTROID, kmeans  # noqa: E402

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
DISK_DIM, DISK_K, DISK_BLOBS = 512, 1024, 1024
WRITE_ROWS = 1 << 16  # rows generated and written at a time
SKLEARN_DISK_ROWS = 1_000_000


def make_data(n: int, dim: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim)`` float32 points around ``k`` Gaussian blob centres, and ``(k, dim)`` initial
    centroids: ``k`` distinct points of the data.

    The blobs overlap (centre spread 0.3 of the noise), as deep features do, so that Lloyd is still
    moving points after 20 iterations and scikit-learn's convergence check does not stop it early.
    """
    rng = np.random.default_rng(seed)
    centres = 0.3 * rng.standard_normal((k, dim), dtype=np.float32)
    points = centres[rng.integers(0, k, n)] + rng.standard_normal((n, dim), dtype=np.float32)
    init = points[rng.choice(n, k, replace=False)].copy()
    return points, init


def run_sklearn(x: np.ndarray, init: np.ndarray, iters: int) -> float:
    model = KMeans(len(init), init=init, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd")
    model.fit(x)
    if model.n_iter_ != iters:
        print(f"  note: scikit-learn stopped after {model.n_iter_} of {iters} iterations")
    return float(model.inertia_)


def run_faiss(x: np.ndarray, init: np.ndarray, iters: int) -> float:
    import faiss

    k, dim = init.shape
    # Use every point (faiss subsamples to 256 per centroid by default) and the same start.
    model = faiss.Kmeans(dim, k, niter=iters, max_points_per_centroid=len(x) + 1, seed=0)
    model.train(x, init_centroids=init)
    distances, _ = model.index.search(x, 1)
    return float(distances.astype(np.float64).sum())


def run_ours(x: torch.Tensor, init: torch.Tensor, iters: int) -> float:
    result = kmeans(x, len(init), n_iter=iters, init=init, points_per_centroid=None)
    if x.is_cuda:
        torch.cuda.synchronize()
    return result.inertia


def sklearn_without_openblas_vars(n: int, args: argparse.Namespace) -> dict[str, float | str]:
    """Time scikit-learn in a child process whose environment lacks OPENBLAS_CORETYPE/L2_SIZE."""
    env = {key: value for key, value in os.environ.items() if key not in OPENBLAS_VARS}
    command = [sys.executable, __file__, "--sklearn-only", str(n), "--dim", str(args.dim)]
    command += ["--k", str(args.k), "--iters", str(args.iters), "--repeats", str(args.repeats)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def blas_description() -> str:
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return ", ".join(
        f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})" for i in blas
    )


def benchmark_size(n: int, args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """Rows ``(method, best seconds, inertia)`` for one data size.

    The methods take turns (one run of each per round), so that a change in the machine's load
    during the benchmark affects all of them alike.
    """
    points, init = make_data(n, args.dim, args.k)
    x, init_t = torch.from_numpy(points), torch.from_numpy(init)
    methods: list[tuple[str, Callable[[], float]]] = [
        ("xdc cpu", lambda: run_ours(x, init_t, args.iters)),
        ("scikit-learn", lambda: run_sklearn(points, init, args.iters)),
    ]
    try:
        import faiss  # noqa: F401
    except ImportError:
        print(f"  N={n}: faiss not installed, skipped (pip install faiss-cpu to compare)")
    else:
        methods.append(("faiss", lambda: run_faiss(points, init, args.iters)))
    if torch.cuda.is_available():
        x_gpu, init_gpu = x.cuda(), init_t.cuda()
        run_ours(x_gpu, init_gpu, 1)  # warm-up: CUDA context and kernels
        name = f"xdc {torch.cuda.get_device_name()}"
        methods.append((name, lambda: run_ours(x_gpu, init_gpu, args.iters)))
    best = {name: (float("inf"), float("nan")) for name, _ in methods}
    for _ in range(args.repeats):
        for name, run in methods:
            start = time.perf_counter()
            inertia = run()
            best[name] = (min(best[name][0], time.perf_counter() - start), inertia)
    rows = [(name, *best[name]) for name, _ in methods]
    if not args.quick and any(var in os.environ for var in OPENBLAS_VARS):
        child = sklearn_without_openblas_vars(n, args)
        print(f"  N={n}: 'OPENBLAS_* unset' row: numpy BLAS in that process: {child['blas']}")
        rows.insert(
            2, ("sklearn, OPENBLAS_* unset", float(child["seconds"]), float(child["inertia"]))
        )
    return rows


def print_table(n: int, rows: list[tuple[str, float, float]]) -> None:
    reference_time, reference_inertia = rows[1][1], rows[1][2]  # scikit-learn in this environment
    print(
        f"{'N':>7} {'method':<32} {'seconds':>8} {'x sklearn':>9} {'inertia':>14} {'rel. diff':>10}"
    )
    for name, seconds, inertia in rows:
        ratio = seconds / reference_time
        diff = (inertia - reference_inertia) / reference_inertia
        print(f"{n:>7} {name:<32} {seconds:>8.3f} {ratio:>9.2f} {inertia:>14.6g} {diff:>+10.2e}")


def write_blobs(path: Path, n: int, dim: int, seed: int = 0) -> None:
    """``(n, dim)`` float16 rows around ``DISK_BLOBS`` Gaussian centres (spread 0.3 of the noise, as
    in :func:`make_data`), generated and written ``WRITE_ROWS`` at a time (memory stays small)."""
    centres = 0.3 * np.random.default_rng(seed).standard_normal((DISK_BLOBS, dim), np.float32)
    with path.open("wb") as fh:
        for chunk, start in enumerate(range(0, n, WRITE_ROWS)):
            rows = min(WRITE_ROWS, n - start)
            rng = np.random.default_rng([seed, chunk])
            points = centres[rng.integers(0, DISK_BLOBS, rows)]
            points += rng.standard_normal((rows, dim), np.float32)
            fh.write(points.astype(np.float16).tobytes())


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def gemm_flops_per_second(dim: int, k: int, seconds: float = 3.0) -> float:
    """Best rate of a float32 (65536, dim) x (dim, k) product on all threads, as ``torch.mm`` or
    as the 1x1 convolution that xdc's k-means uses on CPU (oneDNN), whichever is faster."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(WRITE_ROWS, dim, generator=g), torch.randn(dim, k, generator=g)
    image = a.view(16, 1, WRITE_ROWS // 16, dim).permute(0, 3, 1, 2)
    kernel = b.t().contiguous().reshape(k, dim, 1, 1)
    products = [lambda: torch.mm(a, b), lambda: F.conv2d(image, kernel)]
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for product in products:
            start = time.perf_counter()
            product()
            best = max(best, 2.0 * WRITE_ROWS * dim * k / (time.perf_counter() - start))
    return best


def disk_child(path: Path, n: int, method: str, iters: int) -> None:
    """Cluster the memmap at ``path`` with ``method`` (xdc or sklearn); print one JSON line."""
    x = np.memmap(path, dtype=np.float16, mode="r", shape=(n, DISK_DIM))
    sample = min(n, DISK_K * POINTS_PER_CENTROID)
    # The FLOPs of the distance GEMMs: every iteration and the final pass on the sample (all of
    # it when N <= sample), plus the assignment of every row when the fit used a sample.
    flops = 2.0 * DISK_DIM * DISK_K * (sample * (iters + 1) + (n if n > sample else 0))
    start = time.perf_counter()
    if method == "xdc":
        inertia = kmeans(x, DISK_K, n_iter=iters, seed=0).inertia
    else:
        chosen = np.sort(seeds.rng(0, "kmeans_sample").choice(n, sample, replace=False))
        fit_on = np.asarray(x[chosen], dtype=np.float32)
        model = KMeans(DISK_K, init="random", n_init=1, max_iter=iters, tol=0.0, random_state=0)
        model.fit(fit_on)
        del fit_on
        inertia = 0.0
        for a in range(0, n, WRITE_ROWS):
            block = np.asarray(x[a : a + WRITE_ROWS], dtype=np.float32)
            inertia -= float(model.score(block))  # score = -inertia of the block
    seconds = time.perf_counter() - start
    row = {"seconds": seconds, "rss_gib": max_rss_gib(), "inertia": inertia, "flops": flops}
    if method == "xdc":
        row["gemm_flops_per_second"] = gemm_flops_per_second(DISK_DIM, DISK_K)
    print(json.dumps(row))


def benchmark_disk(n: int, iters: int, folder: str | None) -> None:
    """The on-disk row: write the file, then xdc and scikit-learn each in a child process."""
    with tempfile.TemporaryDirectory(prefix="xdc-kmeans-", dir=folder) as tmp:
        path = Path(tmp) / "features.f16"
        start = time.perf_counter()
        write_blobs(path, n, DISK_DIM)
        size = path.stat().st_size / 2**30
        print(
            f"\non disk: N={n} D={DISK_DIM} float16 memmap ({size:.1f} GiB, written in "
            f"{time.perf_counter() - start:.0f} s), K={DISK_K}, {iters} iterations, "
            f"fit on {min(n, DISK_K * POINTS_PER_CENTROID)} points"
        )
        results = {}
        # scikit-learn's side is timed up to SKLEARN_DISK_ROWS (its predict pass alone would take
        # as long as all of xdc at 10M here).
        for method in ("xdc", "sklearn") if n <= SKLEARN_DISK_ROWS else ("xdc",):
            command = [sys.executable, __file__, "--disk-child", str(path), "--disk-rows", str(n)]
            command += ["--disk-method", method, "--iters", str(iters)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[method] = json.loads(out.strip().splitlines()[-1])
    ours = results["xdc"]
    gemm_seconds = ours["flops"] / ours["gemm_flops_per_second"]
    print(f"{'method':<44} {'seconds':>8} {'peak RSS':>9} {'inertia':>14}")
    for name, key in (("xdc (memmap, streamed)", "xdc"), ("scikit-learn (same sample)", "sklearn")):
        if key not in results:
            print(f"{name:<44} skipped above N={SKLEARN_DISK_ROWS} (see the default 1M run)")
            continue
        r = results[key]
        print(f"{name:<44} {r['seconds']:>8.1f} {r['rss_gib']:>7.2f}Gi {r['inertia']:>14.6g}")
    print(
        f"{'bare GEMM, same FLOPs (float32)':<44} {gemm_seconds:>8.1f}"
        f"   ({ours['flops'] / 1e12:.1f} TFLOP at {ours['gemm_flops_per_second'] / 1e9:.0f} "
        f"GFLOP/s; xdc = {ours['seconds'] / gemm_seconds:.2f}x the GEMM time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated N values")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="runs per method; best is shown")
    parser.add_argument("--quick", action="store_true", help="N=10k only, one run each")
    parser.add_argument(
        "--disk-rows", type=int, default=1_000_000, help="N of the on-disk row (0: skip it)"
    )
    parser.add_argument("--scale", action="store_true", help="the on-disk row at N = 10M")
    parser.add_argument("--tmp", default=None, help="folder for the on-disk file (default: TMPDIR)")
    parser.add_argument("--sklearn-only", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--disk-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--disk-method", default="xdc", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.disk_child:
        disk_child(Path(args.disk_child), args.disk_rows, args.disk_method, args.iters)
        return
    if args.sklearn_only:
        points, init = make_data(args.sklearn_only, args.dim, args.k)
        times, inertia = [], float("nan")
        for _ in range(args.repeats):
            start = time.perf_counter()
            inertia = run_sklearn(points, init, args.iters)
            times.append(time.perf_counter() - start)
        print(json.dumps({"seconds": min(times), "inertia": inertia, "blas": blas_description()}))
        return
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.repeats = 1
    env = {var: os.environ.get(var, "unset") for var in OPENBLAS_VARS}
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), scikit-learn "
        f"{sklearn.__version__}, numpy {np.__version__}; numpy BLAS: {blas_description()}; {env}"
    )
    print(
        f"D={args.dim} K={args.k} iterations={args.iters}, same initial centroids, "
        f"best of {args.repeats}\n"
    )
    for n in sizes:
        print_table(n, benchmark_size(n, args))
    disk_rows = 10_000_000 if args.scale else 0 if args.quick else args.disk_rows
    if disk_rows:
        benchmark_disk(disk_rows, args.iters, args.tmp)


if __name__ == "__main__":
    main()
