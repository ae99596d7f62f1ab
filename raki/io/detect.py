"""Which scan format a file holds, decided by its content (never by its name).

- MATLAB: the 128-byte MAT-file header ("MATLAB ..." text, version and endian marks); v7.3
  files are HDF5 behind that header, and still count as "mat".
- NumPy: the `\\x93NUMPY` magic (.npy), or a ZIP archive of .npy members (.npz).
- HDF5 (signature at byte 0, or after a user block): a `kspace` dataset makes it fastMRI; a
  group holding an ISMRMRD `xml` header makes it MRD.
- Siemens twix: a VB measurement header (header length, buffer count, a protocol buffer name
  such as "Config") at byte 0, or a VD/VE multi-RAID table pointing at such headers.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import h5py

from raki.errors import FileFormatError, MissingFileError
from raki.io.hdf5 import open_hdf5
from raki.io.paths import check_input_file
from raki.io.twix import measurement_offsets

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")


def detect_format(path: str | Path) -> str:
    """One of "fastmri", "mrd", "twix", "mat", "npy", "npz"; FileFormatError otherwise."""
    path = check_input_file(path)
    head = _read_head(path, 8192)
    if not head:
        raise FileFormatError(path, "is empty")
    if head.startswith(b"MATLAB") and len(head) >= 128 and head[126:128] in (b"IM", b"MI"):
        return "mat"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(_ZIP_SIGNATURES):
        return _zip_format(path)
    if any(head[offset : offset + 8] == HDF5_SIGNATURE for offset in _HDF5_OFFSETS):
        return _hdf5_format(path)
    if _is_twix(path):
        return "twix"
    if _looks_like_text(head):
        raise FileFormatError(path, "unknown format: a text file, not a scan")
    raise FileFormatError(
        path, "unknown format: not fastMRI/MRD HDF5, Siemens twix, MATLAB .mat, .npy or .npz"
    )


def check_readable(path: Path) -> None:
    """FileFormatError when `path` is missing, not a regular file, or unreadable
    (`raki.io.paths.check_input_file`)."""
    check_input_file(path)


def _read_head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except FileNotFoundError:
        raise MissingFileError(path) from None
    except PermissionError:
        raise FileFormatError(path, "cannot be read (permission denied)") from None
    except OSError as exc:
        raise FileFormatError(path, f"cannot be read ({exc.strerror or exc})") from None


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        raise FileFormatError(path, "corrupt or truncated ZIP (.npz) archive") from None
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    raise FileFormatError(path, "a ZIP archive that is not an .npz of NumPy arrays")


def _hdf5_format(path: Path) -> str:
    with open_hdf5(path) as handle:
        if isinstance(handle.get("kspace"), h5py.Dataset):
            return "fastmri"
        for name in handle:
            group = handle.get(name)
            if isinstance(group, h5py.Group) and "xml" in group:
                return "mrd"
    raise FileFormatError(
        path, "HDF5 file with neither a fastMRI 'kspace' dataset nor an ISMRMRD dataset"
    )


def _is_twix(path: Path) -> bool:
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            measurement_offsets(handle, size)
    except (OSError, ValueError, struct.error):
        return False
    return True


def _looks_like_text(head: bytes) -> bool:
    controls = set(range(32)) - {9, 10, 12, 13}
    return not any(byte in controls for byte in head)
