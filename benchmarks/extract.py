"""Evaluation-extraction benchmark: frozen-encoder features of the demo's videos (what every
probe, retrieval and cluster evaluation spends its time on) against encoder-only forwards, in the
layout a run trained in (``train.channels_last``) and in the default one.

    make bench-extract    # or: .venv/bin/python benchmarks/extract.py [--clips 10] [--rounds 5]
    .venv/bin/python benchmarks/extract.py --quick --json rows.jsonl  # smoke run, JSON rows

The encoders are ``--preset``'s (default ``small``, the preset the README recommends for a set of a
few hundred videos), randomly initialised, keeping their stored BatchNorm statistics (what a
trained run's extraction does), on the CPU. In one process, ``--rounds`` times, each layout in
turn (which goes first alternates):

- extraction: ``extract_splits`` of ``--clips`` uniformly spaced clips of every test video of the
  demo set, video then audio, as ``xdc demo`` and ``xdc linear-probe`` extract a split (the
  preset's RAM cache of the videos or its DataLoader workers, centre crop, log-mel, the forwards,
  collecting the features): clips/s of both modalities together;
- encoder only: the same number of forwards of each encoder, on random tensors of the
  extraction's batch shapes and dtypes (uint8 clips, log-mel), no data loading.

The round of median ratio is reported (every round's ratio is printed too): on a shared machine
the speed drifts within a minute, and measurements close in time drift together. Rows:
extraction in the trained layout vs encoder only in that layout (the share of the extraction's
time the encoders take), and extraction in the trained layout vs in the default layout.

``--quick``: one round, one clip, on a small demo set under ``.cache/bench-demo-quick``: to
check that the script runs. ``--json PATH`` appends the rows in the schema of
``benchmarks/jsonrows.py`` (read by ``benchmarks/table.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo_set import demo_manifest, demo_parser, median_by  # noqa: E402
from jsonrows import append_rows, make_row  # noqa: E402

from xdc.allocator import keep_heap  # noqa: E402
from xdc.data.manifest import Manifest, read_manifest  # noqa: E402
from xdc.evaluation.encoders import EvalEncoders, random_eval_encoders  # noqa: E402
from xdc.evaluation.extract import EvalClips, FeatureExtractor, extract_splits  # noqa: E402
from xdc.methods import MODALITIES  # noqa: E402

LAYOUTS = {"trained": "true", "default": "false"}
"""Row name → ``train.channels_last``."""
QUICK = {"clips": 1, "rounds": 1}


def encoders(preset: str, layout: str) -> EvalEncoders:
    return random_eval_encoders(None, preset, [f"train.channels_last={LAYOUTS[layout]}"], seed=0)


def extraction(source: EvalEncoders, manifest: Manifest, clips: int) -> tuple[float, int]:
    """(clips/s, clips) of one extraction of ``clips`` clips per test video, both modalities, as
    a probe runs it (``extract_splits``: the RAM cache of those videos when the preset has one)."""
    start = time.perf_counter()
    out = extract_splits(
        source, manifest, ["test"], clips=clips, bn_split="test", bn_clips=0, device="cpu",
        progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    n = sum(len(f.rows) for f in out["test"].values())
    return n / seconds, n


class EncoderOnly:
    """Forwards of each encoder (eval mode, no gradients) on random tensors of the extraction's
    batch shapes, in the layout the extractor puts it in."""

    def __init__(self, source: EvalEncoders, manifest: Manifest) -> None:
        reader = EvalClips(manifest, source.config.data, MODALITIES, batch_size=1, progress=False)
        extractor = FeatureExtractor(source, reader, [], bn_clips=0, device="cpu", progress=False)
        self.encoders = {m: extractor.calibrated(m) for m in MODALITIES}
        d, self.batch = source.config.data, source.config.train.batch_size
        video = torch.randint(0, 256, (self.batch, 3, d.num_frames, d.crop_size, d.crop_size))
        self.inputs = {
            "video": video.to(torch.uint8),
            "audio": torch.randn(self.batch, 1, d.n_mels, d.audio_frames),
        }
        self.run(self.batch * len(MODALITIES))  # warm-up: first calls allocate

    @torch.no_grad()
    def run(self, clips: int) -> float:
        """Clips/s of ``clips`` forwards, split evenly between the modalities (as extracted)."""
        batches = max(1, round(clips / len(MODALITIES) / self.batch))
        start = time.perf_counter()
        for m in MODALITIES:
            for _ in range(batches):
                self.encoders[m](self.inputs[m])
        return batches * self.batch * len(MODALITIES) / (time.perf_counter() - start)


def median_round(rounds: list[dict[str, float]], over: str, under: str) -> dict[str, float]:
    """The round of median ``over / under``."""
    return median_by(rounds, lambda r: r[over] / r[under])


def main() -> None:
    parser = demo_parser(__doc__)
    parser.add_argument("--preset", default="small", help="the encoders' preset (default small)")
    parser.add_argument("--clips", type=int, default=10, help="clips per video (as linear-probe)")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each side")
    args = parser.parse_args()
    keep_heap()  # as the xdc command does (xdc.allocator)
    if args.quick:  # the quick settings replace the defaults; flags given still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args()
    manifest = read_manifest(demo_manifest(args.data, args.quick))
    sources = {layout: encoders(args.preset, layout) for layout in LAYOUTS}
    alone = {layout: EncoderOnly(sources[layout], manifest) for layout in LAYOUTS}
    if args.rounds < 1 or args.clips < 1:
        parser.error("--rounds and --clips must be at least 1")
    rounds: list[dict[str, float]] = []
    for k in range(args.rounds):
        measured: dict[str, float] = {}
        for layout in list(LAYOUTS)[:: 1 if k % 2 == 0 else -1]:
            measured[layout], n = extraction(sources[layout], manifest, args.clips)
            measured[f"{layout} encoder only"] = alone[layout].run(n)
        rounds.append(measured)
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; preset {args.preset}, "
        f"{args.clips} clips per test video, {n} clips a round (video and audio)"
    )
    print(f"{'layout':8} {'encoder-only clips/s':>21} {'extraction clips/s':>19} {'ratio':>6}")
    for layout in LAYOUTS:
        r = median_round(rounds, layout, f"{layout} encoder only")
        ratio = r[layout] / r[f"{layout} encoder only"]
        print(f"{layout:8} {r[f'{layout} encoder only']:21.1f} {r[layout]:19.1f} {ratio:5.2f}×")
    each = " ".join(f"{r['trained'] / r['default']:.2f}" for r in rounds)
    layouts = median_round(rounds, "trained", "default")
    print(f"extraction, trained / default layout: {layouts['trained'] / layouts['default']:.2f}×"
          f"   per round {each}")  # fmt: skip
    settings = {"preset": args.preset, "clips_per_video": args.clips, "clips_per_round": n,
                "rounds": args.rounds, "threads": torch.get_num_threads(),
                "quick": args.quick}  # fmt: skip
    share = median_round(rounds, "trained", "trained encoder only")
    append_rows(
        args.json,
        [
            make_row("extract", f"features, {args.preset}, trained layout", share["trained"],
                     "clips/s", "encoder-only forwards, same shapes and layout",
                     share["trained encoder only"], settings=settings),
            make_row("extract", f"features, {args.preset}, trained vs default layout",
                     layouts["trained"], "clips/s", "the same extraction in the default layout",
                     layouts["default"], at_least=1.0, settings=settings),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
