"""``xdc report RUN``: one self-contained HTML page showing what a pretraining run learned.

The page (RUN/report.html) needs no network to view: CSS is inline, figures are PNG ``data:`` URIs,
sound is WAV ``data:`` URIs. It shows the run's warnings (``xdc.diagnostics``) first, then its
settings, each encoder against a random init of the same architecture (``report_checks``), its
training curves, the sizes of its final clusterings, example videos (frames and sound) of the
largest and purest clusters, every evaluation result found in RUN/eval/*.json, and the videos that
could not be read.

This module holds, top-down: the entry point ``write_report`` and the reading of the run folder
(``load_run``); the page's run, curves and cluster-size sections; the clusters section: which
clusters are shown (the largest and the purest of each clustering), their members ranked by the
run's trained encoder, and each cluster's card: a montage of the middle frames of its nearest videos
and a few sound players (16-bit mono WAV ``data:`` URIs); and the ``xdc report`` command. The
generic figures and tables are ``report_plots``; the warnings and the random-init check,
``report_checks``; neither imports this module.

Example frames are the videos nearest each cluster's mean feature, computed with the run's trained
encoder of the clustering's modality (the video encoder for ``joint`` and ``labels``) after the same
BatchNorm recalibration on training clips that the run used before clustering.
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xdc import atomic, seeds
from xdc.config import PretrainConfig
from xdc.data.datasets import ClipDataset, clip_loader, fixed_keys
from xdc.data.decode import ClipSpec, decode_clip, video_duration
from xdc.data.manifest import Manifest, read_manifest
from xdc.encoders import in_run_layout, load_encoders
from xdc.errors import CheckpointError, ConfigError, DataError, DecodeError
from xdc.evaluation import report_plots as plots
from xdc.evaluation.cli_shared import Subcommands, add_device_arguments
from xdc.evaluation.report_checks import (
    CACHE_NAME,
    fit_gap_warnings,
    random_init_check,
    random_init_html,
    random_init_warnings,
    warnings_html,
)
from xdc.evaluation.report_plots import TILE_PX, data_uri, esc, montage_uri
from xdc.features import calibrated_copy, calibration_keys, extract_features, valid_inputs
from xdc.methods import LABELS, METHODS
from xdc.progress import inform
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
    extra = random_init_warnings(check) + fit_gap_warnings(check)
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
    atomic.write_text(
        out_path,
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{plots.esc(title)}</title>'
        f"<style>{plots.CSS}</style></head><body>\n<h1>{plots.esc(title)}</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n",
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


# The clusters section: which clusters are shown, their ranked members, and their cards.

CLUSTERS_SHOWN = 4
"""Largest clusters shown per clustering, and as many purest ones."""
TILES_PER_CLUSTER = 8
SOUNDS_PER_CLUSTER = 2
ENCODER_OF = {"video": "video", "audio": "audio"}
"""Encoder whose features rank a clustering's members; any other clustering uses the video one."""

SOUND_SEC = 2.0
SOUND_RATE = 16000


@dataclass
class ShownCluster:
    """A cluster picked for the page, with its example videos once they are chosen."""

    clustering: str
    cluster: int
    members: np.ndarray
    """Manifest rows of the cluster, capped at ``max_members`` (a seeded, sorted sample)."""
    size: int
    reasons: list[str]
    purity: float | None = None
    majority: str = ""
    nearest: list[int] = field(default_factory=list)
    """Members ordered by cosine similarity to the cluster's mean feature, nearest first."""


def final_clusterings(contents: RunContents) -> dict[str, np.ndarray]:
    """{clustering name: (N,) cluster of each manifest row, -1 = none} from the checkpoint."""
    labels = contents.meta.get("loop", {}).get("labels", {})
    return {name: torch.as_tensor(v).numpy().astype(np.int64) for name, v in labels.items()}


def cluster_count(contents: RunContents, name: str, assign: np.ndarray) -> int:
    """K of a clustering: rows of its centroids, the number of classes for ``labels``."""
    centroids = contents.meta.get("loop", {}).get("centroids", {})
    if name in centroids:
        return int(centroids[name].shape[0])
    if name == LABELS:
        return max(len(contents.manifest.label_names), int(assign.max()) + 1)
    return int(assign.max()) + 1


def choose_clusters(contents: RunContents, max_members: int) -> list[ShownCluster]:
    """The largest ``CLUSTERS_SHOWN`` clusters of each clustering, then the purest ones (when the
    manifest has labels), each cluster once."""
    true = np.asarray(contents.manifest.labels(), dtype=np.int64)
    names = contents.manifest.label_names
    shown: list[ShownCluster] = []
    for name, assign in final_clusterings(contents).items():
        k = cluster_count(contents, name, assign)
        sizes = np.bincount(assign[assign >= 0], minlength=k)
        largest = sorted((c for c in range(k) if sizes[c] > 0), key=lambda c: (-sizes[c], c))[
            :CLUSTERS_SHOWN
        ]
        purity = {c: cluster_purity(true[assign == c]) for c in range(k) if sizes[c] > 0}
        rated = {c: p for c, p in purity.items() if p is not None}
        # A cluster of one labelled video is trivially pure: prefer clusters with two or more.
        solid = {c: p for c, p in rated.items() if (true[assign == c] >= 0).sum() >= 2} or rated
        purest = sorted(solid, key=lambda c: (-solid[c][0], -sizes[c], c))[:CLUSTERS_SHOWN]
        rng = seeds.rng(contents.config.train.seed, "report_members")
        for c in dict.fromkeys([*largest, *purest]):
            members = np.flatnonzero(assign == c)
            if len(members) > max_members:
                members = np.sort(rng.choice(members, max_members, replace=False))
            reasons = [r for r, group in (("largest", largest), ("purest", purest)) if c in group]
            item = ShownCluster(name, c, members, int(sizes[c]), reasons)
            if rated.get(c) is not None:
                item.purity, item.majority = rated[c][0], names[rated[c][1]]
            shown.append(item)
    return shown


def cluster_purity(labels: np.ndarray) -> tuple[float, int] | None:
    """(fraction of labelled members in the majority class, that class), None without labels."""
    known = labels[labels >= 0]
    if len(known) == 0:
        return None
    counts = np.bincount(known)
    return float(counts.max() / len(known)), int(counts.argmax())


def rank_members(
    contents: RunContents,
    shown: Sequence[ShownCluster],
    device: torch.device,
    progress: bool,
    failures: list[str],
) -> None:
    """Order the capped members of each shown cluster by similarity to the cluster's mean feature."""
    for modality in dict.fromkeys(ENCODER_OF.get(s.clustering, "video") for s in shown):
        group = [s for s in shown if ENCODER_OF.get(s.clustering, "video") == modality]
        rows = sorted({int(r) for s in group for r in s.members})
        features = member_features(contents, modality, rows, device, progress, failures)
        for item in group:
            present = [int(r) for r in item.members if int(r) in features]
            if not present:
                continue
            feats = F.normalize(torch.stack([features[r] for r in present]), dim=1)
            centre = F.normalize(feats.mean(0), dim=0)
            order = torch.argsort(feats @ centre, descending=True, stable=True)
            item.nearest = [present[int(i)] for i in order]


def member_features(
    contents: RunContents,
    modality: str,
    rows: Sequence[int],
    device: torch.device,
    progress: bool,
    failures: list[str],
) -> dict[int, torch.Tensor]:
    """{manifest row: (D,) feature} of the centre clip of each row, from the run's ``modality``
    encoder with BatchNorm statistics recomputed on training clips as the run did."""
    cfg = contents.config
    size = cfg.train.batch_size
    dataset = ClipDataset(
        contents.manifest, cfg.data, train=False, modalities=(modality,), replace_failed=False
    )
    usable = set(dataset.rows)
    rows = [r for r in rows if r in usable]
    # Calibrate on clips of the videos the run trained on (clustered rows), as the run did.
    clustered = np.flatnonzero(
        np.any([a >= 0 for a in final_clusterings(contents).values()], axis=0)
    )
    pool = [int(r) for r in clustered if int(r) in usable] or dataset.rows
    n_cal = min(cfg.cluster.bn_recalibration_clips, len(pool))
    encoder = in_run_layout(contents.encoders[modality], cfg.train.channels_last, device).to(device)
    if n_cal:
        keys = calibration_keys(pool, n_cal, seeds.rng(cfg.train.seed, "report_calibration"))
        batches = valid_inputs(clip_loader(dataset, keys, size), modality)
        encoder = calibrated_copy(encoder, batches, device)
    loader = clip_loader(dataset, fixed_keys(rows), size)
    extracted = extract_features(
        {modality: encoder},
        loader,
        device,
        progress=progress,
        total=len(loader),
        desc=f"report {modality} features",
    )
    failures.extend(extracted.failures)
    return {int(r): f for r, f in zip(extracted.rows, extracted.features[modality], strict=True)}


def cluster_card(contents: RunContents, item: ShownCluster, failures: list[str]) -> str:
    """One cluster: its montage of nearest videos (captioned by class) and a few sound players."""
    manifest = contents.manifest
    tiles: list[np.ndarray] = []
    captions: list[str] = []
    sounds: list[str] = []
    for row in item.nearest[:TILES_PER_CLUSTER]:
        try:
            frame, audio = middle_of_video(
                manifest, row, with_sound=len(sounds) < SOUNDS_PER_CLUSTER
            )
        except DecodeError as err:
            failures.append(f"{err.path}: {err.reason}")
            continue
        label = manifest.rows[row].get("label", "") or "(no label)"
        tiles.append(frame)
        captions.append(label)
        if audio is not None:
            sounds.append(sound_player(f"{label} · {manifest.path(row).name}", audio))
    facts = [f"{item.size} videos"]
    if item.purity is not None:
        facts.append(f"purity {item.purity:.2f} (majority: {esc(item.majority)})")
    body = (
        f'<img class="montage" alt="nearest videos of cluster {item.cluster}" '
        f'src="{montage_uri(tiles, captions)}">'
        if tiles
        else '<p class="note">no decodable member</p>'
    )
    return (
        f'<div class="cluster"><h4>cluster {item.cluster} <span class="tag">{", ".join(item.reasons)}</span></h4>'
        f'<p>{" · ".join(facts)}</p>{body}<div class="sounds">{"".join(sounds)}</div></div>'
    )


def clusters_html(
    contents: RunContents, shown: Sequence[ShownCluster], max_members: int, failures: list[str]
) -> str:
    purest = (
        f"and {CLUSTERS_SHOWN} purest clusters"
        if any(s.purity is not None for s in shown)
        else "clusters (the manifest has no labels to rate purity)"
    )
    parts = [
        '<section id="clusters"><h2>Clusters</h2>',
        f"<p>The {CLUSTERS_SHOWN} largest {purest} of each clustering. Frames: the "
        f"middle frame of the videos nearest the cluster's mean feature (among up to {max_members} members), "
        f"captioned with their class; sounds: {SOUND_SEC:g} s around the middle of the nearest videos.</p>",
    ]
    if not shown:
        parts.append('<p class="note">no clustering in the checkpoint yet</p>')
    for name in dict.fromkeys(s.clustering for s in shown):
        encoder = ENCODER_OF.get(name, "video")
        parts.append(
            f'<h3>{esc(name)} clustering <span class="tag">ranked by the {encoder} encoder</span></h3>'
        )
        parts.extend(cluster_card(contents, s, failures) for s in shown if s.clustering == name)
    return "".join(parts) + "</section>"


def wav_uri(samples: np.ndarray, sample_rate: int) -> str:
    """Mono float samples in [-1, 1] (shape (N,)) as a 16-bit PCM ``data:audio/wav;base64`` URI."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
    return data_uri("audio/wav", buffer.getvalue())


def sound_player(caption: str, samples: np.ndarray) -> str:
    """An ``<audio controls>`` player of (N,) mono samples at ``SOUND_RATE``, under a caption."""
    return (
        f'<figure class="sound"><figcaption>{esc(caption)}</figcaption>'
        f'<audio controls preload="none" src="{wav_uri(samples, SOUND_RATE)}"></audio></figure>'
    )


def middle_of_video(
    manifest: Manifest, row: int, with_sound: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The middle frame as a (TILE_PX, TILE_PX, 3) uint8 centre crop, and ``SOUND_SEC`` of mono
    16 kHz sound (N,) centred on it (None when not asked or the video has no audio)."""
    path = manifest.path(row)
    segment = manifest.segment(row)  # the row's part of its file, when it is not the whole file
    duration = manifest.file_duration(row) or video_duration(path)
    middle = (segment[0] + segment[1]) / 2 if segment is not None else duration / 2
    sound = with_sound and manifest.has_audio(row)
    # One frame over a 1 ms span: the frame shown at mid-video, with the sound window centred on it.
    spec = ClipSpec(
        num_frames=1,
        fps=1000.0,
        resize_short=TILE_PX,
        audio_samples=int(SOUND_SEC * SOUND_RATE) if sound else None,
        sample_rate=SOUND_RATE,
    )
    clip = decode_clip(path, middle, spec, duration_sec=duration or None, segment=segment)
    frame = clip.frames[0]
    top, left = (frame.shape[0] - TILE_PX) // 2, (frame.shape[1] - TILE_PX) // 2
    return frame[top : top + TILE_PX, left : left + TILE_PX], clip.audio


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
    inform(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def add_report_parser(sub: Subcommands) -> None:
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
