"""One rule for a path given where a scan file is expected, whichever reader is asked."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from raki.errors import FileFormatError, MissingFileError, NotAFileError
from raki.io import check_input_file, detect_format, read_scan, write_scan
from raki.io.arrays import read_array_scan
from raki.io.fastmri import read_fastmri
from raki.io.image_hdf5 import read_reconstruction
from raki.io.mrd import read_mrd
from raki.io.twix import read_twix
from tests.raki.io.synthetic import undersampled_scan

READERS = {
    "read_scan": read_scan,
    "detect_format": detect_format,
    "read_fastmri": read_fastmri,
    "read_mrd": read_mrd,
    "read_twix": read_twix,
    "read_npy": lambda path: read_array_scan(Path(path), "npy"),
    "read_reconstruction": read_reconstruction,
}


def folder(tmp_path: Path) -> Path:
    made = tmp_path / "scans"
    made.mkdir()
    return made


def fifo(tmp_path: Path) -> Path:
    made = tmp_path / "pipe.h5"
    os.mkfifo(made)  # opening it for reading would block: the rule must not open it
    return made


def unix_socket(tmp_path: Path) -> Path:
    made = tmp_path / "s.h5"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(made))
    return made


BAD_PATHS = {
    "missing": (lambda tmp: tmp / "absent.h5", MissingFileError, "absent.h5: no such file"),
    "dangling link": (
        lambda tmp: _link(tmp / "gone.h5", tmp / "link.h5"),
        MissingFileError,
        "link.h5: no such file",
    ),
    "under a file": (
        lambda tmp: _file(tmp / "plain.h5") / "inner.h5",
        MissingFileError,
        "inner.h5: no such file",
    ),
    "folder": (folder, NotAFileError, "scans: is a folder, not a file"),
    "device": (lambda tmp: Path("/dev/zero"), NotAFileError, "zero: is not a regular file"),
    "fifo": (fifo, NotAFileError, "pipe.h5: is not a regular file"),
    "socket": (unix_socket, NotAFileError, "s.h5: is not a regular file"),
}


def _file(path: Path) -> Path:
    path.write_bytes(b"x")
    return path


def _link(target: Path, link: Path) -> Path:
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("case", BAD_PATHS)
def test_a_bad_path_gets_one_error_from_every_reader(case, tmp_path):
    make, error_type, message = BAD_PATHS[case]
    path = make(tmp_path)
    for name, reader in {"check_input_file": check_input_file, **READERS}.items():
        with pytest.raises(error_type) as caught:
            reader(path)
        assert str(caught.value) == message, name
        assert str(tmp_path) not in str(caught.value)


def test_folder_and_device_errors_are_file_errors_too():
    """Callers that catch FileFormatError for "this file cannot be read" still catch them."""
    assert issubclass(NotAFileError, FileFormatError)
    assert issubclass(MissingFileError, FileFormatError)


def test_the_current_folder_is_named_by_its_own_name(tmp_path, monkeypatch):
    monkeypatch.chdir(folder(tmp_path))
    with pytest.raises(NotAFileError, match=r"^scans: is a folder, not a file$"):
        check_input_file(".")


def test_a_regular_file_and_a_link_to_one_pass(tmp_path):
    scan_file = write_scan(undersampled_scan(), tmp_path / "scan.h5")
    link = _link(scan_file, tmp_path / "link.h5")
    assert check_input_file(scan_file) == scan_file
    assert check_input_file(str(link)) == link
    assert read_scan(link).num_coils == read_scan(scan_file).num_coils


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_a_file_format_error(tmp_path):
    locked = write_scan(undersampled_scan(), tmp_path / "locked.h5")
    locked.chmod(0)
    try:
        with pytest.raises(FileFormatError, match=r"^locked\.h5: cannot be read"):
            check_input_file(locked)
    finally:
        locked.chmod(0o644)
