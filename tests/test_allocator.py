"""xdc.allocator: freed batch memory is reused, not faulted in again at every batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from xdc.allocator import keep_heap

# The per-batch transforms of the `tiny` loop, 20 batches after 3 of warm-up; prints whether the
# heap was kept and the minor page faults of the 20 batches.
WORKLOAD = textwrap.dedent(
    """
    import resource
    import numpy as np
    import torch
    from xdc.allocator import keep_heap
    from xdc.config import build_config
    from xdc.data.datasets import BatchTransform
    from xdc.data.transforms import draw_spec_augment, draw_strong_augment

    kept = keep_heap()
    torch.set_num_threads(1)
    transform = BatchTransform(build_config("tiny", {}).data)
    rng = np.random.default_rng(0)

    def batch():
        video = draw_strong_augment(rng.random((32, 10)), True)
        audio = draw_spec_augment(rng.random((32, 4)), 40, 98)
        return {
            "video_raw": torch.randint(0, 256, (32, 3, 8, 32, 32), dtype=torch.uint8),
            "video_params": torch.from_numpy(video),
            "wave": torch.randn(32, 16000),
            "audio_params": torch.from_numpy(audio),
        }

    for _ in range(3):
        transform(batch())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        transform(batch())
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(malloc: str) -> tuple[str, int]:
    env = {**os.environ, "XDC_MALLOC": malloc, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", WORKLOAD], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_heap_stops_the_page_faults_of_every_batch() -> None:
    kept, with_heap = _faults("")
    system, with_system = _faults("system")
    assert (kept, system) == ("True", "False")
    # glibc's defaults give freed blocks back and fault them in again each batch (~15,000 faults
    # here, 3 MB a batch); kept, the 20 batches reuse the heap.
    assert with_heap * 4 < with_system, (with_heap, with_system)


def test_system_malloc_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDC_MALLOC", "system")
    assert keep_heap() is False
