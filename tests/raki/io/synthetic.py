"""Tiny seeded scans for the reader/writer tests: 2 slices, 4 coils, 16 x 24, R=4 ACS 8."""

from __future__ import annotations

import numpy as np

from raki.sampling import centred_acs_block, equispaced_mask, undersample
from raki.scan import Geometry, Identifiers, Scan

GEOMETRY = Geometry(
    fov_mm=(220.0, 200.0, 5.0),
    slice_thickness_mm=5.0,
    slice_positions_mm=((1.5, -10.5, 20.25), (1.5, -10.5, 25.25)),
    read_dir=(1.0, 0.0, 0.0),
    phase_dir=(0.0, 0.6, 0.8),
    slice_dir=(0.0, -0.8, 0.6),
)
IDENTIFIERS = Identifiers(
    patient_name="DOE^JANE",
    patient_id="P-0042",
    patient_birth_date="19800102",
    patient_sex="F",
    study_instance_uid="1.2.826.0.1.3680043.2.1125.1",
    study_date="20240322",
    study_time="140748.5",
    study_description="Brain MRI",
    accession_number="12345",
    institution_name="Example Hospital",
)


def random_kspace(shape: tuple[int, ...] = (2, 4, 16, 24), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def undersampled_scan(
    acceleration: int = 4,
    acs_lines: int = 8,
    *,
    shape: tuple[int, int, int, int] = (2, 4, 16, 24),
    geometry: Geometry = GEOMETRY,
    identifiers: Identifiers = IDENTIFIERS,
    protocol: str = "t1_se_tra",
) -> Scan:
    """A scan with fastMRI's equispaced mask; with R=4 ACS 8 on 24 lines the lattice line 16
    touches the ACS block [8, 16), so inference alone would see a 9-line block."""
    num_lines = shape[-1]
    mask = equispaced_mask(num_lines, acceleration, acs_lines)
    return Scan(
        kspace=undersample(random_kspace(shape), mask),
        sampled=mask,
        acs=centred_acs_block(num_lines, acs_lines) if acs_lines else None,
        acceleration=acceleration,
        geometry=geometry,
        protocol=protocol,
        identifiers=identifiers,
    )


def fully_sampled_scan(shape: tuple[int, int, int, int] = (2, 4, 16, 24)) -> Scan:
    return Scan.from_kspace(random_kspace(shape), geometry=GEOMETRY, identifiers=IDENTIFIERS)


def assert_same_scan(read: Scan, written: Scan) -> None:
    """Exact equality of everything a Scan carries."""
    np.testing.assert_array_equal(read.kspace, written.kspace)
    np.testing.assert_array_equal(read.sampled, written.sampled)
    assert read.kspace.dtype == np.complex64
    assert read.acs == written.acs
    assert read.acceleration == written.acceleration
    assert read.geometry == written.geometry
    assert read.identifiers == written.identifiers
    assert read.protocol == written.protocol


def real_world(ds, stored: np.ndarray) -> np.ndarray:
    """A DICOM slice's stored pixels as the reconstruction's values (Real World Value Mapping);
    the Modality LUT stays identity, as the MR Image IOD has none."""
    assert "RescaleSlope" not in ds and "RescaleIntercept" not in ds
    (mapping,) = ds.RealWorldValueMappingSequence
    return stored * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
