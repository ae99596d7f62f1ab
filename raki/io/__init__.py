"""Reading and writing scans: one entry point over every raw k-space format we know.

`read_scan` detects the format from the file's content (`raki.io.detect`); `write_scan` takes
it from `format=` or the file's suffix. Every problem with a file is a `FileFormatError` whose
one-line message names the file (base name only) and what is wrong, including k-space that the
Scan model refuses (non-finite values, an empty mask ...).

Formats: fastmri (`raki.io.fastmri`), mrd (`raki.io.mrd`), twix (`raki.io.twix`, read only),
mat, npy (read only) and npz (`raki.io.arrays`). Each format's module is imported when a file
of that format is read or written, so reading a fastMRI file loads neither twixtools nor scipy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from raki.errors import FileFormatError
from raki.io.detect import check_readable, detect_format
from raki.io.paths import check_input_file

if TYPE_CHECKING:
    from raki.scan import Scan

__all__ = [
    "ARRAY_FORMATS",
    "FORMATS",
    "WRITABLE_FORMATS",
    "check_input_file",
    "detect_format",
    "format_from_suffix",
    "read_scan",
    "write_scan",
]

FORMATS = ("fastmri", "mrd", "twix", "mat", "npy", "npz")
WRITABLE_FORMATS = ("fastmri", "mrd", "npz")
ARRAY_FORMATS = ("mat", "npy", "npz")

_SUFFIXES = {
    ".h5": "fastmri",
    ".hdf5": "fastmri",
    ".mrd": "mrd",
    ".ismrmrd": "mrd",
    ".npz": "npz",
}


def read_scan(
    path: str | Path,
    *,
    axis_order: str | None = None,
    format: str | None = None,
    variable: str | None = None,
) -> Scan:
    """The scan in `path`, its format detected from the content unless `format` is given.

    `axis_order` and `variable` apply to array files only (mat, npy, npz; see
    `raki.io.arrays` for the axis names and the heuristic used without `axis_order`).
    """
    path = Path(path)
    check_readable(path)
    file_format = format if format is not None else detect_format(path)
    if file_format not in FORMATS:
        raise FileFormatError(
            path, f"unknown format {file_format!r} (readable: {', '.join(FORMATS)})"
        )
    if file_format in ARRAY_FORMATS:
        from raki.io.arrays import read_array_scan

        return read_array_scan(path, file_format, axis_order=axis_order, variable=variable)
    for option, value in (("axis_order", axis_order), ("variable", variable)):
        if value is not None:
            raise FileFormatError(
                path, f"{option} applies to array files (mat, npy, npz), not to {file_format}"
            )
    if file_format == "fastmri":
        from raki.io.fastmri import read_fastmri

        return read_fastmri(path)
    if file_format == "mrd":
        from raki.io.mrd import read_mrd

        return read_mrd(path)
    from raki.io.twix import read_twix

    return read_twix(path)


def format_from_suffix(path: str | Path) -> str | None:
    """The writable format a file name's suffix stands for, None when it names none."""
    return _SUFFIXES.get(Path(path).suffix.lower())


def write_scan(scan: Scan, path: str | Path, *, format: str | None = None) -> Path:
    """Write `scan` atomically; the format is `format`, else taken from the suffix.

    .h5/.hdf5 -> fastmri, .mrd/.ismrmrd -> mrd, .npz -> npz; `format="mrd"` writes MRD to
    any name, .h5 included.
    """
    path = Path(path)
    file_format = format if format is not None else format_from_suffix(path)
    if file_format is None:
        raise FileFormatError(
            path,
            f"cannot tell the format from the suffix {path.suffix or '(none)'!r}; pass format= "
            f"({', '.join(WRITABLE_FORMATS)})",
        )
    if file_format not in WRITABLE_FORMATS:
        raise FileFormatError(
            path, f"cannot write {file_format!r} (writable: {', '.join(WRITABLE_FORMATS)})"
        )
    if not path.parent.is_dir():
        raise FileFormatError(path, "the folder to write into does not exist")
    if file_format == "fastmri":
        from raki.io.fastmri import write_fastmri as writer
    elif file_format == "mrd":
        from raki.io.mrd import write_mrd as writer
    else:
        from raki.io.arrays import write_npz as writer
    try:
        return writer(scan, path)
    except OSError as exc:
        raise FileFormatError(path, f"cannot be written ({exc.strerror or 'I/O error'})") from None
