"""``xdc prepare``: small H.264 copies with frequent keyframes and 16 kHz mono audio, resumable,
atomic, with failures listed and a manifest that maps back to the originals."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.media import write_media
from xdc.cli import main
from xdc.data.decode import ClipSpec, decode_clip
from xdc.data.manifest import read_manifest
from xdc.data.prepare import NO_VIDEO, PrepareSettings, prepare_videos
from xdc.data.probe import REJECTION_REASONS, probe_file
from xdc.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.mp4")
FAST = {"preset": "ultrafast"}  # x264's default preset takes seconds a file on a busy machine
FAST_X264: dict = {"video_options": FAST}


def _fingerprints(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _keyframe_times(path: Path) -> tuple[list[float], float]:
    """Times of the video's keyframe packets, and the time of its last frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.pts is not None]
        keys = sorted(float(p.pts * p.time_base) for p in packets if p.is_keyframe)
        return keys, max(float(p.pts * p.time_base) for p in packets)


def _sources(root: Path) -> Path:
    """A long-GOP stereo 44.1 kHz video, a portrait video without audio, a corrupt file and an
    audio-only file, in two label folders."""
    write_media(
        root / "cats" / "good.mp4", seconds=2.0, fps=25, width=320, height=240,
        sample_rate=44100, layout="stereo", video_options={**FAST, "g": "250"},
    )  # fmt: skip
    write_media(
        root / "cats" / "silent.avi", video="mpeg4", audio=None, seconds=2.0, fps=30,
        width=240, height=320,
    )  # fmt: skip
    (root / "dogs").mkdir()
    (root / "dogs" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 200)
    write_media(root / "dogs" / "bark.wav", video=None, audio="pcm_s16le", seconds=1.0)
    return root


def test_prepare_a_folder_then_resume_and_redo_a_changed_source(tmp_path: Path) -> None:
    src, out = _sources(tmp_path / "src"), tmp_path / "out"
    before = _fingerprints(src)

    result = prepare_videos(src, out, workers=2, progress=False)

    assert (result.prepared, result.skipped, result.without_audio) == (2, 0, 1)
    assert _fingerprints(src) == before  # originals only read
    good, silent = out / "cats" / "good.mp4", out / "cats" / "silent.mp4"
    for copy, original, size in [
        (good, "good.mp4", (170, 128)),
        (silent, "silent.avi", (128, 170)),
    ]:
        probe, source = probe_file(copy), probe_file(src / "cats" / original)
        assert (probe.width, probe.height) == size  # short side 128, aspect kept
        assert abs(probe.duration_sec - source.duration_sec) <= 1 / source.fps
        keys, last = _keyframe_times(copy)
        gaps = np.diff([*keys, last])
        assert keys[0] == 0.0 and gaps.max() <= 1.0 + 1e-6, keys  # the source has one keyframe
    with av.open(str(good)) as container:
        audio = container.streams.audio[0]
        assert (audio.sample_rate, audio.codec_context.layout.nb_channels) == (16000, 1)
    with av.open(str(silent)) as container:
        assert not container.streams.audio  # no audio made up

    with (out / "failed.csv").open(newline="") as fh:
        failed = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert failed["bark.wav"] == NO_VIDEO
    assert failed["broken.mp4"] in REJECTION_REASONS
    assert "broken.mp4" in result.summary() and "failed 2" in result.summary()

    manifest = read_manifest(out / "manifest.csv")  # its paths lie in OUT: no --data-root needed
    assert [manifest.path(i) for i in range(len(manifest))] == [good, silent]
    assert [r["source_path"] for r in manifest.rows] == [
        str(src / "cats" / "good.mp4"),
        str(src / "cats" / "silent.avi"),
    ]
    assert [r["label"] for r in manifest.rows] == ["cats", "cats"]
    assert [r["has_audio"] for r in manifest.rows] == ["1", "0"]

    written = good.stat().st_mtime_ns
    again = prepare_videos(src, out, workers=2, progress=False)
    assert (again.prepared, again.skipped) == (0, 2)
    assert good.stat().st_mtime_ns == written

    write_media(src / "cats" / "good.mp4", seconds=3.0, fps=25, width=320, height=240, **FAST_X264)
    changed = prepare_videos(src, out, workers=1, progress=False)
    assert (changed.prepared, changed.skipped) == (1, 1)
    assert abs(probe_file(good).duration_sec - 3.0) <= 0.04

    other = prepare_videos(src, out, PrepareSettings(short_side=64), workers=1, progress=False)
    assert (other.prepared, other.skipped) == (2, 0)  # other settings redo every output
    assert probe_file(silent).width == 64


def test_audio_stays_in_sync_with_the_video(tmp_path: Path) -> None:
    """A click 1.3 s into the file, in an audio track that starts 0.3 s after the video: the
    clip decoder finds it at the same time in the copy as in the original."""
    source = tmp_path / "src" / "late-audio.mkv"
    source.parent.mkdir()
    rate = 44100
    with av.open(str(source), "w") as container:
        video = container.add_stream("ffv1", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, np.uint8), "rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        samples = np.zeros(int(1.7 * rate), np.int16)
        samples[rate : rate + 20] = 30000  # the click, 1.0 s into the track
        for start in range(0, len(samples), 1024):
            piece = samples[None, start : start + 1024]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), "s16", "mono")
            frame.sample_rate, frame.time_base = rate, Fraction(1, rate)
            frame.pts = start + int(0.3 * rate)
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    out = tmp_path / "out"
    prepare_videos(source.parent, out, PrepareSettings(short_side=32), workers=1, progress=False)

    spec = ClipSpec(num_frames=4, fps=4.0, resize_short=None, audio_samples=16000)
    clicks = []
    for path in (source, out / "late-audio.mp4"):
        clip = decode_clip(path, 0.8, spec)  # audio window 0.8 .. 1.8 s
        clicks.append(clip.audio_start_sec + int(np.abs(clip.audio).argmax()) / 16000)
    assert clicks[0] == pytest.approx(1.3, abs=0.002)
    assert clicks[1] == pytest.approx(clicks[0], abs=0.002)


def test_a_manifest_source_keeps_its_columns_and_files_outside_its_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_media(data / "clips" / "a.mp4", seconds=1.0, width=48, height=32, **FAST_X264)
    write_media(
        data / "clips" / "a.mkv", seconds=1.0, width=48, height=32, **FAST_X264
    )  # same stem
    write_media(tmp_path / "elsewhere" / "b.mp4", seconds=1.0, width=48, height=32, **FAST_X264)
    source = data / "list.csv"
    source.write_text(
        "path,label,split,note\n"
        "clips/a.mp4,x,train,first\n"
        "clips/a.mkv,y,test,second\n"
        f"{tmp_path / 'elsewhere' / 'b.mp4'},x,train,third\n"
        ",x,train,no file\n"
    )
    out = tmp_path / "prepared"
    result = prepare_videos(source, out, PrepareSettings(short_side=16), workers=1, progress=False)

    assert result.prepared == 3 and [f.reason for f in result.failures] == ["missing"]
    manifest = read_manifest(out / "manifest.csv")
    external = f"external/{(tmp_path / 'elsewhere' / 'b.mp4').as_posix().lstrip('/')}"
    assert [r["path"] for r in manifest.rows] == ["clips/a.mp4.mp4", "clips/a.mkv.mp4", external]
    assert [(r["label"], r["split"], r["note"]) for r in manifest.rows] == [
        ("x", "train", "first"),
        ("y", "test", "second"),
        ("x", "train", "third"),
    ]
    assert manifest.rows[1]["source_path"] == str(data / "clips" / "a.mkv")
    clip = decode_clip(manifest.path(0), 0.0, ClipSpec(num_frames=2, fps=2.0, resize_short=16))
    assert clip.frames.shape == (2, 16, 24, 3) and clip.audio is not None


def test_an_interrupted_run_leaves_no_partial_output_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(4):
        write_media(src / f"v{i}.mp4", seconds=2.0, fps=25, width=320, height=240, **FAST_X264)
    code = (  # the library call: starts faster than the CLI, which imports torch
        "from xdc.data.prepare import prepare_videos; "
        f"prepare_videos({str(src)!r}, {str(out)!r}, workers=1, progress=False)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    try:
        while not any(TEMPORARY.fullmatch(p.name) for p in out.glob(".*")):
            assert run.poll() is None, "the run ended before it wrote a temporary file"
            time.sleep(0.002)
        run.send_signal(signal.SIGKILL)  # mid-write: no clean-up code runs
    finally:
        run.wait()
    assert [p for p in out.glob(".*") if TEMPORARY.fullmatch(p.name)]  # killed while writing
    for copy in [p for p in out.glob("*.mp4") if not p.name.startswith(".")]:
        assert probe_file(copy).ok  # every visible output is complete

    assert main(["prepare", str(src), str(out), "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "removed 1 temporary file" in printed and "failed 0" in printed
    assert not [p for p in out.glob(".*") if TEMPORARY.fullmatch(p.name)]
    manifest = read_manifest(out / "manifest.csv")
    assert [r["source_path"] for r in manifest.rows] == [str(src / f"v{i}.mp4") for i in range(4)]
    assert all(probe_file(manifest.path(i)).ok for i in range(4))


def test_refuses_an_out_that_would_replace_sources_and_names_bad_flags(tmp_path: Path) -> None:
    write_media(tmp_path / "v.mp4", seconds=0.5, **FAST_X264)
    with pytest.raises(ConfigError, match="OUT"):
        prepare_videos(tmp_path, tmp_path, workers=1, progress=False)
    (tmp_path / "list.csv").write_text("path\nv.mp4\n")
    with pytest.raises(ConfigError, match="replace the source"):
        prepare_videos(tmp_path / "list.csv", tmp_path, workers=1, progress=False)
    with pytest.raises(ConfigError, match="--short-side"):
        prepare_videos(tmp_path, tmp_path / "o", PrepareSettings(short_side=0), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.csv", "v.mp4"]
