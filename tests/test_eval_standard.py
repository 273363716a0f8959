"""The rules that make xdc's evaluation numbers comparable with published ones, on real demo videos
and a real tiny run: the official test list is the denominator (an unreadable test video counts as
wrong, and every result says how many there were), finetuning tests with the BatchNorm statistics
it learned, frozen features use a trained encoder's stored statistics, head-only finetuning leaves
the encoder bitwise unchanged, 3-crop testing averages clips x crops, and the inner
cross-validation for C never splits a source group."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import TINY_OVERRIDES
from xdc.checkpoint import load_checkpoint
from xdc.data.datasets import ClipDataset, clip_loader, fixed_keys
from xdc.data.manifest import read_manifest, write_manifest
from xdc.evaluation.audio_probe import audio_probe
from xdc.evaluation.encoders import load_eval_encoders, random_eval_encoders
from xdc.evaluation.extract import (
    EvalClips,
    FeatureExtractor,
    eval_clips,
    extract_splits,
    split_rows,
)
from xdc.evaluation.finetune import FinetuneModel, FinetuneSettings, finetune
from xdc.evaluation.finetune_clips import ThreeCropClips, three_crops
from xdc.evaluation.linear_probe import (
    evaluate_linear_probe,
    inner_folds,
    linear_probe,
    source_groups,
)
from xdc.evaluation.retrieval import evaluate_retrieval, recall_at_k
from xdc.features import mean_per_video
from xdc.methods import MODALITIES

FAST = ("data.cache=memory",)


pytestmark = pytest.mark.usefixtures("one_thread")


def labelled_copy(
    demo_manifest: Path, out: Path, edit: Callable[[int, dict[str, Any]], dict[str, Any] | None]
) -> Path:
    """The demo manifest with absolute paths, each row passed through ``edit(i, row)`` (None:
    the row is dropped)."""
    manifest = read_manifest(demo_manifest)
    rows = []
    for i, original in enumerate(manifest.rows):
        row = edit(i, dict(original, path=str(manifest.path(i))))
        if row is not None:
            rows.append(row)
    extra = [c for c in rows[0] if c not in manifest.columns]
    return write_manifest(rows, out, extra_columns=extra)


@pytest.fixture(scope="module")
def broken_and_without(
    demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, str]:
    """Two manifests of the demo videos: one whose first test video is replaced by a file that
    cannot be decoded (same class, same metadata), and one without that video at all."""
    tmp = tmp_path_factory.mktemp("broken")
    manifest = read_manifest(demo_manifest)
    victim = split_rows(manifest, "test")[0]
    broken = tmp / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video" * 64)
    with_broken = labelled_copy(
        demo_manifest,
        tmp / "with_broken.csv",
        lambda i, row: dict(row, path=str(broken)) if i == victim else row,
    )
    without = labelled_copy(
        demo_manifest, tmp / "without.csv", lambda i, row: None if i == victim else row
    )
    return with_broken, without, str(broken)


# --- A: the denominator is the official test list ---------------------------------------------


def test_probe_counts_missing_test_videos_as_wrong() -> None:
    x = np.array([[-1.0], [-1.1], [1.0], [1.1]])
    y = np.array([0, 0, 1, 1])
    result = linear_probe(x, y, x, y, c_grid=[1.0], missing_test_labels=[0, 1, 1, 1])
    assert result["top1"] == pytest.approx(4 / 8) and result["n_test"] == 8
    assert result["per_class"] == {"0": pytest.approx(2 / 3), "1": pytest.approx(2 / 5)}
    assert result["top1_clip"] == 1.0 and result["unreadable_test_videos"] == 4
    # Retrieval: a query that could not be read is a miss at every k.
    recall = recall_at_k(x, y, x, y, ks=(1, 4), missing_queries=4)
    assert recall == {"R@1": 0.5, "R@4": 0.5}


def test_linear_probe_keeps_an_unreadable_test_video_in_the_denominator(
    tiny_run: Path, broken_and_without: tuple[Path, Path, str]
) -> None:
    """The same probe with and without the broken test video: the classifier and the answers on
    the two readable videos are the same, and the broken one is one more wrong answer of three."""
    with_broken, without, broken = broken_and_without
    source = load_eval_encoders(str(tiny_run))
    kwargs: dict[str, Any] = {"clips": 2, "progress": False, "batch_size": 4, "device": "cpu"}
    a = evaluate_linear_probe(source, read_manifest(with_broken), "video", **kwargs)
    b = evaluate_linear_probe(source, read_manifest(without), "video", **kwargs)
    assert a["unreadable_test_videos"] == 1 and a["n_test_official"] == a["n_test"] == 3
    assert a["unreadable_test_paths"] == [broken] and b["unreadable_test_videos"] == 0
    assert a["C"] == b["C"] and a["top1"] == pytest.approx(b["top1"] * 2 / 3)
    # 3 classes: every readable video has its class in the top 5, the unreadable one does not.
    assert b["top5"] == 1.0 and a["top5"] == pytest.approx(2 / 3)
    assert len(a["per_class"]) == 3 and len(b["per_class"]) == 2  # its class is still scored
    assert a["top1_clip"] == b["top1_clip"]  # clip level: over the clips that decoded


def test_retrieval_counts_an_unreadable_query_as_a_miss(
    tiny_run: Path, broken_and_without: tuple[Path, Path, str]
) -> None:
    with_broken, without, _ = broken_and_without
    source = load_eval_encoders(str(tiny_run))
    kwargs: dict[str, Any] = {"clips": 1, "progress": False, "batch_size": 4, "device": "cpu"}
    a = evaluate_retrieval(source, read_manifest(with_broken), **kwargs)
    b = evaluate_retrieval(source, read_manifest(without), **kwargs)
    assert a["unreadable_test_videos"] == 1 and a["n_test_official"] == 3
    for task in ("video_to_video", "audio_to_audio", "audio_to_video", "video_to_audio"):
        assert b[task]["R@20"] == 1.0  # 20 > the 15 training videos: every readable query hits
        assert a[task] == pytest.approx({k: v * 2 / 3 for k, v in b[task].items()}), task
    assert a["n_video_queries"] == 3 and a["unreadable_video_queries"] == 1
    assert a["n_pairs_test"] == 3 and a["unreadable_pair_queries"] == 1


def test_selavi_recall_equals_a_recall_computed_by_hand(
    tiny_run: Path, demo_manifest: Path
) -> None:
    """SeLaVi's protocol: the last stage's map (conv5) of each of 2 clips, max-pooled 2x2x2 and
    flattened, L2 per clip, averaged per video; test videos query training videos by Euclidean
    distance; a hit when one of the k nearest has the query's class."""
    source = load_eval_encoders(str(tiny_run))
    kwargs: dict[str, Any] = {"clips": 2, "progress": False, "batch_size": 4, "device": "cpu"}
    result = evaluate_retrieval(source, read_manifest(demo_manifest), protocol="selavi", **kwargs)

    manifest = read_manifest(demo_manifest)
    encoder = load_eval_encoders(str(tiny_run)).encoders["video"].eval()
    reader = EvalClips(manifest, source.config.data, ("video",), batch_size=4)
    maps: list[torch.Tensor] = []
    encoder.temporal.register_forward_hook(lambda _m, _i, out: maps.append(out))

    def video_features(rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        maps.clear()
        keys = fixed_keys(rows, 2)
        with torch.no_grad():
            for batch in reader.loader("video", keys):
                encoder(batch["video"])
        m = torch.cat(maps).numpy()  # (clips, C, T, H, W), H = W = 2 at 32x32
        b, c, t, h, w = m.shape
        pooled = m.reshape(b, c, t // 2, 2, h // 2, 2, w // 2, 2).max(axis=(3, 5, 7))
        flat = pooled.reshape(b, -1)
        flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
        per_video = flat.reshape(len(rows), 2, -1).mean(axis=1)  # keys: row-major, 2 clips each
        labels = np.array([manifest.label_names.index(manifest.rows[r]["label"]) for r in rows])
        return per_video, labels

    gallery, gallery_y = video_features(split_rows(manifest, "train"))
    queries, query_y = video_features(split_rows(manifest, "test"))
    distance = ((queries[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
    ranked = gallery_y[np.argsort(distance, axis=1, kind="stable")]
    by_hand = {f"R@{k}": float((ranked[:, :k] == query_y[:, None]).any(1).mean()) for k in
               (1, 5, 10, 20, 50)}  # fmt: skip
    assert result["video_to_video"] == pytest.approx(by_hand)
    assert result["feature_dim"] == {"video": gallery.shape[1]}
    assert "audio_to_audio" not in result and "audio_to_video" not in result
    xdc = evaluate_retrieval(source, manifest, protocol="xdc", **kwargs)
    assert xdc["feature_dim"]["video"] < gallery.shape[1]  # pooled output, not the pooled map


def test_selavi_retrieval_counts_an_unreadable_query_as_a_miss(
    tiny_run: Path, broken_and_without: tuple[Path, Path, str]
) -> None:
    with_broken, without, broken = broken_and_without
    source = load_eval_encoders(str(tiny_run))
    kwargs: dict[str, Any] = {"clips": 1, "progress": False, "batch_size": 4, "device": "cpu"}
    a = evaluate_retrieval(source, read_manifest(with_broken), protocol="selavi", **kwargs)
    b = evaluate_retrieval(source, read_manifest(without), protocol="selavi", **kwargs)
    assert b["video_to_video"]["R@50"] == 1.0  # 50 > the 15 training videos
    assert a["video_to_video"] == pytest.approx(
        {k: v * 2 / 3 for k, v in b["video_to_video"].items()}
    )
    assert a["n_video_queries"] == 3 and a["unreadable_video_queries"] == 1
    assert a["unreadable_test_videos"] == 1 and a["unreadable_test_paths"] == [broken]


def test_audio_probe_counts_an_unreadable_recording_as_wrong(
    tiny_run: Path, broken_and_without: tuple[Path, Path, str], tmp_path: Path
) -> None:
    with_broken, without, _ = broken_and_without
    manifests = [
        read_manifest(
            labelled_copy(
                data,
                tmp_path / f"{name}.csv",
                lambda i, row: dict(row, fold="1" if row["split"] == "test" else "2"),
            )
        )
        for name, data in (("a", with_broken), ("b", without))
    ]
    source = load_eval_encoders(str(tiny_run))
    kwargs: dict[str, Any] = {"clips": 1, "progress": False, "batch_size": 4, "device": "cpu"}
    a, b = (audio_probe(source, m, "fold", **kwargs) for m in manifests)
    fold_a, fold_b = a["folds"][0], b["folds"][0]
    assert fold_a["fold"] == "1" and fold_a["n_test"] == 3 and fold_a["unreadable_test_videos"] == 1
    assert fold_a["top1"] == pytest.approx(fold_b["top1"] * 2 / 3)
    assert fold_b["top5"] == 1.0 and fold_a["top5"] == pytest.approx(2 / 3)
    assert a["unreadable_test_videos"] == 1 and a["bn_statistics"]["audio"].startswith("stored")


# --- B: which BatchNorm statistics --------------------------------------------------------------


def test_frozen_features_use_a_trained_encoders_stored_statistics(tiny_run: Path) -> None:
    """auto: the checkpoint's statistics as they are (features = encoder.eval() on the clips);
    recalibrated on request: recomputed, and labelled so."""
    source = load_eval_encoders(str(tiny_run))
    manifest = read_manifest(source.data or "")
    train, test = split_rows(manifest, "train"), split_rows(manifest, "test")
    reader = EvalClips(manifest, source.config.data, ("video",), batch_size=4)
    stored = FeatureExtractor(source, reader, train, bn_clips=8, progress=False)
    forced = FeatureExtractor(
        source, reader, train, 8, progress=False, bn_statistics="recalibrated"
    )
    features = stored.extract(test, ("video",), 1)["video"].features["video"]
    clips = torch.cat([b["video"] for b in reader.loader("video", fixed_keys(test, 1))])
    with torch.no_grad():
        expected = load_eval_encoders(str(tiny_run)).encoders["video"].eval()(clips)
    torch.testing.assert_close(features, expected)
    assert stored.statistics() == {"policy": "auto", "video": "stored (the checkpoint's)"}
    other = forced.extract(test, ("video",), 1)["video"].features["video"]
    assert not torch.allclose(other, features, atol=1e-3)
    assert forced.statistics()["video"] == "recalibrated on 8 training clips"


def test_features_are_extracted_in_the_layout_the_run_trained_in(demo_manifest: Path) -> None:
    """``train.channels_last`` (on in every preset): the 2D convolutions of ``small``'s encoders
    extract in channels_last (a copy of them), with the features of the default layout."""
    manifest = read_manifest(demo_manifest)
    train, test = split_rows(manifest, "train"), split_rows(manifest, "test")[:6]
    features = {}
    for layout in ("true", "false"):
        source = random_eval_encoders(None, "small", [f"train.channels_last={layout}"], seed=0)
        reader = EvalClips(manifest, source.config.data, MODALITIES, batch_size=6)
        extractor = FeatureExtractor(source, reader, train, 0, device="cpu", progress=False)
        out = extractor.extract(test, MODALITIES, 1)
        features[layout] = {m: out[m].features[m] for m in MODALITIES}
        used, given = (
            next(m for m in enc.modules() if isinstance(m, nn.Conv2d)).weight
            for enc in (extractor.calibrated("video"), source.encoders["video"])
        )
        assert used.is_contiguous(memory_format=torch.channels_last) == (layout == "true")
        assert given.is_contiguous(), "the caller's encoder keeps its layout (a copy is changed)"
    for m in MODALITIES:
        torch.testing.assert_close(features["true"][m], features["false"][m], rtol=1e-4, atol=1e-5)


def test_encoders_of_one_data_config_share_one_decode_of_the_clips(
    demo_manifest: Path, tmp_path: Path
) -> None:
    """``xdc demo`` extracts every row (random init, each method) from one ``eval_clips``: with
    ``data.cache=memory`` the videos are decoded once, and the features are those of a reader
    made for each encoder. Proof of the one decode: the files are gone for the second pass."""
    shutil.copytree(demo_manifest.parent, tmp_path / "data")
    manifest = read_manifest(tmp_path / "data" / demo_manifest.name)
    overrides = [f"{k}={v}" for k, v in TINY_OVERRIDES.items()] + ["data.cache=memory"]
    sources = [random_eval_encoders(None, "tiny", overrides, seed=s) for s in (0, 1)]
    kwargs: dict[str, Any] = {"clips": 2, "bn_clips": 8, "progress": False, "device": "cpu"}
    alone = [extract_splits(src, manifest, ["train", "test"], **kwargs) for src in sources]
    reader = eval_clips(sources[0], manifest, ["train", "test"], progress=False)
    for path in (tmp_path / "data").rglob("*.mp4"):
        path.unlink()
    for src, expected in zip(sources, alone, strict=True):
        shared = extract_splits(src, manifest, ["train", "test"], reader=reader, **kwargs)
        for split, m in itertools.product(["train", "test"], MODALITIES):
            torch.testing.assert_close(shared[split][m].features[m], expected[split][m].features[m])
    other = random_eval_encoders(None, "tiny", [*overrides, "data.crop_size=24"], seed=0)
    with pytest.raises(ValueError, match="data config"):
        extract_splits(other, manifest, ["test"], reader=reader, **kwargs)


def test_finetuning_tests_with_the_statistics_it_learned(
    demo_manifest: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """3 test crops: each test video's probabilities are the softmax averaged over its 2 clips x 3
    crops of the finetuned model in eval mode, with the BatchNorm statistics of its checkpoint."""
    settings = FinetuneSettings(epochs=1, batch_size=4, test_clips=2, test_crops=3)
    finetune(tiny_run, demo_manifest, tmp_path / "ft", settings=settings, overrides=FAST,
             device="cpu", progress=False)  # fmt: skip
    state = load_checkpoint(tmp_path / "ft" / "split")
    before = load_checkpoint(tiny_run)["encoders"]["video"]
    key = next(k for k in before if k.endswith("running_mean"))
    assert not torch.equal(before[key], state["encoder"][key])  # it learned statistics
    source = load_eval_encoders(str(tiny_run), overrides=FAST)
    manifest = read_manifest(demo_manifest)
    model = FinetuneModel(source.encoders["video"], len(manifest.label_names), 0)
    model.encoder.load_state_dict(state["encoder"])
    model.head.load_state_dict(state["head"])
    model.eval()
    test = split_rows(manifest, "test")
    dataset = ThreeCropClips(manifest, source.config.data, train=False, modalities=("video",))
    probs, rows = [], []
    with torch.no_grad():
        for batch in clip_loader(dataset, fixed_keys(test, 2), 4):
            assert batch["video"].shape[1:3] == (3, 3)  # (B, crops, RGB, T, S, S)
            probs.append(model(batch["video"].flatten(0, 1)).softmax(1))
            rows.append(np.repeat(batch["index"].numpy(), 3))
    videos, mean = mean_per_video(np.concatenate(rows), torch.cat(probs))
    with (tmp_path / "ft" / "split" / "predictions.csv").open() as fh:
        saved = {p["path"]: p for p in csv.DictReader(fh)}
    for row, p in zip(videos.tolist(), mean, strict=True):
        entry = saved[str(manifest.rows[row]["path"])]
        assert manifest.label_names[int(p.argmax())] == entry["predicted"]
        assert float(entry["probability"]) == pytest.approx(float(p.max()), abs=2e-6)
    result = json.loads((tmp_path / "ft" / "split" / "result.json").read_text())
    assert result["test"]["crops"] == 3 and "learned" in result["test"]["bn_statistics"]


def test_finetune_counts_an_unreadable_test_video_as_wrong(
    tiny_run: Path, broken_and_without: tuple[Path, Path, str], tmp_path: Path, capsys
) -> None:
    with_broken, _, broken = broken_and_without
    settings = FinetuneSettings(epochs=1, batch_size=4, test_clips=1)
    summary = finetune(tiny_run, with_broken, tmp_path / "ft", settings=settings,
                       overrides=FAST, device="cpu", progress=False)  # fmt: skip
    result = json.loads((tmp_path / "ft" / "split" / "result.json").read_text())
    assert result["num_test_videos"] == 3 and result["unreadable_test_videos"] == 1
    assert result["failed_test_videos"] == [broken]
    with (tmp_path / "ft" / "split" / "predictions.csv").open() as fh:
        predictions = list(csv.DictReader(fh))
    assert len(predictions) == 3
    assert [p["predicted"] for p in predictions if p["path"] == broken] == [""]
    correct = sum(p["predicted"] == p["label"] for p in predictions)
    assert result["top1"] == pytest.approx(correct / 3)
    assert result["top5"] == pytest.approx(2 / 3)  # 3 classes: only the unreadable one misses
    assert np.load(tmp_path / "ft" / "split" / "confusion.npy").sum() == 2
    assert summary["splits"]["split"]["unreadable_test_videos"] == 1
    assert "unreadable test videos: 1 of 3, counted as wrong" in capsys.readouterr().out


# --- C: head-only finetuning ------------------------------------------------------------------


def test_head_only_finetuning_leaves_the_encoder_bitwise_unchanged(
    demo_manifest: Path, tiny_run: Path, tmp_path: Path
) -> None:
    settings = FinetuneSettings(epochs=1, batch_size=4, test_clips=1, encoder_lr_scale=0.0)
    finetune(tiny_run, demo_manifest, tmp_path / "ft", settings=settings, overrides=FAST,
             device="cpu", progress=False)  # fmt: skip
    before = load_checkpoint(tiny_run)["encoders"]["video"]
    state = load_checkpoint(tmp_path / "ft" / "split")
    after = state["encoder"]
    assert before.keys() == after.keys()
    # Weights, BatchNorm running statistics and their counters: all exactly as loaded.
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(k.endswith("running_var") for k in before)
    assert len(state["optimizer"]["param_groups"]) == 1  # the head alone is optimised


# --- D: 3-crop testing ------------------------------------------------------------------------


def test_three_crops_span_the_long_side() -> None:
    frames = np.arange(2 * 4 * 10 * 3, dtype=np.int64).reshape(2, 4, 10, 3)  # landscape 4x10
    left, centre, right = three_crops(frames, 4)
    assert [c.shape for c in (left, centre, right)] == [(2, 4, 4, 3)] * 3
    np.testing.assert_array_equal(left, frames[:, :, 0:4])
    np.testing.assert_array_equal(centre, frames[:, :, 3:7])
    np.testing.assert_array_equal(right, frames[:, :, 6:10])
    portrait = frames.transpose(0, 2, 1, 3)  # 10x4
    top, middle, bottom = three_crops(portrait, 4)
    np.testing.assert_array_equal(top, portrait[:, 0:4])
    np.testing.assert_array_equal(middle, portrait[:, 3:7])
    np.testing.assert_array_equal(bottom, portrait[:, 6:10])
    square = three_crops(frames[:, :, :6], 2)  # 4x6: short side centred
    np.testing.assert_array_equal(square[1], frames[:, 1:3, 2:4])


def test_three_crop_clips_hold_the_centre_crop(demo_manifest: Path) -> None:
    source = load_eval_encoders("random", preset="tiny")
    manifest = read_manifest(demo_manifest)
    key = fixed_keys(split_rows(manifest, "test")[:1], 1)[0]
    config = source.config.data
    one = ClipDataset(manifest, config, train=False, modalities=("video",))[key]["video"]
    three = ThreeCropClips(manifest, config, train=False, modalities=("video",))[key]["video"]
    assert three.shape == (3, *one.shape) and three.dtype == torch.uint8
    assert torch.equal(three[1], one) and not torch.equal(three[0], three[2])


class Mirrored(ClipDataset):
    """A dataset that shows every clip mirrored, through the public hook alone."""

    def video_views(self, frames: np.ndarray, u: np.ndarray | None) -> dict[str, Any]:
        views = super().video_views(frames, u)
        return {**views, "video_raw": views["video_raw"].flip(-1)}


def test_video_views_is_the_one_hook_for_read_and_unreadable_clips(
    broken_and_without: tuple[Path, Path, str],
) -> None:
    with_broken, _, broken = broken_and_without
    manifest = read_manifest(with_broken)
    config = load_eval_encoders("random", preset="tiny").config.data
    bad = next(r for r in range(len(manifest)) if str(manifest.path(r)) == broken)
    good = next(r for r in split_rows(manifest, "test") if r != bad)
    key, failed = fixed_keys([good], 1)[0], fixed_keys([bad], 1)[0]
    plain = ClipDataset(manifest, config, train=False, modalities=("video",))[key]["video"]
    assert torch.equal(Mirrored(manifest, config, train=False, modalities=("video",))[key]["video"],
                       plain.flip(-1))  # fmt: skip
    three = ThreeCropClips(manifest, config, train=False, modalities=("video",),
                           replace_failed=False)[failed]  # fmt: skip
    assert not three["valid"] and three["video"].shape == (3, *plain.shape)
    assert three["video"].dtype == torch.uint8 and not three["video"].any()  # three blank crops


# --- E: inner cross-validation grouped by source -------------------------------------------------


def test_inner_folds_never_split_a_group() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)  # 30 source files of 4 fragments
    y = np.repeat(rng.integers(0, 3, 30), 4)
    folds = inner_folds(y, groups, 5, seed=0)
    assert len(folds) == 5
    for fit, val in folds:
        assert not set(groups[fit]) & set(groups[val])
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(120))


def test_cross_validation_grouped_by_source_is_not_fooled_by_fragments() -> None:
    """Fragments of one source are near-identical videos with the source's (random) label: folds
    by video let C be chosen on near-duplicates (high CV accuracy); folds by source cannot."""
    rng = np.random.default_rng(3)
    sources, fragments = 40, 3
    centre = rng.normal(size=(sources, 40))
    label = rng.integers(0, 2, sources)
    source = np.repeat(np.arange(sources), fragments)
    x = centre[source] + rng.normal(0.0, 0.01, size=(sources * fragments, 40))
    y = label[source]
    by_video = linear_probe(x, y, x[:6], y[:6])
    by_source = linear_probe(x, y, x[:6], y[:6], cv_groups=source)
    assert max(by_video["cv_accuracy"].values()) > 0.9
    assert max(by_source["cv_accuracy"].values()) < 0.75
    assert "grouped by the 'group' column" in by_source["C_selection"]


def test_group_column_of_a_manifest(demo_manifest: Path, tmp_path: Path) -> None:
    plain = read_manifest(demo_manifest)
    assert source_groups(plain) is None
    grouped = read_manifest(
        labelled_copy(
            demo_manifest,
            tmp_path / "g.csv",
            lambda i, row: dict(row, group="" if i < 2 else str(i // 4)),
        )
    )
    groups = source_groups(grouped)
    assert groups is not None and len(groups) == len(grouped)
    assert groups[0] != groups[1]  # empty: each row its own group
    assert groups[4] == groups[7] != groups[8]


# --- F: DCASE2014's one official split ------------------------------------------------------------


def test_audio_probe_on_an_official_split_trains_on_train_only(
    tiny_run: Path, demo_manifest: Path, tmp_path: Path
) -> None:
    """A folds column holding train/test (DCASE2014's ``split``) is one evaluation: the classifier
    trains on the train rows only (not on val, never on test) and is tested on the test rows."""
    data = labelled_copy(
        demo_manifest,
        tmp_path / "dcase.csv",
        lambda i, row: dict(row, split="val") if i < 3 else row,
    )
    manifest = read_manifest(data)
    assert [manifest.rows[i]["split"] for i in range(3)] == ["val"] * 3
    train, test = split_rows(manifest, "train"), split_rows(manifest, "test")
    source = load_eval_encoders(str(tiny_run))
    result = audio_probe(
        source, manifest, "split", clips=1, progress=False, batch_size=4, device="cpu"
    )
    assert result["n_folds"] == 1 and "official split" in result["evaluation"]
    (fold,) = result["folds"]
    assert fold["fold"] == "test" and (fold["n_train"], fold["n_test"]) == (len(train), len(test))
    assert result["n_recordings"] == len(train) + len(test) and result["n_without_fold"] == 3


def test_cli_labels_the_statistics_and_the_unreadable_count(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    from tests.test_eval_cli import xdc_main

    command = (
        "linear-probe --checkpoint {run} --clips 1 --bn-clips 4 --bn-statistics recalibrated "
        "--batch-size 4 --no-progress --out-dir {out}"
    )
    assert xdc_main(command, run=tiny_run, out=tmp_path) == 0
    out = capsys.readouterr().out
    assert "BatchNorm statistics (recalibrated): video recalibrated on 4 training clips" in out
    assert "unreadable test videos: 0 of 3, counted as wrong" in out
    result = json.loads((tmp_path / "linear_probe_video.json").read_text())
    assert result["bn_clips"] == 4 and result["bn_statistics"]["policy"] == "recalibrated"


def test_cli_retrieval_protocols_write_their_settings(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    from tests.test_eval_cli import xdc_main

    command = (
        "retrieval --checkpoint {run} --protocol selavi --clips 1 --batch-size 4 --no-progress "
        "--out-dir {out}"
    )
    assert xdc_main(command, run=tiny_run, out=tmp_path) == 0
    out = capsys.readouterr().out
    assert "retrieval (selavi protocol)" in out and "R@50" in out
    r = json.loads((tmp_path / "retrieval_selavi.json").read_text())
    assert r["protocol"] == "selavi" and "Asano" in r["reference"]
    assert r["ks"] == [1, 5, 10, 20, 50] and r["distance"] == "euclidean"
    assert r["clips_per_video"] == 1 and r["normalisation"].startswith("L2 per clip")
    data = load_eval_encoders(str(tiny_run)).config.data
    assert r["frames_per_clip"] == data.num_frames and r["crop_size"] == data.crop_size
    assert r["cross_modal"] == "none" and r["tasks"] == ["video_to_video"]
    assert len(r["deviations"]) == 2 and "32-frame" in r["deviations"][0]
    assert xdc_main(command.replace("selavi", "xdc"), run=tiny_run, out=tmp_path) == 0
    r = json.loads((tmp_path / "retrieval.json").read_text())
    assert r["protocol"] == "xdc" and r["reference"] == "xdc's own" and r["ks"] == [1, 5, 10, 20]
    assert r["distance"] == "cosine" and r["cross_modal"].startswith("xdc's own: CCA")
