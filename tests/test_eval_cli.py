"""The evaluation commands end to end, through the real ``xdc.cli.main``, on real demo videos and a
real (tiny) pretraining run: what they write, what they print, and how they refuse bad input."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from xdc import cli, seeds
from xdc.checkpoint import load_checkpoint, save_checkpoint
from xdc.data.manifest import read_manifest, write_manifest
from xdc.evaluation.commands import EVALUATION_COMMANDS
from xdc.evaluation.encoders import load_eval_encoders
from xdc.evaluation.extract import EvalClips, FeatureExtractor, split_rows
from xdc.features import calibration_keys
from xdc.models.audio import AudioResNet18
from xdc.run import read_run_info

FAST = "--bn-clips 4 --batch-size 4 --no-progress"


def xdc_main(command: str, **paths: object) -> int:
    """``xdc COMMAND`` through the real CLI (``{name}`` in the command is replaced by
    ``paths[name]``), registering the evaluation commands the CLI does not list yet."""
    argv = [word.format(**paths) for word in command.split()]
    with pytest.MonkeyPatch.context() as mp:
        parser = cli.build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        missing = [add for add in EVALUATION_COMMANDS if _command_name(add) not in sub.choices]
        if missing:
            mp.setattr(cli, "COMMANDS", [*cli.COMMANDS, *missing])
        return cli.main(argv)


def _command_name(add: Callable[[argparse._SubParsersAction], None]) -> str:
    sub = argparse.ArgumentParser().add_subparsers()
    add(sub)
    return next(iter(sub.choices))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny run, so RUN/eval files never leak between tests."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def manifest_copy(
    demo_manifest: Path, out: Path, edit: Callable[[int, dict], dict] | None = None
) -> Path:
    """The demo manifest with absolute paths, each row passed through ``edit(i, row)``."""
    manifest = read_manifest(demo_manifest)
    rows: list[dict[str, object]] = []
    for i, original in enumerate(manifest.rows):
        row: dict[str, object] = dict(original, path=str(manifest.path(i)))
        rows.append(edit(i, row) if edit else row)
    return write_manifest(rows, out)


def test_linear_probe_video_json_is_stdout_and_file(run_copy: Path, capsys) -> None:
    code = xdc_main(
        f"linear-probe --checkpoint {{run}} --modality video --clips 2 --json {FAST}", run=run_copy
    )
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)  # nothing but the JSON object on stdout
    saved = json.loads((run_copy / "eval" / "linear_probe_video.json").read_text())
    assert saved == result
    assert result["n_train"] == 15 and result["n_test"] == 3
    assert result["n_train_clips"] == 30 and result["n_test_clips"] == 6
    assert result["top5"] == 1.0  # 3 classes: every class is in the top 5
    assert 0.0 <= result["top1"] <= 1.0 and result["feature_dim"] == 16
    assert result["C"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    assert set(result["per_class"]) == set(read_run_info(run_copy)["label_names"])
    assert result["train_split"] == "train" and result["test_split"] == "test"
    assert result["modality"] == "video"
    # A trained encoder keeps its stored BatchNorm statistics (nothing recomputed), and says so.
    assert result["bn_clips"] == 0 and result["bn_statistics"] == {
        "policy": "auto",
        "video": "stored (the checkpoint's)",
    }
    assert result["unreadable_test_videos"] == 0 and result["n_test_official"] == 3


def test_linear_probe_audio_prints_table(run_copy: Path, capsys) -> None:
    assert (
        xdc_main(
            f"linear-probe --checkpoint {{run}} --modality audio --clips 1 {FAST}", run=run_copy
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "top-1" in out and "n_train" in out and "audio" in out
    path = run_copy / "eval" / "linear_probe_audio.json"
    assert f"wrote {path}" in out
    result = json.loads(path.read_text())
    assert result["feature_dim"] == 32 and result["n_test"] == 3


def test_random_encoder_probe_writes_to_out_dir(run_copy: Path, tmp_path: Path, capsys) -> None:
    command = f"linear-probe --checkpoint random --like {{run}} --seed 3 --clips 1 --out-dir {{out}} {FAST}"
    assert xdc_main(command, run=run_copy, out=tmp_path / "random") == 0
    result = json.loads((tmp_path / "random" / "linear_probe_video.json").read_text())
    assert result["encoders"]["random"] is True and result["encoders"]["seed"] == 3
    assert result["checkpoint"] == "random" and result["n_test"] == 3
    assert "random encoders" in capsys.readouterr().out
    assert not (run_copy / "eval").exists()  # the --like run is only read


def test_random_preset_encoder_with_json_only_prints(
    demo_manifest: Path, tmp_path: Path, capsys
) -> None:
    command = (
        "linear-probe --checkpoint random --preset tiny --data {data} --modality audio --clips 1"
    )
    command += f" --json {FAST} model.audio_width=4 data.cache=none"
    assert xdc_main(command, data=demo_manifest) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["encoders"]["preset"] == "tiny" and result["encoders"]["random"] is True
    assert result["feature_dim"] == 32 and result["n_train"] == 15  # audio width 4 -> 8 * 4
    assert list(tmp_path.iterdir()) == []  # --json without --out-dir: nothing written


def test_extract_writes_npz_and_averages_clips(run_copy: Path, tmp_path: Path, capsys) -> None:
    command = (
        f"extract --checkpoint {{run}} --modality video --split test --clips 3 -o {{out}} {FAST}"
    )
    kept, pooled = tmp_path / "kept.npz", tmp_path / "pooled.npz"
    assert xdc_main(command + " --keep-clips", run=run_copy, out=kept) == 0
    assert xdc_main(command, run=run_copy, out=pooled) == 0
    assert "wrote 3 x 16 video features" in capsys.readouterr().out
    k, p = np.load(kept), np.load(pooled)
    manifest = read_manifest(read_run_info(run_copy)["data"])
    test_rows = split_rows(manifest, "test")
    assert k["features"].shape == (9, 16) and p["features"].shape == (3, 16)
    assert sorted(set(k["rows"].tolist())) == test_rows == p["rows"].tolist()
    assert k["clip"].tolist() == [0, 1, 2] * 3 and p["clip"].tolist() == [-1] * 3
    assert p["num_clips"].tolist() == [3, 3, 3]
    assert p["labels"].tolist() == [manifest.label(r) for r in test_rows]
    assert p["paths"].tolist() == [str(manifest.path(r)) for r in test_rows]
    assert p["label_names"].tolist() == manifest.label_names
    # Averaged features are the mean of the kept clips (same BatchNorm clips, same encoder).
    for i, row in enumerate(p["rows"]):
        np.testing.assert_allclose(
            p["features"][i], k["features"][k["rows"] == row].mean(0), atol=1e-5
        )


def test_bn_recalibration_of_random_encoders(run_copy: Path) -> None:
    """Random encoders get BatchNorm statistics of the training clips, computed exactly."""
    source = load_eval_encoders("random", like=str(run_copy), seed=0)
    assert source.data is not None  # the --like run's manifest
    manifest = read_manifest(source.data)
    train, test = split_rows(manifest, "train"), split_rows(manifest, "test")
    reader = EvalClips(manifest, source.config.data, ("audio",), batch_size=4)
    calibrated = FeatureExtractor(source, reader, train, bn_clips=8, progress=False)
    stored = FeatureExtractor(source, reader, train, bn_clips=0, progress=False)
    after = calibrated.extract(test, ("audio",), 1)["audio"].features["audio"]
    before = stored.extract(test, ("audio",), 1)["audio"].features["audio"]
    assert after.shape == before.shape and not torch.allclose(after, before, atol=1e-3)
    # The first BatchNorm of the audio encoder normalises each mel band of the log-mel input:
    # its recomputed running mean is the mean of each band over the 8 calibration clips.
    inputs = torch.cat(
        [
            b["audio"]
            for b in reader.loader(
                "audio", calibration_keys(train, 8, seeds.rng(0, "eval_calibration"))
            )
        ]
    )
    assert inputs.shape[0] == 8 and calibrated.calibration_counts["audio"] == 8
    expected = inputs.mean(dim=(0, 1, 3))
    encoder, original = calibrated.calibrated("audio"), source.encoders["audio"]
    assert isinstance(encoder, AudioResNet18) and isinstance(original, AudioResNet18)
    assert encoder.input_norm is not None and original.input_norm is not None
    norm = encoder.input_norm
    torch.testing.assert_close(norm.running_mean, expected, atol=1e-4, rtol=1e-4)
    stored_mean = original.input_norm.running_mean
    assert stored_mean is not None and torch.all(stored_mean == 0)  # the source is untouched


def test_calibration_clips_are_fixed_and_cover_the_rows() -> None:
    rows = [3, 5, 8, 13]
    keys = calibration_keys(rows, 10, seeds.rng(0, "eval_calibration"))
    assert keys == calibration_keys(rows, 10, seeds.rng(0, "eval_calibration")) and len(keys) == 10
    assert {k.row for k in keys} == set(rows) and all(k.num_clips == 3 for k in keys)
    assert len(set(keys)) == 10  # distinct clips
    many = calibration_keys(
        list(range(200)), 4, seeds.rng(0, "eval_calibration")
    )  # more videos than clips: centre clips of 4 videos
    assert len({k.row for k in many}) == 4 and all(k.num_clips == 1 for k in many)
    assert calibration_keys(rows, 0, seeds.rng(0, "eval_calibration")) == []
    augmented = calibration_keys(rows, 6, seeds.rng(1, "calibration", 0), augmented=True)
    assert {k.row for k in augmented} <= set(rows) and all(k.clip == -1 for k in augmented)
    assert len({k.seed for k in augmented}) == 6  # each clip its own crop and augmentation


def test_retrieval_command(run_copy: Path, capsys) -> None:
    assert xdc_main(f"retrieval --checkpoint {{run}} --clips 1 --json {FAST}", run=run_copy) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((run_copy / "eval" / "retrieval.json").read_text())
    for task in ("video_to_video", "audio_to_audio", "audio_to_video", "video_to_audio"):
        recalls = [result[task][f"R@{k}"] for k in (1, 5, 10, 20)]
        assert recalls == sorted(recalls) and all(0.0 <= r <= 1.0 for r in recalls)
        assert recalls[-1] == 1.0  # 20 > the 15 training videos: every class is retrieved
    assert result["n_video_queries"] == 3 and result["n_video_gallery"] == 15
    assert result["n_pairs_train"] == 15 and 1 <= result["cca_dim"] <= 14


def test_audio_probe_with_folds(run_copy: Path, tmp_path: Path, capsys) -> None:
    data = manifest_copy(
        read_run_info(run_copy)["data"],
        tmp_path / "folds.csv",
        lambda i, row: dict(row, fold="" if i == 0 else str(1 + i % 2)),
    )
    command = f"audio-probe --checkpoint {{run}} --data {{data}} --clips 1 {FAST} data.cache=memory"
    assert xdc_main(command, run=run_copy, data=data) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "std" in out
    result = json.loads((run_copy / "eval" / "audio_probe.json").read_text())
    assert result["n_folds"] == 2 and result["n_recordings"] == 17 and result["n_without_fold"] == 1
    folds = result["folds"]
    assert [f["fold"] for f in folds] == ["1", "2"]
    assert sorted(f["n_test"] for f in folds) == [8, 9]
    assert all(f["n_train"] + f["n_test"] == 17 and f["bn_clips"] == 0 for f in folds)
    top1 = [f["top1"] for f in folds]
    assert result["top1"] == pytest.approx(np.mean(top1))
    assert result["top1_std"] == pytest.approx(np.std(top1))


def test_cluster_eval_matches_sklearn(run_copy: Path, capsys) -> None:
    assert xdc_main("cluster-eval {run} --json", run=run_copy) == 0
    result = json.loads(capsys.readouterr().out)
    info = read_run_info(run_copy)
    truth = np.asarray(read_manifest(info["data"]).select(info["split"]).labels())
    labels = load_checkpoint(run_copy)["loop"]["labels"]
    assert {e["clustering"] for e in result["final"]} == set(labels) == {"video", "audio"}
    for entry in result["final"]:
        found = labels[entry["clustering"]].numpy()
        assert entry["nmi"] == pytest.approx(normalized_mutual_info_score(truth, found))
        assert entry["ari"] == pytest.approx(adjusted_rand_score(truth, found))
        purity = sum(np.bincount(truth[found == c]).max() for c in np.unique(found)) / len(truth)
        assert entry["purity"] == pytest.approx(purity)
        assert 0.0 <= entry["nmi_chance"] <= 1.0
    # One-iteration run: the logged clustering of iteration 1 is the final one.
    iterations = [(e["iteration"], e["clustering"]) for e in result["iterations"]]
    assert iterations == [(1, "video"), (1, "audio")]
    logged = {e["clustering"]: e["nmi"] for e in result["iterations"]}
    assert all(logged[e["clustering"]] == pytest.approx(e["nmi"]) for e in result["final"])
    assert json.loads((run_copy / "eval" / "clusters.json").read_text()) == result


BAD_INPUTS = {
    "other architecture": ("linear-probe --checkpoint {tmp}/other", "another architecture"),
    "missing checkpoint": ("linear-probe --checkpoint {tmp}/nope", "no checkpoint"),
    "corrupt checkpoint": (
        "linear-probe --checkpoint {tmp}/corrupt.pt --data {tmp}/m.csv",
        "cannot be read",
    ),
    "empty split": ("linear-probe --checkpoint {run} --test-split val", "--test-split"),
    "labels missing": ("linear-probe --checkpoint {run} --data {tmp}/nolabel.csv", "no label"),
    "folds column absent": ("audio-probe --checkpoint {run}", "--folds-column"),
    "random without architecture": ("retrieval --checkpoint random --data {tmp}/m.csv", "--like"),
    "one class": ("linear-probe --checkpoint {run} --data {tmp}/oneclass.csv", "at least 2"),
    "random without out-dir": ("linear-probe --checkpoint random --like {run}", "--out-dir"),
    "model override of a run": (
        "extract --checkpoint {run} -o {tmp}/x.npz model.video_width=8",
        "model.video_width",
    ),
}


def bad_inputs(run: Path, tmp: Path) -> None:
    """The files the BAD_INPUTS commands point at."""
    state = load_checkpoint(run)
    state["config"]["model"]["video_width"] = 8  # the weights are of width 4
    save_checkpoint(state, tmp / "other" / "checkpoint.pt")
    (tmp / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    data = read_run_info(run)["data"]
    manifest_copy(data, tmp / "m.csv")
    manifest_copy(
        data, tmp / "nolabel.csv", lambda i, row: dict(row, label="" if i == 0 else row["label"])
    )
    first = read_manifest(data).rows[0]["label"]
    manifest_copy(  # the training split keeps only the first class
        data,
        tmp / "oneclass.csv",
        lambda i, row: (
            row if row["split"] == "test" or row["label"] == first else dict(row, split="other")
        ),
    )


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(
    case: str, run_copy: Path, tmp_path: Path, capsys
) -> None:
    bad_inputs(run_copy, tmp_path)
    command, needle = BAD_INPUTS[case]
    assert xdc_main(command, run=run_copy, tmp=tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xdc: error: ") and "\n" not in err
    assert needle in err
    assert not (run_copy / "eval").exists()  # refused before any work
