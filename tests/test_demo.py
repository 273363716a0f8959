"""``xdc demo``: one family's data, pretraining, probes scored on val unless --split test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES
from xdc import cli
from xdc.errors import ConfigError


def _demo(out: Path, *extra: str) -> int:
    overrides = [f"{k}={v}" for k, v in TINY_OVERRIDES.items()]
    return cli.main(
        ["demo", "--out", str(out), "--family", "appearance", "--classes", "2", "--per-class", "5",
         "--methods", "supervised", "--no-progress", *extra, *overrides]
    )  # fmt: skip


def test_demo_scores_val_by_default_and_test_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _demo(tmp_path) == 0
    printed = capsys.readouterr().out
    assert "appearance family, linear probe, val top-1" in printed
    val = json.loads((tmp_path / "demo-val.json").read_text())
    assert val["split"] == "val" and val["family"] == "appearance"
    assert (val["train_videos"], val["val_videos"], val["test_videos"]) == (6, 2, 2)
    assert set(val["linear_probe_top1"]) == {"random", "supervised"}
    # Every number says what it follows: the standard probe, BatchNorm statistics per encoder.
    protocol = val["protocol"]
    assert protocol["name"] == "linear probe, stored BatchNorm statistics (standard)"
    assert protocol["bn_statistics"] == "auto" and protocol["test_split"] == "val"
    assert protocol["bn_statistics_used"] == {
        "random": "recomputed on 512 training clips (a random init has none)",
        "supervised": "stored (the checkpoint's)",
    }
    assert (
        "protocol: linear probe, stored BatchNorm statistics (standard); random init: BatchNorm "
        "statistics recomputed on 512 training clips (a random init has none); 1 clip per video"
    ) in printed
    # The probes' cross-validated top-1 on the training videos is kept, one per seed, and any
    # memorisation warning the table prints is in the JSON too.
    for row in ("random", "supervised"):
        for m in ("video", "audio"):
            (known,) = val["linear_probe_top1"][row][m]["cv_runs"]
            assert 0.0 <= known <= 100.0
    assert all(line in printed for line in val["warnings"])
    assert not (tmp_path / "demo-test.json").exists()
    mtime = (tmp_path / "seed0" / "supervised" / "checkpoint.pt").stat().st_mtime
    # The test split reuses the finished runs: only the probes run again.
    assert _demo(tmp_path, "--split", "test") == 0
    assert "test top-1" in capsys.readouterr().out
    assert json.loads((tmp_path / "demo-test.json").read_text())["split"] == "test"
    assert (tmp_path / "seed0" / "supervised" / "checkpoint.pt").stat().st_mtime == mtime


def test_demo_warns_for_a_pretrained_encoder_far_better_on_its_training_videos() -> None:
    from xdc.demo import fit_gap_lines

    def cell(mean: float, *cv: float | None) -> dict:
        return {"mean": mean, "cv_runs": list(cv)}

    summary = {
        "split": "val",
        "linear_probe_top1": {
            # the random init saw no video: never flagged, whatever its gap
            "random": {"video": cell(10.0, 60.0, 60.0), "audio": cell(30.0, 90.0, 90.0)},
            # 55 vs 30 (means over the seeds) is flagged; 95.5 vs 90 is not
            "xdc": {"video": cell(30.0, 60.0, 50.0), "audio": cell(90.0, 95.0, 96.0)},
            # a seed without cross-validation: no verdict; 80 vs 50 on one modality is flagged
            "supervised": {"video": cell(70.0, 99.0, None), "audio": cell(50.0, 80.0, 80.0)},
            "sdc": {"video": cell(40.0, 64.0, 64.0), "audio": cell(80.0, 81.0, 80.0)},
        },
    }
    assert fit_gap_lines(summary) == [
        "warning: XDC (cross-modal), video encoder: the probe scores 55.0% on held-out training "
        "videos (cross-validation) but 30.0% on the 'val' videos (means over 2 seeds)",
        "warning: supervised (upper bound), audio encoder: the probe scores 80.0% on held-out "
        "training videos (cross-validation) but 50.0% on the 'val' videos (means over 2 seeds)",
    ]


def test_demo_refuses_other_data_in_its_folder_and_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from xdc.demo import run_demo

    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.csv").write_text("path,label,split\n")
    (data / "demo-data.json").write_text(
        json.dumps({"family": "motion", "classes": 2, "per_class": 5, "seed": 0})
    )
    with pytest.raises(ConfigError, match="family motion"):
        run_demo(tmp_path, classes=2, per_class=5, family="digits", progress=False)
    (data / "demo-data.json").unlink()
    with pytest.raises(ConfigError, match="demo-data.json"):
        run_demo(tmp_path, classes=2, per_class=5, family="motion", progress=False)
    for flags, named in [
        (["--methods", "xdc,xdc"], "--methods"),
        (["--split", "train"], "--split"),
        (["--family", "cartoons"], "--family"),
        (["--methods", "xdc,simclr"], "--methods"),
    ]:
        assert _demo(tmp_path / "other", *flags) == 2
        assert named in capsys.readouterr().err
