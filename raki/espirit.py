"""ESPIRiT coil sensitivity maps from the ACS block: one map set, or two where the FOV wraps.

Uecker et al., "ESPIRiT - an eigenvalue approach to autocalibrating parallel MRI: where SENSE
meets GRAPPA", MRM 71:990-1001 (2014). Every k x k patch of all coils in the calibration block
is a row of the calibration matrix A [patches, coils k^2]; the right singular vectors whose
singular values exceed `threshold` x the largest span the signal subspace V. Projecting every
patch of a full k-space onto it and averaging over the k^2 patches that cover a sample is a
convolution W = (1/k^2) sum_p R_p^H P R_p with P = conj(V V^H), which the image domain turns
into a coil x coil matrix per voxel,

    G(r) = (1 / k^2) sum_m w[m] exp(2 pi i m.r / N),   w_cd[m] = sum_{t - s = m} P[(c, t), (d, s)],

(N the image size, r centred as `raki.fft` centres images). Coil images x_c(r) = S_c(r) m(r) are
fixed points of W, so the maps are the eigenvectors of G(r) with eigenvalue 1. Where the
object is wider than the FOV, two tissue positions fold onto one voxel and a second
eigenvalue near 1 appears: its eigenvector is the second map set (soft SENSE, section
"Beyond SENSE" of the paper). Maps are kept where their eigenvalue exceeds `crop`; each set's
phase is referred to a virtual body coil (the coils' principal component on the ACS), so that
it is smooth wherever that coil sees signal.

The w kernels are (2k - 1)^2 per coil pair and the sum over m is separable, so the cost is
one small eigendecomposition of A^H A, two thin matrix products per block of image rows and a
batched C x C eigendecomposition per voxel.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from raki.errors import InvalidScanError
from raki.runtime import single_threaded_blas
from raki.scan import Scan

DEFAULT_KERNEL_WIDTH = 6
# Singular values below this fraction of the largest are the null space (SigPy's default;
# measured against BART's maps in docs/benchmarks.md).
DEFAULT_THRESHOLD = 0.02
DEFAULT_CROP = 0.8
# Readout points of the calibration block, centred on DC: the outer readout is mostly noise.
DEFAULT_CALIBRATION_WIDTH = 24
# A second map set is kept when its eigenvalue passes `crop` on at least this fraction of the
# voxels where the first one does (a wrapped FOV); otherwise one set.
SECOND_SET_FRACTION = 0.05
# Entries of G (voxels x coils^2) per block of the per-voxel eigendecomposition: 32 MB.
VOXEL_BATCH_ENTRIES = 2**22
# Maps kept for reuse (`espirit_maps`): auto's held-out test and the reconstruction after it
# calibrate the same slice from the same ACS; one 16-coil 360 x 360 set is 16 MB.
CACHED_MAPS = 4
_cache: OrderedDict[tuple, EspiritMaps] = OrderedDict()


@dataclass(frozen=True)
class EspiritMaps:
    """Coil maps [set, coil, kx, ky] complex64 of one slice and their eigenvalues [set, kx, ky]."""

    maps: np.ndarray
    eigenvalues: np.ndarray
    kernels: int  # the signal subspace's dimension
    noise_level: float  # per-sample noise standard deviation of the ACS (`noise_level`)

    @property
    def sets(self) -> int:
        return int(self.maps.shape[0])


def calibration_block(acs: np.ndarray, width: int | None) -> np.ndarray:
    """The ACS [coil, kx, lines] cut to `width` readout points around DC (None: all of them)."""
    points = acs.shape[1]
    if width is None or width >= points:
        return acs
    start = points // 2 - width // 2
    return acs[:, start : start + width]


def signal_subspace(
    calibration: np.ndarray, kernel_width: int, threshold: float
) -> tuple[np.ndarray, int]:
    """Basis [coil k^2, kept] of the calibration matrix's row space, and how many were kept."""
    coils = calibration.shape[0]
    if min(calibration.shape[1:]) < kernel_width:
        raise InvalidScanError(
            f"ESPIRiT needs a calibration block of at least {kernel_width}x{kernel_width}, got "
            f"{calibration.shape[1]}x{calibration.shape[2]}"
        )
    patches = sliding_window_view(calibration, (kernel_width, kernel_width), axis=(1, 2))
    # [coil, px, py, kx, ky] -> rows (px, py), columns (coil, kx, ky)
    matrix = patches.transpose(1, 2, 0, 3, 4).reshape(-1, coils * kernel_width**2)
    gram = matrix.conj().T @ matrix
    power, vectors = np.linalg.eigh(gram.astype(np.complex128))
    power = np.clip(power[::-1], 0.0, None)
    vectors = vectors[:, ::-1]
    kept = int(np.count_nonzero(np.sqrt(power) > threshold * np.sqrt(power[0])))
    return vectors[:, :kept], kept


def _difference_kernels(basis: np.ndarray, coils: int, kernel_width: int) -> np.ndarray:
    """w [coil, coil, 2k - 1, 2k - 1]: P = conj(V V^H) summed along each patch offset t - s."""
    k = kernel_width
    projection = np.conj(basis @ basis.conj().T).reshape(coils, k * k, coils, k * k)
    tx, ty = np.divmod(np.arange(k * k), k)
    dx = tx[:, None] - tx[None, :] + k - 1
    dy = ty[:, None] - ty[None, :] + k - 1
    offsets = dx * (2 * k - 1) + dy
    scatter = np.zeros((k**4, (2 * k - 1) ** 2))
    scatter[np.arange(k**4), offsets.ravel()] = 1.0
    pairs = projection.transpose(0, 2, 1, 3).reshape(coils, coils, k**4)
    return (pairs @ scatter).reshape(coils, coils, 2 * k - 1, 2 * k - 1)


def _phase_ramps(size: int, kernel_width: int, device: torch.device | str) -> torch.Tensor:
    """exp(2 pi i m r / size) [r, m] for centred image positions r and kernel offsets m."""
    positions = torch.arange(size, dtype=torch.float64) - size // 2
    offsets = torch.arange(2 * kernel_width - 1, dtype=torch.float64) - (kernel_width - 1)
    angles = 2 * torch.pi * positions[:, None] * offsets[None, :] / size
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)


def voxel_operators(
    basis: np.ndarray,
    coils: int,
    kernel_width: int,
    matrix: tuple[int, int],
    device: torch.device | str = "cpu",
) -> Iterator[tuple[slice, torch.Tensor]]:
    """G [rows, ky, coil, coil] for successive blocks of readout rows of a `matrix` image.

    G(r) is the inverse DFT of the (2k - 1)^2 kernels w at r, a separable sum over their few
    offsets: two small matrix products instead of C^2 FFTs of the whole image, a block of
    rows at a time so that memory stays bounded (`VOXEL_BATCH_ENTRIES`).
    """
    k = kernel_width
    if min(matrix) < 2 * k - 1:
        raise InvalidScanError(f"ESPIRiT kernels of width {k} need an image of {2 * k - 1}+")
    kernels = torch.from_numpy(_difference_kernels(basis, coils, k) / (k * k))
    kernels = kernels.to(torch.complex64).to(device)
    # [offset x, coil, coil, ky]: the sum over ky offsets done once for every row.
    along_ky = torch.einsum("cdab,yb->acdy", kernels, _phase_ramps(matrix[1], k, device))
    along_ky = along_ky.reshape(2 * k - 1, -1)
    ramps_x = _phase_ramps(matrix[0], k, device)
    rows = max(1, VOXEL_BATCH_ENTRIES // (matrix[1] * coils * coils))
    for start in range(0, matrix[0], rows):
        block = slice(start, min(start + rows, matrix[0]))
        operator = (ramps_x[block] @ along_ky).reshape(-1, coils, coils, matrix[1])
        yield block, operator.permute(0, 3, 1, 2)


def voxel_eigh(operators: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eigh of a batch of small Hermitian matrices [..., C, C] (one triangle read).

    On CPUs torch runs a batch of small eigendecompositions on one thread; torch releases the
    GIL inside, so chunks on a pool of torch's thread count run in parallel (1.6x at two
    threads for 16 x 16 matrices, 130 000 voxels).
    """
    workers = torch.get_num_threads()
    if operators.device.type != "cpu" or workers < 2 or operators.shape[0] < 2 * workers:
        return torch.linalg.eigh(operators)
    chunks = operators.chunk(workers * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(torch.linalg.eigh, chunks))
    return torch.cat([v for v, _ in parts]), torch.cat([u for _, u in parts])


def noise_level(acs: np.ndarray, basis: np.ndarray, kernel_width: int) -> float:
    """Noise standard deviation per k-space sample, from the calibration matrix's null space.

    Every patch of the whole ACS block (all readout points) is split into its part in the
    signal subspace `basis` and the rest; the rest is noise alone, spread evenly over the
    null space's dimensions, so sigma^2 = ||A (I - V V^H)||^2 / (patches x null dimensions).
    Unlike the outer k-space corners, it holds no signal on phantoms with sharp edges.
    """
    coils = acs.shape[0]
    columns = coils * kernel_width**2
    null_dimensions = columns - basis.shape[1]
    if null_dimensions <= 0:
        return 0.0
    patches = sliding_window_view(acs, (kernel_width, kernel_width), axis=(1, 2))
    matrix = patches.transpose(1, 2, 0, 3, 4).reshape(-1, columns).astype(np.complex64)
    total = float(np.sum(np.abs(matrix) ** 2))
    signal = float(np.sum(np.abs(matrix @ basis.astype(np.complex64)) ** 2))
    return float(np.sqrt(max(total - signal, 0.0) / (matrix.shape[0] * null_dimensions)))


def body_coil_weights(acs: np.ndarray) -> np.ndarray:
    """The coils' principal direction on the ACS [coil]: a virtual coil that sees everywhere."""
    flat = acs.reshape(acs.shape[0], -1).astype(np.complex128)
    left, _, _ = np.linalg.svd(flat, full_matrices=False)
    return left[:, 0]


def clear_maps_cache() -> None:
    """Forget every kept calibration (benchmarks time each method from a cold start)."""
    _cache.clear()


def _fingerprint(value: object) -> object:
    """A hashable stand-in for an argument: arrays by their bytes, shape and type."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return (hashlib.sha256(data.view(np.uint8)).hexdigest(), data.shape, str(data.dtype))
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(item) for item in value)
    return str(value) if isinstance(value, torch.device) else value


def _remembered(function: Callable[..., EspiritMaps]) -> Callable[..., EspiritMaps]:
    """`function` with its last `CACHED_MAPS` results kept, keyed by every argument (arrays by
    content); the maps it returns are made read-only, since callers share them."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def remembered(*args: object, **kwargs: object) -> EspiritMaps:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple((name, _fingerprint(value)) for name, value in bound.arguments.items())
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        found = function(*args, **kwargs)
        for array in (found.maps, found.eigenvalues):
            array.flags.writeable = False
        _cache[key] = found
        while len(_cache) > CACHED_MAPS:
            _cache.popitem(last=False)
        return found

    return remembered


@_remembered
@single_threaded_blas()
def espirit_maps(
    acs: np.ndarray,
    matrix: tuple[int, int],
    *,
    kernel_width: int = DEFAULT_KERNEL_WIDTH,
    threshold: float = DEFAULT_THRESHOLD,
    crop: float = DEFAULT_CROP,
    calibration_width: int | None = DEFAULT_CALIBRATION_WIDTH,
    max_sets: int = 2,
    device: torch.device | str = "cpu",
) -> EspiritMaps:
    """ESPIRiT maps of one slice from its ACS [coil, kx, lines] for an image of `matrix`.

    `max_sets` = 1 or 2; the second set is kept only where the FOV wraps
    (`SECOND_SET_FRACTION`). Maps are zero where their eigenvalue is below `crop`. The last
    `CACHED_MAPS` results are kept (`_remembered`).
    """
    if max_sets not in (1, 2):
        raise InvalidScanError(f"ESPIRiT gives one or two map sets, not {max_sets}")
    coils = acs.shape[0]
    calibration = calibration_block(acs, calibration_width)
    basis, kept = signal_subspace(calibration, kernel_width, threshold)
    sets = min(max_sets, coils)
    values = torch.empty((*matrix, sets), dtype=torch.float32, device=device)
    vectors = torch.empty((*matrix, coils, sets), dtype=torch.complex64, device=device)
    for rows, operator in voxel_operators(basis, coils, kernel_width, matrix, device):
        block_values, block_vectors = voxel_eigh(operator)
        values[rows] = block_values[..., -sets:].flip(-1)
        vectors[rows] = block_vectors[..., -sets:].flip(-1)
    values = values.permute(2, 0, 1).cpu().numpy()
    maps = vectors.permute(3, 2, 0, 1).cpu().numpy()
    body = body_coil_weights(calibration)
    projected = np.einsum("c,scxy->sxy", body.conj(), maps)
    maps = maps * np.exp(-1j * np.angle(projected))[:, None]
    maps = maps * (values > crop)[:, None]
    if sets == 2:
        first = values[0] > crop
        second = values[1] > crop
        if np.count_nonzero(second) < SECOND_SET_FRACTION * max(np.count_nonzero(first), 1):
            maps, values = maps[:1], values[:1]
    return EspiritMaps(
        maps=np.ascontiguousarray(maps, dtype=np.complex64),
        eigenvalues=np.ascontiguousarray(values, dtype=np.float32),
        kernels=kept,
        noise_level=noise_level(acs, basis, kernel_width),
    )


def scan_maps(scan: Scan, **options: object) -> list[EspiritMaps]:
    """`espirit_maps` of every slice of `scan`, from its ACS block."""
    acs = scan.acs_kspace()
    return [espirit_maps(acs[index], scan.matrix, **options) for index in range(scan.num_slices)]
