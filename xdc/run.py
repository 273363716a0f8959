"""A run folder and what a job needs around its loop: the checked inputs, datasets, loaders,
device, and the reporting of skipped files.

Every input is checked before any work starts; each problem is one line naming the flag or file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xdc import atomic, optim
from xdc import distributed as dist
from xdc.config import PretrainConfig, cluster_k, config_diff, config_from_dict
from xdc.data.datasets import ClipDataset, ClipKey, DeviceBatches, device_loader
from xdc.data.manifest import MANIFEST_COLUMNS, SEGMENT_COLUMNS, Manifest, read_manifest
from xdc.errors import ConfigError, DataError
from xdc.methods import LABELS, MODALITIES, Method, get_method
from xdc.progress import inform

log = logging.getLogger(__name__)
CONFIG_NAME = "config.json"
RUN_INFO_NAME = "run.json"
FAILURES_NAME = "failures.txt"
ALLOW_DATA_CHANGE = "--allow-data-change"
"""The ``xdc pretrain`` flag (``allow_data_change=True`` in Python) that resumes a run on data
other than it was trained on."""
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")
"""``CUBLAS_WORKSPACE_CONFIG`` values under which cuBLAS is deterministic (CUDA's documentation)."""


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
    """Files reported as unreadable: by any process, once synchronised (``sync_failures``)."""
    view_set: ClipDataset | None = None  # training-style clips without replacement (cluster.views)
    notes: list[str] = field(default_factory=list)
    """What ``open_run`` noted about the run folder (a moved manifest, another world size)."""
    _unsynced: list[str] = field(default_factory=list)
    _recorded: set[str] = field(default_factory=set)  # in RUN/failures.txt

    def say(self, message: str) -> None:
        """Print on the main process only."""
        if dist.is_main():
            inform(message)

    def loader(
        self,
        dataset: ClipDataset,
        keys: Sequence[ClipKey],
        shard: bool = True,
        contiguous: bool = False,
    ) -> DeviceBatches:
        """Batches of exactly these keys (this process's share when ``shard``; a contiguous block
        of them when ``contiguous``, see ``KeySampler``), finished on the run's device
        (``device_loader``: augmentation and log-mel per batch there)."""
        rank, world = (dist.rank(), dist.world_size()) if shard else (0, 1)
        return device_loader(
            dataset,
            keys,
            self.config.train.batch_size,
            self.device,
            rank=rank,
            world_size=world,
            contiguous=contiguous,
        )

    def report_failures(self, failures: Sequence[str]) -> None:
        """Record files that failed to decode, each once, in RUN/failures.txt and on stderr.

        In one process at once; in a distributed run, the main process writes and prints the
        failures of every process at the next ``sync_failures`` (every checkpoint), since the
        processes meet the failures at different times and must not all append to one file.
        """
        new = [f for f in dict.fromkeys(failures) if f not in self.failures]
        if not new:
            return
        self.failures.update(new)
        if dist.is_distributed():
            self._unsynced.extend(new)
        else:
            self._record(new)

    def sync_failures(self) -> None:
        """Gather the failures every process met since the last call and record them on the main
        process (a collective: every process calls it at the same points)."""
        if not dist.is_distributed():
            return
        gathered = dist.all_gather_strings(self._unsynced)
        self._unsynced = []
        new = [f for f in dict.fromkeys(gathered) if f not in self._recorded]
        self.failures.update(new)
        if new and dist.is_main():
            self._record(new)
        self._recorded.update(new)

    def _record(self, new: list[str]) -> None:
        self._recorded.update(new)
        with (self.out / FAILURES_NAME).open(
            "a", encoding="utf-8", errors="backslashreplace"
        ) as fh:
            fh.writelines(f"{f}\n" for f in new)
        for f in new:
            print(
                f"xdc: skipped unreadable video {f} ({len(self._recorded)} so far)",
                file=sys.stderr,
            )


def open_run(
    config: PretrainConfig,
    data: str | Path,
    out: str | Path,
    split: str | None,
    device: str | None = None,
    progress: bool = True,
    allow_data_change: bool = False,
    extend: bool = False,
) -> RunContext:
    """Check every input, prepare ``out`` (config.json, run.json) and the datasets; no heavy
    work yet. An existing run is resumed only on the data it was trained on
    (``check_run_data``) unless ``allow_data_change``."""
    dev = resolve_device(device)  # before the process group: NCCL uses the current device
    dist.init_distributed(device=dev)
    method = get_method(config.method)
    manifest = read_manifest(data).select(split)
    train_set = ClipDataset(
        manifest, config.data, train=True, modalities=MODALITIES, batch_transforms=True
    )
    eval_set = ClipDataset(
        manifest,
        config.data,
        train=False,
        modalities=MODALITIES,
        replace_failed=False,
        batch_transforms=True,
    )
    n_videos = len(train_set)
    num_labels = len(manifest.label_names)
    check_sizes(config, method, manifest, n_videos, split)
    # Every input is valid: only now create the run folder and do work. Every process checks the
    # folder before the main one changes it, and uses it only once it is ready.
    out = Path(out)
    identity = data_identity(manifest, split)
    extension = check_run_folder(out, config, extend)
    info, notes = check_run_data(out, identity, allow_data_change)
    if extension:
        notes.append(extension)
    dist.barrier()
    if dist.is_main():
        create_run_folder(out, config, extend=extension is not None)
        atomic.write_json(out / RUN_INFO_NAME, info)
        for note in notes:
            inform(f"note: {note}")
    dist.barrier()
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
        notes=notes,
    )
    failures_file = out / FAILURES_NAME
    if failures_file.is_file():  # a resumed run: the files it already reported stay reported once
        text = failures_file.read_text(encoding="utf-8", errors="backslashreplace")
        ctx.failures.update(line for line in text.splitlines() if line)
        ctx._recorded.update(ctx.failures)
    if config.cluster.views > 1:
        ctx.view_set = ClipDataset(
            manifest,
            config.data,
            train=True,
            modalities=MODALITIES,
            replace_failed=False,
            batch_transforms=True,
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
    t = config.train
    if t.patience > 0 and t.val_fraction > 0 and round(t.val_fraction * n_videos) == 0:
        raise ConfigError(
            f"train.val_fraction={t.val_fraction:g} holds out none of the {n_videos} usable "
            f"videos ({where}), and train.patience={t.patience} needs held-out videos to stop "
            f"an iteration early; set train.val_fraction to at least {1 / n_videos:.3g} "
            "(one video), or train.patience=0 (every iteration runs train.max_epochs)"
        )
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


def check_run_folder(out: Path, config: PretrainConfig, extend: bool = False) -> str | None:
    """Check that ``out`` is new, empty, or a run with the same config (read-only).

    With ``extend`` one difference is allowed: more ``train.iterations`` than the run was made
    with, when the learning rate is ``constant`` after the warm-up. The iterations done are then
    exactly those of the longer run (the rate of a step does not depend on the run's length), so
    the run goes on: returns the note that says so (None otherwise).
    """
    path = out / CONFIG_NAME
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        # Keys added to xdc after the run was made take their defaults (the behaviour it had).
        with contextlib.suppress(ConfigError):
            saved = config_from_dict(saved).to_dict()
        diffs = config_diff(saved, config.to_dict())
        if diffs == ["train.iterations"] and extend:
            return _extension(out, int(saved["train"]["iterations"]), config)
        if diffs:
            more = ""
            if diffs == ["train.iterations"]:
                more = " (--extend lets a run go on to more iterations)"
            raise ConfigError(
                f"{out} holds a run with another config (differs in: {', '.join(diffs)}); "
                f"pass the same preset and overrides to resume it, or a new --out{more}"
            )
        return None
    # A kill during the first write of config.json leaves only that write's temporary file.
    leftovers = atomic.temporaries(path)
    if out.exists() and any(p not in leftovers for p in out.iterdir()):
        raise ConfigError(
            f"--out {out} exists and is not an xdc run folder; pass a new or empty folder"
        )
    return None


def _extension(out: Path, done: int, config: PretrainConfig) -> str:
    """The note of a run extended from ``done`` iterations to ``config.train.iterations``, or the
    error that says why it cannot be."""
    wanted = config.train.iterations
    if wanted < done:
        raise ConfigError(
            f"{out} was made with train.iterations={done}; a run cannot be shortened: pass "
            f"train.iterations={done} to resume it, or a new --out"
        )
    if config.train.schedule != "constant":
        raise ConfigError(
            f"{out} was made with train.iterations={done}; with train.schedule="
            f"{config.train.schedule} the rate of every step depends on the run's length, so "
            f"the iterations done are not those of a {wanted}-iteration run. Pass "
            f"train.iterations={done} to resume it, or a new --out"
        )
    return f"extending {out} from {done} to {wanted} iterations (train.iterations)"


def create_run_folder(out: Path, config: PretrainConfig, extend: bool = False) -> None:
    """Create ``out`` with config.json unless it holds one (after ``check_run_folder``);
    ``extend``: replace it (``check_run_folder`` allowed the longer run)."""
    path = out / CONFIG_NAME
    if path.is_file() and not extend:
        return
    for p in atomic.temporaries(path):
        p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, config.to_json() + "\n")


def manifest_hash(manifest: Manifest) -> str:
    """SHA-256 of what a run's pseudo-labels and clips depend on: the rows (in order) and their
    standard columns — path as written (relative paths survive a move of the data folder), label,
    split, duration, streams, sizes, and the segment when the manifest has segment columns — and
    the label mapping. Other extra columns do not count (a manifest without segments hashes as
    before they existed)."""
    columns = list(MANIFEST_COLUMNS)
    if any(row.get(c) for row in manifest.rows for c in SEGMENT_COLUMNS):
        columns += SEGMENT_COLUMNS
    content = {
        "columns": columns,
        "rows": [[row.get(c, "") for c in columns] for row in manifest.rows],
        "label_names": list(manifest.label_names),
    }
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode("utf-8")).hexdigest()


def data_identity(manifest: Manifest, split: str | None) -> dict[str, Any]:
    """What RUN/run.json records of the data a run trains on (``manifest`` is its split)."""
    return {
        "data": str(Path(manifest.source or "").resolve()),
        "manifest_sha256": manifest_hash(manifest),
        "split": split,
        "num_videos": len(manifest),
        "label_names": list(manifest.label_names),
        "world_size": dist.world_size(),
    }


def check_run_data(
    out: Path, identity: dict[str, Any], allow_data_change: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """Compare the data a run in ``out`` was trained on (RUN/run.json) with ``identity``.

    Returns the run.json to write and notes to print. A manifest whose content differs (its
    pseudo-labels index rows) or another split is refused with a ``ConfigError`` naming what
    differs unless ``allow_data_change``; a manifest that only moved (same content hash, another
    path) or another number of processes (``world_size``) is accepted with a note. Either way the
    new record is written and the previous one kept under ``history``.
    """
    path = out / RUN_INFO_NAME
    if not path.is_file():
        return dict(identity), []
    old = json.loads(path.read_text(encoding="utf-8"))
    history = list(old.pop("history", []))
    old_hash = old.get("manifest_sha256")
    diffs = []
    if old_hash is not None and old_hash != identity["manifest_sha256"]:
        diffs.append(
            f"manifest content (sha256 {old_hash[:12]} when trained, "
            f"{identity['manifest_sha256'][:12]} now: rows, paths, durations, labels or splits "
            "changed)"
        )
    if old.get("num_videos") is not None and old["num_videos"] != identity["num_videos"]:
        diffs.append(f"videos ({old['num_videos']} when trained, {identity['num_videos']} now)")
    if old.get("label_names") is not None and old["label_names"] != identity["label_names"]:
        gone = sorted(set(old["label_names"]) - set(identity["label_names"]))
        new = sorted(set(identity["label_names"]) - set(old["label_names"]))
        diffs.append(
            f"classes ({len(old['label_names'])} when trained, {len(identity['label_names'])} "
            f"now; removed: {', '.join(gone[:5]) or 'none'}; added: {', '.join(new[:5]) or 'none'})"
        )
    if old.get("split", None) != identity["split"]:
        diffs.append(f"split ({old.get('split')!r} when trained, {identity['split']!r} now)")
    old_world = old.get("world_size")
    rescaled = old_world is not None and old_world != identity["world_size"]
    moved = old.get("data") != identity["data"]
    if moved and (diffs or old_hash is None):
        unverified = "" if old_hash is not None else " (run.json has no content hash to compare)"
        diffs.insert(
            0, f"manifest path ({old.get('data')} when trained, {identity['data']} now{unverified})"
        )
    if diffs and not allow_data_change:
        raise ConfigError(
            f"{out} was trained on other data: {'; '.join(diffs)}. Its pseudo-labels and "
            "held-out videos index the rows it was trained on: pass the same --data and --split "
            f"to resume it, a new --out, or {ALLOW_DATA_CHANGE} to resume it anyway"
        )
    if old.get("num_videos") is not None and old["num_videos"] != identity["num_videos"]:
        raise ConfigError(
            f"{out} was trained on {old['num_videos']} videos and the data now has "
            f"{identity['num_videos']}: its pseudo-labels index those rows, so it cannot resume on "
            f"other rows, even with {ALLOW_DATA_CHANGE}; pass a new --out"
        )
    notes = []
    if diffs:
        notes.append(f"resuming {out} on changed data ({ALLOW_DATA_CHANGE}): {'; '.join(diffs)}")
    elif moved:
        notes.append(
            f"the manifest of {out} moved from {old.get('data')} to {identity['data']} "
            f"(same content, sha256 {identity['manifest_sha256'][:12]}); resuming"
        )
    if rescaled:
        notes.append(
            f"{out} was trained by {old_world} processes and resumes with "
            f"{identity['world_size']}; the clips of each epoch stay the same, but train.batch_size "
            f"is per process: the global batch is now {identity['world_size']} × train.batch_size, "
            "at the same learning rate"
        )
    info = dict(identity)
    if diffs or moved or rescaled:
        reason = "allow_data_change" if diffs else "moved" if moved else "world_size"
        history.append({**old, "replaced_by": reason})
    if history:
        info["history"] = history
    return info, notes


def read_run_info(run: str | Path) -> dict:
    """The manifest and split a run trained on (see ``data_identity`` and ``check_run_data``)."""
    path = Path(run) / RUN_INFO_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: {run} is not a run folder made by `xdc pretrain`")
    return json.loads(path.read_text(encoding="utf-8"))


def choose_device(
    requested: str | None, cuda_devices: int, local_rank: int = 0, local_world_size: int = 1
) -> torch.device:
    """The device of this process: ``requested`` (``--device``) checked against the machine.

    Args:
        requested: ``None`` (a GPU when there is one, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:K"``.
        cuda_devices: GPUs this process sees (``torch.cuda.device_count()``).
        local_rank, local_world_size: this process's index among the processes of its machine,
            and their number (torchrun's ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``).

    ``None`` and ``"cuda"`` mean GPU ``local_rank``. ``"cuda:K"`` is refused with several
    processes on a machine (they would all share GPU K). Raises ``ConfigError`` naming the flag.
    """
    if requested is None and cuda_devices == 0:
        return torch.device("cpu")
    dev = torch.device("cuda" if requested is None else requested)
    if dev.type != "cuda":
        return dev
    if cuda_devices == 0:
        raise ConfigError(
            f"--device {requested}: CUDA is not available on this machine; use --device cpu"
        )
    if dev.index is not None and local_world_size > 1:
        raise ConfigError(
            f"--device {requested} under torchrun with {local_world_size} processes on this "
            f"machine would put all of them on GPU {dev.index}; pass --device cuda (process "
            "LOCAL_RANK=i then uses GPU i), and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    index = local_rank if dev.index is None else dev.index
    if index >= cuda_devices:
        which = "LOCAL_RANK" if dev.index is None else "--device"
        raise ConfigError(
            f"{which} asks for GPU {index} but this process sees {cuda_devices} GPU(s); start at "
            "most one process per GPU (torchrun --nproc-per-node), or pass --device cpu"
        )
    return torch.device("cuda", index)


def resolve_device(device: str | None) -> torch.device:
    """``choose_device`` for this process; a CUDA device is made the current one."""
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dev = choose_device(device, cuda_devices, dist.local_rank(), dist.local_world_size())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def use_cudnn_benchmark(device: torch.device | None, deterministic: bool) -> bool:
    """Whether cuDNN should time its algorithms for each input shape and keep the fastest: on
    CUDA unless deterministic algorithms are asked for (the choice may differ between runs)."""
    return device is not None and device.type == "cuda" and not deterministic


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device | None = None) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the block when ``enabled``; otherwise, on a
    CUDA ``device``, ``torch.backends.cudnn.benchmark = True`` (``use_cudnn_benchmark``). The
    previous settings are restored afterwards, also on errors.

    On a CUDA ``device``, cuBLAS is deterministic only with ``CUBLAS_WORKSPACE_CONFIG`` set to
    ``:4096:8`` or ``:16:8`` before its first use: the block sets ``:4096:8`` when the variable is
    unset (and unsets it again afterwards), and refuses another value with a ``ConfigError``.
    """
    if not enabled:
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark or use_cudnn_benchmark(device, enabled)
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = benchmark
        return
    restore_env = False
    if device is not None and device.type == "cuda":
        value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if value is None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = DETERMINISTIC_CUBLAS[0]
            restore_env = True
        elif value not in DETERMINISTIC_CUBLAS:
            raise ConfigError(
                f"train.deterministic=true on CUDA needs CUBLAS_WORKSPACE_CONFIG="
                f"{DETERMINISTIC_CUBLAS[0]} (or {DETERMINISTIC_CUBLAS[1]}), but the environment "
                f"sets {value!r}; unset it (xdc then sets {DETERMINISTIC_CUBLAS[0]}), set one of "
                "those, or set train.deterministic=false"
            )
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
        if restore_env:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
