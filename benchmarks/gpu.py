"""GPU-path benchmark: training clips/s and MFU of the paper's model, and the loader's clips/s
per CPU core.

    .venv/bin/python benchmarks/gpu.py                  # a few minutes on one GPU
    .venv/bin/python benchmarks/gpu.py --peak-tflops 312  # a GPU missing from PEAK_TFLOPS
    .venv/bin/python benchmarks/gpu.py --quick --json rows.jsonl  # smoke run; rows as JSON lines

On a GPU: the ``paper-kinetics`` model (R(2+1)D-18 on 8×112×112 clips, ResNet-18 on 40×100
log-mel, XDC's two heads at K = 256) trained as ``xdc pretrain`` trains it — mixed precision
(bf16 from compute capability 8.0, else fp16), channels_last_3d, augmentation and log-mel per
batch on the GPU (``BatchTransform``, here with ``data.augment=strong``) — on batches already in
GPU memory, so that the loader does not count. FLOPs of one step (forward and backward) are
counted with ``torch.utils.flop_counter.FlopCounterMode``; MFU is the achieved FLOP/s over the
GPU's dense bf16/fp16 tensor peak (``PEAK_TFLOPS`` by device name, or ``--peak-tflops``).

The loader row: ``ClipDataset`` + ``clip_loader`` (decode, crop, flip, drawing the augmentation)
over demo videos at the preset's frame size, with ``--workers`` processes; clips/s divided by
the workers is what one CPU core feeds. A GPU step needs ``training clips/s ÷ per-core clips/s``
cores to be fed.

On a CPU the same measurements run on the ``tiny`` preset (no MFU: no peak is known), so that the
script can be smoke-tested anywhere (tests/test_training.py runs it with the smallest settings).
``--quick`` sets the smallest settings; ``--json PATH`` appends the rows in the schema of
``benchmarks/jsonrows.py`` (read by ``benchmarks/table.py``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jsonrows import append_rows, make_row  # noqa: E402

from xdc import optim  # noqa: E402
from xdc.allocator import keep_heap  # noqa: E402
from xdc.config import PretrainConfig, build_config  # noqa: E402
from xdc.data.audio import LogMel  # noqa: E402
from xdc.data.datasets import (  # noqa: E402
    BatchTransform,
    ClipDataset,
    clip_loader,
    epoch_keys,
)
from xdc.data.demo import generate_demo_data  # noqa: E402
from xdc.data.manifest import read_manifest  # noqa: E402
from xdc.data.transforms import (  # noqa: E402
    SPEC_AUGMENT_PARAMS,
    STRONG_AUGMENT_PARAMS,
    draw_strong_augment,
)
from xdc.deep_clustering import build_model  # noqa: E402
from xdc.encoders import use_fast_layout  # noqa: E402
from xdc.methods import get_method  # noqa: E402

QUICK = {"batch_size": 4, "steps": 2, "warmup": 1, "workers": 1, "loader_clips": 12}

PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    # Dense bf16/fp16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets; the first name found
    # in the device name as a whole word wins (so "H100 PCIe" before "H100"; "A10" is not "A10G"
    # nor "A100", "L4" not "L40"). An unlisted GPU: pass --peak-tflops.
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("V100", 125.0),
    ("T4", 65.0),
)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """The device's peak (``override`` first); None on a CPU or an unknown GPU."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def peak_for_name(name: str) -> float | None:
    """The listed peak of a device name such as ``NVIDIA A100-SXM4-80GB``; None if unlisted."""
    for key, peak in PEAK_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name):
            return peak
    return None


def device_batch(config: PretrainConfig, batch_size: int, device: torch.device) -> dict:
    """A raw batch as ``ClipDataset(batch_transforms=True)`` collates it, on ``device``."""
    d = config.data
    frames = d.train_frames or d.num_frames
    rng = np.random.default_rng(0)
    batch = {
        "video_raw": torch.randint(0, 256, (batch_size, 3, frames, d.crop_size, d.crop_size)),
        "wave": torch.randn(batch_size, LogMel(d.sample_rate).num_samples(d.audio_frames)) / 10,
        "valid": torch.ones(batch_size, dtype=torch.bool),
    }
    batch["video_raw"] = batch["video_raw"].to(torch.uint8)
    if d.augment != "none":
        hue = d.augment == "strong_hue"
        batch["video_params"] = torch.from_numpy(
            draw_strong_augment(rng.random((batch_size, STRONG_AUGMENT_PARAMS)), hue)
        )
    if d.spec_augment:
        batch["audio_params"] = torch.zeros(batch_size, SPEC_AUGMENT_PARAMS, dtype=torch.int64)
    return {k: v.to(device) for k, v in batch.items()}


def time_training(config: PretrainConfig, device: torch.device, args: argparse.Namespace) -> dict:
    """Clips/s and FLOPs per step of training steps on batches held on ``device``."""
    method = get_method(config.method)
    model = build_model(config, method, 0, device)
    if config.train.channels_last:  # as the loop does
        use_fast_layout(dict(model.encoders), device)
    dtype = optim.amp_dtype(device, config.train.amp)
    optimizer = optim.sgd(model.parameters(), config.train)
    scaler = optim.grad_scaler(dtype)
    transform = BatchTransform(config.data, device)
    raw = device_batch(config, args.batch_size, device)
    targets = {  # each head's from its own K (cluster.k_video / k_audio may differ)
        name: torch.randint(0, head.num_classes, (args.batch_size,), device=device)
        for name, head in model.heads.items()
    }
    train_model = torch.compile(model) if args.compile else model

    def step(net: torch.nn.Module) -> None:
        batch = transform(raw)
        with optim.autocast(device, dtype):
            logits = net({m: batch[m] for m in ("video", "audio")})
            loss = sum(F.cross_entropy(v.float(), targets[n]) for n, v in logits.items())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # type: ignore[arg-type]
        scaler.step(optimizer)
        scaler.update()

    model.train()
    # FLOPs are counted on the eager model: a compiled one under FlopCounterMode may count
    # nothing or fall back to eager for the timed steps.
    with FlopCounterMode(display=False) as counter:
        step(model)
    for _ in range(args.warmup):
        step(train_model)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(train_model)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "clips_per_s": args.steps * args.batch_size / seconds,
        "flops_per_step": counter.get_total_flops(),
        "step_s": seconds / args.steps,
        "dtype": str(dtype).replace("torch.", "") if dtype else "float32",
    }


def time_loader(config: PretrainConfig, manifest: Path, args: argparse.Namespace) -> float:
    """Clips/s of the training loader with ``args.workers`` workers (after its first batch)."""
    dataset = ClipDataset(
        read_manifest(manifest).select("train"), config.data, train=True, batch_transforms=True
    )
    keys = epoch_keys(dataset.rows, args.loader_clips, np.random.default_rng(0))
    loader = clip_loader(dataset, keys, args.batch_size, workers=args.workers)
    n, start = 0, 0.0
    for i, batch in enumerate(loader):
        if i == 0:
            start = time.perf_counter()
            continue
        n += batch["video_raw"].shape[0]
    return n / max(1e-9, time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", help="default: paper-kinetics on a GPU, tiny on a CPU")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, TFLOP/s")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--loader-clips", type=int, default=256, help="clips the loader loads")
    parser.add_argument("--data", help="a manifest to load (default: demo videos made here)")
    parser.add_argument("--quick", action="store_true", help="smallest settings: a smoke run")
    parser.add_argument("--json", help="append the rows to this JSON-lines file")
    args = parser.parse_args()
    keep_heap()  # as the xdc command does (xdc.allocator)
    if args.quick:  # the quick settings replace the defaults; flags given still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset or ("paper-kinetics" if device.type == "cuda" else "tiny")
    overrides = {"data.augment": "strong"} if preset.startswith("paper") else {}
    config = build_config(preset, [*(f"{k}={v}" for k, v in overrides.items()), *args.set])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train = time_training(config, device, args)
    peak = peak_tflops(device, args.peak_tflops)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(args.data) if args.data else None
        if manifest is None:
            manifest = generate_demo_data(
                tmp, classes=4, per_class=5, duration_sec=4.0, size=config.data.resize_short,
                progress=False, val_fraction=0.0, workers=args.workers,
            )  # fmt: skip
        loader = time_loader(config, manifest, args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    d = config.data
    print(
        f"\n{name}, torch {torch.__version__}; preset {preset} ({config.model.video}, "
        f"{d.num_frames}×{d.crop_size}×{d.crop_size}, batch {args.batch_size}, {train['dtype']})"
    )
    tflops = train["flops_per_step"] / train["step_s"] / 1e12
    mfu = f"{tflops / peak:.1%} of {peak:g} TFLOP/s" if peak else "n/a (no peak: --peak-tflops)"
    per_core = loader / max(1, args.workers)
    rows = [
        ("training clips/s", f"{train['clips_per_s']:.1f}"),
        ("GFLOPs per clip (fwd+bwd)", f"{train['flops_per_step'] / args.batch_size / 1e9:.3g}"),
        ("achieved TFLOP/s", f"{tflops:.3g}"),
        ("MFU", mfu),
        (f"loader clips/s ({args.workers} workers)", f"{loader:.1f}"),
        ("loader clips/s per CPU core", f"{per_core:.1f}"),
        ("cores to feed the training", f"{train['clips_per_s'] / max(1e-9, per_core):.1f}"),
    ]
    for label, value in rows:
        print(f"{label:34} {value}")
    settings = {"device": name, "preset": preset, "batch_size": args.batch_size,
                "steps": args.steps, "dtype": train["dtype"], "workers": args.workers,
                "compile": args.compile}  # fmt: skip
    append_rows(
        args.json,
        [
            make_row("gpu", f"training on {name}, {preset} (ratio: cores to feed it)",
                     train["clips_per_s"], "clips/s", "loader clips/s per CPU core", per_core,
                     settings=settings),
            make_row("gpu", f"achieved TFLOP/s on {name} (ratio: MFU)", tflops, "TFLOP/s",
                     "dense bf16/fp16 peak" if peak else None, peak, settings=settings),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
