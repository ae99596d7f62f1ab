"""GRAPPA: fill skipped ky lines from acquired neighbours with kernels fitted on the ACS block.

Griswold et al., "Generalized autocalibrating partially parallel acquisitions (GRAPPA)",
MRM 47:1202-1210 (2002). A linear kernel maps a block of `kernel_size = (readout points,
acquired lines)` samples of all coils to the missing sample of every coil at (kx, t):

    target[c] = sum_{c', a, j} W_p[(c', a, j), c] * k[c', kx + a - h, t + o_j]

with readout taps a = 0..points-1 around the target (h = points // 2) and source lines t + o_j,
the acquired lines nearest to t: half of them below, half above (`source_patterns`). The
offsets o = (o_1, ..., o_lines) are the line's source pattern p, and every pattern has its
own kernel. Between lattice lines the pattern is the lattice's, o_j = R (j - (lines - 1) // 2)
- d for the d-th line after an acquired one, as in the paper; beside the ACS block the nearest
acquired lines are ACS lines, closer than the lattice's, and a kernel for that pattern uses
them (as pygrappa's mdgrappa does for every pattern it meets); at the ky ends, where lines are
missing on one side, the pattern has fewer sources (edge kernels, more damping since they
extrapolate).

Each fit is ridge regression on the ACS block at every position where its pattern fits, with
Tikhonov weight relative to the largest singular value of the source matrix A:
W = (A^H A + lambda s_max^2 I)^-1 A^H B. On noisy data lambda decides the result, and no fixed
value suits both noisy and clean scans (measured in docs/benchmarks.md), so by default it is
set per slice from the ACS itself (`auto_regularization`, read from the lattice kernel's
system) and used for every pattern.

The readout is fully sampled and treated as periodic (as the DFT that makes the image is), so
kernel windows wrap around kx. Application gathers every patch of one pattern with stride
tricks and fills all its lines with one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from numpy.lib.stride_tricks import sliding_window_view

from raki.errors import IncompatibleWeightsError, InvalidScanError
from raki.grappa_kernel import GrappaKernel, KernelSize
from raki.power_ceiling import limit_line_power
from raki.runtime import single_threaded_blas
from raki.sampling import find_acs, minimum_acs_lines
from raki.scan import Scan

__all__ = [
    "DEFAULT_KERNEL_SIZE",
    "GrappaKernel",
    "apply_grappa",
    "automatic_lambda",
    "calibrate_grappa",
    "closer_than_lattice",
    "fit_grappa",
    "reconstruct_grappa",
]

DEFAULT_KERNEL_SIZE: KernelSize = (9, 2)
# None: lambda chosen per slice by `auto_regularization`; a float: that lambda, relative to s_max^2.
DEFAULT_REGULARIZATION: float | None = None
# The automatic rule's constant, measured with scripts/bench/grappa_peer.py --sweep.
AUTO_REGULARIZATION_SCALE = 0.2
# Edge kernels extrapolate from one side, which amplifies noise: they get this many times the
# lambda (measured: 10 beat 1, 100 and 1000, wrapping and zero-padding; docs/benchmarks.md).
EDGE_REGULARIZATION_FACTOR = 10.0


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


def lines_below(kernel_lines: int) -> int:
    """How many of the kernel's source lines lie below the target (the rest lie above)."""
    return kernel_lines - kernel_lines // 2


def source_patterns(acquired: np.ndarray, targets: np.ndarray, kernel_lines: int) -> np.ndarray:
    """Source patterns [target, kernel_lines]: ky offsets from each target of its sources.

    The sources of a missing line are the `lines_below` nearest acquired lines below it and the
    rest nearest above. Between lattice lines they are the lattice's; beside the ACS block
    they are closer (ACS lines). 0 marks a slot with no line (past a k-space edge); slots run
    from the farthest line below to the farthest above.
    """
    acquired = np.asarray(acquired)
    below = lines_below(kernel_lines)
    insert = np.searchsorted(acquired, targets)
    slots = insert[:, None] + np.arange(-below, kernel_lines - below)[None, :]
    inside = (slots >= 0) & (slots < acquired.size)
    lines = acquired[np.clip(slots, 0, max(acquired.size - 1, 0))]
    return np.where(inside, lines - targets[:, None], 0).astype(np.int64)


def lattice_patterns(acceleration: int, kernel_lines: int) -> np.ndarray:
    """The source patterns an equispaced lattice needs away from the ACS: for each offset d in
    1..R-1 all sources, then with the farthest m missing below (near ky = 0), then above."""
    patterns = []
    below = lines_below(kernel_lines)
    for d in range(1, acceleration):
        full = source_line_offsets(acceleration, kernel_lines) - d
        patterns.append(full)
        for missing in range(1, below + 1):
            patterns.append(np.where(np.arange(kernel_lines) >= missing, full, 0))
        for missing in range(1, kernel_lines - below + 1):
            patterns.append(np.where(np.arange(kernel_lines) < kernel_lines - missing, full, 0))
    return np.unique(np.stack(patterns), axis=0)


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
    acs: np.ndarray,
    bases: np.ndarray,
    offsets: np.ndarray,
    target_offsets: np.ndarray,
    readout_points: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A^H A [unknowns, unknowns] and A^H B [unknowns, targets * coil] without forming A.

    Rows are every readout point at every base line in `bases`; sources are the lines at
    `offsets` from the base, targets those at `target_offsets`.

    With the readout wrapping around, every entry of A^H A and A^H B is a circular
    cross-correlation along kx between two ky lines (summed over kernel positions), at the lag
    between their readout taps: products of the lines' spectra, about (readout points)^2
    times fewer operations than the product of the patch matrix with itself.
    """
    num_coils, num_kx, _ = acs.shape
    lines = np.concatenate([offsets, target_offsets])  # sources, then targets
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
    if largest <= 0.0:
        return np.zeros_like(cross)  # all-zero sources: the zero kernel is the fit
    damped = gram.copy()
    damped[np.diag_indices_from(damped)] += regularization * largest
    if regularization > 0:
        try:
            # Finite by construction (sums of products of finite k-space): skip the checks.
            factor = scipy.linalg.cho_factor(damped, check_finite=False)
            return scipy.linalg.cho_solve(factor, cross, check_finite=False)
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
    patterns: np.ndarray | None = None,
) -> np.ndarray:
    """Kernel weights [pattern, coil * readout * lines, coil] complex64 from an ACS block.

    One kernel per source pattern (`source_patterns`; None: `lattice_patterns`, what an
    equispaced scan needs away from the ACS); absent source lines keep zero weights.
    `acs` is [coil, kx, acs lines], fully sampled. Rows of each fit are every position where
    the pattern fits inside the block along ky, at every kx (wrapping around the readout).
    `regularization` None picks lambda with `auto_regularization`.
    """
    return calibrate_grappa_with_lambda(
        acs,
        acceleration,
        kernel_size=kernel_size,
        regularization=regularization,
        patterns=patterns,
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
        if self.eigenvalues[-1] <= 0.0:
            return 0.0  # an all-zero ACS: nothing to damp, the kernels are zero
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
    gram, cross = _normal_equations(acs, bases, offsets, np.arange(1, acceleration), readout_points)
    gram = (gram + gram.conj().T) / 2  # exactly Hermitian despite FFT round-off
    # An all-zero ACS (an empty slice of a multi-slice scan) gives all-zero kernels: that slice
    # stays zero, and the others are reconstructed.
    eigenvalues = np.linalg.eigvalsh(gram)
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
    patterns: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """`calibrate_grappa`, also returning the lambda used (the automatic one when None).

    Lambda is the same for every pattern (the rule reads the lattice kernel's system); a
    pattern that lacks some source lines extrapolates and gets EDGE_REGULARIZATION_FACTOR
    times it.
    """
    if regularization is not None and not (np.isfinite(regularization) and regularization >= 0):
        raise InvalidScanError(f"regularization must be finite and >= 0, got {regularization}")
    system = _calibration_system(acs, acceleration, kernel_size)
    if regularization is None:
        regularization = system.automatic_lambda()
    if patterns is None:
        patterns = lattice_patterns(acceleration, system.kernel_lines)
    acs = np.asarray(acs).astype(np.complex128)
    patterns = np.asarray(patterns)
    num_coils = system.num_coils
    weights = np.zeros(
        (len(patterns), num_coils * system.readout_points * system.kernel_lines, num_coils),
        dtype=np.complex64,
    )
    # Lattice patterns with the same source slots share the lattice system's columns: one
    # solve serves all their offsets d.
    lattice = source_line_offsets(system.acceleration, system.kernel_lines)
    shared: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for row, pattern in enumerate(patterns):
        present = np.flatnonzero(pattern != 0)
        offsets = [
            d
            for d in range(1, system.acceleration)
            if np.array_equal(pattern[present], (lattice - d)[present])
        ]
        if offsets:
            shared.setdefault(tuple(present), []).append((row, offsets[0]))
        else:
            columns, solved = _own_pattern_fit(acs, pattern, system, regularization)
            weights[row, columns] = solved
    for present, members in shared.items():
        columns = _kernel_columns(np.array(present), system)
        cross = np.concatenate(
            [system.cross[columns, (d - 1) * num_coils : d * num_coils] for _, d in members],
            axis=1,
        )
        solved = _solve_regularised(
            system.gram[np.ix_(columns, columns)],
            cross,
            float(system.eigenvalues[-1]),
            _damping(regularization, len(present), system.kernel_lines),
        )
        for index, (row, _) in enumerate(members):
            weights[row, columns] = solved[:, index * num_coils : (index + 1) * num_coils]
    return weights, float(regularization)


def _kernel_columns(present: np.ndarray, system: _CalibrationSystem) -> np.ndarray:
    """Kernel rows (coil, readout tap, slot) of the present source slots, in that order."""
    taps = np.arange(system.num_coils * system.readout_points)[:, None]
    return (taps * system.kernel_lines + present).ravel()


def _damping(regularization: float, sources: int, kernel_lines: int) -> float:
    """Lambda for a kernel with `sources` of its lines: more where it lacks some (extrapolation)."""
    if sources < kernel_lines:
        return regularization * EDGE_REGULARIZATION_FACTOR
    return regularization


def _largest_eigenvalue(gram: np.ndarray, steps: int = 20) -> float:
    """s_max^2 of a Hermitian positive semi-definite matrix by power iteration (a full
    eigen-decomposition per pattern would cost more than the fit)."""
    vector = np.ones(gram.shape[0], dtype=gram.dtype)
    for _ in range(steps):
        vector = gram @ vector
        norm = np.linalg.norm(vector)
        if norm == 0.0:
            return 0.0  # sources that are all zero: nothing to scale lambda by
        vector /= norm
    return float(np.real(vector.conj() @ gram @ vector))


def _own_pattern_fit(
    acs: np.ndarray, pattern: np.ndarray, system: _CalibrationSystem, regularization: float
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel rows and weights of a pattern the lattice lacks (beside the ACS, or in a mask with
    irregular gaps), fitted on the normal equations of its own sources at every ACS line where
    it fits. Sources too far apart for the ACS are dropped, farthest first (an edge kernel,
    damped as one); a line with no source that fits gets zero weights, i.e. stays zero-filled.
    """
    num_lines = acs.shape[2]
    present = np.flatnonzero(pattern != 0)
    while present.size:
        offsets = pattern[present]
        targets = np.arange(max(0, -offsets.min()), min(num_lines, num_lines - offsets.max()))
        if targets.size:
            break
        present = np.delete(present, np.argmax(np.abs(offsets)))
    if present.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, system.num_coils), np.complex64)
    gram, cross = _normal_equations(acs, targets, offsets, np.zeros(1, int), system.readout_points)
    gram = (gram + gram.conj().T) / 2  # exactly Hermitian despite FFT round-off
    damping = _damping(regularization, present.size, system.kernel_lines)
    solved = _solve_regularised(gram, cross, _largest_eigenvalue(gram), damping)
    return _kernel_columns(present, system), solved


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
    weights: np.ndarray, patterns: np.ndarray, num_coils: int, kernel_size: KernelSize
) -> None:
    readout_points, kernel_lines = kernel_size
    expected = (patterns.shape[0], num_coils * readout_points * kernel_lines, num_coils)
    if patterns.ndim != 2 or patterns.shape[1] != kernel_lines or weights.shape != expected:
        raise IncompatibleWeightsError(
            f"GRAPPA weights of shape {weights.shape} do not fit {num_coils} coils and a "
            f"{readout_points}x{kernel_lines} kernel with {patterns.shape[0]} source patterns "
            f"(expected {expected})"
        )


def line_patterns(
    sampled: np.ndarray, acceleration: int, kernel_lines: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skipped ky lines, their source patterns, and the patterns the lattice alone gives them.

    The two differ beside the ACS block, where acquired ACS lines lie closer than the lattice's.
    A mask whose lines outside the ACS form no single R-lattice (fastMRI's masks round a
    fractional spacing, so their gaps vary by one line) has no lattice to fall back on: there
    the third array repeats the second.
    """
    sampled = np.asarray(sampled, dtype=bool)
    targets = np.flatnonzero(~sampled)
    nearest = source_patterns(np.flatnonzero(sampled), targets, kernel_lines)
    try:
        offset = lattice_offset(sampled, acceleration)
    except InvalidScanError:
        return targets, nearest, nearest
    on_lattice = (np.arange(sampled.size) - offset) % acceleration == 0
    if np.any(~sampled & on_lattice):
        return targets, nearest, nearest
    lattice = source_patterns(np.flatnonzero(on_lattice), targets, kernel_lines)
    return targets, nearest, lattice


def closer_than_lattice(sampled: np.ndarray, acceleration: int, kernel_lines: int) -> np.ndarray:
    """bool [ky]: skipped lines whose nearest acquired lines are not the lattice's (ACS edges)."""
    targets, nearest, lattice = line_patterns(sampled, acceleration, kernel_lines)
    lines = np.zeros(np.asarray(sampled).size, dtype=bool)
    lines[targets[np.any(nearest != lattice, axis=1)]] = True
    return lines


def _pattern_rows(patterns: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of `patterns` equal to each row of `wanted`, -1 where none is."""
    known = {tuple(row): index for index, row in enumerate(patterns.tolist())}
    return np.array([known.get(tuple(row), -1) for row in wanted.tolist()], dtype=np.int64)


def mask_patterns(sampled: np.ndarray, acceleration: int, kernel_lines: int) -> np.ndarray:
    """Every source pattern a scan with this ky mask needs, lattice patterns included (so that
    the kernel also serves a later scan whose ACS sits elsewhere)."""
    _, nearest, _ = line_patterns(sampled, acceleration, kernel_lines)
    return np.unique(
        np.concatenate([nearest, lattice_patterns(acceleration, kernel_lines)]), axis=0
    )


def apply_grappa(
    kspace: np.ndarray,
    sampled: np.ndarray,
    weights: np.ndarray,
    acceleration: int,
    kernel_size: KernelSize = DEFAULT_KERNEL_SIZE,
    patterns: np.ndarray | None = None,
) -> np.ndarray:
    """Filled k-space [coil, kx, ky] complex64: acquired (and ACS) lines kept as measured.

    `sampled` is the ky mask; `patterns` the source patterns `weights` were fitted for (None:
    `lattice_patterns`). Each skipped line uses the kernel of its nearest acquired lines;
    where the weights lack that pattern (beside an ACS block they were not fitted for), the
    lattice lines' kernel.
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
    if patterns is None:
        patterns = lattice_patterns(acceleration, kernel_lines)
    patterns = np.asarray(patterns)
    _check_weights(weights, patterns, num_coils, (readout_points, kernel_lines))
    targets, nearest, lattice = line_patterns(sampled, acceleration, kernel_lines)
    rows = _pattern_rows(patterns, nearest)
    fallback = rows < 0
    rows[fallback] = _pattern_rows(patterns, lattice[fallback])
    if np.any(rows < 0):
        line = int(targets[np.argmax(rows < 0)])
        raise IncompatibleWeightsError(
            f"GRAPPA kernel has no weights for the sampling around ky line {line} "
            f"(R={acceleration})"
        )
    used = np.where(fallback[:, None], lattice, nearest)
    measured = np.where(sampled, kspace, 0).astype(np.complex64)
    filled = measured.copy()
    for row in np.unique(rows):
        chosen = rows == row
        group = targets[chosen]
        lines = np.clip(group[:, None] + used[chosen], 0, num_ky - 1)
        patches = _source_patches(measured, lines, used[chosen] != 0, readout_points)
        estimate = patches @ weights[row].astype(np.complex64, copy=False)
        filled[:, :, group] = estimate.reshape(num_kx, group.size, num_coils).transpose(2, 0, 1)
    return filled


def _check_sampling(scan: Scan) -> None:
    if scan.acceleration < 2:
        raise InvalidScanError("the scan is not accelerated (R=1): nothing for GRAPPA to fill")


def _check_scan(scan: Scan) -> None:
    _check_sampling(scan)
    if scan.acs is None:
        raise InvalidScanError("the scan has no ACS block to calibrate GRAPPA on")


@single_threaded_blas()
def fit_grappa(
    scan: Scan,
    *,
    kernel_size: KernelSize = DEFAULT_KERNEL_SIZE,
    regularization: float | None = DEFAULT_REGULARIZATION,
) -> GrappaKernel:
    """Calibrate a kernel on each slice's own ACS block, for every source pattern of its mask."""
    _check_scan(scan)
    kernel_size = _check_kernel_size(kernel_size)
    patterns = mask_patterns(scan.sampled, scan.acceleration, kernel_size[1])
    fitted = [
        calibrate_grappa_with_lambda(
            acs,
            scan.acceleration,
            kernel_size=kernel_size,
            regularization=regularization,
            patterns=patterns,
        )
        for acs in scan.acs_kspace()
    ]
    return GrappaKernel(
        weights=np.stack([weights for weights, _ in fitted]),
        patterns=patterns,
        acceleration=scan.acceleration,
        kernel_size=kernel_size,
        regularization=tuple(lam for _, lam in fitted),
        num_coils=scan.num_coils,
        matrix=scan.matrix,
        acs_lines=scan.acs.lines if scan.acs is not None else 0,
        protocol=scan.protocol,
    )


@single_threaded_blas()
def reconstruct_grappa(
    scan: Scan,
    *,
    kernel_size: KernelSize | None = None,
    regularization: float | None = DEFAULT_REGULARIZATION,
    kernel: GrappaKernel | None = None,
    limit_power: bool = True,
) -> np.ndarray:
    """Filled k-space [slice, coil, kx, ky] complex64 for all slices; measured lines as acquired.

    Without `kernel`, each slice is calibrated on its own ACS; with one, its weights are applied
    (a `kernel_size` given as well must match it). With `limit_power` no filled line is louder,
    per coil, than its louder acquired neighbour (`raki.power_ceiling`): on a small ACS the
    kernels amplify noise, and that keeps the image from falling below zero-filling.
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
    filled = np.stack(
        [
            apply_grappa(
                kspace,
                scan.sampled,
                weights,
                kernel.acceleration,
                kernel.kernel_size,
                kernel.patterns,
            )
            for kspace, weights in zip(scan.kspace, kernel.weights, strict=True)
        ]
    )
    return limit_line_power(filled, scan.sampled) if limit_power else filled
