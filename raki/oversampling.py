"""Readout-oversampling removal: reconstruct the recon FOV only, then put the result back.

Scanners sample the readout with 2x oversampling (fastMRI's 640-point readouts cover twice the
320-point image FOV) to keep aliasing out along x; the outer half of the image holds no anatomy.
Cropping the image to the central part along x is a per-line operation (a 1D inverse FFT along
kx, a crop, a 1D FFT back), so skipped ky lines stay skipped and the sampling pattern, R and ACS
are unchanged, while every readout-wise cost of training and applying RAKI halves.

`restore_readout` brings filled k-space back to the full readout: the predicted lines are
zero-padded in x (nothing is predicted outside the recon FOV) and the acquired lines are taken
from the original k-space as measured, so no measured sample is lost.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raki.errors import InvalidScanError
from raki.fft import fftc, ifftc
from raki.scan import Scan

KX_AXIS = -2
# The outer readout band holds anatomy, not only noise, when it carries more than this many
# times the energy that noise at the level of the outermost acquired lines could put there
# (an upper bound: those lines hold some signal too). Measured ratios: 0.09-0.78 with noise
# alone in the band, 1.7-4.5 with a head reaching into it (docs/benchmarks.md).
OUTER_SIGNAL_RATIO = 1.5


def _ifft_x(kspace: np.ndarray) -> np.ndarray:
    return ifftc(kspace, (KX_AXIS,))


def _fft_x(image: np.ndarray) -> np.ndarray:
    return fftc(image, (KX_AXIS,))


def cropped_readout(readout: int, factor: float) -> int:
    """Readout points kept when removing `factor`-fold oversampling (even, at least 8)."""
    if factor < 1.0:
        raise InvalidScanError(f"readout oversampling must be >= 1, got {factor}")
    if factor == 1.0:
        return readout  # nothing to remove: an odd readout (49) must not lose a point
    kept = round(readout / factor / 2) * 2
    return min(readout, max(kept, 8))


def _centre(readout: int, kept: int) -> slice:
    start = readout // 2 - kept // 2
    return slice(start, start + kept)


def crop_kspace(kspace: np.ndarray, kept: int) -> np.ndarray:
    """k-space [..., kx, ky] of the central `kept` image columns along x (complex64)."""
    image = _ifft_x(kspace)[..., _centre(kspace.shape[KX_AXIS], kept), :]
    return _fft_x(image).astype(np.complex64)


def pad_kspace(kspace: np.ndarray, readout: int) -> np.ndarray:
    """Inverse of `crop_kspace` inside the kept FOV: zero outside it, `readout` points long."""
    image = _ifft_x(kspace)
    padded = np.zeros((*image.shape[:-2], readout, image.shape[-1]), dtype=np.complex128)
    padded[..., _centre(readout, kspace.shape[KX_AXIS]), :] = image
    return _fft_x(padded).astype(np.complex64)


def outer_band_signal_ratio(scan: Scan, factor: float) -> float:
    """Energy of the ACS outside the central 1/factor of the readout FOV, over what white noise
    at the power of the outermost acquired lines would put there: above OUTER_SIGNAL_RATIO the
    band holds anatomy, which removing the oversampling would drop from every predicted line.
    """
    if scan.acs is None:
        return float("inf")
    acs = scan.acs_kspace()
    profile = np.sum(np.abs(_ifft_x(acs)) ** 2, axis=(0, 1, 3))
    kept = cropped_readout(profile.size, factor)
    outer_share = 1.0 - profile[_centre(profile.size, kept)].sum() / max(profile.sum(), 1e-30)
    lines = np.flatnonzero(scan.sampled)
    lines = lines[(lines < scan.acs.start) | (lines >= scan.acs.stop)]
    power = np.mean(np.abs(scan.kspace[..., lines]) ** 2, axis=(0, 1, 2))
    lines, power = lines[power > 0], power[power > 0]  # zero padding is no noise level
    if lines.size == 0:
        return float("inf")
    farthest = np.argsort(-np.abs(lines - scan.matrix[1] / 2))[: max(2, lines.size // 10)]
    acs_energy = float(np.sum(np.abs(acs) ** 2))
    noise_share = (1.0 - kept / profile.size) * float(power[farthest].mean()) * acs.size
    return float(outer_share / max(noise_share / max(acs_energy, 1e-30), 1e-30))


def resolve_oversampling(scan: Scan, requested: float | None) -> float:
    """The factor to remove: `requested`, or the file's own (None), 1 when it does not say."""
    if requested is not None:
        return float(requested)
    return float(scan.geometry.readout_oversampling or 1.0)


def crop_readout(scan: Scan, factor: float) -> Scan:
    """`scan` with `factor`-fold readout oversampling removed; the same Scan if factor is 1."""
    kept = cropped_readout(scan.matrix[0], factor)
    if kept == scan.matrix[0]:
        return scan
    fov = scan.geometry.fov_mm
    if fov is not None:
        fov = (fov[0] * kept / scan.matrix[0], *fov[1:])
    geometry = dataclasses.replace(scan.geometry, fov_mm=fov, readout_oversampling=None)
    return dataclasses.replace(
        scan, kspace=crop_kspace(scan.kspace * scan.sampled, kept), geometry=geometry
    )


def restore_readout(scan: Scan, filled_cropped: np.ndarray) -> np.ndarray:
    """Full-readout k-space: predictions from `filled_cropped`, acquired lines from `scan`."""
    predicted = pad_kspace(filled_cropped, scan.matrix[0])
    return np.where(scan.sampled, scan.kspace, predicted).astype(np.complex64)
