"""From a list of acquired readouts to a Scan's k-space grid, for raw formats (MRD, twix).

Scanner raw files hold one readout per acquired (slice, ky) line, flagged as imaging data,
calibration (ACS) data or both. The rules, shared by every raw reader:

- imaging readouts of the same (slice, ky) are averaged (averages, repeated lines);
- calibration-only readouts fill a (slice, ky) only where no imaging readout landed, so that a
  separately acquired reference scan never overwrites image data;
- the sampling mask is the union over slices of the lines that hold any readout;
- the ACS block is the longest run of lines flagged as calibration (both kinds); R comes from
  the file's header when it gives one, else from the mask.

Sizes are checked against the data actually present before any grid is allocated, so that a
header claiming a huge matrix cannot make us allocate gigabytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raki.errors import InvalidScanError
from raki.sampling import AcsBlock, find_acs, infer_acceleration
from raki.scan import Geometry, Identifiers, Scan

# A grid may hold at most this many (slice, ky) lines per acquired line (R=32 and beyond are
# not parallel imaging any more), and never more than this many bytes.
MAX_LINES_PER_ACQUIRED_LINE = 32
MAX_GRID_BYTES = 16 * 1024**3


@dataclass(frozen=True)
class Readouts:
    """Acquired readouts after selection: data [n, coil, kx] and where each one goes."""

    data: np.ndarray
    slices: np.ndarray
    lines: np.ndarray
    imaging: np.ndarray
    calibration: np.ndarray


@dataclass(frozen=True)
class LineGrid:
    """The assembled k-space [slice, coil, kx, ky] and what the flags said about sampling."""

    kspace: np.ndarray
    sampled: np.ndarray
    acs: AcsBlock | None
    acceleration: int | None
    has_calibration_flags: bool


def place_readout(samples: np.ndarray, centre: int | None, width: int) -> np.ndarray:
    """Zero-pad a readout [coil, samples] to `width` so that sample `centre` lands on width//2.

    Asymmetric echoes (partial Fourier along kx) have their centre off the middle; without a
    centre the readout is centred as a whole.
    """
    count = samples.shape[-1]
    if width == count and (centre is None or centre == count // 2):
        return samples
    offset = (width - count) // 2 if centre is None else width // 2 - centre
    if offset < 0 or offset + count > width:
        raise InvalidScanError(
            f"a readout of {count} samples centred at {centre} does not fit {width} points"
        )
    padded = np.zeros((*samples.shape[:-1], width), dtype=samples.dtype)
    padded[..., offset : offset + count] = samples
    return padded


def readout_width(sample_counts: Sequence[int], centres: Sequence[int | None]) -> int:
    """The smallest kx width that holds every readout with its centre sample at width//2.

    A complete readout of odd length (63 samples centred at 31) keeps its length; any other is
    taken as part of an even readout symmetric about its centre, 2 max(centre, count - centre)
    wide (a partial-Fourier echo of 12 samples centred at 4 is 16 wide).
    """
    width = 0
    for count, centre in zip(sample_counts, centres, strict=True):
        if centre is None or not 0 < centre < count or (count % 2 and centre == count // 2):
            width = max(width, count)
        else:
            width = max(width, 2 * max(centre, count - centre))
    return width


def check_grid_size(
    num_slices: int, num_coils: int, num_kx: int, num_ky: int, acquired: int
) -> None:
    """Refuse a grid that is far larger than the data present, or larger than memory allows."""
    lines = num_slices * num_ky
    if lines > MAX_LINES_PER_ACQUIRED_LINE * max(acquired, 1):
        raise InvalidScanError(
            f"header implies {num_slices} slices x {num_ky} lines but only {acquired} distinct "
            "lines are present"
        )
    nbytes = lines * num_coils * num_kx * np.dtype(np.complex64).itemsize
    if nbytes > MAX_GRID_BYTES:
        raise InvalidScanError(f"k-space of {nbytes / 1024**3:.1f} GiB is too large to hold")


def assemble(readouts: Readouts, num_lines: int, header_acceleration: int | None) -> LineGrid:
    """Put readouts on a [slice, coil, kx, ky] grid of `num_lines` ky lines (see module doc)."""
    data, slices, lines = readouts.data, readouts.slices, readouts.lines
    if data.shape[0] == 0:
        raise InvalidScanError("the file holds no imaging or calibration readouts")
    if lines.min() < 0 or lines.max() >= num_lines:
        bad = int(lines.min() if lines.min() < 0 else lines.max())
        raise InvalidScanError(f"a readout's ky line {bad} falls outside the {num_lines} lines")
    num_slices = int(slices.max()) + 1
    _, num_coils, num_kx = data.shape
    acquired = len(set(zip(slices.tolist(), lines.tolist(), strict=True)))
    check_grid_size(num_slices, num_coils, num_kx, num_lines, acquired)

    kspace = np.zeros((num_slices, num_coils, num_kx, num_lines), dtype=np.complex64)
    grid = kspace.transpose(0, 3, 1, 2)  # a [slice, ky, coil, kx] view: one readout per index
    counts = np.zeros((num_slices, num_lines), dtype=np.int64)
    imaging = readouts.imaging
    np.add.at(grid, (slices[imaging], lines[imaging]), data[imaging])
    np.add.at(counts, (slices[imaging], lines[imaging]), 1)
    calibration_only = ~imaging & readouts.calibration
    fills = calibration_only & (counts[slices, lines] == 0)
    np.add.at(grid, (slices[fills], lines[fills]), data[fills])
    np.add.at(counts, (slices[fills], lines[fills]), 1)
    filled = counts > 0
    repeated = counts > 1
    if repeated.any():
        grid[repeated] /= counts[repeated][:, None, None]

    sampled = filled.any(axis=0)
    calibration_lines = np.zeros(num_lines, dtype=bool)
    calibration_lines[lines[readouts.calibration]] = True
    has_flags = bool(calibration_lines.any())
    acs = find_acs(calibration_lines) if has_flags else None
    acceleration = None
    if sampled.all():
        acceleration = 1
    elif header_acceleration is not None:
        acceleration = header_acceleration
    elif has_flags:
        acceleration = infer_acceleration(sampled, acs)
    return LineGrid(kspace, sampled, acs, acceleration, has_flags)


def scan_from_grid(
    grid: LineGrid, geometry: Geometry, protocol: str, identifiers: Identifiers
) -> Scan:
    """The Scan of assembled lines: flagged calibration lines are the ACS; else it is inferred."""
    if grid.has_calibration_flags:
        return Scan(
            kspace=grid.kspace,
            sampled=grid.sampled,
            acs=grid.acs,
            acceleration=grid.acceleration or 1,
            geometry=geometry,
            protocol=protocol,
            identifiers=identifiers,
        )
    return Scan.from_kspace(
        grid.kspace,
        grid.sampled,
        acceleration=grid.acceleration,
        geometry=geometry,
        protocol=protocol,
        identifiers=identifiers,
    )
