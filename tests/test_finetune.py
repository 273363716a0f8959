"""Full finetuning (the UCF101 / HMDB51 protocol): real training steps on the demo videos, one or
three splits, video-level testing, exact resume, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xdc import cli, optim
from xdc.checkpoint import load_checkpoint, save_checkpoint
from xdc.data.manifest import read_manifest, write_manifest
from xdc.evaluation.finetune import (
    FinetuneSettings,
    add_finetune_parser,
    finetune,
)
from xdc.features import mean_per_video

# Small and fast: decoded once into RAM, few test clips.
FAST = ("data.cache=memory",)
FAST_FLAGS = ("--device", "cpu", "--batch-size", "4", "--test-clips", "2", "--no-progress")


def fast_settings(**changes: Any) -> FinetuneSettings:
    values: dict[str, Any] = {"batch_size": 4, "test_clips": 2}
    values.update(changes)
    return FinetuneSettings(**values)


def xdc_main(*args: str) -> int:
    """``xdc finetune ARGS`` through the real ``xdc.cli.main`` (registering the command if the CLI
    does not list it yet)."""
    with pytest.MonkeyPatch.context() as mp:
        parser = cli.build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "finetune" not in commands.choices:
            mp.setattr(cli, "COMMANDS", [*cli.COMMANDS, add_finetune_parser])
        return cli.main(["finetune", *args])


def official_like_manifest(demo_manifest: Path, out: Path, label_missing: bool = False) -> Path:
    """A copy of the demo manifest (absolute paths) with split_1..split_3 columns: in split N the
    N-th video of each class is a test video, the others are training videos."""
    manifest = read_manifest(demo_manifest)
    rows: list[dict[str, object]] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(manifest.rows):
        position = seen[row["label"]] = seen.get(row["label"], -1) + 1
        new: dict[str, object] = {**row, "path": str(manifest.path(i))}
        for n in (1, 2, 3):
            new[f"split_{n}"] = "test" if position == n - 1 else "train"
        rows.append(new)
    if label_missing:
        rows[0]["label"] = ""
    return write_manifest(rows, out, extra_columns=["split_1", "split_2", "split_3"])


@pytest.fixture(scope="module")
def finished_split(
    demo_manifest: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One epoch of finetuning tiny_run's video encoder on the demo's train/test split (via the CLI)."""
    out = tmp_path_factory.mktemp("finetune") / "ft"
    args = ("--checkpoint", str(tiny_run), "--data", str(demo_manifest), "--out", str(out))
    assert xdc_main(*args, "--epochs", "1", *FAST_FLAGS, *FAST) == 0
    return out


def test_one_split_writes_every_result_file(finished_split: Path, demo_manifest: Path) -> None:
    split = finished_split / "split"
    manifest = read_manifest(demo_manifest)
    names = manifest.label_names
    test_paths = {r["path"] for r in manifest.rows if r["split"] == "test"}
    result = json.loads((split / "result.json").read_text())
    assert 0.0 <= result["top1"] <= 1.0 and result["num_test_videos"] == len(test_paths) == 3
    per_class = json.loads((split / "per_class_accuracy.json").read_text())
    assert list(per_class["accuracy"]) == names
    confusion = np.load(split / "confusion.npy")
    assert confusion.shape == (len(names), len(names)) and confusion.sum() == len(test_paths)
    # Accuracy is the confusion matrix's diagonal: the files agree with each other.
    assert result["top1"] == pytest.approx(np.trace(confusion) / confusion.sum())
    with (split / "confusion.csv").open() as fh:
        table = list(csv.reader(fh))
    assert table[0][1:] == names and [r[0] for r in table[1:]] == names
    assert np.array_equal(np.array([r[1:] for r in table[1:]], dtype=int), confusion)
    with (split / "predictions.csv").open() as fh:
        predictions = list(csv.DictReader(fh))
    assert {p["path"] for p in predictions} == test_paths
    assert all(p["predicted"] in names and 0 < float(p["probability"]) <= 1 for p in predictions)
    curve = [json.loads(line) for line in (split / "curve.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in curve] == [1] and curve[-1]["test_top1"] == result["top1"]
    assert {"loss", "train_acc", "lr"} <= set(curve[0])
    summary = json.loads((finished_split / "finetune.json").read_text())
    assert summary["splits"]["split"]["top1"] == result["top1"] == summary["mean_top1"]


def test_finetuning_trains_the_encoder_too(finished_split: Path, tiny_run: Path) -> None:
    before = load_checkpoint(tiny_run)["encoders"]["video"]
    after = load_checkpoint(finished_split / "split")["encoder"]
    changed = [
        k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])
    ]
    convs = [k for k in before if k.endswith(".weight") and before[k].dim() == 5]
    assert convs and set(convs) <= set(changed)


def test_a_frozen_encoder_keeps_its_weights(
    demo_manifest: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """encoder_lr_scale=0: the same run with a frozen encoder leaves every weight as it was."""
    finetune(
        tiny_run,
        demo_manifest,
        tmp_path / "ft",
        settings=fast_settings(epochs=1, encoder_lr_scale=0.0),
        overrides=FAST,
        device="cpu",
        progress=False,
    )
    before = load_checkpoint(tiny_run)["encoders"]["video"]
    state = load_checkpoint(tmp_path / "ft" / "split")
    after = state["encoder"]
    params = [k for k in before if not k.split(".")[-1].startswith(("running_", "num_batches"))]
    assert all(torch.equal(before[k], after[k]) for k in params)
    assert not torch.equal(state["head"]["weight"], torch.zeros_like(state["head"]["weight"]))


def test_a_finished_split_is_not_run_again(
    finished_split: Path, demo_manifest: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = finished_split / "split" / "checkpoint.pt"
    stamp, result = ckpt.stat().st_mtime_ns, (finished_split / "split" / "result.json").read_text()
    args = (
        "--checkpoint",
        str(tiny_run),
        "--data",
        str(demo_manifest),
        "--out",
        str(finished_split),
    )
    assert xdc_main(*args, "--epochs", "1", *FAST_FLAGS, *FAST) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (
        ckpt.stat().st_mtime_ns == stamp
        and (finished_split / "split" / "result.json").read_text() == result
    )
    # Other settings in the same folder: refused, naming what differs.
    assert xdc_main(*args, "--epochs", "1", "--lr", "0.02", *FAST_FLAGS, *FAST) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "finetune.lr" in err and "--out" in err


def test_three_splits_report_each_and_their_mean(
    demo_manifest: Path, tiny_run: Path, tmp_path: Path
) -> None:
    data = official_like_manifest(demo_manifest, tmp_path / "manifest.csv")
    summary = finetune(
        tiny_run,
        data,
        tmp_path / "ft",
        splits=[1, 2, 3],
        settings=fast_settings(epochs=1),
        overrides=FAST,
        device="cpu",
        progress=False,
    )
    results = [
        json.loads((tmp_path / "ft" / f"split_{n}" / "result.json").read_text()) for n in (1, 2, 3)
    ]
    assert list(summary["splits"]) == ["split_1", "split_2", "split_3"]
    top1 = [r["top1"] for r in results]
    assert summary["mean_top1"] == pytest.approx(np.mean(top1))
    assert summary["std_top1"] == pytest.approx(np.std(top1, ddof=1))
    assert (
        json.loads((tmp_path / "ft" / "finetune.json").read_text())["mean_top1"]
        == summary["mean_top1"]
    )
    # Each split tested on its own videos: the N-th video of each class.
    tested = [
        {
            p["path"]
            for p in csv.DictReader((tmp_path / "ft" / f"split_{n}" / "predictions.csv").open())
        }
        for n in (1, 2, 3)
    ]
    assert all(len(t) == 3 for t in tested) and not (tested[0] & tested[1] or tested[1] & tested[2])


def test_resume_after_an_interruption_ends_with_the_same_weights(
    demo_manifest: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """A random encoder of tiny_run's architecture, 2 epochs: interrupted after epoch 1 and resumed
    gives exactly the weights of an uninterrupted run (CPU, deterministic)."""
    kwargs: dict[str, Any] = {
        "settings": fast_settings(epochs=2),
        "like": tiny_run,
        "overrides": FAST,
        "device": "cpu",
        "progress": False,
    }
    finetune("random", demo_manifest, tmp_path / "whole", **kwargs)

    def interrupt(record: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune("random", demo_manifest, tmp_path / "cut", on_epoch=interrupt, **kwargs)
    assert load_checkpoint(tmp_path / "cut" / "split")["epoch"] == 1
    assert not (tmp_path / "cut" / "split" / "result.json").exists()
    finetune("random", demo_manifest, tmp_path / "cut", **kwargs)
    whole, cut = (load_checkpoint(tmp_path / d / "split") for d in ("whole", "cut"))
    assert cut["epoch"] == whole["epoch"] == 2
    for part in ("encoder", "head"):
        assert all(torch.equal(whole[part][k], cut[part][k]) for k in whole[part])
    curves = [
        [json.loads(x) for x in (tmp_path / d / "split" / "curve.jsonl").read_text().splitlines()]
        for d in ("whole", "cut")
    ]
    assert [(r["loss"], r["lr"]) for r in curves[0]] == [(r["loss"], r["lr"]) for r in curves[1]]


def test_video_level_prediction_averages_the_softmax_of_its_clips() -> None:
    # Video 7: two clips that disagree; the mean favours class 2. Video 3: one clip.
    rows = np.array([7, 3, 7])
    probs = torch.tensor([[0.6, 0.0, 0.4], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8]])
    videos, mean = mean_per_video(rows, probs)
    assert videos.tolist() == [3, 7]
    assert torch.allclose(mean, torch.tensor([[0.1, 0.8, 0.1], [0.3, 0.1, 0.6]]))
    assert mean.argmax(1).tolist() == [1, 2]  # a per-clip majority vote could not decide video 7


def test_learning_rate_warms_up_then_follows_the_schedule() -> None:
    cosine = FinetuneSettings(epochs=10, lr=0.1, warmup_epochs=2, lr_min=0.001)
    assert optim.lr_at(1.0, 10, cosine) == pytest.approx(0.05) and optim.lr_at(
        2.0, 10, cosine
    ) == pytest.approx(0.1)
    assert optim.lr_at(10.0, 10, cosine) == pytest.approx(0.001)
    assert (
        optim.lr_at(4.0, 10, cosine) > optim.lr_at(6.0, 10, cosine) > optim.lr_at(8.0, 10, cosine)
    )
    step = FinetuneSettings(epochs=10, lr=0.1, warmup_epochs=0, schedule="step", step_epochs=(4, 8))
    assert [round(optim.lr_at(e, 10, step), 6) for e in (0.5, 5, 9)] == [0.1, 0.01, 0.001]


def _no_labels(demo: Path, tmp: Path, run: Path) -> list[str]:
    return [
        "--checkpoint",
        str(run),
        "--data",
        str(official_like_manifest(demo, tmp / "m.csv", True)),
    ]


def _other_architecture(demo: Path, tmp: Path, run: Path) -> list[str]:
    state = load_checkpoint(run)
    state["config"]["model"]["video_width"] = 8  # weights of width 4 under a config of width 8
    save_checkpoint({k: v for k, v in state.items() if k != "format_version"}, tmp / "other.pt")
    return ["--checkpoint", str(tmp / "other.pt"), "--data", str(demo)]


def _corrupt(demo: Path, tmp: Path, run: Path) -> list[str]:
    (tmp / "bad").mkdir()
    (tmp / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    return ["--checkpoint", str(tmp / "bad"), "--data", str(demo)]


AUDIO_THREE_CROPS = ("--modality", "audio", "--test-crops", "3")
BAD_INPUTS = {
    "no split columns": (
        lambda d, t, r: ["--checkpoint", str(r), "--data", str(d), "--splits", "1,2,3"],
        "--splits-dir",
    ),
    "empty split": (
        lambda d, t, r: ["--checkpoint", str(r), "--data", str(d), "--test-split", "val"],
        "--test-split",
    ),
    "rows without labels": (_no_labels, "label"),
    "other architecture": (_other_architecture, "does not fit"),
    "corrupt checkpoint": (_corrupt, "cannot be read"),
    "random without architecture": (
        lambda d, t, r: ["--checkpoint", "random", "--data", str(d)],
        "--like",
    ),
    "missing manifest": (
        lambda d, t, r: ["--checkpoint", str(r), "--data", str(t / "none.csv")],
        "xdc index",
    ),
    "model override of a run": (
        lambda d, t, r: ["--checkpoint", str(r), "--data", str(d), "model.video_width=8"],
        "model.video_width",
    ),
    "three crops of audio": (
        lambda d, t, r: ["--checkpoint", str(r), "--data", str(d), *AUDIO_THREE_CROPS],
        "--test-crops",
    ),
    "bad splits flag": (
        lambda d, t, r: ["--checkpoint", str(r), "--data", str(d), "--splits", "1,x"],
        "--splits",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_code_2(
    case: str,
    demo_manifest: Path,
    tiny_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_args, expected = BAD_INPUTS[case]
    args = make_args(demo_manifest, tmp_path, tiny_run)
    assert (
        xdc_main(
            *args,
            "--out",
            str(tmp_path / "ft"),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xdc: error:") and expected in err, err
    assert not (tmp_path / "ft").exists()  # refused before any work
