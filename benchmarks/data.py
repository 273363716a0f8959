"""Data-loader benchmark: the full xdc loader against a bare PyAV seek-and-decode of the same clips.

    make bench-data            # or: .venv/bin/python benchmarks/data.py [--clips 240] [--data DIR]

Both sides decode exactly the same clips (same videos, same start times) in the same run:

- bare PyAV: open, seek, decode every video frame of the clip's span and convert it to an RGB array
  at the source size, decode the audio window's samples. No resampling, no transforms.
- xdc loader: ClipDataset + DataLoader (decode, frame selection and resize, crop, flip,
  normalisation, audio resampling to 16 kHz mono, log-mel, collation), with 0, 1 and 2 workers.

Prints clips/s, the ratio to the bare decode, and peak memory (max RSS of the main process and of
the worker processes). Timings on a shared machine are noisy: compare the ratios of one run.
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

from xdc import seeds  # noqa: E402
from xdc.config import build_config  # noqa: E402
from xdc.data.datasets import ClipDataset, clip_loader, epoch_keys  # noqa: E402
from xdc.data.decode import clip_duration  # noqa: E402
from xdc.data.demo import generate_demo_data  # noqa: E402
from xdc.data.manifest import read_manifest  # noqa: E402


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
        start = dataset.clip_start(key.row, key, np.random.default_rng(key.seed))
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


def max_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default=str(ROOT / ".cache" / "bench-demo"), help="demo data folder"
    )
    parser.add_argument("--clips", type=int, default=240, help="clips per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--preset", default="paper-kinetics", help="clip parameters (frames, fps, sizes)"
    )
    args = parser.parse_args()

    data = Path(args.data)
    if not (data / "manifest.csv").is_file():
        print(f"generating demo data in {data} …", flush=True)
        generate_demo_data(data, classes=10, per_class=40, seed=0, progress=False)
    config = build_config(args.preset).data
    torch.set_num_threads(1)
    manifest = read_manifest(data / "manifest.csv")
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


if __name__ == "__main__":
    main()
