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

Feature-store memory: N x 512 features (seeded blobs, 256 rows a batch) extracted by
``xdc.features.extract_to_store`` into float16 memmaps and clustered (K = ``--k``, xdc's defaults),
against the same extracted by ``extract_features`` as float32 tensors in RAM and clustered alike;
each in a child process whose peak RSS is reported.

    .venv/bin/python benchmarks/kmeans.py            # N = 10k, 100k in memory; 1M on disk (~2 min)
    .venv/bin/python benchmarks/kmeans.py --quick    # N = 10k only, one run each; 20k feature store, K = 16
    .venv/bin/python benchmarks/kmeans.py --scale    # also 10M on disk (10 GB file; ~15 min)
    .venv/bin/python benchmarks/kmeans.py --json rows.jsonl   # also append the rows as JSON lines

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
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jsonrows import append_rows, make_row  # noqa: E402

from xdc import seeds  # noqa: E402
from xdc.clustering import POINTS_PER_CENTROID, kmeans  # noqa: E402
from xdc.features import FeatureStore, extract_features, extract_to_store  # noqa: E402

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
DISK_DIM, DISK_K, DISK_BLOBS = 512, 1024, 1024
WRITE_ROWS = 1 << 16  # rows generated and written at a time
SKLEARN_DISK_ROWS = 1_000_000
STORE_BATCH = 256  # rows per extraction batch in the feature-store rows
SCALE_SECONDS, SCALE_RSS_GIB = 900.0, 6.0  # the targets at N = 10M (issue 10)


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


def blob_chunks(n: int, dim: int, seed: int = 0, rows: int = WRITE_ROWS) -> Iterator[np.ndarray]:
    """``(n, dim)`` float32 points around ``DISK_BLOBS`` Gaussian centres (spread 0.3 of the
    noise, as in :func:`make_data`), generated ``rows`` at a time (memory stays small)."""
    centres = 0.3 * np.random.default_rng(seed).standard_normal((DISK_BLOBS, dim), np.float32)
    for chunk, start in enumerate(range(0, n, rows)):
        size = min(rows, n - start)
        rng = np.random.default_rng([seed, chunk])
        points = centres[rng.integers(0, DISK_BLOBS, size)]
        points += rng.standard_normal((size, dim), np.float32)
        yield points


def write_blobs(path: Path, n: int, dim: int, seed: int = 0) -> None:
    """:func:`blob_chunks` written to ``path`` as raw float16 rows."""
    with path.open("wb") as fh:
        for points in blob_chunks(n, dim, seed):
            fh.write(points.astype(np.float16).tobytes())


def feature_batches(n: int, dim: int) -> Iterator[dict]:
    """Collated batches as the extraction loop sees them, whose ``video`` entry is already the
    ``(B, dim)`` feature (the encoder is ``nn.Identity``): no model time, only the features."""
    start = 0
    for points in blob_chunks(n, dim, rows=STORE_BATCH):
        size = len(points)
        index = torch.arange(start, start + size)
        yield {"index": index, "label": torch.zeros(size, dtype=torch.int64),
               "video": torch.from_numpy(points)}  # fmt: skip
        start += size


def store_child(folder: Path, n: int, method: str, k: int, iters: int) -> None:
    """Extract ``n`` features through the feature store (``method`` "store") or into RAM ("ram"),
    cluster them with xdc's defaults; print one JSON line with the peak RSS."""
    encoders = {"video": nn.Identity()}
    rss_at_start = max_rss_gib()
    start = time.perf_counter()
    batches = feature_batches(n, DISK_DIM)
    if method == "store":
        store = FeatureStore(folder, rank=0)
        features = extract_to_store(encoders, batches, store, progress=False).features["video"]
    else:
        features = extract_features(encoders, batches, progress=False).features["video"]
    inertia = kmeans(features, k, n_iter=iters, seed=0).inertia
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_gib": max_rss_gib(), "inertia": inertia,
                      "rss_at_start_gib": rss_at_start}))  # fmt: skip


def benchmark_store(n: int, args: argparse.Namespace) -> list[dict]:
    """The feature-store rows: extraction + k-means through float16 memmaps vs float32 in RAM,
    each in its own child process (peak RSS is per process). Returns the JSON rows."""
    results = {}
    k = 16 if args.quick else args.k  # N > K x 256 points per centroid: the sampled, streamed path
    with tempfile.TemporaryDirectory(prefix="xdc-store-", dir=args.tmp) as tmp:
        for method in ("store", "ram"):
            command = [sys.executable, __file__, "--store-child", tmp, "--store-rows", str(n)]
            command += ["--store-method", method, "--k", str(k), "--iters", str(args.iters)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[method] = json.loads(out.strip().splitlines()[-1])
    print(
        f"\nfeature store: extract N={n} x {DISK_DIM} features ({STORE_BATCH} a batch) and "
        f"cluster them, K={k}, {args.iters} iterations, one child process each"
    )
    print(f"{'features':<44} {'seconds':>8} {'peak RSS':>9} {'at start':>9} {'inertia':>14}")
    names = {"store": "float16 feature store (memmap)", "ram": "float32 in RAM (extract_features)"}
    for method, name in names.items():
        r = results[method]
        print(
            f"{name:<44} {r['seconds']:>8.1f} {r['rss_gib']:>7.2f}Gi "
            f"{r['rss_at_start_gib']:>7.2f}Gi {r['inertia']:>14.6g}"
        )
    settings = {"n": n, "dim": DISK_DIM, "k": k, "iters": args.iters, "batch": STORE_BATCH}
    return [
        make_row("kmeans", f"peak RSS, extract + k-means of {n:,}×{DISK_DIM} via the fp16 store",
                 results["store"]["rss_gib"], "GiB", "same, float32 features in RAM",
                 results["ram"]["rss_gib"], settings=settings)
    ]  # fmt: skip


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


def benchmark_disk(n: int, iters: int, folder: str | None) -> list[dict]:
    """The on-disk row: write the file, then xdc and scikit-learn each in a child process; returns
    the JSON rows."""
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
    return disk_json(n, iters, results, gemm_seconds)


def disk_json(n: int, iters: int, results: dict[str, dict], gemm_seconds: float) -> list[dict]:
    ours, theirs = results["xdc"], results.get("sklearn")
    scale = n >= 10_000_000
    settings = {"n": n, "dim": DISK_DIM, "k": DISK_K, "iters": iters,
                "sample": min(n, DISK_K * POINTS_PER_CENTROID)}  # fmt: skip
    what = f"xdc k-means, {n:,}×{DISK_DIM} fp16 memmap, K={DISK_K}"
    rows = [
        make_row("kmeans", what, ours["seconds"], "s", "bare float32 GEMM of the same FLOPs",
                 gemm_seconds, settings=settings,
                 target=f"≤ {SCALE_SECONDS:g} s" if scale else None,
                 meets=ours["seconds"] <= SCALE_SECONDS if scale else None),
        make_row("kmeans", f"peak RSS, {what}", ours["rss_gib"], "GiB",
                 "scikit-learn, same sample + chunked predict" if theirs else None,
                 theirs["rss_gib"] if theirs else None, settings=settings,
                 target=f"≤ {SCALE_RSS_GIB:g} GiB" if scale else None,
                 meets=ours["rss_gib"] <= SCALE_RSS_GIB if scale else None),
    ]  # fmt: skip
    if theirs:
        rows.insert(1, make_row("kmeans", what, ours["seconds"], "s",
                                "scikit-learn, same sample + chunked predict",
                                theirs["seconds"], settings=settings))  # fmt: skip
    return rows


def size_json(n: int, rows: list[tuple[str, float, float]], args: argparse.Namespace) -> list[dict]:
    """One JSON row per method of ``rows`` but the reference (scikit-learn, ``rows[1]``)."""
    settings = {"n": n, "dim": args.dim, "k": args.k, "iters": args.iters, "repeats": args.repeats}
    reference = f"scikit-learn, same init and {args.iters} iterations"
    return [
        make_row("kmeans", f"{name}, N={n:,} in RAM, K={args.k}", seconds, "s", reference,
                 rows[1][1], settings=settings, at_most=1.0 if name == "xdc cpu" else None)
        for i, (name, seconds, _) in enumerate(rows)
        if i != 1
    ]  # fmt: skip


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
    parser.add_argument(
        "--store-rows",
        type=int,
        help="N of the feature-store memory row (default 1M, 20k with --quick; 0: skip it)",
    )
    parser.add_argument("--json", help="append the rows to this JSON-lines file")
    parser.add_argument("--sklearn-only", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--disk-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--disk-method", default="xdc", help=argparse.SUPPRESS)
    parser.add_argument("--store-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--store-method", default="store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.disk_child:
        disk_child(Path(args.disk_child), args.disk_rows, args.disk_method, args.iters)
        return
    if args.store_child:
        store_child(Path(args.store_child), args.store_rows, args.store_method, args.k, args.iters)
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
        rows = benchmark_size(n, args)
        print_table(n, rows)
        append_rows(args.json, size_json(n, rows, args))
    disk_rows = 10_000_000 if args.scale else 0 if args.quick else args.disk_rows
    if disk_rows:
        append_rows(args.json, benchmark_disk(disk_rows, args.iters, args.tmp))
    store_rows = args.store_rows
    if store_rows is None:
        store_rows = 20_000 if args.quick else 1_000_000
    if store_rows:
        append_rows(args.json, benchmark_store(store_rows, args))


if __name__ == "__main__":
    main()
