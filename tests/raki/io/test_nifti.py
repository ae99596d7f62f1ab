"""A reconstruction as NIfTI-1, read back by nibabel and checked against the DICOM series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from raki.errors import FileFormatError, InvalidScanError
from raki.io.dicom import write_dicom_series
from raki.io.nifti import write_nifti
from raki.scan import Geometry, Identifiers, Scan
from tests.raki.io.synthetic import real_world

SLICES, READOUT, PHASE = 3, 32, 24

# Coronal-oblique: readout foot-ward and slightly right, phase towards the patient's left,
# slices stepped 5 mm towards anterior (LPS -y).
OBLIQUE = Geometry(
    fov_mm=(256.0, 192.0, 4.0),
    slice_thickness_mm=4.0,
    slice_positions_mm=((3.0, 12.0, -8.0), (3.0, 7.0, -8.0), (3.0, 2.0, -8.0)),
    read_dir=(-np.sin(0.2), 0.0, -np.cos(0.2)),
    phase_dir=(np.cos(0.2), 0.0, -np.sin(0.2)),
    slice_dir=(0.0, -1.0, 0.0),
)


def make_scan(geometry: Geometry | None = None, identifiers: Identifiers | None = None) -> Scan:
    rng = np.random.default_rng(11)
    shape = (SLICES, 2, READOUT, PHASE)
    kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return Scan.from_kspace(kspace, geometry=geometry, identifiers=identifiers)


def make_image() -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.abs(rng.standard_normal((SLICES, READOUT, PHASE))).astype(np.float32)


def test_values_round_trip_as_float32_kx_ky_slice(tmp_path: Path) -> None:
    image = make_image()
    path = write_nifti(image, make_scan(OBLIQUE), tmp_path / "recon.nii.gz")
    assert path == tmp_path / "recon.nii.gz"
    volume = nib.load(path)
    assert isinstance(volume, nib.Nifti1Image)
    assert volume.get_data_dtype() == np.float32
    assert volume.shape == (READOUT, PHASE, SLICES)
    np.testing.assert_array_equal(np.asarray(volume.dataobj), image.transpose(1, 2, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recon.nii.gz"]


def test_affine_equals_the_hand_computed_one_in_ras(tmp_path: Path) -> None:
    # Sagittal: readout -z (foot-ward), phase +y (posterior), slices 5 mm apart along -x.
    geometry = Geometry(
        fov_mm=(256.0, 192.0, 4.0),
        slice_thickness_mm=4.0,
        slice_positions_mm=((-10.0, 3.0, 1.0), (-5.0, 3.0, 1.0), (0.0, 3.0, 1.0)),
        read_dir=(0.0, 0.0, -1.0),
        phase_dir=(0.0, 1.0, 0.0),
        slice_dir=(1.0, 0.0, 0.0),
    )
    volume = nib.load(write_nifti(make_image(), make_scan(geometry), tmp_path / "a.nii.gz"))
    # Pixel (0, 0) of slice 0 in LPS: centre + 15.5 * 8 mm up (+z) + 11.5 * 8 mm anterior (-y)
    # = (-10, -89, 125); RAS negates x and y.
    expected = np.array(
        [
            [0.0, 0.0, -5.0, 10.0],
            [0.0, -8.0, 0.0, 89.0],
            [-8.0, 0.0, 0.0, 125.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(volume.affine, expected, atol=1e-9)
    np.testing.assert_allclose(volume.get_sform(), expected, atol=1e-9)
    np.testing.assert_allclose(volume.get_qform(), expected, atol=1e-5)
    assert int(volume.header["sform_code"]) == int(volume.header["qform_code"]) == 1
    assert volume.header.get_zooms() == (8.0, 8.0, 5.0)
    assert volume.header.get_xyzt_units()[0] == "mm"


def test_default_geometry_is_axial_1mm_centred(tmp_path: Path) -> None:
    volume = nib.load(write_nifti(make_image(), make_scan(), tmp_path / "a.nii"))
    expected = np.diag([-1.0, -1.0, 1.0, 1.0])
    expected[:3, 3] = [11.5, 15.5, -1.0]
    # LPS: columns step +x (left), rows step +y (posterior): in RAS both columns flip sign.
    expected[:2, :2] = [[0.0, -1.0], [-1.0, 0.0]]
    np.testing.assert_allclose(volume.affine, expected)
    assert nib.aff2axcodes(volume.affine) == ("P", "L", "S")


def test_each_voxel_lands_where_the_dicom_series_puts_its_pixel(tmp_path: Path) -> None:
    scan = make_scan(OBLIQUE)
    image = make_image()
    volume = nib.load(write_nifti(image, scan, tmp_path / "a.nii.gz"))
    datasets = [pydicom.dcmread(p) for p in write_dicom_series(image, scan, tmp_path / "dcm")]
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    for k, ds in enumerate(datasets):
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        row_cos = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        col_cos = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        for r, c in [(0, 0), (READOUT - 1, 0), (0, PHASE - 1), (7, 13)]:
            # DICOM PS3.3 C.7.6.2.1.1: column index times column spacing along the row cosines.
            dicom_lps = position + c * column_spacing * row_cos + r * row_spacing * col_cos
            nifti_ras = volume.affine @ np.array([r, c, k, 1.0])
            np.testing.assert_allclose(nifti_ras[:3], dicom_lps * lps_to_ras, atol=1e-6)
            values = real_world(ds, ds.pixel_array)
            assert volume.dataobj[r, c, k] == pytest.approx(
                values[r, c], abs=float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
            )


def test_no_identifier_reaches_the_header(tmp_path: Path) -> None:
    identifiers = Identifiers(patient_name="Doe^Jane", patient_id="PID-314159")
    path = write_nifti(make_image(), make_scan(OBLIQUE, identifiers), tmp_path / "a.nii")
    content = path.read_bytes()
    assert b"Doe" not in content
    assert b"PID-314159" not in content


def test_a_name_without_a_nifti_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"^recon\.img: "):
        write_nifti(make_image(), make_scan(), tmp_path / "recon.img")


def test_an_image_that_does_not_fit_the_scan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidScanError):
        write_nifti(make_image()[:1], make_scan(), tmp_path / "a.nii.gz")
    assert not list(tmp_path.iterdir())
