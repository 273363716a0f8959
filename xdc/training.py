"""The pretraining loop, readable top to bottom:

    for each iteration:
        extract features of every training video (eval mode, fixed centre clip)
        cluster them as the method says (SDC / MDC / CDC / XDC) → pseudo-labels
        re-initialise the heads; hold out a slice of the videos
        train with cross-entropy on cluster-balanced samples, epoch by epoch,
            until the held-out pseudo-label loss stops improving (XDC's rule) or max_epochs
        checkpoint after clustering and after every epoch

Everything random is a function of (seed, iteration, epoch, sample), so a run resumed from its last
checkpoint replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from xdc import distributed as dist
from xdc.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from xdc.config import PretrainConfig, TrainConfig, cluster_k
from xdc.data.datasets import (
    epoch_keys,
    fixed_keys,
)
from xdc.encoders import build_encoders
from xdc.errors import XdcError
from xdc.features import calibrated_copy, extract_features
from xdc.methods import LABELS, MODALITIES, Method, get_method
from xdc.models.heads import ClassifierHead
from xdc.pseudolabels import PseudoLabels, balanced_weights, format_stats, make_pseudo_labels
from xdc.run import RunContext, open_run
from xdc.runlog import RunLog


class TrainingDiverged(XdcError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DeepClusteringModel(nn.Module):
    """Both encoders and one head per (encoder, clustering) pair the method trains."""

    def __init__(self, encoders: dict[str, nn.Module], method: Method, num_classes: dict[str, int]):
        super().__init__()
        self.method = method
        self.encoders = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict(
            {
                method.head_name(enc, name): ClassifierHead(
                    _num_features(encoders[enc]), num_classes[name]
                )
                for enc, name in method.heads()
            }
        )

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """{modality: batch} → {head name: (B, K) logits}."""
        feats = {m: self.encoders[m](inputs[m]) for m in self.encoders if m in inputs}
        return {
            self.method.head_name(enc, name): self.heads[self.method.head_name(enc, name)](
                feats[enc]
            )
            for enc, name in self.method.heads()
        }


def _num_features(encoder: nn.Module) -> int:
    """The encoder contract's ``num_features`` (D of ``forward_features``)."""
    return int(getattr(encoder, "num_features"))  # noqa: B009 - nn.Module types it as Tensor | Module


@dataclass
class LoopState:
    """Counters and pseudo-labels of the loop; saved in every checkpoint."""

    iteration: int = 0
    epoch: int = 0
    phase: str = "cluster"
    step: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    finished: bool = False
    log_seq: int = 0
    labels: dict[str, Tensor] = field(default_factory=dict)
    centroids: dict[str, Tensor] = field(default_factory=dict)
    val_rows: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pretrain(
    config: PretrainConfig,
    data: str | Path,
    out: str | Path,
    split: str | None = "train",
    device: str | None = None,
    progress: bool = True,
) -> LoopState:
    """Pretrain both encoders with ``config.method`` on the videos of ``data`` (a manifest).

    Resumes automatically from ``out/checkpoint.pt``; a finished run returns at once.
    """
    run = open_run(config, data, out, split, device, progress)
    method = get_method(config.method)
    model, optimizer, scaler = build_training(config, method, run)
    state = LoopState()
    ckpt_path = run.out / CHECKPOINT_NAME
    if ckpt_path.is_file():
        state = restore(ckpt_path, model, optimizer, scaler)
        if state.finished:
            run.say(f"{run.out} is finished ({config.train.iterations} iterations); nothing to do")
            return state
        run.say(f"resuming {run.out} at iteration {state.iteration + 1}, epoch {state.epoch + 1}")
    log = RunLog(run.out, enabled=dist.is_main())
    log.truncate(state.log_seq)
    train_model = wrap_distributed(model, run.device)
    while state.iteration < config.train.iterations:
        if state.phase == "cluster":
            relabel(state, model, method, run, log, optimizer)
            checkpoint(run, state, model, optimizer, scaler, log)
        run_iteration(state, model, train_model, optimizer, scaler, run, log)
    state.finished = True
    check_replicas_agree(model)
    checkpoint(run, state, model, optimizer, scaler, log)
    log.write("finished", step=state.step, iterations=state.iteration)
    log.close()
    run.say(f"done: {run.out}/{CHECKPOINT_NAME}")
    return state


def build_training(
    config: PretrainConfig, method: Method, run: RunContext
) -> tuple[DeepClusteringModel, torch.optim.Optimizer, torch.amp.GradScaler]:
    """Encoders (seeded), heads sized by the clusterings, SGD and the AMP grad scaler."""
    torch.manual_seed(config.train.seed)
    encoders = build_encoders(config.model, config.data.n_mels)
    sizes = {
        c.name: run.num_labels if c.name == LABELS else cluster_k(config.cluster, c.name)
        for c in method.clusterings
    }
    model = DeepClusteringModel(encoders, method, sizes).to(run.device)
    t = config.train
    optimizer = torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp_dtype == torch.float16)
    return model, optimizer, scaler


def relabel(
    state: LoopState,
    model: DeepClusteringModel,
    method: Method,
    run: RunContext,
    log: RunLog,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Extract features, cluster, re-initialise the heads and choose the held-out slice."""
    cfg = run.config
    it_seed = cfg.train.seed * 100_003 + state.iteration
    features = None
    if method.feature_modalities:
        features = run_extraction(model, method.feature_modalities, run, it_seed)
    rows = features.rows if features is not None else np.asarray(run.train_set.rows)
    feats = features.features if features is not None else {}
    result: PseudoLabels = make_pseudo_labels(
        method,
        feats,
        rows,
        len(run.manifest),
        cfg.cluster,
        it_seed,
        previous=state.labels or None,
        true_labels=np.asarray(run.manifest.labels()),
    )
    state.labels, state.centroids = result.labels, result.centroids
    if not method.uses_labels:
        reset_heads(model, optimizer, it_seed)
    labelled = [r for r in run.train_set.rows if all(int(v[r]) >= 0 for v in state.labels.values())]
    rng = np.random.default_rng([cfg.train.seed, state.iteration, 7])
    n_val = int(round(cfg.train.val_fraction * len(labelled)))
    state.val_rows = torch.as_tensor(
        np.sort(rng.choice(labelled, n_val, replace=False)), dtype=torch.int64
    )
    state.phase, state.epoch, state.best_val, state.bad_epochs = "train", 0, math.inf, 0
    for name, stats in result.stats.items():
        log.write("cluster", step=state.step, iteration=state.iteration, clustering=name, **stats)
    if result.stats:
        run.say(format_stats(state.iteration + 1, result.stats))


def run_extraction(
    model: DeepClusteringModel, modalities: tuple[str, ...], run: RunContext, seed: int
):
    """Features of every training video: fixed centre clip, BatchNorm recalibrated on a subset."""
    rows = run.train_set.rows
    encoders = {}
    n_cal = min(run.config.cluster.bn_recalibration_clips, len(rows))
    for m in modalities:
        enc = model.encoders[m]
        if n_cal:
            subset = np.random.default_rng([seed, 11]).choice(rows, n_cal, replace=False)
            inputs = (b[m] for b in run.loader(run.eval_set, fixed_keys(subset), shard=False))
            enc = calibrated_copy(enc, inputs, run.device)
        encoders[m] = enc.eval()
    keys = fixed_keys(rows)
    loader = run.loader(run.eval_set, keys, contiguous=True)
    feats = extract_features(
        encoders, loader, run.device, progress=run.progress, total=len(loader), desc="extract"
    )
    run.report_failures(feats.failures)
    return feats


def reset_heads(model: DeepClusteringModel, optimizer: torch.optim.Optimizer, seed: int) -> None:
    """DeepCluster's re-initialisation: N(0, 0.01) weights, zero bias, no momentum carried over."""
    gen = torch.Generator().manual_seed(seed)
    for head in model.heads.values():
        assert isinstance(head, ClassifierHead)
        head.reset_parameters(generator=gen)
        for p in head.parameters():
            optimizer.state.pop(p, None)


def run_iteration(
    state: LoopState,
    model: DeepClusteringModel,
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    run: RunContext,
    log: RunLog,
) -> None:
    """Train epochs of the current iteration until the held-out loss stops improving."""
    t = run.config.train
    val = set(state.val_rows.tolist())
    train_rows = np.asarray([r for r in run.train_set.rows if r not in val])
    run.train_set.replacement_pool = train_rows.tolist()
    weights = balanced_weights(state.labels, train_rows)
    while state.phase == "train":
        keys = epoch_keys(
            train_rows, run.clips_per_epoch, t.seed, (state.iteration, state.epoch), weights
        )
        stats = train_one_epoch(
            state, train_model, optimizer, scaler, run.loader(run.train_set, keys), run, log
        )
        val_stats = heldout_loss(model, state, run)
        improved = val_stats["val_loss"] < state.best_val - 1e-4
        state.best_val = min(state.best_val, val_stats["val_loss"])
        state.bad_epochs = 0 if improved else state.bad_epochs + 1
        record = {"iteration": state.iteration, "epoch": state.epoch, **stats, **val_stats}
        state.history.append(record)
        log.write("epoch", step=state.step, **record)
        per_head = " ".join(
            f"{k[8:]} {v:.3f}" for k, v in val_stats.items() if k.startswith("val_acc_")
        )
        run.say(
            f"iteration {state.iteration + 1} epoch {state.epoch + 1}: loss {stats['loss']:.3f} "
            f"acc {stats['acc']:.3f} | held-out loss {val_stats['val_loss']:.3f} acc {per_head} "
            f"({stats['clips_per_s']:.1f} clips/s)"
        )
        state.epoch += 1
        if state.epoch >= t.max_epochs or (t.patience and state.bad_epochs >= t.patience):
            state.iteration, state.epoch, state.phase = state.iteration + 1, 0, "cluster"
        checkpoint(run, state, model, optimizer, scaler, log)


def train_one_epoch(
    state: LoopState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: DataLoader,
    run: RunContext,
    log: RunLog,
) -> dict[str, float]:
    """One pass over the epoch's clips; returns the epoch's mean loss, accuracy and throughput."""
    t = run.config.train
    model.train()
    labels = {name: v.to(run.device) for name, v in state.labels.items()}
    heads = run.method.heads()
    total_loss, total_acc, seen, start = 0.0, 0.0, 0, time.perf_counter()
    window = {"loss": 0.0, "acc": 0.0, "n": 0, "t": start}
    bar = tqdm(
        loader,
        desc=f"it {state.iteration + 1} ep {state.epoch + 1}",
        disable=not run.progress,
        leave=False,
    )
    for i, batch in enumerate(bar):
        run.report_failures(batch["failures"])
        set_lr(optimizer, lr_at(state.iteration, state.epoch + i / max(1, len(loader)), run))
        inputs = {m: batch[m].to(run.device, non_blocking=True) for m in MODALITIES}
        index = batch["index"].to(run.device)
        with autocast(run):
            logits = model(inputs)
            losses = [
                F.cross_entropy(
                    logits[run.method.head_name(e, c)].float(), labels[c][index], ignore_index=-1
                )
                for e, c in heads
            ]
            loss = torch.stack(losses).sum()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if t.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        state.step += 1
        with torch.no_grad():
            acc = torch.stack(
                [
                    (logits[run.method.head_name(e, c)].argmax(1) == labels[c][index])
                    .float()
                    .mean()
                    for e, c in heads
                ]
            ).mean()
        n = index.shape[0]
        window["loss"] += loss.detach() * n
        window["acc"] += acc * n
        window["n"] += n
        if (i + 1) % t.log_every == 0 or i + 1 == len(loader):
            w_loss, w_acc = float(window["loss"]) / window["n"], float(window["acc"]) / window["n"]
            if not math.isfinite(w_loss):
                raise TrainingDiverged(
                    f"loss became {w_loss} at iteration {state.iteration + 1}, epoch {state.epoch + 1}, "
                    f"step {state.step}; the last good checkpoint {run.out / CHECKPOINT_NAME} is kept. "
                    "Lower train.lr or set train.grad_clip, then re-run the same command to resume"
                )
            now = time.perf_counter()
            rate = window["n"] * dist.world_size() / max(1e-9, now - window["t"])
            log.write(
                "train",
                step=state.step,
                iteration=state.iteration,
                epoch=state.epoch,
                loss=w_loss,
                acc=w_acc,
                lr=optimizer.param_groups[0]["lr"],
                clips_per_s=rate,
            )
            bar.set_postfix(loss=f"{w_loss:.3f}", acc=f"{w_acc:.3f}")
            total_loss += w_loss * window["n"]
            total_acc += w_acc * window["n"]
            seen += int(window["n"])
            window = {"loss": 0.0, "acc": 0.0, "n": 0, "t": now}
    elapsed = time.perf_counter() - start
    return {
        "loss": total_loss / max(1, seen),
        "acc": total_acc / max(1, seen),
        "clips": seen * dist.world_size(),
        "clips_per_s": seen * dist.world_size() / max(1e-9, elapsed),
    }


@torch.no_grad()
def heldout_loss(model: DeepClusteringModel, state: LoopState, run: RunContext) -> dict[str, float]:
    """Pseudo-label loss and accuracy on the held-out videos (fixed clips, eval mode)."""
    rows = state.val_rows.tolist()
    if not rows:
        return {"val_loss": math.nan, "val_acc": math.nan}
    model.eval()
    heads = run.method.heads()
    # Per head: summed loss, correct predictions; last entry: number of clips.
    sums = torch.zeros(2 * len(heads) + 1, dtype=torch.float64)
    for batch in run.loader(run.eval_set, fixed_keys(rows)):
        valid = batch["valid"].bool()
        inputs = {m: batch[m][valid].to(run.device) for m in MODALITIES}
        index = batch["index"][valid]
        logits = model(inputs)
        for h, (e, c) in enumerate(heads):
            target = state.labels[c][index].to(run.device)
            out = logits[run.method.head_name(e, c)].float()
            sums[2 * h] += float(F.cross_entropy(out, target, reduction="sum"))
            sums[2 * h + 1] += float((out.argmax(1) == target).sum())
        sums[-1] += int(valid.sum())
    dist.all_reduce_sum(sums)
    n = max(1.0, float(sums[-1]))
    result = {
        "val_loss": float(sums[0:-1:2].sum()) / (n * len(heads)),
        "val_acc": float(sums[1:-1:2].sum()) / (n * len(heads)),
    }
    for h, (e, c) in enumerate(heads):
        result[f"val_acc_{run.method.head_name(e, c)}"] = float(sums[2 * h + 1]) / n
    return result


def lr_at(iteration: int, epoch: float, run: RunContext) -> float:
    """Learning rate at a position of the run (warm-up, then cosine / step / constant).

    The run is ``iterations × max_epochs`` epochs long; an iteration that stops early skips the
    rest of its span, so the schedule is a pure function of the position and needs no state.
    """
    t: TrainConfig = run.config.train
    position = iteration * t.max_epochs + epoch
    total = t.iterations * t.max_epochs
    if t.warmup_epochs > 0 and position < t.warmup_epochs:
        return t.lr * (position + 1e-3) / t.warmup_epochs
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "step":
        return t.lr * 0.1 ** sum(position >= m for m in t.step_epochs)
    progress = (position - t.warmup_epochs) / max(1e-9, total - t.warmup_epochs)
    return t.lr_min + 0.5 * (t.lr - t.lr_min) * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def autocast(run: RunContext) -> contextlib.AbstractContextManager:
    if run.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=run.amp_dtype)


def wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    if not dist.is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def check_replicas_agree(model: nn.Module) -> None:
    """In a distributed run, every process must end with the same weights (DDP keeps them in
    step); a difference means a bug or a broken collective, so stop rather than save one copy."""
    if not dist.is_distributed():
        return
    with torch.no_grad():
        local = torch.stack([p.detach().double().sum().cpu() for p in model.parameters()])
    total = dist.all_reduce_sum(local.clone())
    if not torch.allclose(total, local * dist.world_size(), rtol=1e-9, atol=1e-9):
        raise TrainingDiverged("the processes of this distributed run ended with different weights")


def checkpoint(
    run: RunContext,
    state: LoopState,
    model: DeepClusteringModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    log: RunLog,
) -> None:
    """Everything needed to resume, written atomically by the main process."""
    state.log_seq = log.seq
    if dist.is_main():
        save_checkpoint(
            {
                "config": run.config.to_dict(),
                "loop": state.to_dict(),
                "encoders": {m: enc.state_dict() for m, enc in model.encoders.items()},
                "heads": model.heads.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
                "label_names": list(run.manifest.label_names),
            },
            run.out / CHECKPOINT_NAME,
        )
    dist.barrier()


def restore(
    path: Path,
    model: DeepClusteringModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> LoopState:
    state_dict = load_checkpoint(path)
    for m, enc in model.encoders.items():
        enc.load_state_dict(state_dict["encoders"][m])
    model.heads.load_state_dict(state_dict["heads"])
    optimizer.load_state_dict(state_dict["optimizer"])
    scaler.load_state_dict(state_dict["scaler"])
    torch.set_rng_state(state_dict["rng"]["torch"])
    state = LoopState()
    for key, value in state_dict["loop"].items():
        setattr(state, key, value)
    return state
