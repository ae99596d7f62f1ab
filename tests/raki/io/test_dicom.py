"""A reconstruction written as a DICOM MR series and read back by pydicom, dciodvfy and storescp."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from raki.errors import FileFormatError, InvalidScanError
from raki.io.dicom import MR_IMAGE_STORAGE, write_dicom_series
from raki.scan import Geometry, Identifiers, Scan
from tests.mrictl.dicom_nodes import dcmtk_program
from tests.raki.io.synthetic import real_world

SLICES, READOUT, PHASE = 3, 32, 24

IDENTIFIERS = Identifiers(
    patient_name="Doe^Jane",
    patient_id="PID-314159",
    patient_birth_date="19700102",
    patient_sex="F",
    study_instance_uid="1.2.840.113619.2.55.3.2831164355.123.1700000000.1",
    study_date="20240305",
    study_time="101112",
    study_description="Brain research",
    accession_number="ACC271828",
    institution_name="Hôpital Universitaire",
)

# Sagittal: readout runs foot-ward (-z), phase anterior-to-posterior (+y), slices along -x.
SAGITTAL = Geometry(
    fov_mm=(256.0, 192.0, 4.0),
    slice_thickness_mm=4.0,
    slice_positions_mm=((10.0, -3.0, 7.0), (5.0, -3.0, 7.0), (0.0, -3.0, 7.0)),
    read_dir=(0.0, 0.0, -1.0),
    phase_dir=(0.0, 1.0, 0.0),
    slice_dir=(-1.0, 0.0, 0.0),
)


def make_scan(geometry: Geometry | None = None, identifiers: Identifiers | None = None) -> Scan:
    rng = np.random.default_rng(7)
    shape = (SLICES, 2, READOUT, PHASE)
    kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return Scan.from_kspace(
        kspace, geometry=geometry, identifiers=identifiers, protocol="t2_tse_sag"
    )


def make_image(scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(3)
    return (np.abs(rng.standard_normal((SLICES, READOUT, PHASE))) * scale).astype(np.float32)


def read_series(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in paths]


def test_series_has_one_mr_image_per_slice_in_explicit_little_endian(tmp_path: Path) -> None:
    paths = write_dicom_series(make_image(), make_scan(SAGITTAL), tmp_path / "series")
    assert [p.name for p in paths] == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm"]
    assert sorted(p.name for p in (tmp_path / "series").iterdir()) == [p.name for p in paths]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    for index, ds in enumerate(read_series(paths)):
        assert ds.SOPClassUID == MR_IMAGE_STORAGE == "1.2.840.10008.5.1.4.1.1.4"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MR"
        assert ds.InstanceNumber == index + 1
        assert (ds.Rows, ds.Columns) == (READOUT, PHASE)
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 0)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == "mrictl RAKI"
        assert ds.ProtocolName == "t2_tse_sag"


def test_pixels_after_rescale_equal_the_float_image_within_quantisation(tmp_path: Path) -> None:
    # Orthonormal FFT magnitudes are small: the rescale must keep them, not round them to 0.
    image = make_image(scale=3e-4)
    paths = write_dicom_series(image, make_scan(SAGITTAL), tmp_path / "series")
    datasets = read_series(paths)
    # One scale for the series: its brightest pixel uses the whole 16-bit range.
    assert max(int(ds.pixel_array.max()) for ds in datasets) >= 65534
    for index, ds in enumerate(datasets):
        stored = ds.pixel_array
        assert stored.dtype == np.uint16
        values = real_world(ds, stored)
        step = float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
        np.testing.assert_allclose(values, image[index], rtol=0, atol=step * 0.5 + 1e-12)
        assert float(ds.WindowWidth) > 0
        # The window is in stored units: viewers apply it to the pixels as they are.
        assert 0 < float(ds.WindowCenter) < 65535
        assert 0 < real_world(ds, np.array(float(ds.WindowCenter))) < image.max()


def test_a_constant_image_survives_the_rescale(tmp_path: Path) -> None:
    image = np.full((SLICES, READOUT, PHASE), 2.5, dtype=np.float32)
    paths = write_dicom_series(image, make_scan(), tmp_path / "series")
    ds = pydicom.dcmread(paths[0])
    values = real_world(ds, ds.pixel_array)
    np.testing.assert_allclose(values, 2.5)


def test_geometry_pixel_spacing_orientation_and_position_of_each_slice(tmp_path: Path) -> None:
    paths = write_dicom_series(make_image(), make_scan(SAGITTAL), tmp_path / "series")
    read_mm, phase_mm = 256.0 / READOUT, 192.0 / PHASE
    for index, ds in enumerate(read_series(paths)):
        # PixelSpacing is (between rows, between columns): rows follow the readout.
        assert [float(v) for v in ds.PixelSpacing] == [read_mm, phase_mm]
        # Row cosines (along a row, column index grows) = phase; column cosines = readout.
        assert [float(v) for v in ds.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
        centre = np.array(SAGITTAL.slice_positions_mm[index])
        top_left = (
            centre
            - (READOUT - 1) / 2 * read_mm * np.array([0, 0, -1])
            - (PHASE - 1) / 2 * phase_mm * np.array([0, 1, 0])
        )
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], top_left)
        # The standard's formula puts the middle of the pixel grid on the slice centre.
        row_cos = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        col_cos = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        middle = (
            top_left
            + (PHASE - 1) / 2 * float(ds.PixelSpacing[1]) * row_cos
            + (READOUT - 1) / 2 * float(ds.PixelSpacing[0]) * col_cos
        )
        np.testing.assert_allclose(middle, centre, atol=1e-9)
        assert float(ds.SliceThickness) == 4.0
        assert float(ds.SpacingBetweenSlices) == 5.0
        # Normal = row x column cosines = -x, so the slice location is minus the centre's x.
        assert float(ds.SliceLocation) == -centre[0]


def test_default_geometry_is_axial_with_1mm_pixels_spaced_by_thickness(tmp_path: Path) -> None:
    paths = write_dicom_series(make_image(), make_scan(), tmp_path / "series")
    datasets = read_series(paths)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    for ds in datasets:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [1.0, 1.0]
        assert float(ds.SliceThickness) == 1.0
    np.testing.assert_allclose(positions[:, :2], [[-11.5, -15.5]] * SLICES)
    np.testing.assert_allclose(positions[:, 2], [-1.0, 0.0, 1.0])


def test_a_centre_cropped_image_keeps_its_resolution_and_centre(tmp_path: Path) -> None:
    # Readout oversampling removed (fastMRI-style crop): 32 -> 16 rows of the same 8 mm pixels.
    cropped = make_image()[:, 8:24]
    paths = write_dicom_series(cropped, make_scan(SAGITTAL), tmp_path / "series")
    ds = pydicom.dcmread(paths[0])
    assert (ds.Rows, ds.Columns) == (16, PHASE)
    assert [float(v) for v in ds.PixelSpacing] == [8.0, 8.0]
    top_left = np.add(SAGITTAL.slice_positions_mm[0], [0.0, -11.5 * 8.0, 7.5 * 8.0])
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], top_left)
    assert list(ds.AcquisitionMatrix) == [READOUT, 0, 0, PHASE]


def test_uids_are_valid_and_distinct(tmp_path: Path) -> None:
    scan = make_scan(SAGITTAL)
    first = read_series(write_dicom_series(make_image(), scan, tmp_path / "a"))
    second = read_series(write_dicom_series(make_image(), scan, tmp_path / "b"))
    instances = [ds.SOPInstanceUID for ds in first + second]
    assert len(set(instances)) == 2 * SLICES
    for ds in first + second:
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            assert UID(uid).is_valid
        assert UID(ds.FrameOfReferenceUID).is_valid
    assert {ds.SeriesInstanceUID for ds in first} != {ds.SeriesInstanceUID for ds in second}
    assert len({ds.SeriesInstanceUID for ds in first}) == 1
    assert len({ds.FrameOfReferenceUID for ds in first}) == 1
    assert first[0].SeriesInstanceUID not in {first[0].StudyInstanceUID, *instances}


def test_identifiers_are_kept_when_the_scan_has_them(tmp_path: Path) -> None:
    paths = write_dicom_series(make_image(), make_scan(SAGITTAL, IDENTIFIERS), tmp_path / "s")
    for ds in read_series(paths):
        assert ds.PatientName == "Doe^Jane"
        assert ds.PatientID == "PID-314159"
        assert ds.PatientBirthDate == "19700102"
        assert ds.PatientSex == "F"
        assert ds.StudyInstanceUID == IDENTIFIERS.study_instance_uid
        assert (ds.StudyDate, ds.StudyTime) == ("20240305", "101112")
        assert ds.AccessionNumber == "ACC271828"
        assert ds.StudyDescription == "Brain research"
        assert ds.InstitutionName == "Hôpital Universitaire"
        assert "PatientIdentityRemoved" not in ds


def test_placeholders_when_the_scan_names_no_patient(tmp_path: Path) -> None:
    a = read_series(write_dicom_series(make_image(), make_scan(), tmp_path / "a"))
    b = read_series(write_dicom_series(make_image(), make_scan(), tmp_path / "b"))
    for ds in a:
        assert ds.PatientName == "ANONYMOUS^"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethod
        assert ds.PatientID.startswith("ANON-")
        assert ds.PatientBirthDate == ""
    assert len({ds.PatientID for ds in a}) == 1
    # Two unrelated exports are two studies and two placeholder patients.
    assert a[0].StudyInstanceUID != b[0].StudyInstanceUID
    assert a[0].PatientID != b[0].PatientID


def test_series_of_one_scan_can_share_a_study(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    scan = make_scan(SAGITTAL)
    raki = read_series(write_dicom_series(make_image(), scan, tmp_path / "r", study_uid=study))
    grappa = read_series(
        write_dicom_series(
            make_image(), scan, tmp_path / "g", study_uid=study, method="grappa",
            series_description="mrictl GRAPPA", series_number=902,
        )
    )  # fmt: skip
    assert raki[0].StudyInstanceUID == grappa[0].StudyInstanceUID == study
    assert raki[0].PatientID == grappa[0].PatientID
    assert (grappa[0].SeriesNumber, grappa[0].SeriesDescription) == (902, "mrictl GRAPPA")
    assert "grappa" in grappa[0].DerivationDescription


def test_rewriting_a_series_replaces_it_whole(tmp_path: Path) -> None:
    out = tmp_path / "series"
    first = write_dicom_series(make_image(), make_scan(), out)
    old_series = pydicom.dcmread(first[0]).SeriesInstanceUID
    write_dicom_series(make_image(), make_scan(), out)
    assert len(list(out.iterdir())) == SLICES
    assert pydicom.dcmread(first[0]).SeriesInstanceUID != old_series
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_a_folder_with_other_files_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "series"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileFormatError, match=r"^series: "):
        write_dicom_series(make_image(), make_scan(), out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_an_image_that_does_not_fit_the_scan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidScanError, match="2 slices"):
        write_dicom_series(make_image()[:2], make_scan(), tmp_path / "s")
    bad = make_image()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidScanError, match="NaN"):
        write_dicom_series(bad, make_scan(), tmp_path / "s")
    assert not list(tmp_path.iterdir())


def run_dciodvfy(path: Path) -> list[str]:
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) absent")
@pytest.mark.parametrize("identified", [False, True])
def test_dciodvfy_finds_no_error(tmp_path: Path, identified: bool) -> None:
    scan = make_scan(SAGITTAL, IDENTIFIERS if identified else None)
    paths = write_dicom_series(make_image(scale=1e-3), scan, tmp_path / "series")
    for path in paths:
        assert run_dciodvfy(path) == []


@pytest.mark.skipif(shutil.which("dcentvfy") is None, reason="dicom3tools (dcentvfy) absent")
def test_dcentvfy_finds_the_series_consistent(tmp_path: Path) -> None:
    paths = write_dicom_series(make_image(), make_scan(SAGITTAL, IDENTIFIERS), tmp_path / "s")
    result = subprocess.run(
        ["dcentvfy", *map(str, paths)], capture_output=True, text=True, timeout=60, check=False
    )
    assert [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line] == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# dcmtk's programs, not pynetdicom's Python apps of the same names that its wheel puts into the
# venv, ahead of dcmtk's on PATH.
STORESCP, STORESCU = dcmtk_program("storescp"), dcmtk_program("storescu")


@pytest.mark.skipif(STORESCP is None or STORESCU is None, reason="dcmtk (storescp/storescu) absent")
def test_a_storage_scp_accepts_the_series(tmp_path: Path) -> None:
    paths = write_dicom_series(make_image(), make_scan(SAGITTAL), tmp_path / "series")
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    # Accept only MR Image Storage in explicit little endian, as a strict PACS might.
    scp = subprocess.Popen(
        [str(STORESCP), "-aet", "PACS", "+xe", "-ta", "10", "-od", str(received), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        sent = subprocess.run(
            [str(STORESCU), "-aec", "PACS", "-ta", "10", "127.0.0.1", str(port), *map(str, paths)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    stored = sorted(received.iterdir())
    assert len(stored) == SLICES
    sent = {ds.SOPInstanceUID: ds for ds in read_series(paths)}
    for ds in read_series(stored):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        np.testing.assert_array_equal(ds.pixel_array, sent[ds.SOPInstanceUID].pixel_array)
    assert {ds.SOPInstanceUID for ds in read_series(stored)} == set(sent)


def test_each_method_names_and_numbers_its_series_and_a_study_shares_one_frame(
    tmp_path: Path,
) -> None:
    from raki.io.dicom import study_uid_for

    scan = make_scan(SAGITTAL)
    study = study_uid_for("scan-0123456789abcdef")
    assert study == study_uid_for("scan-0123456789abcdef") and UID(study).is_valid
    series = {
        method: read_series(
            write_dicom_series(
                make_image(), scan, tmp_path / method, method=method, study_uid=study
            )
        )[0]
        for method in ("raki", "rraki", "grappa", "zerofill")
    }
    assert len({ds.SeriesNumber for ds in series.values()}) == 4
    assert series["grappa"].SeriesDescription == "mrictl GRAPPA"
    assert series["zerofill"].SeriesDescription == "mrictl zero-filled"
    assert len({ds.FrameOfReferenceUID for ds in series.values()}) == 1
    assert len({ds.StudyInstanceUID for ds in series.values()}) == 1
