"""Centred, orthonormal 2D FFTs over (kx, ky) and root-sum-of-squares coil combination.

fastMRI's convention: k-space has DC in the middle, images are centred, and the transform is
unitary, so that image and k-space norms agree and the RSS image is on the k-space's scale.
"""

from __future__ import annotations

import numpy as np

AXES = (-2, -1)


def ifftc(kspace: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Centred orthonormal inverse FFT over `axes`."""
    shifted = np.fft.ifftshift(kspace, axes=axes)
    return np.fft.fftshift(np.fft.ifftn(shifted, axes=axes, norm="ortho"), axes=axes)


def fftc(image: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Centred orthonormal forward FFT over `axes`."""
    shifted = np.fft.ifftshift(image, axes=axes)
    return np.fft.fftshift(np.fft.fftn(shifted, axes=axes, norm="ortho"), axes=axes)


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse FFT over the last two axes (kx, ky)."""
    return ifftc(kspace, AXES)


def fft2c(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal forward FFT over the last two axes (x, y)."""
    return fftc(image, AXES)


def rss(coil_images: np.ndarray, coil_axis: int = -3) -> np.ndarray:
    """Root-sum-of-squares magnitude over the coil axis."""
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=coil_axis))


def rss_image(kspace: np.ndarray) -> np.ndarray:
    """RSS magnitude image [slice, kx, ky] float32 of k-space [slice, coil, kx, ky]."""
    return rss(ifft2c(kspace)).astype(np.float32)
