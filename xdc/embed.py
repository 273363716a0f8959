"""Embeddings of your own videos from Python, the way ``xdc extract`` computes them.

    from xdc import Embedder
    emb = Embedder.load("runs/xdc")            # a run, an export folder or a released weight file
    feats = emb.video(["a.mp4", "b.mp4"])      # (2, D) numpy; emb.audio(...) for the sound

Underneath it is ``xdc extract``: the files are probed (``xdc.data.probe.probe_file``, what
``xdc index`` does) into a manifest held in memory, and ``xdc.evaluation.extract.FeatureExtractor``
reads ``clips`` uniformly spaced clips of each (centre crop, no augmentation, audio windows centred
on the video clips) with the encoders' stored BatchNorm statistics, in the clip format of the
encoders' config (frames, fps, crop, log-mel). Clip features are averaged per file unless
``keep_clips``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from xdc.config import PretrainConfig, build_config
from xdc.data.index import read_source
from xdc.data.manifest import Manifest, encode_path, format_cell
from xdc.data.probe import probe_file
from xdc.errors import ConfigError, DataError
from xdc.evaluation.encoders import EvalEncoders, load_eval_encoders
from xdc.evaluation.extract import EvalClips, FeatureExtractor
from xdc.export import is_export, load_export
from xdc.hub import is_xdc_checkpoint, locate_weights
from xdc.models.weights import load_pretrained_video

DEFAULT_CLIPS = 10
"""Clips per file, as ``xdc extract --clips`` has by default."""
RELEASED_PRESET = "paper-kinetics"
"""The clip format released R(2+1)D-18 weights are read with: 8 frames at 30 fps, 112 px crop."""

Files = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


class Embedder:
    """Video and audio embeddings of files by one pair of encoders (see the module docstring).

    Args:
        source: the encoders and the config whose data section says how clips are read.
        device: ``cpu``, ``cuda``, ``cuda:1``… (None: CUDA when available).
        batch_size: clips per forward pass (None: the config's ``train.batch_size``).
        workers: DataLoader processes decoding clips (None: the config's ``data.num_workers``).
        progress: progress bars on stderr.
    """

    def __init__(
        self,
        source: EvalEncoders,
        device: str | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        progress: bool = False,
    ) -> None:
        data = source.config.data
        data = replace(
            data, cache="none", num_workers=data.num_workers if workers is None else workers
        )
        self.source = replace(source, config=replace(source.config, data=data))
        self.device = device
        self.batch_size = batch_size or source.config.train.batch_size
        self.progress = progress

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        progress: bool = False,
        preset: str = RELEASED_PRESET,
    ) -> Embedder:
        """Encoders from ``path``: a run folder (or its ``checkpoint.pt``), an export folder
        (``xdc export``; or one of its files), or a released R(2+1)D-18 weight file or name
        (video only; hash-checked, read with ``preset``'s clip format; see ``xdc.hub``).

        Raises:
            CheckpointError: ``path`` is none of these, or does not load.
        """
        path = locate_weights(path)
        if path.suffix in (".safetensors", ".json") and is_export(path.parent):
            path = path.parent
        if is_export(path):
            encoders, config = load_export(path)
            source = EvalEncoders(encoders, config, str(path), path, None)
        elif path.is_dir() or is_xdc_checkpoint(path):
            source = load_eval_encoders(str(path))
        else:
            source = _released(path, preset)
        return cls(source, device, batch_size, workers, progress)

    @property
    def config(self) -> PretrainConfig:
        """The config clips are read with (``data``) and the encoders were built from."""
        return self.source.config

    @property
    def encoders(self) -> dict[str, nn.Module]:
        """``{"video": …, "audio": …}`` (only ``video`` for released weights), eval mode."""
        return self.source.encoders

    def video(
        self,
        files: Files,
        clips: int = DEFAULT_CLIPS,
        keep_clips: bool = False,
        as_torch: bool = False,
    ) -> np.ndarray | Tensor:
        """Video embeddings of ``files``: one file → (D,), a list or folder → (N, D) in the
        order of :meth:`files`; with ``keep_clips`` one row per clip: (clips, D) or (N, clips, D).
        float32 numpy, or a CPU tensor with ``as_torch``."""
        return self._embed("video", files, clips, keep_clips, as_torch)

    def audio(
        self,
        files: Files,
        clips: int = DEFAULT_CLIPS,
        keep_clips: bool = False,
        as_torch: bool = False,
    ) -> np.ndarray | Tensor:
        """Audio embeddings of ``files`` (log-mel windows centred on the video clips; for an
        audio-only file, ``clips`` windows spread over it); shapes as :meth:`video`."""
        return self._embed("audio", files, clips, keep_clips, as_torch)

    @staticmethod
    def files(files: Files) -> list[Path]:
        """The files ``files`` names, in the order of the embeddings' rows: a file, a list of
        files as given, or a folder's video and audio files (recursive, sorted, hidden ones
        skipped, as ``xdc index`` scans it)."""
        if isinstance(files, (str, os.PathLike)):
            path = Path(files)
            if path.is_dir():
                return [Path(e.path) for e in read_source(path)[0]]
            return [path]
        return [Path(f) for f in files]

    def _embed(
        self, modality: str, files: Files, clips: int, keep_clips: bool, as_torch: bool
    ) -> np.ndarray | Tensor:
        if modality not in self.encoders:
            raise ConfigError(
                f"no {modality} encoder: {self.source.checkpoint} holds only "
                f"{', '.join(self.encoders)}; load a run or an export with both"
            )
        if clips < 1:
            raise ConfigError(f"clips={clips}: must be >= 1")
        paths = self.files(files)
        if not paths:
            raise DataError(f"{files}: no video or audio files found")
        manifest = probed_manifest(paths)
        reader = EvalClips(manifest, self.config.data, (modality,), self.batch_size, (), False)
        missing = [
            manifest.path(r) for r in range(len(manifest)) if r not in reader.usable[modality]
        ]
        if missing:
            has = "an audio track" if modality == "audio" else "a video stream"
            raise DataError(
                f"{missing[0]}: has no {has} ({len(missing)} of {len(paths)} files); "
                f"leave such files out of {modality} embeddings"
            )
        extractor = FeatureExtractor(
            self.source, reader, [], 0, self.device, self.progress, "stored"
        )
        feats = extractor.extract(list(range(len(manifest))), (modality,), clips)[modality]
        lost = sorted(set(range(len(manifest))) - set(feats.rows.tolist()))
        if lost or len(feats.rows) != len(manifest) * clips:
            first = manifest.path(lost[0]) if lost else "some clips"
            raise DataError(
                f"{first}: could not be decoded ({len(lost)} of {len(paths)} files lost clips; "
                "see the lines above); re-encode it (`xdc prepare`) or leave it out"
            )
        values = feats.features[modality].float()  # rows × clips, in order: fixed_keys
        out = values.view(len(manifest), clips, -1)
        out = out if keep_clips else out.mean(dim=1)
        if isinstance(files, (str, os.PathLike)) and not Path(files).is_dir():
            out = out[0]
        return out if as_torch else out.numpy()


def probed_manifest(paths: Sequence[Path]) -> Manifest:
    """A manifest (in memory, no label or split) of ``paths``, probed as ``xdc index`` does and
    written as its cells are (so clips start where ``xdc extract`` starts them).

    Raises:
        DataError: naming the first file that cannot be used and why.
    """
    rows = []
    for path in paths:
        result = probe_file(path)
        if not result.ok:
            raise DataError(
                f"{path}: {result.reason}"
                + (f" ({result.detail})" if result.detail else "")
                + "; leave it out or re-encode it (`xdc prepare`)"
            )
        cells = {k: format_cell(v) for k, v in result.columns().items()}
        rows.append({"path": encode_path(os.path.abspath(path)), "label": "", "split": "", **cells})
    return Manifest(Path.cwd(), rows)


def _released(path: Path, preset: str) -> EvalEncoders:
    """A released R(2+1)D-18 video encoder, with ``preset``'s clip format and the architecture
    the file shows."""
    model, _report = load_pretrained_video(path)
    overrides = {
        "model.video": "r2plus1d_18",
        "model.video_width": model.width,
        "model.video_mid_rule": model.mid_rule,
        "model.bn_eps": next(m.eps for m in model.modules() if isinstance(m, nn.BatchNorm3d)),
    }
    config = build_config(preset, overrides)
    return EvalEncoders({"video": model.eval()}, config, str(path), path.parent, None)


__all__ = ["DEFAULT_CLIPS", "Embedder", "probed_manifest"]
