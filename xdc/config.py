"""Configuration: frozen dataclasses with a docstring per field, presets, and strict validation.

A run's configuration is a ``PretrainConfig`` built from a preset plus ``section.key=value``
overrides (``train.lr=0.05 cluster.k=64``). Unknown keys are rejected, values are converted to the
field's type, and every error names the flag to fix. The resolved configuration is saved in each run
folder (``config.json``) and inside every checkpoint.

Tags: [V] confirmed by the paper's release or its author; [U] a sensible default
where the paper is silent — configurable, never hidden.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Union, get_args, get_origin, get_type_hints

from xdc.errors import ConfigError
from xdc.presets import PRESETS


@dataclass(frozen=True)
class ModelConfig:
    video: str = "r2plus1d_18"
    """Video encoder: ``r2plus1d_18`` (the paper's), ``mixed2d3d`` (2D bottom, 3D top: small clips on
    a CPU) or ``frame2d`` (per-frame 2D CNN pooled over time: appearance only, no motion)."""
    video_width: int = 64
    """Base channel width of the video encoder (64 = full size; smaller = narrow CPU variant)."""
    video_mid_rule: str = "xdc"
    """R(2+1)D mid-channel rule: ``xdc`` (released XDC/VMZ weights) or ``torchvision``."""
    video_temporal_pool: str = "mean"
    """``frame2d`` only: how per-frame features are pooled over time (``mean`` or ``max``)."""
    video_input: str = "rgb"
    """What the video encoder's first conv sees: ``rgb`` (the frames; released weights) or
    ``rgb_diff`` (the frames and their temporal differences, TSN's RGB-difference input: motion is
    explicit and the still background cancels out; docs/presets.md measures it)."""
    video_bottom: str = "fast"
    """``mixed2d3d`` and ``frame2d``: their per-frame 2D layers, ``fast`` (3 convs and a
    max-pool, each at a coarser scale) or ``deep`` (6 convs, from full resolution; a whole
    ``mixed2d3d`` costs 3.6× the multiply-adds):
    recognising what an object is — a shape, a handwritten digit on a photo — needs the ``deep``
    one (docs/presets.md)."""
    audio: str = "resnet18"
    """Audio encoder: ``resnet18`` (2D ResNet-18 on log-mel) [V architecture, U details]."""
    audio_width: int = 64
    """Base channel width of the audio encoder."""
    audio_pool: str = "avg"
    """Pooling of the audio feature map: ``avg``, ``max`` or ``avgmax`` (short events favour max)."""
    bn_eps: float = 1e-3
    """BatchNorm epsilon of the video encoder (1e-3 in the XDC release)."""


@dataclass(frozen=True)
class DataConfig:
    num_frames: int = 8
    """Frames per clip (8 for pretraining [U]; the paper finetunes on 32)."""
    train_frames: int = 0
    """Frames the encoder sees per training clip, picked at random among ``num_frames`` (0 = all)."""
    fps: float = 30.0
    """Target frame rate; frames are picked from the source by time [U]."""
    resize_short: int = 128
    """Frames are resized so their short side is this many pixels (128 → 128×171 for 4:3) [U]."""
    crop_size: int = 112
    """Square crop fed to the video encoder (random when training, centre when extracting) [V]."""
    flip: bool = True
    """Random horizontal flip when training."""
    augment: str = "none"
    """Extra per-clip augmentation when training: ``none``, ``strong`` (affine + colour) or
    ``strong_hue`` (``strong`` and a random hue turn: colour becomes a nuisance)."""
    sample_rate: int = 16000
    """Audio sample rate in Hz [U]."""
    n_mels: int = 40
    """Mel bands of the log-mel spectrogram [U]."""
    audio_frames: int = 100
    """Log-mel frames per clip (10 ms hop: 100 ≈ 1 s) [U]."""
    audio_align: str = "center"
    """Audio window position: ``center`` (centred on the video clip) or ``start``."""
    spec_augment: bool = False
    """Random time and frequency masks on the training log-mel."""
    overflow: str = "pad"
    """Clips longer than the video: ``pad`` (repeat the last frame) or ``loop``."""
    clips_per_video: int = 1
    """Clips drawn from each video per epoch (each at a new random start: temporal jittering)."""
    num_workers: int = 2
    """DataLoader worker processes (0 = load in the main process)."""
    cache: str = "none"
    """``memory``: decode every video once into RAM (small data sets; fast CPU training)."""
    cache_gib: float = 4.0
    """Largest decoded size ``cache=memory`` may hold, in GiB (estimated before decoding)."""


@dataclass(frozen=True)
class ClusterConfig:
    k: int = 256
    """Clusters per clustering [U: a per-dataset hyperparameter, users report 64–512]."""
    k_video: int = 0
    """Clusters of the video clustering (0 = ``k``)."""
    k_audio: int = 0
    """Clusters of the audio clustering (0 = ``k``)."""
    k_joint: int = 0
    """Clusters of CDC's joint clustering (0 = ``k``)."""
    pca_dim: int = 256
    """PCA dimension before k-means (0 = no PCA) [U, DeepCluster practice]."""
    whiten: bool = True
    """Whiten after PCA [U]."""
    l2_normalize: bool = True
    """L2-normalise features before k-means [U]."""
    kmeans_iters: int = 20
    """Lloyd iterations per clustering [U]."""
    bn_recalibration_clips: int = 512
    """Clips used to recompute BatchNorm statistics before extracting features (0 = off)."""
    views: int = 1
    """Clips per video whose features are averaged before clustering: 1 = the fixed centre clip;
    V > 1 = V clips drawn and augmented as in training (start, crop, flip, colour, SpecAugment),
    so that what the augmentation changes — colour, position, timing — is averaged out of the
    clustered features and the clusters follow it less (V× the extraction time)."""
    feature_store: str = "auto"
    """Where extracted features wait for clustering: ``memory`` (float32 in RAM), ``disk`` (float16
    memory-mapped files in RUN/features/, one per process and modality, streamed through PCA and
    k-means a chunk at a time, removed after clustering) or ``auto`` (disk when one process's
    features would take more than 2 GiB as float32, as from ~500k clips at 512 dimensions × 2
    modalities). ``cluster.views`` > 1 keeps features in memory."""


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 4
    """XDC iterations: extract → cluster → train [U]."""
    max_epochs: int = 10
    """Epochs per iteration at most; fewer when the held-out loss stops improving [V rule, U value]."""
    patience: int = 2
    """Epochs without held-out improvement before the iteration ends (0 = always max_epochs);
    needs held-out videos (``val_fraction`` > 0)."""
    val_fraction: float = 0.1
    """Fraction of videos held out each iteration to measure the pseudo-label loss (0 = none:
    then ``patience`` must be 0)."""
    clips_per_epoch: int = 0
    """Clips per epoch (0 = number of training videos × data.clips_per_video)."""
    batch_size: int = 8
    """Clips per step per process."""
    lr: float = 0.01
    """Peak learning rate (SGD) [U]."""
    lr_min: float = 0.0
    """Final learning rate of the cosine schedule."""
    schedule: str = "constant"
    """After the warm-up: ``constant`` (as DeepCluster: the pseudo-labels improve with every
    iteration, and the last, best labelling needs a learning rate to be learned; docs/presets.md),
    ``cosine`` or ``step`` (×0.1 at ``step_epochs``), both over the whole run."""
    step_epochs: tuple[int, ...] = ()
    """Epoch positions (over the whole run) where the step schedule divides the lr by 10."""
    warmup_epochs: float = 1.0
    """Linear warm-up length in epochs."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0 = off)."""
    mixup: float = 0.0
    """Mixup (Zhang et al., 2018) of training clips: each step blends its batch with a shuffled
    copy of itself, ``λ·x + (1−λ)·x[perm]`` with one ``λ ~ Beta(mixup, mixup)`` per step, and
    each head learns ``λ`` of its label and ``1−λ`` of the partner's. Against a network that
    memorises each of a few hundred videos. 0 = off; 0.2–1.0 are usual values."""
    mixup_on: str = "video"
    """Which encoders' inputs mixup blends: ``video``, ``audio`` or ``both`` (each with its own
    ``λ``, the same partners). ``small`` uses ``both``: on val, video-only mixup lowered the audio
    probe on most runs, mixing both raised it (docs/presets.md, section 14)."""
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    channels_last: bool = True
    """Convolutions in the memory layout they run fastest in (``xdc.encoders.use_fast_layout``):
    every 2D convolution (the per-frame bottom of ``mixed2d3d`` and ``frame2d``, the audio ResNet)
    in channels_last on any device (1.26× training steps of ``tiny`` and ``small`` on CPU), and
    on CUDA an R(2+1)D-18 in channels_last_3d (the layout of cuDNN's tensor-core 3D convs).
    Frozen-feature evaluations (``FeatureExtractor``: probes, retrieval, ``xdc.embed``; the
    report's cluster members) extract in the same layout, on a copy of the encoders
    (``xdc.encoders.in_run_layout``; ``make bench-extract`` compares the two)."""
    compile: bool = False
    """``torch.compile`` the training model (compiled at the first step; off by default)."""
    seed: int = 0
    """Seed of everything random: initialisation, clips, augmentation, k-means."""
    deterministic: bool = False
    """Deterministic algorithms only (bit-exact resume on CPU; slower on GPU)."""
    log_every: int = 10
    """Steps between metric log lines."""


@dataclass(frozen=True)
class PretrainConfig:
    method: str = "xdc"
    """``xdc``, ``sdc``, ``mdc``, ``cdc`` (the paper's), or ``supervised`` (true labels: upper bound)."""
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


SECTIONS = ("model", "data", "cluster", "train")

CHOICES: dict[str, tuple[str, ...]] = {
    "method": ("xdc", "sdc", "mdc", "cdc", "supervised"),
    "model.video": ("r2plus1d_18", "frame2d", "mixed2d3d"),
    "model.video_mid_rule": ("xdc", "torchvision"),
    "model.video_temporal_pool": ("mean", "max"),
    "model.video_input": ("rgb", "rgb_diff"),
    "model.video_bottom": ("fast", "deep"),
    "cluster.feature_store": ("auto", "memory", "disk"),
    "model.audio": ("resnet18",),
    "model.audio_pool": ("avg", "max", "avgmax"),
    "data.augment": ("none", "strong", "strong_hue"),
    "data.audio_align": ("center", "start"),
    "data.overflow": ("pad", "loop"),
    "data.cache": ("none", "memory"),
    "train.schedule": ("cosine", "step", "constant"),
    "train.mixup_on": ("video", "audio", "both"),
}


def parse_value(text: str, annotation: Any, flag: str) -> Any:
    """Convert a command-line string to the type of a config field."""
    origin = get_origin(annotation)
    if origin is tuple:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        return tuple(parse_value(p, get_args(annotation)[0], flag) for p in parts)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return None if text.lower() in ("none", "null", "") else parse_value(text, inner[0], flag)
    try:
        if annotation is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
    except ValueError:
        kind = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"{flag}={text!r}: expected {kind}") from None
    return text


def _coerce(value: Any, annotation: Any, flag: str) -> Any:
    if isinstance(value, str) and annotation is not str:
        return parse_value(value, annotation, flag)
    if get_origin(annotation) is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _apply(section: Any, values: Mapping[str, Any], prefix: str) -> Any:
    hints = get_type_hints(type(section))
    known = {f.name for f in fields(section)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'; valid keys: "
                + ", ".join(f"{prefix}{k}" for k in sorted(known))
            )
        changes[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return replace(section, **changes)


def build_config(
    preset: str | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    method: str | None = None,
) -> PretrainConfig:
    """A validated config: defaults, then the preset, then ``section.key=value`` overrides.

    ``overrides`` is a mapping ``{"train.lr": 0.1}`` or CLI strings ``["train.lr=0.1"]``.
    """
    config = PretrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"--preset {preset!r} is unknown; presets: {', '.join(PRESETS)}")
        config = replace(config, preset=preset)
        for name, values in PRESETS[preset].items():
            config = replace(config, **{name: _apply(getattr(config, name), values, f"{name}.")})
    for key, value in _override_items(overrides):
        config = _override(config, key, value)
    if method is not None:
        config = replace(config, method=method)
    validate(config)
    return config


def _override_items(overrides: Mapping[str, Any] | Sequence[str]) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    items = []
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"override {text!r} is not key=value (e.g. train.lr=0.05)")
        key, value = text.split("=", 1)
        items.append((key.strip(), value.strip()))
    return items


def _override(config: PretrainConfig, key: str, value: Any) -> PretrainConfig:
    if key == "method":
        return replace(config, method=str(value))
    if key == "preset":
        return replace(config, preset=str(value))
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(
            f"unknown config key {key!r}; keys look like section.name with section one of "
            + ", ".join(SECTIONS)
        )
    return replace(
        config, **{section: _apply(getattr(config, section), {name: value}, f"{section}.")}
    )


def config_from_dict(data: Mapping[str, Any]) -> PretrainConfig:
    """Rebuild a config saved with ``to_dict`` (e.g. from a checkpoint), strictly."""
    config = PretrainConfig()
    for key, value in data.items():
        if key in SECTIONS:
            config = replace(config, **{key: _apply(getattr(config, key), value, f"{key}.")})
        elif key in ("method", "preset"):
            config = replace(config, **{key: value})
        else:
            raise ConfigError(f"unknown config key {key!r} in saved config")
    validate(config)
    return config


def _check(ok: bool, flag: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{flag}: {message}")


def validate(config: PretrainConfig) -> None:
    """Raise ``ConfigError`` naming the flag of the first invalid value."""
    for flag, choices in CHOICES.items():
        section, _, name = flag.partition(".")
        value = getattr(getattr(config, section), name) if name else getattr(config, section)
        _check(value in choices, flag, f"{value!r} is not one of {', '.join(choices)}")
    m, d, c, t = config.model, config.data, config.cluster, config.train
    _check(m.video_width >= 4, "model.video_width", "must be >= 4")
    _check(m.audio_width >= 4, "model.audio_width", "must be >= 4")
    _check(m.bn_eps > 0, "model.bn_eps", "must be > 0")
    _check(d.num_frames >= 1, "data.num_frames", "must be >= 1")
    _check(
        0 <= d.train_frames <= d.num_frames, "data.train_frames", "must be in [0, data.num_frames]"
    )
    _check(d.fps > 0, "data.fps", "must be > 0")
    _check(d.crop_size >= 16, "data.crop_size", "must be >= 16")
    _check(d.resize_short >= d.crop_size, "data.resize_short", "must be >= data.crop_size")
    _check(d.sample_rate >= 4000, "data.sample_rate", "must be >= 4000 Hz")
    _check(d.n_mels >= 8, "data.n_mels", "must be >= 8")
    _check(d.audio_frames >= 16, "data.audio_frames", "must be >= 16")
    _check(d.clips_per_video >= 1, "data.clips_per_video", "must be >= 1")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(c.k >= 2, "cluster.k", "must be >= 2")
    for name in ("k_video", "k_audio", "k_joint"):
        value = getattr(c, name)
        _check(value == 0 or value >= 2, f"cluster.{name}", "must be 0 (= cluster.k) or >= 2")
    _check(c.pca_dim >= 0, "cluster.pca_dim", "must be >= 0 (0 = no PCA)")
    _check(c.kmeans_iters >= 1, "cluster.kmeans_iters", "must be >= 1")
    _check(c.views >= 1, "cluster.views", "must be >= 1 (1 = the centre clip only)")
    _check(
        c.views == 1 or c.feature_store != "disk",
        "cluster.feature_store",
        "disk needs cluster.views=1 (averaged views are kept in memory); use auto or memory",
    )
    _check(t.iterations >= 1, "train.iterations", "must be >= 1")
    _check(t.max_epochs >= 1, "train.max_epochs", "must be >= 1")
    _check(t.patience >= 0, "train.patience", "must be >= 0")
    _check(0.0 <= t.val_fraction < 0.5, "train.val_fraction", "must be in [0, 0.5)")
    _check(
        t.val_fraction > 0 or t.patience == 0,
        "train.patience",
        f"{t.patience} ends an iteration when the held-out loss stops improving, but "
        "train.val_fraction=0 holds out no video; set train.val_fraction > 0 (e.g. 0.1) or "
        "train.patience=0 (every iteration then runs train.max_epochs)",
    )
    _check(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(0 <= t.lr_min <= t.lr, "train.lr_min", "must be in [0, train.lr]")
    _check(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _check(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)")
    _check(t.mixup >= 0, "train.mixup", "must be >= 0 (the Beta distribution's alpha; 0 = off)")
    _check(t.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
    _check(t.log_every >= 1, "train.log_every", "must be >= 1")


def cluster_k(config: ClusterConfig, clustering: str) -> int:
    """K of a named clustering (``video``, ``audio``, ``joint``)."""
    specific = {"video": config.k_video, "audio": config.k_audio, "joint": config.k_joint}
    return specific.get(clustering, 0) or config.k


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Keys whose values differ between two config dicts, as ``section.key``."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            diffs += config_diff(va, vb, f"{prefix}{key}.")
        elif (list(va) if isinstance(va, tuple) else va) != (
            list(vb) if isinstance(vb, tuple) else vb
        ):
            diffs.append(f"{prefix}{key}")
    return diffs
