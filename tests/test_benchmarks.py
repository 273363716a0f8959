"""`make bench` (benchmarks/table.py): every benchmark writes JSON rows of one schema, and the
table prints each row beside its reference from the same run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "table.py"
FIELDS = [
    "benchmark", "row", "value", "unit", "reference", "reference_value", "ratio", "target",
    "meets", "settings",
]  # fmt: skip


def run_table(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(TABLE), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of the markdown table in ``stdout``, as lists of cells."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert lines[0] == "| benchmark | measured | reference (same run) | ratio | target | met |"
    assert set(lines[1]) == {"|", "-"}
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


@pytest.fixture(scope="module")
def quick_run(demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """`benchmarks/table.py --quick` on the test demo videos: data, kmeans, train and extract,
    for real."""
    folder = tmp_path_factory.mktemp("bench")
    rows_path = folder / "rows.jsonl"
    done = run_table("--quick", "--data", str(demo_manifest.parent), "--cache", str(folder),
                     "--json", str(rows_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    return rows, done.stdout, rows_path


@pytest.mark.slow  # the quick run: ~50 s of CPU
def test_every_row_follows_the_schema(quick_run: tuple) -> None:
    rows, _, _ = quick_run
    assert {r["benchmark"] for r in rows} == {"data", "kmeans", "train", "extract"}
    for r in rows:
        assert list(r) == FIELDS, r
        assert isinstance(r["row"], str) and isinstance(r["unit"], str)
        assert isinstance(r["value"], float) and r["value"] > 0
        assert isinstance(r["settings"], dict) and r["settings"]
        assert r["target"] is None or isinstance(r["target"], str)
        assert r["meets"] is None or isinstance(r["meets"], bool)
        if r["reference_value"] is not None:  # measured in the same run, so always here
            assert isinstance(r["reference"], str)
            assert math.isclose(r["ratio"], r["value"] / r["reference_value"])
        assert (r["meets"] is None) == (r["target"] is None), "a target is judged when measured"


@pytest.mark.slow  # the quick run: ~50 s of CPU
def test_the_table_covers_each_comparison_of_the_issue(quick_run: tuple) -> None:
    """Loader vs bare decode, prepared vs raw, k-means vs scikit-learn, loop vs model-only,
    evaluation extraction vs encoder-only and vs the default layout, feature-store memory
    (k-means vs the GEMM limit runs on disk: not in --quick)."""
    rows, _, _ = quick_run
    pairs = {(r["row"], r["reference"]) for r in rows}
    assert ("loader, 0 workers", "bare PyAV seek + decode, same clips") in pairs
    assert ("loader, 720p sources after xdc prepare", "loader, 720p raw sources") in pairs
    assert any(row.startswith("xdc cpu") and ref.startswith("scikit-learn") for row, ref in pairs)
    assert any(row.startswith("pretraining loop") and "model-only" in ref for row, ref in pairs)
    assert (
        "features, small, trained layout",
        "encoder-only forwards, same shapes and layout",
    ) in pairs
    assert (
        "features, small, trained vs default layout",
        "the same extraction in the default layout",
    ) in pairs
    store = [r for r in rows if "fp16 store" in r["row"]]
    assert len(store) == 1 and store[0]["unit"] == "GiB"
    assert store[0]["reference"] == "same, float32 features in RAM"


@pytest.mark.slow  # the quick run: ~50 s of CPU
def test_the_table_prints_one_row_per_json_row(quick_run: tuple) -> None:
    rows, stdout, _ = quick_run
    printed = table_rows(stdout)
    assert len(printed) == len(rows)
    for cells, r in zip(printed, rows, strict=True):
        assert cells[0] == f"{r['benchmark']}: {r['row']}"
        assert cells[1].endswith(r["unit"])
        assert cells[3] == ("" if r["ratio"] is None else f"{r['ratio']:.2f}×")
        assert cells[4] == (r["target"] or "")
        assert cells[5] == {True: "yes", False: "**no**", None: ""}[r["meets"]]
    assert "--quick" in stdout, "a smoke run's table says so"


@pytest.mark.slow  # the quick run: ~50 s of CPU
def test_a_rows_file_prints_the_same_table_again(quick_run: tuple) -> None:
    rows, stdout, rows_path = quick_run
    again = run_table("--from", str(rows_path))
    assert again.returncode == 0, again.stderr
    assert table_rows(again.stdout) == table_rows(stdout)


def test_a_row_off_the_schema_is_refused_naming_its_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "rows.jsonl"
    row = dict.fromkeys(FIELDS, None) | {"benchmark": "x", "row": "y", "value": 1.0, "unit": "s"}
    row["settings"] = {}
    del row["ratio"]
    bad.write_text(json.dumps(row) + "\n")
    done = run_table("--from", str(bad))
    assert done.returncode != 0
    assert f"{bad}, line 1" in done.stderr and "expected" in done.stderr
