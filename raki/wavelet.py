"""Orthogonal 2D Daubechies wavelet transforms on torch, as matrix products (periodic borders).

One level of a periodic orthogonal wavelet transform along an axis of n points is an n x n
orthogonal matrix: n/2 rows of the low-pass filter h shifted by two, then n/2 rows of the
high-pass g[k] = (-1)^k h[K - 1 - k] (Daubechies, "Ten lectures on wavelets", 1992). The 2D
transform applies it to rows and columns of the low-low block at every level (Mallat's
pyramid), so analysis and synthesis are small matrix products that run wherever torch runs,
and synthesis is exactly the adjoint (and inverse) of analysis.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_SQRT3 = math.sqrt(3.0)
# Low-pass (scaling) filters, normalised to sum sqrt(2), in the order h[0] .. h[K - 1].
DAUBECHIES = {
    "db1": (1 / math.sqrt(2), 1 / math.sqrt(2)),
    "db2": tuple(v / (4 * math.sqrt(2)) for v in (1 + _SQRT3, 3 + _SQRT3, 3 - _SQRT3, 1 - _SQRT3)),
    "db4": (
        0.2303778133088965,
        0.7148465705529157,
        0.6308807679298589,
        -0.027983769416859854,
        -0.18703481171909309,
        0.030841381835560764,
        0.0328830116668852,
        -0.010597401785069032,
    ),
}
MAX_LEVELS = 4


def level_matrix(size: int, lowpass: tuple[float, ...]) -> np.ndarray:
    """One periodic analysis level along `size` (even) points: [size, size], orthogonal."""
    taps = len(lowpass)
    highpass = [(-1) ** k * lowpass[taps - 1 - k] for k in range(taps)]
    half = size // 2
    matrix = np.zeros((size, size))
    for row in range(half):
        for k in range(taps):
            column = (2 * row + k) % size
            matrix[row, column] += lowpass[k]
            matrix[half + row, column] += highpass[k]
    return matrix


def possible_levels(size: int, taps: int) -> int:
    """How many times `size` halves into even blocks no shorter than the filter."""
    levels = 0
    while size % 2 == 0 and size // 2 >= taps and levels < MAX_LEVELS:
        size //= 2
        levels += 1
    return levels


def _apply(
    planes: torch.Tensor,
    size: tuple[int, int],
    rows: torch.Tensor | None,
    columns: torch.Tensor | None,
) -> None:
    """planes[..., :nx, :ny] = rows @ block @ columns^T (None: that axis untouched), on the
    real and imaginary planes [..., 2, x, y] alike: two plain real matrix products."""
    nx, ny = size
    block = planes[..., :nx, :ny]
    if rows is not None:
        block = rows @ block
    if columns is not None:
        block = block @ columns.T
    planes[..., :nx, :ny] = block


def _planes(image: torch.Tensor) -> torch.Tensor:
    """Complex [..., x, y] -> its real and imaginary planes [..., 2, x, y] (a copy)."""
    return torch.view_as_real(image).movedim(-1, -3).contiguous()


def _complex(planes: torch.Tensor) -> torch.Tensor:
    """Planes [..., 2, x, y] -> complex [..., x, y]."""
    return torch.view_as_complex(planes.movedim(-3, -1).contiguous())


class Wavelet2d:
    """Orthogonal 2D wavelet transform of complex images [..., x, y] on a device.

    The matrices are real, so they act on the real and imaginary parts as one real product
    (a complex matrix product is several times slower on CPUs). An axis whose length cannot
    be halved again (odd, or shorter than two filters) is left as it is at the levels beyond;
    an image that neither axis can halve has no wavelet levels, and then every pixel counts as
    a detail coefficient (the L1 norm of the image itself).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        name: str = "db2",
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if name not in DAUBECHIES:
            raise ValueError(f"unknown wavelet {name!r}; choose one of {', '.join(DAUBECHIES)}")
        lowpass = DAUBECHIES[name]
        self.shape = (int(shape[0]), int(shape[1]))
        axis_levels = [possible_levels(n, len(lowpass)) for n in self.shape]
        self.levels = max(axis_levels)
        self._levels: list[tuple[tuple[int, int], torch.Tensor | None, torch.Tensor | None]] = []
        sizes = self.shape
        for level in range(self.levels):
            rows, columns = (
                torch.tensor(level_matrix(n, lowpass), dtype=dtype, device=device)
                if level < levels
                else None
                for n, levels in zip(sizes, axis_levels, strict=True)
            )
            self._levels.append((sizes, rows, columns))
            sizes = tuple(
                n // 2 if level < levels else n
                for n, levels in zip(sizes, axis_levels, strict=True)
            )
        self.coarse_shape = sizes if self.levels else (0, 0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Coefficients in Mallat's layout, the coarsest approximation top-left."""
        planes = _planes(image)
        for size, rows, columns in self._levels:
            _apply(planes, size, rows, columns)
        return _complex(planes)

    def inverse(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The image whose `forward` is `coefficients`: the adjoint (orthogonal levels)."""
        planes = _planes(coefficients)
        for size, rows, columns in reversed(self._levels):
            _apply(
                planes,
                size,
                None if rows is None else rows.T,
                None if columns is None else columns.T,
            )
        return _complex(planes)

    def detail_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """bool [x, y]: the detail coefficients (everything but the coarsest approximation)."""
        mask = torch.ones(self.shape, dtype=torch.bool, device=device)
        mask[: self.coarse_shape[0], : self.coarse_shape[1]] = False
        return mask
