"""The ``xdc`` command line: thin, typed functions over the library.

Each ``cmd_*`` function is what its sub-command runs, callable from Python with the same names.
Errors the user can fix are one line on stderr (``xdc: error: …``) and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from xdc.allocator import keep_heap
from xdc.errors import XdcError
from xdc.progress import inform

if TYPE_CHECKING:
    from xdc.evaluation.cli_shared import Subcommands


def cmd_demo_data(
    out: str, classes: int = 10, per_class: int = 40, seed: int = 0, workers: int | None = None,
    family: str = "motion", val_fraction: float = 0.2, test_fraction: float = 0.2,
) -> int:  # fmt: skip
    """Generate the procedural demo videos of one family and their manifest."""
    from xdc.data.demo import generate_demo_data

    manifest = generate_demo_data(
        out, classes=classes, per_class=per_class, seed=seed, workers=workers, family=family,
        val_fraction=val_fraction, test_fraction=test_fraction,
    )  # fmt: skip
    inform(f"wrote {classes * per_class} videos and {manifest}")
    return 0


def cmd_index(
    source: str | Sequence[str],
    output: str,
    splits_dir: str | None = None,
    split_number: int = 1,
    workers: int | None = None,
    list_format: str | None = None,
    videos: str | None = None,
    class_labels: str | None = None,
    test_fraction: float = 0.0,
    val_fraction: float = 0.0,
    split_seed: int = 0,
) -> int:
    """Probe every video of SOURCE (folders or lists) into a manifest (and rejected.csv)."""
    from xdc.data.index import index_source

    result = index_source(
        source, output, splits_dir=splits_dir, split_number=split_number, workers=workers,
        list_format=list_format, videos=videos, class_labels=class_labels,
        test_fraction=test_fraction, val_fraction=val_fraction, split_seed=split_seed,
    )  # fmt: skip
    inform(result.summary())
    return 0


def cmd_prepare(
    source: str, out: str, short_side: int = 128, keyframe_interval: float = 1.0, crf: int = 23,
    preset: str = "veryfast", audio_rate: int = 16000, audio_channels: int = 1,
    workers: int | None = None, progress: bool = True,
) -> int:  # fmt: skip
    """Re-encode the videos of SOURCE into OUT for training speed, with a manifest of the copies."""
    from xdc.data.prepare import PrepareSettings, prepare_videos

    settings = PrepareSettings(
        short_side=short_side, keyframe_interval=keyframe_interval, crf=crf, preset=preset,
        audio_rate=audio_rate, audio_channels=audio_channels,
    )  # fmt: skip
    result = prepare_videos(source, out, settings, workers=workers, progress=progress)
    inform(result.summary())
    return 0


def cmd_pretrain(
    data: str,
    out: str,
    method: str | None = None,
    preset: str | None = "tiny",
    split: str | None = "train",
    overrides: Sequence[str] = (),
    device: str | None = None,
    progress: bool = True,
    allow_data_change: bool = False,
    extend: bool = False,
) -> int:
    """Pretrain both encoders by deep clustering; resumes automatically."""
    from xdc import distributed
    from xdc.config import build_config
    from xdc.training import pretrain

    config = build_config(preset, overrides, method=method)
    try:
        pretrain(
            config, data, out, split=split or None, device=device, progress=progress,
            allow_data_change=allow_data_change, extend=extend,
        )  # fmt: skip
    finally:
        distributed.cleanup()  # the process group pretraining joined under torchrun
    return 0


def cmd_config(
    preset: str | None = None, method: str | None = None, overrides: Sequence[str] = ()
) -> int:
    """Print the resolved configuration of a preset and overrides (JSON)."""
    from xdc.config import build_config

    print(build_config(preset, overrides, method=method).to_json())
    return 0


def cmd_demo(
    out: str = "demo",
    classes: int = 10,
    per_class: int = 100,
    seeds: str = "0",
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    clips: int = 1,
    device: str | None = None,
    progress: bool = True,
    family: str = "motion",
    split: str = "val",
    methods: str = "xdc,sdc,supervised",
    data_seed: int = 0,
) -> int:
    """Generate the demo data, pretrain XDC / SDC / supervised, probe them against random init."""
    from xdc.demo import run_demo
    from xdc.errors import ConfigError

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(
            f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None
    run_demo(
        out, classes, per_class, seed_list or [0], preset, overrides, clips, device, progress,
        family, split, [m.strip() for m in methods.split(",") if m.strip()], data_seed,
    )  # fmt: skip
    return 0


def _add_demo(sub: Subcommands) -> None:
    p = sub.add_parser(
        "demo",
        help="the end-to-end demo: demo data, XDC vs SDC vs supervised vs random, one table",
        description="Generates one family of demo videos in OUT/data (or reuses the same data "
        "there), pretrains XDC, SDC and a supervised upper bound (or the --methods given) with one "
        "preset and budget, linear-probes their video and audio encoders against a random-init "
        "lower bound, prints one table, writes OUT/demo-<split>.json and the first method's report. Scores the val split unless --split "
        "test: choose settings on val, compute test numbers once, at the end. Re-running resumes.",
    )
    p.add_argument(
        "--family",
        default="motion",
        help="kind of demo data: motion (the class is how a shape moves and the sound it makes), "
        "appearance (what the object is; a vowel names it), digits (real handwritten digits and "
        "their telephone key tones); default motion",
    )
    p.add_argument(
        "--split", default="val", help="split the probes are scored on: val (default) or test"
    )
    p.add_argument(
        "--methods",
        default="xdc,sdc,supervised",
        help="comma-separated subset of xdc,sdc,supervised to pretrain (default all three)",
    )
    p.add_argument("--data-seed", type=int, default=0, help="seed of the demo data (default 0)")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument("--classes", type=int, default=10, help="demo classes (default 10)")
    p.add_argument("--per-class", type=int, default=100, help="demo videos per class (default 100)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; the table shows mean ± std")
    p.add_argument("--preset", default="tiny", help="pretraining preset (default tiny)")
    p.add_argument(
        "--clips",
        type=int,
        default=1,
        help="uniformly spaced clips per video in the probes (default 1, which keeps `make demo` "
        "within 15 minutes on 2 cores; 10 is what `xdc linear-probe` and the paper's protocols "
        "average, and scores a few points higher)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="pretraining config overrides, section.key=value")
    p.set_defaults(
        run=lambda a: cmd_demo(
            a.out,
            a.classes,
            a.per_class,
            a.seeds,
            a.preset,
            a.overrides,
            a.clips,
            a.device,
            not a.no_progress,
            a.family,
            a.split,
            a.methods,
            a.data_seed,
        )
    )


def _add_demo_data(sub: Subcommands) -> None:
    p = sub.add_parser("demo-data", help="generate the procedural demo videos with sound")
    p.add_argument("out", help="output folder: OUT/<class>/<id>.mp4 and OUT/manifest.csv")
    p.add_argument(
        "--classes", type=int, default=10, help="number of audio-visual classes (default 10)"
    )
    p.add_argument("--per-class", type=int, default=40, help="videos per class (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    p.add_argument(
        "--family",
        default="motion",
        help="motion (default), appearance or digits: what carries the class (xdc.data.demo)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of each class in val (default 0.2)"
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of each class in test (default 0.2)"
    )
    p.set_defaults(
        run=lambda a: cmd_demo_data(
            a.out, a.classes, a.per_class, a.seed, a.workers, a.family, a.val_fraction,
            a.test_fraction,
        )
    )  # fmt: skip


def _add_index(sub: Subcommands) -> None:
    p = sub.add_parser(
        "index",
        help="probe video files into a manifest CSV",
        description="Probes every file of SOURCE into a manifest CSV (and rejected.csv, with a "
        "reason per file left out). SOURCE: a folder (labels from parent folder names), a CSV "
        "with a 'path' column, or a published list, its format detected or named with --format: "
        "kinetics (label,youtube_id,time_start,time_end,split), audioset (the '# YTID, "
        "start_seconds, end_seconds, positive_labels' segment lists; several labels per row, "
        "joined by ';'; split 'test' for eval_segments.csv, 'train' for *train*), vggsound "
        "(youtube_id,start_seconds,label,split), esc50 (meta/esc50.csv: label = category, fold "
        "kept, group = src_file). A list's files are looked up under --videos by name: the "
        "downloaded segment ({id}_{start:06d}_{end:06d}.mp4 and the like) or the full video "
        "{id}.mp4, which then keeps the row's times in start_sec/end_sec: every clip of the "
        "row stays inside them. Rows whose file is missing are counted and listed in "
        "rejected.csv. Several SOURCEs make one manifest. A linear probe on a manifest with "
        "multi-label rows is one-vs-rest and reports mAP.",
    )
    p.add_argument(
        "source",
        nargs="+",
        help="folders or CSV lists (a 'path' column, or a Kinetics, AudioSet, VGGSound or ESC-50 "
        "list)",
    )
    p.add_argument(
        "-o", "--output", required=True, help="manifest CSV to write (rejected.csv goes next to it)"
    )
    p.add_argument(
        "--splits-dir", default=None, help="folder with official UCF101 or HMDB51 split files"
    )
    p.add_argument(
        "--split-number", type=int, default=1, help="official split that fills 'split' (1-3)"
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="share of each label's videos put in test, for rows that no split file, split folder "
        "(ROOT/train/, ROOT/test/) or split column places (default 0; with no split anywhere "
        "every row is train)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="share of each label's videos put in val, the same way (default 0)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of that draw (default 0; the same files get the same splits in any order)",
    )
    p.add_argument("--workers", type=int, default=None, help="probe processes (default: all cores)")
    p.add_argument(
        "--format",
        dest="list_format",
        choices=("paths", "kinetics", "audioset", "vggsound", "esc50"),
        default=None,
        help="the lists' format (default: detected from each file's first lines)",
    )
    p.add_argument(
        "--videos",
        default=None,
        help="folder holding a list's files, searched recursively (default: the list's folder; "
        "ESC-50: its audio/ folder)",
    )
    p.add_argument(
        "--class-labels",
        default=None,
        help="AudioSet's class_labels_indices.csv, to name labels (default: the one next to the "
        "list, if any; else labels stay MIDs)",
    )
    p.set_defaults(
        run=lambda a: cmd_index(
            a.source,
            a.output,
            a.splits_dir,
            a.split_number,
            a.workers,
            a.list_format,
            a.videos,
            a.class_labels,
            a.test_fraction,
            a.val_fraction,
            a.split_seed,
        )  # fmt: skip
    )


def _add_prepare(sub: Subcommands) -> None:
    p = sub.add_parser(
        "prepare",
        help="re-encode videos for training speed (128 px H.264, a keyframe a second, 16 kHz audio)",
        description="Re-encodes every video of SOURCE into OUT (same relative paths, .mp4): "
        "H.264 with the short side --short-side and a keyframe at least every "
        "--keyframe-interval seconds, AAC audio at --audio-rate Hz (files without audio stay "
        "without), timestamps and duration kept. Writes OUT/manifest.csv (the copies, with the "
        "source's label/split columns and source_path: the original) and OUT/failed.csv (files "
        "left out, with the reason). Re-running skips outputs whose source and settings did not "
        "change; an interrupted run leaves no partial file. Originals are only read.",
    )
    p.add_argument(
        "source", help="a folder of videos (labels from parent folder names) or a CSV/manifest "
        "with a 'path' column (its other columns are kept)",
    )  # fmt: skip
    p.add_argument("out", help="output folder (must not be the source's own folder)")
    p.add_argument(
        "--short-side", type=int, default=128, help="pixels of the short side (default 128; "
        "smaller sources keep their size)",
    )  # fmt: skip
    p.add_argument(
        "--keyframe-interval", type=float, default=1.0,
        help="seconds between keyframes, at most (default 1)",
    )  # fmt: skip
    p.add_argument("--crf", type=int, default=23, help="x264 quality, 0-51, lower is better (23)")
    p.add_argument("--preset", default="veryfast", help="x264 speed preset (default veryfast)")
    p.add_argument("--audio-rate", type=int, default=16000, help="audio Hz (default 16000)")
    p.add_argument("--audio-channels", type=int, default=1, help="1 mono (default) or 2 stereo")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(
        run=lambda a: cmd_prepare(
            a.source, a.out, a.short_side, a.keyframe_interval, a.crf, a.preset, a.audio_rate,
            a.audio_channels, a.workers, not a.no_progress,
        )
    )  # fmt: skip


def _add_pretrain(sub: Subcommands) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain video and audio encoders (XDC, SDC, MDC, CDC)",
        description="Pretrain by deep clustering. Re-running the same command resumes the run. "
        "Extra arguments are config overrides: section.key=value (see `xdc config`).",
    )
    p.add_argument(
        "--data", required=True, help="manifest CSV (from `xdc index` or `xdc demo-data`)"
    )
    p.add_argument(
        "--out", required=True, help="run folder (checkpoint, metrics.jsonl, config.json)"
    )
    p.add_argument(
        "--method", default=None, help="xdc (default), sdc, mdc, cdc, or supervised (upper bound)"
    )
    p.add_argument(
        "--preset",
        default="tiny",
        help="tiny (CPU, minutes: the demo), small (your own few hundred to few thousand videos on a CPU), paper-kinetics, paper-audioset",
    )
    p.add_argument("--split", default="train", help="manifest split to train on ('' = all rows)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--allow-data-change",
        action="store_true",
        help="resume a run on other data than it was trained on: another manifest content (rows, "
        "paths, durations, labels; RUN/run.json records its hash), another --split or another "
        "world size (number of processes). Without it such a resume is refused, naming what "
        "differs; a manifest that only moved (same content) resumes without it. The number of "
        "rows must stay the same: the run's pseudo-labels index them",
    )
    p.add_argument(
        "--extend",
        action="store_true",
        help="let a run (finished or not) go on to more iterations than it was made with: pass "
        "the same preset and overrides with a larger train.iterations. Allowed with "
        "train.schedule=constant only (every preset), where the iterations done are exactly those "
        "of the longer run; without the flag a new train.iterations is refused",
    )
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=0.05 cluster.k=64")
    p.set_defaults(
        run=lambda a: cmd_pretrain(
            a.data, a.out, a.method, a.preset, a.split, a.overrides, a.device, not a.no_progress,
            a.allow_data_change, a.extend,
        )
    )  # fmt: skip


def _add_config(sub: Subcommands) -> None:
    p = sub.add_parser("config", help="print the resolved config of a preset and overrides")
    p.add_argument(
        "--preset", default=None, help="tiny, small, paper-kinetics, paper-audioset (default: none)"
    )
    p.add_argument("--method", default=None)
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(run=lambda a: cmd_config(a.preset, a.method, a.overrides))


def cmd_export(
    run: str,
    to: str,
    formats: str = "safetensors,torchscript,onnx",
    modality: str = "both",
    tolerance: float = 1e-4,
) -> int:
    """Write a run's encoders as safetensors (+ JSON sidecar), TorchScript and ONNX, each checked."""
    from xdc.export import export_run

    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    modalities = ("video", "audio") if modality == "both" else (modality,)
    for exported in export_run(run, to, wanted, modalities, tolerance):
        print(f"{exported.modality}: {exported.sidecar}")
        for c in exported.checks:
            if c.skipped:
                print(f"  {c.format:<12} skipped: {c.skipped}")
                continue
            diff = (
                "not compared" if c.max_abs_diff is None else f"max abs diff {c.max_abs_diff:.2g}"
            )
            print(f"  {c.format:<12} {c.file}: {diff} on a {c.input} ({c.checked_with})")
    return 0


def _add_export(sub: Subcommands) -> None:
    p = sub.add_parser(
        "export",
        help="a run's encoders as safetensors + JSON sidecar, TorchScript and ONNX",
        description="Writes DIR/<modality>.safetensors (weights), DIR/<modality>.json (the "
        "architecture, its config, the input contract: frames, crop, fps, normalisation, log-mel "
        "parameters; versions and hashes), DIR/<modality>.torchscript.pt and DIR/<modality>.onnx "
        "(uint8 clips or float log-mel in, features out; ONNX when the onnx package is "
        "installed). Each file is read back and its features compared with the run's encoder on "
        "a random input (onnxruntime for ONNX, when installed); a difference above --tolerance "
        "fails the export.",
    )
    p.add_argument(
        "checkpoint", metavar="RUN", help="run folder made by `xdc pretrain` (or its checkpoint.pt)"
    )
    p.add_argument("--to", required=True, help="folder to write the files to")
    p.add_argument(
        "--formats",
        default="safetensors,torchscript,onnx",
        help="comma-separated subset of safetensors,torchscript,onnx (default all)",
    )
    p.add_argument("--modality", choices=("video", "audio", "both"), default="both")
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest max abs difference (default 1e-4)"
    )
    p.set_defaults(run=lambda a: cmd_export(a.checkpoint, a.to, a.formats, a.modality, a.tolerance))


def _evaluation_commands() -> list[Callable[[Subcommands], None]]:
    from xdc.evaluation.commands import EVALUATION_COMMANDS
    from xdc.evaluation.finetune import add_finetune_parser
    from xdc.evaluation.report import add_report_parser

    return [*EVALUATION_COMMANDS, add_finetune_parser, add_report_parser]


COMMANDS: list[Callable[[Subcommands], None]] = [
    _add_demo,
    _add_demo_data,
    _add_index,
    _add_prepare,
    _add_pretrain,
    _add_config,
    *_evaluation_commands(),
    _add_export,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdc",
        description="Self-supervised audio-video learning by Cross-Modal Deep Clustering (XDC).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress output and no informational lines; warnings, errors and results "
        "still print (also XDC_QUIET=1)",
    )
    parser.add_argument(
        "--data-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder the manifests' paths may lie in besides the manifest's own folder "
        "(repeatable; also XDC_DATA_ROOT, os.pathsep-separated)",
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept manifest paths anywhere (absolute, ../): only for manifests you trust "
        "(also XDC_ALLOW_OUTSIDE_ROOT=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def _manifest_roots(
    data_roots: Sequence[str], allow_outside: bool, quiet: bool = False
) -> Iterator[None]:
    """The command's ``--data-root`` / ``--allow-outside-root`` / ``--quiet`` as the environment
    variables the manifest reader and ``xdc.progress`` check (so DataLoader workers and
    torchrun's children see them too), restored afterwards."""
    from xdc.data.manifest import ALLOW_OUTSIDE_ROOT_ENV, DATA_ROOT_ENV
    from xdc.progress import QUIET_ENV

    saved = {k: os.environ.get(k) for k in (DATA_ROOT_ENV, ALLOW_OUTSIDE_ROOT_ENV, QUIET_ENV)}
    if data_roots:
        roots = [os.path.abspath(d) for d in data_roots]
        os.environ[DATA_ROOT_ENV] = os.pathsep.join([*roots, *filter(None, [saved[DATA_ROOT_ENV]])])
    if allow_outside:
        os.environ[ALLOW_OUTSIDE_ROOT_ENV] = "1"
    if quiet:
        os.environ[QUIET_ENV] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_heap()  # CPU batches reuse their memory instead of faulting it in again (xdc.allocator)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="xdc: %(message)s"
    )
    try:
        with _manifest_roots(args.data_root, args.allow_outside_root, args.quiet):
            return int(args.run(args) or 0)
    except XdcError as err:
        print(f"xdc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xdc: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        print(
            f"xdc: error: {err.filename or 'a file'}: {os.strerror(err.errno)}; free space (or "
            "raise the limit), then re-run the same command: files are written atomically, so "
            "the last complete ones are kept and a run resumes from its last checkpoint",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
