"""Shared pytest set-up: CPU-only, few threads, deterministic seeds."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores on CI: keep each test process to a small thread pool so that DataLoader workers and
# multi-process tests do not oversubscribe the machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
