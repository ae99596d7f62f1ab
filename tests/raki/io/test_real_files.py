"""The real multi-coil files in ../shared/data read as their README says (skipped if absent)."""

from __future__ import annotations

import numpy as np
import pytest

from raki.io import detect_format, read_scan, write_scan

FASTMRI_FILES = [
    ("brain_8ch_320x168.h5", 8, (320, 168)),
    ("brain_16ch_96x96.h5", 16, (96, 96)),
    ("brain_16ch_64x64.h5", 16, (64, 64)),
]
# Each original, what it must read as, and the fastMRI file made from it.
ORIGINALS = [
    ("peng-cao_mripy_brain_alias_8ch.mat", "mat", 8, (320, 256), 168, "brain_8ch_320x168.h5"),
    ("mchiew_SENSE-tutorial_raw_data.mat", "mat", 16, (96, 96), 96, "brain_16ch_96x96.h5"),
    ("pdawood_iterativeRaki_preScanRefData.npy", "npy", 16, (64, 64), 64, "brain_16ch_64x64.h5"),
]


@pytest.mark.parametrize(("name", "coils", "matrix"), FASTMRI_FILES)
def test_fastmri_files(shared_data, name, coils, matrix):
    path = shared_data / name
    assert detect_format(path) == "fastmri"
    scan = read_scan(path)  # the file also holds reconstruction_rss, which is ignored
    assert (scan.num_slices, scan.num_coils, scan.matrix) == (1, coils, matrix)
    assert scan.is_fully_sampled and scan.acceleration == 1
    assert scan.summary()["sampled_lines"] == matrix[1]


@pytest.mark.parametrize(("name", "kind", "coils", "matrix", "lines", "prepared"), ORIGINALS)
def test_originals_by_the_axis_heuristic(shared_data, name, kind, coils, matrix, lines, prepared):
    path = shared_data / "originals" / name
    assert detect_format(path) == kind
    scan = read_scan(path)
    assert (scan.num_coils, scan.matrix) == (coils, matrix)
    assert int(scan.sampled.sum()) == lines
    # The heuristic finds the same orientation as the prepared fastMRI file.
    reference = read_scan(shared_data / prepared)
    np.testing.assert_array_equal(scan.kspace[..., scan.sampled], reference.kspace)


def test_peng_cao_acquired_block_is_lines_44_to_211(shared_data):
    scan = read_scan(shared_data / "originals" / ORIGINALS[0][0])
    assert (scan.acs.start, scan.acs.stop, scan.acceleration) == (44, 212, 1)
    assert not scan.is_fully_sampled


def test_real_file_converts_between_formats(shared_data, tmp_path):
    scan = read_scan(shared_data / "brain_16ch_64x64.h5")
    undersampled = scan.replace(
        kspace=scan.kspace * np.isin(np.arange(64), np.r_[0:64:4, 26:38]),
        sampled=np.isin(np.arange(64), np.r_[0:64:4, 26:38]),
        acs=None,
        acceleration=4,
    )
    for name in ("converted.mrd", "converted.h5", "converted.npz"):
        back = read_scan(write_scan(undersampled, tmp_path / name))
        np.testing.assert_array_equal(back.kspace, undersampled.kspace)
        np.testing.assert_array_equal(back.sampled, undersampled.sampled)
        assert back.acceleration == 4
