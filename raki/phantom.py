"""A multi-coil brain-like phantom for tests and the demo, deterministic from a seed.

Not a substitute for scanner data (see docs/benchmarks.md for that), but it has what makes
parallel imaging hard: smooth background phase, localised coil sensitivities from a birdcage-like
array (two rings beyond 8 coils, so the maps change across slices) and complex noise that is
correlated between neighbouring coils at a chosen SNR.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from raki.fft import fft2c, ifft2c
from raki.scan import Geometry, Scan

# Ellipses (intensity, semi-axis x, semi-axis y, centre x, centre y, rotation in degrees), in a
# head of unit radius, long axis along the readout: skull, brain, ventricles and small lesions,
# as in Shepp and Logan's head.
_HEAD_ELLIPSES = (
    (1.00, 0.92, 0.69, 0.00, 0.00, 0.0),
    (-0.75, 0.87, 0.66, -0.02, 0.00, 0.0),
    (-0.20, 0.31, 0.11, 0.00, 0.22, -18.0),
    (-0.20, 0.41, 0.16, 0.00, -0.22, 18.0),
    (0.15, 0.25, 0.21, 0.35, 0.00, 0.0),
    (0.12, 0.05, 0.05, 0.10, 0.00, 0.0),
    (0.12, 0.05, 0.05, -0.10, 0.00, 0.0),
    (0.10, 0.02, 0.05, -0.60, -0.08, 0.0),
    (0.10, 0.02, 0.02, -0.61, 0.00, 0.0),
    (0.10, 0.05, 0.02, -0.60, 0.06, 0.0),
)
_FULL_SCALE = 1000.0
PIXEL_MM = 1.0
SLICE_THICKNESS_MM = 3.0


def _grid(matrix: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Square-pixel coordinates with the shorter side spanning [-1.05, 1.05): the head fits."""
    step = 2.1 / min(matrix)
    x = (np.arange(matrix[0]) - matrix[0] / 2) * step
    y = (np.arange(matrix[1]) - matrix[1] / 2) * step
    return np.meshgrid(x, y, indexing="ij")


def anatomy(matrix: tuple[int, int], z: float = 0.0, rng: np.random.Generator | None = None):
    """Magnitude image [kx, ky] of the head at normalised slab position z in [-1, 1]."""
    x, y = _grid(matrix)
    shrink = np.sqrt(max(1.0 - 0.5 * z * z, 0.2))
    image = np.zeros(matrix)
    for intensity, a, b, cx, cy, degrees in _HEAD_ELLIPSES:
        theta = np.deg2rad(degrees)
        xr = (x - cx * shrink) * np.cos(theta) + (y - cy * shrink) * np.sin(theta)
        yr = -(x - cx * shrink) * np.sin(theta) + (y - cy * shrink) * np.cos(theta)
        image[(xr / (a * shrink)) ** 2 + (yr / (b * shrink)) ** 2 <= 1.0] += intensity
    if rng is not None:
        # Gentle texture: low-pass random field, so that images are not piecewise constant.
        texture = np.real(fft2c(rng.standard_normal(matrix) * _low_pass(matrix, 0.15)))
        texture /= np.abs(texture).max() + 1e-12
        image *= 1.0 + 0.1 * texture * (image > 0)
    return image


def _low_pass(matrix: tuple[int, int], width: float) -> np.ndarray:
    kx = np.linspace(-1, 1, matrix[0])[:, None]
    ky = np.linspace(-1, 1, matrix[1])[None, :]
    return np.exp(-(kx**2 + ky**2) / (2 * width**2))


def smooth_phase(matrix: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A low-order polynomial phase map, like B0 and receive phase in a real scan."""
    x, y = _grid(matrix)
    a, b, c, d = rng.uniform(-1.0, 1.0, size=4)
    return np.pi * (0.4 * a * x + 0.4 * b * y + 0.3 * c * x * y + 0.3 * d * (x**2 + y**2))


def coil_sensitivities(num_coils: int, matrix: tuple[int, int], z: float = 0.0) -> np.ndarray:
    """Complex sensitivities [coil, kx, ky] of loops around the head, normalised to RSS 1.

    Each coil's field falls off with distance and turns in phase with the angle around it, as a
    line current's field does; beyond 8 coils the loops sit in two rings offset along z.
    """
    x, y = _grid(matrix)
    rings = 1 if num_coils <= 8 else 2
    maps = np.empty((num_coils, *matrix), dtype=np.complex128)
    for coil in range(num_coils):
        ring = coil % rings
        angle = 2 * np.pi * (coil // rings) / int(np.ceil(num_coils / rings)) + 0.3 * ring
        coil_z = 0.0 if rings == 1 else (0.5 if ring else -0.5)
        dx, dy, dz = x - 1.4 * np.cos(angle), y - 1.4 * np.sin(angle), z - coil_z
        distance = np.sqrt(dx**2 + dy**2 + dz**2)
        maps[coil] = np.exp(1j * (np.arctan2(dy, dx) - angle)) / distance
    return maps / np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))


def noise_covariance(num_coils: int, correlation: float) -> np.ndarray:
    """Coil noise covariance with correlation decaying with coil distance around the ring."""
    index = np.arange(num_coils)
    separation = np.abs(index[:, None] - index[None, :])
    separation = np.minimum(separation, num_coils - separation)
    return correlation**separation


def coil_noise(
    shape: tuple[int, ...], sigma: float, correlation: float, rng: np.random.Generator
) -> np.ndarray:
    """Complex noise [slice, coil, kx, ky] of standard deviation sigma per coil, correlated
    between neighbouring coils (`noise_covariance`)."""
    mixing = np.linalg.cholesky(noise_covariance(shape[1], correlation))
    white = rng.standard_normal((2, *shape))
    white = (white[0] + 1j * white[1]) * (sigma / np.sqrt(2))
    return np.einsum("ij,sjxy->sixy", mixing, white)


def simulate_scan(
    matrix: tuple[int, int] = (128, 96),
    num_coils: int = 8,
    num_slices: int = 1,
    snr: float = 50.0,
    seed: int = 0,
    noise_correlation: float = 0.2,
    finer: int = 1,
) -> Scan:
    """A fully sampled phantom Scan, k-space [slice, coil, kx, ky] complex64.

    `snr` is the mean RSS magnitude inside the head divided by the RSS magnitude of noise alone
    (each coil's complex noise has standard deviation mean_rss / (snr * sqrt(coils))).
    `snr=inf` gives noiseless data. With `finer` = 1 the k-space is one period of the DFT of
    an image on the matrix (as most simulations make it); with `finer` = f > 1 the coil images
    are drawn on a grid f times finer and their spectrum is cut to the matrix's window, as a
    scanner measures a window of a continuous object's spectrum (its edges do not wrap).
    """
    if num_coils < 1 or num_slices < 1 or min(matrix) < 8:
        raise ValueError("a phantom needs at least 1 coil, 1 slice and an 8x8 matrix")
    if finer < 1:
        raise ValueError(f"finer is a whole factor of at least 1, not {finer}")
    if finer > 1:
        return _windowed(matrix, num_coils, num_slices, snr, seed, noise_correlation, finer)
    rng = np.random.default_rng(seed)
    matrix = (int(matrix[0]), int(matrix[1]))
    slab_positions = np.linspace(-0.6, 0.6, num_slices) if num_slices > 1 else np.zeros(1)
    images = np.empty((num_slices, num_coils, *matrix), dtype=np.complex128)
    inside = np.empty((num_slices, *matrix), dtype=bool)
    for index, z in enumerate(slab_positions):
        magnitude = anatomy(matrix, float(z), rng) * _FULL_SCALE
        inside[index] = magnitude > 0
        image = magnitude * np.exp(1j * smooth_phase(matrix, rng))
        images[index] = coil_sensitivities(num_coils, matrix, float(z)) * image
    kspace = fft2c(images)
    if np.isfinite(snr):
        mean_rss = np.sqrt(np.sum(np.abs(images) ** 2, axis=1))[inside].mean()
        sigma = mean_rss / (snr * np.sqrt(num_coils))
        kspace += coil_noise(kspace.shape, sigma, noise_correlation, rng)
    thickness = SLICE_THICKNESS_MM
    positions = tuple(
        (0.0, 0.0, float((i - (num_slices - 1) / 2) * thickness)) for i in range(num_slices)
    )
    geometry = Geometry(
        fov_mm=(matrix[0] * PIXEL_MM, matrix[1] * PIXEL_MM, num_slices * thickness),
        slice_thickness_mm=thickness,
        slice_positions_mm=positions,
        # Axial, readout anterior-posterior and phase left-right: upright in a viewer.
        read_dir=(0.0, 1.0, 0.0),
        phase_dir=(1.0, 0.0, 0.0),
        slice_dir=(0.0, 0.0, 1.0),
    )
    return Scan.from_kspace(
        kspace.astype(np.complex64),
        np.ones(matrix[1], dtype=bool),
        geometry=geometry,
        protocol="phantom",
    )


def _windowed(
    matrix: tuple[int, int],
    num_coils: int,
    num_slices: int,
    snr: float,
    seed: int,
    noise_correlation: float,
    finer: int,
) -> Scan:
    """`simulate_scan` drawn `finer` times finer, its spectrum cut to `matrix`, noise added on
    the matrix at the same SNR (the noise-free part is a band-limited object's)."""
    fine_matrix = (int(matrix[0]) * finer, int(matrix[1]) * finer)
    fine = simulate_scan(fine_matrix, num_coils, num_slices, np.inf, seed, noise_correlation)
    window = tuple(slice(n * finer // 2 - n // 2, n * finer // 2 - n // 2 + n) for n in matrix)
    # Orthonormal FFTs: the coarse grid's samples are the fine grid's / finer per axis.
    kspace = fine.kspace[..., window[0], window[1]].astype(np.complex128) / finer
    if np.isfinite(snr):
        rng = np.random.default_rng(seed + 1)
        images = ifft2c(kspace)
        rss_magnitude = np.sqrt(np.sum(np.abs(images) ** 2, axis=1))
        inside = rss_magnitude > 0.1 * rss_magnitude.max()
        sigma = rss_magnitude[inside].mean() / (snr * np.sqrt(num_coils))
        kspace = kspace + coil_noise(kspace.shape, sigma, noise_correlation, rng)
    slab = fine.geometry.fov_mm[2] if fine.geometry.fov_mm else num_slices * SLICE_THICKNESS_MM
    geometry = replace(fine.geometry, fov_mm=(matrix[0] * PIXEL_MM, matrix[1] * PIXEL_MM, slab))
    return Scan.from_kspace(
        kspace.astype(np.complex64),
        np.ones(matrix[1], dtype=bool),
        geometry=geometry,
        protocol="phantom",
    )
