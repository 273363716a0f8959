"""Fuzzing the probe and the clip decoder with damaged copies of real small files (hypothesis).

Each example takes one real file (H.264 + AAC in MP4, with its index first or last; FFV1 + PCM in
Matroska; VP8 + Opus in WebM; MPEG-4 + PCM in AVI; H.264 + 5.1 AAC in MOV; a WAV), damages its bytes (bit flips, bytes
set, cuts, inserted, deleted or repeated runs, the header overwritten, numbers set to extremes) and
feeds it to ``probe_file`` and ``decode_clip`` (a full clip, a looping video-only clip, audio
only). The only outcomes allowed: a result that makes sense, or a ``DecodeError`` / a rejection
with a reason; and never the last-resort nets (``probe failed``, a ``DecodeError`` whose reason
starts with "unexpected error"), which would mean an error nobody foresaw.

The normal suite runs a short, fixed set of examples. A long, random run:

    XDC_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/test_fuzz.py

(``XDC_FUZZ_SEED=N`` repeats a given run; a failure prints the example that shrank from it).
"""

from __future__ import annotations

import faulthandler
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.media import write_media
from xdc.data.decode import ClipSpec, decode_clip
from xdc.data.probe import MAX_FRAME_PIXELS, PROBE_FAILED, REJECTION_REASONS, probe_file
from xdc.errors import DecodeError

EXAMPLES = int(os.environ.get("XDC_FUZZ_EXAMPLES", "60"))
LONG_RUN = "XDC_FUZZ_EXAMPLES" in os.environ
SEED = os.environ.get("XDC_FUZZ_SEED")
# A single example that takes longer than this is a hang: dump every thread's stack and stop.
HANG_SEC = 120

SPECS = [
    ClipSpec(),
    ClipSpec(num_frames=4, fps=3.0, audio_samples=None, overflow="loop", resize_short=None),
    ClipSpec(num_frames=0, decode_video=False),
]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("fuzz_seeds")
    files = {
        "mp4": write_media(root / "a.mp4", fps=8),
        "faststart.mp4": write_media(
            root / "b.mp4", fps=8, container_options={"movflags": "faststart"}
        ),
        "mkv": write_media(root / "a.mkv", "ffv1", "pcm_s16le", fps=8),
        "webm": write_media(root / "a.webm", "libvpx", "libopus", fps=8, sample_rate=48000),
        "avi": write_media(root / "a.avi", "mpeg4", "pcm_s16le", fps=8),
        "mov": write_media(root / "a.mov", fps=8, layout="5.1", sample_rate=48000),
        "wav": write_media(root / "a.wav", None, "pcm_s16le", seconds=0.5),
    }
    return {kind: path.read_bytes() for kind, path in files.items()}


# --- mutations ----------------------------------------------------------------------------------

_AT = st.integers(min_value=0, max_value=2**31)  # a position, taken modulo the current length
_EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 100_000, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1]
MUTATION = st.one_of(
    st.tuples(st.just("flip"), _AT, st.integers(0, 7)),
    st.tuples(st.just("set"), _AT, st.integers(0, 255)),
    st.tuples(st.just("truncate"), _AT),
    st.tuples(st.just("insert"), _AT, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), _AT, st.integers(1, 512)),
    st.tuples(st.just("repeat"), _AT, st.integers(1, 256)),
    st.tuples(st.just("header"), st.integers(0, 511), st.binary(min_size=1, max_size=16)),
    st.tuples(
        st.just("number"),
        _AT,
        st.sampled_from([1, 2, 4, 8]),
        st.sampled_from(_EXTREMES),
        st.sampled_from(["big", "little"]),
    ),
)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    """``data`` with each mutation applied in turn (positions wrap around the current length)."""
    out = bytearray(data)
    for kind, *args in mutations:
        if not out:
            break
        at = args[0] % len(out)
        if kind == "flip":
            out[at] ^= 1 << args[1]
        elif kind == "set":
            out[at] = args[1]
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = args[1]
        elif kind == "delete":
            del out[at : at + args[1]]
        elif kind == "repeat":
            out[at:at] = out[at : at + args[1]]
        elif kind == "header":
            out[at : at + len(args[1])] = args[1]
        elif kind == "number":
            width, value, order = args[1], args[2], args[3]
            out[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, order)
    return bytes(out)


def test_mutate_applies_each_kind() -> None:
    data = bytes(range(16))
    assert mutate(data, [("flip", 1, 0)])[1] == 0
    assert mutate(data, [("truncate", 20)]) == data[:4]  # 20 % 16
    assert mutate(data, [("insert", 2, b"xy")])[:5] == b"\x00\x01xy\x02"
    assert mutate(data, [("delete", 0, 3)]) == data[3:]
    assert mutate(data, [("repeat", 0, 2)])[:4] == b"\x00\x01\x00\x01"
    assert mutate(data, [("number", 0, 4, 100_000, "big")])[:4] == (100_000).to_bytes(4, "big")
    assert mutate(b"", [("set", 0, 1)]) == b""


# --- the property -------------------------------------------------------------------------------


def check_probe(path: Path) -> None:
    result = probe_file(path)
    assert result.reason != PROBE_FAILED, f"unforeseen error while probing: {result.detail}"
    assert result.reason in ("", *REJECTION_REASONS)
    if not result.ok:
        assert result.detail
        return
    assert math.isfinite(result.duration_sec) and result.duration_sec > 0
    assert math.isfinite(result.fps) and result.fps >= 0
    assert result.has_video or result.has_audio
    if result.has_video:
        assert result.width > 0 and result.height > 0
        assert result.width * result.height <= MAX_FRAME_PIXELS


def check_decode(path: Path, spec: ClipSpec, start: float) -> None:
    try:
        clip = decode_clip(path, start, spec)
    except DecodeError as error:
        assert error.path == str(path)
        assert not error.reason.startswith("unexpected error"), error.reason
        return
    if spec.decode_video:
        assert clip.frames.dtype == np.uint8 and clip.frames.ndim == 4
        assert clip.frames.shape[0] == spec.num_frames and clip.frames.shape[3] == 3
        if spec.resize_short is not None:
            assert min(clip.frames.shape[1:3]) == spec.resize_short
        assert clip.frame_times.shape == (spec.num_frames,)
    if spec.audio_samples is not None:
        assert clip.audio is not None and clip.audio.shape == (spec.audio_samples,)
        assert clip.audio.dtype == np.float32


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # decoding time varies with the machine; hangs are caught below
    derandomize=not LONG_RUN,  # the normal suite: the same examples every run
    database=None,  # writes nothing into the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


@FUZZ_SETTINGS
@given(
    kind=st.sampled_from(["mp4", "faststart.mp4", "mkv", "webm", "avi", "mov", "wav"]),
    mutations=st.lists(MUTATION, min_size=1, max_size=6),
    start=st.sampled_from([0.0, 0.4, 5.0]),
)
def test_damaged_files_give_a_result_or_a_typed_error(
    seeds: dict[str, bytes], kind: str, mutations: list[tuple], start: float
) -> None:
    data = mutate(seeds[kind], mutations)
    suffix = "." + kind.rsplit(".", 1)[-1]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"damaged{suffix}"
        path.write_bytes(data)
        faulthandler.dump_traceback_later(HANG_SEC, exit=True)
        try:
            check_probe(path)
            for spec in SPECS:
                check_decode(path, spec, start)
        finally:
            faulthandler.cancel_dump_traceback_later()


if SEED is not None:
    from hypothesis import seed as _seed

    test_damaged_files_give_a_result_or_a_typed_error = _seed(int(SEED))(
        test_damaged_files_give_a_result_or_a_typed_error
    )
