"""k-means side by side: xdc (CPU, and GPU when present), scikit-learn (Lloyd) and faiss if installed.

Same data (seeded Gaussian blobs, float32), same initial centroids and the same number of Lloyd
iterations for every method; seconds are the best of ``--repeats`` runs. scikit-learn runs with
``tol=0`` so it does every iteration (checked: its ``n_iter_`` is printed when it differs).

    .venv/bin/python benchmarks/kmeans.py            # N = 10k and 100k, D = 512, K = 256, 20 iters
    .venv/bin/python benchmarks/kmeans.py --quick    # N = 10k only, one run each

On some processors OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set in the environment and slow the
OpenBLAS behind numpy/scikit-learn. The fair comparison is the environment the user has; when they
are set, scikit-learn is also timed in a child process with both unset, and shown as a second row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xdc.clustering import kmeans  # noqa: E402

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


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
    result = kmeans(x, len(init), n_iter=iters, init=init)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated N values")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="runs per method; best is shown")
    parser.add_argument("--quick", action="store_true", help="N=10k only, one run each")
    parser.add_argument("--sklearn-only", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
