"""Audio-only files (ESC-50 ``.wav``, FLAC, an AAC soundtrack): indexed with ``has_video`` 0,
decoded without video, used by the audio protocol, left out of pretraining.

Every file is real: WAV (PCM s16le) and FLAC written with PyAV, next to lossless Matroska videos
carrying the same PCM audio (``tests.media``), so decoded samples can be compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from tests.media import random_frames, tone, write_video
from xdc.data.datasets import ClipDataset, ClipKey
from xdc.data.decode import ClipSpec, decode_clip
from xdc.data.index import index_source
from xdc.data.manifest import read_manifest, write_manifest
from xdc.data.probe import probe_file
from xdc.errors import DataError
from xdc.training import pretrain

RATE = 16000
PCM_STEP = 1 / 32767  # one s16 quantisation step, in float


def write_audio(path: Path, audio: np.ndarray, rate: int = RATE, codec: str = "pcm_s16le") -> Path:
    """Write ``audio`` (C, N) or (N,) float in [-1, 1] as an audio-only file (``.wav``, ``.flac``)."""
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        data = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
        for start in range(0, data.shape[1], 1024):
            packed = np.ascontiguousarray(data[:, start : start + 1024].T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def sound(kind: str, seconds: float, seed: int) -> np.ndarray:
    """(N,) float32 synthetic sound of one class: a low tone, a high tone or noise bursts."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        wave = rng.uniform(-0.4, 0.4, int(seconds * RATE)).astype(np.float32)
        return wave * (np.arange(len(wave)) // 1600 % 2 == 0)
    freq = {"low": 300.0, "high": 2500.0}[kind] * rng.uniform(0.95, 1.05)
    return tone(seconds, RATE, freq=freq, amp=float(rng.uniform(0.3, 0.5)))


def audio_manifest(root: Path, per_class: int = 4, seconds: float = 1.5) -> Path:
    """WAV files of three classes, indexed through a CSV with a ``fold`` column (folds 1 and 2)."""
    lines = ["path,label,fold"]
    for c, kind in enumerate(("low", "high", "noise")):
        for i in range(per_class):
            name = f"{kind}_{i}.wav"
            write_audio(root / name, sound(kind, seconds, seed=10 * c + i))
            lines.append(f"{name},{kind},{1 + i % 2}")
    (root / "esc.csv").write_text("\n".join(lines) + "\n")
    index_source(root / "esc.csv", root / "manifest.csv", workers=1, progress=False)
    return root / "manifest.csv"


# --- probe and index -------------------------------------------------------------------------------


def test_probe_and_index_keep_audio_only_files(tmp_path: Path) -> None:
    stereo = np.stack([tone(1.5, 22050, 440.0), tone(1.5, 22050, 220.0)])
    wav = write_audio(tmp_path / "sounds" / "dog" / "a.wav", stereo, rate=22050)
    flac = write_audio(tmp_path / "sounds" / "rain" / "b.flac", tone(0.75), codec="flac")
    video = write_video(tmp_path / "sounds" / "rain" / "c.mkv", random_frames(25), audio=tone(1.0))

    for path, duration, rate, channels in ((wav, 1.5, 22050, 2), (flac, 0.75, RATE, 1)):
        result = probe_file(path)
        assert result.ok, result.detail
        assert (result.has_video, result.has_audio) == (False, True)
        assert (result.sample_rate, result.audio_channels) == (rate, channels)
        assert (result.fps, result.width, result.height) == (0.0, 0, 0)
        assert result.duration_sec == pytest.approx(duration, abs=1e-3)
    assert probe_file(video).has_video is True

    result = index_source(tmp_path / "sounds", tmp_path / "m.csv", workers=1, progress=False)
    assert (result.kept, result.rejected, result.audio_only) == (3, 0, 2)
    assert "audio-only 2" in result.summary()
    manifest = read_manifest(tmp_path / "m.csv")
    has_video = {manifest.rows[i]["path"]: manifest.has_video(i) for i in range(len(manifest))}
    assert has_video == {
        "sounds/dog/a.wav": False,
        "sounds/rain/b.flac": False,
        "sounds/rain/c.mkv": True,
    }
    assert [r["has_video"] for r in manifest.rows] == ["0", "0", "1"]


def test_probe_still_rejects_files_with_nothing_usable(tmp_path: Path) -> None:
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    assert probe_file(garbage).reason == "not a media file"
    header_only = tmp_path / "cut.wav"
    header_only.write_bytes(write_audio(tmp_path / "full.wav", tone(0.5)).read_bytes()[:44])
    assert probe_file(header_only).reason in ("truncated", "corrupt")


def test_old_manifest_without_has_video_reads_as_video(tmp_path: Path) -> None:
    (tmp_path / "old.csv").write_text("path,width\na.mp4,32\nb.mp4,\nc.wav,0\n")
    manifest = read_manifest(tmp_path / "old.csv")
    assert [manifest.has_video(i) for i in range(3)] == [True, True, False]


# --- decoding --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def same_audio(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """(video with PCM audio, WAV of the same samples, the samples): 1 s, a 440 Hz tone."""
    root = tmp_path_factory.mktemp("same_audio")
    wave = tone(1.0, RATE, freq=440.0, amp=0.5)
    video = write_video(root / "v.mkv", random_frames(25, 32, 32), audio=wave)
    return video, write_audio(root / "a.wav", wave), wave


@pytest.mark.parametrize("start", [0.1, 0.55, 5.0])
def test_audio_only_decode_equals_the_audio_of_a_full_decode(
    same_audio: tuple[Path, Path, np.ndarray], start: float
) -> None:
    video, wav, wave = same_audio
    full_spec = ClipSpec(num_frames=8, fps=16.0, resize_short=None, audio_samples=4000)
    audio_spec = ClipSpec(
        num_frames=8, fps=16.0, resize_short=None, audio_samples=4000, decode_video=False
    )
    full = decode_clip(video, start, full_spec, duration_sec=1.0)
    no_frames = decode_clip(video, start, audio_spec, duration_sec=1.0)
    from_wav = decode_clip(wav, start, audio_spec)  # duration from the WAV header
    assert full.frames.shape == (8, 32, 32, 3) and no_frames.frames.shape[0] == 0
    assert no_frames.frame_times.shape == (0,)
    for clip in (no_frames, from_wav):
        assert clip.start_sec == full.start_sec and clip.audio_start_sec == full.audio_start_sec
        assert clip.audio is not None and full.audio is not None
        np.testing.assert_array_equal(clip.audio, full.audio)
    # The known waveform: the window sits on the sample grid, zeros past the end of the track.
    first = round(full.audio_start_sec * RATE)
    expected = np.zeros(4000, np.float32)
    inside = wave[max(first, 0) : first + 4000]
    expected[max(0, -first) : max(0, -first) + len(inside)] = inside
    np.testing.assert_allclose(full.audio, expected, atol=1.5 * PCM_STEP)


def test_audio_only_clip_span_is_the_audio_window(
    same_audio: tuple[Path, Path, np.ndarray],
) -> None:
    _, wav, wave = same_audio
    for align in ("center", "start"):
        spec = ClipSpec(num_frames=0, audio_samples=3200, decode_video=False, audio_align=align)
        clip = decode_clip(wav, 0.3, spec)
        assert clip.audio_start_sec == pytest.approx(0.3)
        np.testing.assert_allclose(clip.audio, wave[4800:8000], atol=1.5 * PCM_STEP)
        late = decode_clip(wav, 3.0, spec)  # past the end: moved so that the window fits
        assert late.start_sec == pytest.approx(0.8)
        np.testing.assert_allclose(late.audio, wave[12800:16000], atol=1.5 * PCM_STEP)


# --- datasets and pretraining ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def wav_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return audio_manifest(tmp_path_factory.mktemp("esc"))


def test_audio_dataset_reads_wav_rows_from_disk_and_from_the_cache(wav_manifest: Path) -> None:
    manifest = read_manifest(wav_manifest)
    config = tiny_config("xdc").data
    dataset = ClipDataset(manifest, config, train=False, modalities=("audio",))
    assert len(dataset) == 12 and dataset.excluded_no_video == 0
    keys = [ClipKey(r, seed=0, clip=j, num_clips=3) for r in (0, 5, 11) for j in range(3)]
    from_disk = [dataset[k] for k in keys]
    for sample in from_disk:
        assert "video" not in sample and sample["valid"]
        assert sample["audio"].shape == (1, config.n_mels, config.audio_frames)
        assert torch.isfinite(sample["audio"]).all()
    # three clips of one 1.5 s recording: different windows, all inside the file
    assert len({round(s["start_sec"], 4) for s in from_disk[:3]}) == 3
    assert not torch.equal(from_disk[0]["audio"], from_disk[3]["audio"])  # low tone vs high tone
    cache = dataset.build_cache(progress=False)
    assert all(v.frames is None for v in cache.videos.values()) and not cache.failed
    for key, disk in zip(keys, from_disk, strict=True):
        torch.testing.assert_close(dataset[key]["audio"], disk["audio"], atol=1e-4, rtol=0)


def test_video_datasets_refuse_an_all_audio_only_manifest(wav_manifest: Path) -> None:
    manifest = read_manifest(wav_manifest)
    with pytest.raises(DataError, match=r"need video: all 12 rows are audio-only") as caught:
        ClipDataset(manifest, tiny_config("xdc").data, train=True)
    assert "\n" not in str(caught.value) and str(wav_manifest) in str(caught.value)
    with pytest.raises(DataError, match="audio-only"):
        pretrain(tiny_config("xdc"), wav_manifest, wav_manifest.parent / "run", split=None)
    assert not (wav_manifest.parent / "run").exists()


def test_pretraining_leaves_audio_only_rows_out(
    demo_manifest: Path, wav_manifest: Path, tmp_path: Path
) -> None:
    videos, sounds = read_manifest(demo_manifest), read_manifest(wav_manifest)
    rows = [dict(r, path=str(videos.path(i))) for i, r in enumerate(videos.rows)]
    rows += [dict(r, path=str(sounds.path(i)), split="train") for i, r in enumerate(sounds.rows)]
    mixed = write_manifest(rows, tmp_path / "mixed.csv")
    train = read_manifest(mixed).select("train")
    dataset = ClipDataset(train, tiny_config("xdc").data, train=True)
    assert dataset.excluded_no_video == 12 and len(dataset) == len(train) - 12
    assert all(train.has_video(r) for r in dataset.rows)

    state = pretrain(tiny_config("xdc"), mixed, tmp_path / "run", progress=False)
    assert state.finished
    labels = next(iter(state.labels.values()))
    assert labels.shape == (len(train),)
    audio_only = [i for i in range(len(train)) if not train.has_video(i)]
    assert (labels[audio_only] == -1).all() and (labels[dataset.rows] >= 0).all()


# --- the audio protocol end to end -----------------------------------------------------------------


def test_audio_probe_command_on_wav_files(wav_manifest: Path, tmp_path: Path, capsys) -> None:
    from tests.test_eval_cli import xdc_main

    command = (
        "audio-probe --checkpoint random --preset tiny --data {data} --folds-column fold "
        "--clips 2 --bn-clips 8 --batch-size 4 --no-progress --out-dir {out} "
        "model.audio_width=4 data.audio_frames=48 data.cache=memory"
    )
    assert xdc_main(command, data=wav_manifest, out=tmp_path / "eval") == 0
    assert "mean" in capsys.readouterr().out
    result = json.loads((tmp_path / "eval" / "audio_probe.json").read_text())
    assert (result["n_folds"], result["n_recordings"], result["n_without_fold"]) == (2, 12, 0)
    assert [f["n_test"] for f in result["folds"]] == [6, 6]
    assert all(f["bn_clips"] == 8 for f in result["folds"])
    # three very different sounds: even random (BatchNorm-recalibrated) features separate them
    assert result["top1"] > 0.5


def test_retrieval_runs_per_modality_on_audio_only_and_mixed_manifests(
    demo_manifest: Path, wav_manifest: Path, tmp_path: Path, capsys
) -> None:
    from tests.test_eval_cli import xdc_main

    videos, sounds = read_manifest(demo_manifest), read_manifest(wav_manifest)
    wav_rows = [
        dict(r, path=str(sounds.path(i)), split="train" if r["fold"] == "1" else "test")
        for i, r in enumerate(sounds.rows)
    ]
    audio_only = write_manifest(wav_rows, tmp_path / "audio.csv")
    video_rows = [dict(r, path=str(videos.path(i))) for i, r in enumerate(videos.rows)]
    mixed = write_manifest(video_rows + wav_rows, tmp_path / "mixed.csv")
    command = (
        "retrieval --checkpoint random --preset tiny --data {data} --clips 1 --bn-clips 4 "
        "--batch-size 4 --no-progress --json model.video_width=4 model.audio_width=4 "
        "data.num_frames=4 data.resize_short=36 data.crop_size=32 data.audio_frames=48 "
        "data.cache=memory"
    )
    assert xdc_main(command, data=audio_only) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "audio_to_audio" in result and "video_to_video" not in result
    assert "audio_to_video" not in result and "cross-modal retrieval skipped" in captured.err
    assert (result["n_audio_queries"], result["n_audio_gallery"]) == (6, 6)

    assert xdc_main(command, data=mixed) == 0
    result = json.loads(capsys.readouterr().out)
    n_train = sum(r["split"] == "train" for r in videos.rows)
    n_test = len(videos) - n_train
    assert (result["n_video_gallery"], result["n_audio_gallery"]) == (n_train, n_train + 6)
    assert (result["n_video_queries"], result["n_audio_queries"]) == (n_test, n_test + 6)
    assert (result["n_pairs_train"], result["n_pairs_test"]) == (n_train, n_test)
