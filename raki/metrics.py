"""Image quality exactly as fastMRI defines it (fastmri/evaluate.py), on magnitude volumes.

All functions take volumes [slice, x, y]. The reference's maximum over the whole volume is the
data range for PSNR and SSIM, SSIM is computed per slice (7x7 uniform window, K1 = 0.01,
K2 = 0.03, sample covariance, as scikit-image's defaults) and averaged over slices.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_volumes(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    if reference.shape != prediction.shape:
        raise ValueError(
            f"shapes differ: reference {reference.shape}, prediction {prediction.shape}"
        )
    if reference.ndim == 2:
        reference, prediction = reference[None], prediction[None]
    if reference.ndim != 3:
        raise ValueError(f"expected volumes [slice, x, y], got shape {reference.shape}")
    return reference, prediction


def nmse(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Normalised mean squared error ||ref - pred||^2 / ||ref||^2 over the whole volume."""
    reference, prediction = _as_volumes(reference, prediction)
    return float(np.linalg.norm(reference - prediction) ** 2 / np.linalg.norm(reference) ** 2)


def psnr(reference: np.ndarray, prediction: np.ndarray, maxval: float | None = None) -> float:
    """Peak SNR in dB with the reference volume's maximum as the peak."""
    reference, prediction = _as_volumes(reference, prediction)
    peak = float(reference.max()) if maxval is None else float(maxval)
    mse = float(np.mean((reference - prediction) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / mse))


def ssim_slice(reference: np.ndarray, prediction: np.ndarray, data_range: float) -> float:
    """Mean structural similarity of one 2D slice (Wang et al. 2004, scikit-image's defaults)."""
    window_area = SSIM_WINDOW**2
    covariance_norm = window_area / (window_area - 1.0)

    def local_mean(values: np.ndarray) -> np.ndarray:
        return uniform_filter(values, size=SSIM_WINDOW)

    mean_x = local_mean(reference)
    mean_y = local_mean(prediction)
    var_x = covariance_norm * (local_mean(reference * reference) - mean_x * mean_x)
    var_y = covariance_norm * (local_mean(prediction * prediction) - mean_y * mean_y)
    cov_xy = covariance_norm * (local_mean(reference * prediction) - mean_x * mean_y)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    similarity = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    border = (SSIM_WINDOW - 1) // 2
    return float(similarity[border:-border, border:-border].mean())


def ssim(reference: np.ndarray, prediction: np.ndarray, maxval: float | None = None) -> float:
    """SSIM per slice with the volume maximum as data range, averaged over slices."""
    reference, prediction = _as_volumes(reference, prediction)
    if min(reference.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs slices of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    data_range = float(reference.max()) if maxval is None else float(maxval)
    return float(
        np.mean(
            [
                ssim_slice(ref, pred, data_range)
                for ref, pred in zip(reference, prediction, strict=True)
            ]
        )
    )


def evaluate(reference: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """NMSE, PSNR and SSIM of a reconstruction against its fully sampled reference."""
    return {
        "nmse": nmse(reference, prediction),
        "psnr": psnr(reference, prediction),
        "ssim": ssim(reference, prediction),
    }
