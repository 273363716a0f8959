"""The torch range xdc declares (pyproject.toml, and the Makefile that installs torch first) is the
one its code runs on: ``torch.amp.GradScaler("cuda")`` (xdc.optim) first exists in torch 2.3."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from xdc import optim

ROOT = Path(__file__).resolve().parents[1]
NEEDED = (2, 3)


def test_declared_torch_floor_has_the_apis_xdc_uses() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (floor,) = re.findall(r'"torch\s*>=\s*([0-9.]+)"', pyproject)
    assert tuple(int(p) for p in floor.split(".")) >= NEEDED
    # The Makefile's note on what installing xdc requires says the same.
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert set(re.findall(r"torch>=([0-9.]+)", makefile)) <= {floor}
    # The API that sets the floor is the one xdc.optim calls.
    assert isinstance(optim.grad_scaler(None), torch.amp.GradScaler)
