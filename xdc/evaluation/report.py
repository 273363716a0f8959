"""``xdc report RUN``: one self-contained HTML page showing what a pretraining run learned.

The page (RUN/report.html) needs no network to view: CSS is inline, figures are PNG ``data:`` URIs,
sound is WAV ``data:`` URIs. It shows the run's warnings (``xdc.diagnostics``) first, then its
settings, each encoder against a random init of the same architecture (``report_checks``), its
training curves, the sizes of its final clusterings, example videos (frames and sound) of the
largest and purest clusters, every evaluation result found in RUN/eval/*.json, and the videos that
could not be read.

Example frames are the videos nearest each cluster's mean feature, computed with the run's trained
encoder of the clustering's modality (the video encoder for ``joint`` and ``labels``) after the same
BatchNorm recalibration on training clips that the run used before clustering.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from xdc.config import PretrainConfig
from xdc.data.manifest import Manifest, read_manifest
from xdc.encoders import load_encoders
from xdc.errors import CheckpointError, ConfigError, DataError
from xdc.evaluation import report_plots as plots
from xdc.evaluation.cli_shared import add_device_arguments
from xdc.evaluation.report_checks import (
    CACHE_NAME,
    random_init_check,
    random_init_html,
    random_init_warnings,
    warnings_html,
)
from xdc.evaluation.report_clusters import (
    CLUSTERS_SHOWN,
    SOUNDS_PER_CLUSTER,
    choose_clusters,
    cluster_count,
    clusters_html,
    final_clusterings,
    rank_members,
)
from xdc.methods import METHODS
from xdc.run import RUN_INFO_NAME, read_run_info, resolve_device
from xdc.runlog import read_metrics

REPORT_NAME = "report.html"
__all__ = [
    "CLUSTERS_SHOWN",
    "REPORT_NAME",
    "SOUNDS_PER_CLUSTER",
    "RunContents",
    "add_report_parser",
    "choose_clusters",
    "cmd_report",
    "load_run",
    "write_report",
]


@dataclass
class RunContents:
    """What the report reads from a run folder."""

    run: Path
    config: PretrainConfig
    meta: dict[str, Any]
    encoders: dict[str, nn.Module]
    info: dict[str, Any]
    manifest: Manifest
    """The rows the run's pseudo-labels index: the run's manifest restricted to its split."""


def write_report(
    run: str | Path,
    out: str | Path | None = None,
    max_members: int = 64,
    device: str | None = None,
    progress: bool = True,
    data: str | Path | None = None,
    probe: bool = True,
) -> Path:
    """Write the HTML report of ``run`` to ``out`` (default RUN/report.html) and return its path.

    ``data`` replaces the manifest recorded in RUN/run.json (for a manifest that moved). At most
    ``max_members`` members per shown cluster have their features re-extracted. ``probe``: compare
    the trained encoders with random-init ones by a linear probe when the manifest has labels
    (``xdc.evaluation.report_checks``; cached in RUN/eval/).
    """
    if max_members < 1:
        raise ConfigError(f"--max-members must be >= 1, got {max_members}")
    contents = load_run(run, data)
    out_path = Path(out) if out is not None else contents.run / REPORT_NAME
    failures: list[str] = []
    shown = choose_clusters(contents, max_members)
    rank_members(contents, shown, resolve_device(device), progress, failures)
    check = (
        random_init_check(contents, device, progress)
        if probe
        else {"skipped": "--no-probe was given"}
    )
    extra = random_init_warnings(check)
    sections = [
        warnings_html(contents.run, extra),
        header_html(contents),
        random_init_html(check, extra),
        curves_html(contents.run),
        sizes_html(contents),
        clusters_html(contents, shown, max_members, failures),
        plots.evaluation_html(contents.run, skip=(CACHE_NAME,)),
        plots.failures_html(contents.run, failures),
    ]
    title = f"xdc report: {contents.run.name}"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{plots.esc(title)}</title>'
        f"<style>{plots.CSS}</style></head><body>\n<h1>{plots.esc(title)}</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n",
        encoding="utf-8",
    )
    return out_path


def load_run(run: str | Path, data: str | Path | None = None) -> RunContents:
    """Checkpoint, encoders, run.json and the manifest rows the pseudo-labels index; one-line errors."""
    run = Path(run).resolve()
    if not run.is_dir():
        raise CheckpointError(f"{run}: not a run folder; pass the --out folder of `xdc pretrain`")
    encoders, config, meta = load_encoders(run)
    info = read_run_info(run)
    recorded = Path(str(info.get("data", "")))
    path = Path(data) if data is not None else recorded
    if not path.is_file():
        if data is not None:
            raise DataError(
                f"--data {data}: manifest not found; pass the manifest the run was trained on"
            )
        raise DataError(
            f"{recorded}: the manifest named in {run / RUN_INFO_NAME} is missing (moved or deleted); "
            "pass --data MANIFEST to use it from its new place"
        )
    manifest = read_manifest(path).select(info.get("split"))
    for name, labels in meta.get("loop", {}).get("labels", {}).items():
        if len(labels) != len(manifest):
            raise DataError(
                f"{path}: split {info.get('split')!r} has {len(manifest)} rows but the run's {name} "
                f"clustering covers {len(labels)}; pass the manifest the run was trained on with --data"
            )
    return RunContents(run, config, meta, encoders, info, manifest)


def header_html(contents: RunContents) -> str:
    cfg, info, loop = contents.config, contents.info, contents.meta.get("loop", {})
    method = METHODS.get(cfg.method)
    state = "finished" if loop.get("finished") else f"in progress (phase {loop.get('phase', '?')})"
    rows = [
        ("run folder", str(contents.run)),
        ("method", f"{cfg.method}: {method.description}" if method else cfg.method),
        ("preset", cfg.preset),
        (
            "manifest",
            f"{contents.manifest.source} (recorded in run.json: {info.get('data')})"
            if str(contents.manifest.source) != str(info.get("data"))
            else str(info.get("data")),
        ),
        (
            "split",
            f"{info.get('split') or '(all rows)'}: {len(contents.manifest)} videos, "
            f"{len(contents.manifest.label_names)} classes",
        ),
        ("iterations done", f"{loop.get('iteration', 0)} of {cfg.train.iterations}, {state}"),
        ("epochs trained", f"{len(loop.get('history', []))} ({loop.get('step', 0)} steps)"),
        (
            "encoders",
            f"video {cfg.model.video} (width {cfg.model.video_width}), "
            f"audio {cfg.model.audio} (width {cfg.model.audio_width})",
        ),
    ]
    config_json = json.dumps(contents.meta.get("config", {}), indent=2)
    escaped = [(k, plots.esc(v)) for k, v in rows]
    return (
        f'<section id="run"><h2>Run</h2>{plots.kv_table(escaped)}<details><summary>resolved config</summary>'
        f"<pre>{plots.esc(config_json)}</pre></details></section>"
    )


def curves_html(run: Path) -> str:
    train, epochs, cluster = (read_metrics(run, e) for e in ("train", "epoch", "cluster"))
    parts = ['<section id="curves"><h2>Training curves</h2>']
    if not (train or epochs or cluster):
        parts.append(f'<p class="note">no metrics in {plots.esc(str(run / "metrics.jsonl"))}</p>')
    boundaries = list({int(r.get("iteration", 0)): int(r.get("step", 0)) for r in cluster}.items())
    if train:
        uri = plots.training_curves(train, [(s, i) for i, s in boundaries])
        parts.append(
            f'<h3>Per logged step</h3><img class="plot" alt="training loss and accuracy" src="{uri}">'
        )
    if epochs:
        uri = plots.epoch_curves(epochs)
        parts.append(
            f'<h3>Per epoch</h3><img class="plot" alt="held-out loss and accuracy" src="{uri}">'
        )
    if cluster:
        uri = plots.clustering_curves(cluster)
        parts.append(
            f'<h3>Clusterings per iteration</h3><img class="plot" alt="NMI per iteration" src="{uri}">'
        )
    return "".join(parts) + "</section>"


def sizes_html(contents: RunContents) -> str:
    clusterings = final_clusterings(contents)
    sizes = {
        name: np.bincount(assign[assign >= 0], minlength=cluster_count(contents, name, assign))
        for name, assign in clusterings.items()
    }
    if not sizes:
        return '<section id="sizes"><h2>Cluster sizes</h2><p class="note">no clustering in the checkpoint yet</p></section>'
    return (
        '<section id="sizes"><h2>Cluster sizes</h2><p>Final clustering(s), sorted largest first; '
        f'red crosses mark empty clusters.</p><img class="plot" alt="cluster sizes" src="{plots.cluster_size_plot(sizes)}">'
        "</section>"
    )


def cmd_report(
    run: str,
    out: str | None = None,
    data: str | None = None,
    max_members: int = 64,
    device: str | None = None,
    progress: bool = True,
    probe: bool = True,
) -> int:
    """Write the HTML report of a run folder; prints its path and size."""
    path = write_report(
        run, out, max_members=max_members, device=device, progress=progress, data=data, probe=probe
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xdc report RUN [--out HTML] [--data MANIFEST]``."""
    p = sub.add_parser(
        "report", help="write RUN/report.html: curves, clusters with frames and sound, results"
    )
    # dest is not "run": the CLI dispatches through args.run.
    p.add_argument("run_dir", metavar="RUN", help="run folder made by `xdc pretrain`")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN/report.html)")
    p.add_argument(
        "--data", default=None, help="manifest to use instead of the one in RUN/run.json (it moved)"
    )
    p.add_argument(
        "--max-members", type=int, default=64, help="members per shown cluster to re-extract (64)"
    )
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="skip the linear-probe comparison of the encoders with a random init",
    )
    add_device_arguments(p)
    p.set_defaults(
        run=lambda a: cmd_report(
            a.run_dir, a.out, a.data, a.max_members, a.device, not a.no_progress, not a.no_probe
        )
    )
