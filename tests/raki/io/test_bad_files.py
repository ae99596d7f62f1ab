"""A corpus of broken files: each is refused with one line naming the file and the problem."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
import scipy.io

from raki.errors import FileFormatError
from raki.io import read_scan, write_scan
from tests.raki.io.synthetic import random_kspace, undersampled_scan


def _fastmri(path: Path, kspace: object = None, **extras: object) -> None:
    with h5py.File(path, "w") as handle:
        handle["kspace"] = random_kspace() if kspace is None else kspace
        for name, value in extras.items():
            if name.startswith("attr_"):
                handle.attrs[name[5:]] = value
            else:
                handle[name] = value


def truncated_hdf5(path: Path) -> None:
    whole = path.with_name("whole.h5")
    write_scan(undersampled_scan(), whole)
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def real_valued_kspace(path: Path) -> None:
    _fastmri(path, np.ones((1, 4, 16, 12), dtype=np.float32))


def wrong_rank(path: Path) -> None:
    _fastmri(path, random_kspace((4, 16, 12)))


def nan_kspace(path: Path) -> None:
    kspace = random_kspace()
    kspace[0, 1, 2, 3] = np.nan
    _fastmri(path, kspace)


def empty_mask(path: Path) -> None:
    _fastmri(path, mask=np.zeros(24, dtype=np.float32))


def mask_length_mismatch(path: Path) -> None:
    _fastmri(path, mask=np.ones(20, dtype=bool))


def acs_attrs_contradict_mask(path: Path) -> None:
    mask = np.zeros(24, dtype=bool)
    mask[::4] = True
    _fastmri(path, mask=mask, attr_acceleration=4, attr_num_low_frequency=8)


def unallocated_huge_kspace(path: Path) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("kspace", shape=(64, 32, 640, 640), dtype=np.complex64, chunks=True)


def mrd_without_acquisitions(path: Path) -> None:
    header = ismrmrd.xsd.ToXML(
        ismrmrd.xsd.ismrmrdHeader(
            experimentalConditions=ismrmrd.xsd.experimentalConditionsType(
                H1resonanceFrequency_Hz=63_870_000
            ),
            encoding=[],
        )
    )
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dataset.write_xml_header(header)
    dataset.close()


def mrd_with_broken_xml(path: Path) -> None:
    with h5py.File(path, "w") as handle:
        group = handle.create_group("dataset")
        xml = group.create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
        xml[0] = b"<ismrmrdHeader><encoding>"


def hdf5_of_something_else(path: Path) -> None:
    with h5py.File(path, "w") as handle:
        handle["image"] = np.zeros((4, 4))


def mat_without_complex_array(path: Path) -> None:
    scipy.io.savemat(path, {"image": np.ones((8, 8)), "te": 0.01})


def truncated_mat(path: Path) -> None:
    whole = path.with_name("whole.mat")
    scipy.io.savemat(whole, {"DATA": random_kspace((16, 12, 4))})
    path.write_bytes(whole.read_bytes()[:600])
    whole.unlink()


def truncated_npy(path: Path) -> None:
    whole = path.with_name("whole.npy")
    np.save(whole, random_kspace((4, 12, 16)))
    path.write_bytes(whole.read_bytes()[:1000])
    whole.unlink()


def npy_claiming_a_huge_array(path: Path) -> None:
    header = "{'descr': '<c8', 'fortran_order': False, 'shape': (100000, 100000, 64), }"
    header = header.ljust(117) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())


def npz_claiming_a_huge_array(path: Path) -> None:
    header = "{'descr': '<c8', 'fortran_order': False, 'shape': (100000, 100000, 64), }"
    header = header.ljust(117) + "\n"
    member = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("kspace.npy", member + b"\0" * 64)


def zip_without_arrays(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


def real_npy(path: Path) -> None:
    np.save(path, np.ones((4, 16, 12)))


def text_file(path: Path) -> None:
    path.write_text("patient: nobody\nthis is not k-space\n")


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


CORPUS: list[tuple[str, Callable[[Path], None], str]] = [
    ("truncated.h5", truncated_hdf5, "truncated HDF5 file"),
    ("random.h5", random_bytes, "unknown format"),
    ("real.h5", real_valued_kspace, "real-valued"),
    ("rank3.h5", wrong_rank, "kspace has 3 axes"),
    ("nan.h5", nan_kspace, "NaN or infinite"),
    ("empty_mask.h5", empty_mask, "mask is empty"),
    ("short_mask.h5", mask_length_mismatch, "mask has 20 entries but kspace has 24 ky lines"),
    ("contradiction.h5", acs_attrs_contradict_mask, "num_low_frequency=8 but the mask skips"),
    ("unallocated.h5", unallocated_huge_kspace, "no data stored"),
    ("no_acquisitions.mrd", mrd_without_acquisitions, "holds no acquisitions"),
    ("broken_xml.mrd", mrd_with_broken_xml, "not valid XML"),
    ("other.h5", hdf5_of_something_else, "neither a fastMRI 'kspace' dataset"),
    ("image.mat", mat_without_complex_array, "holds no complex array"),
    ("truncated.mat", truncated_mat, "not a readable MATLAB file"),
    ("truncated.npy", truncated_npy, "truncated .npy file"),
    ("huge.npy", npy_claiming_a_huge_array, "truncated .npy file"),
    ("huge.npz", npz_claiming_a_huge_array, "claims shape (100000, 100000, 64)"),
    ("notes.zip", zip_without_arrays, "not an .npz"),
    ("real.npy", real_npy, "real-valued"),
    ("notes.txt", text_file, "a text file, not a scan"),
    ("empty.dat", empty_file, "is empty"),
]


@pytest.mark.parametrize(("name", "make", "reason"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_file_is_refused_with_a_clear_line(tmp_path, name, make, reason):
    folder = tmp_path / "Patient DOE^JANE"  # a folder name that must never appear in messages
    folder.mkdir()
    path = folder / name
    make(path)
    with pytest.raises(FileFormatError) as caught:
        read_scan(path)
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert reason in message
    assert "\n" not in message
    assert "DOE" not in message and str(tmp_path) not in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileFormatError, match=r"^absent\.h5: no such file$"):
        read_scan(tmp_path / "absent.h5")
    with pytest.raises(FileFormatError, match="is a folder"):
        read_scan(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.h5"
    write_scan(undersampled_scan(), path)
    path.chmod(0)
    with pytest.raises(FileFormatError, match="permission denied"):
        read_scan(path)


def test_explicit_format_that_does_not_fit_the_content(tmp_path):
    path = tmp_path / "scan.h5"
    write_scan(undersampled_scan(), path)
    with pytest.raises(FileFormatError, match="has no ISMRMRD dataset"):
        read_scan(path, format="mrd")
    with pytest.raises(FileFormatError, match="unknown format 'dicom'"):
        read_scan(path, format="dicom")
