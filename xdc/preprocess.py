"""Feature preprocessing before k-means: PCA (optionally whitened) and L2-normalisation, and
:class:`FeatureRows`, the chunked reader that lets both run on features that do not fit in RAM.

Statistics are all-reduced over DDP ranks, so every rank and a single-process run on all the
features get the same projection.
"""

from __future__ import annotations

import logging
import mmap
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xdc import distributed as xdist
from xdc.errors import ConfigError, DataError, XdcError

# The clustering step's logger: its messages are where users (and the tests) look for them,
# whichever module of the step writes them.
log = logging.getLogger("xdc.clustering")

# Rows per float64 block when accumulating the Gram matrix (bounds the memory of the copy).
GRAM_BLOCK_ROWS = 8192
# Rows per chunk when streaming features (a multiple of GRAM_BLOCK_ROWS): 128 MiB of float32 at
# D = 512, read from disk while the previous chunk is computed on.
STREAM_ROWS = 1 << 16

Rows = Tensor | np.ndarray
RowTransform = Callable[[Tensor], Tensor]


class FeatureRows:
    """``(N, D)`` features read a chunk of rows at a time, as float32 tensors on ``device``.

    Wraps a tensor or a numpy array of any real dtype, typically a float16 ``np.memmap`` on disk.
    A memmap's pages are dropped from this process's memory after each chunk is read (Linux,
    shared mappings), so reading the whole file keeps the resident memory at about one chunk.

    Args:
        parts: one ``(N, D)`` array, or several with the same ``N`` whose columns are concatenated.
        device: where chunks are delivered (default: the first part's device; CPU for arrays).
        normalize_parts: L2-normalise each part's rows before concatenating them.
        transform: applied to every float32 chunk (e.g. ``FeaturePreprocessor.transform``).
    """

    def __init__(
        self,
        parts: Rows | Sequence[Rows],
        device: torch.device | str | None = None,
        normalize_parts: bool = False,
        transform: RowTransform | None = None,
    ) -> None:
        self.parts = [parts] if isinstance(parts, Tensor | np.ndarray) else list(parts)
        if not self.parts:
            raise ConfigError("FeatureRows needs at least one (N, D) array of features")
        for part in self.parts:
            _check_rows(part)
        lengths = {int(part.shape[0]) for part in self.parts}
        if len(lengths) != 1:
            raise ConfigError(f"feature arrays to concatenate have different N: {sorted(lengths)}")
        first = self.parts[0]
        default = first.device if isinstance(first, Tensor) else torch.device("cpu")
        self.device = torch.device(device) if device is not None else default
        self.normalize_parts = normalize_parts
        self.transform = transform
        in_dim = sum(int(part.shape[1]) for part in self.parts)
        out_dim = in_dim
        if transform is not None:  # the output width, from a chunk of no rows
            out_dim = int(transform(torch.zeros(0, in_dim, device=self.device)).shape[1])
        self.shape = (lengths.pop(), out_dim)
        # The widest a chunk's rows get while read (the stored width before a narrowing PCA):
        # what a chunk's rows cost in memory.
        self.widest = max(in_dim, out_dim)

    def map(self, transform: RowTransform) -> FeatureRows:
        """The same rows with ``transform`` applied to every chunk (after any earlier one)."""
        before = self.transform
        composed = transform if before is None else (lambda x: transform(before(x)))
        return FeatureRows(self.parts, self.device, self.normalize_parts, composed)

    def read(self, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` as a float32 tensor on ``self.device``."""
        return self._finish([_read_part(p, start, stop, self.device) for p in self.parts])

    def take(self, index: np.ndarray) -> Tensor:
        """The rows at the sorted indices ``index``, as a float32 tensor on ``self.device``."""
        blocks = []
        for lo in range(0, len(index), STREAM_ROWS):
            chunk = index[lo : lo + STREAM_ROWS]
            blocks.append(self._finish([_take_part(p, chunk, self.device) for p in self.parts]))
        if not blocks:
            return self.read(0, 0)
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, int, Tensor]]:
        """``(start, stop, rows[start:stop])`` over all rows, ``rows`` (default ``STREAM_ROWS``)
        at a time; the next chunk is read (and transformed) in a background thread while the
        caller works on the current one."""
        n, rows = self.shape[0], rows or STREAM_ROWS
        bounds = [(a, min(a + rows, n)) for a in range(0, n, rows)]
        if len(bounds) <= 1:
            yield from ((a, b, self.read(a, b)) for a, b in bounds)
            return
        # One torch thread in the reader: the caller's computation has the cores.
        with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,)) as reader:
            pending = reader.submit(self.read, *bounds[0])
            for i, (a, b) in enumerate(bounds):
                block = pending.result()
                if i + 1 < len(bounds):
                    pending = reader.submit(self.read, *bounds[i + 1])
                yield a, b, block

    def _finish(self, blocks: list[Tensor]) -> Tensor:
        if self.normalize_parts:
            blocks = [F.normalize(b, dim=1) for b in blocks]
        out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        return out if self.transform is None else self.transform(out)


def _check_rows(x: object) -> None:
    if not isinstance(x, Tensor | np.ndarray) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor | np.ndarray) else type(x).__name__
        raise ConfigError(
            f"expected features as a (N, D) tensor, numpy array or np.memmap, got {shape}"
        )
    if isinstance(x, np.ndarray):
        real = x.dtype.kind in "fiu"
    else:
        real = x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.uint8)
    if not real:
        raise ConfigError(f"expected real-valued features, got dtype {x.dtype}")


def _read_part(part: Rows, start: int, stop: int, device: torch.device) -> Tensor:
    if isinstance(part, Tensor):
        return part[start:stop].detach().to(device=device, dtype=torch.float32)
    if device.type == "cpu":  # one copy that also converts
        out = torch.from_numpy(np.array(part[start:stop], dtype=np.float32))
    else:  # the stored dtype crosses the bus (half the bytes for float16), converted there
        out = torch.from_numpy(np.array(part[start:stop])).to(device).float()
    release_pages(part, start, stop)
    return out


def _take_part(part: Rows, index: np.ndarray, device: torch.device) -> Tensor:
    if isinstance(part, Tensor):
        picked = part[torch.from_numpy(index).to(part.device)]
        return picked.detach().to(device=device, dtype=torch.float32)
    out = torch.from_numpy(np.asarray(part[index], dtype=np.float32)).to(device)
    if len(index):
        release_pages(part, int(index[0]), int(index[-1]) + 1)
    return out


def release_pages(array: np.ndarray, start: int, stop: int) -> None:
    """Drop rows ``[start, stop)`` of a shared ``np.memmap`` from this process's resident memory.

    The data stays in the file (and in the kernel's page cache); the next access maps it again.
    Does nothing for other arrays, copy-on-write memmaps (``mode="c"``), or off Linux.
    """
    if not (sys.platform.startswith("linux") and isinstance(array, np.memmap)):
        return
    if array.mode == "c" or not array.flags.c_contiguous or stop <= start:
        return
    mm = array.base
    while mm is not None and not isinstance(mm, mmap.mmap):
        mm = getattr(mm, "base", None)
    if mm is None:
        return
    rows = array[start:stop]
    begin = rows.ctypes.data - np.frombuffer(mm, dtype=np.uint8).ctypes.data
    page = mmap.PAGESIZE
    lo = begin // page * page
    hi = min(len(mm), -(-(begin + rows.nbytes) // page) * page)
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


class FeaturePreprocessor:
    """PCA (optionally whitened) to ``pca_dim``, then L2-normalisation of every row.

    Statistics are computed over all ranks (all-reduced sums and Gram matrix); the eigenvectors come
    from ``torch.linalg.eigh`` in float64 and their signs are fixed (largest component positive), so
    every rank and a single-process run get the same projection.

    Args:
        pca_dim: output dimension (e.g. 256); ``None`` skips PCA. Clamped to ``min(D, N)``.
        whiten: divide each principal component by ``sqrt(eigenvalue + eps)``.
        l2_normalize: scale every output row to unit L2 norm.
        eps: added to the eigenvalues before whitening, so near-null directions are not blown up.
    """

    def __init__(
        self,
        pca_dim: int | None = 256,
        whiten: bool = True,
        l2_normalize: bool = True,
        eps: float = 1e-5,
    ) -> None:
        if pca_dim is not None and pca_dim < 1:
            raise ConfigError(f"pca_dim must be >= 1 (or None for no PCA), got {pca_dim}")
        if eps < 0:
            raise ConfigError(f"eps (whitening) must be >= 0, got {eps}")
        self.pca_dim = pca_dim
        self.whiten = whiten
        self.l2_normalize = l2_normalize
        self.eps = eps
        self.mean: Tensor | None = None  # (D,) float32
        self.projection: Tensor | None = None  # (D, d) float32, whitening folded in
        self.eigenvalues: Tensor | None = None  # (d,) float64, descending
        self.spectrum: Tensor | None = None  # (D,) float64: every eigenvalue, descending

    def fit(self, x: Rows | FeatureRows) -> FeaturePreprocessor:
        """Estimate mean and principal directions of ``x`` (``(N_local, D)``) over all ranks.

        A tensor is used as it is; a numpy array / memmap or :class:`FeatureRows` is streamed
        in chunks (two passes: the mean, then the centred Gram matrix), never held in RAM whole.
        """
        if isinstance(x, Tensor):
            if x.dim() != 2:
                raise ConfigError(
                    f"FeaturePreprocessor.fit expects (N, D) features, got {tuple(x.shape)}"
                )
            x = x.detach()  # statistics only: nothing to differentiate
        elif not isinstance(x, FeatureRows):
            x = FeatureRows(x)
        if self.pca_dim is None:
            self.mean, self.projection = None, None
            return self
        device = x.device
        n_total = int(xdist.all_reduce_sum(torch.tensor([x.shape[0]], device=device)).item())
        if n_total == 0:
            raise DataError("FeaturePreprocessor.fit: there are no features (N=0 on every rank)")
        dim = int(x.shape[1])
        out_dim = min(self.pca_dim, dim, n_total)
        if out_dim < self.pca_dim:
            log.info("pca_dim=%d clamped to %d (D=%d, N=%d)", self.pca_dim, out_dim, dim, n_total)
        if isinstance(x, Tensor):
            mean = xdist.all_reduce_sum(x.sum(0, dtype=torch.float64)) / n_total
            gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
            _add_centred_gram(gram, x, mean)
        else:
            total = torch.zeros(dim, dtype=torch.float64, device=device)
            for _, _, block in x.chunks():
                total += block.sum(0, dtype=torch.float64)
            mean = xdist.all_reduce_sum(total) / n_total
            gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
            for _, _, block in x.chunks():  # chunks are whole Gram blocks: same sums as a tensor
                _add_centred_gram(gram, block, mean)
        covariance = xdist.all_reduce_sum(gram) / n_total
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        self.spectrum = eigenvalues.flip(0).clamp_min(0.0).cpu()
        eigenvalues = eigenvalues.flip(0)[:out_dim].clamp_min(0.0)
        eigenvectors = eigenvectors.flip(1)[:, :out_dim]
        # eigh's sign of each vector is arbitrary: fix it so that runs agree.
        pivot = eigenvectors.abs().argmax(0)
        signs = eigenvectors.gather(0, pivot.unsqueeze(0)).sign()
        eigenvectors = eigenvectors * torch.where(signs == 0, 1.0, signs)
        if self.whiten:
            eigenvectors = eigenvectors / (eigenvalues + self.eps).sqrt()
        self.mean = mean.to(torch.float32)
        self.projection = eigenvectors.to(torch.float32)
        self.eigenvalues = eigenvalues
        return self

    def transform(self, x: Tensor) -> Tensor:
        """``(N, D)`` -> ``(N, d)`` float32: centre, project (and whiten), L2-normalise."""
        out = x.to(torch.float32)
        if self.pca_dim is not None:
            if self.mean is None or self.projection is None:
                raise XdcError("FeaturePreprocessor.transform called before fit")
            if x.shape[-1] != self.mean.shape[0]:
                raise ConfigError(
                    f"features have D={x.shape[-1]} but the preprocessor was fit on "
                    f"D={self.mean.shape[0]}"
                )
            mean, projection = self.mean.to(x.device), self.projection.to(x.device)
            out = (out - mean) @ projection
        if self.l2_normalize:
            out = F.normalize(out, dim=-1, eps=1e-12)
        return out

    def fit_transform(self, x: Tensor) -> Tensor:
        """:meth:`fit` then :meth:`transform` on the same ``(N_local, D)`` features."""
        return self.fit(x).transform(x)


def _add_centred_gram(gram: Tensor, x: Tensor, mean: Tensor) -> Tensor:
    """Add the float64 Gram matrix of ``x - mean`` to ``gram`` (in place), a block at a time."""
    for start in range(0, x.shape[0], GRAM_BLOCK_ROWS):
        block = x[start : start + GRAM_BLOCK_ROWS].to(torch.float64) - mean
        gram.addmm_(block.t(), block)
    return gram
