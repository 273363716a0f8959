"""Feature preprocessing before k-means: PCA (optionally whitened) and L2-normalisation.

Statistics are all-reduced over DDP ranks, so every rank and a single-process run on all the
features get the same projection.
"""

from __future__ import annotations

import logging

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

    def fit(self, x: Tensor) -> FeaturePreprocessor:
        """Estimate mean and principal directions of ``x`` (``(N_local, D)``) over all ranks."""
        if x.dim() != 2:
            raise ConfigError(
                f"FeaturePreprocessor.fit expects (N, D) features, got {tuple(x.shape)}"
            )
        x = x.detach()  # statistics only: nothing to differentiate
        if self.pca_dim is None:
            self.mean, self.projection = None, None
            return self
        n_total = int(xdist.all_reduce_sum(torch.tensor([x.shape[0]], device=x.device)).item())
        if n_total == 0:
            raise DataError("FeaturePreprocessor.fit: there are no features (N=0 on every rank)")
        dim = x.shape[1]
        out_dim = min(self.pca_dim, dim, n_total)
        if out_dim < self.pca_dim:
            log.info("pca_dim=%d clamped to %d (D=%d, N=%d)", self.pca_dim, out_dim, dim, n_total)
        mean = xdist.all_reduce_sum(x.sum(0, dtype=torch.float64)) / n_total
        # Gram matrix of the centred data in float64, a block at a time to bound the memory.
        gram = torch.zeros(dim, dim, dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], GRAM_BLOCK_ROWS):
            block = x[start : start + GRAM_BLOCK_ROWS].to(torch.float64) - mean
            gram.addmm_(block.t(), block)
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
