"""Bare arrays (.mat v5/v7.3, .npy, .npz): which array, which axis, and the explicit override."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io

from raki.errors import FileFormatError
from raki.io import detect_format, read_scan
from tests.raki.io.synthetic import random_kspace

# One slice of [coil, kx, ky] = [4, 20, 12] with ky lines 2..9 acquired (a reduced-FOV scan).
SCAN = random_kspace((1, 4, 20, 12))
SCAN[..., :2] = 0
SCAN[..., 10:] = 0
MATLAB_ORDER = np.ascontiguousarray(SCAN[0].transpose(1, 2, 0))  # MATLAB's [kx, ky, coil]


def _write_mat73(path, variables: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as MATLAB lays it out: a 512-byte MAT header as the HDF5 user block,
    column-major arrays (so h5py sees the axes reversed), complex as a {real, imag} compound."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, value in variables.items():
            reversed_axes = np.ascontiguousarray(value.T)
            if np.iscomplexobj(value):
                compound = np.empty(reversed_axes.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
                compound["real"], compound["imag"] = reversed_axes.real, reversed_axes.imag
                reversed_axes = compound
            handle.create_dataset(name, data=reversed_axes)
            handle[name].attrs["MATLAB_class"] = np.bytes_(b"double")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5"
    preamble = text.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as handle:
        handle.write(preamble.ljust(512, b"\0"))


def _assert_is_the_scan(scan) -> None:
    np.testing.assert_array_equal(scan.kspace, SCAN)
    assert scan.summary()["sampled_lines"] == 8
    assert (scan.acs.start, scan.acs.stop, scan.acceleration) == (2, 10, 1)


def test_matlab_v5_column_major_heuristic(tmp_path):
    path = tmp_path / "raw.mat"
    scipy.io.savemat(path, {"DATA": MATLAB_ORDER, "other": np.ones((3, 3))})
    assert detect_format(path) == "mat"
    _assert_is_the_scan(read_scan(path))


def test_matlab_v73_heuristic(tmp_path):
    path = tmp_path / "raw73.mat"
    _write_mat73(path, {"raw": MATLAB_ORDER[:, :, np.newaxis, :], "small": np.ones((2, 2)) + 0j})
    assert detect_format(path) == "mat"
    _assert_is_the_scan(read_scan(path))


def test_npy_in_c_and_fortran_order(tmp_path):
    c_path, f_path = tmp_path / "c.npy", tmp_path / "f.npy"
    np.save(c_path, np.ascontiguousarray(SCAN[0].transpose(0, 2, 1)))  # NumPy [coil, ky, kx]
    np.save(f_path, np.asfortranarray(MATLAB_ORDER))  # stored column-major, [kx, ky, coil]
    assert detect_format(c_path) == detect_format(f_path) == "npy"
    _assert_is_the_scan(read_scan(c_path))
    _assert_is_the_scan(read_scan(f_path))


def test_foreign_npz_takes_the_largest_complex_array_or_the_named_one(tmp_path):
    path = tmp_path / "arrays.npz"
    calibration = random_kspace((4, 8, 6))
    np.savez(path, kspace_coil_ky_kx=SCAN[0].transpose(0, 2, 1), calib=calibration, te=np.ones(3))
    _assert_is_the_scan(read_scan(path))
    chosen = read_scan(path, variable="calib", axis_order="coil,ky,kx")
    np.testing.assert_array_equal(chosen.kspace[0], calibration.transpose(0, 2, 1))
    with pytest.raises(FileFormatError, match="has no variable 'missing'"):
        read_scan(path, variable="missing")
    with pytest.raises(FileFormatError, match="te is float64 \\(real-valued\\)"):
        read_scan(path, variable="te")


def test_axis_order_overrides_the_heuristic(tmp_path):
    # Two slices and four coils: the heuristic would call the 2-long axis the coils.
    volume = random_kspace((16, 12, 2, 4))  # MATLAB [kx, ky, slice, coil]
    path = tmp_path / "multislice.mat"
    scipy.io.savemat(path, {"kdata": volume})
    guessed = read_scan(path)
    assert guessed.num_coils == 2
    scan = read_scan(path, axis_order="kx,ky,slice,coil")
    assert (scan.num_slices, scan.num_coils, scan.matrix) == (2, 4, (16, 12))
    np.testing.assert_array_equal(scan.kspace, volume.transpose(2, 3, 0, 1))
    aliases = read_scan(path, axis_order="readout pe slice channel")
    np.testing.assert_array_equal(aliases.kspace, scan.kspace)


def test_singleton_axes_can_be_named_1(tmp_path):
    path = tmp_path / "single.npy"
    np.save(path, SCAN[0].transpose(0, 2, 1)[:, np.newaxis])  # [coil, 1, ky, kx]
    _assert_is_the_scan(read_scan(path, axis_order="coil,1,ky,kx"))


@pytest.mark.parametrize(
    ("axis_order", "message"),
    [
        ("coil,ky", "names 2 axes but array has 3"),
        ("coil,ky,foo", "unknown axis name 'foo'"),
        ("ky,ky,kx", "names an axis twice"),
        ("coil,slice,1", "must name both kx and ky"),
        ("1,ky,kx", "marks an axis of size 4 as singleton"),
    ],
)
def test_bad_axis_order_is_a_clear_error(tmp_path, axis_order, message):
    path = tmp_path / "bad_order.npy"
    np.save(path, SCAN[0].transpose(0, 2, 1))
    with pytest.raises(FileFormatError, match=message) as caught:
        read_scan(path, axis_order=axis_order)
    assert str(caught.value).startswith("bad_order.npy: ")


def test_axis_order_does_not_apply_to_fastmri_files(tmp_path):
    path = tmp_path / "fast.h5"
    with h5py.File(path, "w") as handle:
        handle["kspace"] = SCAN
    with pytest.raises(FileFormatError, match="axis_order applies to array files"):
        read_scan(path, axis_order="slice,coil,kx,ky")


def test_too_many_axes_need_an_axis_order(tmp_path):
    path = tmp_path / "five.npy"
    np.save(path, random_kspace((2, 3, 4, 5, 6)))
    with pytest.raises(FileFormatError, match="5 non-singleton axes"):
        read_scan(path)
