"""Every random stream of xdc, derived in one place from a named purpose.

A stream is ``(seed, purpose, *index)``: the seed of a run or command (``train.seed``,
``--seed``), the name of what the randomness is for, and that purpose's fixed number of integer
indices (an iteration, an epoch, a view …). Its entropy is ``[seed, code, len(index), *index]``,
with a distinct code per purpose, fed to numpy's ``SeedSequence``: two purposes, or two indices of
one purpose, never share a stream, and a stream never depends on what was drawn before, so a
resumed run draws exactly what an uninterrupted one would.

Codes are part of the results: changing one changes every run that uses it. Add new purposes
with new codes; never reuse one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

#: purpose → (code, names of its indices)
PURPOSES: dict[str, tuple[int, tuple[str, ...]]] = {
    # pretraining (train.seed)
    "init": (1, ()),  # encoder weights when a model is built
    "heads": (2, ("iteration",)),  # re-initialised classifier heads
    "kmeans": (3, ("iteration", "clustering")),  # k-means of one clustering
    "heldout": (4, ("iteration",)),  # the held-out videos of an iteration
    "calibration": (5, ("iteration",)),  # BatchNorm-calibration clips before extraction
    "views": (6, ("iteration", "view")),  # augmented clips averaged for clustering
    "sample": (7, ("iteration", "epoch")),  # the clips (and their augmentation) of an epoch
    "mixup": (21, ("iteration", "epoch", "step", "rank")),  # a training step's mixup
    # inside k-means (its ``seed`` argument)
    "kmeans_init": (8, ()),  # initial centroids
    "kmeans_split": (9, ()),  # splitting of large clusters to fill empty ones
    "kmeans_sample": (20, ()),  # the points fitted on when N > K·points_per_centroid
    # evaluation (--seed; a run's train.seed for its report)
    "random_init": (10, ()),  # weights of a random-init baseline encoder
    "eval_calibration": (11, ()),  # BatchNorm-calibration clips of frozen-feature protocols
    "finetune_head": (12, ()),  # the new classifier of finetuning
    "finetune_sample": (13, ("epoch",)),  # the clips of a finetuning epoch
    "finetune_calibration": (14, ()),  # BatchNorm-calibration clips before the finetuning test
    "report_calibration": (15, ()),  # BatchNorm-calibration clips of the report's features
    "report_members": (16, ()),  # the members of a cluster shown in the report
    "report_sample": (17, ()),  # the videos of the report's trained-vs-random probe
    "chance_nmi": (18, ()),  # permutations of the chance level of NMI
    "probe_folds": (19, ()),  # the inner cross-validation folds of the linear probes
}


def entropy(seed: int, purpose: str, *index: int) -> list[int]:
    """The entropy of stream ``(seed, purpose, *index)``; checks the purpose and its indices."""
    if purpose not in PURPOSES:
        raise KeyError(f"unknown random stream purpose {purpose!r}; known: {sorted(PURPOSES)}")
    code, names = PURPOSES[purpose]
    if len(index) != len(names):
        raise TypeError(f"stream {purpose!r} takes indices {names}, got {index}")
    values = [int(seed), code, len(index), *(int(i) for i in index)]
    if any(v < 0 for v in values):
        raise ValueError(f"seeds and stream indices must be non-negative, got {values}")
    return values


def rng(seed: int, purpose: str, *index: int) -> np.random.Generator:
    """A numpy generator of stream ``(seed, purpose, *index)``."""
    return np.random.default_rng(np.random.SeedSequence(entropy(seed, purpose, *index)))


def int_seed(seed: int, purpose: str, *index: int, bits: int = 63) -> int:
    """A ``bits``-bit integer seed of stream ``(seed, purpose, *index)``, for an API that takes an
    int (torch: 63 bits; scikit-learn's ``random_state``: 32)."""
    state = np.random.SeedSequence(entropy(seed, purpose, *index)).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(64 - bits))


def torch_generator(seed: int, purpose: str, *index: int) -> torch.Generator:
    """A CPU torch generator of stream ``(seed, purpose, *index)``."""
    return torch.Generator().manual_seed(int_seed(seed, purpose, *index))


@contextlib.contextmanager
def torch_global(seed: int, purpose: str, *index: int) -> Iterator[None]:
    """Run a block under torch's global CPU generator seeded from a stream, then restore it:
    for code that draws from the global generator (a module's ``reset_parameters``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int_seed(seed, purpose, *index))
        yield
