"""Frozen-encoder features of the videos of a manifest, the same way for every encoder.

Every evaluation goes through ``FeatureExtractor``:

1. **BatchNorm statistics** (README, "Evaluation protocols"), chosen by ``bn_statistics``:
   ``auto`` (the default) keeps the statistics a trained encoder stored, as the field's frozen-feature
   protocols do, and recomputes them only for a random init, which has none; ``stored`` never
   recomputes; ``recalibrated`` recomputes them for every encoder (xdc's variant: a form of
   domain adaptation to the downstream data that published protocols do not apply, labelled as
   such in every result). Recomputing (``xdc.features.calibrated_copy``) uses ``bn_clips`` clips of
   the *training* rows, a fixed function of those rows and the number asked for (never of the
   encoder), so every encoder compared sees the same clips; it is done once per encoder and
   extractor, however many splits are extracted afterwards.
2. **Clips**: ``clips`` uniformly spaced clips per video (``xdc.data.datasets.fixed_keys``), centre
   crop, no augmentation. Audio windows are centred on the video clips; audio features decode no
   frames, and for an audio-only file (``has_video`` 0) each clip is one audio window.
3. ``ClipFeatures`` per modality: one row per clip; ``.video_level()`` averages them per video.

Rows of the features are rows of the *whole* manifest, so the splits of one manifest join.
Rows without an audio track are left out of audio features and audio-only rows out of video
features (counted on stderr); a file that fails to decode is left out and listed in
``ClipFeatures.failures``; ``unreadable_rows`` names the rows none of whose clips decoded, which
the protocols count as wrong answers (the denominator stays the official test list).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn
from torch.utils.data import DataLoader

from xdc import seeds
from xdc.config import DataConfig
from xdc.data.cache import ClipCache
from xdc.data.datasets import ClipDataset, ClipKey, clip_loader, fixed_keys
from xdc.data.decode import ClipSpec
from xdc.data.manifest import Manifest
from xdc.encoders import in_run_layout
from xdc.errors import ConfigError, DataError
from xdc.evaluation.encoders import EvalEncoders
from xdc.features import (
    ClipFeatures,
    calibrated_copy,
    calibration_keys,
    extract_features,
    valid_inputs,
)
from xdc.methods import MODALITIES
from xdc.progress import track
from xdc.run import resolve_device

log = logging.getLogger(__name__)


def split_rows(
    manifest: Manifest, split: str | None, flag: str = "--split", column: str = "split"
) -> list[int]:
    """Rows of ``manifest`` whose ``column`` is ``split`` (all rows for None); an empty split
    raises ``DataError`` naming ``flag``."""
    if split is None:
        return list(range(len(manifest)))
    values = [r.get(column, "") for r in manifest.rows]
    rows = [i for i, v in enumerate(values) if v == split]
    if not rows:
        found = ", ".join(sorted({repr(v) for v in values if v})) or "none"
        raise DataError(
            f"{manifest.source or manifest.root}: column {column!r} has no {split!r} rows ({flag}; "
            f"values present: {found}); pass another {flag} or fill the manifest's {column!r} column"
            + (
                " (xdc index --test-fraction 0.2 --val-fraction 0.1 draws train/val/test per label)"
                if column == "split"
                else ""
            )
        )
    return rows


def require_labels(
    manifest: Manifest, rows: Sequence[int], split: str | None, flag: str, min_classes: int = 2
) -> None:
    """Raise ``DataError`` unless every row has a label and there are ``min_classes`` classes."""
    where = f"split {split!r} ({flag})" if split else f"the manifest ({flag})"
    source = manifest.source or manifest.root
    missing = [i for i in rows if not manifest.rows[i].get("label", "")]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} of {len(rows)} rows of {where} have no label (first: "
            f"{manifest.rows[missing[0]].get('path')}); fill the 'label' column or choose a "
            "split whose rows are all labelled"
        )
    classes = {manifest.rows[i]["label"] for i in rows}
    if len(classes) < min_classes:
        raise DataError(
            f"{source}: {where} has {len(classes)} class(es) ({', '.join(sorted(classes))}); "
            f"a classifier needs at least {min_classes}: use a split with more classes"
        )


def require_single_labels(manifest: Manifest, rows: Sequence[int], protocol: str) -> None:
    """Raise ``DataError`` when some of ``rows`` carry several labels (``;``-joined,
    ``Manifest.label_sets``): ``protocol`` (e.g. "finetuning") needs one class per row, and would
    otherwise see such rows as unlabelled (-1)."""
    sets = manifest.label_sets()
    several = [i for i in rows if len(sets[i]) > 1]
    if several:
        first = manifest.rows[several[0]]
        raise DataError(
            f"{manifest.source or manifest.root}: {len(several)} of {len(rows)} rows carry several "
            f"labels (first: {first.get('path')}, {first.get('label')!r}) and {protocol} needs one "
            "class per row; for rows with several labels: use xdc linear-probe, which scores "
            "multi-label data by mAP"
        )


class EvalClips:
    """Evaluation clips (centre crop, fixed positions) of the rows of one manifest.

    One dataset per modality; when ``data.cache=memory`` one in-RAM cache of the rows in
    ``cache_rows`` serves both: frames when video is asked for and the file has them, the audio
    track when audio is asked for and the file has one.
    """

    def __init__(
        self,
        manifest: Manifest,
        data_config: DataConfig,
        modalities: Sequence[str],
        batch_size: int,
        cache_rows: Sequence[int] = (),
        progress: bool = True,
    ) -> None:
        self.manifest = manifest
        self.data_config = data_config
        self.batch_size = batch_size
        self.datasets = {
            m: ClipDataset(
                manifest, self.data_config, train=False, modalities=(m,), replace_failed=False
            )
            for m in modalities
        }
        self.usable = {m: set(d.rows) for m, d in self.datasets.items()}
        if self.data_config.cache == "memory" and cache_rows:
            self._build_cache(list(cache_rows), progress)

    def _build_cache(self, rows: list[int], progress: bool) -> None:
        video, audio = self.datasets.get("video"), self.datasets.get("audio")
        if video is not None:  # frames, plus the audio track when audio is asked for too
            spec = video.spec if audio is None else replace(video.spec, **_audio_of(audio.spec))
        else:
            assert audio is not None
            spec = audio.spec  # decode_video=False: the audio of every row, no frames
        wanted = set().union(*self.usable.values())
        limit = int(self.data_config.cache_gib * 2**30)
        cache = ClipCache(self.manifest, sorted(set(rows) & wanted), spec, limit, progress)
        # Each dataset cuts its own clips (``ClipDataset.spec_for``) out of the shared cache.
        for dataset in self.datasets.values():
            dataset.cache = cache

    def usable_rows(self, rows: Sequence[int], modality: str) -> list[int]:
        """``rows`` this modality can use (audio needs an audio track, video a video stream);
        reports what it drops."""
        kept = [r for r in rows if r in self.usable[modality]]
        if len(kept) < len(rows):
            why = "videos without audio" if modality == "audio" else "audio-only files"
            print(
                f"xdc: {len(rows) - len(kept)} {why} left out of {modality} features",
                file=sys.stderr,
            )
        return kept

    def loader(self, modality: str, keys: Sequence[ClipKey]) -> DataLoader:
        """Batches of the clips of ``keys`` for one modality, in the order of the keys."""
        return clip_loader(self.datasets[modality], keys, self.batch_size)


BN_STATISTICS = ("auto", "stored", "recalibrated")
"""Which BatchNorm statistics frozen features use (``--bn-statistics``; module docstring)."""


def recalibrates(bn_statistics: str, is_random: bool) -> bool:
    """Whether ``bn_statistics`` recomputes the statistics of an encoder (random init or not)."""
    if bn_statistics not in BN_STATISTICS:
        raise ConfigError(
            f"--bn-statistics {bn_statistics!r}: choose one of {', '.join(BN_STATISTICS)}"
        )
    return bn_statistics == "recalibrated" or (bn_statistics == "auto" and is_random)


class FeatureExtractor:
    """Features of an ``EvalEncoders`` on ``EvalClips``, with the BatchNorm statistics
    ``bn_statistics`` asks for (recomputed at most once per encoder).

    Args:
        source: the encoders to evaluate.
        clips: where clips come from.
        calibration_rows: training rows whose clips recompute the BatchNorm statistics.
        bn_clips: clips used for that (0 = never recompute: random encoders keep their initial
            statistics, which is unfair to them).
        device: ``cpu``, ``cuda``… (None: CUDA when available).
        progress: progress bars on stderr.
        bn_statistics: ``auto``, ``stored`` or ``recalibrated`` (``BN_STATISTICS``).
    """

    def __init__(
        self,
        source: EvalEncoders,
        clips: EvalClips,
        calibration_rows: Sequence[int],
        bn_clips: int = 512,
        device: str | None = None,
        progress: bool = True,
        bn_statistics: str = "auto",
    ) -> None:
        self.source = source
        self.clips = clips
        self.calibration_rows = list(calibration_rows)
        self.bn_clips = bn_clips
        self.device = resolve_device(device)
        self.progress = progress
        self.bn_statistics = bn_statistics
        self.recalibrate = recalibrates(bn_statistics, source.is_random)
        self._calibrated: dict[str, nn.Module] = {}
        self.calibration_counts: dict[str, int] = {}
        """Clips each modality's BatchNorm statistics were recomputed on (0: stored ones)."""

    def calibrated(self, modality: str) -> nn.Module:
        """The encoder of ``modality`` on the device, in eval mode, with the statistics
        ``bn_statistics`` asks for (recomputed once, then cached)."""
        if modality not in self._calibrated:
            encoder = in_run_layout(
                self.source.encoders[modality], self.source.config.train.channels_last, self.device
            ).to(self.device)
            rows = self.clips.usable_rows(self.calibration_rows, modality)
            # a fixed stream: every encoder evaluated gets the same clips
            wanted = self.bn_clips if self.recalibrate else 0
            keys = calibration_keys(rows, wanted, seeds.rng(0, "eval_calibration"))
            if keys:
                counter = _Counter()
                inputs = counter.count(self._valid_inputs(modality, keys))
                encoder = calibrated_copy(encoder, inputs, self.device)
                self.calibration_counts[modality] = counter.seen
            else:
                self.calibration_counts[modality] = 0
            self._calibrated[modality] = encoder.eval()
        return self._calibrated[modality]

    def statistics(self) -> dict[str, Any]:
        """What the result JSON says about BatchNorm: the policy and, per modality extracted,
        ``stored`` or ``recalibrated on N training clips`` (a random init that keeps its initial
        statistics says so)."""
        labels: dict[str, Any] = {"policy": self.bn_statistics}
        for m, n in self.calibration_counts.items():
            if n:
                labels[m] = f"recalibrated on {n} training clips"
            elif self.source.is_random:
                labels[m] = "stored (random init: its initial statistics)"
            else:
                labels[m] = "stored (the checkpoint's)"
        return labels

    def _valid_inputs(self, modality: str, keys: Sequence[ClipKey]) -> Iterator[Tensor]:
        loader = self.clips.loader(modality, keys)
        bar = track(loader, desc=f"{modality} BN statistics", enabled=self.progress, leave=False)
        yield from valid_inputs(bar, modality)

    def extract(
        self, rows: Sequence[int], modalities: Sequence[str], clips: int
    ) -> dict[str, ClipFeatures]:
        """``{modality: ClipFeatures}`` of ``clips`` uniformly spaced clips of each row.

        Features are (N, D) float32 CPU tensors, N = rows × clips minus failed or audio-less rows.
        """
        out = {}
        for m in modalities:
            usable = self.clips.usable_rows(rows, m)
            keys = fixed_keys(usable, clips)
            loader = self.clips.loader(m, keys)
            feats = extract_features(
                {m: self.calibrated(m)},
                loader,
                self.device,
                progress=self.progress,
                total=len(loader),
                desc=f"{m} features",
            )
            for failure in dict.fromkeys(feats.failures):
                print(f"xdc: skipped unreadable video {failure}", file=sys.stderr)
            if feats.rows.size == 0:
                raise DataError(
                    f"{self.clips.manifest.source}: no clip of the {len(rows)} videos asked for could "
                    f"be read for {m} features; check the files listed above or re-run `xdc index`"
                )
            out[m] = feats
        return out


def unreadable_rows(
    clips: EvalClips, rows: Sequence[int], feats: ClipFeatures, modality: str
) -> list[int]:
    """The rows of ``rows`` that ``modality`` can use but none of whose clips decoded (they are
    absent from ``feats``): the protocols count them as wrong answers."""
    present = set(feats.rows.tolist())
    return [r for r in rows if r in clips.usable[modality] and r not in present]


def _audio_of(spec: ClipSpec) -> dict[str, Any]:
    """The audio fields of ``spec``, to give a video spec the same audio window."""
    return {"audio_samples": spec.audio_samples, "sample_rate": spec.sample_rate}


def available_modalities(
    manifest: Manifest, rows: Sequence[int], wanted: Sequence[str]
) -> tuple[str, ...]:
    """The modalities of ``wanted`` that some of ``rows`` have (video: ``has_video``, audio:
    ``has_audio``), for protocols that run per modality; ``DataError`` when none."""
    has = {"video": manifest.has_video, "audio": manifest.has_audio}
    found = tuple(m for m in wanted if any(has[m](r) for r in rows))
    if not found:
        raise DataError(
            f"{manifest.source or manifest.root}: none of the {len(rows)} rows has "
            f"{' or '.join(wanted)}; re-run `xdc index` or choose another manifest"
        )
    return found


class _Counter:
    """Counts the clips an iterator of batches yields (what the calibration actually saw)."""

    def __init__(self) -> None:
        self.seen = 0

    def count(self, batches: Iterator[Tensor]) -> Iterator[Tensor]:
        for batch in batches:
            self.seen += batch.shape[0]
            yield batch


def extract_splits(
    source: EvalEncoders,
    manifest: Manifest,
    splits: Sequence[str | None],
    modalities: Sequence[str] = MODALITIES,
    clips: int = 10,
    bn_split: str | None = "train",
    bn_clips: int = 512,
    device: str | None = None,
    progress: bool = True,
    batch_size: int | None = None,
    bn_statistics: str = "auto",
    reader: EvalClips | None = None,
) -> dict[str | None, dict[str, ClipFeatures]]:
    """``{split: {modality: ClipFeatures}}``; BatchNorm statistics as ``bn_statistics`` says
    (``auto``: stored for a trained encoder, recomputed for a random one), recomputed at most once
    per encoder, on ``bn_clips`` clips of ``bn_split`` (None: all rows). For callers that run
    several protocols on the same features (e.g. ``xdc demo``).

    ``reader``: clips of ``manifest`` to use (with their RAM cache, when the data config has
    one), from :func:`eval_clips` with the same splits, ``bn_split`` and batch size, for callers
    that extract the same splits of several encoders of one data config (``xdc demo``'s rows);
    None: made here. A reader of another data config or batch size is refused."""
    rows_of = {s: split_rows(manifest, s) for s in splits}
    calibration = split_rows(manifest, bn_split, "--bn-split")
    if reader is None:
        reader = eval_clips(source, manifest, splits, modalities, bn_split, progress, batch_size)
    elif (
        reader.manifest is not manifest
        or reader.data_config != source.config.data
        or not set(modalities) <= set(reader.datasets)
        or reader.batch_size != (batch_size or source.config.train.batch_size)
    ):
        raise ValueError("reader: clips of another manifest, data config, modalities or batch size")
    extractor = FeatureExtractor(
        source, reader, calibration, bn_clips, device, progress, bn_statistics
    )
    return {s: extractor.extract(rows, modalities, clips) for s, rows in rows_of.items()}


def eval_clips(
    source: EvalEncoders,
    manifest: Manifest,
    splits: Sequence[str | None],
    modalities: Sequence[str] = MODALITIES,
    bn_split: str | None = "train",
    progress: bool = True,
    batch_size: int | None = None,
) -> EvalClips:
    """The clips :func:`extract_splits` reads for ``source``'s data config: the rows of
    ``splits`` and ``bn_split``, in one RAM cache when the data config has one."""
    rows = {r for s in splits for r in split_rows(manifest, s)}
    rows |= set(split_rows(manifest, bn_split, "--bn-split"))
    return EvalClips(
        manifest,
        source.config.data,
        modalities,
        batch_size or source.config.train.batch_size,
        sorted(rows),
        progress,
    )


def clip_features_to_npz(
    path: str | Path,
    feats: ClipFeatures,
    modality: str,
    manifest: Manifest,
    keep_clips: bool,
    meta: Mapping[str, object],
) -> Path:
    """Write features as ``.npz``: ``features`` (N, D) float32, ``rows`` (manifest rows),
    ``labels`` (−1 = none), ``paths``, ``clip`` (clip index; −1 when averaged per video),
    ``num_clips`` (clips behind each row), ``label_names``, and ``meta_*`` strings."""
    if keep_clips:
        rows, features, labels = feats.rows, feats.features[modality], feats.labels
        clip, counts = feats.clip, np.ones(len(rows), dtype=np.int64)
    else:
        rows, pooled, labels = feats.video_level()
        features = pooled[modality]
        clip = np.full(len(rows), -1, dtype=np.int64)
        counts = np.bincount(np.searchsorted(rows, feats.rows), minlength=len(rows))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "features": features.numpy().astype(np.float32),
        "rows": rows,
        "labels": labels,
        "paths": np.asarray([str(manifest.path(int(r))) for r in rows], dtype=str),
        "clip": clip,
        "num_clips": counts,
        "label_names": np.asarray(manifest.label_names, dtype=str),
    }
    arrays.update({f"meta_{k}": np.asarray(str(v)) for k, v in meta.items()})
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


__all__ = [
    "BN_STATISTICS",
    "EvalClips",
    "FeatureExtractor",
    "available_modalities",
    "clip_features_to_npz",
    "extract_splits",
    "require_labels",
    "require_single_labels",
    "split_rows",
    "unreadable_rows",
]
