"""Every benchmark in one table: each measurement beside its reference from the same run.

    make bench                                      # = .venv/bin/python benchmarks/table.py
    .venv/bin/python benchmarks/table.py --quick    # the smallest settings of each: a smoke run
    .venv/bin/python benchmarks/table.py --only kmeans --json rows.jsonl   # one, rows kept
    .venv/bin/python benchmarks/table.py --from rows.jsonl                 # the table of a past run

Runs benchmarks/data.py, kmeans.py, train.py and extract.py (and gpu.py when torch sees a GPU)
one after another, each in its own process with ``--json`` into one JSON-lines file (schema:
``benchmarks/jsonrows.py``), with the settings ``make bench-data``, ``bench-kmeans``,
``bench-train`` and ``bench-extract`` use (``--quick``: each script's ``--quick``, and 5 k-means
iterations). The scripts' own reports go to stderr; stdout gets one markdown table:

    benchmark | measured | reference (same run) | ratio | target | met

ratio = measured / reference. A script that fails is named on stderr after the table of the rows
the others measured, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from jsonrows import read_rows

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("data", "kmeans", "train", "extract", "gpu")
QUICK_ARGS = {"data": ["--quick"], "kmeans": ["--quick", "--iters", "5"], "train": ["--quick"],
              "extract": ["--quick"], "gpu": ["--quick"]}  # fmt: skip
HEADER = ("benchmark", "measured", "reference (same run)", "ratio", "target", "met")


def number(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table of ``rows``: a header, a separator and one line per row."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        reference = r["reference"] or ""
        if r["reference_value"] is not None:
            reference += f": {number(r['reference_value'])} {r['unit']}"
        met = {True: "yes", False: "**no**", None: ""}[r["meets"]]
        cells = (
            f"{r['benchmark']}: {r['row']}",
            f"{number(r['value'])} {r['unit']}",
            reference,
            "" if r["ratio"] is None else f"{r['ratio']:.2f}×",
            r["target"] or "",
            met,
        )
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return lines


def default_benchmarks() -> list[str]:
    import torch

    return ["data", "kmeans", "train", "extract", *(["gpu"] if torch.cuda.is_available() else [])]


def run_benchmarks(names: list[str], args: argparse.Namespace, json_path: Path) -> list[str]:
    """Run each benchmark script with ``--json json_path``; returns the names of those that failed."""
    failed = []
    for name in names:
        command = [sys.executable, str(HERE / f"{name}.py"), "--json", str(json_path)]
        command += QUICK_ARGS[name] if args.quick else []
        if args.data and name in ("data", "train", "extract"):
            command += ["--data", args.data]
        if args.cache and name in ("data", "kmeans"):
            command += ["--cache" if name == "data" else "--tmp", args.cache]
        print(f"== {' '.join(command[1:])}", file=sys.stderr, flush=True)
        started, cpu = time.perf_counter(), cpu_seconds_of_children()
        done = subprocess.run(command, stdout=sys.stderr, check=False)
        wall, cpu = time.perf_counter() - started, cpu_seconds_of_children() - cpu
        print(f"== {name}: {wall:.0f} s, {cpu:.0f} s of CPU", file=sys.stderr, flush=True)
        if done.returncode != 0:
            failed.append(f"benchmarks/{name}.py (exit status {done.returncode})")
    return failed


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def caption(quick: bool) -> str:
    try:
        torch = f"torch {metadata.version('torch')}"
    except metadata.PackageNotFoundError:
        torch = "torch not installed"
    mode = " --quick (smoke-run settings: not measurements)" if quick else ""
    return (
        f"benchmarks/table.py{mode}, {time.strftime('%Y-%m-%d')}: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {torch}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the smallest settings of each")
    parser.add_argument(
        "--only", help=f"comma-separated, of {', '.join(BENCHMARKS)} (default: all; gpu on a GPU)"
    )
    parser.add_argument("--json", help="keep the rows in this JSON-lines file (appended)")
    parser.add_argument("--from", dest="source", help="print the table of this rows file; no runs")
    parser.add_argument("--data", help="demo data folder for data.py, train.py and extract.py")
    parser.add_argument("--cache", help="folder for data.py's sources and kmeans.py's files")
    args = parser.parse_args()
    if args.source:
        rows = read_rows(args.source)
        print("\n".join(table_lines(rows)))
        return
    names = args.only.split(",") if args.only else default_benchmarks()
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; use {BENCHMARKS}")
    with tempfile.TemporaryDirectory(prefix="xdc-bench-") as tmp:
        json_path = Path(args.json) if args.json else Path(tmp) / "rows.jsonl"
        first = len(read_rows(json_path)) if json_path.is_file() else 0
        failed = run_benchmarks(names, args, json_path)
        rows = read_rows(json_path)[first:] if json_path.is_file() else []
    print("\n".join(table_lines(rows)))
    print(f"\n{caption(args.quick)}")
    if failed:
        print(f"failed: {'; '.join(failed)}; their output is above", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
