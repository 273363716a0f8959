"""`xdc index` and the clip decoder on a folder of broken, odd and oddly named files (issue 11:
nothing one bad file or name can break).

The folder is made here, with real files: every container and codec this PyAV can write at small
sizes, every damage users meet (empty, cut at several points, random bytes, renamed text),
everything the file system allows that is not a video (a folder, a pipe, links that go nowhere or
in a circle) and names with bytes that are not UTF-8, newlines, commas, quotes, a leading dash or
space. Each file must be kept or rejected with the reason written here; every kept file must then
decode, or fail with ``DecodeError`` when it changed after indexing.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.media import untimed_matroska, write_media
from xdc import cli
from xdc.data.decode import ClipSpec, decode_clip
from xdc.data.manifest import decode_path, read_manifest
from xdc.data.probe import REJECTION_REASONS
from xdc.errors import DecodeError

KEPT, IGNORED = "kept", "ignored"  # outcomes besides a rejection reason
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# Names the file system allows and text files do not like: Latin-1 bytes (not UTF-8), a newline,
# a comma and quotes, a leading dash, a leading space, a tab, non-Latin letters, a '%', "file:".
ODD_NAMES = [
    os.fsdecode(b"caf\xe9 latin-1.mp4"),
    os.fsdecode(b"\xff\xfe raw bytes.mkv"),
    "new\nline.mp4",
    "comma, \"quoted\" and 'single'.mp4",
    "-leading dash.mp4",
    " leading space.mp4",
    "tab\there.mp4",
    "日本語 ünïcödé 🎬.mp4",
    "100% done.mp4",
    "file:looks like a prefix.mp4",
]
BAD_TEXT_NAME = os.fsdecode(b"bad \xe9.mp4")
LATIN1_FOLDER = os.fsdecode(b"label \xe9")


_good = write_media


def _cut(source: Path, path: Path, fraction: float) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _rotated(path: Path) -> Path:
    """An MP4 whose track matrix turns the picture by 90 degrees (phones record so)."""
    data = bytearray(write_media(path, audio=None).read_bytes())
    at = data.index(b"tkhd") + 44  # version 0: the 3x3 matrix follows 40 bytes of fields
    assert data[at : at + 4] == b"\x00\x01\x00\x00", "unexpected tkhd layout"
    data[at : at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(data)
    return path


def _untimed_still(path: Path) -> Path:
    """One FFV1 frame in Matroska with no duration anywhere (segment duration and the DURATION
    tag zeroed, DefaultDuration renamed to an element demuxers skip)."""
    return untimed_matroska(write_media(path, "ffv1", None, seconds=0.04, fps=25))


def _empty_wav(path: Path) -> Path:
    """A WAV header that announces PCM and holds no sample."""
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    path.write_bytes(
        b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data"
        + struct.pack("<I", 0)
    )  # fmt: skip
    return path


def _build(root: Path, seeds: dict[str, Path]) -> dict[str, str]:
    """Fill ``root``; {path relative to root: expected outcome}."""
    expected: dict[str, str] = {}

    def add(name: str, outcome: str, make: Callable[[Path], object]) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
        expected[name] = outcome

    # Containers and codecs, each small (32x32, 1 s) and healthy.
    add("formats/h264_aac.mp4", KEPT, lambda p: shutil.copy(seeds["mp4"], p))
    add("formats/h264_aac.mkv", KEPT, lambda p: _good(p, fps=12))
    add("formats/vp8_opus.webm", KEPT, lambda p: _good(p, "libvpx", "libopus", sample_rate=48000))
    add(
        "formats/vp9_opus_stereo.webm",
        KEPT,
        lambda p: _good(p, "libvpx-vp9", "libopus", sample_rate=48000, layout="stereo"),
    )
    add("formats/mpeg4_mp3.avi", KEPT, lambda p: _good(p, "mpeg4", "libmp3lame", sample_rate=44100))
    add("formats/mjpeg_pcm.avi", KEPT, lambda p: _good(p, "mjpeg", "pcm_s16le"))
    add("formats/h264_51.mov", KEPT, lambda p: _good(p, layout="5.1", sample_rate=48000))
    add("formats/ffv1_flac_8k.mkv", KEPT, lambda p: _good(p, "ffv1", "flac", sample_rate=8000))
    add("formats/UPPER.MP4", KEPT, lambda p: shutil.copy(seeds["mp4"], p))
    add("formats/matroska_named.mp4", KEPT, lambda p: p.write_bytes(seeds["mkv"].read_bytes()))
    # Audio only and video only.
    add("audio/opus.ogg", KEPT, lambda p: _good(p, None, "libopus", sample_rate=48000))
    add("audio/mono.wav", KEPT, lambda p: _good(p, None, "pcm_s16le"))
    add("audio/stereo_48k.wav", KEPT, lambda p: _good(p, None, "pcm_s16le", sample_rate=48000, layout="stereo"))  # fmt: skip
    add("audio/aac_7.1.m4a", KEPT, lambda p: _good(p, None, "aac", sample_rate=48000, layout="7.1"))
    add("audio/pcm_s64.wav", KEPT, lambda p: _good(p, None, "pcm_s64le"))
    add("audio/song.mp3", KEPT, lambda p: _good(p, None, "libmp3lame", sample_rate=44100))
    add("audio/soundtrack.mp4", KEPT, lambda p: _good(p, None, "aac"))
    add("audio/no_samples.wav", "zero duration", _empty_wav)
    add("video/silent.mp4", KEPT, lambda p: _good(p, audio=None))
    # Odd pictures and timing.
    add("odd/one_frame.mkv", KEPT, lambda p: _good(p, "ffv1", None, seconds=0.1))
    add("odd/huge_4k_one_black_frame.mp4", KEPT, lambda p: _good(p, audio=None, seconds=0.1, width=3840, height=2160))  # fmt: skip
    add("odd/odd_size_17x9.mkv", KEPT, lambda p: _good(p, "ffv1", "pcm_s16le", width=17, height=9))
    add("odd/rotated.mp4", KEPT, _rotated)
    add("odd/vfr.mkv", KEPT, lambda p: _good(p, frame_times=[0, 0.05, 0.3, 0.35, 0.7, 0.95]))
    add("odd/vfr_ms_clock.avi", KEPT, lambda p: _good(p, "mjpeg", "pcm_s16le", frame_times=[0, 0.1, 0.15, 0.4, 0.45, 0.9]))  # fmt: skip
    add("odd/1fps.mp4", KEPT, lambda p: _good(p, fps=1, seconds=3))
    add("odd/120fps.mp4", KEPT, lambda p: _good(p, fps=120, seconds=0.5))
    add("odd/zero_duration.mkv", "zero duration", _untimed_still)
    # Damaged.
    add("bad/empty.mp4", "empty file", lambda p: p.write_bytes(b""))
    add("bad/random_bytes.mp4", "not a media file", lambda p: p.write_bytes(os.urandom(3000)))
    add("bad/notes.mkv", "not a media file", lambda p: p.write_text("my notes\n" * 50))
    for percent in (5, 50, 95):  # the index (moov) is written last: any cut loses it
        add(
            f"bad/cut_{percent}.mp4",
            "truncated",
            lambda p, f=percent: _cut(seeds["mp4"], p, f / 100),
        )
    add("bad/cut_50_faststart.mp4", "truncated", lambda p: _cut(seeds["faststart"], p, 0.5))
    add("bad/cut_40.mkv", "truncated", lambda p: _cut(seeds["mkv"], p, 0.4))
    add("bad/cut_inside_header.webm", "truncated", lambda p: _cut(seeds["webm"], p, 0.02))
    # Not files, or not there.
    add("things/folder.mp4/inside.mp4", KEPT, lambda p: shutil.copy(seeds["mp4"], p))
    add("things/loop.mp4", "unreadable", lambda p: p.symlink_to(p.name))
    add("things/dangling.mp4", "missing", lambda p: p.symlink_to("nowhere.mp4"))
    add("things/link_to_good.mp4", KEPT, lambda p: p.symlink_to("../formats/h264_aac.mp4"))
    add("things/pipe.mp4", "unreadable", lambda p: os.mkfifo(p))
    add("things/locked.mp4", KEPT if AS_ROOT else "unreadable", lambda p: _locked(seeds, p))
    add("things/.hidden.mp4", IGNORED, lambda p: shutil.copy(seeds["mp4"], p))
    add("things/readme.txt", IGNORED, lambda p: p.write_text("not a media extension"))
    add("things/dup_a.mp4", KEPT, lambda p: shutil.copy(seeds["mp4"], p))
    add("things/dup_b.mp4", KEPT, lambda p: shutil.copy(seeds["mp4"], p))
    # Changed, replaced and deleted after indexing (see the test).
    add("later/changed.mp4", KEPT, lambda p: shutil.copy(seeds["mp4"], p))
    add("later/shortened.mkv", KEPT, lambda p: _good(p, "ffv1", "pcm_s16le", seconds=2))
    add("later/deleted.mp4", KEPT, lambda p: shutil.copy(seeds["mp4"], p))
    # Names.
    for i, name in enumerate(ODD_NAMES):
        seed = seeds["mp4" if i % 2 else "mkv"]
        add(f"names/{name}", KEPT, lambda p, seed=seed: shutil.copy(seed, p))
    add(f"names/{BAD_TEXT_NAME}", "not a media file", lambda p: p.write_text("x"))
    add(f"{LATIN1_FOLDER}/clip.mp4", KEPT, lambda p: shutil.copy(seeds["mp4"], p))
    return expected


def _locked(seeds: dict[str, Path], path: Path) -> None:
    shutil.copy(seeds["mp4"], path)
    path.chmod(0)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    seeds_dir = tmp_path_factory.mktemp("seeds")
    seeds = {
        "mp4": write_media(seeds_dir / "a.mp4"),
        "faststart": write_media(
            seeds_dir / "fast.mp4", container_options={"movflags": "faststart"}
        ),
        "mkv": write_media(seeds_dir / "a.mkv", "ffv1", "pcm_s16le"),
        "webm": write_media(seeds_dir / "a.webm", "libvpx", "libopus", sample_rate=48000),
    }
    root = tmp_path_factory.mktemp("zoo") / "videos"
    expected = _build(root, seeds)
    yield root, expected
    (root / "things" / "locked.mp4").chmod(0o644)  # so that pytest can clean up


def _read_csv(path: Path) -> list[dict[str, str]]:
    text = path.read_bytes().decode("utf-8")  # strict: the files are valid UTF-8 whatever the names
    return list(csv.DictReader(text.splitlines(keepends=True)))


def test_index_keeps_or_rejects_every_odd_file_and_every_kept_file_decodes(
    zoo: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, expected = zoo
    assert len({v for v in expected}) > 5 and len(expected) >= 40
    output = tmp_path / "out" / "manifest.csv"

    assert cli.main(["index", str(root), "-o", str(output), "--workers", "2"]) == 0

    summary = capsys.readouterr().out
    manifest = read_manifest(output)
    rejected = _read_csv(output.parent / "rejected.csv")
    kept = {os.path.relpath(manifest.path(i), root): i for i in range(len(manifest))}
    reasons = {os.path.relpath(output.parent / decode_path(r["path"]), root): r for r in rejected}
    got = {name: KEPT for name in kept} | {name: r["reason"] for name, r in reasons.items()}
    want = {name: outcome for name, outcome in expected.items() if outcome != IGNORED}
    assert got == want
    assert all(r["reason"] in REJECTION_REASONS and r["detail"] for r in rejected)
    assert f"kept {len(kept)}, rejected {len(rejected)}" in summary
    json.loads((output.parent / "manifest.csv.probe-cache.json").read_bytes().decode("utf-8"))

    # What the manifest says of the odd ones.
    rows = {name: manifest.rows[i] for name, i in kept.items()}
    assert rows["odd/odd_size_17x9.mkv"]["width"] == "17"
    assert rows["odd/odd_size_17x9.mkv"]["height"] == "9"
    assert float(rows["odd/1fps.mp4"]["fps"]) == pytest.approx(1.0)
    assert float(rows["odd/120fps.mp4"]["fps"]) == pytest.approx(120.0)
    assert float(rows["formats/mjpeg_pcm.avi"]["fps"]) == pytest.approx(10.0)
    assert 2 <= float(rows["odd/vfr_ms_clock.avi"]["fps"]) <= 20  # 6 frames in 0.9 s, not 1000
    assert rows["formats/h264_51.mov"]["audio_channels"] == "6"
    assert rows["audio/aac_7.1.m4a"]["audio_channels"] == "8"
    assert rows["formats/ffv1_flac_8k.mkv"]["sample_rate"] == "8000"
    assert rows["audio/stereo_48k.wav"]["sample_rate"] == "48000"
    assert [rows[f"audio/{n}"]["has_video"] for n in ("opus.ogg", "mono.wav", "song.mp3")] == [
        "0",
        "0",
        "0",
    ]
    assert rows["video/silent.mp4"]["has_audio"] == "0"
    assert rows[f"{LATIN1_FOLDER}/clip.mp4"]["label"] == "label \\xe9"  # valid text, one per name
    assert rows["things/folder.mp4/inside.mp4"]["label"] == "folder.mp4"

    # Files that change after indexing.
    later = root / "later"
    (later / "changed.mp4").write_text("overwritten by a text editor")
    write_media(later / "shortened.mkv", "ffv1", "pcm_s16le", seconds=0.3)
    (later / "deleted.mp4").unlink()
    broken_later = {"later/changed.mp4", "later/shortened.mkv", "later/deleted.mp4"}

    for name, i in kept.items():
        path, duration = manifest.path(i), manifest.duration(i)
        assert path.exists() or name == "later/deleted.mp4", name
        if manifest.has_video(i):
            spec = ClipSpec() if manifest.has_audio(i) else ClipSpec(audio_samples=None)
        else:
            spec = ClipSpec(num_frames=0, decode_video=False)
        try:
            clip = decode_clip(path, duration / 3, spec, duration_sec=duration)
        except DecodeError as error:
            assert name in broken_later, f"{name}: {error.reason}"
            assert error.path == str(path)
            continue
        assert name not in broken_later, f"{name} changed after indexing and still decoded"
        if spec.decode_video:
            assert clip.frames.shape[0] == 8 and min(clip.frames.shape[1:3]) == 128, name
        if spec.audio_samples:
            assert clip.audio is not None and clip.audio.shape == (spec.audio_samples,), name
