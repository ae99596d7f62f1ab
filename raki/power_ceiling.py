"""A ceiling on the power of filled k-space lines: none louder than its acquired neighbours.

k-space power falls off away from the centre, so a skipped line's power (signal and noise,
per coil, summed over the readout) lies between those of the acquired lines on either side of
it. Where a kernel fitted on too small an ACS amplifies noise, the filled line comes out far
louder than both, and the RSS image is worse than zero-filling: GRAPPA at R = 8 with 14 ACS
lines on the 8-coil brain, NMSE 0.118 against zero-fill's 0.073. Scaling each such line down
to the louder neighbour's power (per coil) brings it to 0.073 and leaves well-calibrated
reconstructions as they were (docs/benchmarks.md, "Small ACS blocks and settings no issue
names"; scripts/bench/small_acs.py).
"""

from __future__ import annotations

import numpy as np


def neighbour_power(power: np.ndarray, sampled: np.ndarray) -> np.ndarray:
    """Per skipped line, the larger power of the acquired lines just below and above it.

    `power` is [..., ky]; returns the same shape with the neighbours' maximum at skipped lines
    (one-sided at the ky ends) and the line's own power at acquired ones.
    """
    sampled = np.asarray(sampled, dtype=bool)
    acquired = np.flatnonzero(sampled)
    lines = np.arange(sampled.size)
    above = np.searchsorted(acquired, lines)
    below = np.clip(above - 1, 0, acquired.size - 1)
    above_line = acquired[np.clip(above, 0, acquired.size - 1)]
    below_line = acquired[below]
    # At the ky ends one neighbour is missing: clipping repeats the one that exists.
    ceiling = np.maximum(power[..., below_line], power[..., above_line])
    return np.where(sampled, power, ceiling)


def limit_line_power(kspace: np.ndarray, sampled: np.ndarray) -> np.ndarray:
    """`kspace` [..., coil, kx, ky] with every skipped line scaled down, per coil, to at most
    the power of its louder acquired neighbour; acquired lines and quieter lines unchanged."""
    sampled = np.asarray(sampled, dtype=bool)
    if sampled.all() or not sampled.any():
        return kspace
    power = np.sum(np.abs(kspace) ** 2, axis=-2)  # [..., coil, ky]
    ceiling = neighbour_power(power, sampled)
    excess = power > ceiling
    scale = np.ones_like(power)
    scale[excess] = np.sqrt(ceiling[excess] / power[excess])
    return (kspace * scale[..., None, :].astype(kspace.real.dtype)).astype(kspace.dtype)
