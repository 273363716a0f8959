"""What the train/test protocols (``linear_probe``, ``retrieval``) share: the features of a
labelled training split and test split, extracted the same way (BatchNorm recalibrated on the
training rows), and the settings their results record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from xdc.data.manifest import Manifest
from xdc.evaluation.encoders import EvalEncoders
from xdc.evaluation.extract import EvalClips, FeatureExtractor, require_labels, split_rows
from xdc.features import ClipFeatures


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
) -> tuple[dict[str, ClipFeatures], dict[str, ClipFeatures], dict[str, int]]:
    """Features of the ``(train, test)`` splits of a protocol (flags ``--train-split`` /
    ``--test-split``): both must be labelled, the training one with ``min_train_classes`` classes;
    BatchNorm is recalibrated on the training rows. Returns (train, test, clips each modality's
    BatchNorm statistics were computed on)."""
    train_rows = split_rows(manifest, splits[0], "--train-split")
    test_rows = split_rows(manifest, splits[1], "--test-split")
    require_labels(manifest, train_rows, splits[0], "--train-split", min_train_classes)
    require_labels(manifest, test_rows, splits[1], "--test-split", min_classes=1)
    size = batch_size or source.config.train.batch_size
    reader = EvalClips(
        manifest, source.config.data, modalities, size, train_rows + test_rows, progress
    )
    extractor = FeatureExtractor(source, reader, train_rows, bn_clips, device, progress)
    train = extractor.extract(train_rows, modalities, clips)
    test = extractor.extract(test_rows, modalities, clips)
    return train, test, dict(extractor.calibration_counts)


def protocol_record(
    source: EvalEncoders,
    manifest: Manifest,
    splits: tuple[str, str],
    clips: int,
    bn_clips: int | dict[str, int],
    start: float,
) -> dict[str, Any]:
    """The settings a train/test protocol's result ends with; ``start``: its ``perf_counter``."""
    return {
        "checkpoint": source.checkpoint,
        "data": str(manifest.source),
        "train_split": splits[0],
        "test_split": splits[1],
        "clips": clips,
        "bn_clips": bn_clips,
        "encoders": source.describe(),
        "seconds": round(time.perf_counter() - start, 2),
    }
