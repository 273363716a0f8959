"""``xdc demo``: the end-to-end proof on a laptop that the method learns.

1. Generate the procedural demo videos of one family (``xdc.data.demo``: ``motion``,
   ``appearance`` or ``digits``) unless they exist, with train / val / test splits.
2. Pretrain, with the same preset and budget: XDC, the SDC baseline, and ``supervised`` — the same
   architecture trained on the true labels (the upper bound).
3. Linear-probe the video and the audio encoder of each, and of a randomly initialised encoder of
   the same architecture (the lower bound): trained on ``train``, scored on ``val`` by default.
   ``split="test"`` scores the test split instead: do that once, at the end, with the settings
   that ``val`` chose — never choose a setting by its test score. The probe is ``xdc
   linear-probe``'s (``probe_clip_features``) with the standard BatchNorm statistics
   (``--bn-statistics auto``): a trained encoder keeps its stored ones, the random init, which
   has none, gets them recomputed on ``BN_CLIPS`` training clips (``PROTOCOL``).
4. Print one table (mean ± std over the seeds) whose header names that protocol, write
   ``OUT/demo-<split>.json`` (with the ``protocol`` record) and the XDC run's report.

Every step resumes: re-running the same command skips finished runs and only redoes what is
missing.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xdc import atomic
from xdc.config import build_config
from xdc.data.demo import FAMILIES, generate_demo_data
from xdc.data.manifest import read_manifest
from xdc.errors import ConfigError
from xdc.evaluation.encoders import load_eval_encoders
from xdc.evaluation.extract import eval_clips, extract_splits, recalibrates
from xdc.evaluation.linear_probe import ADVICE_FIT_GAP_SENTENCE, fit_gap, probe_clip_features
from xdc.methods import MODALITIES
from xdc.progress import inform
from xdc.training import pretrain

METHODS = ("xdc", "sdc", "supervised")
ROWS = (
    ("random", "random init (lower bound)"),
    ("sdc", "SDC (single-modality baseline)"),
    ("xdc", "XDC (cross-modal)"),
    ("supervised", "supervised (upper bound)"),
)
SPLITS = ("val", "test")
BN_STATISTICS = "auto"
"""Stored BatchNorm statistics for trained encoders, recomputed for the random init: the standard
frozen-feature rule (``xdc.evaluation.extract``)."""
BN_CLIPS = 512
"""Training clips the random init's BatchNorm statistics are recomputed on."""
PROTOCOL = "linear probe, stored BatchNorm statistics (standard)"
"""What every number of the demo table follows; ``protocol_record`` has the details."""


def run_demo(
    out: str | Path = "demo",
    classes: int = 10,
    per_class: int = 100,
    seeds: Sequence[int] = (0,),
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    clips: int = 1,
    device: str | None = None,
    progress: bool = True,
    family: str = "motion",
    split: str = "val",
    methods: Sequence[str] = METHODS,
    data_seed: int = 0,
) -> dict[str, Any]:
    """Run the whole demo (see the module docstring); returns what ``OUT/demo-<split>.json``
    holds. ``methods``: which of xdc, sdc, supervised to pretrain and probe (random init always)."""
    out = Path(out)
    _check(family, split, methods)
    start = time.perf_counter()
    manifest_path = out / "data" / "manifest.csv"
    wanted = {"family": family, "classes": classes, "per_class": per_class, "seed": data_seed}
    _data(manifest_path, wanted, progress)
    manifest = read_manifest(manifest_path)
    timings: dict[str, float] = {"data": time.perf_counter() - start}
    results: dict[str, dict[str, list[float]]] = {r: {m: [] for m in MODALITIES} for r, _ in ROWS}
    cv: dict[str, dict[str, list[float | None]]] = {r: {m: [] for m in MODALITIES} for r, _ in ROWS}
    bn_used: dict[str, str] = {}
    for seed in seeds:
        runs = {}
        for method in methods:
            tic = time.perf_counter()
            config = build_config(preset, [*overrides, f"train.seed={seed}"], method=method)
            runs[method] = out / f"seed{seed}" / method
            inform(f"\n== pretraining {method} (seed {seed}) → {runs[method]}")
            pretrain(config, manifest_path, runs[method], device=device, progress=progress)
            timings[f"pretrain {method}"] = (
                timings.get(f"pretrain {method}", 0) + time.perf_counter() - tic
            )
        tic = time.perf_counter()
        reader = None  # the clips (and RAM cache) of the rows' data config, decoded once a seed
        for row in ["random", *methods]:
            checkpoint = "random" if row == "random" else str(runs[row])
            like = str(runs[methods[0]]) if row == "random" else None
            source = load_eval_encoders(checkpoint, like=like, seed=seed)
            if reader is None or reader.data_config != source.config.data:
                reader = None  # one RAM cache at a time
                reader = eval_clips(source, manifest, ["train", split], progress=progress)
            feats = extract_splits(
                source,
                manifest,
                ["train", split],
                MODALITIES,
                clips=clips,
                bn_clips=BN_CLIPS,
                device=device,
                progress=progress,
                bn_statistics=BN_STATISTICS,
                reader=reader,
            )
            bn_used[row] = (
                f"recomputed on {BN_CLIPS} training clips (a random init has none)"
                if recalibrates(BN_STATISTICS, source.is_random)
                else "stored (the checkpoint's)"
            )
            for m in MODALITIES:
                probe = probe_clip_features(
                    feats["train"][m], feats[split][m], m, manifest.label_names
                )
                results[row][m].append(100.0 * probe["top1"])
                known = probe.get("cv_top1")
                cv[row][m].append(None if known is None else 100.0 * known)
        reader = None  # its cache is not held through the next seed's pretraining
        timings["linear probes"] = timings.get("linear probes", 0) + time.perf_counter() - tic
    results = {row: values for row, values in results.items() if values["video"]}
    summary = _summary(results, manifest, preset, seeds, timings, time.perf_counter() - start)
    for row, values in summary["linear_probe_top1"].items():
        for m in MODALITIES:
            values[m]["cv_runs"] = cv[row][m]
    summary |= {"family": family, "split": split, "overrides": list(overrides)}
    summary["protocol"] = protocol_record(split, clips, bn_used)
    summary["warnings"] = fit_gap_lines(summary)
    print("\n" + format_table(summary))
    if summary["warnings"]:
        print("\n".join([*summary["warnings"], ADVICE_FIT_GAP_SENTENCE]))
    if split == "test":
        print("test split: report these numbers once, for settings chosen on val (--split val)")
    _write(out, summary, seeds, progress, device, runs_of=methods[0])
    return summary


def _check(family: str, split: str, methods: Sequence[str]) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"--family must be one of {', '.join(FAMILIES)} (got {family!r})")
    if split not in SPLITS:
        raise ConfigError(f"--split must be val or test (got {split!r})")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) < len(methods):
        raise ConfigError(
            f"--methods takes a comma-separated subset of {','.join(METHODS)} (got "
            f"{','.join(methods) or 'nothing'})"
        )


def _data(manifest_path: Path, wanted: dict[str, Any], progress: bool) -> None:
    """Generate the demo data unless OUT/data holds the same family, size and seed already."""
    stamp = manifest_path.parent / "demo-data.json"
    if manifest_path.is_file():
        found = json.loads(stamp.read_text(encoding="utf-8")) if stamp.is_file() else None
        if found is None:
            raise ConfigError(
                f"{manifest_path.parent} holds data xdc demo did not make (no demo-data.json, so "
                "its family and size are unknown); use another --out"
            )
        if found != wanted:
            diff = ", ".join(f"{k} {found.get(k)} (asked {v})" for k, v in wanted.items()
                             if found.get(k) != v)  # fmt: skip
            raise ConfigError(
                f"{manifest_path.parent} holds other demo data: {diff}; use another --out or "
                "delete that folder"
            )
        return
    inform(
        f"generating {wanted['family']} demo data, {wanted['classes']} classes × "
        f"{wanted['per_class']} videos in {manifest_path.parent} …"
    )
    generate_demo_data(
        manifest_path.parent, classes=wanted["classes"], per_class=wanted["per_class"],
        seed=wanted["seed"], family=wanted["family"], progress=progress,
    )  # fmt: skip
    atomic.write_text(stamp, json.dumps(wanted) + "\n")


def _summary(
    results: dict[str, dict[str, list[float]]],
    manifest: Any,
    preset: str,
    seeds: Sequence[int],
    timings: dict[str, float],
    total: float,
) -> dict[str, Any]:
    splits = [r.get("split", "") for r in manifest.rows]
    return {
        "preset": preset,
        "seeds": list(seeds),
        "classes": len(manifest.label_names),
        "train_videos": splits.count("train"),
        "val_videos": splits.count("val"),
        "test_videos": splits.count("test"),
        "chance_top1": 100.0 / max(1, len(manifest.label_names)),
        "linear_probe_top1": {
            row: {m: _mean_std(values[m]) | {"runs": values[m]} for m in MODALITIES}
            for row, values in results.items()
        },
        "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(total, 1)},
    }


def protocol_record(split: str, clips: int, bn_used: dict[str, str]) -> dict[str, Any]:
    """What the demo's numbers follow, for its JSON: the probe, its splits and clips, and the
    BatchNorm statistics each row's encoders used."""
    return {
        "name": PROTOCOL,
        "probe": "xdc linear-probe on frozen features: StandardScaler + logistic regression, C "
        "cross-validated on the training split grouped by video, test probabilities averaged "
        "per video, video-level top-1",
        "audio": "the audio encoder probed the same way on the same classes (the audio window of "
        "each clip); not the audio-probe benchmark protocol (ESC-50, DCASE2014)",
        "train_split": "train",
        "test_split": split,
        "clips_per_video": clips,
        "bn_statistics": BN_STATISTICS,
        "bn_clips": BN_CLIPS,
        "bn_statistics_used": dict(bn_used),
    }


def fit_gap_lines(summary: dict[str, Any]) -> list[str]:
    """The warning lines the demo prints under its table: one per pretrained encoder whose probe
    scores ``FIT_GAP`` or more higher on held-out training videos (its cross-validation, mean
    over the seeds) than on the scored split, the sign of an encoder that memorised its
    pretraining videos (``xdc.evaluation.linear_probe``). The report's per-run check is
    ``report_checks.fit_gap_warnings``. The random init saw no video, so it is not checked; nor
    is a row with a seed whose C was not cross-validated."""
    split = summary.get("split", "test")
    lines = []
    for row, name in ROWS:
        values = summary["linear_probe_top1"].get(row)
        if row == "random" or values is None:
            continue
        for m in MODALITIES:
            runs = values[m].get("cv_runs") or []
            if not runs or any(v is None for v in runs):
                continue
            said = fit_gap(statistics.fmean(runs) / 100.0, values[m]["mean"] / 100.0, split)
            if said:
                over = f" (means over {len(runs)} seeds)" if len(runs) > 1 else ""
                lines.append(f"warning: {name}, {m} encoder: {said}{over}")
    return lines


def _mean_std(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(mean, 2), "std": round(std, 2)}


def format_table(summary: dict[str, Any]) -> str:
    """The demo's result table, as printed and as pasted in the README."""
    seeds = summary["seeds"]
    split = summary.get("split", "test")
    head = (
        f"{summary.get('family', 'motion')} family, linear probe, {split} top-1 % "
        f"({summary['classes']} classes, {summary['train_videos']} train / "
        f"{summary[split + '_videos']} {split} videos, preset {summary['preset']}, "
        f"{'mean ± std over seeds ' + ','.join(map(str, seeds)) if len(seeds) > 1 else 'seed ' + str(seeds[0])})"
    )
    lines = [
        head,
        *protocol_line(summary.get("protocol")),
        f"| {'encoders':32} | {'video':>13} | {'audio':>13} |",
        f"|{'-' * 34}|{'-' * 15}|{'-' * 15}|",
    ]
    for row, name in ROWS:
        if row not in summary["linear_probe_top1"]:
            continue
        cells = []
        for m in MODALITIES:
            v = summary["linear_probe_top1"][row][m]
            cells.append(
                f"{v['mean']:5.1f} ± {v['std']:4.1f}" if len(seeds) > 1 else f"{v['mean']:13.1f}"
            )
        lines.append(f"| {name:32} | {cells[0]:>13} | {cells[1]:>13} |")
    chance = f"{summary['chance_top1']:.1f}"
    lines.append(f"| {'chance':32} | {chance:>13} | {chance:>13} |")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    return "\n".join(lines) + f"\ntime: {times}"


def protocol_line(record: dict[str, Any] | None) -> list[str]:
    """The line under the table's title that names the protocol of every number in it (none for
    a summary written before the demo recorded it)."""
    if not record:
        return []
    line = f"protocol: {record['name']}"
    random = record["bn_statistics_used"].get("random")
    if random:
        line += f"; random init: BatchNorm statistics {random}"
    clips = record["clips_per_video"]
    return [line + f"; {clips} clip{'s' if clips > 1 else ''} per video"]


def _write(
    out: Path, summary: dict[str, Any], seeds: Sequence[int], progress: bool, device: str | None,
    runs_of: str = "xdc",
) -> None:  # fmt: skip
    from xdc.evaluation.report import write_report

    text = json.dumps(summary, indent=2) + "\n"
    atomic.write_text(out / f"demo-{summary['split']}.json", text)
    run = out / f"seed{seeds[0]}" / runs_of
    (run / "eval").mkdir(exist_ok=True)
    atomic.write_text(run / "eval" / f"demo-{summary['split']}.json", text)
    report = write_report(run, device=device, progress=progress)
    inform(f"report: {report}")
