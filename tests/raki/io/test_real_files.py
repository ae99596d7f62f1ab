"""The real multi-coil files in ../shared/data read as their README says (skipped if absent)."""

from __future__ import annotations

import numpy as np
import pytest

from raki.io import detect_format, read_scan, write_scan
from raki.sampling import centred_acs_block, equispaced_mask, undersample

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


@pytest.mark.parametrize("suffix", [".h5", ".mrd", ".npz"])
def test_real_scan_undersampled_r4_acs24_reads_back_r4_acs24(shared_data, tmp_path, suffix):
    """On 168 lines the centred 24-line ACS block is [72, 96) and lattice line 96 touches it:
    the files must still say R=4 with 24 ACS lines, not a 25-line block."""
    scan = read_scan(shared_data / "brain_8ch_320x168.h5")
    mask = equispaced_mask(168, 4, 24)
    undersampled = scan.replace(
        kspace=undersample(scan.kspace, mask),
        sampled=mask,
        acs=centred_acs_block(168, 24),
        acceleration=4,
    )
    back = read_scan(write_scan(undersampled, tmp_path / f"r4{suffix}"))
    np.testing.assert_array_equal(back.kspace, undersampled.kspace)
    np.testing.assert_array_equal(back.sampled, mask)
    assert (back.acceleration, back.acs.start, back.acs.stop) == (4, 72, 96)
