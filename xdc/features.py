"""Frozen-encoder features: BatchNorm recalibration and clip-level feature extraction.

Used by pretraining (features to cluster) and by every evaluation. Every encoder — random or
trained — goes through the same steps, because a network evaluated with BatchNorm statistics that
do not match its inputs looks far worse than it is (in a pilot: 5% vs 17.5% top-1 for a random
encoder once its statistics were recomputed on the training clips).
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from xdc import atomic
from xdc import distributed as xdist
from xdc.data.datasets import ClipKey, fixed_keys
from xdc.errors import ConfigError, DataError
from xdc.progress import track

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FeatureArray = TypeVar("FeatureArray", Tensor, np.ndarray)


@torch.no_grad()
def recalibrate_batchnorm(
    encoder: nn.Module, inputs: Iterable[Tensor], device: torch.device | str = "cpu"
) -> int:
    """Recompute every BatchNorm's running mean/var as the clip-weighted average of the per-batch
    statistics over ``inputs`` (the mean is exact; the variance is the average within-batch one).

    Leaves ``encoder`` in eval mode with its weights untouched. Returns the number of clips seen
    (0 for an encoder without BatchNorm). The old statistics are reset only once the first clip
    has arrived: when ``inputs`` holds no clip (empty, or every calibration clip failed to
    decode), a ``DataError`` is raised and the statistics are left as they were.
    """
    layers = [m for m in encoder.modules() if isinstance(m, _BN_TYPES)]
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    seen = 0
    try:
        for x in inputs:
            if x.shape[0] == 0:
                continue
            if seen == 0:
                for m in layers:
                    m.reset_running_stats()
                encoder.train()
            # Momentum b / (seen + b) makes the running statistics the average of the batch
            # statistics weighted by batch size: a short last batch counts for what it holds.
            for m in layers:
                m.momentum = x.shape[0] / (seen + x.shape[0])
            encoder(x.to(device, non_blocking=True))
            seen += x.shape[0]
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        if seen:
            encoder.eval()
    if seen == 0:
        raise DataError(
            "BatchNorm recalibration received no clip (every calibration clip failed to decode, "
            "or none was given); the encoder's statistics were left unchanged. Fix or re-index "
            "the files reported as unreadable (`xdc index` re-probes them) and run again"
        )
    return seen


def valid_inputs(batches: Iterable[Mapping[str, Any]], modality: str) -> Iterator[Tensor]:
    """The ``modality`` tensors of the valid samples of collated ``batches`` (a sample whose file
    failed to decode has ``valid`` False and zeros: it must not enter BatchNorm statistics)."""
    for batch in batches:
        x = batch[modality]
        if "valid" in batch:
            x = x[batch["valid"].bool()]
        if x.shape[0]:
            yield x


@dataclass
class ClipFeatures(Generic[FeatureArray]):
    """Features of clips: ``rows[i]`` is the manifest row of clip i, ``clip[i]`` its clip index.

    ``features`` are tensors in RAM (:func:`extract_features`) or read-only float16 memmaps
    (:func:`extract_to_store`)."""

    rows: np.ndarray
    clip: np.ndarray
    features: dict[str, FeatureArray]
    labels: np.ndarray
    failures: list[str] = field(default_factory=list)

    def video_level(self) -> tuple[np.ndarray, dict[str, Tensor], np.ndarray]:
        """Average the clips of each video: (rows, {modality: (V, D)}, labels)."""
        unique, inverse = np.unique(self.rows, return_inverse=True)
        pooled = {name: mean_per_video(self.rows, f)[1] for name, f in self.features.items()}
        labels = np.zeros(len(unique), dtype=np.int64)
        labels[inverse] = self.labels
        return unique, pooled, labels


def mean_per_video(rows: np.ndarray, values: Tensor | np.ndarray) -> tuple[np.ndarray, Tensor]:
    """Average the rows of ``values`` that belong to one video (features, class probabilities).

    Args:
        rows: (N,) the video (manifest row) of each entry, in any order.
        values: (N, D) one vector per entry.

    Returns:
        (V,) the distinct videos, sorted, and (V, D) the mean of their entries (``values``' dtype).
    """
    unique, inverse = np.unique(np.asarray(rows), return_inverse=True)
    index = torch.from_numpy(inverse.reshape(-1)).long()
    values = torch.as_tensor(values)
    total = torch.zeros(len(unique), values.shape[1], dtype=values.dtype)
    total.index_add_(0, index, values)
    counts = torch.bincount(index, minlength=len(unique)).to(values.dtype).unsqueeze(1)
    return unique, total / counts.clamp_(min=1)


@torch.no_grad()
def extract_features(
    encoders: Mapping[str, nn.Module],
    batches: Iterable[dict],
    device: torch.device | str = "cpu",
    progress: bool = True,
    total: int | None = None,
    desc: str = "features",
) -> ClipFeatures[Tensor]:
    """Run each encoder (eval mode) on its modality of every batch; drops invalid samples.

    ``batches`` are collated clip dicts (``xdc.data.datasets.collate_clips``). Returns float32 CPU
    features of shape (N, D) per modality, N = valid clips, in the order of the batches.
    """
    feats: dict[str, list[Tensor]] = {name: [] for name in encoders}
    meta = _extract(encoders, batches, device, progress, total, desc, _append_to(feats))
    features = {
        name: torch.cat(parts) if parts else torch.zeros(0, 0) for name, parts in feats.items()
    }
    return ClipFeatures(meta.rows, meta.clip, features, meta.labels, meta.failures)


@torch.no_grad()
def extract_to_store(
    encoders: Mapping[str, nn.Module],
    batches: Iterable[dict],
    store: FeatureStore,
    device: torch.device | str = "cpu",
    progress: bool = True,
    total: int | None = None,
    desc: str = "features",
) -> ClipFeatures[np.ndarray]:
    """:func:`extract_features`, with each modality's features written to ``store`` as they are
    computed and returned as read-only ``(N, D)`` float16 memmaps: RAM holds one batch of them."""
    with store.writing(list(encoders)) as writers:
        meta = _extract(
            encoders, batches, device, progress, total, desc, lambda n, f: writers[n].append(f)
        )
    features = {name: writer.array for name, writer in writers.items()}
    return ClipFeatures(meta.rows, meta.clip, features, meta.labels, meta.failures)


def _append_to(feats: dict[str, list[Tensor]]) -> Callable[[str, Tensor], None]:
    return lambda name, f: feats[name].append(f.float().cpu())


def _extract(
    encoders: Mapping[str, nn.Module],
    batches: Iterable[dict],
    device: torch.device | str,
    progress: bool,
    total: int | None,
    desc: str,
    add: Callable[[str, Tensor], None],
) -> ClipFeatures[Tensor]:
    """The extraction loop: ``add(modality, features)`` per batch; returns the rows, clips, labels
    and failures (``features`` left empty)."""
    rows, clips, labels, failures = [], [], [], []
    for enc in encoders.values():
        enc.eval()
    for batch in track(batches, total=total, desc=desc, enabled=progress, leave=False):
        failures.extend(batch.get("failures", []))
        valid = (
            batch["valid"].bool()
            if "valid" in batch
            else torch.ones(len(batch["index"]), dtype=torch.bool)
        )
        if not valid.any():
            continue
        for name, enc in encoders.items():
            x = batch[name][valid].to(device, non_blocking=True)
            add(name, enc(x))
        rows.append(batch["index"][valid].numpy())
        labels.append(batch["label"][valid].numpy())
        clips.append(np.asarray(batch.get("clip", torch.zeros(len(valid))))[valid.numpy()])
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return ClipFeatures(empty, empty, {}, empty, failures)
    return ClipFeatures(
        rows=np.concatenate(rows).astype(np.int64),
        clip=np.concatenate(clips).astype(np.int64),
        features={},
        labels=np.concatenate(labels).astype(np.int64),
        failures=failures,
    )


class FeatureStore:
    """A folder where extraction writes features as raw row-major float16, one file per modality
    and rank (``features.rank<R>.<modality>.f16``), read back as ``np.memmap``.

    Each rank writes only its own rows, so no rank ever holds another's. A file is written under a
    hidden temporary name and renamed over the final name when its extraction completes: a reader
    never sees half a file, and the new file replaces the previous extraction's (a memmap still
    open on the old file keeps reading the old one). Temporaries left by a killed run are removed
    when the next extraction starts. Arrays are only ever opened from the row count their own
    extraction wrote, and the file's size is checked against it, so a stale file is never read.

    Args:
        folder: e.g. ``<run folder>/features`` (created when needed).
        rank: whose files these are (default: this process's rank).
    """

    def __init__(self, folder: str | Path, rank: int | None = None) -> None:
        self.folder = Path(folder)
        self.rank = xdist.rank() if rank is None else rank

    def path(self, modality: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", modality):
            raise ConfigError(f"feature store: modality name {modality!r} is not a plain word")
        return self.folder / f"features.rank{self.rank}.{modality}.f16"

    @contextlib.contextmanager
    def writing(self, modalities: Sequence[str]) -> Iterator[dict[str, StoreWriter]]:
        """Writers for ``modalities``; their files are renamed into place when the block ends
        without an error (and removed otherwise)."""
        with contextlib.ExitStack() as stack:
            writers = {}
            for modality in modalities:
                final = self.path(modality)
                for stale in atomic.temporaries(final):
                    stale.unlink(missing_ok=True)
                tmp = stack.enter_context(atomic.atomic_path(final))
                handle = stack.enter_context(tmp.open("wb"))
                writers[modality] = StoreWriter(final, handle)
            yield writers
            for writer in writers.values():
                writer.handle.flush()
        for writer in writers.values():  # renamed now: open the final files
            writer.open()

    def clear(self) -> None:
        """Remove this rank's files (finished and temporary) from the folder."""
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(f"features.rank{self.rank}.*.f16"):
            path.unlink(missing_ok=True)
        for stale in self.folder.glob(f".features.rank{self.rank}.*.f16.*.tmp"):
            stale.unlink(missing_ok=True)


class StoreWriter:
    """Appends ``(B, D)`` feature blocks to one file of a :class:`FeatureStore`; after the store's
    ``writing`` block, ``array`` is the ``(N, D)`` float16 memmap of everything appended."""

    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path, self.handle = path, handle
        self.rows, self.dim = 0, -1
        self.array: np.ndarray = np.zeros((0, 0), dtype=np.float16)

    def append(self, block: Tensor) -> None:
        values = block.detach().to("cpu", torch.float16).numpy()
        if values.ndim != 2 or (self.dim >= 0 and values.shape[1] != self.dim):
            raise DataError(
                f"feature store {self.path}: blocks must be (B, D) with one D, got {values.shape}"
            )
        self.dim = values.shape[1]
        self.handle.write(np.ascontiguousarray(values).tobytes())
        self.rows += values.shape[0]

    def open(self) -> None:
        expected = self.rows * max(self.dim, 0) * 2
        size = self.path.stat().st_size
        if size != expected:
            raise DataError(
                f"feature store {self.path} has {size} bytes, but this extraction wrote "
                f"{expected}: another process wrote to it; give each run its own folder"
            )
        if self.rows == 0:
            self.array = np.zeros((0, max(self.dim, 0)), dtype=np.float16)
        else:
            shape = (self.rows, self.dim)
            self.array = np.memmap(self.path, dtype=np.float16, mode="r", shape=shape)


def calibration_keys(
    rows: Sequence[int] | np.ndarray,
    num_clips: int,
    rng: np.random.Generator,
    augmented: bool = False,
) -> list[ClipKey]:
    """``num_clips`` clips of ``rows`` to recompute BatchNorm statistics on, in a shuffled order.

    Each video contributes ``ceil(num_clips / len(rows))`` uniformly spaced clips (one, the
    centre clip, when there are enough videos), then ``num_clips`` of them are drawn with ``rng``
    (a stream of ``xdc.seeds``). Shuffled, so that each batch is a sample of the whole set rather
    than the clips of a few videos. ``augmented``: training-style clips (random start, crop and
    augmentation seeded per clip) of the same videos, for encoders that will see such clips.
    """
    rows = [int(r) for r in rows]
    if num_clips <= 0 or not rows:
        return []
    keys = fixed_keys(rows, math.ceil(num_clips / len(rows)))
    chosen = [keys[i] for i in rng.permutation(len(keys))[:num_clips]]
    if not augmented:
        return chosen
    clip_seeds = rng.integers(0, 2**62, size=len(chosen))
    return [ClipKey(k.row, int(s)) for k, s in zip(chosen, clip_seeds, strict=True)]


def calibrated_copy(
    encoder: nn.Module,
    inputs: Iterable[Tensor],
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A copy of ``encoder`` whose BatchNorm statistics were recomputed on ``inputs``."""
    clone = copy.deepcopy(encoder)
    recalibrate_batchnorm(clone, inputs, device)
    return clone
