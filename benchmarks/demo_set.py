"""The demo videos the data, train and extract benchmarks measure on, made once under ``.cache/``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xdc.data.demo import generate_demo_data  # noqa: E402

T = TypeVar("T")
DATA_HELP = "demo data folder (default: .cache/bench-demo, or bench-demo-quick)"


def demo_parser(description: str | None) -> argparse.ArgumentParser:
    """The options every benchmark on the demo set takes: ``--data``, ``--quick``, ``--json``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--quick", action="store_true", help="smallest settings: a smoke run")
    parser.add_argument("--json", help="append the rows to this JSON-lines file")
    return parser


def demo_manifest(data: str | None, quick: bool) -> Path:
    """The manifest of the demo set in ``data`` (default ``.cache/bench-demo``, or
    ``bench-demo-quick`` for a smoke run), generated there first when it is not: 10 classes of
    40 two-second videos (quick: 4 of 1.2 s)."""
    folder = Path(data or ROOT / ".cache" / ("bench-demo-quick" if quick else "bench-demo"))
    if not (folder / "manifest.csv").is_file():
        print(f"generating demo data in {folder} …", flush=True)
        per_class, duration = (4, 1.2) if quick else (40, 2.0)
        generate_demo_data(
            folder, classes=10, per_class=per_class, duration_sec=duration, seed=0, progress=False
        )
    return folder / "manifest.csv"


def median_by(items: list[T], ratio: Callable[[T], float]) -> T:
    """The item of median ``ratio(item)`` (the lower of the two middle ones)."""
    ranked = sorted(items, key=ratio)
    return ranked[(len(ranked) - 1) // 2]
