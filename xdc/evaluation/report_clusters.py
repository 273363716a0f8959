"""The clusters of the run report (``xdc.evaluation.report``): which clusters are shown (the
largest and the purest of each clustering), their members ranked by the run's trained encoder, and
each cluster's card: a montage of the middle frames of its nearest videos and a few sound players
(16-bit mono WAV ``data:`` URIs).
"""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from xdc.data.datasets import ClipDataset, clip_loader, fixed_keys
from xdc.data.decode import ClipSpec, decode_clip, video_duration
from xdc.data.manifest import Manifest
from xdc.errors import DecodeError
from xdc.evaluation.report_plots import TILE_PX, data_uri, esc, montage_uri
from xdc.features import calibrated_copy, extract_features
from xdc.methods import LABELS

if TYPE_CHECKING:  # the report imports this module
    from xdc.evaluation.report import RunContents

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
        rng = np.random.default_rng(0)
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
    encoder = contents.encoders[modality].to(device)
    if n_cal:
        subset = np.random.default_rng([cfg.train.seed, 11]).choice(pool, n_cal, replace=False)
        batches = (b[modality] for b in clip_loader(dataset, fixed_keys(subset.tolist()), size))
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
    duration = manifest.duration(row) or video_duration(path)
    sound = with_sound and manifest.has_audio(row)
    # One frame over a 1 ms span: the frame shown at mid-video, with the sound window centred on it.
    spec = ClipSpec(
        num_frames=1,
        fps=1000.0,
        resize_short=TILE_PX,
        audio_samples=int(SOUND_SEC * SOUND_RATE) if sound else None,
        sample_rate=SOUND_RATE,
    )
    clip = decode_clip(path, duration / 2, spec, duration_sec=duration or None)
    frame = clip.frames[0]
    top, left = (frame.shape[0] - TILE_PX) // 2, (frame.shape[1] - TILE_PX) // 2
    return frame[top : top + TILE_PX, left : left + TILE_PX], clip.audio
