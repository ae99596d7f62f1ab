"""The Scan: one multi-coil Cartesian acquisition, validated when built.

Every stage (readers, sampling, GRAPPA, RAKI, outputs) speaks this one type. Patient and study
identifiers live in their own record so that `Scan.deidentified()` can drop them in one step and
`Scan.summary()` never includes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from raki.errors import InvalidScanError
from raki.sampling import (
    AcsBlock,
    centred_acs_block,
    describe_sampling,
    equispaced_mask,
    infer_acceleration,
    is_equispaced,
    rounded_spacing_mask,
    undersample,
)

Vector3 = tuple[float, float, float]
# "lattice": every R-th line; "fastmri": fastMRI's equispaced masks (rounded wider spacing).
UNDERSAMPLING_SPACINGS = ("lattice", "fastmri")


@dataclass(frozen=True)
class Geometry:
    """Where the scan sits in the patient, in millimetres and DICOM patient (LPS) coordinates.

    Fields are None where the source file does not say. `fov_mm` is (readout, phase, slab);
    `slice_positions_mm` holds the centre of each slice.
    """

    fov_mm: Vector3 | None = None
    slice_thickness_mm: float | None = None
    slice_positions_mm: tuple[Vector3, ...] | None = None
    read_dir: Vector3 | None = None
    phase_dir: Vector3 | None = None
    slice_dir: Vector3 | None = None
    # Encoded over recon readout points (2.0 for fastMRI's 640 -> 320), when the header says.
    readout_oversampling: float | None = None

    def resolution_mm(self, matrix: tuple[int, int]) -> tuple[float, float] | None:
        """In-plane pixel size (readout, phase) for a matrix, when the FOV is known."""
        if self.fov_mm is None:
            return None
        return (self.fov_mm[0] / matrix[0], self.fov_mm[1] / matrix[1])


@dataclass(frozen=True)
class Identifiers:
    """Patient and study identifiers, kept apart from the data so that they can be stripped."""

    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_instance_uid: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    accession_number: str | None = None
    institution_name: str | None = None

    @property
    def is_empty(self) -> bool:
        return all(value is None for value in dataclasses.astuple(self))


def _check_shape(kspace: np.ndarray) -> None:
    """InvalidScanError unless k-space is [slice, coil, kx, ky] with none of them empty."""
    if kspace.ndim != 4:
        raise InvalidScanError(
            f"k-space must have 4 axes [slice, coil, kx, ky], got {kspace.ndim} "
            f"(shape {kspace.shape})"
        )
    if min(kspace.shape) == 0:
        empty = ("slices", "coils", "readout points", "ky lines")[kspace.shape.index(0)]
        raise InvalidScanError(f"k-space has no {empty} (shape {kspace.shape})")


@dataclass(frozen=True, eq=False)
class Scan:
    """k-space [slice, coil, kx (readout), ky (phase encode)] complex64 and how it was sampled.

    `sampled` is the boolean ky mask of acquired lines (skipped lines in `kspace` are zero or
    ignored), `acs` the fully sampled calibration block, `acceleration` the nominal R.
    Build with `Scan.from_kspace` to infer the sampling from a mask or from zero lines.
    """

    kspace: np.ndarray
    sampled: np.ndarray
    acs: AcsBlock | None
    acceleration: int
    geometry: Geometry = field(default_factory=Geometry)
    protocol: str = ""
    identifiers: Identifiers = field(default_factory=Identifiers)

    def __post_init__(self) -> None:
        kspace = np.asarray(self.kspace)
        _check_shape(kspace)
        if not np.iscomplexobj(kspace):
            raise InvalidScanError(f"k-space must be complex, got {kspace.dtype}")
        kspace = kspace.astype(np.complex64, copy=False)
        if not np.isfinite(kspace.view(np.float32)).all():
            raise InvalidScanError("k-space holds NaN or infinite values")
        sampled = np.asarray(self.sampled)
        if sampled.shape != (kspace.shape[-1],):
            raise InvalidScanError(
                f"sampling mask has shape {sampled.shape}, expected ({kspace.shape[-1]},) "
                "to match the ky axis"
            )
        sampled = sampled.astype(bool, copy=False)
        if not sampled.any():
            raise InvalidScanError("sampling mask is empty: no ky line is acquired")
        if self.acceleration < 1:
            raise InvalidScanError(f"acceleration must be >= 1, got {self.acceleration}")
        if self.acs is not None:
            if not 0 <= self.acs.start < self.acs.stop <= sampled.size:
                raise InvalidScanError(
                    f"ACS block [{self.acs.start}, {self.acs.stop}) lies outside the "
                    f"{sampled.size} ky lines"
                )
            if not sampled[self.acs.as_slice()].all():
                raise InvalidScanError("the sampling mask skips lines inside the ACS block")
        # An ACS too small to calibrate on is still a scan (to inspect, convert, zero-fill):
        # each method says what it needs (raki.grappa, raki.train.check_trainable).
        object.__setattr__(self, "kspace", kspace)
        object.__setattr__(self, "sampled", sampled)

    @classmethod
    def from_kspace(
        cls,
        kspace: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        acs: AcsBlock | None = None,
        acceleration: int | None = None,
        geometry: Geometry | None = None,
        protocol: str = "",
        identifiers: Identifiers | None = None,
    ) -> Scan:
        """A Scan whose mask (default: the non-zero ky lines), ACS and R are inferred if absent."""
        kspace = np.asarray(kspace)
        _check_shape(kspace)  # before the mask is inferred from it
        if mask is None:
            mask = np.any(kspace != 0, axis=(0, 1, 2))
        pattern = describe_sampling(np.asarray(mask, dtype=bool))
        return cls(
            kspace=kspace,
            sampled=np.asarray(mask, dtype=bool),
            acs=acs if acs is not None else pattern.acs,
            acceleration=acceleration if acceleration is not None else pattern.acceleration,
            geometry=geometry or Geometry(),
            protocol=protocol,
            identifiers=identifiers or Identifiers(),
        )

    @property
    def num_slices(self) -> int:
        return int(self.kspace.shape[0])

    @property
    def num_coils(self) -> int:
        return int(self.kspace.shape[1])

    @property
    def matrix(self) -> tuple[int, int]:
        """(kx readout points, ky phase-encode lines)."""
        return (int(self.kspace.shape[2]), int(self.kspace.shape[3]))

    @property
    def is_fully_sampled(self) -> bool:
        return bool(self.sampled.all())

    @property
    def is_zero_padded(self) -> bool:
        """Every line of one contiguous block acquired, zeros either side: a reduced phase
        resolution or partial-Fourier acquisition on a larger matrix (fastMRI's knee files),
        not an undersampled one."""
        lines = np.flatnonzero(self.sampled)
        return (
            not self.is_fully_sampled
            and self.acceleration == 1
            and lines.size > 1
            and lines[-1] - lines[0] + 1 == lines.size
        )

    def padding_as_measured(self) -> Scan:
        """This zero-padded scan with its padding taken as measured zeros: fully sampled, so it
        can be undersampled retrospectively and serve as its own reference (same image)."""
        if not self.is_zero_padded:
            raise InvalidScanError("only a zero-padded scan (one block of lines) can be completed")
        every_line = np.ones_like(self.sampled)
        return self.replace(sampled=every_line, acs=AcsBlock(0, every_line.size), acceleration=1)

    @property
    def is_equispaced(self) -> bool:
        return is_equispaced(self.sampled, self.acs, self.acceleration)

    def acs_kspace(self) -> np.ndarray:
        """The calibration block [slice, coil, kx, acs lines]; all of k-space if fully sampled."""
        if self.acs is None:
            if self.is_fully_sampled:
                return self.kspace
            raise InvalidScanError("the scan has no ACS block to calibrate on")
        return self.kspace[..., self.acs.as_slice()]

    def replace(self, **changes: object) -> Scan:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def undersampled(self, acceleration: int, acs_lines: int, *, spacing: str = "lattice") -> Scan:
        """This fully sampled scan retrospectively undersampled: every R-th line plus a centred ACS.

        The ACS block is exactly `acs_lines` long even where a lattice line touches it. With
        `spacing="fastmri"` the mask is made as fastMRI's equispaced masks are
        (`raki.sampling.rounded_spacing_mask`: 1/R of all lines, ACS included, so the outer gaps
        are wider than R and vary by one); the scan's R is then its commonest outer gap.
        """
        if spacing not in UNDERSAMPLING_SPACINGS:
            raise InvalidScanError(
                f"unknown spacing {spacing!r}; choose one of {', '.join(UNDERSAMPLING_SPACINGS)}"
            )
        if self.is_zero_padded:
            return self.padding_as_measured().undersampled(acceleration, acs_lines, spacing=spacing)
        if not self.is_fully_sampled:
            raise InvalidScanError(
                f"only a fully sampled scan can be undersampled retrospectively; this one has "
                f"{int(self.sampled.sum())} of {self.sampled.size} ky lines"
            )
        num_lines = self.matrix[1]
        acs = centred_acs_block(num_lines, acs_lines) if acs_lines > 0 else None
        if spacing == "fastmri":
            mask = rounded_spacing_mask(num_lines, acceleration, acs_lines)
            acceleration = infer_acceleration(mask, acs)
        else:
            mask = equispaced_mask(num_lines, acceleration, acs_lines)
        return self.replace(
            kspace=undersample(self.kspace, mask),
            sampled=mask,
            acs=acs,
            acceleration=acceleration,
        )

    def deidentified(self) -> Scan:
        """The same scan without patient or study identifiers."""
        return self.replace(identifiers=Identifiers())

    def summary(self) -> dict[str, object]:
        """What the scan is, for logs, manifests and `--json`: never any identifier."""
        resolution = self.geometry.resolution_mm(self.matrix)
        return {
            "slices": self.num_slices,
            "coils": self.num_coils,
            "matrix": list(self.matrix),
            "sampled_lines": int(self.sampled.sum()),
            "total_lines": int(self.sampled.size),
            "fully_sampled": self.is_fully_sampled,
            "acceleration": self.acceleration,
            "acs_lines": self.acs.lines if self.acs is not None else 0,
            "acs_range": [self.acs.start, self.acs.stop] if self.acs is not None else None,
            "equispaced": self.is_equispaced,
            "fov_mm": list(self.geometry.fov_mm) if self.geometry.fov_mm else None,
            "resolution_mm": list(resolution) if resolution else None,
            # Encoded over reconstructed readout length the header declares (2 for fastMRI);
            # outputs keep the encoded readout (the input's matrix) all the same.
            "readout_oversampling": self.geometry.readout_oversampling,
            "protocol": self.protocol,
        }


def check_measured(scan: Scan) -> None:
    """InvalidScanError when every k-space sample is zero (a file of zeros, a failed export).

    Such a scan would reconstruct as a blank image that looks like a result. A scan with only
    some empty slices is still measured: those slices reconstruct as zeros.
    """
    if not scan.kspace.any():
        raise InvalidScanError("k-space is all zeros: nothing was measured")
