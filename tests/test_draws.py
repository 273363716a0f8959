"""The uniforms a training clip reads (xdc.data.draws): a pure function of the seed, the same in a
batch as alone, and uniform enough to draw crops and augmentations from."""

from __future__ import annotations

import numpy as np

from xdc.data import draws


def test_a_row_is_a_function_of_its_seed_alone() -> None:
    seeds = [0, 1, 2, 2**62 - 1, 12345678901234567, 7]
    batch = draws.clip_uniforms(seeds, 26)
    assert batch.shape == (6, 26) and batch.dtype == np.float64
    for i, seed in enumerate(seeds):  # alone, in another batch, or asking for fewer numbers
        assert np.array_equal(draws.clip_draws(seed, 26), batch[i])
        assert np.array_equal(draws.clip_uniforms([3, seed], 10)[1], batch[i, :10])
    assert np.array_equal(draws.clip_uniforms(seeds, 26), batch)  # no state: the same again
    assert len({tuple(row) for row in batch}) == 6  # neighbouring seeds share nothing
    # A negative or huge seed is taken modulo 2**64, as SeedSequence would not: no error.
    assert np.array_equal(draws.clip_draws(-1, 4), draws.clip_draws(2**64 - 1, 4))


def test_the_numbers_are_uniform_and_independent() -> None:
    u = draws.clip_uniforms(range(20000), draws.width(8))  # consecutive seeds, as keys rarely are
    assert (u >= 0).all() and (u < 1).all()
    for column in (u[:, 0], u[:, draws.FRAMES], u.ravel()):
        counts = np.histogram(column, bins=20, range=(0, 1))[0]
        expected = len(column) / 20
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 50, chi2  # 19 degrees of freedom: p < 1e-4 above 43.8
    # Slots of a row and the same slot of neighbouring seeds are uncorrelated.
    corr = np.corrcoef(u[:, :6].T)
    assert np.abs(corr - np.eye(6)).max() < 0.04
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.04
    # Flip and grey flag: the rates the transforms expect.
    assert 0.48 < (u[:, draws.CROP][:, 2] < 0.5).mean() < 0.52
