"""What the train/test protocols (``linear_probe``, ``retrieval``) share: the features of a
labelled training split and test split, extracted the same way (BatchNorm statistics as
``--bn-statistics`` says), the test videos that could not be read, and the settings their results
record.

Denominators are the official lists: a test video none of whose clips decoded stays in the test
set and counts as a wrong answer (retrieval: a miss). Every result says how many there were
(``unreadable_test_videos`` of ``n_test_official``, and ``unreadable_line`` under every table).
A test video that lacks the modality a protocol reads (no audio track for an audio probe, an
audio-only file for a video one) is not part of that protocol's test set — the standard
benchmarks have the modality for every item, so such a video is a property of the user's data,
not a failure — and every result counts and lists them (``without_modality``, ``MODALITY_RULE``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from xdc.data.manifest import Manifest
from xdc.evaluation.encoders import EvalEncoders
from xdc.evaluation.extract import (
    EvalClips,
    FeatureExtractor,
    require_labels,
    split_rows,
    unreadable_rows,
)
from xdc.features import ClipFeatures


class WrappedExtractor(FeatureExtractor):
    """A ``FeatureExtractor`` whose features are ``wrap(encoder)``'s output: the BatchNorm
    statistics are those of the encoder itself (recomputed on it when they are), and ``wrap``
    turns the encoder into the module a protocol reads its features from (e.g. a pooled
    last-stage map instead of the encoder's pooled output)."""

    def __init__(self, *args: Any, wrap: Callable[[nn.Module], nn.Module], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wrap = wrap
        self._wrapped: dict[str, nn.Module] = {}

    def calibrated(self, modality: str) -> nn.Module:
        if modality not in self._wrapped:
            self._wrapped[modality] = self.wrap(super().calibrated(modality)).eval()
        return self._wrapped[modality]


@dataclass
class TrainTest:
    """The features of a protocol's two splits and what the result must say about them."""

    train: dict[str, ClipFeatures]
    test: dict[str, ClipFeatures]
    test_rows: dict[str, list[int]]
    """Per modality, the official test rows that modality can use (audio needs a track)."""
    unreadable: dict[str, list[int]]
    """Per modality, the test rows none of whose clips decoded (counted as wrong)."""
    bn_clips: dict[str, int]
    """Clips each modality's BatchNorm statistics were recomputed on (0: stored ones)."""
    bn_statistics: dict[str, Any] = field(default_factory=dict)
    """``FeatureExtractor.statistics()``: the policy and the statistics each modality used."""


def extract_train_test(
    source: EvalEncoders,
    manifest: Manifest,
    modalities: Sequence[str],
    splits: tuple[str, str],
    clips: int = 10,
    bn_clips: int = 512,
    device: str | None = None,
    progress: bool = True,
    batch_size: int | None = None,
    min_train_classes: int = 1,
    bn_statistics: str = "auto",
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainTest:
    """Features of the ``(train, test)`` splits of a protocol (flags ``--train-split`` /
    ``--test-split``): both must be labelled, the training one with ``min_train_classes`` classes;
    BatchNorm statistics per ``bn_statistics``, recomputed (when they are) on the training rows.
    ``wrap``: what the features are read from (``WrappedExtractor``; None: the encoder's output)."""
    train_rows = split_rows(manifest, splits[0], "--train-split")
    test_rows = split_rows(manifest, splits[1], "--test-split")
    require_labels(manifest, train_rows, splits[0], "--train-split", min_train_classes)
    require_labels(manifest, test_rows, splits[1], "--test-split", min_classes=1)
    size = batch_size or source.config.train.batch_size
    reader = EvalClips(
        manifest, source.config.data, modalities, size, train_rows + test_rows, progress
    )
    extractor = (
        FeatureExtractor(source, reader, train_rows, bn_clips, device, progress, bn_statistics)
        if wrap is None
        else WrappedExtractor(
            source, reader, train_rows, bn_clips, device, progress, bn_statistics, wrap=wrap
        )
    )
    train = extractor.extract(train_rows, modalities, clips)
    test = extractor.extract(test_rows, modalities, clips)
    usable = {m: [r for r in test_rows if r in reader.usable[m]] for m in modalities}
    missing = {m: unreadable_rows(reader, test_rows, test[m], m) for m in modalities}
    counts = dict(extractor.calibration_counts)
    return TrainTest(train, test, usable, missing, counts, extractor.statistics())


def unreadable_record(manifest: Manifest, official: int, rows: Sequence[int]) -> dict[str, Any]:
    """``n_test_official``, ``unreadable_test_videos`` and their paths, for a result JSON."""
    return {
        "n_test_official": official,
        "unreadable_test_videos": len(rows),
        "unreadable_test_paths": [str(manifest.rows[r]["path"]) for r in rows],
    }


MODALITY_RULE = (
    "a test video without the modality a protocol reads is not in its test set (counted and "
    "listed); an unreadable one is, and counts as wrong"
)


def without_modality(manifest: Manifest, rows: Sequence[int]) -> dict[str, Any]:
    """Of ``rows`` (a test split), those without a video stream and those without an audio
    track: ``{"rule", "video": {"count", "paths"}, "audio": {...}}``."""
    lacking = {
        "video": [r for r in rows if not manifest.has_video(r)],
        "audio": [r for r in rows if not manifest.has_audio(r)],
    }
    out: dict[str, Any] = {"rule": MODALITY_RULE}
    for modality, found in lacking.items():
        paths = [str(manifest.rows[r]["path"]) for r in found]
        out[modality] = {"count": len(found), "paths": paths}
    return out


def unreadable_line(unreadable: int, official: int) -> str:
    """The line under every result table: how many test videos could not be read."""
    return f"unreadable test videos: {unreadable} of {official}, counted as wrong"


def protocol_record(
    source: EvalEncoders,
    manifest: Manifest,
    splits: tuple[str, str],
    clips: int,
    bn_clips: int | dict[str, int],
    start: float,
    bn_statistics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings a train/test protocol's result ends with; ``start``: its ``perf_counter``.
    ``without_modality`` counts the test videos each modality could not use."""
    return {
        "checkpoint": source.checkpoint,
        "data": str(manifest.source),
        "train_split": splits[0],
        "test_split": splits[1],
        "clips": clips,
        "bn_clips": bn_clips,
        "bn_statistics": bn_statistics or {},
        "encoders": source.describe(),
        "without_modality": without_modality(manifest, split_rows(manifest, splits[1])),
        "seconds": round(time.perf_counter() - start, 2),
    }
