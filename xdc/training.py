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

import math
import time
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xdc import distributed as dist
from xdc import optim, seeds
from xdc.checkpoint import CHECKPOINT_NAME
from xdc.config import PretrainConfig, TrainConfig
from xdc.data.datasets import ClipKey, DeviceBatches, epoch_keys, fixed_keys
from xdc.deep_clustering import (
    DeepClusteringModel,
    build_model,
    check_replicas_agree,
    num_features,
    reset_heads,
    wrap_distributed,
)
from xdc.diagnostics import sync_warnings, warn_after_clustering, warn_after_iteration
from xdc.encoders import use_fast_layout
from xdc.errors import TrainingDiverged
from xdc.features import (
    ClipFeatures,
    FeatureStore,
    calibrated_copy,
    calibration_keys,
    extract_features,
    extract_to_store,
    valid_inputs,
)
from xdc.loop_state import LoopState, checkpoint, restore
from xdc.methods import MODALITIES, Method, get_method
from xdc.models.video import normalize_video
from xdc.progress import track
from xdc.pseudolabels import PseudoLabels, balanced_weights, format_stats, make_pseudo_labels
from xdc.run import RunContext, deterministic_algorithms, open_run
from xdc.runlog import RunLog


def pretrain(
    config: PretrainConfig,
    data: str | Path,
    out: str | Path,
    split: str | None = "train",
    device: str | None = None,
    progress: bool = True,
    allow_data_change: bool = False,
    extend: bool = False,
) -> LoopState:
    """Pretrain both encoders with ``config.method`` on the videos of ``data`` (a manifest).

    Resumes automatically from ``out/checkpoint.pt``; a finished run returns at once. A run is
    resumed only on the data it was trained on — the same manifest content, split and number of
    processes (RUN/run.json; a manifest that moved is fine) — unless ``allow_data_change``.
    ``extend``: a run made with fewer ``train.iterations`` goes on to ``config``'s
    (``xdc.run.check_run_folder``).
    """
    run = open_run(config, data, out, split, device, progress, allow_data_change, extend)
    with deterministic_algorithms(config.train.deterministic, run.device):
        return _pretrain(run)


def _pretrain(run: RunContext) -> LoopState:
    config = run.config
    method = get_method(config.method)
    model = build_model(config, method, run.num_labels, run.device)
    if config.train.channels_last:  # before the optimizer: the same parameters
        use_fast_layout(dict(model.encoders), run.device)
    optimizer, scaler = (
        optim.sgd(model.parameters(), config.train),
        optim.grad_scaler(run.amp_dtype),
    )
    state = LoopState()
    ckpt_path = run.out / CHECKPOINT_NAME
    if ckpt_path.is_file():
        state = restore(ckpt_path, model, optimizer, scaler)
        if state.finished and state.iteration < config.train.iterations:
            state.finished = False  # extended (xdc.run.check_run_folder): cluster again
        if state.finished:
            run.say(f"{run.out} is finished ({config.train.iterations} iterations); nothing to do")
            return state
        run.say(f"resuming {run.out} at iteration {state.iteration + 1}, epoch {state.epoch + 1}")
    log = RunLog(run.out, enabled=dist.is_main())
    log.truncate(state.log_seq)
    sync_warnings(log)  # RUN/warnings.json: the warnings of the log kept, each once
    for note in run.notes:  # another world size, a moved manifest
        log.write("note", step=state.step, message=note, world_size=dist.world_size())
    train_model = wrap_distributed(model, run.device)
    if config.train.compile:
        train_model = cast(nn.Module, torch.compile(train_model))  # compiled at its first step
    while state.iteration < config.train.iterations:
        if state.phase == "cluster":
            relabel(state, model, method, run, log, optimizer)
            checkpoint(run, state, model, optimizer, scaler, log)
        run_iteration(state, model, train_model, optimizer, scaler, run, log)
    state.finished = True
    check_replicas_agree(model)
    # Steps taken by each process (the same on every one: DDP needs it; see KeySampler).
    steps = dist.all_gather_varlen(torch.tensor([state.step], device=run.device)).tolist()
    # Logged before the final checkpoint, which then covers it: a kill in between cannot leave a
    # finished run without its record.
    log.write("finished", step=state.step, iterations=state.iteration, steps_per_process=steps)
    checkpoint(run, state, model, optimizer, scaler, log)
    log.close()
    run.say(f"done: {run.out}/{CHECKPOINT_NAME}")
    return state


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
    seed, it = cfg.train.seed, state.iteration
    features = None
    if method.feature_modalities:
        with optim.autocast(run.device, run.amp_dtype):  # as in training: bf16/fp16 on a GPU
            features = run_extraction(model, method.feature_modalities, run, it)
    rows = features.rows if features is not None else np.asarray(run.train_set.rows)
    feats = features.features if features is not None else {}
    result: PseudoLabels = make_pseudo_labels(
        method,
        feats,
        rows,
        len(run.manifest),
        cfg.cluster,
        seed,
        it,
        previous=state.labels or None,
        true_labels=np.asarray(run.manifest.labels()),
        device=run.device,
    )
    del features, feats  # the memmaps of a feature store, closed before their files go
    FeatureStore(run.out / FEATURES_FOLDER).clear()
    state.labels, state.centroids = result.labels, result.centroids
    if not method.uses_labels:
        reset_heads(model, optimizer, seeds.torch_generator(seed, "heads", it))
    labelled = [r for r in run.train_set.rows if all(int(v[r]) >= 0 for v in state.labels.values())]
    rng = seeds.rng(seed, "heldout", it)
    n_val = int(round(cfg.train.val_fraction * len(labelled)))
    state.val_rows = torch.as_tensor(
        np.sort(rng.choice(labelled, n_val, replace=False)), dtype=torch.int64
    )
    state.phase, state.epoch, state.best_val, state.bad_epochs = "train", 0, math.inf, 0
    for name, stats in result.stats.items():
        log.write("cluster", step=state.step, iteration=state.iteration, clustering=name, **stats)
    if result.stats:
        run.say(format_stats(state.iteration + 1, result.stats))
    warn_after_clustering(log, state, result.stats)


def run_extraction(
    model: DeepClusteringModel, modalities: tuple[str, ...], run: RunContext, iteration: int
) -> ClipFeatures[Any]:
    """Features of every training video — its fixed centre clip, or the mean over
    ``cluster.views`` augmented clips — with BatchNorm recalibrated on a subset of such clips."""
    rows = run.train_set.rows
    encoders = {}
    n_cal = min(run.config.cluster.bn_recalibration_clips, len(rows))
    for m in modalities:
        enc = model.encoders[m]
        if n_cal:
            # the clips that are clustered are augmented when views > 1: calibrate on such clips
            augmented = run.view_set is not None
            dataset = run.view_set if run.view_set is not None else run.eval_set
            rng = seeds.rng(run.config.train.seed, "calibration", iteration)
            keys = calibration_keys(rows, n_cal, rng, augmented)
            enc = calibrated_copy(
                enc, _reported(run.loader(dataset, keys, shard=False), m, run), run.device
            )  # raises DataError when no calibration clip decoded
        encoders[m] = enc.eval()
    if run.view_set is None:
        loader = run.loader(run.eval_set, fixed_keys(rows), contiguous=True)
        store = _feature_store(run, -(-len(rows) // dist.world_size()), encoders)
        extract: Any = extract_features if store is None else partial(extract_to_store, store=store)
        feats: ClipFeatures[Any] = extract(
            encoders, loader, device=run.device, progress=run.progress, total=len(loader),
            desc="extract",
        )  # fmt: skip
        run.report_failures(feats.failures)
    else:
        feats = _averaged_views(encoders, rows, run, iteration)
    for m, enc in encoders.items():  # a process whose shard gave no clip: (0, D), as elsewhere
        if feats.features[m].shape[0] == 0:
            empty = torch.zeros(0, num_features(enc))
            array = not isinstance(feats.features[m], Tensor)
            feats.features[m] = cast(Any, empty.numpy().astype(np.float16) if array else empty)
    return feats


FEATURES_FOLDER = "features"
STORE_ABOVE_BYTES = 2 << 30  # cluster.feature_store=auto: float32 features above this go to disk


def _feature_store(
    run: RunContext, n_clips: int, encoders: dict[str, nn.Module]
) -> FeatureStore | None:
    """Where this process's extracted features go: a store in RUN/features/, or None (RAM)."""
    mode = run.config.cluster.feature_store
    if mode == "auto":
        nbytes = 4 * n_clips * sum(num_features(e) for e in encoders.values())
        mode = "disk" if nbytes > STORE_ABOVE_BYTES else "memory"
    return FeatureStore(run.out / FEATURES_FOLDER) if mode == "disk" else None


def _reported(
    batches: Iterable[dict[str, Any]], modality: str, run: RunContext
) -> Iterator[Tensor]:
    """The ``modality`` inputs of the valid samples of ``batches`` (a file that failed to decode
    comes back as zeros, which must not enter BatchNorm statistics), failures reported to the run."""
    for batch in batches:
        run.report_failures(batch["failures"])
        yield from valid_inputs([batch], modality)


def _averaged_views(
    encoders: dict[str, nn.Module], rows: list[int], run: RunContext, iteration: int
) -> ClipFeatures:
    """``cluster.views`` training-style clips of every video, their features averaged per video.

    One pass per view over the same contiguous shards, so every view of a video is on the process
    that averages it and the result is the same for any number of processes.
    """
    assert run.view_set is not None
    parts = []
    for view in range(run.config.cluster.views):
        rng = seeds.rng(run.config.train.seed, "views", iteration, view)
        clip_seeds = rng.integers(0, 2**62, size=len(rows))
        keys = [ClipKey(int(r), int(s)) for r, s in zip(rows, clip_seeds, strict=True)]
        loader = run.loader(run.view_set, keys, contiguous=True)
        part = extract_features(
            encoders, loader, run.device, progress=run.progress, total=len(loader),
            desc=f"extract view {view + 1}",
        )  # fmt: skip
        run.report_failures(part.failures)
        if len(part.rows):
            parts.append(part)
    if not parts:
        return extract_features(encoders, [], run.device, progress=False)
    rows_all = np.concatenate([p.rows for p in parts])
    merged = ClipFeatures(
        rows_all, np.zeros_like(rows_all),
        {m: torch.cat([p.features[m] for p in parts]) for m in encoders},
        np.concatenate([p.labels for p in parts]),
    )  # fmt: skip
    video_rows, pooled, labels = merged.video_level()
    return ClipFeatures(video_rows, np.zeros_like(video_rows), pooled, labels)


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
    # One loader of each kind for the iteration, their workers kept across its epochs (the
    # datasets do not change within an iteration); each epoch gives the training loader its keys.
    loader = run.loader(run.train_set, [])
    heldout = run.loader(run.eval_set, fixed_keys(state.val_rows.tolist()), contiguous=True)
    while state.phase == "train":
        rng = seeds.rng(t.seed, "sample", state.iteration, state.epoch)
        loader.set_keys(epoch_keys(train_rows, run.clips_per_epoch, rng, weights))
        stats = train_one_epoch(state, train_model, optimizer, scaler, loader, run, log)
        val_stats = heldout_loss(model, state, run, heldout)
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
        # Patience needs a held-out set (config validation and open_run refuse patience without
        # one); with no held-out video the loss is NaN and never improves: run max_epochs.
        early = t.patience and len(state.val_rows) and state.bad_epochs >= t.patience
        if state.epoch >= t.max_epochs or early:
            warn_after_iteration(log, state, run.method)
            state.iteration, state.epoch, state.phase = state.iteration + 1, 0, "cluster"
        checkpoint(run, state, model, optimizer, scaler, log)


def train_one_epoch(
    state: LoopState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: DeviceBatches,
    run: RunContext,
    log: RunLog,
) -> dict[str, float]:
    """One pass over the epoch's clips; returns the epoch's mean loss, accuracy and throughput."""
    model.train()
    labels = {name: v.to(run.device) for name, v in state.labels.items()}
    window, epoch = _Meter(), _Meter()
    bar = track(
        loader,
        desc=f"it {state.iteration + 1} ep {state.epoch + 1}",
        enabled=run.progress,
        leave=False,
    )
    for i, batch in enumerate(bar):
        run.report_failures(batch["failures"])
        optim.set_lr(
            optimizer,
            pretraining_lr(state.iteration, state.epoch, i, len(loader), run.config.train),
        )
        mix = mixup_plan(run.config.train, len(batch["index"]), state.iteration, state.epoch, i)
        loss, acc, n = train_step(model, batch, labels, optimizer, scaler, run, mix)
        state.step += 1
        window.add(loss, acc, n)
        if (i + 1) % run.config.train.log_every == 0 or i + 1 == len(loader):
            w_loss, w_acc, rate = window.flush()
            # Every rank stops together: one that raised alone would leave the others waiting
            # in DDP's next all-reduce until the process group times out.
            finite = math.isfinite(w_loss)
            if dist.any_rank(not finite):
                where = "non-finite in another process" if finite else w_loss
                raise TrainingDiverged(
                    f"loss became {where} at iteration {state.iteration + 1}, epoch "
                    f"{state.epoch + 1}, step {state.step}; the last good checkpoint "
                    f"{run.out / CHECKPOINT_NAME} is kept. Lower train.lr or set "
                    "train.grad_clip, then re-run the same command to resume"
                )
            lr = optimizer.param_groups[0]["lr"]
            log.write("train", step=state.step, iteration=state.iteration, epoch=state.epoch,
                      loss=w_loss, acc=w_acc, lr=lr, clips_per_s=rate)  # fmt: skip
            bar.set_postfix(loss=f"{w_loss:.3f}", acc=f"{w_acc:.3f}")
            epoch.add(w_loss, w_acc, window.last_n)
    e_loss, e_acc, e_rate = epoch.flush(since=epoch.start)
    return {
        "loss": e_loss,
        "acc": e_acc,
        "clips": epoch.last_n * dist.world_size(),
        "clips_per_s": e_rate,
    }


def mixup_plan(
    t: TrainConfig, n: int, iteration: int, epoch: int, step: int
) -> tuple[Tensor, dict[str, float]] | None:
    """The mixup of one training step (``train.mixup``): each clip's partner in the batch and,
    per encoder modality, the share ``λ`` the clip keeps (1.0 where ``train.mixup_on`` does not
    mix). None when mixup is off. Drawn from the step's own stream, so a resumed run mixes as an
    uninterrupted one; each process of a DDP run mixes its own batch."""
    if t.mixup <= 0 or n < 2:
        return None
    g = seeds.rng(t.seed, "mixup", iteration, epoch, step, dist.rank())
    partner = torch.from_numpy(g.permutation(n))
    mixed = MODALITIES if t.mixup_on == "both" else (t.mixup_on,)
    share = {m: float(g.beta(t.mixup, t.mixup)) if m in mixed else 1.0 for m in MODALITIES}
    return partner, share


def train_step(
    model: nn.Module,
    batch: dict[str, Any],
    labels: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    run: RunContext,
    mix: tuple[Tensor, dict[str, float]] | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Forward, summed cross-entropy of every head, backward, clip, step, on a batch of
    ``run.loader`` (its clips on the device already).

    ``mix`` (:func:`mixup_plan`): each modality's clips are blended with their partners',
    ``λ·x + (1−λ)·x[partner]``, and a head of that modality's encoder learns ``λ`` of its clip's
    label and ``1−λ`` of the partner's; its accuracy counts the label with the larger share.

    Returns the loss and the mean pseudo-label accuracy over the heads as device tensors (no host
    synchronisation) and the batch size.
    """
    heads = [(run.method.head_name(e, c), e, c) for e, c in run.method.heads()]
    inputs = {m: batch[m] for m in MODALITIES}
    index = batch["index"].to(run.device, non_blocking=True)
    share = dict.fromkeys(MODALITIES, 1.0)
    if mix is not None:
        partner, share = mix[0].to(run.device), mix[1]
        # uint8 frames are blended once normalised (as the encoder would): no rounding
        inputs = {
            m: x if share[m] == 1.0 else torch.lerp(x[partner], x, share[m])
            for m, x in {**inputs, "video": normalize_video(inputs["video"])}.items()
        }
    targets = {}  # head → (its clip's label, the partner's, the clip's share)
    for h, e, c in heads:
        y = labels[c][index]
        targets[h] = (y, y if share[e] == 1.0 else y[partner], share[e])
    with optim.autocast(run.device, run.amp_dtype):
        logits = model(inputs)
        loss = torch.stack([head_loss(logits[h].float(), *targets[h]) for h, _, _ in heads]).sum()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if run.config.train.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), run.config.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        acc = torch.stack(
            [
                (logits[h].argmax(1) == (y if lam >= 0.5 else y_partner)).float().mean()
                for h, (y, y_partner, lam) in targets.items()
            ]
        )
    return loss.detach(), acc.mean(), int(index.shape[0])


def head_loss(logits: Tensor, y: Tensor, y_partner: Tensor, share: float) -> Tensor:
    """Cross-entropy of one head; with mixup, ``share`` of it on the clip's label and the rest on
    its partner's (labels of -1, videos without one, are ignored)."""
    loss = F.cross_entropy(logits, y, ignore_index=-1)
    if share == 1.0:
        return loss
    return share * loss + (1.0 - share) * F.cross_entropy(logits, y_partner, ignore_index=-1)


class _Meter:
    """Sums of loss and accuracy weighted by clips, read (and reset) at logging steps only, so
    that the device is synchronised once per log line rather than once per step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self._reset(self.start)
        self.last_n = 0

    def _reset(self, now: float) -> None:
        self.loss: Tensor | float = 0.0
        self.acc: Tensor | float = 0.0
        self.n = 0
        self.t = now

    def add(self, loss: Tensor | float, acc: Tensor | float, n: int) -> None:
        """Add the means ``loss`` and ``acc`` of ``n`` clips."""
        self.loss = self.loss + loss * n
        self.acc = self.acc + acc * n
        self.n += n

    def flush(self, since: float | None = None) -> tuple[float, float, float]:
        """(mean loss, mean accuracy, clips/s over all processes) since the last flush."""
        now = time.perf_counter()
        n = max(1, self.n)
        result = (
            float(self.loss) / n,
            float(self.acc) / n,
            self.n * dist.world_size() / max(1e-9, now - (since or self.t)),
        )
        self.last_n = self.n
        self._reset(now)
        return result


@torch.no_grad()
def heldout_loss(
    model: DeepClusteringModel, state: LoopState, run: RunContext, loader: DeviceBatches
) -> dict[str, float]:
    """Pseudo-label loss and accuracy on the held-out videos (fixed clips, eval mode).

    ``loader``: ``run.loader`` over ``fixed_keys(state.val_rows)``, ``contiguous``: each process
    takes a block of the held-out clips (possibly none) and sums on the model's device, without
    waiting for it (a clip that failed to load is masked out there); one all-reduce per call, on
    every process.
    """
    if not len(state.val_rows):
        return {"val_loss": math.nan, "val_acc": math.nan}
    model.eval()
    heads = run.method.heads()
    labels = {name: v.to(run.device) for name, v in state.labels.items()}
    # Per head: summed loss, correct predictions; last entry: number of clips.
    sums = torch.zeros(2 * len(heads) + 1, dtype=torch.float64, device=run.device)
    for batch in loader:
        run.report_failures(batch["failures"])
        valid = batch["valid"].to(run.device, non_blocking=True).bool()
        index = batch["index"].to(run.device, non_blocking=True)
        with optim.autocast(run.device, run.amp_dtype):
            logits = model({m: batch[m] for m in MODALITIES})
        for h, (e, c) in enumerate(heads):
            target = labels[c][index].masked_fill(~valid, -1)  # -1: ignored, never correct
            out = logits[run.method.head_name(e, c)].float()
            sums[2 * h] += F.cross_entropy(out, target, reduction="sum", ignore_index=-1)
            sums[2 * h + 1] += (out.argmax(1) == target).sum()
        sums[-1] += valid.sum()
    values = dist.all_reduce_sum(sums).tolist()
    n = max(1.0, values[-1])
    result = {
        "val_loss": sum(values[0:-1:2]) / (n * len(heads)),
        "val_acc": sum(values[1:-1:2]) / (n * len(heads)),
    }
    for h, (e, c) in enumerate(heads):
        result[f"val_acc_{run.method.head_name(e, c)}"] = values[2 * h + 1] / n
    return result


def pretraining_lr(iteration: int, epoch: int, step: int, steps: int, t: TrainConfig) -> float:
    """Learning rate of step ``step`` of ``steps`` in an epoch: ``xdc.optim.lr_at`` over the run.

    The run is ``iterations × max_epochs`` epochs long; an iteration that stops early skips the
    rest of its span, so the rate is a pure function of the position and needs no state.
    ``constant`` (every preset) keeps the peak rate for the later iterations, whose pseudo-labels
    are the best; ``cosine`` and ``step`` decay over the whole run.
    """
    position = iteration * t.max_epochs + optim.step_position(epoch, step, steps)
    return optim.lr_at(position, t.iterations * t.max_epochs, t)
