"""The rows every benchmark writes with ``--json PATH``: one JSON object a line, appended.

Each row is one measurement beside the reference it is compared with, taken in the same run:

    benchmark        which script ("data", "kmeans", "train", "gpu")
    row              what is measured
    value, unit      the measurement
    reference        what it is compared with (null: nothing)
    reference_value  the reference's measurement, in the same unit (null: none in this run)
    ratio            value / reference_value (null when there is no reference value)
    target           the goal, as text (null: none)
    meets            whether the goal is met (null: no goal)
    settings         the parameters of the measurement (an object)

``benchmarks/table.py`` runs the benchmarks and prints these rows as one table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FIELDS = (
    "benchmark",
    "row",
    "value",
    "unit",
    "reference",
    "reference_value",
    "ratio",
    "target",
    "meets",
    "settings",
)


def make_row(
    benchmark: str,
    row: str,
    value: float,
    unit: str,
    reference: str | None = None,
    reference_value: float | None = None,
    *,
    settings: dict[str, Any],
    at_least: float | None = None,
    at_most: float | None = None,
    target: str | None = None,
    meets: bool | None = None,
) -> dict[str, Any]:
    """One row. ``at_least`` / ``at_most``: a goal on the ratio (``target`` and ``meets`` are then
    derived); otherwise ``target`` and ``meets`` are given as they are (a goal on the value)."""
    ratio = value / reference_value if reference_value else None
    if at_least is not None:
        target, meets = f"≥ {at_least:g}×", None if ratio is None else ratio >= at_least
    elif at_most is not None:
        target, meets = f"≤ {at_most:g}×", None if ratio is None else ratio <= at_most
    return {
        "benchmark": benchmark,
        "row": row,
        "value": float(value),
        "unit": unit,
        "reference": reference,
        "reference_value": None if reference_value is None else float(reference_value),
        "ratio": ratio,
        "target": target,
        "meets": meets,
        "settings": settings,
    }


def check_row(row: dict[str, Any]) -> None:
    """Raise ValueError naming the field of a row that does not follow the schema."""
    if tuple(row) != FIELDS:
        raise ValueError(f"benchmark row: fields {tuple(row)}, expected {FIELDS}")
    for name in ("benchmark", "row", "unit"):
        if not isinstance(row[name], str) or not row[name]:
            raise ValueError(f"benchmark row {row['row']!r}: {name} must be a non-empty string")
    for name in ("value", "reference_value", "ratio"):
        number = row[name]
        if number is None and name != "value":
            continue
        if not isinstance(number, int | float) or not math.isfinite(number):
            raise ValueError(f"benchmark row {row['row']!r}: {name} is {number!r}, not a number")
    for name in ("reference", "target"):
        if row[name] is not None and not isinstance(row[name], str):
            raise ValueError(f"benchmark row {row['row']!r}: {name} must be a string or null")
    if row["meets"] is not None and not isinstance(row["meets"], bool):
        raise ValueError(f"benchmark row {row['row']!r}: meets must be true, false or null")
    if not isinstance(row["settings"], dict):
        raise ValueError(f"benchmark row {row['row']!r}: settings must be an object")


def append_rows(path: str | Path | None, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the JSON-lines file ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    for row in rows:
        check_row(row)
    with Path(path).open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file, each checked against the schema."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            check_row(row)
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: {error}") from None
        rows.append(row)
    return rows
