"""MRD files written by the `ismrmrd` package itself (not by us) read as the scanner meant."""

from __future__ import annotations

import ismrmrd
import numpy as np
import pytest

from raki.errors import FileFormatError
from raki.io import detect_format, read_scan
from tests.raki.io.synthetic import random_kspace

NUM_SLICES, NUM_COILS, NUM_KX, NUM_KY = 2, 4, 16, 32


def _header(
    *,
    matrix_y: int = NUM_KY,
    limits: tuple[int, int, int] = (0, NUM_KY - 1, NUM_KY // 2),
    acceleration: int | None = 2,
    trajectory: ismrmrd.xsd.trajectoryType = ismrmrd.xsd.trajectoryType.CARTESIAN,
) -> str:
    space = ismrmrd.xsd.encodingSpaceType(
        matrixSize=ismrmrd.xsd.matrixSizeType(x=NUM_KX, y=matrix_y, z=1),
        fieldOfView_mm=ismrmrd.xsd.fieldOfViewMm(x=240.0, y=480.0, z=4.0),
    )
    low, high, centre = limits
    encoding = ismrmrd.xsd.encodingType(
        encodedSpace=space,
        reconSpace=space,
        encodingLimits=ismrmrd.xsd.encodingLimitsType(
            kspace_encoding_step_1=ismrmrd.xsd.limitType(minimum=low, maximum=high, center=centre)
        ),
        trajectory=trajectory,
        parallelImaging=ismrmrd.xsd.parallelImagingType(
            accelerationFactor=ismrmrd.xsd.accelerationFactorType(
                kspace_encoding_step_1=acceleration, kspace_encoding_step_2=1
            )
        )
        if acceleration
        else None,
    )
    header = ismrmrd.xsd.ismrmrdHeader(
        subjectInformation=ismrmrd.xsd.subjectInformationType(
            patientName="ROE^RICHARD", patientID="X9"
        ),
        studyInformation=ismrmrd.xsd.studyInformationType(studyInstanceUID="1.2.3"),
        measurementInformation=ismrmrd.xsd.measurementInformationType(
            protocolName="gre_grappa", patientPosition=ismrmrd.xsd.patientPositionType.HFS
        ),
        experimentalConditions=ismrmrd.xsd.experimentalConditionsType(
            H1resonanceFrequency_Hz=123_200_000
        ),
        encoding=[encoding],
    )
    return ismrmrd.xsd.ToXML(header)


def _acquisition(
    samples: np.ndarray, line: int, slice_index: int, *flags: int, **counters: int
) -> ismrmrd.Acquisition:
    acquisition = ismrmrd.Acquisition.from_array(np.ascontiguousarray(samples))
    acquisition.idx.kspace_encode_step_1 = line
    acquisition.idx.slice = slice_index
    for name, value in counters.items():
        setattr(acquisition.idx, name, value)
    acquisition.center_sample = samples.shape[-1] // 2
    acquisition.position[:] = (0.0, 0.0, 10.0 * slice_index - 5.0)
    acquisition.read_dir[:] = (0.0, 1.0, 0.0)
    acquisition.phase_dir[:] = (1.0, 0.0, 0.0)
    acquisition.slice_dir[:] = (0.0, 0.0, 1.0)
    for flag in flags:
        acquisition.set_flag(flag)
    return acquisition


def _write(path, header: str, acquisitions: list[ismrmrd.Acquisition]) -> None:
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        dataset.write_xml_header(header)
        for acquisition in acquisitions:
            dataset.append_acquisition(acquisition)
    finally:
        dataset.close()


def test_grappa_scan_with_separate_reference_lines(tmp_path):
    """R=2 image lines, a separately acquired 8-line reference block, noise, averages, reps."""
    truth = random_kspace((NUM_SLICES, NUM_COILS, NUM_KX, NUM_KY))
    image_lines = range(0, NUM_KY, 2)
    reference_lines = range(12, 20)
    rng = np.random.default_rng(1)
    acquisitions = [
        _acquisition(
            rng.standard_normal((NUM_COILS, 64)).astype(np.complex64),
            0,
            0,
            ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
        )
    ]
    for slice_index in range(NUM_SLICES):
        for line in reference_lines:
            # A reference readout differs from the image readout of the same line: it must
            # not overwrite it.
            acquisitions.append(
                _acquisition(
                    truth[slice_index, :, :, line] * (3 if line % 2 == 0 else 1),
                    line,
                    slice_index,
                    ismrmrd.ACQ_IS_PARALLEL_CALIBRATION,
                )
            )
        for line in image_lines:
            samples = truth[slice_index, :, :, line]
            if line == 4:  # two averages whose mean is the truth
                acquisitions.append(_acquisition(samples - 1, line, slice_index, average=0))
                acquisitions.append(_acquisition(samples + 1, line, slice_index, average=1))
            else:
                acquisitions.append(_acquisition(samples, line, slice_index))
            # A second repetition of garbage: only the first repetition is read.
            acquisitions.append(_acquisition(samples * 0 + 7, line, slice_index, repetition=1))
    path = tmp_path / "grappa.h5"
    _write(path, _header(), acquisitions)

    assert detect_format(path) == "mrd"
    scan = read_scan(path)
    expected_mask = np.zeros(NUM_KY, dtype=bool)
    expected_mask[list(image_lines)] = True
    expected_mask[list(reference_lines)] = True
    np.testing.assert_array_equal(scan.sampled, expected_mask)
    np.testing.assert_allclose(
        scan.kspace[..., expected_mask], truth[..., expected_mask], rtol=0, atol=1e-6
    )
    assert not scan.kspace[..., ~expected_mask].any()
    assert (scan.acs.start, scan.acs.stop) == (12, 20)
    assert scan.acceleration == 2
    assert scan.geometry.fov_mm == (240.0, 480.0, 4.0)
    assert scan.geometry.slice_thickness_mm == 4.0
    assert scan.geometry.slice_positions_mm == ((0.0, 0.0, -5.0), (0.0, 0.0, 5.0))
    assert scan.geometry.read_dir == (0.0, 1.0, 0.0)
    assert scan.geometry.phase_dir == (1.0, 0.0, 0.0)
    assert scan.identifiers.patient_name == "ROE^RICHARD"
    assert scan.identifiers.study_instance_uid == "1.2.3"
    assert scan.protocol == "gre_grappa"


def test_integrated_reference_lines_are_calibration_and_imaging(tmp_path):
    truth = random_kspace((1, NUM_COILS, NUM_KX, NUM_KY))
    acquisitions = []
    for line in range(NUM_KY):
        in_acs = 10 <= line < 22
        if line % 3 != 0 and not in_acs:
            continue
        flag = (
            ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
            if in_acs and line % 3 == 0
            else ismrmrd.ACQ_IS_PARALLEL_CALIBRATION
            if in_acs
            else ismrmrd.ACQ_FIRST_IN_SLICE
        )
        acquisitions.append(_acquisition(truth[0, :, :, line], line, 0, flag))
    path = tmp_path / "integrated.mrd"
    _write(path, _header(acceleration=None), acquisitions)
    scan = read_scan(path)
    assert (scan.acs.start, scan.acs.stop) == (10, 22)
    assert scan.acceleration == 3  # inferred from the lattice outside the ACS
    np.testing.assert_array_equal(scan.kspace[..., scan.sampled], truth[..., scan.sampled])


def test_ky_centre_from_encoding_limits_and_asymmetric_readout(tmp_path):
    """Partial Fourier: encode steps 0..23 with the centre at step 8 on a 32-line matrix, and
    12-sample readouts whose centre is sample 4."""
    truth = random_kspace((1, NUM_COILS, NUM_KX, NUM_KY))
    acquisitions = []
    for step in range(24):
        line = step - 8 + NUM_KY // 2
        acquisition = _acquisition(truth[0, :, 4:, line], step, 0)
        acquisition.center_sample = 4
        acquisitions.append(acquisition)
    path = tmp_path / "partial.mrd"
    _write(path, _header(limits=(0, 23, 8), acceleration=None), acquisitions)
    scan = read_scan(path)
    assert scan.matrix == (NUM_KX, NUM_KY)
    np.testing.assert_array_equal(np.flatnonzero(scan.sampled), np.arange(8, 32))
    np.testing.assert_array_equal(scan.kspace[0, :, 4:, 8:], truth[0, :, 4:, 8:])
    assert not scan.kspace[0, :, :4].any()


def test_non_cartesian_trajectory_is_refused(tmp_path):
    path = tmp_path / "radial.mrd"
    acquisitions = [_acquisition(random_kspace((NUM_COILS, NUM_KX)), 0, 0)]
    _write(path, _header(trajectory=ismrmrd.xsd.trajectoryType.RADIAL), acquisitions)
    with pytest.raises(FileFormatError, match="radial trajectory"):
        read_scan(path)


def test_noise_only_file_is_refused(tmp_path):
    path = tmp_path / "noise.mrd"
    noise = _acquisition(random_kspace((NUM_COILS, 64)), 0, 0, ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    _write(path, _header(), [noise])
    with pytest.raises(FileFormatError, match="no imaging acquisitions"):
        read_scan(path)


def test_header_claiming_a_huge_matrix_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.mrd"
    acquisitions = [_acquisition(random_kspace((NUM_COILS, NUM_KX)), 0, 0)]
    _write(path, _header(matrix_y=60000, limits=(0, 59999, 30000)), acquisitions)
    with pytest.raises(FileFormatError, match="only 1 distinct lines are present"):
        read_scan(path)
