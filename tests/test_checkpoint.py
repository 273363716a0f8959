"""Checkpoints that cannot be written or read fail with a ``CheckpointError`` naming the file and
the fix, never with an exception from inside torch or a half-written file.

- Writing: a real file size limit (``RLIMIT_FSIZE``, in a child process) makes ``save_checkpoint``
  fail part-way; the previous checkpoint stays whole and no temporary file is left behind.
- Reading: truncated, bit-flipped, empty, text, and valid PyTorch files of other things, read by
  ``load_checkpoint`` and by ``xdc pretrain`` resuming a run (one line on stderr, exit code 2).
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY_OVERRIDES
from xdc import atomic
from xdc.checkpoint import CHECKPOINT_NAME, _write_failure, load_checkpoint, save_checkpoint
from xdc.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
FIXES = ("delete it", "pass a run folder", "use the xdc version")


@pytest.fixture(scope="module")
def good(tiny_run: Path) -> bytes:
    """The bytes of a real checkpoint (a finished one-iteration XDC run)."""
    return (tiny_run / CHECKPOINT_NAME).read_bytes()


def entry_offsets(archive: bytes) -> dict[str, tuple[int, int]]:
    """{entry name: (offset of its data, size)} read from the zip's local headers."""
    found = {}
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for info in zf.infolist():
            h = info.header_offset
            name_len, extra_len = struct.unpack("<HH", archive[h + 26 : h + 30])
            found[info.filename] = (h + 30 + name_len + extra_len, info.compress_size)
    return found


def flipped(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x10
    return bytes(out)


def _entry(data: bytes, suffix: str, where: float) -> int:
    name, (offset, size) = next(
        (n, o) for n, o in entry_offsets(data).items() if n.endswith(suffix)
    )
    return offset + int(size * where)


def _largest_tensor(data: bytes) -> int:
    offsets = {n: o for n, o in entry_offsets(data).items() if "/data/" in n}
    offset, size = max(offsets.values(), key=lambda o: o[1])
    return offset + size // 2


def _central_directory(data: bytes) -> int:
    end = data.rindex(b"PK\x05\x06")
    (start,) = struct.unpack("<I", data[end + 16 : end + 20])
    return start + 16  # the CRC-32 field of the first entry in the central directory


def _torch_bytes(obj: Any, **save: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **save)
    return buf.getvalue()


def _other_zip(_: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes.txt", "not a checkpoint")
    return buf.getvalue()


class Unsafe:
    """An object that ``weights_only=True`` refuses to unpickle."""


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda d: b"",
    "truncated-4-bytes": lambda d: d[:4],
    "truncated-100-bytes": lambda d: d[:100],
    "truncated-third": lambda d: d[: len(d) // 3],
    "truncated-half": lambda d: d[: len(d) // 2],
    "truncated-end-record": lambda d: d[: len(d) - 10],
    "truncated-last-byte": lambda d: d[:-1],
    "flip-pickle": lambda d: flipped(d, _entry(d, "/data.pkl", 0.5)),
    "flip-tensor": lambda d: flipped(d, _largest_tensor(d)),
    "flip-directory-crc": lambda d: flipped(d, _central_directory(d)),
    "text": lambda d: b"iteration 1 epoch 2: loss 3.1\n",
    "other-zip": _other_zip,
    "torch-state-dict": lambda d: _torch_bytes({"conv.weight": torch.zeros(2, 3)}),
    "torch-tensor": lambda d: _torch_bytes(torch.zeros(3)),
    "torch-list": lambda d: _torch_bytes([1, 2, 3]),
    "torch-unsafe-object": lambda d: _torch_bytes({"format_version": 1, "x": Unsafe()}),
    "torch-legacy-format": lambda d: _torch_bytes(
        {"format_version": 1}, _use_new_zipfile_serialization=False
    ),
    "other-format-version": lambda d: _torch_bytes({"format_version": 99}),
}


def assert_clear(err: CheckpointError, path: Path) -> None:
    message = str(err)
    assert str(path) in message, message
    assert "\n" not in message, message
    assert any(fix in message for fix in FIXES), message


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_or_foreign_checkpoint_is_a_clear_error(
    damage: str, good: bytes, tmp_path: Path
) -> None:
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(DAMAGES[damage](good))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path)
    assert_clear(caught.value, path)
    if damage.startswith(("empty", "truncated", "flip")):
        assert "delete it" in str(caught.value)


def test_any_flipped_byte_is_an_error_or_changes_nothing(good: bytes, tmp_path: Path) -> None:
    """torch.load does not check the zip's CRCs; load_checkpoint does: a flipped byte either
    raises or sits in padding that holds no data."""
    reference = load_checkpoint_bytes(good, tmp_path)
    path, rng, errors = tmp_path / CHECKPOINT_NAME, random.Random(0), 0
    for at in rng.sample(range(len(good)), 48):
        path.write_bytes(flipped(good, at))
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            assert_clear(err, path)
            errors += 1
            continue
        assert same(state, reference), f"a flipped byte at {at} loaded a different checkpoint"
    assert errors > 24  # most bytes are data


def load_checkpoint_bytes(data: bytes, folder: Path) -> dict[str, Any]:
    path = folder / "whole.pt"
    path.write_bytes(data)
    return load_checkpoint(path)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


@pytest.mark.parametrize("damage", ["truncated-half", "flip-tensor", "text", "torch-state-dict"])
def test_pretrain_refuses_to_resume_a_damaged_checkpoint_in_one_line(
    damage: str, good: bytes, tiny_run: Path, demo_manifest: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    path = run / CHECKPOINT_NAME
    path.write_bytes(DAMAGES[damage](good))
    damaged = path.read_bytes()
    cmd = [
        sys.executable, "-m", "xdc.cli", "pretrain", "--data", str(demo_manifest), "--out", str(run),
        "--method", "xdc", "--preset", "tiny", "--no-progress",
        *[f"{k}={v}" for k, v in TINY_OVERRIDES.items()],
    ]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdc: error: "), done.stderr
    assert str(path) in lines[0] and any(fix in lines[0] for fix in FIXES), lines[0]
    assert path.read_bytes() == damaged, "the damaged file was changed"


# --------------------------------------------------------------------------------------------
# A write that fails part-way

_FILL_UP = """
import json, resource, sys, torch
from xdc.checkpoint import load_checkpoint, save_checkpoint
from xdc.errors import CheckpointError
path, limit = sys.argv[1], int(sys.argv[2])
save_checkpoint({"step": 1, "w": torch.ones(10)}, path)  # the previous checkpoint
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:  # Python ignores SIGXFSZ: the write raises OSError EFBIG once the file reaches the limit
    save_checkpoint({"step": 2, "w": torch.ones(100_000)}, path)
except CheckpointError as err:
    print(json.dumps({"error": str(err)}))
"""


def test_a_write_that_fails_midway_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run" / CHECKPOINT_NAME
    done = subprocess.run(
        [sys.executable, "-c", _FILL_UP, str(path), str(200_000)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout)["error"]
    assert str(path) in message and "\n" not in message
    assert "too large" in message and "ulimit -f" in message
    assert "previous checkpoint is kept" in message and "run the same command again" in message
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(10))
    assert os.listdir(path.parent) == [CHECKPOINT_NAME], "a temporary file was left behind"


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EDQUOT, "quota"),
        (errno.EROFS, "read-only"),
        (errno.EIO, "Input/output error"),
    ],
)
def test_write_failures_say_what_happened_and_what_to_do(
    code: int, says: str, tmp_path: Path
) -> None:
    path = tmp_path / CHECKPOINT_NAME
    message = _write_failure(path, OSError(code, os.strerror(code)))
    assert str(path) in message and says in message
    assert "no checkpoint had been written yet" in message
    assert "run the same command again" in message


def test_a_write_leaves_no_temporary_files_and_open_s_permissions(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    killed = tmp_path / f".{CHECKPOINT_NAME}.x1y2z3_4.tmp"  # left by a write killed with SIGKILL
    killed.write_bytes(b"PK\x03\x04 half of a checkpoint")
    other = tmp_path / ".notes.txt.abcdefgh.tmp"
    other.write_text("another file's write")
    save_checkpoint({"step": 1}, path)
    assert not killed.exists() and other.exists()
    assert atomic.temporaries(path) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    save_checkpoint({"step": 2}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load_checkpoint(path)["step"] == 2


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
