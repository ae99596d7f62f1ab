"""Bare k-space arrays: MATLAB .mat (v5 and v7.3), NumPy .npy and .npz.

Which array: `variable` when given; else, in an .npz of our own layout, `kspace`; else the
largest complex array in the file (v7.3 stores complex as a {real, imag} compound).

Which axis is which: `axis_order` names the axes of the array as stored, comma-separated, in
the file's own dimension order (MATLAB's for .mat files, so `"kx,ky,slice,coil"` for a MATLAB
`[320 256 1 8]` array; NumPy's for .npy/.npz). Names: kx (or readout, ro), ky (or pe, phase),
coil (or channel), slice, and `1` for a singleton axis. kx and ky are required; coil and slice
default to 1. Without `axis_order`, a heuristic that fits how scanners and MATLAB code store
raw data:

1. singleton axes are dropped;
2. kx (readout) is the axis that varies fastest in memory as stored: the first axis of a MATLAB
   (column-major) array, the last of a C-ordered NumPy array;
3. coil is the smallest remaining axis (on a tie, the one slower in memory);
4. ky is the fastest-varying remaining axis, and a fourth axis, if any, is slice.

The sampling mask is the set of ky lines holding any non-zero sample; ACS and R are inferred.

Write (.npz only): `kspace` [slice, coil, kx, ky], `mask`, `axis_order`, `acceleration`, `acs`
([start, stop] or empty) and `metadata` (JSON: geometry, identifiers, protocol), all plain arrays
that `numpy.load` reads without pickling.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

from raki.errors import FileFormatError, InvalidScanError
from raki.io.atomic import atomic_output
from raki.io.hdf5 import as_complex, open_hdf5, read_array
from raki.io.paths import check_input_file
from raki.sampling import AcsBlock
from raki.scan import Geometry, Identifiers, Scan

SCAN_AXES = ("slice", "coil", "kx", "ky")
_ALIASES = {
    "kx": "kx",
    "readout": "kx",
    "read": "kx",
    "ro": "kx",
    "ky": "ky",
    "pe": "ky",
    "phase": "ky",
    "line": "ky",
    "lines": "ky",
    "coil": "coil",
    "coils": "coil",
    "channel": "coil",
    "channels": "coil",
    "cha": "coil",
    "slice": "slice",
    "slices": "slice",
    "slc": "slice",
    "1": "1",
}
_MATLAB_V73 = b"\x00\x02"
_OWN_LAYOUT = "slice,coil,kx,ky"


def read_array_scan(
    path: Path, file_format: str, *, axis_order: str | None = None, variable: str | None = None
) -> Scan:
    """The scan held as one array in a .mat, .npy or .npz file."""
    path = check_input_file(path)
    extras: dict[str, np.ndarray] = {}
    if file_format == "npy":
        name, array = "array", _load_npy(path)
    elif file_format == "npz":
        name, array, extras = _load_npz(path, variable)
    elif file_format == "mat":
        name, array = _load_mat(path, variable)
    else:
        raise FileFormatError(path, f"{file_format} is not an array format")
    if axis_order is None and "axis_order" in extras:
        axis_order = str(extras["axis_order"])
    kspace = to_scan_axes(path, name, array, axis_order)
    try:
        return _scan(path, kspace, extras)
    except InvalidScanError as exc:
        raise FileFormatError(path, str(exc)) from exc


def write_npz(scan: Scan, path: str | Path) -> Path:
    """Write `scan` as an .npz of plain arrays (no pickles), atomically."""
    path = Path(path)
    arrays = {
        "kspace": scan.kspace,
        "mask": scan.sampled,
        "axis_order": np.array(_OWN_LAYOUT),
        "acceleration": np.array(scan.acceleration),
        "acs": np.array([scan.acs.start, scan.acs.stop] if scan.acs else [], dtype=np.int64),
        "metadata": np.array(json.dumps(_metadata(scan))),
    }
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)  # a file object: NumPy adds no ".npz" to the name
    return path


def to_scan_axes(path: Path, name: str, array: np.ndarray, axis_order: str | None) -> np.ndarray:
    """The array as k-space [slice, coil, kx, ky] complex64, by `axis_order` or the heuristic."""
    complex_array = as_complex(array)
    if complex_array is None:
        raise FileFormatError(
            path, f"{name} is {array.dtype} (real-valued); k-space must be complex"
        )
    labels = (
        parse_axis_order(path, name, axis_order, complex_array.shape)
        if axis_order is not None
        else guess_axis_order(path, name, complex_array)
    )
    kept = [axis for axis, label in enumerate(labels) if label != "1"]
    squeezed = complex_array.transpose(
        kept + [a for a in range(complex_array.ndim) if a not in kept]
    )
    squeezed = squeezed.reshape(squeezed.shape[: len(kept)])
    present = [labels[axis] for axis in kept]
    for label in SCAN_AXES:
        if label not in present:
            squeezed = squeezed[..., np.newaxis]
            present.append(label)
    order = [present.index(label) for label in SCAN_AXES]
    return np.ascontiguousarray(squeezed.transpose(order), dtype=np.complex64)


def parse_axis_order(path: Path, name: str, axis_order: str, shape: tuple[int, ...]) -> list[str]:
    """Axis labels from a user's `axis_order`, checked against the array's shape."""
    tokens = axis_order.replace(",", " ").split()
    labels = []
    for token in tokens:
        label = _ALIASES.get(token.lower())
        if label is None:
            raise FileFormatError(
                path, f"axis_order: unknown axis name {token!r} (use kx, ky, coil, slice or 1)"
            )
        labels.append(label)
    if len(labels) != len(shape):
        raise FileFormatError(
            path,
            f"axis_order {axis_order!r} names {len(labels)} axes but {name} has {len(shape)} "
            f"(shape {shape})",
        )
    named = [label for label in labels if label != "1"]
    if len(set(named)) != len(named):
        raise FileFormatError(path, f"axis_order {axis_order!r} names an axis twice")
    if "kx" not in named or "ky" not in named:
        raise FileFormatError(path, f"axis_order {axis_order!r} must name both kx and ky")
    for label, size in zip(labels, shape, strict=True):
        if label == "1" and size != 1:
            raise FileFormatError(
                path, f"axis_order {axis_order!r} marks an axis of size {size} as singleton"
            )
    return labels


def guess_axis_order(path: Path, name: str, array: np.ndarray) -> list[str]:
    """Axis labels by the module's heuristic (readout fastest in memory, coils fewest)."""
    axes = [axis for axis, size in enumerate(array.shape) if size > 1]
    if len(axes) < 2:
        raise FileFormatError(
            path, f"{name} has shape {array.shape}: k-space needs at least kx and ky axes"
        )
    if len(axes) > 4:
        raise FileFormatError(
            path,
            f"{name} has {len(axes)} non-singleton axes (shape {array.shape}); pass axis_order",
        )
    speed = {axis: abs(array.strides[axis]) for axis in axes}  # smaller stride = faster
    labels = ["1"] * array.ndim
    readout = min(axes, key=lambda a: speed[a])
    labels[readout] = "kx"
    rest = [axis for axis in axes if axis != readout]
    if len(rest) >= 2:
        coil = min(rest, key=lambda a: (array.shape[a], -speed[a]))
        labels[coil] = "coil"
        rest.remove(coil)
    rest.sort(key=lambda a: speed[a])
    labels[rest[0]] = "ky"
    if len(rest) == 2:
        labels[rest[1]] = "slice"
    return labels


def _scan(path: Path, kspace: np.ndarray, extras: dict[str, np.ndarray]) -> Scan:
    mask = None
    if "mask" in extras:
        mask = np.asarray(extras["mask"])
        if mask.ndim != 1 or mask.size != kspace.shape[-1]:
            raise FileFormatError(
                path, f"mask has shape {mask.shape} but k-space has {kspace.shape[-1]} ky lines"
            )
        mask = mask != 0
        if not mask.any():
            raise FileFormatError(path, "mask is empty: no ky line is acquired")
    metadata = _parse_metadata(path, extras.get("metadata"))
    acceleration = None
    if "acceleration" in extras:
        acceleration = int(np.asarray(extras["acceleration"]).reshape(()))
    if "acs" in extras:
        bounds = np.asarray(extras["acs"]).ravel()
        if bounds.size not in (0, 2):
            raise FileFormatError(path, f"acs holds {bounds.size} values; expected [start, stop]")
        acs = AcsBlock(int(bounds[0]), int(bounds[1])) if bounds.size == 2 else None
        return Scan(
            kspace=kspace,
            sampled=mask if mask is not None else np.any(kspace != 0, axis=(0, 1, 2)),
            acs=acs,
            acceleration=acceleration or 1,
            **metadata,
        )
    return Scan.from_kspace(kspace, mask, acceleration=acceleration, **metadata)


def _metadata(scan: Scan) -> dict[str, object]:
    return {
        "geometry": dataclasses.asdict(scan.geometry),
        "identifiers": dataclasses.asdict(scan.identifiers),
        "protocol": scan.protocol,
    }


def _parse_metadata(path: Path, document: np.ndarray | None) -> dict[str, object]:
    if document is None:
        return {}
    try:
        data = json.loads(str(np.asarray(document).reshape(())))
        geometry = {key: _tuples(value) for key, value in data.get("geometry", {}).items()}
        return {
            "geometry": Geometry(**geometry),
            "identifiers": Identifiers(**data.get("identifiers", {})),
            "protocol": str(data.get("protocol", "")),
        }
    except (ValueError, TypeError, AttributeError) as exc:
        raise FileFormatError(path, f"metadata is not valid ({exc.__class__.__name__})") from None


def _tuples(value: object) -> object:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _load_npy(path: Path) -> np.ndarray:
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        reason = (
            "truncated" if "larger than" in str(exc) or "greater than" in str(exc) else "corrupt"
        )
        raise FileFormatError(path, f"{reason} .npy file ({_first_line(exc)})") from None
    except (OSError, EOFError) as exc:
        raise FileFormatError(path, f"unreadable .npy file ({_first_line(exc)})") from None
    return np.array(mapped, order="K")


def _load_npz(path: Path, variable: str | None) -> tuple[str, np.ndarray, dict[str, np.ndarray]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FileFormatError(path, f"not a readable .npz archive ({_first_line(exc)})") from None
    with archive:
        headers = {}
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            headers[name] = _npz_member_header(path, archive, info)
        if not headers:
            raise FileFormatError(path, "the archive holds no .npy arrays")
        own_layout = "kspace" in headers and "axis_order" in headers
        name = _choose(path, variable, headers, prefer="kspace" if own_layout else None)
        wanted = [name] + (
            [n for n in ("mask", "axis_order", "acceleration", "acs", "metadata") if n in headers]
            if own_layout
            else []
        )
        arrays = {}
        for member in wanted:
            try:
                with archive.open(member + ".npy") as handle:
                    arrays[member] = np.lib.format.read_array(handle, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise FileFormatError(path, f"cannot read {member} ({_first_line(exc)})") from None
    array = arrays.pop(name)
    return name, array, arrays


def _npz_member_header(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an .npz member, checked against the bytes the archive holds."""
    try:
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
            header_bytes = handle.tell() if handle.seekable() else 0
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise FileFormatError(path, f"corrupt array {info.filename} ({_first_line(exc)})") from None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if dtype.kind != "O" and info.file_size - header_bytes < expected:
        raise FileFormatError(
            path,
            f"array {info.filename} claims shape {shape} but holds only {info.file_size} bytes",
        )
    return tuple(shape), dtype


def _load_mat(path: Path, variable: str | None) -> tuple[str, np.ndarray]:
    with open(path, "rb") as handle:
        preamble = handle.read(128)
    if preamble[124:126] in (_MATLAB_V73, _MATLAB_V73[::-1]):
        return _load_mat73(path, variable)
    import scipy.io  # here, not at the top: only MATLAB v5 files need scipy

    try:
        contents = scipy.io.loadmat(path, squeeze_me=False)
    except NotImplementedError:
        return _load_mat73(path, variable)
    except Exception as exc:  # scipy raises many types for corrupt files
        raise FileFormatError(
            path, f"not a readable MATLAB file ({exc.__class__.__name__}: {_first_line(exc)})"
        ) from None
    arrays = {
        name: value
        for name, value in contents.items()
        if not name.startswith("__")
        and isinstance(value, np.ndarray)
        and value.dtype.kind in "biufc"
    }
    headers = {name: (value.shape, value.dtype) for name, value in arrays.items()}
    name = _choose(path, variable, headers)
    return name, arrays[name]


def _load_mat73(path: Path, variable: str | None) -> tuple[str, np.ndarray]:
    with open_hdf5(path) as handle:
        datasets = {
            name: item
            for name, item in handle.items()
            if isinstance(item, h5py.Dataset) and not name.startswith("#")
        }
        headers = {name: (item.shape[::-1], item.dtype) for name, item in datasets.items()}
        name = _choose(path, variable, headers)
        stored = read_array(path, datasets[name], name)
    # h5py sees MATLAB's column-major array with its axes reversed; .T restores MATLAB's order
    # and leaves the first axis fastest in memory, as MATLAB stores it.
    return name, stored.T


def _choose(
    path: Path,
    variable: str | None,
    headers: dict[str, tuple[tuple[int, ...], np.dtype]],
    prefer: str | None = None,
) -> str:
    if variable is not None:
        if variable not in headers:
            listed = ", ".join(sorted(headers)[:10]) or "none"
            raise FileFormatError(path, f"has no variable {variable!r} (found: {listed})")
        return variable
    if prefer is not None:
        return prefer
    complex_names = [
        name for name, (_, dtype) in headers.items() if as_complex(np.zeros(0, dtype)) is not None
    ]
    if not complex_names:
        listed = ", ".join(sorted(headers)[:10]) or "none"
        raise FileFormatError(path, f"holds no complex array (variables: {listed})")
    return max(complex_names, key=lambda n: int(np.prod(headers[n][0], dtype=np.int64)))


def _first_line(exc: BaseException) -> str:
    """An exception's first line; for OS errors only the reason, never the path."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).splitlines()
    return lines[0] if lines else exc.__class__.__name__
