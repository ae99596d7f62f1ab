"""The SENSE forward model of one slice, on an image grid that may extend past the measured
k-space.

A x = M C F sum_s S_s x_s takes an image of one component per ESPIRiT map set, x [set, X, Y],
to the acquired k-space of every coil: S_s [coil, X, Y] the maps, F the centred orthonormal
2D FFT, C the crop of the grid's k-space to the measured matrix and M the sampling mask. On the
measured matrix itself (the "measured" grid, C = I) the model is periodic: F S x is a circular
convolution of the maps' spectrum with the image's, so a spectrum still strong at the edge of
the measured window is wrapped onto the opposite edge. A scanner measures a window of a
continuous object's spectrum, and nothing wraps there: the "extended" grid (`GRID_EXTENSION`
larger per axis, the same field of view in finer pixels) leaves the spectrum beyond the window
to the prior (`raki.sense`). k-space made by an FFT of an image is exactly periodic and wants
the measured grid; `raki.selection` tests both.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from raki.errors import InvalidScanError
from raki.method_names import CS_GRIDS

# The image is reconstructed on a grid this fraction larger per axis than the measured matrix
# (`extended_matrix`). A scanner measures a window of the object's spectrum, not one period
# of it: where the spectrum is cut off at the k-space edge with signal still there (as in the
# shared 16-coil brains), the periodic model A x = M F S x wraps the edge's k-space onto the
# opposite edge and the unfolding and the prior both pay for it. Measured on the grid of
# docs/benchmarks.md ("cs on an extended grid").
GRID_EXTENSION = 0.125
DEFAULT_GRID = "extended"


@functools.lru_cache(maxsize=16)
def _checkerboard(nx: int, ny: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(-1)^(x + y) [x, y] and the same times (-1)^(nx/2 + ny/2): an even-sized FFT's centring
    shifts as signs on its input and its output."""
    x = torch.arange(nx, device=device)[:, None]
    y = torch.arange(ny, device=device)[None, :]
    signs = (1 - 2 * ((x + y) % 2)).to(torch.float32)
    return signs, signs * (1 - 2 * ((nx // 2 + ny // 2) % 2))


def _centred(transform: Callable[..., torch.Tensor], data: torch.Tensor) -> torch.Tensor:
    """fftshift(transform(ifftshift(data))): for even sizes, a sign pattern on either side,
    since moving the origin by N/2 multiplies the other domain by (-1)^k (copies of shifted
    arrays cost CPUs several FFTs' time)."""
    nx, ny = data.shape[-2:]
    if nx % 2 or ny % 2:
        shifted = torch.fft.ifftshift(data, dim=(-2, -1))
        return torch.fft.fftshift(transform(shifted, norm="ortho"), dim=(-2, -1))
    before, after = _checkerboard(nx, ny, data.device)
    return transform(data * before, norm="ortho") * after


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes (as `raki.fft.fft2c`)."""
    return _centred(torch.fft.fft2, image)


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2D FFT over the last two axes (as `raki.fft.ifft2c`)."""
    return _centred(torch.fft.ifft2, kspace)


@dataclass(frozen=True)
class SenseOperator:
    """A x = M C F sum_s S_s x_s for one slice: maps [set, coil, X, Y], sampled ky lines [ky]
    (or samples [kx, ky]), C the crop of the grid's k-space to the measured `matrix`.

    With `matrix` None (or the maps' own size) C is the identity: the periodic SENSE model. On
    an extended grid (`extended_matrix`) the image has finer pixels over the same field of
    view, and its spectrum beyond the measured window is left to the prior.
    """

    maps: torch.Tensor
    sampled: torch.Tensor
    matrix: tuple[int, int] | None = None

    @classmethod
    def build(
        cls,
        maps: np.ndarray,
        sampled: np.ndarray,
        device: torch.device | str = "cpu",
        matrix: tuple[int, int] | None = None,
    ) -> SenseOperator:
        maps = np.ascontiguousarray(maps, dtype=np.complex64)
        if not maps.flags.writeable:  # shared (cached) maps: torch wants its own copy
            maps = maps.copy()
        return cls(
            torch.as_tensor(maps, device=device),
            torch.as_tensor(np.asarray(sampled, dtype=bool), device=device),
            None if matrix is None else (int(matrix[0]), int(matrix[1])),
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        sets, _, nx, ny = self.maps.shape
        return (sets, nx, ny)

    def _window(self) -> tuple[slice, slice] | None:
        """Where the measured k-space lies in the grid's (centred) k-space; None: everywhere."""
        grid = self.maps.shape[-2:]
        if self.matrix is None or tuple(grid) == self.matrix:
            return None
        return tuple(
            slice(g // 2 - n // 2, g // 2 - n // 2 + n)
            for g, n in zip(grid, self.matrix, strict=True)
        )

    def coil_images(self, image: torch.Tensor) -> torch.Tensor:
        """sum_s S_s x_s: [coil, X, Y]."""
        return (self.maps * image[:, None]).sum(0)

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """C F S x: every coil's k-space [coil, kx, ky] on the measured matrix."""
        kspace = fft2c(self.coil_images(image))
        window = self._window()
        return kspace if window is None else kspace[..., window[0], window[1]]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.predict(image) * self.sampled

    def adjoint(self, kspace: torch.Tensor) -> torch.Tensor:
        kspace = kspace * self.sampled
        window = self._window()
        if window is not None:
            padded = kspace.new_zeros((*kspace.shape[:-2], *self.maps.shape[-2:]))
            padded[..., window[0], window[1]] = kspace
            kspace = padded
        return (self.maps.conj() * ifft2c(kspace)).sum(1)

    def normal(self, image: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.forward(image))


def _smooth_size(size: int) -> bool:
    """Only the factors 2, 3 and 5 (sizes FFTs and the wavelet's halvings like)."""
    for factor in (2, 3, 5):
        while size % factor == 0:
            size //= factor
    return size == 1


def extended_size(size: int, fraction: float = GRID_EXTENSION) -> int:
    """The smallest size >= size x (1 + fraction), grown by the same number of points on each
    side, with only the factors 2, 3 and 5 and, for even sizes, a multiple of 8 (three
    wavelet levels)."""
    if fraction <= 0:
        return size
    candidate = size + 2 * math.ceil(size * fraction / 2)
    while not (_smooth_size(candidate) and (size % 2 or candidate % 8 == 0)):
        candidate += 2
    return candidate


def extended_matrix(matrix: tuple[int, int], fraction: float = GRID_EXTENSION) -> tuple[int, int]:
    """The reconstruction grid for a measured `matrix`: each axis by `extended_size`."""
    return (extended_size(matrix[0], fraction), extended_size(matrix[1], fraction))


def norm(values: torch.Tensor) -> torch.Tensor:
    """The 2-norm of a complex tensor, over its real and imaginary parts as one real vector
    (torch's complex vector_norm is 40x slower on CPUs: 1.7 ms against 0.04 ms at 360 x 192)."""
    return torch.linalg.vector_norm(torch.view_as_real(values))


def coil_kspace(
    operator: SenseOperator, image: torch.Tensor, measured: torch.Tensor
) -> torch.Tensor:
    """C F S x [coil, kx, ky] with the acquired lines put back as measured (data consistency)."""
    return torch.where(operator.sampled, measured, operator.predict(image))


def grid_matrix(matrix: tuple[int, int], grid: str = DEFAULT_GRID) -> tuple[int, int]:
    """The image grid cs solves on for a measured `matrix`: "extended" (`extended_matrix`) or
    "measured" (the periodic model of the measured matrix itself)."""
    if grid not in CS_GRIDS:
        raise InvalidScanError(f"unknown cs grid {grid!r}; choose one of {', '.join(CS_GRIDS)}")
    return extended_matrix(matrix) if grid == "extended" else matrix
