"""Configs: every preset parses and validates; overrides are typed; errors name the flag."""

from __future__ import annotations

import json

import pytest

from xdc.cli import main
from xdc.config import PRESETS, build_config, config_diff, config_from_dict
from xdc.errors import ConfigError


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_parses_and_round_trips(preset: str) -> None:
    config = build_config(preset)
    assert config.preset == preset
    assert config_from_dict(json.loads(config.to_json())) == config


def test_overrides_are_converted_to_the_field_types() -> None:
    config = build_config(
        "tiny", ["train.lr=0.2", "cluster.k=7", "data.flip=false", "train.step_epochs=3,6"]
    )
    assert config.train.lr == 0.2 and isinstance(config.train.lr, float)
    assert config.cluster.k == 7
    assert config.data.flip is False
    assert config.train.step_epochs == (3, 6)
    assert config_diff(build_config("tiny").to_dict(), config.to_dict()) == [
        "cluster.k",
        "data.flip",
        "train.lr",
        "train.step_epochs",
    ]


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        (["train.lrr=1"], "train.lrr"),
        (["nosection.x=1"], "nosection.x"),
        (["train.lr=fast"], "train.lr"),
        (["train.lr=-1"], "train.lr"),
        (["cluster.k=1"], "cluster.k"),
        (["data.crop_size=200"], "data.resize_short"),
        (["model.audio_pool=median"], "model.audio_pool"),
        (["train.lr"], "key=value"),
    ],
)
def test_bad_values_name_the_flag(overrides: list[str], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag.replace(".", r"\.")):
        build_config("tiny", overrides)


def test_unknown_preset_and_method_are_rejected() -> None:
    with pytest.raises(ConfigError, match="--preset"):
        build_config("huge")
    with pytest.raises(ConfigError, match="method"):
        build_config("tiny", method="dino")


def test_cli_config_prints_resolved_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--preset", "paper-kinetics", "train.lr=0.02"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.02
    assert printed["model"]["video"] == "r2plus1d_18"


def test_cli_reports_config_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--preset", "tiny", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.batch_size" in err
