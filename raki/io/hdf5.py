"""Opening HDF5 files and reading their arrays defensively, for every HDF5-based format.

A truncated or corrupt file, a dataset whose claimed size far exceeds what is stored, and
complex numbers stored as a {real, imag} compound all meet one set of checks here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from raki.errors import FileFormatError, MissingFileError
from raki.io.paths import check_input_file

# A compressed dataset may expand at most this much (zero-filled undersampled k-space
# compresses by roughly R; nothing real compresses a thousand-fold).
MAX_COMPRESSION_RATIO = 1000


@contextmanager
def open_hdf5(path: Path) -> Iterator[h5py.File]:
    """The file opened read-only; FileFormatError when it is not a readable HDF5 file."""
    check_input_file(path)
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise MissingFileError(path) from None
    except (OSError, ValueError) as exc:
        raise FileFormatError(path, _open_error(exc)) from None
    try:
        yield handle
    finally:
        handle.close()


def read_array(path: Path, dataset: h5py.Dataset, what: str) -> np.ndarray:
    """The dataset's values, after checking that the file really holds that much data."""
    expected = dataset.size * dataset.dtype.itemsize
    if dataset.dtype.kind != "O" and expected > 0:
        stored = dataset.id.get_storage_size()
        if stored == 0:
            raise FileFormatError(path, f"{what} has no data stored (shape {dataset.shape})")
        if dataset.chunks is None and stored < expected:
            raise FileFormatError(
                path, f"{what} is truncated: {stored} of {expected} bytes are stored"
            )
        if expected > MAX_COMPRESSION_RATIO * stored:
            raise FileFormatError(
                path,
                f"{what} claims shape {dataset.shape} but only {stored} bytes are stored",
            )
    try:
        return dataset[()]
    except (OSError, ValueError, TypeError) as exc:
        raise FileFormatError(path, f"cannot read {what} ({_short(exc)})") from None


def as_complex(array: np.ndarray) -> np.ndarray | None:
    """A complex view of complex data, including {real, imag} compounds; None if not complex."""
    if np.iscomplexobj(array):
        return array
    names = array.dtype.names
    if names is None or len(names) != 2:
        return None
    real, imag = (
        ("real", "imag")
        if set(names) == {"real", "imag"}
        else ("r", "i")
        if set(names) == {"r", "i"}
        else (None, None)
    )
    if real is None or array.dtype[real].kind not in "fiu" or array.dtype[imag].kind not in "fiu":
        return None
    precision = np.complex128 if array.dtype[real].itemsize > 4 else np.complex64
    result = np.empty_like(array, dtype=precision)  # keeps the memory order
    result.real = array[real]
    result.imag = array[imag]
    return result


def _open_error(exc: BaseException) -> str:
    """Why h5py could not open a file, without the path h5py quotes."""
    text = str(exc)
    truncated = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if truncated:
        present, expected = truncated.groups()
        return f"truncated HDF5 file ({present} of {expected} bytes present)"
    if "file signature not found" in text:
        return "not an HDF5 file (no HDF5 signature)"
    return f"not a readable HDF5 file ({_short(exc)})"


def _short(exc: BaseException) -> str:
    """An exception's first line, without any file name h5py quotes in it."""
    lines = str(exc).splitlines()
    text = re.sub(r"name = '[^']*',?\s*", "", lines[0] if lines else "").strip()
    return text or exc.__class__.__name__
