"""A run folder and what a job needs around its loop: the checked inputs, datasets, loaders,
device, and the reporting of skipped files.

Every input is checked before any work starts; each problem is one line naming the flag or file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from xdc import atomic, optim
from xdc import distributed as dist
from xdc.config import PretrainConfig, cluster_k, config_diff, config_from_dict
from xdc.data.datasets import ClipDataset, ClipKey, clip_loader
from xdc.data.manifest import Manifest, read_manifest
from xdc.errors import ConfigError, DataError
from xdc.methods import LABELS, MODALITIES, Method, get_method

log = logging.getLogger(__name__)
CONFIG_NAME = "config.json"
RUN_INFO_NAME = "run.json"
FAILURES_NAME = "failures.txt"


@dataclass
class RunContext:
    config: PretrainConfig
    method: Method
    out: Path
    manifest: Manifest
    train_set: ClipDataset
    eval_set: ClipDataset
    device: torch.device
    amp_dtype: torch.dtype | None
    progress: bool
    clips_per_epoch: int
    num_labels: int
    failures: set[str] = field(default_factory=set)
    view_set: ClipDataset | None = None  # training-style clips without replacement (cluster.views)

    def say(self, message: str) -> None:
        """Print on the main process only."""
        if dist.is_main():
            print(message, flush=True)

    def loader(
        self,
        dataset: ClipDataset,
        keys: Sequence[ClipKey],
        shard: bool = True,
        contiguous: bool = False,
    ) -> DataLoader:
        """A DataLoader over exactly these keys (this process's share when ``shard``; a
        contiguous block of them when ``contiguous``, see ``KeySampler``)."""
        rank, world = (dist.rank(), dist.world_size()) if shard else (0, 1)
        return clip_loader(
            dataset,
            keys,
            self.config.train.batch_size,
            pin_memory=self.device.type == "cuda",
            rank=rank,
            world_size=world,
            contiguous=contiguous,
        )

    def report_failures(self, failures: Sequence[str]) -> None:
        """Record files that failed to decode (each once) in RUN/failures.txt and on stderr."""
        new = [f for f in failures if f not in self.failures]
        if not new:
            return
        self.failures.update(new)
        with (self.out / FAILURES_NAME).open("a", encoding="utf-8") as fh:
            fh.writelines(f"{f}\n" for f in new)
        for f in new:
            print(
                f"xdc: skipped unreadable video {f} ({len(self.failures)} so far)", file=sys.stderr
            )


def open_run(
    config: PretrainConfig,
    data: str | Path,
    out: str | Path,
    split: str | None,
    device: str | None = None,
    progress: bool = True,
) -> RunContext:
    """Check every input, prepare ``out`` (config.json) and the datasets; no heavy work yet."""
    dist.init_distributed()
    method = get_method(config.method)
    manifest = read_manifest(data).select(split)
    train_set = ClipDataset(manifest, config.data, train=True, modalities=MODALITIES)
    eval_set = ClipDataset(
        manifest, config.data, train=False, modalities=MODALITIES, replace_failed=False
    )
    n_videos = len(train_set)
    num_labels = len(manifest.label_names)
    check_sizes(config, method, manifest, n_videos, split)
    dev = resolve_device(device)
    # Every input is valid: only now create the run folder and do work.
    out = Path(out)
    check_run_folder(out, config)
    if dist.is_main():
        write_run_info(out, manifest, split)
    if config.data.cache == "memory":
        eval_set.cache = train_set.build_cache(progress and dist.is_main())
    amp_dtype = optim.amp_dtype(dev, config.train.amp)
    per_epoch = config.train.clips_per_epoch or n_videos * config.data.clips_per_video
    ctx = RunContext(
        config,
        method,
        out,
        manifest,
        train_set,
        eval_set,
        dev,
        amp_dtype,
        progress and dist.is_main(),
        per_epoch,
        num_labels,
    )
    if config.cluster.views > 1:
        ctx.view_set = ClipDataset(
            manifest, config.data, train=True, modalities=MODALITIES, replace_failed=False
        )
        ctx.view_set.cache = eval_set.cache
    if train_set.excluded_no_audio:
        ctx.say(f"note: {train_set.excluded_no_audio} videos without audio are excluded")
    if train_set.excluded_no_video:
        ctx.say(f"note: {train_set.excluded_no_video} audio-only files (no video) are excluded")
    return ctx


def check_sizes(
    config: PretrainConfig, method: Method, manifest: Manifest, n_videos: int, split: str | None
) -> None:
    where = f"{len(manifest)} videos of split {split!r}" if split else f"{len(manifest)} videos"
    for clustering in method.clusterings:
        if clustering.name == LABELS:
            if not manifest.label_names or min(manifest.labels()) < 0:
                raise DataError(
                    f"{manifest.source}: --method supervised needs a label on every row of {where}; "
                    "fill the manifest's 'label' column or choose a self-supervised --method"
                )
            continue
        k = cluster_k(config.cluster, clustering.name)
        if k > n_videos:
            flag = "cluster.k" if k == config.cluster.k else f"cluster.k_{clustering.name}"
            raise ConfigError(
                f"{flag}={k} is larger than the {n_videos} usable videos ({where}); set {flag} below {n_videos}"
            )


def check_run_folder(out: Path, config: PretrainConfig) -> None:
    """Create ``out`` with config.json, or check that an existing run has the same config."""
    path = out / CONFIG_NAME
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        # Keys added to xdc after the run was made take their defaults (the behaviour it had).
        with contextlib.suppress(ConfigError):
            saved = config_from_dict(saved).to_dict()
        diffs = config_diff(saved, config.to_dict())
        if diffs:
            raise ConfigError(
                f"{out} holds a run with another config (differs in: {', '.join(diffs)}); "
                "pass the same preset and overrides to resume it, or a new --out"
            )
        return
    if out.exists() and any(out.iterdir()) and dist.is_main():
        raise ConfigError(
            f"--out {out} exists and is not an xdc run folder; pass a new or empty folder"
        )
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, config.to_json() + "\n")


def write_run_info(out: Path, manifest: Manifest, split: str | None) -> None:
    """RUN/run.json: which manifest and split the run trained on (its pseudo-labels index these
    rows), for the evaluation commands and the report."""
    info = {
        "data": str(Path(manifest.source or "").resolve()),
        "split": split,
        "num_videos": len(manifest),
        "label_names": list(manifest.label_names),
    }
    atomic.write_json(out / RUN_INFO_NAME, info)


def read_run_info(run: str | Path) -> dict:
    """The manifest and split a run trained on (see ``write_run_info``)."""
    path = Path(run) / RUN_INFO_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: {run} is not a run folder made by `xdc pretrain`")
    return json.loads(path.read_text(encoding="utf-8"))


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            local = dist.local_rank()
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device}: CUDA is not available on this machine; use --device cpu"
        )
    return dev


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the block when ``enabled``; the previous
    setting is restored afterwards, also on errors."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
