"""Clip datasets over a manifest, samplers that make every clip a pure function of its key, and the
collate function that carries decode failures back to the main process.

The clip dict contract (README, "Data pipeline"):
    ``video``     uint8 (3, T, H, W) RGB; the encoders normalise it on their device
                  (``xdc.models.video.normalize_video``)
    ``audio``     float (1, n_mels, n_frames), log-mel
    ``index``     int, row in the manifest the dataset was built on
    ``label``     int, −1 when unknown
    ``start_sec`` float, clip start
    ``path``      str
plus ``failures``: the ``"path: reason"`` of files that failed and were replaced for this sample.

With ``batch_transforms=True`` a dataset leaves the per-clip float work — strong augmentation,
log-mel, SpecAugment — to :class:`BatchTransform`, which does it for a whole batch on the model's
device: samples then hold ``video_raw`` (uint8, cropped and flipped), ``wave`` (float (N,)
waveform) — or ``logmel`` (float (n_mels, n_frames)) when the RAM cache holds the tracks'
log-mels (``xdc.data.cache``: a slice per clip instead of a transform per batch) — and the
parameters the clip drew (``video_params``, ``audio_params``) in place of ``video`` and ``audio``.
:func:`device_loader` yields such batches finished on the device. Either way the clip of a key
is the same (up to float rounding): the parameters are drawn from the key's uniforms in the
dataset, and both paths run the same batched functions (``xdc.data.transforms``), the per-clip
one on a batch of one.

A sampler yields ``ClipKey(row, seed, clip)`` rather than integers. The key fixes everything random
about the clip (start time, crop, flip, augmentation: a row of uniforms of its seed,
``xdc.data.draws``), so a run is deterministic for a seed however many DataLoader workers load it,
and an epoch can be replayed exactly after a resume.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from xdc.config import DataConfig
from xdc.data import draws
from xdc.data.audio import LogMel
from xdc.data.cache import ClipCache
from xdc.data.decode import Clip, ClipSpec, clip_duration, decode_clip
from xdc.data.manifest import Manifest
from xdc.data.transforms import (
    IDENTITY_AUGMENT,
    SPEC_AUGMENT_PARAMS,
    crop_and_flip,
    draw_spec_augment,
    draw_strong_augment,
    spec_augment_batch,
    strong_augment_clips,
    to_uint8_clip,
)
from xdc.errors import DataError, DecodeError
from xdc.processes import die_with_parent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipKey:
    """What a sampler yields: a manifest row, the seed of this draw, and for evaluation the index of
    a fixed clip among ``num_clips`` uniformly spaced ones (−1 = random start, training)."""

    row: int
    seed: int
    clip: int = -1
    num_clips: int = 1


class ClipDataset(Dataset[dict[str, Any]]):
    """Clips of the videos of a manifest, decoded with PyAV, as clip dicts.

    Args:
        manifest: rows to draw from; ``index`` in samples refers to its rows.
        config: frames, sizes, audio parameters, augmentation.
        train: random start, random crop, flip and augmentation; otherwise fixed clips
            (``ClipKey.clip``), centre crop, no augmentation.
        modalities: which of ``video`` and ``audio`` to load. Rows without audio are excluded when
            ``audio`` is asked for — counted in ``excluded_no_audio`` and logged, never silently —
            and audio-only rows (``has_video`` 0) when ``video`` is (``excluded_no_video``).
            Without ``video``, no frame is decoded (``ClipSpec.decode_video=False``); the audio
            window of a video file is the one a full decode gives, and for an audio-only file the
            clip *is* the audio window (``num_frames=0``: the clip span is the window).
        batch_transforms: leave augmentation and log-mel to :class:`BatchTransform` (see the
            module docstring); for loaders made with :func:`device_loader`.
        replace_failed: when a file fails to decode, draw another row (bounded by
            ``max_failures``; the draws are a function of the key alone, see ``__getitem__``) and
            report the failure in the sample's ``failures`` — every time it is hit: the run
            reports each file once. When False, the sample comes back with ``valid=False`` and
            zero tensors, for the caller to count.
    """

    def __init__(
        self,
        manifest: Manifest,
        config: DataConfig,
        train: bool,
        modalities: Sequence[str] = ("video", "audio"),
        replace_failed: bool = True,
        max_failures: int = 10,
        batch_transforms: bool = False,
    ) -> None:
        self.manifest = manifest
        self.config = config
        self.train = train
        self.modalities = tuple(modalities)
        self.replace_failed = replace_failed
        self.max_failures = max_failures
        self.need_audio = "audio" in self.modalities
        self.need_video = "video" in self.modalities
        self.batch_transforms = batch_transforms
        self.augment_video = train and config.augment in ("strong", "strong_hue")
        self.augment_audio = train and config.spec_augment
        self.rows = self._usable_rows()
        self.transform = BatchTransform(config)
        """Finishes samples one at a time when not ``batch_transforms`` (on the CPU)."""
        self.logmel = self.transform.logmel
        self.spec = ClipSpec(
            num_frames=config.num_frames,
            fps=config.fps,
            resize_short=config.resize_short,
            audio_samples=self.logmel.num_samples(config.audio_frames) if self.need_audio else None,
            sample_rate=config.sample_rate,
            audio_align=config.audio_align,  # type: ignore[arg-type]
            overflow=config.overflow,  # type: ignore[arg-type]
            decode_video=self.need_video,
        )
        self.audio_only_spec = None if self.need_video else replace(self.spec, num_frames=0)
        """Spec of audio-only rows (``has_video`` 0): the clip span is the audio window."""
        self.cache: ClipCache | None = None
        """Decoded videos in RAM (``build_cache``); rows not in it are decoded from disk."""
        self.replacement_pool: list[int] = list(self.rows)
        """Rows a failed file may be replaced by (the trainer narrows it to its training rows)."""
        self._failed: dict[tuple[int, float], str] = {}
        """``"path: reason"`` of the (row, clip start) pairs that failed to decode in this process:
        only to skip decoding them again; a sample is the same with or without it."""
        self._warned: set[str] = set()
        self._paths: dict[int, str] = {}
        """Each row's path as text, made on its first load (a Path per clip costs more)."""
        self._starts: dict[int, tuple[float, float]] = {}
        """Each row's first clip start and the span its starts may cover (``clip_start``)."""
        self._draws = draws.width(config.num_frames)
        """Uniforms a training clip reads (``xdc.data.draws``)."""

    def __len__(self) -> int:
        return len(self.rows)

    def _usable_rows(self) -> list[int]:
        """Rows with every modality asked for; counts, logs and raises as the class says."""
        manifest = self.manifest
        rows = list(range(len(manifest)))
        no_audio = [i for i in rows if self.need_audio and not manifest.has_audio(i)]
        no_video = [i for i in rows if self.need_video and not manifest.has_video(i)]
        self.excluded_no_audio, self.excluded_no_video = len(no_audio), len(no_video)
        if no_audio:
            log.warning(
                "%d of %d videos have no audio track and are excluded (audio is required)",
                len(no_audio),
                len(manifest),
            )
        if no_video:
            log.warning(
                "%d of %d rows are audio-only files and are excluded (video is required)",
                len(no_video),
                len(manifest),
            )
        dropped = set(no_audio) | set(no_video)
        rows = [i for i in rows if i not in dropped]
        where = manifest.source or manifest.root
        if not rows and no_video and len(no_video) == len(manifest):
            raise DataError(
                f"{where}: {'+'.join(self.modalities)} clips need video: all {len(manifest)} rows "
                "are audio-only (has_video 0); use audio protocols (`xdc audio-probe`, "
                "--modality audio) on them, or index video files"
            )
        if not rows:
            raise DataError(
                f"{where}: no usable videos ({len(manifest)} rows, {len(no_audio)} without audio, "
                f"{len(no_video)} audio-only); audio-video methods need video files with sound"
            )
        return rows

    def spec_for(self, row: int) -> ClipSpec:
        """The clip spec of ``row``: ``audio_only_spec`` for an audio-only file, else ``spec``."""
        if self.audio_only_spec is not None and not self.manifest.has_video(row):
            return self.audio_only_spec
        return self.spec

    def build_cache(self, progress: bool = True) -> ClipCache:
        """Decode every usable video into RAM (``data.cache=memory``); returns the cache."""
        limit = int(self.config.cache_gib * 2**30)
        logmel = self.logmel if self.need_audio and self.train else None  # see _cached_logmel
        self.cache = ClipCache(self.manifest, self.rows, self.spec, limit, progress, logmel)
        return self.cache

    def _cached_logmel(self) -> bool:
        """Whether samples carry ``logmel`` rather than ``wave``: in training, when the cache
        holds the tracks' log-mels as this dataset computes them; then every sample does (a
        batch has one set of keys). Their windows sit on the track's hop grid, up to half a hop
        from the decoder's (``xdc.data.cache``): one more jitter of a random clip start. An
        evaluation clip keeps the decoder's window exactly (from the cache's waveform)."""
        cached = self.cache.logmel if self.cache is not None and self.train else None
        return cached is not None and cached.signature == self.logmel.signature

    def clip_start(self, row: int, key: ClipKey, u: float) -> float:
        """Random start (training: temporal jittering; ``u`` is the clip's uniform
        ``draws.START``) or the centre of the key's fixed clip, inside the row's segment when it
        has one (``Manifest.segment``); a segment or file shorter than a clip starts at its
        beginning (``data.overflow`` fills the rest)."""
        starts = self._starts.get(row)
        if starts is None:
            segment = self.manifest.segment(row)
            first = segment[0] if segment is not None else 0.0
            span = max(0.0, self.manifest.duration(row) - clip_duration(self.spec_for(row)))
            starts = self._starts[row] = (first, span)
        first, span = starts
        if key.clip < 0:
            return first + float(u) * span
        return first + span * (key.clip + 0.5) / max(1, key.num_clips)

    def __getitem__(self, key: ClipKey | int) -> dict[str, Any]:
        """The clip of ``key``: a pure function of the key (and of the files), whatever process
        loads it and whatever it loaded before.

        Every attempt reads its clip (start, crop, augmentation) from the uniforms of
        ``key.seed`` (``xdc.data.draws``); when a file fails, the row that replaces it is the next
        draw of a stream of its own (a child of ``key.seed``), so the sequence of replacements
        does not depend on which failures this process has already seen.
        """
        if isinstance(key, int):
            key = ClipKey(self.rows[key], seed=key, clip=-1 if self.train else 0)
        replacements: np.random.Generator | None = None  # made on the first failure only
        failures: list[str] = []
        row = key.row
        # A random-start key (clip −1) in evaluation gets its start, not its crop or augmentation.
        u = draws.clip_draws(key.seed, self._draws) if self.train or key.clip < 0 else None
        while True:
            start = self.clip_start(row, key, u[draws.START] if u is not None else 0.0)
            failure = self._failed.get((row, start))
            if failure is None:
                try:
                    sample = self._load(row, key, u if self.train else None, start)
                    sample["failures"] = failures
                    return sample
                except DecodeError as err:
                    failure = f"{err.path}: {err.reason}"
                    self._failed[(row, start)] = failure
                    if err.path not in self._warned:  # logged once per file and process
                        self._warned.add(err.path)
                        log.warning("skipping unreadable video %s (%s)", err.path, err.reason)
            failures.append(failure)
            if not self.replace_failed:
                return self._invalid(row, key, failures)
            if len(failures) >= self.max_failures:
                raise DataError(
                    f"{len(failures)} videos in a row failed to decode (last: {failures[-1]}); "
                    "re-run `xdc index` to re-probe the files, or fix the files listed above"
                )
            if replacements is None:
                replacements = np.random.default_rng(
                    np.random.SeedSequence(key.seed, spawn_key=(1,))
                )
            row = self.replacement_pool[int(replacements.integers(len(self.replacement_pool)))]

    def __getitems__(self, keys: Sequence[ClipKey]) -> dict[str, Any] | list[dict[str, Any]]:
        """The samples of ``keys``: what a DataLoader asks for one batch (``collate_clips``
        collates them). A training batch of cached rows whose log-mels the cache holds
        (``_cached_logmel``), loaded with ``batch_transforms``, comes back as the collated batch
        itself, assembled in place — each clip's crop written once, straight into the batch's
        buffer, no per-clip dicts, the batch's uniforms and parameters computed at once — equal to
        ``collate_clips([self[k] for k in keys])``: the same uniforms at the same slots, the same
        helpers. A batch of 32 ``tiny`` clips then takes ~1.8 ms instead of 4.8 (cut and collated
        clip by clip with a numpy Generator each; ``benchmarks/train.py``)."""
        if not self._assembles(keys):
            return [self[k] for k in keys]
        cfg, spec, cache = self.config, self.spec, self.cache
        assert cache is not None
        n, size, total = len(keys), cfg.crop_size, spec.num_frames
        frames_kept = cfg.train_frames if 0 < cfg.train_frames < total else total
        n_frames = self.logmel.num_frames(int(spec.audio_samples or 0))
        video = np.empty((n, 3, frames_kept, size, size), np.uint8)
        logmel = np.empty((n, cfg.n_mels, n_frames), np.float32)
        u = draws.clip_uniforms([key.seed for key in keys], self._draws)
        rows, labels, starts, paths = [], [], [], []
        for i, key in enumerate(keys):
            row = key.row
            clip = cache.clip(row, self.clip_start(row, key, u[i, draws.START]), spec, self.logmel)
            video[i] = self._crop(clip.frames, u[i]).transpose(3, 0, 1, 2)  # as video_views
            # The cache's slice as it is: a tensor round trip costs ~10 µs a clip here.
            logmel[i] = clip.logmel if clip.logmel is not None else self._logmel_of(clip).numpy()
            rows.append(row)
            labels.append(self.manifest.label(row))
            starts.append(clip.start_sec)
            paths.append(self._path(row))
        batch: dict[str, Any] = {
            "index": torch.tensor(rows),
            "label": torch.tensor(labels),
            "clip": torch.tensor([k.clip for k in keys]),
            "start_sec": torch.tensor(starts),
            "path": paths,
            "valid": torch.ones(n, dtype=torch.bool),
            "video_raw": torch.from_numpy(video),
        }
        if self.augment_video:
            hue = cfg.augment == "strong_hue"
            batch["video_params"] = torch.from_numpy(draw_strong_augment(u[:, draws.AUGMENT], hue))
        batch["logmel"] = torch.from_numpy(logmel)
        if self.augment_audio:
            audio = draw_spec_augment(u[:, draws.SPEC], cfg.n_mels, n_frames)
            batch["audio_params"] = torch.from_numpy(audio)
        batch["failures"] = []
        return batch

    def _assembles(self, keys: Sequence[ClipKey]) -> bool:
        """Whether ``__getitems__`` assembles the batch of ``keys`` itself: training with
        ``batch_transforms``, video and audio, this class's ``video_views``, and every row in the
        cache with its frames and its track's log-mel."""
        cache = self.cache
        if not (
            cache is not None
            and self.batch_transforms
            and self.need_video
            and self.need_audio
            and self._cached_logmel()
            and type(self).video_views is ClipDataset.video_views
        ):
            return False
        videos = cache.videos
        for key in keys:
            video = videos.get(key.row) if isinstance(key, ClipKey) else None
            if video is None or video.frames is None or video.logmel is None:
                return False
        return True

    def _load(self, row: int, key: ClipKey, u: np.ndarray | None, start: float) -> dict[str, Any]:
        """The clip of ``row`` starting at ``start``; ``u``: its uniforms (``xdc.data.draws``) in
        training, for its crop and augmentation; None in evaluation."""
        path = self._path(row)
        spec = self.spec_for(row)
        sliced = self._cached_logmel()
        if self.cache is not None and row in self.cache:
            clip = self.cache.clip(row, start, spec, self.logmel if sliced else None)
        else:
            duration, segment = self.manifest.file_duration(row), self.manifest.segment(row)
            clip = decode_clip(path, start, spec, duration_sec=duration or None, segment=segment)
        sample: dict[str, Any] = {
            "index": row,
            "label": self.manifest.label(row),
            "clip": key.clip,
            "start_sec": clip.start_sec,
            "path": path,
            "valid": True,
        }
        if self.need_video:
            sample.update(self.video_views(clip.frames, u))
        if self.need_audio:
            if sliced:  # every sample then carries a log-mel (a batch has one set of keys)
                sample["logmel"] = self._logmel_of(clip)
            else:
                assert clip.audio is not None
                sample["wave"] = torch.from_numpy(clip.audio)
            if self.augment_audio:
                frames = self.logmel.num_frames(int(spec.audio_samples or 0))
                assert u is not None
                sample["audio_params"] = draw_spec_augment(
                    u[draws.SPEC], self.config.n_mels, frames
                )
        return self._finish(sample)

    def video_views(self, frames: np.ndarray, u: np.ndarray | None) -> dict[str, Any]:
        """The video entries of a sample, from its decoded (T, H, W, 3) uint8 frames: ``video_raw``
        (3, T, S, S) uint8 — in training ``data.train_frames`` of the frames, a random crop and
        flip; else the centre crop — and, with strong augmentation, ``video_params`` (drawn here
        from ``u``, applied by ``BatchTransform``). ``u``: the clip's uniforms in training
        (``xdc.data.draws``), None in evaluation.

        The hook for a dataset that shows a clip otherwise: a subclass overrides it and may stack
        several views in ``video_raw`` (``xdc.evaluation.finetune_clips.ThreeCropClips``: three
        crops, (3, 3, T, S, S)). A clip that fails to load gets the views of blank frames.
        """
        out: dict[str, Any] = {"video_raw": to_uint8_clip(self._crop(frames, u))}
        if u is not None and self.augment_video:
            hue = self.config.augment == "strong_hue"
            out["video_params"] = draw_strong_augment(u[draws.AUGMENT], hue)
        return out

    def _crop(self, frames: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        """(T, H, W, 3) frames → (T', S, S, 3) view or copy: in training (``u``, the clip's
        uniforms) ``data.train_frames`` of them, a random crop and flip; else the centre crop
        (``video_views`` and ``__getitems__``)."""
        cfg = self.config
        if u is not None and 0 < cfg.train_frames < len(frames):
            ranks = u[draws.FRAMES : draws.FRAMES + len(frames)]
            frames = frames[np.sort(np.argsort(ranks, kind="stable")[: cfg.train_frames])]
        return crop_and_flip(
            frames, cfg.crop_size, u[draws.CROP] if u is not None else None, cfg.flip
        )

    def _path(self, row: int) -> str:
        """``row``'s path as text, made on its first use (a Path per clip costs more)."""
        path = self._paths.get(row)
        if path is None:
            path = self._paths[row] = str(self.manifest.path(row))
        return path

    def _logmel_of(self, clip: Clip) -> torch.Tensor:
        """The clip's log-mel (n_mels, frames): the cache's slice when it has one (a view,
        nothing writes to it), else computed from its waveform."""
        if clip.logmel is not None:
            return torch.from_numpy(clip.logmel)
        assert clip.audio is not None
        return self.logmel(torch.from_numpy(clip.audio))

    def _finish(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Apply the sample's transforms now (a batch of one), unless ``batch_transforms``."""
        if self.batch_transforms:
            return sample
        one = {k: torch.as_tensor(sample.pop(k))[None] for k in RAW_KEYS if k in sample}
        one["valid"] = torch.tensor([sample["valid"]])
        done = self.transform(one)
        for name in ("video", "audio"):
            if name in done:
                sample[name] = done[name][0]
        return sample

    def _invalid(self, row: int, key: ClipKey, failures: list[str]) -> dict[str, Any]:
        cfg = self.config
        sample: dict[str, Any] = {
            "index": row,
            "label": self.manifest.label(row),
            "clip": key.clip,
            "start_sec": 0.0,
            "path": str(self.manifest.path(row)),
            "valid": False,
            "failures": failures,
        }
        if self.need_video:
            size, frames = cfg.crop_size, cfg.num_frames
            if self.train and 0 < cfg.train_frames < frames:  # as long as a loaded clip (_crop)
                frames = cfg.train_frames
            blank = np.zeros((frames, size, size, 3), dtype=np.uint8)
            sample.update(self.video_views(blank, None))
            if self.augment_video:
                sample["video_params"] = IDENTITY_AUGMENT.copy()
        if self.need_audio:
            samples = int(self.spec.audio_samples or 0)
            if self._cached_logmel():
                sample["logmel"] = torch.zeros(self.config.n_mels, self.logmel.num_frames(samples))
            else:
                sample["wave"] = torch.zeros(samples)
            if self.augment_audio:
                sample["audio_params"] = np.zeros(SPEC_AUGMENT_PARAMS, dtype=np.int64)
        return self._finish(sample)


RAW_KEYS = ("video_raw", "video_params", "wave", "logmel", "audio_params")
"""What a ``ClipDataset(batch_transforms=True)`` sample holds in place of ``video`` and ``audio``
(``wave`` or ``logmel``, not both)."""


class BatchTransform:
    """The float work on clips — strong augmentation, log-mel, SpecAugment — for a collated batch
    at once, on ``device``, from the parameters each clip drew from its key in the dataset.

    Called on a batch of a ``ClipDataset(batch_transforms=True)``: copies its raw tensors to
    ``device`` (``non_blocking``: from pinned memory the copy does not wait) and returns the
    batch with ``video`` (uint8) and ``audio`` (log-mel, computed from ``wave`` or taken as it
    is from ``logmel``) there, as the dataset would have made them one by one; the other entries stay where they were. A sample that failed to load
    (``valid`` False) gets zeros, as from the dataset.
    """

    def __init__(self, config: DataConfig, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.hue = config.augment == "strong_hue"
        self.logmel = LogMel(config.sample_rate, config.n_mels).to(self.device)

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        # In float32 whatever the caller's autocast: feature extraction runs its loader inside
        # the model's bf16/fp16 region, and clips must be those training sees (a bf16 warp grid
        # moves pixels; an fp16 mel matmul rounds quiet audio away before the log).
        with torch.autocast(self.device.type, enabled=False):
            return self._transform(batch)

    def _transform(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in batch.items() if k not in RAW_KEYS}
        dev = self.device
        if "video_raw" in batch:
            video = batch["video_raw"].to(dev, non_blocking=True)
            if "video_params" in batch:
                params = batch["video_params"].to(dev, non_blocking=True)
                video = strong_augment_clips(video, params, self.hue)
            out["video"] = video
        if "wave" in batch or "logmel" in batch:
            if "logmel" in batch:  # from the RAM cache's log-mels (``xdc.data.cache``)
                audio = batch["logmel"].to(dev, non_blocking=True).unsqueeze(1)
            else:
                audio = self.logmel(batch["wave"].to(dev, non_blocking=True)).unsqueeze(1)
            if "audio_params" in batch:
                audio = spec_augment_batch(audio, batch["audio_params"].to(dev, non_blocking=True))
            if "valid" in batch:
                valid = batch["valid"].to(dev, non_blocking=True).bool().view(-1, 1, 1, 1)
                audio = audio.masked_fill(~valid, 0.0)
            out["audio"] = audio
        return out


def collate_clips(samples: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists, and flatten the failures of all samples; a batch
    that ``ClipDataset.__getitems__`` assembled itself passes through."""
    if isinstance(samples, dict):
        return samples
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if name == "failures":
            batch[name] = [f for v in values for f in v]
        elif isinstance(values[0], torch.Tensor):
            # default_collate stacks straight into shared memory inside a DataLoader worker,
            # saving the copy that sending a stacked tensor to the main process would make.
            batch[name] = default_collate(values)
        elif isinstance(values[0], np.ndarray):  # a clip's drawn augmentation parameters
            batch[name] = torch.from_numpy(np.stack(values))
        elif isinstance(values[0], (bool, int, float)):
            batch[name] = torch.tensor(values)
        else:
            batch[name] = values
    return batch


def worker_init(worker_id: int) -> None:
    """One thread per DataLoader worker (the workers are the parallelism), and a worker that
    dies with the process that started it (``xdc.processes.die_with_parent``)."""
    die_with_parent()
    torch.set_num_threads(1)


WORKER_START = "fork" if sys.platform.startswith("linux") else None
"""How DataLoader workers start: forked on Linux, whatever Python's default (a forkserver from
3.14): they share the dataset, its RAM cache included, copy-on-write instead of unpickling a copy
each, and they are children of the loop's process, which ``xdc.processes.die_with_parent``
needs (a forkserver's children outlive a killed parent). Elsewhere Python's default."""


def epoch_keys(
    rows: Sequence[int] | np.ndarray,
    num_samples: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> list[ClipKey]:
    """The clip keys of one epoch, a pure function of ``rng``'s stream (see ``xdc.seeds``).

    Without ``weights``: every row in a random order, repeated to ``num_samples``. With
    ``weights`` (one per row, e.g. cluster-balanced): ``num_samples`` rows drawn with replacement.
    """
    rows_arr = np.asarray(rows)
    if weights is None:
        reps = -(-num_samples // len(rows_arr))
        order = np.concatenate([rng.permutation(rows_arr) for _ in range(reps)])[:num_samples]
    else:
        p = np.asarray(weights, dtype=np.float64)
        order = rng.choice(rows_arr, size=num_samples, replace=True, p=p / p.sum())
    seeds = rng.integers(0, 2**62, size=num_samples)
    return [ClipKey(int(r), int(s)) for r, s in zip(order, seeds, strict=True)]


class KeySampler(Sampler[ClipKey]):
    """Yields a precomputed list of keys, this process's share when distributed.

    Training (the default): a strided share (``rank::world``) of the keys padded by wrapping
    around to a multiple of ``world_size`` — every rank gets ``ceil(n / world_size)`` keys, so
    every rank takes the same number of steps (DDP needs it); the padding repeats the first
    ``ceil(n / world) * world - n`` keys (the same clips, on other ranks). With ``contiguous``: a
    contiguous block without padding, the blocks' sizes differing by at most one (0 when ``n <
    world_size``): feature extraction and held-out sums use blocks, so that concatenating the
    shards in rank order gives the single-process order, which distributed k-means relies on, and
    no clip is counted twice. ``set_keys`` replaces the keys (the next epoch of a loader that
    is kept, with its workers, across epochs).
    """

    def __init__(
        self, keys: Sequence[ClipKey], rank: int = 0, world_size: int = 1, contiguous: bool = False
    ) -> None:
        self.rank, self.world_size, self.contiguous = rank, world_size, contiguous
        self.set_keys(keys)

    def set_keys(self, keys: Sequence[ClipKey]) -> None:
        """Yield this process's share of ``keys`` from now on."""
        keys = list(keys)
        n, rank, world = len(keys), self.rank, self.world_size
        if self.contiguous:
            self.keys = keys[rank * n // world : (rank + 1) * n // world]
        else:
            padded = -(-n // world) * world
            self.keys = [keys[i % n] for i in range(rank, padded, world)]

    def __iter__(self) -> Iterator[ClipKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def fixed_keys(rows: Sequence[int] | np.ndarray, num_clips: int = 1) -> list[ClipKey]:
    """Keys of ``num_clips`` uniformly spaced clips per row (evaluation and feature extraction)."""
    return [
        ClipKey(int(r), seed=0, clip=j, num_clips=num_clips) for r in rows for j in range(num_clips)
    ]


def clip_loader(
    dataset: ClipDataset,
    keys: Sequence[ClipKey],
    batch_size: int,
    *,
    workers: int | None = None,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    contiguous: bool = False,
) -> DataLoader:
    """The DataLoader every xdc loop uses: batches of ``dataset``'s clips of ``keys`` in key order
    (this process's share of them, see ``KeySampler``), ``collate_clips``, seeded workers.

    ``workers`` defaults to the dataset's ``data.num_workers``; ``pin_memory`` for a CUDA consumer.
    The workers persist across passes while the loader lives (``loader.sampler.set_keys`` gives
    it the keys of the next pass); they copy the dataset when first started, so a loader must be
    made anew after a change to the dataset (e.g. its ``replacement_pool``).
    """
    workers = dataset.config.num_workers if workers is None else workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=KeySampler(keys, rank, world_size, contiguous),
        num_workers=workers,
        collate_fn=collate_clips,
        worker_init_fn=worker_init,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        multiprocessing_context=WORKER_START if workers else None,
    )


class DeviceBatches:
    """Batches of a :func:`clip_loader` over a ``ClipDataset(batch_transforms=True)``, each
    finished by a :class:`BatchTransform` on its device as it is drawn: ``video`` and ``audio``
    on the device, the rest of the batch (``index``, ``valid``, …) on the CPU, pinned when the
    device is a GPU. ``len`` and ``set_keys`` as the loader's."""

    def __init__(self, loader: DataLoader, transform: BatchTransform) -> None:
        self.loader, self.transform = loader, transform

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield self.transform(batch)

    def __len__(self) -> int:
        return len(self.loader)

    def set_keys(self, keys: Sequence[ClipKey]) -> None:
        """The keys of the next pass (the workers and their copy of the dataset are kept)."""
        sampler = self.loader.sampler
        assert isinstance(sampler, KeySampler)
        sampler.set_keys(keys)


def device_loader(
    dataset: ClipDataset,
    keys: Sequence[ClipKey],
    batch_size: int,
    device: torch.device | str,
    **options: Any,
) -> DeviceBatches:
    """:func:`clip_loader` (``options`` are its keywords) whose batches are finished on ``device``
    (:class:`DeviceBatches`); pinned memory when ``device`` is a GPU. ``dataset`` must have been
    made with ``batch_transforms=True``."""
    if not dataset.batch_transforms:
        raise ValueError(
            "device_loader needs a ClipDataset(batch_transforms=True); this one finishes its "
            "clips itself: pass it to clip_loader"
        )
    device = torch.device(device)
    options.setdefault("pin_memory", device.type == "cuda")
    loader = clip_loader(dataset, keys, batch_size, **options)
    return DeviceBatches(loader, BatchTransform(dataset.config, device))
