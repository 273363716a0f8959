"""Pretraining-loop benchmark: the whole loop against model-only steps of the same shapes.

    make bench-train           # or: .venv/bin/python benchmarks/train.py [--steps 60]
    .venv/bin/python benchmarks/train.py --quick --json rows.jsonl  # smoke run; rows as JSON lines

For each configuration, in the same run:
- model only: forward, cross-entropy on every head, backward, gradient clipping when the preset
  clips (``train.grad_clip``) and SGD step of the method's model (both encoders and their heads)
  on random tensors of the loop's batch shapes and dtypes (uint8
  clips, log-mel), no data loading; measured before and after the loop, and averaged, so that a
  change in the machine's load during the loop shows as a gap between the two;
- the loop: ``xdc.training.pretrain`` on the demo videos (decoding or the RAM cache,
  augmentation and log-mel per batch, sampling, logging), clips/s of its training epochs after
  the first (warm-up) one, as logged in metrics.jsonl.
The ratio loop / model-only is the share of the time the loop spends training the model.

Configurations: ``tiny`` (the demo's preset: RAM cache, no workers) and ``stream`` (a narrow
R(2+1)D-18 at 8×112×112 with clips decoded from disk by 2 DataLoader workers).

``--quick``: ``tiny`` only, a few steps, K = 4 and batches of 8 (so that a few dozen videos do),
on a small demo set under ``.cache/bench-demo-quick``: to check that the script runs. ``--json
PATH`` appends the rows in the schema of ``benchmarks/jsonrows.py`` (read by
``benchmarks/table.py``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jsonrows import append_rows, make_row  # noqa: E402

from xdc.allocator import keep_heap  # noqa: E402
from xdc.config import PretrainConfig, build_config  # noqa: E402
from xdc.data.demo import generate_demo_data  # noqa: E402
from xdc.data.manifest import read_manifest  # noqa: E402
from xdc.deep_clustering import DeepClusteringModel  # noqa: E402
from xdc.encoders import build_encoders  # noqa: E402
from xdc.methods import get_method  # noqa: E402
from xdc.runlog import read_metrics  # noqa: E402
from xdc.training import pretrain  # noqa: E402

CONFIGS: dict[str, tuple[str, dict[str, object]]] = {
    "tiny": ("tiny", {}),
    "stream": (
        "paper-kinetics",
        {
            "model.video_width": 16,
            "model.audio_width": 16,
            "data.fps": 8.0,
            "data.num_workers": 2,
            "cluster.k": 16,
            "cluster.pca_dim": 32,
            "cluster.bn_recalibration_clips": 32,
            "train.batch_size": 8,
        },
    ),
}


QUICK = {"steps": 3, "epochs": 2, "steps_per_epoch": 2, "configs": "tiny"}
QUICK_OVERRIDES = {
    "cluster.k": 4,
    "cluster.pca_dim": 8,
    "cluster.bn_recalibration_clips": 16,
    "train.batch_size": 8,
}


def model_only(config: PretrainConfig, steps: int) -> float:
    """Clips/s of training steps on random tensors shaped like the loop's batches."""
    method = get_method(config.method)
    d, b = config.data, config.train.batch_size
    frames = d.train_frames or d.num_frames
    model = DeepClusteringModel(
        build_encoders(config.model, d.n_mels),
        method,
        {"video": config.cluster.k, "audio": config.cluster.k},
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    inputs = {
        "video": torch.randint(0, 256, (b, 3, frames, d.crop_size, d.crop_size)).to(torch.uint8),
        "audio": torch.randn(b, 1, d.n_mels, d.audio_frames),
    }
    target = torch.randint(0, config.cluster.k, (b,))
    model.train()
    start = 0.0
    for i in range(steps + 5):
        if i == 5:
            start = time.perf_counter()
        logits = model(inputs)
        loss = sum(F.cross_entropy(v, target) for v in logits.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        if config.train.grad_clip > 0:  # part of the preset's training step, as in the loop
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
    return steps * b / (time.perf_counter() - start)


def loop(config: PretrainConfig, manifest: Path, work: Path) -> float:
    """Clips/s of the loop's training epochs after the first."""
    out = work / f"run-{config.preset}"
    shutil.rmtree(out, ignore_errors=True)
    pretrain(config, manifest, out, progress=False)
    epochs = read_metrics(out, "epoch")[1:]
    seconds = sum(e["clips"] / e["clips_per_s"] for e in epochs)
    return sum(e["clips"] for e in epochs) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", help="demo data folder (default: .cache/bench-demo, or bench-demo-quick)"
    )
    parser.add_argument("--quick", action="store_true", help="smallest settings: a smoke run")
    parser.add_argument("--json", help="append the rows to this JSON-lines file")
    parser.add_argument("--steps", type=int, default=60, help="model-only steps per configuration")
    parser.add_argument("--epochs", type=int, default=3, help="loop epochs per configuration")
    parser.add_argument(
        "--steps-per-epoch", type=int, default=20, help="loop steps per epoch (batches)"
    )
    parser.add_argument("--configs", default="tiny,stream")
    args = parser.parse_args()
    keep_heap()  # as the xdc command does (xdc.allocator)
    if args.quick:  # the quick settings replace the defaults; flags given still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args()
    data = Path(args.data or ROOT / ".cache" / ("bench-demo-quick" if args.quick else "bench-demo"))
    if not (data / "manifest.csv").is_file():
        print(f"generating demo data in {data} …", flush=True)
        per_class, duration = (4, 1.2) if args.quick else (40, 2.0)
        generate_demo_data(
            data, classes=10, per_class=per_class, duration_sec=duration, seed=0, progress=False
        )
    manifest = data / "manifest.csv"
    n_train = len(read_manifest(manifest).select("train"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            preset, overrides = CONFIGS[name]
            overrides = {**overrides, **(QUICK_OVERRIDES if args.quick else {})}
            config = build_config(preset, {**overrides, "train.iterations": 1})
            per_epoch = args.steps_per_epoch * config.train.batch_size
            config = build_config(
                preset,
                {**overrides, "train.iterations": 1, "train.max_epochs": args.epochs,
                 "train.clips_per_epoch": per_epoch, "train.val_fraction": 0.05},
            )  # fmt: skip
            before = model_only(config, args.steps)
            looped = loop(config, manifest, Path(tmp))
            after = model_only(config, args.steps)
            rows.append((name, before, after, looped))
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; {n_train} training videos"
    )
    header = f"{'config':8} {'model-only clips/s (before, after)':>35} {'loop clips/s':>13}"
    print(f"{header} {'loop / model':>13}")
    for name, before, after, looped in rows:
        alone = (before + after) / 2
        measured = f"{alone:.1f} ({before:.1f}, {after:.1f})"
        print(f"{name:8} {measured:>35} {looped:13.1f} {looped / alone:12.2f}×")
    print("target: loop ≥ 0.9× model-only")
    settings = {"steps": args.steps, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
                "threads": torch.get_num_threads(), "quick": args.quick}  # fmt: skip
    append_rows(
        args.json,
        [
            make_row("train", f"pretraining loop, {name}", looped, "clips/s",
                     "model-only steps, same shapes (mean of before and after)",
                     (before + after) / 2, at_least=0.9, settings={"config": name, **settings})
            for name, before, after, looped in rows
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
