"""`xdc index`: probing real good and bad files (xdc.data.probe), the manifest, rejected.csv and
the cache (xdc.data.index), official splits (xdc.data.splits).

Every bad file here is a real file with the defect users meet: cut downloads (index at the start
or at the end), a header-only recording, zeroed media data, damaged headers, renamed text, …
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import xdc.data.index
import xdc.data.probe
from tests.media import random_frames, tone, write_media, write_video
from xdc.data.index import VIDEO_EXTENSIONS, index_source
from xdc.data.manifest import MANIFEST_COLUMNS, decode_path, encode_path, read_manifest
from xdc.data.probe import REJECTION_REASONS, ProbeResult, probe_file
from xdc.data.splits import read_official_splits
from xdc.errors import DataError

# 25 frames at 25 fps: 1 s, so that half of a file is far more than the truncation slack.
FRAMES = 25


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small good files, written once and copied by the tests that need them."""
    root = tmp_path_factory.mktemp("media")
    frames = random_frames(FRAMES, 32, 32)
    files = {
        "mp4": write_video(root / "av.mp4", frames, audio=tone(1.0), lossless=False),
        "mkv": write_video(root / "av.mkv", frames, audio=tone(1.0)),
        "avi": write_video(root / "av.avi", frames, audio=tone(1.0)),  # UCF101/HMDB51 are AVI
        "silent": write_video(root / "silent.mp4", frames, lossless=False),
        "short": write_video(root / "short.mkv", frames[:10], audio=tone(0.4)),
        "audio_only": _write_audio_only(root / "audio_only.mp4"),
    }
    files["faststart"] = _remux_faststart(files["mp4"], root / "faststart.mp4")
    return files


def _write_audio_only(path: Path, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """An AAC-only MP4 (what a ripped soundtrack named .mp4 looks like)."""
    audio = tone(seconds, sample_rate)[None, :]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        for start in range(0, audio.shape[1], 1024):
            piece = np.ascontiguousarray(audio[:, start : start + 1024])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _remux_faststart(source: Path, target: Path) -> Path:
    """The same MP4 with its index (moov) before the media data, as web uploads are."""
    with (
        av.open(str(source)) as inp,
        av.open(str(target), "w", options={"movflags": "faststart"}) as out,
    ):
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return target


def _first_half(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


# --- one maker per bad file: (media, target path) -> the file ------------------------------------


def _empty(media: dict[str, Path], target: Path) -> Path:
    target.write_bytes(b"")
    return target


def _text(media: dict[str, Path], target: Path) -> Path:
    target.write_text("these are my holiday notes, not a video\n" * 20)
    return target


def _cut_moov_at_end(media: dict[str, Path], target: Path) -> Path:
    return _first_half(media["mp4"], target)  # the index was at the end: it is gone


def _cut_moov_at_start(media: dict[str, Path], target: Path) -> Path:
    return _first_half(media["faststart"], target)  # opens, but half the media data is gone


def _cut_matroska(media: dict[str, Path], target: Path) -> Path:
    return _first_half(media["mkv"], target.with_suffix(".mkv"))


def _cut_avi(media: dict[str, Path], target: Path) -> Path:
    # FFmpeg re-indexes what is left and reports a shorter duration; the header's frame count
    # still tells the truth.
    return _first_half(media["avi"], target.with_suffix(".avi"))


def _header_only_matroska(media: dict[str, Path], target: Path) -> Path:
    """A recording stopped before its first frame: the muxer wrote the header only."""
    target = target.with_suffix(".mkv")
    with av.open(str(target), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "bgr0"
        container.start_encoding()
    return target


def _zeroed_media_data(media: dict[str, Path], target: Path) -> Path:
    """Index intact, media data all zeros (a pre-allocated download that never got its data)."""
    data = bytearray(media["faststart"].read_bytes())
    start = data.index(b"mdat") + 4
    data[start:] = bytes(len(data) - start)
    target.write_bytes(data)
    return target


def _damaged_matroska_header(media: dict[str, Path], target: Path) -> Path:
    data = bytearray(media["mkv"].read_bytes())
    data[4:204] = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    target = target.with_suffix(".mkv")
    target.write_bytes(data)
    return target


def _untimed_still(media: dict[str, Path], target: Path) -> Path:
    """One frame in Matroska with no duration anywhere: Segment Duration 0, DURATION tag 0 and no
    DefaultDuration (its element ID changed to one that demuxers skip as unknown)."""
    data = bytearray(write_video(target.with_suffix(".mkv"), random_frames(1, 32, 32)).read_bytes())
    at = data.index(b"\x44\x89\x88")  # Segment Info > Duration, an 8-byte float
    data[at + 3 : at + 11] = struct.pack(">d", 0.0)
    at = data.index(b"00:00:00.040000000")
    data[at : at + 18] = b"00:00:00.000000000"
    at = data.index(b"\x23\xe3\x83")  # TrackEntry > DefaultDuration
    data[at : at + 3] = b"\x23\xe3\x84"
    target.with_suffix(".mkv").write_bytes(data)
    return target.with_suffix(".mkv")


def _audio_only(media: dict[str, Path], target: Path) -> Path:
    return Path(shutil.copy(media["audio_only"], target))


def _subtitles_only(media: dict[str, Path], target: Path) -> Path:
    """A Matroska file whose only stream is subtitles: neither video nor audio."""
    target = target.with_suffix(".mkv")
    with av.open(str(target), "w") as container:
        stream = container.add_stream("ass")
        packet = av.Packet(b"Dialogue: hello")
        packet.stream, packet.time_base = stream, Fraction(1, 1000)
        packet.pts, packet.dts, packet.duration = 0, 0, 1000
        container.mux(packet)
    return target


def _zeroed_audio_only(media: dict[str, Path], target: Path) -> Path:
    """An AAC-only MP4 whose media data is zeroed: the headers are fine, no packet decodes."""
    data = bytearray(media["audio_only"].read_bytes())
    at = data.index(b"mdat")
    size = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 : at - 4 + size] = bytes(size - 8)
    target.write_bytes(data)
    return target


BAD_FILES = [
    (_empty, "empty file", "0 bytes"),
    (_text, "not a media file", "no known container"),
    (_cut_moov_at_end, "truncated", "box 'mdat'"),
    (_cut_moov_at_start, "truncated", "video data ends at"),
    (_cut_matroska, "truncated", "video data ends at"),
    (_cut_avi, "truncated", "header's 25 frames at 25 fps"),
    (_header_only_matroska, "truncated", "ends inside its headers"),
    (_zeroed_media_data, "undecodable video", "decodes to a frame"),
    (_damaged_matroska_header, "corrupt", "Matroska"),
    (_untimed_still, "zero duration", "0 s"),
    (_subtitles_only, "no video or audio stream", "subtitle (ssa)"),
    (_zeroed_audio_only, "undecodable audio", "decodes to samples"),
]


@pytest.mark.parametrize(
    ("make", "reason", "detail"), BAD_FILES, ids=lambda v: getattr(v, "__name__", None)
)
def test_probe_rejects_each_bad_file_with_its_reason(
    media: dict[str, Path], tmp_path: Path, make, reason: str, detail: str
) -> None:
    path = make(media, tmp_path / "bad.mp4")
    result = probe_file(path)
    assert (result.reason, result.ok) == (reason, False), result.detail
    assert detail in result.detail
    assert reason in REJECTION_REASONS


def test_the_two_cut_mp4_layouts_really_differ(media: dict[str, Path]) -> None:
    # Default PyAV/FFmpeg muxing writes the index last; faststart moves it first.
    plain, fast = media["mp4"].read_bytes(), media["faststart"].read_bytes()
    assert plain.index(b"moov") > plain.index(b"mdat")
    assert fast.index(b"moov") < fast.index(b"mdat")


def test_probe_reads_stream_info_of_good_files(media: dict[str, Path]) -> None:
    lossy, lossless, silent, avi = (probe_file(media[k]) for k in ("mp4", "mkv", "silent", "avi"))
    for result in (lossy, lossless, silent, avi):
        assert result.ok, result.detail
        assert (result.width, result.height, result.fps) == (32, 32, 25.0)
        assert result.duration_sec == pytest.approx(1.0, abs=1e-3)
    assert (lossy.has_audio, lossy.sample_rate, lossy.audio_channels) == (True, 16000, 1)
    assert (lossless.has_audio, lossless.sample_rate, lossless.audio_channels) == (True, 16000, 1)
    assert (avi.has_audio, avi.sample_rate, avi.audio_channels) == (True, 16000, 1)
    assert (silent.has_audio, silent.sample_rate, silent.audio_channels) == (False, 0, 0)
    assert probe_file(media["short"]).duration_sec == pytest.approx(0.4, abs=1e-3)


def test_probe_names_missing_and_unreadable_files(media: dict[str, Path], tmp_path: Path) -> None:
    assert probe_file(tmp_path / "gone.mp4").reason == "missing"
    (tmp_path / "link.mp4").symlink_to(tmp_path / "gone.mp4")
    assert "broken symbolic link" in probe_file(tmp_path / "link.mp4").detail
    assert probe_file(tmp_path).reason == "unreadable"  # a directory listed as a video
    if Path("/proc/self/mem").exists():  # a real I/O error (EIO at offset 0), even as root
        assert probe_file("/proc/self/mem").reason == "unreadable"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_probe_names_a_file_without_read_permission(media: dict[str, Path], tmp_path: Path) -> None:
    path = Path(shutil.copy(media["mp4"], tmp_path / "locked.mp4"))
    path.chmod(0)
    try:
        result = probe_file(path)
    finally:
        path.chmod(0o644)
    assert result.reason == "unreadable" and "ermission" in result.detail


# --- index_source --------------------------------------------------------------------------------


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, target))


def _read_rejected(path: Path) -> dict[str, str]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [] or list(rows[0]) == ["path", "reason", "detail"]
    return {row["path"]: row["reason"] for row in rows}


def test_index_folder_labels_by_parent_folder_and_rejects_with_reasons(
    media: dict[str, Path], tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    _copy(media["mp4"], videos / "jump" / "a.mp4")
    _copy(media["mkv"], videos / "run" / "b.MKV")  # extensions match in any case
    _copy(media["silent"], videos / "run" / "quiet.mp4")
    _copy(media["mkv"], videos / "top.mkv")  # directly in SOURCE: no label
    _copy(media["mp4"], videos / "jump" / ".partial.mp4")  # hidden: ignored
    _copy(media["mp4"], videos / ".thumbs" / "c.mp4")  # hidden folder: ignored
    (videos / "jump" / "notes.txt").write_text("not a video extension: ignored")
    _text(media, videos / "jump" / "fake.mp4")
    _cut_moov_at_end(media, videos / "run" / "cut.mp4")
    _empty(media, videos / "run" / "empty.avi")
    _audio_only(media, videos / "run" / "song.mp4")
    output = tmp_path / "out" / "manifest.csv"

    result = index_source(videos, output, workers=2, progress=False)

    manifest = read_manifest(output)
    assert manifest.columns == list(MANIFEST_COLUMNS)
    rows = {row["path"]: row for row in manifest.rows}
    assert set(rows) == {
        "../videos/jump/a.mp4",
        "../videos/run/b.MKV",
        "../videos/run/quiet.mp4",
        "../videos/run/song.mp4",  # audio only: kept for the audio protocols
        "../videos/top.mkv",
    }
    assert [rows[p]["label"] for p in sorted(rows)] == ["jump", "run", "run", "run", ""]
    assert [rows[p]["has_video"] for p in sorted(rows)] == ["1", "1", "1", "0", "1"]
    assert (rows["../videos/run/song.mp4"]["width"], rows["../videos/run/song.mp4"]["fps"]) == (
        "0",
        "0",
    )
    assert all(manifest.path(i).is_file() for i in range(len(manifest)))
    assert rows["../videos/run/quiet.mp4"]["has_audio"] == "0"
    assert rows["../videos/jump/a.mp4"]["has_audio"] == "1"
    assert rows["../videos/jump/a.mp4"]["sample_rate"] == "16000"
    assert float(rows["../videos/top.mkv"]["duration_sec"]) == pytest.approx(1.0)
    assert _read_rejected(tmp_path / "out" / "rejected.csv") == {
        "../videos/jump/fake.mp4": "not a media file",
        "../videos/run/cut.mp4": "truncated",
        "../videos/run/empty.avi": "empty file",
    }
    assert (result.kept, result.without_audio, result.reused_from_cache, result.probed) == (
        5,
        1,
        0,
        8,
    )
    assert result.audio_only == 1
    assert result.rejected_by_reason == {
        "not a media file": 1,
        "truncated": 1,
        "empty file": 1,
    }
    summary = result.summary()
    assert "kept 5, rejected 3" in summary and "without audio 1, audio-only 1" in summary
    assert "truncated: 1" in summary and str(output) in summary


def test_index_csv_keeps_extra_columns_and_rejects_missing_files(
    media: dict[str, Path], tmp_path: Path
) -> None:
    a = _copy(media["mp4"], tmp_path / "data" / "a.mp4")
    b = _copy(media["mkv"], tmp_path / "elsewhere" / "b.mkv")
    listing = tmp_path / "data" / "list.csv"
    listing.write_text(
        "path,label,caption,split\n"
        "a.mp4,dog,a dog barks,train\n"
        f"{b},cat,a cat meows,test,a stray cell\n"  # absolute path; a cell past the header
        "gone.mp4,cow,a cow moos,train\n"
        ",cow,no path here,train\n"
    )
    output = tmp_path / "out" / "m.csv"

    result = index_source(listing, output, workers=1, progress=False)

    manifest = read_manifest(output)
    assert manifest.columns == [*MANIFEST_COLUMNS, "caption"]
    assert [(r["path"], r["label"], r["split"], r["caption"]) for r in manifest.rows] == [
        ("../data/a.mp4", "dog", "train", "a dog barks"),
        ("../elsewhere/b.mkv", "cat", "test", "a cat meows"),
    ]
    assert [manifest.path(i).resolve() for i in range(2)] == [a.resolve(), b.resolve()]
    rejected = _read_rejected(tmp_path / "out" / "rejected.csv")
    assert rejected == {"../data/gone.mp4": "missing", "": "missing"}
    assert result.rejected_by_reason == {"missing": 2}


def _labelled_folder(media: dict[str, Path], root: Path, counts: dict[str, int]) -> Path:
    """``root/<label>/NN.mkv``: ``counts[label]`` real videos per label."""
    for label, n in counts.items():
        for i in range(n):
            _copy(media["mkv"], root / label / f"{i:02d}.mkv")
    return root


def _splits(manifest_path: Path) -> dict[str, tuple[str, str]]:
    return {r["path"]: (r["label"], r["split"]) for r in read_manifest(manifest_path).rows}


def test_rows_without_a_split_are_split_per_label_whatever_their_order(
    media: dict[str, Path], tmp_path: Path
) -> None:
    """--test-fraction/--val-fraction: each label gives round(n × fraction) videos (at least one)
    to test and to val, chosen by a hash of the path, so a list of the same files in another
    order gets the same splits; a video without a label can only be trained on."""
    videos = _labelled_folder(media, tmp_path / "videos", {"cat": 10, "dog": 5})
    _copy(media["mkv"], videos / "unlabelled.mkv")
    output = tmp_path / "manifest.csv"

    result = index_source(
        videos, output, workers=1, progress=False, test_fraction=0.2, val_fraction=0.2
    )

    rows = _splits(output)
    per_label = Counter(rows.values())
    assert per_label == {
        ("cat", "test"): 2, ("cat", "val"): 2, ("cat", "train"): 6,
        ("dog", "test"): 1, ("dog", "val"): 1, ("dog", "train"): 3,
        ("", "train"): 1,
    }  # fmt: skip
    assert result.splits == {"train": 10, "val": 3, "test": 3}
    assert "splits: train 10, val 3, test 3" in result.summary()
    assert "per label (--test-fraction 0.2, --val-fraction 0.2, --split-seed 0)" in result.summary()

    listing = tmp_path / "list.csv"  # the same files, listed in reverse order
    listing.write_text(
        "path,label\n" + "".join(f"{p},{label}\n" for p, (label, _) in reversed(rows.items()))
    )
    index_source(
        listing, tmp_path / "again.csv", workers=1, progress=False, test_fraction=0.2,
        val_fraction=0.2,
    )  # fmt: skip
    assert _splits(tmp_path / "again.csv") == rows

    index_source(
        videos, tmp_path / "seed1.csv", workers=1, progress=False, test_fraction=0.2,
        val_fraction=0.2, split_seed=1,
    )  # fmt: skip
    other = _splits(tmp_path / "seed1.csv")
    assert Counter(other.values()) == per_label and other != rows


def test_split_folders_give_each_file_its_split(media: dict[str, Path], tmp_path: Path) -> None:
    """ROOT/train/<class>/…, ROOT/Validation/…, ROOT/test/…: the top-level folder is the split,
    the parent folder the label; held-out fractions only fill rows the folders left empty."""
    videos = tmp_path / "videos"
    _copy(media["mkv"], videos / "train" / "cat" / "a.mkv")
    _copy(media["mkv"], videos / "train" / "dog" / "b.mkv")
    _copy(media["mkv"], videos / "Validation" / "dog" / "c.mkv")
    _copy(media["mkv"], videos / "test" / "cat" / "d.mkv")
    _copy(media["mkv"], videos / "train" / "e.mkv")  # directly in a split folder: no label
    output = tmp_path / "manifest.csv"

    result = index_source(videos, output, workers=1, progress=False, test_fraction=0.5)

    assert _splits(output) == {
        "videos/train/cat/a.mkv": ("cat", "train"),
        "videos/train/dog/b.mkv": ("dog", "train"),
        "videos/Validation/dog/c.mkv": ("dog", "val"),
        "videos/test/cat/d.mkv": ("cat", "test"),
        "videos/train/e.mkv": ("", "train"),
    }
    assert result.splits == {"train": 3, "val": 1, "test": 1}
    assert "split per label" not in result.summary()
    assert "the held-out fractions changed none" in result.summary()

    # A class that happens to be called "train", next to one that is not a split name: classes.
    mixed = tmp_path / "mixed"
    _copy(media["mkv"], mixed / "train" / "a.mkv")
    _copy(media["mkv"], mixed / "cat" / "b.mkv")
    index_source(mixed, tmp_path / "mixed.csv", workers=1, progress=False)
    assert _splits(tmp_path / "mixed.csv") == {
        "mixed/train/a.mkv": ("train", "train"),
        "mixed/cat/b.mkv": ("cat", "train"),
    }


def test_without_any_split_every_row_is_train_and_the_probe_says_how_to_hold_out(
    media: dict[str, Path], tmp_path: Path
) -> None:
    """A folder of labelled videos and no split: `xdc pretrain` (split train) finds every video,
    and a probe asking for test rows says how to draw them."""
    videos = _labelled_folder(media, tmp_path / "videos", {"cat": 2, "dog": 2})
    output = tmp_path / "manifest.csv"

    result = index_source(videos, output, workers=1, progress=False)

    manifest = read_manifest(output)
    assert len(manifest.select("train")) == len(manifest) == 4
    assert "no split given: every row is 'train'" in result.summary()
    assert "--test-fraction 0.2" in result.summary()
    with pytest.raises(DataError, match="split 'test' has no rows .*xdc index --test-fraction 0.2"):
        manifest.select("test")


def test_held_out_fractions_that_leave_nothing_to_train_on_are_refused(tmp_path: Path) -> None:
    """Checked before any file is probed, naming the flag."""
    (tmp_path / "videos").mkdir()
    with pytest.raises(DataError, match="--test-fraction must be in \\[0, 1\\) \\(got 1.2\\)"):
        index_source(tmp_path / "videos", tmp_path / "m.csv", test_fraction=1.2)
    with pytest.raises(DataError, match="--test-fraction \\+ --val-fraction must leave videos"):
        index_source(tmp_path / "videos", tmp_path / "m.csv", test_fraction=0.6, val_fraction=0.4)
    assert not (tmp_path / "m.csv").exists()


def test_rerun_reuses_the_cache_and_reprobes_only_changed_files(
    media: dict[str, Path], tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    for name in ("a", "b", "c"):
        _copy(media["mkv"], videos / "x" / f"{name}.mkv")
    _text(media, videos / "x" / "bad.mp4")
    output = tmp_path / "manifest.csv"

    first = index_source(videos, output, workers=1, progress=False)
    before = output.read_text()
    second = index_source(videos, output, workers=1, progress=False)

    assert (first.probed, first.reused_from_cache) == (4, 0)
    assert (second.probed, second.reused_from_cache) == (0, 4)
    assert "re-used 4 probes from the cache" in second.summary()
    assert output.read_text() == before
    assert second.rejected_by_reason == {"not a media file": 1}  # rejections are cached too

    shutil.copy(media["short"], videos / "x" / "a.mkv")  # new content, new size
    stat = (videos / "x" / "b.mkv").stat()  # same content, touched
    os.utime(videos / "x" / "b.mkv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    (videos / "x" / "c.mkv").unlink()
    third = index_source(videos, output, workers=1, progress=False)

    assert (third.probed, third.reused_from_cache, third.kept) == (2, 1, 2)
    durations = {r["path"]: float(r["duration_sec"]) for r in read_manifest(output).rows}
    assert durations == {"videos/x/a.mkv": pytest.approx(0.4), "videos/x/b.mkv": pytest.approx(1.0)}
    cache = json.loads((tmp_path / "manifest.csv.probe-cache.json").read_text())
    assert sorted(Path(p).name for p in cache["files"]) == ["a.mkv", "b.mkv", "bad.mp4"]


def test_a_damaged_cache_is_ignored_and_said_so(media: dict[str, Path], tmp_path: Path) -> None:
    _copy(media["mkv"], tmp_path / "videos" / "a.mkv")
    output = tmp_path / "manifest.csv"
    Path(f"{output}.probe-cache.json").write_text("{not json")
    result = index_source(tmp_path / "videos", output, workers=1, progress=False)
    assert (result.kept, result.probed, result.reused_from_cache) == (1, 1, 0)
    assert "not used" in result.summary()
    assert (
        index_source(tmp_path / "videos", output, workers=1, progress=False).reused_from_cache == 1
    )


def test_nothing_kept_still_writes_both_files(media: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    _text(media, tmp_path / "videos" / "fake.mp4")
    result = index_source(tmp_path / "videos", tmp_path / "m.csv", workers=1, progress=False)
    assert result.kept == 0 and read_manifest(tmp_path / "m.csv").rows == []
    assert _read_rejected(tmp_path / "rejected.csv") == {"videos/fake.mp4": "not a media file"}
    assert "nothing kept" in result.summary()

    (tmp_path / "empty").mkdir()
    result = index_source(tmp_path / "empty", tmp_path / "e" / "m.csv", progress=False)
    assert (tmp_path / "e" / "m.csv").is_file() and (tmp_path / "e" / "rejected.csv").is_file()
    assert "no video or audio files were found" in result.summary()


def test_index_errors_name_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere.*not found"):
        index_source(tmp_path / "nowhere", tmp_path / "m.csv", progress=False)
    (tmp_path / "list.csv").write_text("file,label\na.mp4,x\n")
    with pytest.raises(DataError, match="list.csv: no 'path' column"):
        index_source(tmp_path / "list.csv", tmp_path / "m.csv", progress=False)
    (tmp_path / "videos").mkdir()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DataError, match="a_file: cannot write the manifest there"):
        index_source(tmp_path / "videos", tmp_path / "a_file" / "m.csv", progress=False)
    with pytest.raises(DataError, match="videos: is a folder; pass -o with a file name"):
        index_source(tmp_path / "videos", tmp_path / "videos", progress=False)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "readme.txt").write_text("")
    with pytest.raises(DataError, match="splits: neither UCF101 .* nor HMDB51"):
        index_source(tmp_path / "videos", tmp_path / "m.csv", splits_dir=tmp_path / "splits")


# --- official splits -----------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_bytes(
        "".join(f"{line}\r\n" for line in lines).encode()
    )  # the official files use CRLF


def test_ucf101_splits_fill_split_columns_and_official_labels(
    media: dict[str, Path], tmp_path: Path
) -> None:
    names = {
        "eye": "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "eye_train": "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "bow": "Archery/v_Archery_g01_c01.avi",
        "bow_train": "Archery/v_Archery_g08_c01.avi",
        # UCF101's lists write "v_HandStandPushups"; some copies on disk say "v_HandstandPushups".
        "handstand": "HandstandPushups/v_HandStandPushups_g01_c01.avi",
    }
    for relative in names.values():
        _copy(media["short"], tmp_path / "UCF-101" / relative.replace("HandStand", "Handstand"))
    _copy(media["short"], tmp_path / "UCF-101" / "Archery" / "v_extra_not_listed.avi")
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    _write_lines(splits / "classInd.txt", ["1 ApplyEyeMakeup", "2 Archery", "3 HandstandPushups"])
    _write_lines(splits / "trainlist01.txt", [f"{names['eye_train']} 1", f"{names['bow_train']} 2"])
    _write_lines(splits / "testlist01.txt", [names["eye"], names["bow"], names["handstand"]])
    _write_lines(splits / "trainlist02.txt", [f"{names['eye']} 1", f"{names['bow']} 2"])
    _write_lines(
        splits / "testlist02.txt", [names["eye_train"], names["bow_train"], "Archery/v_gone.avi"]
    )

    result = index_source(
        tmp_path / "UCF-101", tmp_path / "m.csv", splits_dir=splits, split_number=2, progress=False
    )

    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.columns == [*MANIFEST_COLUMNS, "split_1", "split_2", "group"]
    groups = {r["path"].split("/", 1)[1]: r["group"] for r in manifest.rows}
    assert (
        groups[names["eye_train"]] == "ApplyEyeMakeup_g08" and groups[names["bow"]] == "Archery_g01"
    )
    assert groups["Archery/v_extra_not_listed.avi"] == ""  # no gNN_cMM in its name
    got = {
        r["path"].split("/", 1)[1]: (r["split"], r["split_1"], r["split_2"]) for r in manifest.rows
    }
    assert got == {
        names["eye"]: ("train", "test", "train"),
        names["eye_train"]: ("test", "train", "test"),
        names["bow"]: ("train", "test", "train"),
        names["bow_train"]: ("test", "train", "test"),
        names["handstand"].replace("HandStand", "Handstand"): ("", "test", ""),
        "Archery/v_extra_not_listed.avi": ("", "", ""),
    }
    assert manifest.label_names == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert (
        "UCF101 split 2" in result.summary()
        and "listed in the split files but not in the source: 1" in result.summary()
    )
    assert read_official_splits(splits, 1)[names["eye_train"]] == "train"
    with pytest.raises(DataError, match="no UCF101 split 3 .*--split-number"):
        read_official_splits(splits, 3)


def test_hmdb51_splits_match_file_names_and_mark_unused(
    media: dict[str, Path], tmp_path: Path
) -> None:
    videos = {
        "brush_hair": [
            "April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
            "Brushing_hair_u_nm_np2_le_goo_1.avi",
        ],
        "cartwheel": ["Cartwheel_f_cm_np1_ri_med_0.avi"],
    }
    for label, files in videos.items():
        for name in files:
            _copy(media["short"], tmp_path / "hmdb51" / label / name)
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    brush, cart = videos["brush_hair"], videos["cartwheel"]
    _write_lines(splits / "brush_hair_test_split1.txt", [f"{brush[0]} 1 ", f"{brush[1]} 2 "])
    _write_lines(splits / "brush_hair_test_split2.txt", [f"{brush[0]} 0 ", f"{brush[1]} 1 "])
    _write_lines(splits / "cartwheel_test_split1.txt", [f"{cart[0]} 2 "])
    _write_lines(splits / "cartwheel_test_split2.txt", [f"{cart[0]} 2 "])

    index_source(
        tmp_path / "hmdb51", tmp_path / "m.csv", splits_dir=splits, workers=2, progress=False
    )

    rows = {Path(r["path"]).name: r for r in read_manifest(tmp_path / "m.csv").rows}
    assert {n: (r["label"], r["split"], r["split_1"], r["split_2"]) for n, r in rows.items()} == {
        brush[0]: ("brush_hair", "train", "train", "unused"),
        brush[1]: ("brush_hair", "test", "test", "train"),
        cart[0]: ("cartwheel", "test", "test", "test"),
    }
    assert read_official_splits(splits, 2) == {
        brush[0]: "unused",
        brush[1]: "train",
        cart[0]: "test",
    }


def test_video_extensions_are_lower_case_suffixes() -> None:
    assert {".mp4", ".mkv", ".webm", ".avi", ".mov", ".ts", ".wmv"} <= VIDEO_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in VIDEO_EXTENSIONS)


def test_index_re_exports_the_probe_and_splits_api() -> None:
    # `from xdc.data.index import probe_file` (and the rest) predates the split into modules.
    assert xdc.data.index.probe_file is probe_file
    assert xdc.data.index.ProbeResult is ProbeResult
    assert xdc.data.index.REJECTION_REASONS is REJECTION_REASONS
    assert xdc.data.index.read_official_splits is read_official_splits
    assert {"probe_file", "ProbeResult", "REJECTION_REASONS", "read_official_splits"} <= set(
        xdc.data.index.__all__
    )


# --- any name, any failure (issue 11) -------------------------------------------------------------

# Names the file system allows: bytes that are not UTF-8 (Linux names are bytes), a newline, a
# comma and quotes, a leading dash or space, a trailing space, a tab, non-Latin letters, a '%',
# and a name that starts like the manifest's escaped form.
ODD_NAMES = [
    os.fsdecode(b"caf\xe9.mp4"),
    os.fsdecode(b"\xff\xfe\x80.mkv"),
    "two\nlines.mkv",
    "comma, \"quotes\" and 'apostrophes'.mkv",
    "-dash.mkv",
    " space first.mkv",
    "tab\tinside.mkv",
    "日本語 ünïcödé 🎬.mkv",
    "100%.mkv",
    "file:like.mkv",
]


def test_manifest_cells_name_any_path_and_are_valid_text() -> None:
    paths = [
        *ODD_NAMES,
        "plain/a.mp4",
        "trailing space ",
        "/abs/" + os.fsdecode(b"\xe9") + "/x.mp4",
        "line\u2028separator",
        "",
    ]
    for path in paths:
        cell = encode_path(path)
        assert decode_path(cell) == path
        cell.encode("utf-8")  # strict: no surrogates left
        assert cell == cell.strip() and "\n" not in cell and "\t" not in cell
    for plain in ("plain/a.mp4", "100%.mkv", "日本語 ünïcödé 🎬.mkv", "-dash.mkv", 'a, "b".mp4'):
        assert encode_path(plain) == plain  # readable names stay as they are
    assert encode_path(os.fsdecode(b"caf\xe9.mp4")) == "file:caf%E9.mp4"
    assert decode_path("file:///videos/a%20b.mp4") == "///videos/a b.mp4"  # a file URI, by hand


def test_index_writes_and_reads_back_any_name_byte_for_byte(
    media: dict[str, Path], tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    names = [os.path.join("cats", n) for n in ODD_NAMES]
    names.append(os.path.join(os.fsdecode(b"dogs \xe9"), "a.mkv"))  # a label that is not UTF-8
    for name in names:
        _copy(media["mkv"], videos / name)
    bad = videos / "cats" / os.fsdecode(b"notes \xe9\n.mp4")
    _text(media, bad)
    output = tmp_path / "out" / "manifest.csv"

    first = index_source(videos, output, workers=2, progress=False)

    assert (first.kept, first.rejected_by_reason) == (len(names), {"not a media file": 1})
    for written in (output, tmp_path / "out" / "rejected.csv"):
        written.read_bytes().decode("utf-8")  # strict UTF-8, whatever the names
    manifest = read_manifest(output)
    got = sorted(os.fsencode(os.path.normpath(manifest.path(i))) for i in range(len(manifest)))
    assert got == sorted(os.fsencode(videos.absolute() / name) for name in names)
    assert all(manifest.path(i).is_file() for i in range(len(manifest)))
    assert sorted(manifest.label_names) == ["cats", "dogs \\xe9"]
    with (tmp_path / "out" / "rejected.csv").open(newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert (tmp_path / "out" / decode_path(row["path"])).resolve() == bad.resolve()

    # The probe cache survives the names: a re-run probes nothing and writes the same manifest.
    before = output.read_bytes()
    cache = (tmp_path / "out" / "manifest.csv.probe-cache.json").read_bytes().decode("utf-8")
    assert len(json.loads(cache)["files"]) == len(names) + 1
    second = index_source(videos, output, workers=2, progress=False)
    assert (second.probed, second.reused_from_cache) == (0, len(names) + 1)
    assert output.read_bytes() == before

    # The manifest's cells name the same files in a source CSV too.
    listing = tmp_path / "out" / "list.csv"
    listing.write_text(
        "path,label\n"
        + "".join(f'"{r["path"].replace(chr(34), 2 * chr(34))}",x\n' for r in manifest.rows),
        encoding="utf-8",
    )
    third = index_source(listing, tmp_path / "again" / "m.csv", workers=1, progress=False)
    again = read_manifest(tmp_path / "again" / "m.csv")
    assert third.kept == len(names)
    assert sorted(os.fsencode(os.path.normpath(again.path(i))) for i in range(len(again))) == got


def _fragile_probe(path: str) -> ProbeResult:
    """``probe_file``, except that a name containing 'raises' raises and 'dies' kills the process
    (an FFmpeg crash): what no real file here can be made to do on demand."""
    name = os.path.basename(path)
    if "raises" in name:
        raise RuntimeError("something nobody foresaw")
    if "dies" in name:
        os._exit(11)
    return probe_file(path)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_probe_that_raises_rejects_its_file_and_the_index_goes_on(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(xdc.data.index, "probe_file", _fragile_probe)
    for name in ("a.mkv", "raises.mkv", "b.mkv", "c.mkv"):
        _copy(media["mkv"], tmp_path / "videos" / name)
    result = index_source(tmp_path / "videos", tmp_path / "m.csv", workers=workers, progress=False)
    assert (result.kept, result.rejected_by_reason) == (3, {"probe failed": 1})
    rejected = list(csv.DictReader((tmp_path / "rejected.csv").open(newline="")))
    assert [(r["path"], r["reason"]) for r in rejected] == [("videos/raises.mkv", "probe failed")]
    assert "RuntimeError: something nobody foresaw" in rejected[0]["detail"]
    assert "probe failed: 1" in result.summary()
    # an unforeseen failure is not cached: the next run tries that file again
    assert index_source(tmp_path / "videos", tmp_path / "m.csv", progress=False).probed == 1


def test_a_probing_process_that_dies_costs_only_its_file(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xdc.data.index, "probe_file", _fragile_probe)
    names = [f"{i:02d}.mkv" for i in range(8)]
    names[3] = "03_dies.mkv"
    for name in names:
        _copy(media["short"], tmp_path / "videos" / name)
    result = index_source(tmp_path / "videos", tmp_path / "m.csv", workers=2, progress=False)
    assert (result.kept, result.rejected_by_reason) == (7, {"probe failed": 1})
    assert _read_rejected(tmp_path / "rejected.csv") == {"videos/03_dies.mkv": "probe failed"}
    assert "process died" in (tmp_path / "rejected.csv").read_text()
    assert len(read_manifest(tmp_path / "m.csv")) == 7


def test_the_probe_itself_turns_an_unforeseen_error_into_a_rejection(
    media: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> ProbeResult:
        raise ZeroDivisionError("a header field of 0")

    monkeypatch.setattr(xdc.data.probe, "_probe_container", broken)
    result = probe_file(media["mkv"])
    assert (result.reason, result.detail) == (
        "probe failed",
        "ZeroDivisionError: a header field of 0",
    )
    assert "probe failed" in REJECTION_REASONS


def test_a_csv_path_with_a_nul_character_is_rejected_not_a_crash(
    media: dict[str, Path], tmp_path: Path
) -> None:
    _copy(media["mkv"], tmp_path / "a.mkv")
    listing = tmp_path / "list.csv"
    listing.write_text("path\na.mkv\nb\x00.mkv\n")
    result = index_source(listing, tmp_path / "out" / "m.csv", workers=1, progress=False)
    assert (result.kept, result.rejected_by_reason) == (1, {"missing": 1})
    assert "NUL" in (tmp_path / "out" / "rejected.csv").read_text()


@pytest.mark.timeout(60)  # opening a named pipe waits for a writer: this must not
def test_a_named_pipe_is_rejected_without_opening_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "stream.mp4")
    result = probe_file(tmp_path / "stream.mp4")
    assert (result.reason, result.detail) == ("unreadable", "not a regular file (a named pipe)")


def test_unreadable_sources_and_manifests_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "latin1.csv").write_bytes(b"path,label\ncaf\xe9.mp4,x\n")
    with pytest.raises(DataError, match="latin1.csv: not a readable CSV"):
        index_source(tmp_path / "latin1.csv", tmp_path / "m.csv", progress=False)
    (tmp_path / "manifest.csv").write_bytes(b"path,label\ncaf\xe9.mp4,x\n")
    with pytest.raises(DataError, match="manifest.csv: not a readable manifest"):
        read_manifest(tmp_path / "manifest.csv")


# --- frame rate: the stream's real rate, never its time base ---------------------------------------


def test_avi_frame_rate_is_the_real_rate_not_the_time_base(tmp_path: Path) -> None:
    # An AVI has one clock per stream: written with a millisecond clock (what a variable-rate
    # source gives), its header says 1000 fps and fills the gaps between frames with empty ones.
    twelve = write_media(tmp_path / "12fps_ms_clock.avi", "mpeg4", "pcm_s16le", frame_times=np.arange(24) / 12)  # fmt: skip
    with av.open(str(twelve)) as container:
        video = container.streams.video[0]
        assert (video.average_rate, video.time_base) == (1000, Fraction(1, 1000))
    result = probe_file(twelve)
    assert result.ok, result.detail
    assert result.fps == pytest.approx(12.0)
    assert result.duration_sec == pytest.approx(2.0, abs=0.05)

    # irregular frames: every rate FFmpeg offers is the clock's; the rate is measured
    times = np.cumsum(np.random.default_rng(0).uniform(0.05, 0.2, 30))
    irregular = write_media(tmp_path / "vfr.avi", "mjpeg", None, frame_times=times - times[0])
    result = probe_file(irregular)
    assert result.ok, result.detail
    assert result.fps == pytest.approx(29 / (times[-1] - times[0]), rel=0.1)

    # a constant-rate AVI: the clock is the frame rate (1/25 s), and that is right
    steady = write_media(tmp_path / "25fps.avi", "mjpeg", "pcm_s16le", fps=25, seconds=1.0)
    with av.open(str(steady)) as container:
        assert container.streams.video[0].time_base == Fraction(1, 25)
    assert probe_file(steady).fps == pytest.approx(25.0)
    # and 29.97 in MP4 stays 29.97
    ntsc = write_media(tmp_path / "ntsc.mp4", fps=30000 / 1001, seconds=1.0, audio=None)
    assert probe_file(ntsc).fps == pytest.approx(29.97, abs=0.01)


def test_a_full_disk_is_one_line_naming_the_file_not_a_traceback(
    tmp_path: Path, demo_manifest: Path
) -> None:
    """Any command whose writes fail for lack of space (here `xdc index`, under RLIMIT_FSIZE)
    stops with one line naming the file and what to do, exit code 2."""
    import resource
    import signal
    import subprocess
    import sys

    videos = tmp_path / "videos" / "a"
    videos.mkdir(parents=True)
    for i in range(3):
        shutil.copy(read_manifest(demo_manifest).path(i), videos / f"{i}.mp4")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    cmd = [sys.executable, "-m", "xdc.cli", "index", str(tmp_path / "videos"), "-o",
           str(tmp_path / "manifest.csv"), "--workers", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, timeout=120)
    errors = [s for s in done.stderr.splitlines() if s.strip() and "probing" not in s]  # no bar
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert f"error: {tmp_path}/" in errors[0] and "File too large" in errors[0]  # names the file
    assert "re-run the same command" in errors[0]
    assert not (tmp_path / "manifest.csv").exists()
