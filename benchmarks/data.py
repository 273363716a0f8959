"""Data-loader benchmark: the full xdc loader against a bare PyAV seek-and-decode of the same clips,
and the loader on raw 360p and 720p sources against the same clips after ``xdc prepare``.

    make bench-data            # or: .venv/bin/python benchmarks/data.py [--clips 240] [--data DIR]
    .venv/bin/python benchmarks/data.py --part prepared     # only the prepared-vs-raw rows
    .venv/bin/python benchmarks/data.py --quick --json rows.jsonl  # smoke run; rows as JSON lines

Both sides decode exactly the same clips (same videos, same start times) in the same run:

- bare PyAV: open, seek, decode every video frame of the clip's span and convert it to an RGB array
  at the source size, decode the audio window's samples. No resampling, no transforms.
- xdc loader: ClipDataset + DataLoader (decode, frame selection and resize, crop, flip,
  normalisation, audio resampling to 16 kHz mono, log-mel, collation), with 0, 1 and 2 workers.

Prints clips/s, the ratio to the bare decode, and peak memory (max RSS of the main process and of
the worker processes).

Prepared vs raw: ``--files`` textured, panning videos with stereo 44.1 kHz AAC, ``--seconds`` long at
30 fps, at 640x360 and 1280x720, H.264 (x264 veryfast, CRF 23) with keyframes every
``--source-gop`` frames (250, x264's default: what a plain ``ffmpeg -c:v libx264`` writes, so a
10-second clip has one keyframe), made once under ``.cache/``. The same clips (same keys, hence same
rows and start times) are loaded from them and from their ``xdc prepare`` copies (short side 128,
a keyframe a second, 16 kHz mono audio), by the loader in the main process (0 workers: clips/s per
core), one batch from each side in turn. Timings on a shared machine are noisy: compare the ratios
of one run.

``--quick``: the smallest settings (16 clips, one 2-second source per resolution, a small demo set
under ``.cache/bench-demo-quick``), to check that the script runs. ``--json PATH`` appends the rows
in the schema of ``benchmarks/jsonrows.py`` (read by ``benchmarks/table.py``).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo_set import DATA_HELP, demo_manifest  # noqa: E402
from jsonrows import append_rows, make_row  # noqa: E402

from xdc import seeds  # noqa: E402
from xdc.allocator import keep_heap  # noqa: E402
from xdc.config import DataConfig, build_config  # noqa: E402
from xdc.data.datasets import ClipDataset, clip_loader, epoch_keys  # noqa: E402
from xdc.data.decode import clip_duration  # noqa: E402
from xdc.data.draws import START, clip_draws  # noqa: E402
from xdc.data.index import index_source  # noqa: E402
from xdc.data.manifest import read_manifest  # noqa: E402
from xdc.data.prepare import prepare_videos  # noqa: E402

QUICK = {"clips": 16, "files": 1, "seconds": 2.0, "prepared_clips": 8}


def bare_decode(path: str, start: float, span: float, audio_start: float, audio_end: float) -> int:
    """Open, seek once, decode the clip's frames to RGB (source size) and its audio samples."""
    with av.open(path) as container:
        vstream = container.streams.video[0]
        astream = container.streams.audio[0]
        container.seek(int(max(0.0, min(start, audio_start)) * av.time_base), backward=True)
        n_frames, n_samples = 0, 0
        video_done, audio_done = False, False
        for packet in container.demux(vstream, astream):
            for frame in packet.decode():
                t = float(frame.time or 0.0)
                if packet.stream.type == "video":
                    if start <= t < start + span:
                        frame.to_ndarray(format="rgb24")
                        n_frames += 1
                    video_done = t >= start + span
                else:
                    if t + frame.samples / frame.sample_rate > audio_start and t < audio_end:
                        n_samples += frame.to_ndarray().shape[-1]
                    audio_done = t >= audio_end
            if video_done and audio_done:
                break
    return n_frames


def time_bare(dataset: ClipDataset, keys: list) -> float:
    spec = dataset.spec
    span = clip_duration(spec)
    audio_sec = (spec.audio_samples or 0) / spec.sample_rate
    start_time = time.perf_counter()
    for key in keys:
        start = dataset.clip_start(key.row, key, clip_draws(key.seed, 1)[START])
        audio_start = start + span / 2 - audio_sec / 2
        bare_decode(
            str(dataset.manifest.path(key.row)), start, span, audio_start, audio_start + audio_sec
        )
    return len(keys) / (time.perf_counter() - start_time)


def time_loader(dataset: ClipDataset, keys: list, workers: int, batch_size: int) -> float:
    loader = clip_loader(dataset, keys, batch_size, workers=workers)
    start = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch["video"].shape[0]
    return n / (time.perf_counter() - start)


def textured_video(
    path: Path, width: int, height: int, seconds: float, gop: int, seed: int, fps: int = 30
) -> None:
    """A panning blurred-noise texture with a moving square and grain (x264 cannot shrink it to
    nothing, as it does flat test patterns), and stereo 44.1 kHz AAC noise-modulated tones."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 10, width // 8 + 34, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(small, 8, 0), 8, 1)
    for axis in (0, 1):  # a blur, for the soft edges of natural images
        texture = (np.roll(texture, 4, axis) + texture + np.roll(texture, -4, axis)) / 3
    texture = texture.astype(np.uint8)
    frames, side = int(seconds * fps), height // 5
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "23", "g": str(gop)}
        audio = container.add_stream("aac", rate=44100, layout="stereo")
        for i in range(frames):
            x, y = i * 256 // frames, int(32 + 20 * np.sin(i / 15))
            image = texture[y : y + height, x : x + width].copy()
            left = (i * 7) % (width - side)
            image[side : 2 * side, left : left + side] = (255, 64, 32)
            image += rng.integers(0, 8, image.shape, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        t = np.arange(int(seconds * 44100)) / 44100
        tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(t)) * t) * rng.random(t.size)
        for start in range(0, t.size, 1024):
            piece = np.tile(tone[start : start + 1024].astype(np.float32), (2, 1))
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    tmp.replace(path)


def prepared_rows(args: argparse.Namespace, config: DataConfig) -> list[tuple[str, float, float]]:
    """(name, raw clips/s, prepared clips/s) at 360p and 720p, the same keys on both sides."""
    cache = Path(args.cache) / f"bench-prepare-gop{args.source_gop}-{args.seconds:g}s"
    rows = []
    for width, height in ((640, 360), (1280, 720)):
        raw = cache / f"raw-{height}p"
        for i in range(args.files):
            path = raw / f"v{i:02d}.mp4"
            if not path.is_file():
                print(f"writing {path} …", flush=True)
                textured_video(path, width, height, args.seconds, args.source_gop, seed=i)
        index_source(raw, raw / "manifest.csv", workers=1, progress=False)
        started = time.perf_counter()
        result = prepare_videos(raw, cache / f"prepared-{height}p", progress=False)
        print(
            f"xdc prepare {height}p: {result.prepared} prepared, {result.skipped} skipped in "
            f"{time.perf_counter() - started:.1f} s; {result.source_bytes / 2**20:.1f} MiB -> "
            f"{result.output_bytes / 2**20:.1f} MiB",
            flush=True,
        )
        datasets = [
            ClipDataset(read_manifest(m), config, train=True)
            for m in (raw / "manifest.csv", result.manifest_path)
        ]
        keys = epoch_keys(datasets[0].rows, args.prepared_clips, seeds.rng(0, "sample", 0, 0))
        raw_rate, prepared_rate = interleaved_rates(datasets, keys, args.batch_size)
        rows.append((f"{height}p", raw_rate, prepared_rate))
    return rows


def interleaved_rates(datasets: list[ClipDataset], keys: list, batch_size: int) -> list[float]:
    """Clips/s of each dataset on the same keys, loaded (0 workers) one batch of each in turn, so
    that a change in the machine's load weighs on every side alike."""
    for dataset in datasets:  # the page cache and the first-use costs
        time_loader(dataset, keys[:batch_size], 0, batch_size)
    seconds = [0.0] * len(datasets)
    for start in range(0, len(keys), batch_size):
        for i, dataset in enumerate(datasets):
            began = time.perf_counter()
            for _ in clip_loader(dataset, keys[start : start + batch_size], batch_size, workers=0):
                pass
            seconds[i] += time.perf_counter() - began
    return [len(keys) / s for s in seconds]


def max_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def worker_rows(args: argparse.Namespace, config: DataConfig) -> list[dict]:
    """The loader with 0, 1 and 2 workers against a bare PyAV decode of the same clips; returns
    the JSON rows."""
    manifest = read_manifest(demo_manifest(args.data, args.quick))
    dataset = ClipDataset(manifest, config, train=True)
    keys = epoch_keys(dataset.rows, args.clips, seeds.rng(0, "sample", 0, 0))
    print(
        f"{args.clips} clips of {config.num_frames} frames at {config.fps:g} fps, "
        f"resize {config.resize_short}, crop {config.crop_size}, audio {config.audio_frames}×{config.n_mels} "
        f"log-mel; batch {args.batch_size}; torch {torch.__version__}, PyAV {av.__version__}"
    )
    time_bare(dataset, keys[: args.batch_size])  # warm the page cache for both sides
    bare = time_bare(dataset, keys)
    rows = [("bare PyAV seek + decode (reference)", bare)]
    for workers in (0, 1, 2):
        rows.append(
            (f"xdc loader, {workers} workers", time_loader(dataset, keys, workers, args.batch_size))
        )
    zero = rows[1][1]
    print(f"\n{'':38} {'clips/s':>9} {'vs bare':>8} {'vs 0 workers':>13}")
    for name, rate in rows:
        print(f"{name:38} {rate:9.1f} {rate / bare:7.2f}× {rate / zero:12.2f}×")
    print(
        f"\npeak memory: main process {max_rss_mib(resource.RUSAGE_SELF):.0f} MiB, "
        f"largest worker {max_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB"
    )
    print("targets: 0 workers ≥ 0.75× bare; 2 workers ≥ 1.7× 0 workers")
    settings = {"clips": args.clips, "batch_size": args.batch_size, "preset": args.preset}
    bare_name, zero_name = "bare PyAV seek + decode, same clips", "loader, 0 workers"
    return [
        make_row("data", "loader, 0 workers", zero, "clips/s", bare_name, bare,
                 at_least=0.75, settings=settings),
        make_row("data", "loader, 1 worker", rows[2][1], "clips/s", zero_name, zero,
                 settings=settings),
        make_row("data", "loader, 2 workers", rows[3][1], "clips/s", zero_name, zero,
                 at_least=1.7, settings=settings),
    ]  # fmt: skip


def prepared_json(args: argparse.Namespace, rows: list[tuple[str, float, float]]) -> list[dict]:
    settings = {
        "clips": args.prepared_clips, "batch_size": args.batch_size, "preset": args.preset,
        "files": args.files, "seconds": args.seconds, "source_gop": args.source_gop, "workers": 0,
    }  # fmt: skip
    return [
        make_row("data", f"loader, {name} sources after xdc prepare", prepared, "clips/s",
                 f"loader, {name} raw sources", raw, settings=settings,
                 at_least=3.0 if name == "720p" else None)
        for name, raw, prepared in rows
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument(
        "--cache", default=str(ROOT / ".cache"), help="folder for the generated source videos"
    )
    parser.add_argument("--quick", action="store_true", help="smallest settings: a smoke run")
    parser.add_argument("--json", help="append the rows to this JSON-lines file")
    parser.add_argument("--clips", type=int, default=240, help="clips per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--preset", default="paper-kinetics", help="clip parameters (frames, fps, sizes)"
    )
    parser.add_argument(
        "--part", choices=("all", "workers", "prepared"), default="all", help="which rows to run"
    )
    parser.add_argument("--files", type=int, default=4, help="source videos per resolution")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each source video")
    parser.add_argument("--source-gop", type=int, default=250, help="source keyframe interval")
    parser.add_argument(
        "--prepared-clips", type=int, default=48, help="clips per prepared-vs-raw measurement"
    )
    args = parser.parse_args()
    keep_heap()  # as the xdc command does (xdc.allocator)
    if args.quick:  # the quick settings replace the defaults; flags given still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args()
    config = build_config(args.preset).data
    torch.set_num_threads(1)
    if args.part in ("all", "workers"):
        append_rows(args.json, worker_rows(args, config))
    if args.part in ("all", "prepared"):
        rows = prepared_rows(args, config)
        append_rows(args.json, prepared_json(args, rows))
        print(
            f"\n{args.prepared_clips} clips per row, loader with 0 workers; sources "
            f"{args.seconds:g} s at 30 fps, keyframes every {args.source_gop} frames"
        )
        print(f"{'':38} {'clips/s':>9} {'vs raw':>8}")
        for name, raw, prepared in rows:
            print(f"{'loader, ' + name + ' raw sources':38} {raw:9.1f} {1.0:7.2f}×")
            print(
                f"{'loader, ' + name + ' after xdc prepare':38} {prepared:9.1f} {prepared / raw:7.2f}×"
            )
        print("target: prepared 720p ≥ 3× raw")


if __name__ == "__main__":
    main()
