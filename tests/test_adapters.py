"""Published dataset lists read by ``xdc index`` (Kinetics, AudioSet, VGGSound, ESC-50), segments
of longer videos honoured by every clip, and the multi-label linear probe (mAP).

Every list and every file is real and small: H.264 + AAC mp4 files written with PyAV
(``tests.media``), named as the common downloaders name them. A video whose frames encode time
(flat grey levels, one per frame) shows where each decoded clip came from.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from tests.media import numbered_frames, tone, write_video
from tests.test_audio_only import write_audio
from xdc.data.adapters import detect_format, read_list
from xdc.data.cache import ClipCache
from xdc.data.datasets import ClipDataset, ClipKey, fixed_keys
from xdc.data.decode import ClipSpec, decode_clip
from xdc.data.index import index_source
from xdc.data.manifest import Manifest, read_manifest, write_manifest
from xdc.errors import DataError
from xdc.evaluation.linear_probe import mean_average_precision, multilabel_probe
from xdc.training import pretrain

FPS = 8.0
RATE = 16000
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
PITCH = {"red": 300.0, "green": 900.0, "blue": 2500.0}


def clip_file(path: Path, kind: str, seconds: float, seed: int = 0) -> Path:
    """An mp4 of one class: a flat colour whose brightness drifts, with the class's tone."""
    n = round(seconds * FPS)
    shade = np.linspace(0.7, 1.0, n)[:, None] * np.array(COLOURS[kind])[None, :]
    shade += np.random.default_rng(seed).uniform(-20, 20, 3)
    frames = np.broadcast_to(shade[:, None, None, :], (n, 32, 32, 3)).clip(0, 255)
    audio = tone(seconds, RATE, freq=PITCH[kind] * (1 + 0.02 * seed))
    return write_video(path, frames.astype(np.uint8), FPS, audio, RATE, lossless=False)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- detection and errors -------------------------------------------------------------------------

AUDIOSET_HEAD = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=5\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("path,label\na.mp4,x\n", "paths"),
        ("label,youtube_id,time_start,time_end,split\nx,abc,0,10,train\n", "kinetics"),
        ("label,youtube_id,time_start,time_end,split,is_cc\nx,abc,0,10,train,0\n", "kinetics"),
        (AUDIOSET_HEAD + '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n', "audioset"),
        ('--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n', "audioset"),
        ("---g-f_I2yQ,1,people marching,test\n", "vggsound"),
        (
            "filename,fold,target,category,esc10,src_file,take\n1-100032-A-0.wav,1,0,dog,True,"
            "100032,A\n",
            "esc50",
        ),
    ],
)
def test_the_format_is_detected_from_the_first_lines(
    tmp_path: Path, text: str, expected: str
) -> None:
    (tmp_path / "list.csv").write_text(text)
    assert detect_format(tmp_path / "list.csv") == expected


def test_unknown_or_wrong_formats_name_the_file_and_the_fix(tmp_path: Path) -> None:
    unknown = tmp_path / "mystery.csv"
    unknown.write_text("clip,category\na.mp4,x\n")
    with pytest.raises(DataError, match=r"mystery.csv: no 'path' column .*--format kinetics"):
        index_source(unknown, tmp_path / "m.csv", progress=False)
    kinetics = tmp_path / "train.csv"
    kinetics.write_text("label,youtube_id,time_start,time_end,split\nx,abc,0,10,train\n")
    with pytest.raises(
        DataError, match=r"train.csv: does not read as --format audioset .*looks like a 'kinetics'"
    ):
        index_source(kinetics, tmp_path / "m.csv", list_format="audioset", progress=False)
    with pytest.raises(DataError, match=r"train.csv: does not read as --format esc50 .*--format"):
        read_list(kinetics, "esc50")
    with pytest.raises(DataError, match=r"--format 'ucf': unknown; choose one of paths"):
        read_list(kinetics, "ucf")
    with pytest.raises(DataError, match=r"--videos .*nowhere: not a folder"):
        read_list(kinetics, videos=tmp_path / "nowhere")


# --- segments: a clip never leaves its segment -----------------------------------------------------


@pytest.fixture(scope="module")
def timed_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s at 8 fps whose frame k is flat grey level ``numbered_frames``' k; a tone throughout."""
    path = tmp_path_factory.mktemp("timed") / "full.mp4"
    frames = numbered_frames(int(6 * FPS))
    return write_video(path, frames, FPS, tone(6.0, RATE), RATE, lossless=False)


def _frame_times(video: torch.Tensor) -> np.ndarray:
    """(T,) source time of each frame of a (3, T, H, W) clip of ``timed_video``."""
    levels = np.linspace(8, 247, int(6 * FPS))
    grey = video.float().mean(dim=(0, 2, 3)).numpy()
    return np.abs(grey[:, None] - levels[None, :]).argmin(axis=1) / FPS


SEGMENTS = [(2.0, 4.0), (4.5, 5.0)]  # a long one and one shorter than a 1 s clip


@pytest.mark.parametrize("overflow", ["pad", "loop"])
@pytest.mark.parametrize("cache", ["none", "memory"])
def test_every_training_and_evaluation_clip_lies_inside_its_segment(
    timed_video: Path, overflow: str, cache: str
) -> None:
    rows = [
        {"path": str(timed_video), "duration_sec": 6.0, "fps": FPS, "width": 32, "height": 32,
         "has_video": 1, "has_audio": 1, "sample_rate": RATE, "audio_channels": 1,
         "start_sec": lo, "end_sec": hi, "label": "x"}
        for lo, hi in SEGMENTS
    ]  # fmt: skip
    manifest = read_manifest(write_manifest(rows, timed_video.parent / f"m-{overflow}.csv"))
    assert [manifest.duration(i) for i in range(2)] == [2.0, 0.5]
    config = tiny_config("xdc", data__overflow=overflow, data__cache=cache).data
    for train in (True, False):
        dataset = ClipDataset(manifest, config, train=train, batch_transforms=True)
        if cache == "memory":
            dataset.build_cache(progress=False)
        keys = [ClipKey(r, seed) for r in (0, 1) for seed in range(12)] if train else []
        keys += fixed_keys([0, 1], num_clips=3)
        for key in keys:
            sample = dataset[key]
            lo, hi = SEGMENTS[key.row]
            times = _frame_times(sample["video_raw"])
            assert lo <= sample["start_sec"] < hi
            assert (times >= lo).all() and (times < hi).all(), (key, times)
            if key.row == 0:  # long enough: the clip's frames are consecutive source frames
                assert np.allclose(np.diff(times), 1 / config.fps, atol=1 / FPS)


def test_training_starts_cover_the_segment_and_evaluation_clips_spread_over_it(
    timed_video: Path,
) -> None:
    rows = [{"path": str(timed_video), "duration_sec": 6.0, "start_sec": 2.0, "end_sec": 4.0}]
    manifest = Manifest(timed_video.parent, rows)
    dataset = ClipDataset(manifest, tiny_config("xdc").data, train=True, modalities=("video",))
    u = np.random.default_rng(0).random(200)
    starts = [dataset.clip_start(0, ClipKey(0, 0), x) for x in u]
    assert 2.0 <= min(starts) < 2.1 and 2.9 < max(starts) <= 3.0  # 1 s clips in [2, 4)
    fixed = [dataset.clip_start(0, k, x) for k, x in zip(fixed_keys([0], 4), u, strict=False)]
    assert fixed == pytest.approx([2.125, 2.375, 2.625, 2.875])


def test_audio_outside_the_segment_is_silent_from_disk_and_from_the_cache(
    timed_video: Path,
) -> None:
    spec = ClipSpec(num_frames=8, fps=8.0, resize_short=32, audio_samples=RATE, sample_rate=RATE)
    clip = decode_clip(timed_video, 4.5, spec, duration_sec=6.0, segment=(4.5, 5.0))
    # the 1 s window is centred on the clip [4.5, 5.5): it covers [4.5, 5.5), the segment ends at 5
    assert clip.audio_start_sec == pytest.approx(4.5)
    inside, outside = clip.audio[: RATE // 2], clip.audio[RATE // 2 :]
    assert np.abs(inside).max() > 0.1 and not outside.any()
    whole = decode_clip(timed_video, 4.5, spec, duration_sec=6.0)
    assert np.abs(whole.audio[RATE // 2 :]).max() > 0.1  # the file itself goes on
    rows = [{"path": str(timed_video), "duration_sec": 6.0, "fps": FPS, "width": 32,
             "height": 32, "has_video": 1, "has_audio": 1, "start_sec": 4.5, "end_sec": 5.0}]  # fmt: skip
    manifest = read_manifest(write_manifest(rows, timed_video.parent / "audio.csv"))

    cached = ClipCache(manifest, [0], spec, 2**30, progress=False).clip(0, 4.5)
    np.testing.assert_allclose(cached.audio, clip.audio, atol=2e-3)
    np.testing.assert_array_equal(cached.frames, clip.frames)


def test_a_paths_list_may_name_segments_and_bad_ones_are_rejected(
    timed_video: Path, tmp_path: Path
) -> None:
    listed = tmp_path / "list.csv"
    listed.write_text(
        f"path,label,start_sec,end_sec\n{timed_video},a,2,4\n{timed_video},b,,\n"
        f"{timed_video},c,7,9\n{timed_video},d,x,3\n"
    )
    result = index_source(listed, tmp_path / "m.csv", workers=1, progress=False)
    assert result.kept == 2 and result.rejected_by_reason == {"bad segment": 2}
    manifest = read_manifest(tmp_path / "m.csv")
    assert [manifest.segment(i) for i in range(2)] == [(2.0, 4.0), None]
    assert [manifest.duration(i) for i in range(2)] == [2.0, pytest.approx(6.0)]
    details = [r["detail"] for r in _read_csv(tmp_path / "rejected.csv")]
    assert "starts after the file ends" in details[0] and "not numbers" in details[1]


def test_a_manifest_segment_that_names_no_part_of_its_file_is_refused(tmp_path: Path) -> None:
    rows = [{"path": "a.mp4", "duration_sec": 6.0, "start_sec": 7, "end_sec": 9}]
    path = write_manifest(rows, tmp_path / "m.csv")
    with pytest.raises(DataError, match=r"m.csv: row 1 \(a.mp4\): segment .* starts after"):
        read_manifest(path)


# --- the lists, end to end: index -> pretrain -> probe ---------------------------------------------


@pytest.fixture(scope="module")
def lists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small Kinetics, AudioSet, VGGSound and ESC-50 lists with their files, as downloaded."""
    root = tmp_path_factory.mktemp("lists")
    kinds = list(COLOURS)
    # Kinetics: downloaded segments in <split>/<label>/, two full videos (row times pick their
    # segment), one full video named by its id that is the segment itself, one missing file.
    videos = root / "kinetics" / "videos"
    lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
    for i in range(12):
        kind, split = kinds[i % 3], "train" if i < 9 else "val"
        vid = f"k{i:02d}-x_Y"
        lines.append(f"{kind},{vid},{10 + i},{12 + i},{split},0")
        clip_file(videos / split / kind / f"{vid}_{10 + i:06d}_{12 + i:06d}.mp4", kind, 2.0, i)
    for i, kind in enumerate(kinds[:2]):
        lines.append(f"{kind},full{i},2,4,train,0")
        clip_file(videos / "full" / f"full{i}.mp4", kind, 6.0, 20 + i)
    lines.append("blue,cut0,30,32,train,0")
    clip_file(videos / "cut0.mp4", "blue", 2.0, 30)
    lines.append("red,gone,0,10,train,0")
    (root / "kinetics" / "train.csv").write_text("\n".join(lines) + "\n")
    # AudioSet: '#' comments, quoted label lists, several labels per row, MIDs named by
    # class_labels_indices.csv; a train list and an eval list, one full video with its segment.
    audioset = root / "audioset"
    mids = {"red": "/m/0red", "green": "/m/0grn", "blue": "/t/dd0blu"}
    names = "index,mid,display_name\n" + "".join(
        f'{k},{mid},"{kind.title()}, colour"\n' for k, (kind, mid) in enumerate(mids.items())
    )
    (audioset / "class_labels_indices.csv").parent.mkdir(parents=True)
    (audioset / "class_labels_indices.csv").write_text(names)
    for name, count in (("balanced_train_segments.csv", 9), ("eval_segments.csv", 4)):
        rows = []
        for i in range(count):
            kind, other = kinds[i % 3], kinds[(i + 1) % 3]
            vid = f"-{name[0]}{i}AbC"
            labels = f"{mids[kind]},{mids[other]}" if i % 2 else mids[kind]
            rows.append(f'{vid}, {30 + i}.000, {32 + i}.000, "{labels}"')
            clip_file(audioset / "clips" / f"{vid}_{30 + i}.000_{32 + i}.000.mp4", kind, 2.0, i)
        (audioset / name).write_text(AUDIOSET_HEAD + "\n".join(rows) + "\n")
    with (audioset / "eval_segments.csv").open("a") as fh:
        fh.write('-eFull, 1.000, 3.000, "/m/0red,/t/dd0blu"\n')
    clip_file(audioset / "clips" / "-eFull.mp4", "red", 5.0, 40)
    # VGGSound: no header; {id}_{start:06d}.mp4 segments, and one full video + start.
    vgg = root / "vggsound"
    rows = []
    for i in range(8):
        kind, split = kinds[i % 2], "train" if i < 6 else "test"
        rows.append(f"v{i},{i},{kind} sound,{split}")
        clip_file(vgg / "video" / f"v{i}_{i:06d}.mp4", kind, 1.5, i)
    rows.append("vfull,2,green sound,train")
    clip_file(vgg / "video" / "vfull.mp4", "green", 13.0, 50)
    (vgg / "vggsound.csv").write_text("\n".join(rows) + "\n")
    # ESC-50: meta/esc50.csv and audio/*.wav; two takes of one source recording share a group.
    esc = root / "ESC-50-master"
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i in range(12):
        kind, fold, src = ("low", "high")[i % 2], 1 + i % 3, 100000 + i // 2
        name = f"{fold}-{src}-{'AB'[i // 6]}-{i % 2}.wav"
        rows.append(f"{name},{fold},{i % 2},{kind},False,{src},{'AB'[i // 6]}")
        write_audio(esc / "audio" / name, tone(1.0, RATE, {"low": 300.0, "high": 2500.0}[kind]))
    (esc / "meta").mkdir()
    (esc / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return {
        "kinetics": root / "kinetics" / "train.csv",
        "audioset_train": audioset / "balanced_train_segments.csv",
        "audioset_eval": audioset / "eval_segments.csv",
        "vggsound": vgg / "vggsound.csv",
        "esc50": esc / "meta" / "esc50.csv",
    }


@pytest.fixture(scope="module")
def kinetics_manifest(lists: dict[str, Path]) -> Path:
    out = lists["kinetics"].parent / "manifest.csv"
    result = index_source(
        lists["kinetics"], out, videos=lists["kinetics"].parent / "videos", workers=1,
        progress=False,
    )  # fmt: skip
    assert (result.kept, result.rejected_by_reason) == (15, {"missing": 1})
    assert "2 rows are segments of longer files" in result.summary()
    assert "1 files named by the video's id are no longer than their segment" in result.summary()
    return out


@pytest.fixture(scope="module")
def kinetics_run(kinetics_manifest: Path) -> Path:
    out = kinetics_manifest.parent / "run"
    config = tiny_config("xdc", cluster__k=2, data__cache="memory")
    state = pretrain(config, kinetics_manifest, out, progress=False)
    assert state.finished
    return out


def test_kinetics_segments_full_videos_and_missing_rows(
    kinetics_manifest: Path, lists: dict[str, Path]
) -> None:
    rows = _read_csv(kinetics_manifest)
    by_id = {r["youtube_id"]: r for r in rows}
    assert by_id["k00-x_Y"]["path"] == "videos/train/red/k00-x_Y_000010_000012.mp4"
    assert (by_id["k00-x_Y"]["start_sec"], by_id["k00-x_Y"]["end_sec"]) == ("", "")
    assert by_id["k10-x_Y"]["split"] == "val" and by_id["k10-x_Y"]["is_cc"] == "0"
    full = by_id["full0"]
    assert (full["path"], full["start_sec"], full["end_sec"]) == ("videos/full/full0.mp4", "2", "4")
    assert by_id["cut0"]["start_sec"] == "" and by_id["cut0"]["time_start"] == "30"
    assert read_manifest(kinetics_manifest).duration(rows.index(full)) == 2.0
    rejected = _read_csv(kinetics_manifest.parent / "rejected.csv")
    assert [r["reason"] for r in rejected] == ["missing"]
    assert "'gone'" in rejected[0]["detail"] and "gone_000000_000010" in rejected[0]["detail"]


def test_kinetics_pretrains_and_probes_through_the_cli(
    kinetics_run: Path, kinetics_manifest: Path, tmp_path: Path, capsys
) -> None:
    from tests.test_eval_cli import FAST, xdc_main

    command = f"linear-probe --checkpoint {{run}} --test-split val --clips 2 --json {FAST}"
    assert xdc_main(command, run=kinetics_run) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_train"], result["n_test"], result["n_classes"]) == (12, 3, 3)
    assert "multi_label" not in result and 0.0 <= result["top1"] <= 1.0


def test_audioset_lists_index_into_one_multilabel_manifest_probed_by_map(
    lists: dict[str, Path], kinetics_run: Path, capsys
) -> None:
    from tests.test_eval_cli import FAST, xdc_main

    out = lists["audioset_eval"].parent / "manifest.csv"
    assert xdc_main(
        "index {train} {eval} -o {out} --videos {videos} --workers 1",
        train=lists["audioset_train"], eval=lists["audioset_eval"], out=out,
        videos=out.parent / "clips",
    ) == 0  # fmt: skip
    manifest = read_manifest(out)
    assert manifest.label_names == ["Blue, colour", "Green, colour", "Red, colour"]
    assert manifest.splits() == ["test", "train"] and manifest.multi_label
    row = next(r for r in manifest.rows if r["youtube_id"] == "-b1AbC")
    assert row["label"] == "Green, colour;Blue, colour" and row["positive_labels"].count(",") == 1
    full = next(i for i, r in enumerate(manifest.rows) if r["youtube_id"] == "-eFull")
    assert manifest.segment(full) == (1.0, 3.0) and manifest.label(full) == -1
    assert manifest.label_sets()[full] == [0, 2]

    command = (
        "linear-probe --checkpoint {run} --data {data} --modality audio --clips 2 --out-dir {o} "
        f"{FAST}"
    )
    assert xdc_main(command, run=kinetics_run, data=out, o=out.parent / "eval") == 0
    printed = capsys.readouterr().out
    result = json.loads((out.parent / "eval" / "linear_probe_audio.json").read_text())
    assert result["multi_label"] and result["n_test"] == 5 and result["n_classes"] == 3
    assert result["mAP"] == pytest.approx(np.mean(list(result["per_class"].values())))
    assert 0.0 < result["mAP"] <= 1.0 and result["n_classes_scored"] == 3
    lines = printed.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("linear probe (one-vs-rest"))
    header, row = lines[title + 1], lines[title + 3]  # a rule line between them
    assert all(name in header for name in ("mAP", "mAP clip", "hit@1", "classes scored"))
    assert row.split()[:2] == ["audio", f"{result['mAP']:.3f}"] and "3 of 3" in row


def test_vggsound_and_esc50_lists(
    lists: dict[str, Path], kinetics_run: Path, tmp_path: Path, capsys
) -> None:
    from tests.test_eval_cli import FAST, xdc_main

    vgg = lists["vggsound"].parent / "manifest.csv"
    result = index_source(lists["vggsound"], vgg, videos=vgg.parent / "video", workers=1,
                          progress=False)  # fmt: skip
    assert result.kept == 9 and result.rejected == 0
    manifest = read_manifest(vgg)
    full = next(i for i, r in enumerate(manifest.rows) if r["youtube_id"] == "vfull")
    assert manifest.segment(full) == (2.0, 12.0)  # the full video holds [start, start + 10]
    assert {r["split"] for r in manifest.rows} == {"train", "test"}
    command = "linear-probe --checkpoint {run} --data {data} --modality audio --clips 1 --json "
    assert xdc_main(command + FAST, run=kinetics_run, data=vgg) == 0
    assert json.loads(capsys.readouterr().out)["n_test"] == 2

    esc = tmp_path / "esc50.csv"
    assert index_source(lists["esc50"], esc, workers=1, progress=False).audio_only == 12
    rows = _read_csv(esc)
    assert rows[0]["path"].endswith("audio/1-100000-A-0.wav") and rows[0]["label"] == "low"
    assert (rows[0]["fold"], rows[0]["group"], rows[0]["take"]) == ("1", "100000", "A")
    assert rows[1]["group"] == "100000"  # two takes of one source recording: one group
    command = "audio-probe --checkpoint {run} --data {data} --folds-column fold --clips 1 --json "
    assert xdc_main(command + FAST, run=kinetics_run, data=esc) == 0
    assert json.loads(capsys.readouterr().out)["n_folds"] == 3


# --- multi-label: the manifest and the metric -------------------------------------------------------


def test_multi_label_rows_keep_single_label_code_working(tmp_path: Path) -> None:
    rows = [{"path": "a.mp4", "label": "dog;cat"}, {"path": "b.mp4", "label": "cat"},
            {"path": "c.mp4", "label": ""}]  # fmt: skip
    manifest = Manifest(tmp_path, rows)
    assert manifest.label_names == ["cat", "dog"] and manifest.multi_label
    assert manifest.labels() == [-1, 0, -1] and [manifest.label(i) for i in range(3)] == [-1, 0, -1]
    assert manifest.label_sets() == [[0, 1], [0], []]
    assert manifest.label_matrix([0, 1]).tolist() == [[1, 1], [1, 0]]
    assert not Manifest(tmp_path, rows[1:]).multi_label


def test_map_is_the_mean_over_classes_of_average_precision() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    perfect = targets * 0.9 + 0.05
    assert mean_average_precision(perfect, targets) == 1.0
    # class 0 ranked p1 (1), p2 (0), p3 (1): AP = (1 + 2/3) / 2; class 1 ranked first: AP = 1
    scores = np.array([[0.9, 0.1], [0.8, 0.9], [0.7, 0.8], [0.1, 0.2]])
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    # a class without a positive has no AP and does not count
    assert mean_average_precision(scores, np.c_[targets, np.zeros(4)]) == pytest.approx(
        ((1 + 2 / 3) / 2 + 1) / 2
    )


def test_one_vs_rest_probe_separates_labels_and_counts_unreadable_videos() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (60, 3))
    targets[targets.sum(1) == 0, 0] = 1
    features = targets * 3.0 + rng.normal(0, 0.3, (60, 3))
    result = multilabel_probe(
        features[:40], targets[:40], features[40:], targets[40:], c_grid=(1.0,),
        missing_test_targets=targets[:1],
    )  # fmt: skip
    assert result["n_test"] == 21 and result["unreadable_test_videos"] == 1
    assert 0.9 < result["mAP"] < 1.0  # the unreadable video (scored 0) costs a little
    assert result["mAP_clip"] == 1.0 and result["top1_clip"] == 1.0
