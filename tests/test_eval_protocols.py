"""The field's evaluation protocols by name, on tiny UCF-, HMDB-, ESC-50- and DCASE-shaped data sets
made of real files: the recipes hold the published numbers, a run records every setting and says
when it is not the standard protocol, the head warm-up moves BatchNorm statistics but no weight,
a recipe's augmentation and dropout resume exactly, the audio protocols train on windows and score
recordings, DCASE's official split is never k-folded, and a test item without the modality a
protocol reads is left out of its test set and counted."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.media import random_frames, write_video
from tests.test_audio_only import sound, write_audio
from tests.test_finetune import xdc_main
from xdc import cli
from xdc.checkpoint import load_checkpoint
from xdc.data.datasets import ClipKey
from xdc.data.index import index_source
from xdc.data.manifest import read_manifest, write_manifest
from xdc.errors import ConfigError
from xdc.evaluation.audio_probe import audio_probe
from xdc.evaluation.encoders import load_eval_encoders
from xdc.evaluation.finetune import FinetuneModel, finetune
from xdc.evaluation.finetune_clips import (
    TrainAugment,
    draw_resized_crop,
    jitter_colour,
    shift_hue,
)
from xdc.evaluation.finetune_protocols import (
    protocol_record,
    recipe_settings,
    recipe_values,
)
from xdc.evaluation.linear_probe import evaluate_linear_probe

# Clip settings of the tiny run: every named recipe at this scale is "modified", and says so.
TINY_CLIPS = (
    "data.num_frames=4",
    "data.fps=4",
    "data.resize_short=36",
    "data.crop_size=32",
    "data.cache=memory",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def demo_rows(demo_manifest: Path) -> list[dict[str, Any]]:
    manifest = read_manifest(demo_manifest)
    return [dict(r, path=str(manifest.path(i))) for i, r in enumerate(manifest.rows)]


@pytest.fixture(scope="module")
def ucf_shaped(demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo videos as a UCF101-shaped manifest: an official ``split_1`` column (one test video
    per class), UCF-style groups (``Class_gNN``, two videos each) and one test video replaced by
    a file that cannot be decoded."""
    tmp = tmp_path_factory.mktemp("ucf")
    broken = tmp / "v_Broken_g01_c01.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video" * 64)
    rows, seen = [], {}
    for row in demo_rows(demo_manifest):
        k = seen[row["label"]] = seen.get(row["label"], -1) + 1
        row.update(split_1="test" if k == 0 else "train", group=f"{row['label']}_g{k // 2:02d}")
        rows.append(row)
    rows[0]["path"] = str(broken)  # the first test video
    return write_manifest(rows, tmp / "ucf.csv", extra_columns=["split_1", "group"])


# --- the recipes ----------------------------------------------------------------------------------


def test_recipes_hold_the_published_settings() -> None:
    avid, avid_data = recipe_values("avid-cma", "ucf101")
    assert (avid["epochs"], avid["clips_per_video"], avid["head_warmup_epochs"]) == (16, 10, 5)
    assert (avid["optimizer"], avid["lr"], avid["weight_decay"], avid["dropout"]) == (
        "adam", 1e-4, 0.0, 0.5,
    )  # fmt: skip
    assert avid["lr_factors"] == (1,) * 6 + (0.3,) * 4 + (0.09,) * 4 + (0.027,) * 2
    assert avid["colour_jitter"] == (0.4, 0.4, 0.4, 0.2) and avid["crop_min_area"] == 0.08
    assert (avid["test_clips"], avid["test_crops"], avid["test_average"]) == (10, 1, "softmax")
    assert avid_data["num_frames"] == 8 and avid_data["fps"] == 16.0
    assert (avid_data["resize_short"], avid_data["crop_size"]) == (256, 224)
    hmdb, _ = recipe_values("avid-cma", "hmdb51")
    assert (hmdb["epochs"], hmdb["clips_per_video"]) == (10, 25)
    assert hmdb["lr_factors"] == (1,) * 3 + (0.3,) * 3 + (0.09,) * 2 + (0.027,) * 2
    assert hmdb["colour_jitter"] == (1.0, 1.0, 1.0, 0.2)
    avid32, avid32_data = recipe_values("avid-cma-32", "ucf101")
    assert (avid32["batch_size"], avid32["clips_per_video"], avid32_data["num_frames"]) == (
        32,
        5,
        32,
    )

    gdt, gdt_data = recipe_values("gdt")  # the same for both data sets
    assert gdt["lr_factors"] == (1, 4.5, 8, 8, 8, 8, 8, 0.4, 0.4, 0.4, 0.4, 0.02)
    assert (gdt["lr"], gdt["encoder_lr_scale"], gdt["weight_decay"]) == (0.0025, 0.1, 0.005)
    assert (gdt["epochs"], gdt["clips_per_video"], gdt["batch_size"]) == (12, 10, 32)
    assert (gdt["test_crops"], gdt["test_average"], gdt["head_init"]) == (3, "logits", "orthogonal")
    assert gdt["colour_jitter"] == (0.4, 0.4, 0.4) and gdt["colour_jitter_p"] == 0.8
    assert (gdt_data["num_frames"], gdt_data["fps"], gdt_data["crop_size"]) == (32, 30.0, 128)

    xdc, xdc_data = recipe_values("xdc", "ucf101")
    assert (xdc["lr"], xdc["epoch_clips"], xdc["nesterov"], xdc["weight_decay"]) == (
        8e-4, 100_000, True, 0.005,
    )  # fmt: skip
    assert xdc["lr_factors"] == (1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001)
    assert (xdc_data["num_frames"], xdc_data["fps"], xdc_data["crop_size"]) == (8, 25.0, 112)
    xdc32, xdc32_data = recipe_values("xdc-32", "hmdb51")
    assert (xdc32["lr"], xdc32["epoch_clips"], xdc32_data["num_frames"]) == (1.6e-3, 40_000, 32)

    with pytest.raises(ConfigError, match="--benchmark ucf101 or hmdb51"):
        recipe_settings("avid-cma")
    with pytest.raises(ConfigError, match="--lr-factors: has 16 values"):
        recipe_settings("avid-cma", "ucf101", epochs=2).validate()
    for name in ("xdc", "xdc-32", "avid-cma", "avid-cma-32", "gdt"):
        recipe_settings(name, "hmdb51").validate()


def test_a_recipe_with_changes_is_labelled_modified() -> None:
    data = {"num_frames": 32, "fps": 30.0, "resize_short": 128, "crop_size": 128, "flip": True,
            "augment": "none", "spec_augment": False, "train_frames": 0}  # fmt: skip
    standard = protocol_record(recipe_settings("gdt"), data)
    assert standard["standard"] and standard["modified"] == {} and standard["label"] == "gdt"
    assert "GDT" in standard["follows"] and standard["notes"]
    changed = protocol_record(
        recipe_settings("gdt", epochs=1, lr_factors=(1.0,), seed=3), dict(data, crop_size=64)
    )
    assert not changed["standard"]
    assert set(changed["modified"]) == {"epochs", "lr_factors", "data.crop_size"}  # not the seed
    assert changed["modified"]["epochs"] == {"recipe": 12, "used": 1}
    assert changed["label"] == "gdt, modified: epochs, lr_factors, data.crop_size"
    quick = protocol_record(recipe_settings(), {})
    assert (
        quick["name"] == "quick" and not quick["standard"] and "not a published" in quick["follows"]
    )


# --- finetuning by a named recipe ---------------------------------------------------------------


def test_gdt_run_records_every_setting_and_counts_the_broken_video(
    tiny_run: Path, ucf_shaped: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "gdt"
    flags = ["--protocol", "gdt", "--epochs", "1", "--lr-factors", "1", "--clips-per-video", "2",
             "--batch-size", "4", "--test-clips", "2", "--device", "cpu", "--no-progress"]  # fmt: skip
    args = ["--checkpoint", str(tiny_run), "--data", str(ucf_shaped), "--out", str(out)]
    assert xdc_main(*args, "--splits", "1", *flags, *TINY_CLIPS) == 0
    printed = capsys.readouterr().out
    assert "protocol: gdt, modified: " in printed and "(not the standard protocol)" in printed
    result = json.loads((out / "split_1" / "result.json").read_text())
    protocol = result["protocol"]
    assert protocol["name"] == "gdt" and not protocol["standard"]
    assert set(protocol["modified"]) == {
        "epochs",
        "lr_factors",
        "clips_per_video",
        "batch_size",
        "test_clips",
        "data.num_frames",
        "data.fps",
        "data.resize_short",
        "data.crop_size",
    }  # fmt: skip  (data.cache is how clips load, not which)
    used = protocol["used"]["settings"]
    assert (used["lr"], used["encoder_lr_scale"], used["colour_jitter"]) == (0.0025, 0.1, [0.4] * 3)
    assert protocol["recipe"]["settings"]["epochs"] == 12 and protocol["notes"]
    assert any("R(2+1)D" in n for n in protocol["notes"])  # the tiny encoder is another one
    assert result["test"]["crops"] == 3 and result["test"]["average"] == "logits"
    # the official list: 3 test videos, the broken one counted as wrong
    assert (result["num_test_videos"], result["unreadable_test_videos"]) == (3, 1)
    curve = [json.loads(x) for x in (out / "split_1" / "curve.jsonl").read_text().splitlines()]
    assert curve[0]["clips"] == 28  # 15 training videos x 2 clips, whole batches of 4 only
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["protocol"]["label"] == protocol["label"]


def test_classifier_initialisations() -> None:
    class Encoder(torch.nn.Module):
        num_features = 16

    weights = {}
    for init in ("normal", "orthogonal", "pytorch"):
        head = FinetuneModel(Encoder(), 5, seed=0, head_init=init).head
        weights[init] = head.weight.detach()
        assert torch.equal(
            weights[init], FinetuneModel(Encoder(), 5, 0, head_init=init).head.weight
        )
    orthogonal = weights["orthogonal"]
    torch.testing.assert_close(orthogonal @ orthogonal.T, torch.eye(5), atol=1e-5, rtol=0)
    assert weights["normal"].std() < 0.02 < weights["pytorch"].abs().max() <= 1 / math.sqrt(16)


def hmdb_settings(**changes: Any) -> Any:
    values: dict[str, Any] = {"epochs": 1, "lr_factors": (1.0,), "head_warmup_epochs": 1,
                              "clips_per_video": 1, "batch_size": 4, "test_clips": 1}  # fmt: skip
    values.update(changes)
    return recipe_settings("avid-cma", "hmdb51", **values)


def test_head_warm_up_moves_statistics_not_weights_and_resumes_exactly(
    tiny_run: Path, demo_manifest: Path, tmp_path: Path
) -> None:
    """AVID-CMA's recipe (resized crops, colour jitter, dropout 0.5, Adam): the warm-up epoch
    trains the classifier alone with the encoder in train mode; an interrupted run resumes to the
    same weights as an uninterrupted one."""
    before = load_checkpoint(tiny_run)["encoders"]["video"]
    snapshots: list[dict[str, torch.Tensor]] = []
    out = tmp_path / "whole"
    kwargs: dict[str, Any] = {"settings": hmdb_settings(), "overrides": TINY_CLIPS,
                              "device": "cpu", "progress": False}  # fmt: skip

    def snapshot(record: dict[str, Any]) -> None:
        snapshots.append(load_checkpoint(out / "split" / "checkpoint.pt")["encoder"])

    finetune(tiny_run, demo_manifest, out, on_epoch=snapshot, **kwargs)
    weights = [k for k, v in before.items() if k.endswith("weight") and v.dim() == 5]
    stats = [k for k in before if k.endswith("running_mean")]
    warm, tuned = snapshots
    assert all(torch.equal(before[k], warm[k]) for k in weights)
    assert any(not torch.equal(before[k], warm[k]) for k in stats)
    assert all(not torch.equal(before[k], tuned[k]) for k in weights)
    curve = [json.loads(x) for x in (out / "split" / "curve.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in curve] == ["head warm-up", "finetune"]
    assert [r["clips"] for r in curve] == [12, 12]  # 15 videos x 1 clip, whole batches of 4
    state = load_checkpoint(out / "split" / "checkpoint.pt")
    assert "head_warmup_optimizer" in state and state["optimizer"]["param_groups"][0]["lr"] == 1e-4

    cut = tmp_path / "cut"

    def interrupt(record: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_run, demo_manifest, cut, on_epoch=interrupt, **kwargs)
    finetune(tiny_run, demo_manifest, cut, **kwargs)
    resumed = load_checkpoint(cut / "split" / "checkpoint.pt")
    for part in ("encoder", "head"):
        assert all(torch.equal(v, resumed[part][k]) for k, v in state[part].items()), part


# --- the recipes' training augmentation ------------------------------------------------------------


def test_resized_crops_keep_the_published_ranges() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = draw_resized_crop(rng, 100, 0.08)
        assert 0 <= top <= 100 - h and 0 <= left <= 100 - w
        assert 0.08 * 0.97 <= h * w / 1e4 <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    assert draw_resized_crop(rng, 10, 0.99, attempts=0) == (0, 0, 10, 10)  # the fallback


def test_colour_operations_as_torchvision_defines_them() -> None:
    x = torch.rand(3, 2, 5, 6)
    torch.testing.assert_close(jitter_colour(x, [0], [0.5, 1, 1]), x * 0.5)
    flat = jitter_colour(x, [1], [1, 0.0, 1])  # contrast 0: each frame its mean grey level
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)).sum(0)
    torch.testing.assert_close(flat, grey.mean(dim=(1, 2), keepdim=True).expand_as(x))
    washed = jitter_colour(x, [2], [1, 1, 0.0])  # saturation 0: grey
    torch.testing.assert_close(washed, grey.expand_as(x))
    torch.testing.assert_close(shift_hue(x, 0.0), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(shift_hue(shift_hue(x, 0.3), -0.3), x, atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1, 1)
    torch.testing.assert_close(
        shift_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1, 1)
    )


def test_train_augment_is_a_function_of_the_clip_key() -> None:
    augment = TrainAugment(16, True, 0.08, (0.4, 0.4, 0.4, 0.2), 1.0)
    video = torch.from_numpy(random_frames(2 * 4, 24, 24).reshape(2, 4, 24, 24, 3)).permute(
        0, 4, 1, 2, 3
    )
    keys = [ClipKey(0, seed=11), ClipKey(1, seed=12)]
    a, b = augment(video, keys), augment(video, keys)
    assert a.shape == (2, 3, 4, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    other = augment(video, [ClipKey(0, seed=13), ClipKey(1, seed=12)])
    assert not torch.equal(a[0], other[0]) and torch.equal(a[1], other[1])


# --- a test video without the modality a protocol reads ---------------------------------------------


@pytest.fixture(scope="module")
def one_silent_test_video(demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo manifest with its first test video replaced by a real video without sound."""
    tmp = tmp_path_factory.mktemp("silent")
    silent = write_video(tmp / "silent.mp4", random_frames(30, 48, 48), fps=25.0, lossless=False)
    rows = demo_rows(demo_manifest)
    first = next(i for i, r in enumerate(rows) if r["split"] == "test")
    rows[first].update(path=str(silent), has_audio="0", sample_rate="0", audio_channels="0")
    return write_manifest(rows, tmp / "silent.csv")


def test_a_test_video_without_the_modality_is_left_out_and_counted(
    tiny_run: Path, one_silent_test_video: Path, tmp_path: Path
) -> None:
    settings = recipe_settings(modality="audio", epochs=1, batch_size=4, test_clips=1)
    finetune(tiny_run, one_silent_test_video, tmp_path / "ft", settings=settings,
             overrides=("data.cache=memory",), device="cpu", progress=False)  # fmt: skip
    result = json.loads((tmp_path / "ft" / "split" / "result.json").read_text())
    assert result["num_test_videos"] == 2 and result["unreadable_test_videos"] == 0
    assert result["without_modality"]["count"] == 1
    assert result["without_modality"]["paths"][0].endswith("silent.mp4")

    source = load_eval_encoders(str(tiny_run), overrides=["data.cache=memory"])
    manifest = read_manifest(one_silent_test_video)
    probe = evaluate_linear_probe(source, manifest, "audio", clips=1, batch_size=4,
                                  device="cpu", progress=False)  # fmt: skip
    assert probe["n_test_official"] == probe["n_test"] == 2
    assert probe["without_modality"]["audio"]["count"] == 1
    assert probe["without_modality"]["video"]["count"] == 0

    folds = [dict(r, fold="1" if r["split"] == "test" else "2") for r in manifest.rows]
    for i, row in enumerate(folds):
        row["path"] = str(manifest.path(i))
    folded = read_manifest(write_manifest(folds, tmp_path / "folds.csv", extra_columns=["fold"]))
    sound_probe = audio_probe(source, folded, "fold", clips=2, batch_size=8, device="cpu",
                              progress=False)  # fmt: skip
    assert sound_probe["without_modality"]["count"] == 1
    assert [f["n_test"] for f in sound_probe["folds"]] == [2, 15]
    assert sound_probe["n_recordings"] == 17 and sound_probe["unreadable_test_videos"] == 0


# --- the audio protocols ----------------------------------------------------------------------------

KINDS = ("low", "high", "noise")


def index_wavs(root: Path, lines: list[str]) -> Path:
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    index_source(root / "list.csv", root / "manifest.csv", workers=1, progress=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def esc_shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ESC-50-shaped: 5-s recordings of 3 classes in 5 folds, named fold-source-take-class; the
    first fold's two ``low`` recordings are two fragments (takes A, B) of one source file, so
    they share a ``group``; one test recording of fold 5 cannot be decoded."""
    root = tmp_path_factory.mktemp("esc50")
    lines = ["path,label,fold,group"]
    source = 100
    for fold in range(1, 6):
        for c, kind in enumerate(KINDS):
            takes = "AB" if (fold, kind) == (1, "low") else "A"
            source += 1
            for take in takes:
                name = f"{fold}-{source}-{take}-{c}.wav"
                write_audio(root / name, sound(kind, 5.0, seed=source * 3 + ord(take)))
                lines.append(f"{name},{kind},{fold},{source}")
    manifest = read_manifest(index_wavs(root, lines))
    rows = [dict(r, path=str(manifest.path(i))) for i, r in enumerate(manifest.rows)]
    broken = root / "5-999-A-2.wav"
    broken.write_bytes(b"RIFF....WAVEfmt not audio" * 50)
    rows.append(dict(rows[-1], path=str(broken)))
    return write_manifest(rows, root / "esc50.csv", extra_columns=["fold", "group"])


def test_esc50_trains_on_windows_and_scores_recordings(tiny_run: Path, esc_shaped: Path) -> None:
    source = load_eval_encoders(str(tiny_run), overrides=["data.cache=memory"])
    manifest = read_manifest(esc_shaped)
    kwargs: dict[str, Any] = {"clips": 10, "batch_size": 32, "device": "cpu", "progress": False}
    r = audio_probe(source, manifest, "fold", **kwargs)
    assert r["protocol"] == "standard" and "AVTS" in r["reference"] and r["notes"]
    assert (r["windows"], r["window_sec"], r["audio_frames"]) == (10, 2.0, 200)
    assert r["n_folds"] == 5 and [f["fold"] for f in r["folds"]] == ["1", "2", "3", "4", "5"]
    for f in r["folds"]:
        readable = f["n_test"] - f["unreadable_test_videos"]
        assert f["n_train_clips"] == 10 * f["n_train"]  # one training example per window
        assert f["n_test_clips"] == 10 * readable  # scored per recording from its windows
        assert "grouped by the 'group' column" in f["C_selection"]
    assert [f["n_test"] for f in r["folds"]] == [4, 3, 3, 3, 4]  # fold 1: two fragments
    assert r["folds"][4]["unreadable_test_videos"] == 1 and r["unreadable_test_videos"] == 1
    assert r["n_test_official"] == 17 and r["bn_statistics"]["audio"].startswith("stored")
    pooled = audio_probe(source, manifest, "fold", protocol="xdc-pooled", **kwargs)
    assert pooled["protocol"] == "xdc-pooled" and pooled["audio_frames"] == 48  # the run's clips
    assert all(f["n_train_clips"] == f["n_train"] for f in pooled["folds"])  # one per recording


@pytest.fixture(scope="module")
def dcase_shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DCASE2014-shaped: 30-s recordings, an official split (3 train and 2 test recordings of each
    of 2 classes) and one ``val`` recording the protocol does not use."""
    root = tmp_path_factory.mktemp("dcase")
    lines = ["path,label,split"]
    for c, kind in enumerate(KINDS[:2]):
        for i, split in enumerate(["train"] * 3 + ["test"] * 2 + ["val"] * (c == 0)):
            name = f"{kind}{i:02d}.wav"
            write_audio(root / name, sound(kind, 30.0, seed=40 * c + i))
            lines.append(f"{name},{kind},{split}")
    return index_wavs(root, lines)


def test_dcase_official_split_with_sixty_windows(
    tiny_run: Path, dcase_shaped: Path, tmp_path: Path, capsys
) -> None:
    command = (f"audio-probe --checkpoint {tiny_run} --data {dcase_shaped} --benchmark dcase2014 "
               f"--batch-size 64 --device cpu --no-progress --out-dir {tmp_path} data.cache=memory")  # fmt: skip
    assert cli.main(command.split()) == 0
    assert "official split" in capsys.readouterr().out
    r = json.loads((tmp_path / "audio_probe.json").read_text())
    assert r["evaluation"].startswith("official split") and r["folds_column"] == "split"
    assert r["n_folds"] == 1 and r["folds"][0]["fold"] == "test"  # never k-fold over the split
    fold = r["folds"][0]
    assert (fold["n_train"], fold["n_test"], r["n_recordings"], r["n_without_fold"]) == (
        6,
        4,
        10,
        1,
    )
    assert (r["windows"], fold["n_train_clips"], fold["n_test_clips"]) == (60, 360, 240)
    with (dcase_shaped).open() as fh:
        assert sum(row["split"] == "val" for row in csv.DictReader(fh)) == 1
