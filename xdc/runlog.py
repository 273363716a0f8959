"""Metrics of a run: JSON lines in ``RUN/metrics.jsonl`` and, when installed, TensorBoard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from xdc import atomic

METRICS_NAME = "metrics.jsonl"


class RunLog:
    """Appends one JSON object per event; numbers also go to TensorBoard when it is installed.

    Only the main process of a distributed run should create one (``enabled=False`` elsewhere).
    ``seq`` counts the records written; a checkpoint stores it, and ``truncate(seq)`` on resume drops
    the records of work that is about to be redone, so the log always matches the weights.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self.enabled = enabled
        self._writer: Any = None
        self.seq = len(read_metrics(run_dir)) if enabled else 0
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # TensorBoard is optional
                self._writer = None

    def write(self, event: str, step: int | None = None, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **_jsonable(values)}
        if step is not None:
            record["step"] = step
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        self.seq += 1
        if self._writer is not None and step is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{event}/{key}", value, step)

    def truncate(self, seq: int) -> None:
        """Keep only the first ``seq`` records (those covered by the checkpoint being resumed)."""
        if not self.enabled or not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as fh:
            lines = [line for line in fh if line.strip()]
        if len(lines) > seq:
            atomic.write_text(self.path, "".join(lines[:seq]))
        self.seq = min(seq, len(lines))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(run_dir: str | Path, event: str | None = None) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl`` (of one event type when given)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                record = json.loads(line)
                if event is None or record.get("event") == event:
                    records.append(record)
    return records


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[key] = value
    return out
