"""Say when learning fails: rules on numbers the pretraining loop already has, and the run's warnings.

Three checks, each a pure function of a few numbers (unit-tested on constructed values):

- **Held-out pseudo-labels at chance** (end of every iteration). The chance level of a clustering
  on the held-out videos is the share of its largest cluster among them: the accuracy of always
  answering that cluster (the majority-class rate). A head is *at chance* when its best held-out
  accuracy over the iteration's epochs is below ``chance + margin``, with
  ``margin = max(min(2 points, chance), 2 × sqrt(chance × (1 − chance) / n))`` over ``n`` held-out
  videos: at least 2 points (or double the chance level when that is below 2 %, as with a large
  K) and at least two binomial standard errors of an accuracy at the chance level. When even
  100 % would not clear that bar (a handful of held-out videos) nothing is said.
- **Labelling re-drawn each iteration** (at clustering, from the third iteration on). The NMI of a
  clustering with the previous iteration's has collapsed when it is at most
  ``max(0.1, chance NMI)`` (the NMI that random partitions of the same sizes reach; far above 0
  with few videos) or less than half the previous iteration's NMI.
- **Features without structure** (at clustering). The features clustered (L2-normalised per
  modality, before PCA) have an effective rank below 2 (``exp`` of the entropy of their normalised
  singular values after centring, 0 when they do not vary at all), or one cluster holds more than
  ``max(0.5, 1.5 / K)`` of the videos (more than half, and for K = 2 more than 75 %).

Each warning is logged once on stderr (logger ``xdc.training``), written to ``metrics.jsonl`` as an
``{"event": "warning", ...}`` record and listed in ``RUN/warnings.json``. That file is rebuilt
from the warning records of ``metrics.jsonl`` (the source of truth, which a resumed run truncates
to its checkpoint), so an iteration replayed after a resume never lists a warning twice.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xdc import atomic
from xdc.methods import LABELS, Method
from xdc.runlog import RunLog, read_metrics

logger = logging.getLogger("xdc.training")

WARNINGS_NAME = "warnings.json"
MIN_MARGIN = 0.02
"""Held-out accuracy must beat the chance level by 2 points at least (see the module docstring)."""
NMI_FLOOR = 0.1
NMI_DROP = 0.5
FIRST_NMI_CHECK = 2
"""0-based iteration from which the NMI rule applies: the third, the first whose NMI with the
previous clustering can be compared with an earlier one."""
MIN_EFFECTIVE_RANK = 2.0
MIN_TOTAL_VARIANCE = 1e-6
"""Total variance of the unit-norm features below which they are one point (effective rank 0)."""
LARGEST_CLUSTER = 0.5
FAIR_SHARE_FACTOR = 1.5

ADVICE_SELF_SUPERVISED = (
    "try more iterations (train.iterations), a smaller cluster.k, stronger augmentation "
    "(data.augment=strong, or strong_hue when colour is a nuisance), and the supervised upper "
    "bound (--method supervised, needs labels) to check that the encoder can learn this data at all"
)
ADVICE_SUPERVISED = (
    "try more epochs (train.max_epochs, train.patience), another train.lr, and check the "
    "manifest's labels"
)
ADVICE_NMI = (
    "try more epochs per iteration (train.max_epochs, train.patience) so the features settle, a "
    "smaller cluster.k, or a lower train.lr; see also the other warnings of this run"
)
ADVICE_DEGENERATE = (
    "try a lower train.lr or train.grad_clip, a smaller cluster.k, stronger augmentation "
    "(data.augment=strong), and check that the videos decode (RUN/failures.txt)"
)


@dataclass(frozen=True)
class RunWarning:
    """One warning: where it arose (``iteration``, 0-based), what (``code``, ``subject``: the head
    or clustering), a one-sentence ``message`` and what to try (``advice``)."""

    iteration: int
    code: str
    subject: str
    message: str
    advice: str

    def text(self) -> str:
        return f"iteration {self.iteration + 1}: {self.message}; {self.advice}"


# --- Decision rules -------------------------------------------------------------------------


def chance_level(labels: np.ndarray | Tensor | Sequence[int]) -> float:
    """Share of the largest cluster among ``labels`` (−1 ignored): the majority-class rate. NaN
    when nothing is labelled."""
    ids = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64)
    ids = ids[ids >= 0]
    if ids.size == 0:
        return math.nan
    return float(np.bincount(ids).max() / ids.size)


def heldout_margin(chance: float, n: int) -> float:
    """How far above ``chance`` an accuracy over ``n`` held-out videos must be to count."""
    se = math.sqrt(max(0.0, chance * (1.0 - chance)) / max(1, n))
    return max(min(MIN_MARGIN, chance), 2.0 * se)


def not_clearly_above(accuracy: float, reference: float, n: int) -> bool | None:
    """Whether ``accuracy`` over ``n`` videos is below ``reference + heldout_margin``; None when
    that cannot be told: a number is unknown, or ``n`` is so small that even 100 % would not
    clear the bar."""
    if n <= 0 or not (math.isfinite(accuracy) and math.isfinite(reference)):
        return None
    bar = reference + heldout_margin(reference, n)
    return None if bar >= 1.0 else accuracy < bar


def at_chance(accuracy: float, chance: float, n: int) -> bool:
    """Whether a held-out accuracy is at chance; False when that cannot be told (too few videos
    for even a perfect head to clear the margin, or an unknown number)."""
    return bool(not_clearly_above(accuracy, chance, n))


def nmi_collapsed(nmi: float, chance: float | None = None, previous: float | None = None) -> bool:
    """Whether a clustering's NMI with the previous iteration's shows a re-drawn labelling: at
    most ``max(NMI_FLOOR, chance)`` or below ``NMI_DROP`` × the previous iteration's NMI."""
    if nmi is None or not math.isfinite(nmi):
        return False
    floor = max(NMI_FLOOR, chance if chance is not None and math.isfinite(chance) else 0.0)
    if nmi <= floor:
        return True
    return previous is not None and math.isfinite(previous) and nmi < NMI_DROP * previous


def effective_rank(eigenvalues: Tensor | np.ndarray | Sequence[float]) -> float:
    """``exp`` of the entropy of the normalised singular values, from the eigenvalues of the
    covariance (singular values ∝ their square roots); 0 when the total variance is below
    ``MIN_TOTAL_VARIANCE`` (all features one point)."""
    values = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    if values.sum() < MIN_TOTAL_VARIANCE:
        return 0.0
    sv = np.sqrt(values)
    p = sv[sv > 0] / sv.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def largest_cluster_limit(k: int) -> float:
    """Share of the videos above which one cluster means the clustering has degenerated."""
    return max(LARGEST_CLUSTER, FAIR_SHARE_FACTOR / max(1, k))


def degenerate_features(rank: float | None, largest: float | None, k: int) -> list[str]:
    """Reasons (possibly none) to call a clustering's features degenerate."""
    reasons = []
    if rank is not None and math.isfinite(rank) and rank < MIN_EFFECTIVE_RANK:
        reasons.append(f"their effective rank is {rank:.2f} (below {MIN_EFFECTIVE_RANK:g})")
    if largest is not None and largest > largest_cluster_limit(k):
        reasons.append(f"one of the K={k} clusters holds {100 * largest:.0f}% of the videos")
    return reasons


# --- Warnings from the loop's numbers -------------------------------------------------------


STABLE_NMI = 0.2


def heldout_warnings(
    iteration: int,
    heads: Iterable[tuple[str, str, str]],
    epochs: Sequence[Mapping[str, Any]],
    heldout_labels: Mapping[str, np.ndarray | Tensor],
    stability: Mapping[str, float] | None = None,
) -> list[RunWarning]:
    """Held-out-at-chance warnings of one finished iteration.

    Args:
        heads: (encoder modality, clustering name, head name) of every head.
        epochs: the iteration's epoch records, with ``val_acc_<head name>``.
        heldout_labels: {clustering: labels of the held-out videos}.
        stability: {clustering: NMI with the previous iteration's clustering}. A head whose target
            clustering is stable (NMI >= ``STABLE_NMI``) is not reported: with K = 32 clusters and
            60 held-out videos, healthy XDC runs that learned the classes well (linear probe +55
            points over random init) predicted the other modality's held-out clusters at chance
            in every iteration (docs/presets.md), while their clusterings settled (NMI with the
            previous one 0.3-0.5). Cluster pseudo-labels that are neither predictable nor stable
            track nothing.
    """
    out = []
    for encoder, clustering, head in heads:
        if stability is not None and stability.get(clustering, 0.0) >= STABLE_NMI:
            continue
        accs = [float(r[f"val_acc_{head}"]) for r in epochs if f"val_acc_{head}" in r]
        accs = [a for a in accs if math.isfinite(a)]
        labels = heldout_labels.get(clustering)
        if not accs or labels is None:
            continue
        chance, n, acc = chance_level(labels), len(labels), max(accs)
        if not at_chance(acc, chance, n):
            continue
        numbers = (
            f"best acc {acc:.3f} over {len(accs)} epoch(s) vs chance {chance:.3f} "
            f"(largest cluster), margin {heldout_margin(chance, n):.3f}, {n} videos"
        )
        message, advice = _heldout_message(encoder, clustering, numbers)
        out.append(RunWarning(iteration, "heldout_at_chance", head, message, advice))
    return out


def _heldout_message(encoder: str, clustering: str, numbers: str) -> tuple[str, str]:
    if clustering == LABELS:
        return (
            f"the {encoder} encoder cannot predict the labels on held-out videos ({numbers}): "
            "it does not learn this data",
            ADVICE_SUPERVISED,
        )
    if clustering == encoder:
        why = (
            f"its own {clustering} clusters on held-out videos ({numbers}): the clusters do not "
            "carry over to videos they were not made from"
        )
    elif clustering in ("video", "audio"):
        why = (
            f"the {clustering} clusters on held-out videos ({numbers}): the clusters follow "
            "something the other modality cannot see (nuisances such as background, colour, "
            "voice, pitch)"
        )
    else:
        why = (
            f"the {clustering} clusters on held-out videos ({numbers}): they follow something the "
            f"{encoder} stream cannot see"
        )
    return f"the {encoder} encoder cannot predict {why}", ADVICE_SELF_SUPERVISED


def clustering_warnings(
    iteration: int,
    stats: Mapping[str, Mapping[str, Any]],
    previous_nmi: Mapping[str, float],
) -> list[RunWarning]:
    """Collapse and degeneracy warnings of one iteration's clusterings.

    Args:
        stats: {clustering: statistics of ``make_pseudo_labels`` (``nmi_previous``,
            ``nmi_previous_chance``, ``effective_rank``, ``largest_fraction``, ``k``)}.
        previous_nmi: {clustering: the previous iteration's ``nmi_previous``}.
    """
    out = []
    for name, s in stats.items():
        nmi = s.get("nmi_previous")
        if iteration >= FIRST_NMI_CHECK and nmi is not None:
            chance, before = s.get("nmi_previous_chance"), previous_nmi.get(name)
            if nmi_collapsed(nmi, chance, before):
                extra = f", {before:.3f} the iteration before" if before is not None else ""
                out.append(
                    RunWarning(
                        iteration,
                        "nmi_collapse",
                        name,
                        f"the {name} clustering agrees little with the previous iteration's "
                        f"(NMI {nmi:.3f}{extra}; random partitions of the same sizes reach "
                        f"{chance or 0.0:.3f}): the labelling is re-drawn from scratch each "
                        "iteration, so the encoders chase new targets instead of refining them",
                        ADVICE_NMI,
                    )
                )
        reasons = degenerate_features(
            s.get("effective_rank"), s.get("largest_fraction"), int(s.get("k", 0))
        )
        if reasons:
            out.append(
                RunWarning(
                    iteration,
                    "degenerate_features",
                    name,
                    f"the features of the {name} clustering lose their structure: "
                    + " and ".join(reasons),
                    ADVICE_DEGENERATE,
                )
            )
    return out


def feature_rank_of(spectrum: Tensor | None) -> float | None:
    """Effective rank of features from their covariance eigenvalues (None when unknown)."""
    return None if spectrum is None else effective_rank(spectrum.double().cpu().numpy())


# --- Where warnings go ----------------------------------------------------------------------


def emit_warnings(run_log: RunLog, warnings: Sequence[RunWarning], step: int) -> None:
    """Log each warning on stderr, append it to metrics.jsonl and rebuild RUN/warnings.json. A
    disabled ``run_log`` (a process other than the main one) does nothing."""
    if not run_log.enabled or not warnings:
        return
    for w in warnings:
        logger.warning("warning: %s", w.text())
        run_log.write("warning", step=step, **asdict(w))
    sync_warnings(run_log)


def sync_warnings(run_log: RunLog) -> list[dict[str, Any]]:
    """Rewrite RUN/warnings.json (atomically) from the warning records of the run's metrics.jsonl,
    each (iteration, code, subject) once; returns the list. Removes the file when there are none;
    does nothing for a disabled ``run_log`` (a process other than the main one)."""
    if not run_log.enabled:
        return []
    run = run_log.path.parent
    seen: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for r in read_metrics(run, "warning"):
        key = (r.get("iteration"), r.get("code"), r.get("subject"))
        seen.setdefault(key, {k: r.get(k) for k in RunWarning.__dataclass_fields__})
    items = list(seen.values())
    path = run / WARNINGS_NAME
    if not items:
        path.unlink(missing_ok=True)
        return items
    atomic.write_json(path, items)
    return items


def read_warnings(run: str | Path) -> list[dict[str, Any]]:
    """RUN/warnings.json, else the warning records of metrics.jsonl (a run of an older version has
    neither: an empty list)."""
    path = Path(run) / WARNINGS_NAME
    if path.is_file():
        try:
            return list(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            pass
    fields = RunWarning.__dataclass_fields__
    return [{k: r.get(k) for k in fields} for r in read_metrics(run, "warning")]


def warn_after_clustering(run_log: RunLog, state: Any, stats: Mapping[str, Any]) -> None:
    """Emit the clustering warnings of the iteration ``state`` (a ``LoopState``) is clustering for,
    then remember its NMIs for the next iteration's rule."""
    previous = state.last_nmi
    emit_warnings(run_log, clustering_warnings(state.iteration, stats, previous), state.step)
    state.last_nmi = {n: s["nmi_previous"] for n, s in stats.items() if "nmi_previous" in s}


def warn_after_iteration(run_log: RunLog, state: Any, method: Method) -> None:
    """Emit the held-out-at-chance warnings of the iteration ``state`` has just finished."""
    emit_warnings(run_log, iteration_warnings(state, method), state.step)


def iteration_warnings(state: Any, method: Method) -> list[RunWarning]:
    """Held-out-at-chance warnings of the iteration ``state`` (a ``LoopState``) just finished: its
    epoch records in ``state.history``, its pseudo-labels and held-out rows."""
    if state.iteration == 0 and not method.uses_labels:
        # The first clusters are of randomly initialised features: that the other encoder
        # cannot predict them yet is expected and says nothing about the data (measured: the
        # healthy runs of docs/presets.md are all at chance there).
        return []
    heads = [(e, c, method.head_name(e, c)) for e, c in method.heads()]
    epochs = [r for r in state.history if r.get("iteration") == state.iteration]
    index = torch.as_tensor(state.val_rows, dtype=torch.int64)
    labels = {name: v[index].cpu().numpy() for name, v in state.labels.items()}
    stability = None if method.uses_labels else dict(state.last_nmi)
    return heldout_warnings(state.iteration, heads, epochs, labels, stability)
