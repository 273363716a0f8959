"""Named random streams (xdc.seeds): distinct per purpose and index, reproducible, checked."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from xdc import seeds


def _state(seed: int, purpose: str, *index: int) -> tuple[int, ...]:
    return tuple(np.random.SeedSequence(seeds.entropy(seed, purpose, *index)).generate_state(4))


def test_no_two_purposes_or_indices_share_a_stream() -> None:
    seen: dict[tuple[int, ...], tuple] = {}
    for purpose, (_, names) in seeds.PURPOSES.items():
        for seed in (0, 1, 7):
            for index in itertools.product(range(9), repeat=len(names)):
                state = _state(seed, purpose, *index)
                assert state not in seen, f"{(seed, purpose, index)} shares {seen[state]}"
                seen[state] = (seed, purpose, index)
    # the collision this module replaced: held-out split [seed, it, 7] == epoch 7's sampling
    assert _state(0, "heldout", 2) != _state(0, "sample", 2, 7)


def test_codes_are_unique_and_streams_reproducible() -> None:
    codes = [code for code, _ in seeds.PURPOSES.values()]
    assert len(codes) == len(set(codes))
    a = seeds.rng(3, "sample", 1, 2).integers(0, 2**62, size=5)
    b = seeds.rng(3, "sample", 1, 2).integers(0, 2**62, size=5)
    assert (a == b).all()
    g1, g2 = seeds.torch_generator(3, "heads", 1), seeds.torch_generator(3, "heads", 1)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
    assert 0 <= seeds.int_seed(5, "probe_folds", bits=32) < 2**32
    assert 0 <= seeds.int_seed(5, "init") < 2**63


def test_bad_purposes_and_indices_are_refused() -> None:
    with pytest.raises(KeyError, match="unknown random stream"):
        seeds.rng(0, "nope")
    with pytest.raises(TypeError, match="iteration"):
        seeds.rng(0, "heldout")  # needs its iteration
    with pytest.raises(ValueError, match="non-negative"):
        seeds.rng(-1, "init")


def test_torch_global_restores_the_global_generator() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeds.torch_global(0, "init"):
        inside = torch.rand(3)
    with seeds.torch_global(0, "init"):
        assert torch.equal(torch.rand(3), inside)  # the same stream each time
    assert torch.equal(torch.rand(3), expected)  # and the caller's draws are unchanged
