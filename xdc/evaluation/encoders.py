"""Which encoders an evaluation looks at: a pretrained run's, or randomly initialised ones.

``--checkpoint RUN`` loads the run's two encoders strictly (``xdc.encoders.load_encoders``): a
missing, corrupt or mismatched checkpoint raises ``CheckpointError``. ``--checkpoint random`` builds
the same architecture with fresh weights — the baseline every pretrained result is compared to.
Its architecture comes from another run (``--like RUN``) or a preset (``--preset NAME``), plus
``section.key=value`` overrides, and its weights from ``--seed``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from xdc import seeds
from xdc.checkpoint import CHECKPOINT_NAME, load_checkpoint
from xdc.config import PretrainConfig, build_config, config_from_dict
from xdc.encoders import build_encoders, load_encoders
from xdc.errors import CheckpointError, ConfigError
from xdc.run import CONFIG_NAME, RUN_INFO_NAME

RANDOM = "random"
"""The ``--checkpoint`` value that asks for randomly initialised encoders."""


@dataclass
class EvalEncoders:
    """The video and audio encoders to evaluate and where they came from.

    Attributes:
        encoders: ``{"video": enc, "audio": enc}`` in eval mode; ``enc(x) -> (B, D)``.
        config: the architecture and clip parameters (data section) to evaluate with.
        checkpoint: what ``--checkpoint`` said (a run folder, a checkpoint file, or ``random``).
        run_dir: the run folder of a trained checkpoint (results go to ``run_dir/eval``);
            None for random encoders.
        data: the manifest the run (or the ``--like`` run) trained on, when known.
        seed: the initialisation seed of random encoders; None for trained ones.
        like: the run whose architecture random encoders copy, when given.
    """

    encoders: dict[str, nn.Module]
    config: PretrainConfig
    checkpoint: str
    run_dir: Path | None
    data: Path | None
    seed: int | None = None
    like: str | None = None

    @property
    def is_random(self) -> bool:
        return self.run_dir is None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description of the encoders, stored with every result."""
        return {
            "checkpoint": self.checkpoint,
            "random": self.is_random,
            "seed": self.seed,
            "like": self.like,
            "preset": self.config.preset,
            "method": None if self.is_random else self.config.method,
            "video_encoder": self.config.model.video,
            "audio_encoder": self.config.model.audio,
            "video_dim": int(getattr(self.encoders["video"], "num_features", 0)),
            "audio_dim": int(getattr(self.encoders["audio"], "num_features", 0)),
        }


def load_eval_encoders(
    checkpoint: str,
    like: str | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
) -> EvalEncoders:
    """The encoders ``--checkpoint`` names (see the module docstring).

    ``overrides`` are ``section.key=value`` strings. With a trained checkpoint only ``data.*`` and
    ``train.batch_size`` may change (how clips are read), never the architecture.

    Raises:
        ConfigError: ``--like``/``--preset`` misuse, an unknown key, or a model override of a run.
        CheckpointError: a missing, corrupt or mismatched checkpoint (``--checkpoint`` or ``--like``).
    """
    if checkpoint == RANDOM:
        return random_eval_encoders(like, preset, overrides, seed)
    if like is not None or preset is not None:
        flag = "--like" if like is not None else "--preset"
        raise ConfigError(
            f"{flag} only applies to --checkpoint random (a run's architecture comes from its "
            f"checkpoint); drop {flag} or pass --checkpoint random"
        )
    try:
        encoders, config, _meta = load_encoders(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(one_line(err, f"--checkpoint {checkpoint}")) from err
    for key, _value in parse_overrides(overrides):
        if not (key.startswith("data.") or key == "train.batch_size"):
            raise ConfigError(
                f"override {key}: --checkpoint {checkpoint} fixes the architecture and training "
                "settings; only data.* and train.batch_size may be overridden when evaluating a run"
            )
    config = apply_overrides(config, overrides)
    run_dir = run_folder(checkpoint)
    return EvalEncoders(encoders, config, str(checkpoint), run_dir, trained_manifest(run_dir))


def random_eval_encoders(
    like: str | None, preset: str | None, overrides: Sequence[str], seed: int
) -> EvalEncoders:
    """Randomly initialised encoders of the architecture of ``like`` (a run) or ``preset``."""
    if like is not None and preset is not None:
        raise ConfigError("--like and --preset both give an architecture; pass only one of them")
    if like is None and preset is None:
        raise ConfigError(
            "--checkpoint random needs an architecture: pass --like RUN (copy a run's config) "
            "or --preset NAME (e.g. --preset tiny) with optional key=value overrides"
        )
    data = None
    if like is not None:
        try:
            config = apply_overrides(run_config(like), overrides)
        except CheckpointError as err:
            raise CheckpointError(one_line(err, f"--like {like}")) from err
        data = trained_manifest(run_folder(like))
    else:
        config = build_config(preset, overrides)
    with seeds.torch_global(seed, "random_init"):
        encoders = build_encoders(config.model, config.data.n_mels)
    for enc in encoders.values():
        enc.eval()
    return EvalEncoders(encoders, config, RANDOM, None, data, seed=seed, like=like)


def one_line(err: Exception, context: str, limit: int = 400) -> str:
    """The message of ``err`` on one line (torch's load errors span many), prefixed by ``context``
    unless it already names it; a longer one keeps its start and its end (where the advice is)."""
    text = " ".join(str(err).split())
    if context.split()[-1] not in text:
        text = f"{context}: {text}"
    if len(text) <= limit:
        return text
    tail = limit // 3
    return f"{text[: limit - tail - 3]} … {text[-tail:]}"


def run_folder(run_or_file: str | Path) -> Path:
    """The run folder of ``RUN`` or of ``RUN/checkpoint.pt``."""
    path = Path(run_or_file)
    return path if path.is_dir() else path.parent


def run_config(run: str | Path) -> PretrainConfig:
    """The resolved config of a run: ``RUN/config.json``, else the one inside its checkpoint."""
    folder = run_folder(run)
    path = folder / CONFIG_NAME
    if path.is_file() and Path(run).is_dir():
        try:
            return config_from_dict(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{path}: not valid JSON ({err}); restore it or use the run's {CHECKPOINT_NAME}"
            ) from err
    state = load_checkpoint(run)
    if "config" not in state:
        raise ConfigError(f"{run}: its checkpoint holds no config; was it written by xdc pretrain?")
    return config_from_dict(state["config"])


def trained_manifest(run_dir: Path) -> Path | None:
    """The manifest recorded in ``RUN/run.json`` (None when the run has no such file)."""
    path = run_dir / RUN_INFO_NAME
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8")).get("data")
    return Path(data) if data else None


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """``["data.fps=8"]`` → ``[("data.fps", "8")]``; a malformed one raises ``ConfigError``."""
    items = []
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or "." not in key:
            raise ConfigError(
                f"override {text!r} is not section.key=value (e.g. data.num_workers=2)"
            )
        items.append((key.strip(), value.strip()))
    return items


def apply_overrides(config: PretrainConfig, overrides: Sequence[str]) -> PretrainConfig:
    """``config`` with ``section.key=value`` overrides applied and validated."""
    items = parse_overrides(overrides)
    if not items:
        return config
    values = config.to_dict()
    for key, value in items:
        section, _, name = key.partition(".")
        if section not in values or not isinstance(values[section], dict):
            raise ConfigError(
                f"unknown config key {key!r}; keys look like data.fps or model.video_width"
            )
        values[section][name] = value  # converted and checked by config_from_dict
    return config_from_dict(values)
