"""GRAPPA: fill skipped ky lines from acquired neighbours with kernels fitted on the ACS block.

Griswold et al., "Generalized autocalibrating partially parallel acquisitions (GRAPPA)",
MRM 47:1202-1210 (2002). For every offset d = 1..R-1 between acquired lines, a linear kernel
maps a block of `kernel_size = (readout points, acquired lines)` samples of all coils to the
missing sample of every coil at (kx, base + d):

    target[c] = sum_{c', a, j} W_d[(c', a, j), c] * k[c', kx + a - h, base + o_j]

with readout taps a = 0..points-1 around the target (h = points // 2) and source lines
o_j = R (j - (lines - 1) // 2) on both sides of the gap (`source_line_offsets`).

The fit is ridge regression on the ACS block, with Tikhonov weight relative to the largest
singular value of the source matrix A: W = (A^H A + lambda s_max^2 I)^-1 A^H B. On noisy data
lambda decides the result, and no fixed value suits both noisy and clean scans (measured in
docs/benchmarks.md), so by default it is set per slice from the ACS itself (`auto_regularization`).

The readout is fully sampled and treated as periodic (as the DFT that makes the image is), so
kernel windows wrap around kx. Along ky they do not: missing lines whose kernel would reach past
the first or last line use edge kernels, fitted on the same ACS rows with only the source lines
that exist there (and more damping, since they extrapolate). Application gathers every patch of
one offset with stride tricks and fills all its lines with one matrix product (plus small ones
for the few edge lines).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.linalg
from numpy.lib.stride_tricks import sliding_window_view

from raki.errors import FileFormatError, IncompatibleWeightsError, InvalidScanError
from raki.sampling import find_acs, minimum_acs_lines
from raki.scan import Scan

KernelSize = tuple[int, int]

DEFAULT_KERNEL_SIZE: KernelSize = (9, 2)
# None: lambda chosen per slice by `auto_regularization`; a float: that lambda, relative to s_max^2.
DEFAULT_REGULARIZATION: float | None = None
# The automatic rule's constant, measured with scripts/bench/grappa_peer.py --sweep.
AUTO_REGULARIZATION_SCALE = 0.2
# Edge kernels extrapolate from one side, which amplifies noise: they get this many times the
# lambda (measured: 10 beat 1, 100 and 1000, wrapping and zero-padding; docs/benchmarks.md).
EDGE_REGULARIZATION_FACTOR = 10.0

_FORMAT_NAME = "raki-grappa-kernel"
_FORMAT_VERSION = 1


def _check_kernel_size(kernel_size: KernelSize) -> KernelSize:
    readout, lines = (int(n) for n in kernel_size)
    if readout < 1 or lines < 2:
        raise InvalidScanError(
            f"GRAPPA kernel {readout}x{lines} is invalid: it needs >= 1 readout point and "
            ">= 2 acquired lines (one on each side of the missing ones)"
        )
    return readout, lines


def _check_acceleration(acceleration: int) -> int:
    if int(acceleration) < 2:
        raise InvalidScanError(f"GRAPPA needs an acceleration R >= 2, got {acceleration}")
    return int(acceleration)


def source_line_offsets(acceleration: int, kernel_lines: int) -> np.ndarray:
    """ky offsets of the kernel's acquired lines from the base line below the missing ones.

    Centred: with 4 lines at R the sources sit at -R, 0, R, 2R and the targets in (0, R).
    """
    return acceleration * (np.arange(kernel_lines) - (kernel_lines - 1) // 2)


def _source_patches(
    kspace: np.ndarray, lines: np.ndarray, valid: np.ndarray | None, readout_points: int
) -> np.ndarray:
    """Source matrix [kx * targets, coil * readout_points * kernel_lines] for target lines.

    `lines` [targets, kernel_lines] are ky indices into `kspace` [coil, kx, ky]; `valid` zeroes
    the sources that were not acquired. The readout axis wraps around.
    """
    num_coils, num_kx = kspace.shape[:2]
    gathered = kspace[:, :, lines]  # [coil, kx, targets, kernel_lines]
    if valid is not None:
        gathered = gathered * valid
    half = readout_points // 2
    padded = np.pad(gathered, ((0, 0), (half, readout_points - 1 - half), (0, 0), (0, 0)), "wrap")
    windows = sliding_window_view(padded, readout_points, axis=1)  # [..., readout_points]
    patches = windows.transpose(1, 2, 0, 4, 3)  # [kx, targets, coil, readout, lines]
    return patches.reshape(num_kx * lines.shape[0], num_coils * readout_points * lines.shape[1])


def auto_regularization(
    eigenvalues: np.ndarray, acs_line_energy: np.ndarray, acceleration: int
) -> float:
    """lambda (relative to s_max^2) from the noise floor of A^H A and the ACS energy profile.

    The low eigenvalues of A^H A are noise (their 10th percentile over s_max^2 is about
    1/SNR of the calibration data); the fewer of the ACS energy its outer half holds, the more
    of the missing k-space is noise, which a weak kernel only amplifies; amplification also
    grows with R. So lambda = scale * (R - 1) * (e_10% / e_max) / (outer energy ratio)^2, the
    form and scale that came closest to the best lambda over brain data and phantoms at R = 3..6
    (scripts/bench/grappa_peer.py --sweep).
    """
    eigenvalues = np.sort(np.clip(eigenvalues, 0.0, None))
    floor = float(eigenvalues[eigenvalues.size // 10]) / float(eigenvalues[-1])
    lines = acs_line_energy.size
    outer = max(1, lines // 4)
    edges = np.concatenate([acs_line_energy[:outer], acs_line_energy[-outer:]])
    outer_ratio = float(edges.mean()) / max(float(acs_line_energy.mean()), np.finfo(float).tiny)
    outer_ratio = min(max(outer_ratio, 1e-3), 1.0)
    return AUTO_REGULARIZATION_SCALE * (acceleration - 1) * floor / outer_ratio**2


def _normal_equations(
    acs: np.ndarray, bases: np.ndarray, offsets: np.ndarray, readout_points: int, acceleration: int
) -> tuple[np.ndarray, np.ndarray]:
    """A^H A [unknowns, unknowns] and A^H B [unknowns, (R-1) * coil] without forming A.

    With the readout wrapping around, every entry of A^H A and A^H B is a circular
    cross-correlation along kx between two ky lines (summed over kernel positions), at the lag
    between their readout taps: products of the lines' spectra, about (readout points)^2
    times fewer operations than the product of the patch matrix with itself.
    """
    num_coils, num_kx, _ = acs.shape
    lines = np.concatenate([offsets, np.arange(1, acceleration)])  # sources, then targets
    # [kx frequency, base, coil, line] so that one batched product sums over bases.
    spectra = np.fft.fft(acs[:, :, bases[:, None] + lines[None, :]], axis=1).transpose(1, 2, 0, 3)
    every_line = spectra.reshape(num_kx, bases.size, -1)
    source_lines = spectra[..., : offsets.size].reshape(num_kx, bases.size, -1)
    power = np.conj(source_lines.transpose(0, 2, 1)) @ every_line  # [f, (c, j), (c', line)]
    taps = np.arange(readout_points)
    half = readout_points // 2
    # A column (c, a, j) reads kx + a - half: lag a' - a between two source taps,
    # half - a between a source tap and the target at the kernel's centre. Only these few
    # lags are needed, so a small DFT beats a full inverse FFT.
    tap_lags = (taps[None, :] - taps[:, None]) % num_kx  # [a, a']
    target_lags = (half - taps) % num_kx  # [a]
    lags = np.unique(np.concatenate([tap_lags.ravel(), target_lags]))
    phases = np.exp(2j * np.pi * np.outer(lags, np.arange(num_kx)) / num_kx) / num_kx
    correlation = (phases @ power.reshape(num_kx, -1)).reshape(
        lags.size, num_coils, offsets.size, num_coils, lines.size
    )
    sources, targets = np.arange(offsets.size), np.arange(offsets.size, lines.size)
    tap_index = np.searchsorted(lags, tap_lags)
    gram = correlation[tap_index[:, :, None, None], :, sources[None, None, :, None], :, sources]
    # Indexing puts the advanced axes first: [a, a', j, j', c, c'] -> [c, a, j, c', a', j'].
    gram = gram.transpose(4, 0, 2, 5, 1, 3).reshape(num_coils * readout_points * offsets.size, -1)
    target_index = np.searchsorted(lags, target_lags)
    cross = correlation[target_index[:, None, None], :, sources[None, :, None], :, targets]
    # [a, j, d, c, c'] -> [c, a, j, d, c']
    cross = cross.transpose(3, 0, 1, 2, 4).reshape(gram.shape[0], -1)
    return gram, cross


def _solve_regularised(
    gram: np.ndarray, cross: np.ndarray, largest: float, regularization: float
) -> np.ndarray:
    """(G + lambda * s_max^2 I)^-1 A^H B: Cholesky when damped, the pseudo-inverse otherwise."""
    damped = gram + (regularization * largest) * np.eye(gram.shape[0])
    if regularization > 0:
        try:
            return scipy.linalg.cho_solve(scipy.linalg.cho_factor(damped), cross)
        except np.linalg.LinAlgError:
            pass  # damping below round-off: fall through to the eigen-decomposition
    eigenvalues, eigenvectors = np.linalg.eigh(damped)
    # Directions below round-off are dropped (lambda = 0 gives the minimum-norm solution).
    cutoff = largest * gram.shape[0] * np.finfo(gram.dtype).eps
    shrink = np.where(eigenvalues > cutoff, 1.0 / np.maximum(eigenvalues, cutoff), 0.0)
    return (eigenvectors * shrink) @ (eigenvectors.conj().T @ cross)


def calibrate_grappa(
    acs: np.ndarray,
    acceleration: int,
    *,
    kernel_size: KernelSize = DEFAULT_KERNEL_SIZE,
    regularization: float | None = DEFAULT_REGULARIZATION,
) -> np.ndarray:
    """Kernel weights [R-1, variant, coil * readout * lines, coil] complex64 from an ACS block.

    Variant 0 reads all source lines; the others serve the ky edges (see `edge_variants`).

    `acs` is [coil, kx, acs lines], fully sampled. Rows of the fit are every kernel position
    that fits inside the block along ky, at every kx (wrapping around the readout).
    `regularization` None picks lambda with `auto_regularization`.
    """
    return calibrate_grappa_with_lambda(
        acs, acceleration, kernel_size=kernel_size, regularization=regularization
    )[0]


@dataclass(frozen=True)
class _CalibrationSystem:
    """The normal equations of one ACS block's GRAPPA fit and what lambda's rule reads."""

    gram: np.ndarray
    cross: np.ndarray
    eigenvalues: np.ndarray  # of gram, ascending
    line_energy: np.ndarray  # ACS energy per ky line
    fit_rows: int
    acceleration: int
    num_coils: int
    readout_points: int
    kernel_lines: int

    def automatic_lambda(self) -> float:
        # Fewer fit rows than unknowns leave exact zeros that are no noise floor: skip them.
        ranked = self.eigenvalues[-min(self.eigenvalues.size, self.fit_rows) :]
        return auto_regularization(ranked, self.line_energy, self.acceleration)


def _calibration_system(
    acs: np.ndarray, acceleration: int, kernel_size: KernelSize
) -> _CalibrationSystem:
    acs = np.asarray(acs)
    if acs.ndim != 3 or not np.iscomplexobj(acs):
        raise InvalidScanError(f"ACS must be complex [coil, kx, acs lines], got shape {acs.shape}")
    acceleration = _check_acceleration(acceleration)
    readout_points, kernel_lines = _check_kernel_size(kernel_size)
    num_coils, num_kx, num_lines = acs.shape
    needed = minimum_acs_lines(acceleration, kernel_lines)
    if num_lines < needed:
        raise InvalidScanError(
            f"ACS of {num_lines} lines is too small for a {readout_points}x{kernel_lines} GRAPPA "
            f"kernel at R={acceleration}: at least {needed} lines are needed"
        )
    if readout_points > num_kx:
        raise InvalidScanError(
            f"GRAPPA kernel of {readout_points} readout points is wider than the {num_kx} kx points"
        )
    offsets = source_line_offsets(acceleration, kernel_lines)
    bases = np.arange(-offsets[0], num_lines - offsets[-1])
    acs = acs.astype(np.complex128)
    gram, cross = _normal_equations(acs, bases, offsets, readout_points, acceleration)
    gram = (gram + gram.conj().T) / 2  # exactly Hermitian despite FFT round-off
    eigenvalues = np.linalg.eigvalsh(gram)
    if eigenvalues[-1] <= 0.0:
        raise InvalidScanError("the ACS block is all zeros: nothing to calibrate GRAPPA on")
    return _CalibrationSystem(
        gram=gram,
        cross=cross,
        eigenvalues=eigenvalues,
        line_energy=np.sum(np.abs(acs) ** 2, axis=(0, 1)),
        fit_rows=num_kx * bases.size,
        acceleration=acceleration,
        num_coils=num_coils,
        readout_points=readout_points,
        kernel_lines=kernel_lines,
    )


def automatic_lambda(
    acs: np.ndarray, acceleration: int, *, kernel_size: KernelSize = DEFAULT_KERNEL_SIZE
) -> float:
    """The lambda (relative to s_max^2) that `calibrate_grappa` chooses for this ACS block.

    Residual RAKI damps its linear branch's starting fit with it: the rule was measured on
    images, and a linear kernel over a similar neighbourhood amplifies noise the same way.
    """
    return _calibration_system(acs, acceleration, kernel_size).automatic_lambda()


def calibrate_grappa_with_lambda(
    acs: np.ndarray,
    acceleration: int,
    *,
    kernel_size: KernelSize = DEFAULT_KERNEL_SIZE,
    regularization: float | None = DEFAULT_REGULARIZATION,
) -> tuple[np.ndarray, float]:
    """`calibrate_grappa`, also returning the lambda used (the automatic one when None)."""
    if regularization is not None and not (np.isfinite(regularization) and regularization >= 0):
        raise InvalidScanError(f"regularization must be finite and >= 0, got {regularization}")
    system = _calibration_system(acs, acceleration, kernel_size)
    gram, cross, eigenvalues = system.gram, system.cross, system.eigenvalues
    if regularization is None:
        regularization = system.automatic_lambda()
    num_coils = system.num_coils
    kernel_lines = system.kernel_lines
    readout_points = system.readout_points
    # One kernel per set of available source lines (all of them, or fewer at the ky edges);
    # the absent lines' weights stay zero so that every variant has the same shape.
    line_of_column = np.tile(np.arange(kernel_lines), num_coils * readout_points)
    weights = np.zeros(
        (acceleration - 1, 2 * kernel_lines - 1, gram.shape[0], num_coils), dtype=np.complex64
    )
    for variant, available in enumerate(edge_variants(kernel_lines)):
        columns = np.flatnonzero(available[line_of_column])
        damping = regularization if variant == 0 else regularization * EDGE_REGULARIZATION_FACTOR
        solved = _solve_regularised(
            gram[np.ix_(columns, columns)], cross[columns], float(eigenvalues[-1]), damping
        )
        # cross columns are (d, coil).
        weights[:, variant, columns] = solved.reshape(
            columns.size, acceleration - 1, num_coils
        ).transpose(1, 0, 2)
    return weights, float(regularization)


def edge_variants(kernel_lines: int) -> list[np.ndarray]:
    """Which source lines each kernel variant reads: all; then the first m missing (near ky = 0),
    m = 1..lines-1; then the last m missing (near the top edge)."""
    variants = [np.ones(kernel_lines, dtype=bool)]
    for missing in range(1, kernel_lines):
        variants.append(np.arange(kernel_lines) >= missing)
    for missing in range(1, kernel_lines):
        variants.append(np.arange(kernel_lines) < kernel_lines - missing)
    return variants


def lattice_offset(sampled: np.ndarray, acceleration: int) -> int:
    """ky index modulo R of the acquired lines outside the ACS block (the sampling lattice)."""
    sampled = np.asarray(sampled, dtype=bool)
    outside = sampled.copy()
    acs = find_acs(sampled)
    if acs is not None:
        outside[acs.as_slice()] = False
    lines = np.flatnonzero(outside if outside.any() else sampled)
    residues = np.unique(lines % acceleration)
    if residues.size != 1:
        raise InvalidScanError(
            f"sampling is not equispaced at R={acceleration}: acquired lines outside the ACS fall "
            f"on {residues.size} different lattices"
        )
    return int(residues[0])


def _check_weights(
    weights: np.ndarray, num_coils: int, acceleration: int, kernel_size: KernelSize
) -> None:
    readout_points, kernel_lines = kernel_size
    expected = (
        acceleration - 1,
        2 * kernel_lines - 1,
        num_coils * readout_points * kernel_lines,
        num_coils,
    )
    if weights.shape != expected:
        raise IncompatibleWeightsError(
            f"GRAPPA weights of shape {weights.shape} do not fit {num_coils} coils, "
            f"R={acceleration} and a {readout_points}x{kernel_lines} kernel (expected {expected})"
        )


def apply_grappa(
    kspace: np.ndarray,
    sampled: np.ndarray,
    weights: np.ndarray,
    acceleration: int,
    kernel_size: KernelSize = DEFAULT_KERNEL_SIZE,
) -> np.ndarray:
    """Filled k-space [coil, kx, ky] complex64: acquired (and ACS) lines kept as measured.

    `sampled` is the ky mask; the lattice offset of the missing lines comes from it.
    """
    kspace = np.asarray(kspace)
    sampled = np.asarray(sampled, dtype=bool)
    if kspace.ndim != 3 or sampled.shape != (kspace.shape[-1],):
        raise InvalidScanError(
            f"k-space must be [coil, kx, ky] with a ky mask to match, got {kspace.shape} "
            f"and mask {sampled.shape}"
        )
    acceleration = _check_acceleration(acceleration)
    readout_points, kernel_lines = _check_kernel_size(kernel_size)
    num_coils, num_kx, num_ky = kspace.shape
    weights = np.asarray(weights)
    _check_weights(weights, num_coils, acceleration, (readout_points, kernel_lines))
    offset = lattice_offset(sampled, acceleration)
    measured = np.where(sampled, kspace, 0).astype(np.complex64)
    filled = measured.copy()
    residue = (np.arange(num_ky) - offset) % acceleration
    if np.any(~sampled & (residue == 0)):
        raise InvalidScanError(
            f"sampling is not equispaced at R={acceleration}: lines of the acquisition lattice "
            "are missing"
        )
    offsets = source_line_offsets(acceleration, kernel_lines)
    for d in range(1, acceleration):
        targets = np.flatnonzero(~sampled & (residue == d))
        if targets.size == 0:
            continue
        lines = targets[:, None] - d + offsets[None, :]
        inside = (lines >= 0) & (lines < num_ky)
        below = np.sum(lines < 0, axis=1)
        above = np.sum(lines >= num_ky, axis=1)
        variant = np.where(below > 0, below, np.where(above > 0, kernel_lines - 1 + above, 0))
        lines = np.clip(lines, 0, num_ky - 1)
        valid = inside & sampled[lines]
        for index in np.unique(variant):
            chosen = variant == index
            group = targets[chosen]
            patches = _source_patches(measured, lines[chosen], valid[chosen], readout_points)
            estimate = patches @ weights[d - 1, index].astype(np.complex64, copy=False)
            filled[:, :, group] = estimate.reshape(num_kx, group.size, num_coils).transpose(2, 0, 1)
    return filled


@dataclass(frozen=True, eq=False)
class GrappaKernel:
    """Calibrated GRAPPA weights for every slice of a protocol, to save and apply again.

    `weights` is [slice, R-1, variant, coil * readout * lines, coil] complex64 (variants as in
    `edge_variants`); `regularization` holds the
    lambda each slice was fitted with. Apply to scans with the same coils, R, slices and matrix.
    """

    weights: np.ndarray
    acceleration: int
    kernel_size: KernelSize
    regularization: tuple[float, ...]
    num_coils: int
    matrix: tuple[int, int]
    acs_lines: int
    protocol: str = ""

    @property
    def num_slices(self) -> int:
        return int(self.weights.shape[0])

    def check_compatible(self, scan: Scan) -> None:
        """Raise IncompatibleWeightsError saying what differs when this kernel does not fit."""
        problems = []
        if scan.num_coils != self.num_coils:
            problems.append(f"{scan.num_coils} coils, kernel has {self.num_coils}")
        if scan.acceleration != self.acceleration:
            problems.append(f"R={scan.acceleration}, kernel has R={self.acceleration}")
        if scan.num_slices != self.num_slices:
            problems.append(f"{scan.num_slices} slices, kernel has {self.num_slices}")
        if scan.matrix != self.matrix:
            problems.append(
                f"matrix {scan.matrix[0]}x{scan.matrix[1]}, kernel has "
                f"{self.matrix[0]}x{self.matrix[1]}"
            )
        if problems:
            raise IncompatibleWeightsError(
                "GRAPPA kernel does not fit this scan: " + "; ".join(problems)
            )

    def save(self, path: str | Path) -> None:
        """Write the kernel to HDF5, atomically (a temporary file beside it, then a rename)."""
        path = Path(path)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(handle)
        try:
            with h5py.File(temporary, "w") as file:
                file.attrs["format"] = _FORMAT_NAME
                file.attrs["version"] = _FORMAT_VERSION
                file.attrs["acceleration"] = self.acceleration
                file.attrs["kernel_size"] = np.asarray(self.kernel_size, dtype=np.int64)
                file.attrs["num_coils"] = self.num_coils
                file.attrs["matrix"] = np.asarray(self.matrix, dtype=np.int64)
                file.attrs["acs_lines"] = self.acs_lines
                file.attrs["protocol"] = self.protocol
                file.create_dataset("weights", data=self.weights.astype(np.complex64))
                file.create_dataset(
                    "regularization", data=np.asarray(self.regularization, dtype=np.float64)
                )
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> GrappaKernel:
        """Read a kernel written by `save`; FileFormatError names the file and what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise FileFormatError(path, "no such file")
        try:
            with h5py.File(path, "r") as file:
                if file.attrs.get("format") != _FORMAT_NAME:
                    raise FileFormatError(path, "not a GRAPPA kernel file")
                version = int(file.attrs["version"])
                if version != _FORMAT_VERSION:
                    raise FileFormatError(path, f"GRAPPA kernel format version {version} unknown")
                kernel = cls(
                    weights=np.asarray(file["weights"][()], dtype=np.complex64),
                    acceleration=int(file.attrs["acceleration"]),
                    kernel_size=_as_pair(file.attrs["kernel_size"]),
                    regularization=tuple(float(v) for v in file["regularization"][()]),
                    num_coils=int(file.attrs["num_coils"]),
                    matrix=_as_pair(file.attrs["matrix"]),
                    acs_lines=int(file.attrs["acs_lines"]),
                    protocol=str(file.attrs["protocol"]),
                )
        except FileFormatError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise FileFormatError(
                path, f"unreadable GRAPPA kernel ({type(error).__name__})"
            ) from None
        expected = (
            kernel.acceleration - 1,
            2 * kernel.kernel_size[1] - 1,
            kernel.num_coils * kernel.kernel_size[0] * kernel.kernel_size[1],
            kernel.num_coils,
        )
        if kernel.weights.ndim != 5 or kernel.weights.shape[1:] != expected:
            raise FileFormatError(
                path, f"GRAPPA weights of shape {kernel.weights.shape} are corrupt"
            )
        if len(kernel.regularization) != kernel.num_slices:
            raise FileFormatError(path, "GRAPPA kernel has one lambda per slice missing")
        return kernel


def _as_pair(values: np.ndarray) -> tuple[int, int]:
    first, second = (int(v) for v in np.asarray(values).ravel())
    return first, second


def _check_sampling(scan: Scan) -> None:
    if scan.acceleration < 2:
        raise InvalidScanError("the scan is not accelerated (R=1): nothing for GRAPPA to fill")
    if not scan.is_equispaced:
        raise InvalidScanError(
            f"GRAPPA needs equispaced sampling: outside the ACS the acquired lines do not form "
            f"one lattice of every {scan.acceleration}th line"
        )


def _check_scan(scan: Scan) -> None:
    _check_sampling(scan)
    if scan.acs is None:
        raise InvalidScanError("the scan has no ACS block to calibrate GRAPPA on")


def fit_grappa(
    scan: Scan,
    *,
    kernel_size: KernelSize = DEFAULT_KERNEL_SIZE,
    regularization: float | None = DEFAULT_REGULARIZATION,
) -> GrappaKernel:
    """Calibrate a kernel on each slice's own ACS block."""
    _check_scan(scan)
    kernel_size = _check_kernel_size(kernel_size)
    fitted = [
        calibrate_grappa_with_lambda(
            acs, scan.acceleration, kernel_size=kernel_size, regularization=regularization
        )
        for acs in scan.acs_kspace()
    ]
    return GrappaKernel(
        weights=np.stack([weights for weights, _ in fitted]),
        acceleration=scan.acceleration,
        kernel_size=kernel_size,
        regularization=tuple(lam for _, lam in fitted),
        num_coils=scan.num_coils,
        matrix=scan.matrix,
        acs_lines=scan.acs.lines if scan.acs is not None else 0,
        protocol=scan.protocol,
    )


def reconstruct_grappa(
    scan: Scan,
    *,
    kernel_size: KernelSize | None = None,
    regularization: float | None = DEFAULT_REGULARIZATION,
    kernel: GrappaKernel | None = None,
) -> np.ndarray:
    """Filled k-space [slice, coil, kx, ky] complex64 for all slices; measured lines as acquired.

    Without `kernel`, each slice is calibrated on its own ACS; with one, its weights are applied
    (a `kernel_size` given as well must match it).
    """
    if kernel is None:
        kernel = fit_grappa(
            scan, kernel_size=kernel_size or DEFAULT_KERNEL_SIZE, regularization=regularization
        )
    else:
        if not isinstance(kernel, GrappaKernel):
            raise IncompatibleWeightsError(
                f"GRAPPA takes a GrappaKernel, not {type(kernel).__name__}"
            )
        _check_sampling(scan)
        kernel.check_compatible(scan)
        if kernel_size is not None and tuple(kernel_size) != tuple(kernel.kernel_size):
            raise IncompatibleWeightsError(
                f"GRAPPA kernel is {kernel.kernel_size[0]}x{kernel.kernel_size[1]}, "
                f"not the {kernel_size[0]}x{kernel_size[1]} asked for"
            )
    return np.stack(
        [
            apply_grappa(kspace, scan.sampled, weights, kernel.acceleration, kernel.kernel_size)
            for kspace, weights in zip(scan.kspace, kernel.weights, strict=True)
        ]
    )
