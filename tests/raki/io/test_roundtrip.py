"""Every writable format reads back exactly what was written, and others' tools can read it."""

from __future__ import annotations

import dataclasses

import h5py
import ismrmrd
import numpy as np
import pytest

from raki.errors import FileFormatError
from raki.io import WRITABLE_FORMATS, detect_format, read_scan, write_scan
from raki.scan import Geometry, Identifiers
from tests.raki.io.synthetic import (
    IDENTIFIERS,
    assert_same_scan,
    fully_sampled_scan,
    undersampled_scan,
)

SUFFIX = {"fastmri": ".h5", "mrd": ".mrd", "npz": ".npz"}


@pytest.mark.parametrize("file_format", WRITABLE_FORMATS)
def test_undersampled_scan_round_trips_exactly(tmp_path, file_format):
    scan = undersampled_scan()
    written = write_scan(scan, tmp_path / f"scan{SUFFIX[file_format]}")
    assert detect_format(written) == file_format
    read = read_scan(written)
    assert_same_scan(read, scan)
    # The lattice line 16 touches the ACS block [8, 16): still R=4 with 8 ACS lines.
    assert (read.acceleration, read.acs.start, read.acs.stop) == (4, 8, 16)


@pytest.mark.parametrize("file_format", WRITABLE_FORMATS)
def test_odd_readout_length_round_trips(tmp_path, file_format):
    """63 readout samples centred at 31 fit a width of 63: no column may be added."""
    scan = undersampled_scan(3, 6, shape=(2, 2, 63, 23))
    read = read_scan(write_scan(scan, tmp_path / f"odd{SUFFIX[file_format]}"))
    assert read.matrix == (63, 23)
    assert_same_scan(read, scan)


@pytest.mark.parametrize("file_format", WRITABLE_FORMATS)
def test_fully_sampled_scan_round_trips(tmp_path, file_format):
    scan = fully_sampled_scan()
    read = read_scan(write_scan(scan, tmp_path / f"full{SUFFIX[file_format]}"))
    assert_same_scan(read, scan)
    assert read.is_fully_sampled and read.acceleration == 1


@pytest.mark.parametrize("file_format", WRITABLE_FORMATS)
def test_scan_without_acs_or_metadata_round_trips(tmp_path, file_format):
    scan = undersampled_scan(2, 0, geometry=Geometry(), identifiers=Identifiers(), protocol="")
    read = read_scan(write_scan(scan, tmp_path / f"bare{SUFFIX[file_format]}"))
    assert_same_scan(read, scan)
    assert read.acs is None and read.acceleration == 2


@pytest.mark.parametrize("file_format", WRITABLE_FORMATS)
def test_identifiers_that_the_schema_cannot_type_still_round_trip(tmp_path, file_format):
    odd = dataclasses.replace(
        IDENTIFIERS,
        patient_name="Müller^Jürgen",
        patient_birth_date="1980",  # partial date: not an xs:date
        patient_sex="U",  # not one of M/F/O
        accession_number="ACC-0007",  # not an integer
        study_time="0930",
    )
    scan = undersampled_scan(identifiers=odd)
    read = read_scan(write_scan(scan, tmp_path / f"odd{SUFFIX[file_format]}"))
    assert read.identifiers == odd


def test_mrd_written_to_h5_name_when_asked(tmp_path):
    written = write_scan(undersampled_scan(), tmp_path / "raw.h5", format="mrd")
    assert detect_format(written) == "mrd"


def test_our_mrd_file_opens_in_the_ismrmrd_package(tmp_path):
    scan = undersampled_scan()
    path = write_scan(scan, tmp_path / "scan.mrd")
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False, mode="r")
    try:
        header = ismrmrd.xsd.CreateFromDocument(dataset.read_xml_header())
        encoding = header.encoding[0]
        assert (encoding.encodedSpace.matrixSize.x, encoding.encodedSpace.matrixSize.y) == (16, 24)
        assert encoding.encodedSpace.fieldOfView_mm.x == 220.0
        assert encoding.encodingLimits.kspace_encoding_step_1.center == 12
        assert encoding.parallelImaging.accelerationFactor.kspace_encoding_step_1 == 4
        assert header.subjectInformation.patientName == "DOE^JANE"
        assert header.studyInformation.accessionNumber == 12345
        assert header.acquisitionSystemInformation.receiverChannels == 4

        lines = np.flatnonzero(scan.sampled)
        assert dataset.number_of_acquisitions() == 2 * lines.size
        calibration_only, both = [], []
        for number in range(dataset.number_of_acquisitions()):
            acquisition = dataset.read_acquisition(number)
            line = acquisition.idx.kspace_encode_step_1
            slice_index = acquisition.idx.slice
            np.testing.assert_array_equal(acquisition.data, scan.kspace[slice_index, :, :, line])
            assert acquisition.position[:] == pytest.approx(
                scan.geometry.slice_positions_mm[slice_index]
            )
            if slice_index == 0:
                if acquisition.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION):
                    calibration_only.append(line)
                if acquisition.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING):
                    both.append(line)
        # ACS [8, 16) at R=4 through ky=12: lines 8 and 12 are also image lines.
        assert both == [8, 12]
        assert calibration_only == [9, 10, 11, 13, 14, 15]
        last = dataset.read_acquisition(dataset.number_of_acquisitions() - 1)
        assert last.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    finally:
        dataset.close()


def test_our_fastmri_file_has_fastmri_layout(tmp_path):
    scan = undersampled_scan()
    path = write_scan(scan, tmp_path / "scan.h5")
    with h5py.File(path, "r") as handle:
        assert handle["kspace"].dtype == np.complex64
        assert handle["kspace"].shape == (2, 4, 16, 24)
        np.testing.assert_array_equal(handle["mask"][()], scan.sampled)
        assert handle.attrs["acceleration"] == 4
        assert handle.attrs["num_low_frequency"] == 8
        header = ismrmrd.xsd.CreateFromDocument(handle.attrs["ismrmrd_header"])
    assert header.encoding[0].encodedSpace.fieldOfView_mm.y == 200.0
    assert header.measurementInformation.protocolName == "t1_se_tra"


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "scan.h5"
    target.write_bytes(b"old contents")
    write_scan(undersampled_scan(), target)
    assert [p.name for p in tmp_path.iterdir()] == ["scan.h5"]
    assert detect_format(target) == "fastmri"


@pytest.mark.parametrize("name", ["scan.h5", "scan.mrd", "scan.npz"])
def test_failed_write_leaves_nothing_behind(tmp_path, name):
    target = tmp_path / name
    target.mkdir()  # the final rename onto a folder fails after the data is written
    (target / "keep.txt").write_text("untouched")
    with pytest.raises(FileFormatError, match=f"^{name}: cannot be written"):
        write_scan(undersampled_scan(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert (target / "keep.txt").read_text() == "untouched"


@pytest.mark.parametrize(
    ("name", "file_format", "message"),
    [
        ("scan.dat", None, "cannot tell the format from the suffix '.dat'"),
        ("scan", None, "cannot tell the format"),
        ("scan.h5", "twix", "cannot write 'twix'"),
    ],
)
def test_write_refuses_unknown_formats(tmp_path, name, file_format, message):
    with pytest.raises(FileFormatError, match=message) as caught:
        write_scan(undersampled_scan(), tmp_path / name, format=file_format)
    assert str(caught.value).startswith(f"{name}: ")


def test_write_into_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileFormatError, match="folder to write into does not exist"):
        write_scan(undersampled_scan(), tmp_path / "missing" / "scan.h5")


@pytest.mark.parametrize("file_format", WRITABLE_FORMATS)
def test_declared_readout_oversampling_round_trips(tmp_path, file_format):
    """fastMRI and MRD say it as encoded 2x the recon readout: what rraki removes by default."""
    scan = undersampled_scan()
    scan = dataclasses.replace(
        scan, geometry=dataclasses.replace(scan.geometry, readout_oversampling=2.0)
    )
    read = read_scan(write_scan(scan, tmp_path / f"os{SUFFIX[file_format]}"))
    assert read.geometry.readout_oversampling == 2.0
    assert_same_scan(read, scan)


def test_mrd_imaging_flags_inside_the_acs_continue_the_outer_lattice(tmp_path):
    """fastMRI's rounded gaps need not pass through N//2: a reader that takes only imaging
    lines (e.g. Gadgetron) must see the outer pattern continue through the ACS."""
    from raki.sampling import rounded_spacing_mask
    from raki.scan import Scan

    mask = rounded_spacing_mask(48, 4, 6)
    scan = Scan.from_kspace(undersample_random(mask), mask)
    path = write_scan(scan, tmp_path / "fastmri_mask.mrd")
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False, mode="r")
    try:
        imaging = set()
        for number in range(dataset.number_of_acquisitions()):
            acquisition = dataset.read_acquisition(number)
            if not acquisition.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION):
                imaging.add(acquisition.idx.kspace_encode_step_1)
    finally:
        dataset.close()
    lines = np.flatnonzero(mask)
    outside = [line for line in lines if not scan.acs.start <= line < scan.acs.stop]
    phase = np.bincount(np.array(outside) % scan.acceleration).argmax()
    in_acs = [line for line in lines if scan.acs.start <= line < scan.acs.stop]
    on_pattern = {int(line) for line in in_acs if line % scan.acceleration == phase}
    assert imaging == {int(line) for line in outside} | on_pattern
    assert on_pattern  # the pattern does cross the ACS


def undersample_random(mask: np.ndarray) -> np.ndarray:
    from tests.raki.io.synthetic import random_kspace

    return random_kspace((1, 2, 16, mask.size)) * mask
