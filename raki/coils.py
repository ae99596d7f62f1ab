"""SVD coil compression: fewer virtual coils for RAKI, expanded back to the physical coils.

RAKI's first layer reads 2 Nc channels and feeds 2 Nc networks of 32 channels, so its cost grows
with Nc^2. The coils of an array are strongly correlated: the singular value decomposition of the
calibration data, A = U S V^H with A the ACS as [coil, kx x lines], concentrates the signal in a
few left singular vectors (Buehrer et al., MRM 2007; Huang et al., MRI 2008). Virtual coils are
U_N^H x for the N leading vectors; N is the smallest count whose squared singular values hold a
chosen fraction of the ACS energy. The networks are trained and applied on the virtual coils,
and the filled k-space goes back to the physical coils as U_N y; the lines that were acquired are
then put back as measured, so the output keeps the input's coil count and its measured data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raki.errors import InvalidScanError
from raki.scan import Scan

DEFAULT_ENERGY = 0.995
# Below this many virtual coils the networks lose the coil diversity that fills the gaps.
MIN_VIRTUAL_COILS = 4


@dataclass(frozen=True)
class CoilCompression:
    """Per-slice orthonormal bases [slice, physical coil, virtual coil] and what they keep."""

    bases: np.ndarray
    energy_kept: tuple[float, ...]
    energy_target: float

    @property
    def num_physical(self) -> int:
        return int(self.bases.shape[1])

    @property
    def num_virtual(self) -> int:
        return int(self.bases.shape[2])

    def compress(self, kspace: np.ndarray) -> np.ndarray:
        """Physical [slice, coil, kx, ky] -> virtual [slice, N, kx, ky] (U^H x)."""
        flat = kspace.reshape(*kspace.shape[:2], -1)
        virtual = np.matmul(self.bases.conj().transpose(0, 2, 1), flat)
        return np.ascontiguousarray(virtual.reshape(-1, self.num_virtual, *kspace.shape[2:]))

    def expand(self, kspace: np.ndarray, slices: slice = slice(None)) -> np.ndarray:
        """Virtual [slice, N, kx, ky] -> physical [slice, coil, kx, ky] (U y), bases[slices]."""
        physical = np.matmul(self.bases[slices], kspace.reshape(*kspace.shape[:2], -1))
        return np.ascontiguousarray(physical.reshape(-1, self.num_physical, *kspace.shape[2:]))

    def as_dict(self) -> dict[str, object]:
        """Facts for logs and ReconResult.details (not the bases themselves)."""
        return {
            "physical_coils": self.num_physical,
            "virtual_coils": self.num_virtual,
            "energy_target": self.energy_target,
            "energy_kept": list(self.energy_kept),
        }


def virtual_coil_count(singular_values: np.ndarray, energy: float) -> int:
    """Smallest N whose leading squared singular values hold `energy` of the total."""
    power = np.asarray(singular_values, dtype=np.float64) ** 2
    total = power.sum()
    if total <= 0:
        return power.size
    cumulative = np.cumsum(power) / total
    return int(min(np.searchsorted(cumulative, energy - 1e-12) + 1, power.size))


def fit_compression(
    acs: np.ndarray,
    energy: float = DEFAULT_ENERGY,
    *,
    num_virtual: int | None = None,
    min_virtual: int = MIN_VIRTUAL_COILS,
) -> CoilCompression:
    """Bases from each slice's ACS [slice, coil, kx, lines]; one N for all slices (the largest).

    `num_virtual` fixes N instead of choosing it from `energy`.
    """
    if not 0.0 < energy <= 1.0:
        raise InvalidScanError(f"coil compression energy must be in (0, 1], got {energy}")
    slices, coils = acs.shape[:2]
    vectors, powers = [], []
    for index in range(slices):
        matrix = acs[index].reshape(coils, -1).astype(np.complex128)
        left, values, _ = np.linalg.svd(matrix, full_matrices=False)
        vectors.append(left)
        powers.append(values**2)
    if num_virtual is None:
        counts = [virtual_coil_count(np.sqrt(power), energy) for power in powers]
        num_virtual = max(max(counts), min(min_virtual, coils))
    if not 1 <= num_virtual <= coils:
        raise InvalidScanError(f"cannot compress {coils} coils to {num_virtual} virtual coils")
    kept = tuple(
        float(power[:num_virtual].sum() / power.sum()) if power.sum() > 0 else 1.0
        for power in powers
    )
    bases = np.stack([left[:, :num_virtual] for left in vectors]).astype(np.complex64)
    return CoilCompression(bases=bases, energy_kept=kept, energy_target=energy)


def compress_scan(scan: Scan, compression: CoilCompression) -> Scan:
    """The scan on virtual coils: same sampling, ACS and geometry, N coils."""
    if compression.num_physical != scan.num_coils or compression.bases.shape[0] != (
        scan.num_slices
    ):
        raise InvalidScanError(
            f"coil compression fits {compression.bases.shape[0]} slice(s) of "
            f"{compression.num_physical} coils, the scan has {scan.num_slices} of {scan.num_coils}"
        )
    return scan.replace(kspace=compression.compress(scan.kspace))
