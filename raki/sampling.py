"""Cartesian sampling along ky: equispaced masks with a centred ACS block, and their inference.

Masks follow fastMRI's equispaced layout: a fully sampled block of low frequencies in the middle
of ky (the autocalibration signal, ACS) plus every R-th line elsewhere. The lattice is placed so
that the centre line ky = N//2 is acquired, as scanners do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from raki.errors import InvalidScanError


@dataclass(frozen=True)
class AcsBlock:
    """The fully sampled calibration lines, ky in [start, stop)."""

    start: int
    stop: int

    @property
    def lines(self) -> int:
        return self.stop - self.start

    def as_slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class SamplingPattern:
    """What a ky mask says about an acquisition."""

    acceleration: int
    acs: AcsBlock | None
    equispaced: bool
    sampled_lines: int
    total_lines: int


def centred_acs_block(num_lines: int, acs_lines: int) -> AcsBlock:
    """The ACS block of `acs_lines` lines centred on ky = num_lines // 2 (fastMRI's placement)."""
    if not 0 < acs_lines <= num_lines:
        raise InvalidScanError(f"ACS of {acs_lines} lines does not fit {num_lines} ky lines")
    start = (num_lines - acs_lines + 1) // 2
    return AcsBlock(start, start + acs_lines)


def equispaced_mask(num_lines: int, acceleration: int, acs_lines: int) -> np.ndarray:
    """Boolean ky mask: every R-th line through the centre line, plus a centred ACS block."""
    if acceleration < 1:
        raise InvalidScanError(f"acceleration must be >= 1, got {acceleration}")
    if acceleration > num_lines // 2 and acceleration > 1:
        raise InvalidScanError(f"acceleration {acceleration} is too high for {num_lines} ky lines")
    mask = np.zeros(num_lines, dtype=bool)
    mask[(num_lines // 2) % acceleration :: acceleration] = True
    if acs_lines > 0:
        mask[centred_acs_block(num_lines, acs_lines).as_slice()] = True
    return mask


def rounded_spacing_mask(
    num_lines: int, acceleration: int, acs_lines: int, offset: int = 0
) -> np.ndarray:
    """Boolean ky mask as fastMRI's equispaced masks are made (Zbontar et al., 2018): the ACS
    counts towards the 1/R share of lines, so the lines outside it are spaced a little more
    than R apart, at fractional positions rounded to the nearest line; their gaps vary by one.
    """
    if not 0 < acs_lines < num_lines or acceleration < 2 or acs_lines * acceleration >= num_lines:
        raise InvalidScanError(
            f"no rounded-spacing mask for R={acceleration} with {acs_lines} ACS lines of "
            f"{num_lines}: the ACS alone would hold 1/R of the lines"
        )
    spacing = acceleration * (num_lines - acs_lines) / (num_lines - acs_lines * acceleration)
    mask = np.zeros(num_lines, dtype=bool)
    mask[np.round(np.arange(offset, num_lines - 1, spacing)).astype(int)] = True
    mask[centred_acs_block(num_lines, acs_lines).as_slice()] = True
    return mask


def sampled_lines_of(kspace: np.ndarray) -> np.ndarray:
    """ky lines holding any non-zero sample, for files that mark skipped lines only by zeros."""
    if kspace.ndim < 1:
        raise InvalidScanError("k-space has no ky axis")
    other_axes = tuple(range(kspace.ndim - 1))
    return np.any(kspace != 0, axis=other_axes)


def find_acs(mask: np.ndarray) -> AcsBlock | None:
    """The longest run of consecutive sampled lines (nearest the centre on a tie), if >= 2 long.

    A fully sampled mask is one block. An accelerated mask without two adjacent lines has no ACS.
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    runs = [(int(start), int(stop)) for start, stop in zip(edges[::2], edges[1::2], strict=True)]
    if not runs:
        return None
    centre = mask.size / 2
    start, stop = max(runs, key=lambda r: (r[1] - r[0], -abs((r[0] + r[1]) / 2 - centre)))
    if stop - start < 2:
        return None
    return AcsBlock(start, stop)


def infer_acceleration(mask: np.ndarray, acs: AcsBlock | None) -> int:
    """R as the commonest gap between acquired lines outside the ACS block.

    A mask whose only acquired lines form one block (a reduced-FOV or zero-padded acquisition)
    is not accelerated: R = 1. With a single line outside the ACS, R is lines / sampled lines.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.all():
        return 1
    outside = mask.copy()
    if acs is not None:
        outside[acs.as_slice()] = False
    if not outside.any():
        return 1
    gaps = np.diff(np.flatnonzero(outside))
    if gaps.size >= 2:
        return int(Counter(gaps.tolist()).most_common(1)[0][0])
    return max(1, round(mask.size / max(1, int(mask.sum()))))


def is_equispaced(mask: np.ndarray, acs: AcsBlock | None, acceleration: int) -> bool:
    """True when, outside the ACS, exactly the lines of one R-lattice are acquired.

    The lattice need only cover the acquired extent, from the first acquired line to the last,
    with lines on both sides of the ACS: zero lines beyond it are padding, as in a reduced
    phase resolution, partial Fourier or fastMRI's knee files, not skipped lattice lines.
    """
    mask = np.asarray(mask, dtype=bool)
    if acceleration <= 1:
        return bool(mask.all())
    outside = np.ones_like(mask)
    if acs is not None:
        outside[acs.as_slice()] = False
    acquired = np.flatnonzero(mask & outside)
    if acquired.size < 2:
        return False
    if acs is not None and not (acquired[0] < acs.start and acquired[-1] >= acs.stop):
        return False
    lattice = np.zeros_like(mask)
    lattice[acquired[0] % acceleration :: acceleration] = True
    extent = np.zeros_like(mask)
    extent[acquired[0] : acquired[-1] + 1] = True
    return bool(np.array_equal(mask & outside, lattice & outside & extent))


def describe_sampling(mask: np.ndarray) -> SamplingPattern:
    """Acceleration, ACS block and regularity of a ky mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 1 or mask.size == 0:
        raise InvalidScanError(
            f"sampling mask must be a non-empty 1D ky mask, got shape {mask.shape}"
        )
    if not mask.any():
        raise InvalidScanError("sampling mask is empty: no ky line is acquired")
    acs = find_acs(mask)
    acceleration = infer_acceleration(mask, acs)
    return SamplingPattern(
        acceleration=acceleration,
        acs=acs,
        equispaced=is_equispaced(mask, acs, acceleration),
        sampled_lines=int(mask.sum()),
        total_lines=int(mask.size),
    )


def minimum_acs_lines(acceleration: int, kernel_lines: int = 2) -> int:
    """ACS lines a kernel spanning `kernel_lines` acquired lines at spacing R needs for one fit."""
    return (kernel_lines - 1) * acceleration + 1


def undersample(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero the ky lines the mask skips (retrospective undersampling), as complex64."""
    return (kspace * np.asarray(mask, dtype=bool)).astype(np.complex64, copy=False)
