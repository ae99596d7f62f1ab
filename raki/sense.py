"""Regularised SENSE with ESPIRiT maps: Tikhonov CG-SENSE and wavelet compressed sensing.

The forward model of one slice (Pruessmann et al., MRM 46:638-651, 2001; with ESPIRiT's map
sets, Uecker et al., MRM 71:990-1001, 2014) takes an image of one component per map set,
x [set, x, y], to the acquired k-space of every coil,

    A x = M C F sum_s S_s x_s,

with S_s [coil, x, y] the maps, F the centred orthonormal 2D FFT, M the ky sampling mask and C
the crop of the image grid's k-space to the measured matrix (`raki.sense_operator`, which says
why the grid extends past the measured window by default: the extended grid lowered cs's NMSE
to 0.43-0.96x on every shared file, docs/benchmarks.md "cs on an extended grid"). k-space made
by an FFT of an image (simulations) is exactly periodic, and there the measured grid wins;
`raki.selection` tests both for auto. Two estimates of x:

- Tikhonov ("CG-SENSE"): argmin ||A x - y||^2 + lambda ||x||^2, by conjugate gradients on
  (A^H A + lambda I) x = A^H y.
- Wavelet sparsity ("wavelet", the default; Lustig et al., MRM 58:1182-1195, 2007): argmin 1/2
  ||A x - y||^2 + lambda R(W x) over the detail coefficients of an orthogonal Daubechies
  wavelet W (`raki.wavelet`), by FISTA (Beck and Teboulle, SIAM J Imaging Sci 2:183-202,
  2009). R is the penalty whose proximal map is Chartrand's p-shrinkage with p = 1/2
  (`SHRINKAGE_P`; Chartrand, "Fast algorithms for nonconvex compressive sensing: MRI
  reconstruction from very few data", ISBI 2009, and "Shrinkage mappings and their induced
  penalty functions", ICASSP 2014): it shrinks large coefficients less than soft
  thresholding does (p = 1, the L1 norm, as BART's `pics -R W`: "l1-wavelet" here, at its
  own measured weight), so that edges keep their contrast while noise-sized coefficients go.
  At each
  voxel the maps of the sets are orthonormal (eigenvectors of one Hermitian matrix) or zero,
  so ||A^H A|| <= 1 and the gradient step is 1. Every iteration thresholds the wavelet
  coefficients on `CYCLE_SPINS` randomly shifted grids and averages the results: a few terms
  of translation-invariant denoising (Coifman and Donoho, "Translation-invariant de-noising",
  Wavelets and Statistics, 1995; averaged shifts inside an iterative reconstruction: Kamilov
  et al., "Wavelet shrinkage with consistent cycle spinning generalizes total variation
  denoising", IEEE SPL 19:187-190, 2012), so that no grid's block edges stay in the image.

Both stop after a fixed number of iterations or when an iteration changes x by less than
`tolerance` relative to its norm. The coil k-space of the result is C F S x with the acquired
lines put back as measured, so the image is the RSS of coil images, like every other method's.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from raki.errors import InvalidScanError
from raki.espirit import DEFAULT_KERNEL_WIDTH, EspiritMaps, espirit_maps
from raki.method_names import CS_REGULARIZERS
from raki.scan import Scan
from raki.sense_operator import (
    DEFAULT_GRID,
    SenseOperator,
    coil_kspace,
    grid_matrix,
    norm,
)
from raki.wavelet import Wavelet2d

REGULARIZERS = CS_REGULARIZERS
DEFAULT_REGULARIZER = "wavelet"
DEFAULT_WAVELET = "db2"
CG_ITERATIONS = 50
# With cycle spinning, 50 FISTA iterations scored as well as 100 and 200 on the brain files
# and a phantom (docs/benchmarks.md), in half the time.
FISTA_ITERATIONS = 50
# Shifted wavelet grids averaged per FISTA iteration. Two: 0.94-1.00x the NMSE of one on 17
# cases of the grid (noisy and clean, docs/benchmarks.md "cs, noisy cases"), worse on none, for
# about +0.45 s per 16-coil 320 x 320 slice at one thread; four gained 0.92-1.00x but cost
# +1.5 s, outside issue 16's time budget. Fewer iterations to pay for them lost 2.5-4.8x on
# the SNR-50 phantom, where FISTA converges slowly; averaging the last iterates instead (free)
# lost 1.5x there for the same reason.
CYCLE_SPINS = 2
# p of the p-shrinkage (1: soft thresholding, the L1 norm). With its weight (below), measured
# on 17 cases (docs/benchmarks.md "cs, noisy cases"): 0.45-0.99x the NMSE of soft
# thresholding at its own automatic weight, worse on none; p = 0 (the garrote) and a firm
# threshold lost up to 2x on the 64 x 64 brain; p = 3/4 gained less on the noisy cases.
SHRINKAGE_P = 0.5
DEFAULT_TOLERANCE = 1e-4
# The automatic weights, from the noise level sigma of the ACS (`raki.espirit.noise_level`):
# wavelet: lambda = scale x sigma; Tikhonov: lambda = scale x sigma^2 / (ACS energy per voxel).
# Both scales measured against the best weight by reference NMSE on every shared file at
# R = 3..6 and on noisy phantoms (scripts/bench/cs_peer.py, docs/benchmarks.md). The wavelet
# scale was 0.18 with soft thresholding; p-shrinkage's, 0.6, was measured on 17 cases (14 of
# the grid, three phantoms outside it; docs/benchmarks.md "cs, noisy cases"): at 0.55-0.6
# every case beat soft thresholding; at 0.5 a 16-coil SNR-50 phantom lost 10%, at 0.7 the
# clean 96 x 96 brain at R = 5 lost 5% (it wants less; noisy and 8-coil cases want more).
L1_WEIGHT_SCALE = 0.6
SOFT_WEIGHT_SCALE = 0.18  # "l1-wavelet": soft thresholding at the scale measured for it
TIKHONOV_WEIGHT_SCALE = 4.0


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    return float(norm(new - old) / norm(new).clamp_min(1e-30))


def cg_sense(
    operator: SenseOperator,
    kspace: torch.Tensor,
    lam: float,
    *,
    iterations: int = CG_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """argmin ||A x - y||^2 + lam ||x||^2 by conjugate gradients; (x, iterations run).

    Stops when the residual of the normal equations falls below `tolerance` times A^H y.
    """
    rhs = operator.adjoint(kspace)
    x = torch.zeros_like(rhs) if start is None else start.clone()
    residual = rhs - (operator.normal(x) + lam * x)
    direction = residual.clone()
    power = torch.vdot(residual.flatten(), residual.flatten()).real
    target = (tolerance * norm(rhs)) ** 2
    done = 0
    for done in range(1, iterations + 1):
        if power <= target:
            done -= 1
            break
        applied = operator.normal(direction) + lam * direction
        step = power / torch.vdot(direction.flatten(), applied.flatten()).real
        x = x + step * direction
        residual = residual - step * applied
        new_power = torch.vdot(residual.flatten(), residual.flatten()).real
        direction = residual + (new_power / power) * direction
        power = new_power
    return x, done


def soft_threshold(values: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Complex soft thresholding: shrink magnitudes by `threshold`, keep phases."""
    return p_shrink(values, threshold, 1.0)


def p_shrink(
    values: torch.Tensor, threshold: torch.Tensor | float, p: float = SHRINKAGE_P
) -> torch.Tensor:
    """Complex p-shrinkage (Chartrand 2009): |v| -> max(|v| - T^(2 - p) |v|^(p - 1), 0), phase
    kept; p = 1 is soft thresholding, smaller p shrinks magnitudes well above T less."""
    ratio = threshold / values.abs().clamp_min(1e-30)
    return values * torch.clamp(1 - (ratio if p == 1.0 else ratio ** (2 - p)), min=0)


def l1_wavelet_sense(
    operator: SenseOperator,
    kspace: torch.Tensor,
    lam: float,
    *,
    iterations: int = FISTA_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
    wavelet: str = DEFAULT_WAVELET,
    start: torch.Tensor | None = None,
    shifts: bool = True,
    seed: int = 0,
    spins: int = CYCLE_SPINS,
    p: float = SHRINKAGE_P,
) -> tuple[torch.Tensor, int]:
    """argmin 1/2 ||A x - y||^2 + lam R(W x) (detail coefficients) by FISTA, step 1, with the
    p-shrinkage `p_shrink` as R's proximal map (p = 1: R is the L1 norm).

    With `shifts`, every iteration moves the wavelet grid by a random number of pixels
    (seeded), so that no block edge of the wavelet stays in one place (cycle spinning), and
    averages the thresholded images of `spins` such grids (1: one grid per iteration).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p-shrinkage takes p in 0..1, not {p}")
    if spins < 1:
        raise ValueError(f"cycle spinning needs at least one grid per iteration, not {spins}")
    _, nx, ny = operator.image_shape
    transform = Wavelet2d((nx, ny), wavelet)
    details = transform.detail_mask(kspace.device)
    threshold = torch.where(details, lam, 0.0).to(torch.float32)
    rhs = operator.adjoint(kspace)
    x = rhs.clone() if start is None else start.clone()
    momentum_point = x
    t = 1.0
    done = 0
    generator = np.random.default_rng(seed)
    period = 2**transform.levels
    while done < iterations:
        done += 1
        gradient_step = momentum_point - (operator.normal(momentum_point) - rhs)
        new_x = torch.zeros_like(gradient_step)
        for _ in range(spins if shifts else 1):
            shift = tuple(int(v) for v in generator.integers(0, period, 2)) if shifts else (0, 0)
            new_x += shifted_threshold(transform, gradient_step, threshold, shift, p)
        if shifts and spins > 1:
            new_x /= spins
        new_t = (1 + np.sqrt(1 + 4 * t * t)) / 2
        momentum_point = new_x + ((t - 1) / new_t) * (new_x - x)
        change = _relative_change(new_x, x)
        x, t = new_x, new_t
        if change < tolerance:
            break
    return x, done


def shifted_threshold(
    transform: Wavelet2d,
    image: torch.Tensor,
    threshold: torch.Tensor,
    shift: tuple[int, int],
    p: float = 1.0,
) -> torch.Tensor:
    """The image p-shrunk (`p_shrink`) in the wavelet domain of a grid moved by `shift` pixels."""
    shifted = torch.roll(image, shift, dims=(-2, -1))
    denoised = transform.inverse(p_shrink(transform.forward(shifted), threshold, p))
    return torch.roll(denoised, (-shift[0], -shift[1]), dims=(-2, -1))


Solver = Callable[..., tuple[torch.Tensor, int]]
SOLVERS: dict[str, Solver] = {
    "wavelet": l1_wavelet_sense,
    "l1-wavelet": functools.partial(l1_wavelet_sense, p=1.0),
    "tikhonov": cg_sense,
}


def solver_for(regularizer: str) -> Solver:
    if regularizer not in SOLVERS:
        raise InvalidScanError(
            f"unknown regulariser {regularizer!r}; choose one of {', '.join(REGULARIZERS)}"
        )
    return SOLVERS[regularizer]


def automatic_weight(
    regularizer: str,
    maps: EspiritMaps,
    acs: np.ndarray,
    matrix: tuple[int, int] | None = None,
) -> float:
    """The regularisation weight for one slice from its data alone (no reference), on the
    scale of the measured `matrix` (None: the maps' own), as a user would give it.

    The ACS noise level sigma (per k-space sample; `raki.espirit.noise_level`) is also the
    noise of A^H y per voxel, because the maps have unit norm: the wavelet threshold is a
    fixed multiple of it. Tikhonov's lambda is a noise-to-signal power ratio: sigma^2 over the
    ACS energy per voxel of the image (the ACS holds nearly all of the image's energy).
    """
    solver_for(regularizer)
    sigma = maps.noise_level
    if regularizer == "wavelet":
        return L1_WEIGHT_SCALE * sigma
    if regularizer == "l1-wavelet":
        return SOFT_WEIGHT_SCALE * sigma
    voxels = math.prod(matrix or maps.maps.shape[-2:])
    power = float(np.sum(np.abs(acs) ** 2)) / voxels
    return TIKHONOV_WEIGHT_SCALE * sigma**2 / power if power > 0 else 0.0


def weight_on_grid(
    regularizer: str, weight: float, matrix: tuple[int, int], grid: tuple[int, int]
) -> float:
    """A weight given for the measured `matrix` as the solver on `grid` must use it.

    On a larger grid the same k-space noise spreads over more voxels (orthonormal FFTs keep
    its energy): sigma x sqrt(measured / grid voxels) each, so a wavelet threshold shrinks by
    that factor. Tikhonov's noise-to-signal ratio is the same on any grid.
    """
    if regularizer == "tikhonov":
        return weight
    return weight * math.sqrt(math.prod(matrix) / math.prod(grid))


@dataclass
class SenseReconstruction:
    """Filled k-space [slice, coil, kx, ky] and, per slice, how it was made."""

    kspace: np.ndarray
    regularizer: str
    weights: list[float]
    noise_levels: list[float]
    map_sets: list[int]
    iterations: list[int]
    automatic: bool  # the weights were chosen from the data (`automatic_weight`)
    grid: str = DEFAULT_GRID  # "extended" or "measured" (`grid_matrix`)
    grid_size: tuple[int, int] = (0, 0)
    maps_seconds: float = 0.0
    solve_seconds: float = 0.0

    def details(self) -> dict[str, object]:
        """Facts for ReconResult.details."""
        return {
            "regularizer": self.regularizer,
            "weights": self.weights,
            "weight_rule": "automatic" if self.automatic else "given",
            "noise_levels": self.noise_levels,
            "map_sets": self.map_sets,
            "iterations": self.iterations,
            "grid": self.grid,
            "grid_size": list(self.grid_size),
        }


@dataclass(frozen=True)
class SliceSense:
    """One slice's cs: its filled k-space [coil, kx, ky] and how it was made."""

    kspace: torch.Tensor
    weight: float  # on the measured matrix's scale (`automatic_weight`)
    noise_level: float
    map_sets: int
    iterations: int
    maps_seconds: float
    solve_seconds: float


def slice_maps(
    acs: np.ndarray,
    matrix: tuple[int, int],
    grid: str = DEFAULT_GRID,
    device: torch.device | str = "cpu",
) -> EspiritMaps:
    """ESPIRiT maps of one slice, calibrated on its `grid` (maps resampled from another grid
    cost 1-9% NMSE on the shared files, docs/benchmarks.md)."""
    return espirit_maps(acs, grid_matrix(matrix, grid), device=device)


def sense_slice(
    acs: np.ndarray,
    kspace: np.ndarray,
    sampled: np.ndarray,
    regularizer: str = DEFAULT_REGULARIZER,
    *,
    weight: float | None = None,
    device: torch.device | str = "cpu",
    iterations: int | None = None,
    wavelet: str = DEFAULT_WAVELET,
    grid: str = DEFAULT_GRID,
) -> SliceSense:
    """Regularised SENSE of one slice (k-space [coil, kx, ky], acquired lines `sampled`), maps
    from its ACS [coil, kx, lines], solved on the `grid` (`slice_maps`)."""
    solve = solver_for(regularizer)
    options: dict[str, object] = {} if iterations is None else {"iterations": int(iterations)}
    if regularizer != "tikhonov":
        options["wavelet"] = wavelet
    matrix = (int(kspace.shape[-2]), int(kspace.shape[-1]))
    started = time.perf_counter()
    maps = slice_maps(acs, matrix, grid, device)
    size = (int(maps.maps.shape[-2]), int(maps.maps.shape[-1]))
    solving = time.perf_counter()
    lam = automatic_weight(regularizer, maps, acs, matrix) if weight is None else weight
    operator = SenseOperator.build(maps.maps, sampled, device, matrix)
    measured = torch.as_tensor(np.ascontiguousarray(kspace, dtype=np.complex64), device=device)
    image, done = solve(
        operator, measured, weight_on_grid(regularizer, lam, matrix, size), **options
    )
    filled = coil_kspace(operator, image, measured)
    return SliceSense(
        filled,
        float(lam),
        maps.noise_level,
        maps.sets,
        done,
        solving - started,
        time.perf_counter() - solving,
    )


def reconstruct_sense(
    scan: Scan,
    regularizer: str = DEFAULT_REGULARIZER,
    *,
    weight: float | None = None,
    device: torch.device | str = "cpu",
    iterations: int | None = None,
    wavelet: str = DEFAULT_WAVELET,
    grid: str = DEFAULT_GRID,
) -> SenseReconstruction:
    """Regularised SENSE of every slice with ESPIRiT maps from its ACS; acquired lines kept.

    `weight` None chooses lambda per slice (`automatic_weight`); a number is used as given,
    on the k-space's scale. `iterations` caps the solver (default: its own). The image is
    solved on the `grid` ("extended": `extended_matrix`; "measured": the scan's own matrix).
    """
    solver_for(regularizer)
    size = grid_matrix(scan.matrix, grid)
    if scan.acs is None or scan.acs.lines < DEFAULT_KERNEL_WIDTH:
        lines = 0 if scan.acs is None else scan.acs.lines
        raise InvalidScanError(
            f"cs calibrates ESPIRiT maps on an ACS block of at least {DEFAULT_KERNEL_WIDTH} "
            f"lines; this scan has {lines}"
        )
    acs = scan.acs_kspace()
    result = SenseReconstruction(
        np.empty_like(scan.kspace), regularizer, [], [], [], [], weight is None, grid, size
    )
    # Per slice, in slice order; filled in another order (below).
    facts: list[tuple[float, float, int, int]] = [(0.0, 0.0, 0, 0)] * scan.num_slices
    # The middle slice first: auto's held-out test calibrated its maps, still in the cache.
    middle = (scan.num_slices - 1) // 2
    for index in [middle, *(i for i in range(scan.num_slices) if i != middle)]:
        done = sense_slice(
            acs[index],
            scan.kspace[index],
            scan.sampled,
            regularizer,
            weight=weight,
            device=device,
            iterations=iterations,
            wavelet=wavelet,
            grid=grid,
        )
        result.kspace[index] = done.kspace.cpu().numpy()
        result.maps_seconds += done.maps_seconds
        result.solve_seconds += done.solve_seconds
        facts[index] = (done.weight, done.noise_level, done.map_sets, done.iterations)
    for weight_used, noise, sets, iterations_run in facts:
        result.weights.append(weight_used)
        result.noise_levels.append(noise)
        result.map_sets.append(sets)
        result.iterations.append(iterations_run)
    return result
