"""Clip datasets: the clip contract, determinism whatever the workers, rows without audio,
files that break after indexing, and the RAM cache cutting the same clips as the decoder."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import tiny_config
from tests.procs import gone
from xdc import seeds
from xdc.data.datasets import (
    BatchTransform,
    ClipDataset,
    ClipKey,
    KeySampler,
    clip_loader,
    collate_clips,
    device_loader,
    epoch_keys,
    fixed_keys,
    worker_init,
)
from xdc.data.decode import decode_clip
from xdc.data.manifest import read_manifest, write_manifest
from xdc.errors import DataError
from xdc.models.video import VIDEO_MEAN, VIDEO_STD, normalize_video
from xdc.runlog import read_metrics
from xdc.training import pretrain


def _dataset(manifest_path: Path, train: bool = True, **overrides: object) -> ClipDataset:
    config = tiny_config("xdc", **overrides).data
    return ClipDataset(read_manifest(manifest_path), config, train=train)


def _batches(dataset: ClipDataset, keys: list[ClipKey], workers: int) -> list[dict]:
    loader = DataLoader(
        dataset, batch_size=4, sampler=KeySampler(keys), num_workers=workers,
        collate_fn=collate_clips, worker_init_fn=worker_init,
    )  # fmt: skip
    return list(loader)


def test_clip_dict_contract(demo_manifest: Path) -> None:
    ds = _dataset(demo_manifest)
    sample = ds[ClipKey(ds.rows[0], seed=1)]
    cfg = ds.config
    assert sample["video"].dtype == torch.uint8
    assert tuple(sample["video"].shape) == (3, cfg.num_frames, cfg.crop_size, cfg.crop_size)
    assert tuple(sample["audio"].shape) == (1, cfg.n_mels, cfg.audio_frames)
    assert sample["audio"].dtype == torch.float32 and torch.isfinite(sample["audio"]).all()
    assert sample["index"] == ds.rows[0] and sample["label"] >= 0
    assert sample["path"].endswith(".mp4") and sample["failures"] == []
    assert sample["start_sec"] >= 0.0


def test_encoders_normalise_uint8_clips_with_the_kinetics_statistics() -> None:
    clip = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    out = normalize_video(clip)
    mean = torch.tensor(VIDEO_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(VIDEO_STD).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(out, (clip.float() / 255 - mean) / std)
    assert normalize_video(out) is out, "float clips are taken as normalised already"


def test_loader_is_deterministic_for_a_seed_whatever_the_workers(demo_manifest: Path) -> None:
    ds = _dataset(demo_manifest)
    keys = epoch_keys(ds.rows, 12, seeds.rng(3, "sample", 0, 1))
    assert keys == epoch_keys(ds.rows, 12, seeds.rng(3, "sample", 0, 1))
    assert keys != epoch_keys(ds.rows, 12, seeds.rng(3, "sample", 0, 2))
    alone, pooled = _batches(ds, keys, 0), _batches(ds, keys, 2)
    for a, b in zip(alone, pooled, strict=True):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])
        assert torch.equal(a["index"], b["index"])
    # Training draws vary the clip (augmentation); the same key always gives the same clip.
    k = keys[0]
    assert torch.equal(ds[k]["video"], ds[k]["video"])
    assert not torch.equal(ds[k]["video"], ds[ClipKey(k.row, k.seed + 1)]["video"])


def test_rows_without_audio_are_excluded_and_counted(demo_manifest: Path, tmp_path: Path) -> None:
    manifest = read_manifest(demo_manifest)
    rows = [dict(r) for r in manifest.rows]
    for r in rows[:4]:
        r["has_audio"] = "0"
    for r in rows:
        r["path"] = str(manifest.root / r["path"])
    path = write_manifest(rows, tmp_path / "m.csv")
    ds = _dataset(path)
    assert ds.excluded_no_audio == 4 and len(ds) == len(rows) - 4
    assert not set(range(4)) & set(ds.rows)


def _copy_demo(demo_manifest: Path, dst: Path) -> Path:
    shutil.copytree(demo_manifest.parent, dst)
    return dst / "manifest.csv"


def test_file_corrupted_after_indexing_is_replaced_and_reported(
    demo_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest_path = _copy_demo(demo_manifest, tmp_path / "data")
    manifest = read_manifest(manifest_path)
    broken = manifest.path(0)
    broken.write_bytes(broken.read_bytes()[:300])  # truncated after `xdc index` probed it
    ds = _dataset(manifest_path)
    sample = ds[ClipKey(0, seed=5)]
    assert sample["index"] != 0, "another video was drawn instead"
    assert len(sample["failures"]) == 1 and str(broken) in sample["failures"][0]
    # In a run: the failure is reported once, in RUN/failures.txt and on stderr, and training goes on.
    out = tmp_path / "run"
    pretrain(tiny_config("xdc", data__cache="none"), manifest_path, out, progress=False)
    assert (out / "failures.txt").read_text().count(str(broken)) == 1
    assert "skipped unreadable video" in capsys.readouterr().err
    assert read_metrics(out, "finished")


def test_replacement_of_a_broken_file_is_a_function_of_the_key_alone(
    demo_manifest: Path, tmp_path: Path
) -> None:
    """A broken file's replacement (row, clip, augmentation) is the same whether the clips are
    loaded by 0 or 2 workers, and whether the dataset saw the failure before (a long-lived
    process) or not (a fresh one, as after a resume)."""
    manifest_path = _copy_demo(demo_manifest, tmp_path / "data")
    broken = read_manifest(manifest_path).path(1)
    broken.write_bytes(broken.read_bytes()[:300])
    fresh = _dataset(manifest_path, data__augment="strong_hue")
    keys = epoch_keys(fresh.rows, 16, seeds.rng(0, "sample", 0, 0))
    keys = [ClipKey(1, k.seed) if i % 2 == 0 else k for i, k in enumerate(keys)]  # broken: 8 of 16
    seasoned = _dataset(manifest_path, data__augment="strong_hue")
    for key in [*(ClipKey(1, 1000 + s) for s in range(5)), *keys[:4]]:  # met the broken file
        assert seasoned[key]["index"] != 1
    runs = {
        "fresh, 0 workers": _batches(fresh, keys, 0),
        "fresh, 2 workers": _batches(_dataset(manifest_path, data__augment="strong_hue"), keys, 2),
        "seen the failure": _batches(seasoned, keys, 0),
    }
    reference = runs.pop("fresh, 0 workers")
    indices = torch.cat([b["index"] for b in reference])
    assert not (indices == 1).any() and len(set(indices[::2].tolist())) > 1
    for name, batches in runs.items():
        for a, b in zip(reference, batches, strict=True):
            assert torch.equal(a["index"], b["index"]), name
            assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"]), name
            assert a["failures"] == b["failures"], name
    # Each draw of the broken file reports it, whoever loads it: the run counts it once.
    assert sum(str(broken) in f for b in reference for f in b["failures"]) >= 8


def test_too_many_failures_in_a_row_is_a_clear_error(demo_manifest: Path, tmp_path: Path) -> None:
    manifest_path = _copy_demo(demo_manifest, tmp_path / "data")
    manifest = read_manifest(manifest_path)
    for i in range(len(manifest)):
        manifest.path(i).write_bytes(b"not a video any more")
    ds = _dataset(manifest_path)
    with pytest.raises(DataError, match="in a row failed to decode"):
        ds[ClipKey(0, seed=0)]


def test_ram_cache_cuts_the_same_clips_as_the_decoder(demo_manifest: Path) -> None:
    ds = _dataset(demo_manifest, train=False)
    cache = ds.build_cache(progress=False)
    for row in ds.rows[:4]:
        for start in (0.0, 0.1, 0.45, 5.0):  # 5.0 is past the end: moved back to fit
            cached = cache.clip(row, start)
            decoded = decode_clip(ds.manifest.path(row), start, ds.spec, ds.manifest.duration(row))
            assert cached.start_sec == pytest.approx(decoded.start_sec)
            np.testing.assert_array_equal(cached.frame_times, decoded.frame_times)
            np.testing.assert_array_equal(cached.frames, decoded.frames)
            assert cached.audio_start_sec == pytest.approx(decoded.audio_start_sec, abs=1e-6)
            assert cached.audio is not None and decoded.audio is not None
            # The decoder resamples a chunk that starts at the seek point, the cache the whole
            # track: the two 16 kHz grids differ by a fraction of a sample, so compare what the
            # encoder sees, the log-mel, rather than the samples.
            a, b = (
                ds.logmel(torch.from_numpy(cached.audio)),
                ds.logmel(torch.from_numpy(decoded.audio)),
            )
            assert (a - b).abs().mean() < 0.05 and (a - b).abs().max() < 1.0


def test_ram_cache_log_mels_are_the_log_mels_of_the_window_on_the_hop_grid(
    demo_manifest: Path,
) -> None:
    """A training dataset's cache holds each track's log-mel; a clip's is a slice of it: exactly
    the log-mel of the audio window moved to the track's hop grid (at most half a hop from where
    the decoder puts it), zeros outside the track included. Evaluation clips keep the waveform."""
    ds = _dataset(demo_manifest, train=True)
    cache = ds.build_cache(progress=False)
    lm, n = ds.logmel, int(ds.spec.audio_samples or 0)
    for row in ds.rows[:3]:
        track = cache.videos[row].audio
        assert track is not None
        padded = np.concatenate([np.zeros(n, np.float32), track, np.zeros(n, np.float32)])
        for start in (0.0, 0.013, 0.1, 0.37, 5.0):  # 5.0 is past the end: moved back to fit
            sliced = cache.clip(row, start, ds.spec, lm)
            plain = cache.clip(row, start, ds.spec)
            assert sliced.audio is None and sliced.logmel is not None
            np.testing.assert_array_equal(sliced.frames, plain.frames)
            shift = sliced.audio_start_sec - plain.audio_start_sec
            assert abs(shift) <= lm.hop_length / 2 / ds.spec.sample_rate + 1e-9
            first = round(sliced.audio_start_sec * ds.spec.sample_rate) + n  # index in `padded`
            expected = lm(torch.from_numpy(padded[first : first + n]))
            assert sliced.logmel.shape == (ds.config.n_mels, ds.config.audio_frames)
            torch.testing.assert_close(torch.from_numpy(sliced.logmel), expected, atol=1e-4, rtol=0)
    keys = epoch_keys(ds.rows, 6, seeds.rng(0, "sample", 0, 0))
    assert all(ds[k]["audio"].shape == (1, ds.config.n_mels, ds.config.audio_frames) for k in keys)
    # A cache whose log-mels another transform made is not sliced; evaluation clips are not either.
    other = _dataset(demo_manifest, train=True, data__n_mels=32)
    other.cache = cache
    assert other[keys[0]]["audio"].shape[1] == 32
    evaluation = _dataset(demo_manifest, train=False)
    evaluation.cache = cache
    key = ClipKey(ds.rows[0], seed=0, clip=0)
    clip = cache.clip(ds.rows[0], evaluation.clip_start(ds.rows[0], key, None), evaluation.spec)  # type: ignore[arg-type]
    torch.testing.assert_close(
        evaluation[key]["audio"][0], lm(torch.from_numpy(clip.audio)), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("train", [True, False])
def test_batch_transform_takes_the_cached_log_mels_as_the_per_clip_path_does(
    demo_manifest: Path, train: bool
) -> None:
    config = tiny_config("xdc", data__augment="strong_hue", data__spec_augment=True).data
    manifest = read_manifest(demo_manifest)
    one_by_one = ClipDataset(manifest, config, train=train)
    deferred = ClipDataset(manifest, config, train=train, batch_transforms=True)
    one_by_one.cache = deferred.build_cache(progress=False)
    keys = epoch_keys(deferred.rows, 8, seeds.rng(0, "sample", 0, 0))
    if not train:
        keys = [ClipKey(k.row, 0, clip=0) for k in keys]
    raw = collate_clips([deferred[k] for k in keys])
    assert ("logmel" in raw) == train and ("wave" in raw) != train
    batched = BatchTransform(config)(raw)
    for i, key in enumerate(keys):
        alone = one_by_one[key]
        assert torch.equal(batched["video"][i], alone["video"])
        torch.testing.assert_close(batched["audio"][i], alone["audio"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"data__augment": "strong_hue", "data__spec_augment": True},
        {"data__augment": "none", "data__spec_augment": False, "data__train_frames": 3},
    ],
)
def test_a_training_batch_from_the_cache_is_assembled_as_collate_would_make_it(
    demo_manifest: Path, tmp_path: Path, options: dict[str, object]
) -> None:
    """``ClipDataset.__getitems__`` assembles a training batch of cached rows itself: the tensors,
    dtypes and lists ``collate_clips`` makes of the clips one by one, whatever the loader's
    workers; a batch with a row the cache could not hold is made clip by clip."""
    manifest_path, broken = _broken_copy(demo_manifest, tmp_path)
    config = tiny_config("xdc", data__flip=True, **options).data
    ds = ClipDataset(read_manifest(manifest_path), config, train=True, batch_transforms=True)
    ds.build_cache(progress=False)
    keys = epoch_keys([r for r in ds.rows if r != broken], 8, seeds.rng(0, "sample", 0, 0))
    assembled = ds.__getitems__(keys)
    assert isinstance(assembled, dict), "the batch was assembled in place"
    one_by_one = collate_clips([ds[k] for k in keys])
    assert list(assembled) == list(one_by_one)
    for name, value in one_by_one.items():
        if isinstance(value, torch.Tensor):
            assert assembled[name].dtype == value.dtype, name
            assert torch.equal(assembled[name], value), name
        else:
            assert assembled[name] == value, name
    loaded = next(iter(device_loader(ds, keys, 8, "cpu", workers=2)))
    assert torch.equal(loaded["video"], BatchTransform(config)(assembled)["video"])
    with_broken = [*keys[:3], ClipKey(broken, seed=3)]
    assert isinstance(ds.__getitems__(with_broken), list)
    evaluation = ClipDataset(ds.manifest, config, train=False, batch_transforms=True)
    evaluation.cache = ds.cache
    assert isinstance(evaluation.__getitems__(fixed_keys(evaluation.rows[:4])), list)


def _broken_copy(demo_manifest: Path, tmp_path: Path) -> tuple[Path, int]:
    manifest_path = _copy_demo(demo_manifest, tmp_path / "data")
    broken = read_manifest(manifest_path).path(2)
    broken.write_bytes(broken.read_bytes()[:300])
    return manifest_path, 2


@pytest.mark.parametrize("train", [True, False])
def test_batch_transform_makes_the_clips_the_dataset_makes_one_by_one(
    demo_manifest: Path, tmp_path: Path, train: bool
) -> None:
    """Augmentation, log-mel and SpecAugment done per batch (``batch_transforms=True`` and a
    ``BatchTransform``, as the training loop does on its device) give the clips of the per-clip
    path, whatever the batch holds: a clip's parameters come from its own key. A file that fails
    to load gives zeros either way."""
    manifest_path, broken = _broken_copy(demo_manifest, tmp_path)
    options = {"data__augment": "strong_hue", "data__spec_augment": True}
    config = tiny_config("xdc", **options).data
    manifest = read_manifest(manifest_path)
    one_by_one = ClipDataset(manifest, config, train=train, replace_failed=False)
    deferred = ClipDataset(
        manifest, config, train=train, replace_failed=False, batch_transforms=True
    )
    keys = epoch_keys(one_by_one.rows, 10, seeds.rng(0, "sample", 0, 0))
    keys[3] = ClipKey(broken, seed=7, clip=-1 if train else 0)
    if not train:
        keys = [ClipKey(k.row, 0, clip=0) for k in keys]
    raw = collate_clips([deferred[k] for k in keys])
    assert "video" not in raw and "audio" not in raw, "raw samples cannot pass for finished ones"
    assert ("video_params" in raw) == train and ("audio_params" in raw) == train
    batched = BatchTransform(config)(raw)
    for i, key in enumerate(keys):
        alone = one_by_one[key]
        assert torch.equal(batched["video"][i], alone["video"]), key
        torch.testing.assert_close(batched["audio"][i], alone["audio"], atol=1e-5, rtol=1e-5)
        assert batched["index"][i] == alone["index"]
    assert (
        not batched["valid"][3] and not batched["video"][3].any() and not batched["audio"][3].any()
    )
    # A clip's augmentation does not depend on the batch it is in.
    half = BatchTransform(config)(collate_clips([deferred[k] for k in keys[5:]]))
    assert torch.equal(half["video"], batched["video"][5:])
    torch.testing.assert_close(half["audio"], batched["audio"][5:], atol=1e-5, rtol=1e-5)
    if train:  # the strong augmentation and SpecAugment did change the clips
        config = tiny_config("xdc", data__augment="none").data
        plain = ClipDataset(manifest, config, train=True, replace_failed=False)
        assert not torch.equal(plain[keys[0]]["video"], batched["video"][0])


@pytest.mark.parametrize("batch_transforms", [False, True])
def test_a_clip_that_fails_has_the_frames_of_one_that_loads(
    demo_manifest: Path, tmp_path: Path, batch_transforms: bool
) -> None:
    """With ``data.train_frames``, the blank views of a file that fails are as long as a loaded
    clip's, so the two stack into one batch (as ``cluster.views`` > 1 needs: no replacement)."""
    manifest_path, broken = _broken_copy(demo_manifest, tmp_path)
    config = tiny_config("xdc", data__train_frames=3).data
    ds = ClipDataset(
        read_manifest(manifest_path), config, train=True, replace_failed=False,
        batch_transforms=batch_transforms,
    )  # fmt: skip
    good, bad = ds[ClipKey(0, seed=1, clip=-1)], ds[ClipKey(broken, seed=1, clip=-1)]
    assert good["valid"] and not bad["valid"]
    batch = collate_clips([good, bad])
    if batch_transforms:
        batch = BatchTransform(config)(batch)
    assert batch["video"].shape[2] == 3 and not batch["video"][1].any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_batch_transform_ignores_the_callers_autocast(
    demo_manifest: Path, dtype: torch.dtype
) -> None:
    """Feature extraction iterates its loader inside the model's autocast region: the batch's
    warp, colour and log-mel still run in float32, so the clustered clips are the trained ones."""
    config = tiny_config("xdc", data__augment="strong_hue", data__spec_augment=True).data
    ds = ClipDataset(read_manifest(demo_manifest), config, train=True, batch_transforms=True)
    raw = collate_clips([ds[k] for k in epoch_keys(ds.rows, 8, seeds.rng(0, "sample", 0, 0))])
    transform = BatchTransform(config)
    plain = transform(raw)
    with torch.autocast("cpu", dtype=dtype):
        under_autocast = transform(raw)
    assert under_autocast["audio"].dtype == torch.float32
    assert torch.equal(under_autocast["video"], plain["video"])
    assert torch.equal(under_autocast["audio"], plain["audio"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_transform_on_the_gpu_matches_the_cpu(demo_manifest: Path) -> None:
    config = tiny_config("xdc", data__augment="strong_hue", data__spec_augment=True).data
    ds = ClipDataset(read_manifest(demo_manifest), config, train=True, batch_transforms=True)
    raw = collate_clips([ds[k] for k in epoch_keys(ds.rows, 8, seeds.rng(0, "sample", 0, 0))])
    cpu, gpu = BatchTransform(config)(raw), BatchTransform(config, "cuda")(raw)
    assert gpu["video"].device.type == "cuda"
    assert (cpu["video"].int() - gpu["video"].cpu().int()).abs().max() <= 1  # rounding to uint8
    torch.testing.assert_close(gpu["audio"].cpu(), cpu["audio"], atol=1e-3, rtol=1e-4)


def test_device_loader_keeps_its_workers_across_passes(demo_manifest: Path) -> None:
    """One loader for every epoch of an iteration: the second pass runs on the workers of the
    first, with the new keys, and gives what a fresh loader gives."""
    config = tiny_config("xdc", data__augment="strong").data
    ds = ClipDataset(read_manifest(demo_manifest), config, train=True, batch_transforms=True)
    first = epoch_keys(ds.rows, 8, seeds.rng(0, "sample", 0, 0))
    second = epoch_keys(ds.rows, 12, seeds.rng(0, "sample", 0, 1))
    loader = device_loader(ds, first, 4, "cpu", workers=2)
    assert len(list(loader)) == 2
    workers = [w.pid for w in loader.loader._iterator._workers]  # type: ignore[union-attr]
    loader.set_keys(second)
    again = list(loader)
    assert [w.pid for w in loader.loader._iterator._workers] == workers  # type: ignore[union-attr]
    assert all(w.is_alive() for w in loader.loader._iterator._workers)  # type: ignore[union-attr]
    fresh = list(device_loader(ds, second, 4, "cpu", workers=0))
    assert len(again) == len(fresh) == 3
    for a, b in zip(again, fresh, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
        torch.testing.assert_close(a["audio"], b["audio"])
    with pytest.raises(ValueError, match="batch_transforms=True"):
        device_loader(_dataset(demo_manifest), first, 4, "cpu")


# A parent that starts two workers the way DataLoader does (multiprocessing, fork), then is
# SIGKILLed: ``armed`` asked to die with it before; ``late`` asks only after it is gone (the window
# between a worker's start and torch's own watch of its parent). Prints the children's PIDs.
ORPHANS = """
import multiprocessing as mp, os, signal, sys, time
from pathlib import Path
from xdc.processes import die_with_parent
d = Path(sys.argv[1])
def armed():
    die_with_parent(); (d / "armed").touch(); time.sleep(120)
def late():
    while not (d / "go").exists(): time.sleep(0.01)
    die_with_parent(); time.sleep(120)
ctx = mp.get_context("fork")
kids = [ctx.Process(target=f) for f in (armed, late)]
for k in kids: k.start()
print(*(k.pid for k in kids), flush=True)
while not (d / "armed").exists(): time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_with_a_parent_killed_before_or_during_their_start(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHANS, str(tmp_path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert parent.stdout is not None
    pids: list[int] = []
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]  # the children keep the pipe
        armed, late = pids
        assert parent.wait(60) == -signal.SIGKILL
        assert gone(armed, within=5), "a worker outlived the parent it asked to die with"
        assert not gone(late, within=0.2)  # still waiting to start, its parent already gone
        (tmp_path / "go").touch()
        assert gone(late, within=5), "a worker whose parent ended before it asked kept running"
    finally:
        parent.kill()
        parent.stdout.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# A parent whose ``xdc.data.pool.map_files`` workers (``xdc index``, ``xdc prepare``) are busy on
# files when it is SIGKILLed. Prints nothing; each worker writes its PID to a file.
POOL = """
import os, signal, sys, time
from pathlib import Path
from xdc.data.pool import map_files
d = Path(sys.argv[1])
def work(i):
    (d / f"worker{i}").write_text(str(os.getpid())); time.sleep(120)
for _ in map_files(work, [0, 1], workers=2, on_error=lambda item, detail: None):
    pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_process_pool_workers_end_with_a_killed_parent(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with subprocess.Popen([sys.executable, "-c", POOL, str(tmp_path)], env=env) as parent:
        try:
            deadline = time.monotonic() + 60
            while len(list(tmp_path.glob("worker*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            pids = [int(p.read_text()) for p in sorted(tmp_path.glob("worker*"))]
            assert len(pids) == 2, "the pool's workers never started"
            parent.kill()
            parent.wait(10)
            assert all(gone(pid, within=5) for pid in pids), "a pool worker outlived its parent"
        finally:
            parent.kill()
            for pid in [int(p.read_text()) for p in tmp_path.glob("worker*") if p.read_text()]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class _ParentDeathSignal(torch.utils.data.Dataset):
    """One item: the signal Linux sends this process when its parent ends (PR_GET_PDEATHSIG)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> int:
        value = ctypes.c_int(0)
        assert ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0) == 0  # PR_GET_PDEATHSIG
        return value.value


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_clip_loader_workers_are_forked_and_die_with_their_parent(demo_manifest: Path) -> None:
    """xdc's loaders start their workers by fork, each asking to be killed with its parent
    before torch's own watch begins: a real worker, with ``clip_loader``'s settings, says so."""
    ds = _dataset(demo_manifest, train=False)
    loader = clip_loader(ds, fixed_keys(ds.rows[:2]), 2, workers=1)
    assert loader.multiprocessing_context.get_start_method() == "fork"
    probe = DataLoader(
        _ParentDeathSignal(), num_workers=1, worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
    )  # fmt: skip
    assert [int(b) for b in probe] == [signal.SIGKILL]
    assert [int(b) for b in DataLoader(_ParentDeathSignal(), num_workers=1)] == [0]
