"""Pretraining-loop benchmark: the whole loop against model-only steps of the same shapes.

    make bench-train           # or: .venv/bin/python benchmarks/train.py [--epochs 5]
    .venv/bin/python benchmarks/train.py --quick --json rows.jsonl  # smoke run; rows as JSON lines

For each configuration, in one process:
- the loop: ``xdc.training.pretrain`` on the demo videos (decoding or the RAM cache,
  augmentation and log-mel per batch, sampling, logging): the clips/s of each training epoch, as
  the loop logs it, after a first (warm-up) epoch;
- model only, between the loop's epochs: forward, cross-entropy on every head, backward, gradient
  clipping when the preset clips (``train.grad_clip``) and SGD step of the method's model (both
  encoders and their heads) on random tensors of the loop's batch shapes and dtypes (uint8 clips,
  log-mel), no data loading.
Each epoch is compared with the mean of the model-only runs just before and after it, and the
epoch of median ratio is reported (every epoch's ratio is printed too): on a shared machine the
speed drifts by ±10 % within a minute, and pairs that close in time drift together.
The ratio loop / model-only is the share of the time the loop spends training the model.

Configurations: ``tiny`` (the demo's preset: RAM cache, no workers), ``small`` (the preset the
README recommends for a user's own few hundred videos: RAM cache, no workers, mixup of both
modalities, which the model-only steps do not do: its cost is part of the loop's) and ``stream``
(a narrow R(2+1)D-18 at 8×112×112 with clips decoded from disk by 2 DataLoader workers).

``--quick``: ``tiny`` only, a few steps, K = 4 and batches of 8 (so that a few dozen videos do),
on a small demo set under ``.cache/bench-demo-quick``: to check that the script runs. ``--json
PATH`` appends the rows in the schema of ``benchmarks/jsonrows.py`` (read by
``benchmarks/table.py``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo_set import demo_manifest, demo_parser, median_by  # noqa: E402
from jsonrows import append_rows, make_row  # noqa: E402

from xdc import optim, training  # noqa: E402
from xdc.allocator import keep_heap  # noqa: E402
from xdc.config import PretrainConfig, build_config  # noqa: E402
from xdc.data.manifest import read_manifest  # noqa: E402
from xdc.deep_clustering import build_model  # noqa: E402
from xdc.encoders import use_fast_layout  # noqa: E402
from xdc.methods import get_method  # noqa: E402
from xdc.training import pretrain  # noqa: E402

CONFIGS: dict[str, tuple[str, dict[str, object]]] = {
    "tiny": ("tiny", {}),
    "small": ("small", {}),
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


STEPS = {"tiny": (100, 30), "small": (100, 30), "stream": (12, 6)}
"""Per configuration: loop steps per epoch (``tiny``: its preset's own epoch, 3,200 clips;
``small``: half of its 6,400) and model-only steps between two epochs."""
QUICK = {"steps": 3, "epochs": 2, "steps_per_epoch": 2, "configs": "tiny"}
QUICK_OVERRIDES = {
    "cluster.k": 4,
    "cluster.pca_dim": 8,
    "cluster.bn_recalibration_clips": 16,
    "train.batch_size": 8,
}


class ModelOnly:
    """Training steps on random tensors shaped like the loop's batches: the method's model (both
    encoders and their heads), cross-entropy on every head, backward, clipping as the preset
    clips (``train.grad_clip``), SGD."""

    def __init__(self, config: PretrainConfig) -> None:
        d, b = config.data, config.train.batch_size
        frames = d.train_frames or d.num_frames
        self.clip = config.train.grad_clip
        # The loop's model, layout and optimizer (xdc.training._pretrain), on the CPU.
        self.model = build_model(config, get_method(config.method), 0, torch.device("cpu"))
        if config.train.channels_last:
            use_fast_layout(dict(self.model.encoders), torch.device("cpu"))
        self.optimizer = optim.sgd(self.model.parameters(), config.train)
        self.inputs = {
            "video": torch.randint(0, 256, (b, 3, frames, d.crop_size, d.crop_size)).to(
                torch.uint8
            ),
            "audio": torch.randn(b, 1, d.n_mels, d.audio_frames),
        }
        self.target = torch.randint(0, config.cluster.k, (b,))
        self.batch = b
        self.run(3)  # warm-up: first calls allocate

    def run(self, steps: int) -> float:
        """Clips/s of ``steps`` training steps."""
        self.model.train()
        start = time.perf_counter()
        for _ in range(steps):
            logits = self.model(self.inputs)
            loss = sum(F.cross_entropy(v, self.target) for v in logits.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
        return steps * self.batch / (time.perf_counter() - start)


def paired_loop(
    config: PretrainConfig, manifest: Path, work: Path, steps: int
) -> list[tuple[float, float]]:
    """(loop clips/s, model-only clips/s) for each training epoch after the first (warm-up).

    Model-only steps run between the loop's epochs, in the same process: epoch k is compared with
    the mean of the model-only runs just before and just after it, so that a change in the
    machine's speed during the run (frequent on a shared machine) moves both sides of a pair.
    """
    out = work / f"run-{config.preset}"
    shutil.rmtree(out, ignore_errors=True)
    reference = ModelOnly(config)
    measured = [reference.run(steps)]
    epochs: list[float] = []
    one_epoch = training.train_one_epoch

    def paired_epoch(*args: Any, **kwargs: Any) -> dict[str, float]:
        result = one_epoch(*args, **kwargs)
        epochs.append(result["clips_per_s"])
        measured.append(reference.run(steps))
        return result

    training.train_one_epoch = paired_epoch
    try:
        pretrain(config, manifest, out, progress=False)
    finally:
        training.train_one_epoch = one_epoch
    # The first model-only run and the first epoch warm up; the pairs start at epoch 2.
    return [(epochs[k], (measured[k] + measured[k + 1]) / 2) for k in range(1, len(epochs))]


def median_pair(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """The (loop, model-only) pair of the median ratio."""
    return median_by(pairs, lambda p: p[0] / p[1])


def main() -> None:
    parser = demo_parser(__doc__)
    parser.add_argument(
        "--steps", type=int, help="model-only steps between two epochs (default per config)"
    )
    parser.add_argument(
        "--epochs", type=int, default=5, help="measured loop epochs, after a warm-up epoch"
    )
    parser.add_argument(
        "--steps-per-epoch", type=int, help="loop steps per epoch (default per config)"
    )
    parser.add_argument(
        "--configs", default="tiny,small,stream", help=f"comma-separated: {', '.join(CONFIGS)}"
    )
    args = parser.parse_args()
    keep_heap()  # as the xdc command does (xdc.allocator)
    if args.quick:  # the quick settings replace the defaults; flags given still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args()
    manifest = demo_manifest(args.data, args.quick)
    n_train = len(read_manifest(manifest).select("train"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            preset, overrides = CONFIGS[name]
            overrides = {**overrides, **(QUICK_OVERRIDES if args.quick else {})}
            config = build_config(preset, {**overrides, "train.iterations": 1})
            epoch_steps, model_steps = STEPS[name]
            per_epoch = (args.steps_per_epoch or epoch_steps) * config.train.batch_size
            config = build_config(
                preset,
                {**overrides, "train.iterations": 1, "train.max_epochs": args.epochs + 1,
                 "train.patience": 0, "train.clips_per_epoch": per_epoch,
                 "train.val_fraction": 0.05},
            )  # fmt: skip
            pairs = paired_loop(config, manifest, Path(tmp), args.steps or model_steps)
            rows.append((name, pairs))
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; {n_train} training videos"
    )
    print(
        f"{'config':8} {'model-only clips/s':>19} {'loop clips/s':>13} {'loop / model':>13}"
        "   per epoch"
    )
    for name, pairs in rows:
        looped, alone = median_pair(pairs)
        each = " ".join(f"{a / b:.2f}" for a, b in pairs)
        print(f"{name:8} {alone:19.1f} {looped:13.1f} {looped / alone:12.2f}×   {each}")
    print("the epoch of median ratio; target: loop ≥ 0.9× model-only")
    settings = {"steps": args.steps, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
                "threads": torch.get_num_threads(), "quick": args.quick}  # fmt: skip
    append_rows(
        args.json,
        [
            make_row("train", f"pretraining loop, {name}", median_pair(pairs)[0], "clips/s",
                     "model-only steps, same shapes, around the same epoch",
                     median_pair(pairs)[1], at_least=0.9, settings={"config": name, **settings})
            for name, pairs in rows
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
