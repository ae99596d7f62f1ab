"""fastMRI multi-coil HDF5: `kspace` [slice, coil, kx, ky] complex64, optional `mask` over ky.

Read: the `acceleration` and `num_low_frequency` attributes, when present, give R and the
centred ACS block (fastMRI's `(ky - acs + 1) // 2` placement), so that an ACS block touched by a
lattice line is not mistaken for a longer one; otherwise both are inferred from the mask (or
from the non-zero lines when there is no mask). FOV, slice thickness, protocol and identifiers
come from the `ismrmrd_header` attribute. `reconstruction_rss` and other datasets are ignored.

Write: the same layout, a boolean `mask`, `acceleration`, `num_low_frequency` (0 when the scan
has no ACS block) and a schema-valid `ismrmrd_header`. fastMRI has no place for slice positions
and orientation, so they travel as our own attributes `slice_positions_mm` [slice, 3] and
`read_dir`, `phase_dir`, `slice_dir` (DICOM LPS), which fastMRI's tools ignore.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from raki.errors import FileFormatError, InvalidScanError
from raki.io.atomic import atomic_output
from raki.io.hdf5 import as_complex, open_hdf5, read_array
from raki.io.header import HeaderInfo, build_ismrmrd_header, parse_ismrmrd_header
from raki.sampling import centred_acs_block, infer_acceleration
from raki.scan import Geometry, Scan

_DIRECTIONS = ("read_dir", "phase_dir", "slice_dir")


def read_fastmri(path: str | Path) -> Scan:
    """The scan in a fastMRI multi-coil file."""
    path = Path(path)
    with open_hdf5(path) as handle:
        kspace = _read_kspace(path, handle)
        mask = _read_mask(path, handle, kspace.shape[-1]) if "mask" in handle else None
        attrs = dict(handle.attrs)
    num_lines = kspace.shape[-1]
    info = _header(path, attrs.get("ismrmrd_header"))
    acceleration = _positive_int(path, attrs, "acceleration")
    acs_lines = _positive_int(path, attrs, "num_low_frequency", allow_zero=True)
    try:
        if mask is None:
            mask = np.any(kspace != 0, axis=(0, 1, 2))
        acs = None
        if acs_lines:
            acs = centred_acs_block(num_lines, acs_lines)
            if mask.any() and not mask[acs.as_slice()].all():
                raise FileFormatError(
                    path,
                    f"num_low_frequency={acs_lines} but the mask skips lines of the centred "
                    f"ACS block [{acs.start}, {acs.stop})",
                )
        if mask.any() and mask.all():
            acceleration = 1
        elif acceleration is None and acs_lines is not None:
            acceleration = infer_acceleration(mask, acs)
        geometry = Geometry(
            fov_mm=info.fov_mm,
            slice_thickness_mm=info.slice_thickness_mm,
            readout_oversampling=info.readout_oversampling,
            slice_positions_mm=_positions(path, attrs, kspace.shape[0]),
            **{name: _direction(path, attrs, name) for name in _DIRECTIONS},
        )
        protocol = info.protocol or _text(attrs.get("acquisition")) or ""
        if acs_lines == 0:
            return Scan(
                kspace=kspace,
                sampled=mask,
                acs=None,
                acceleration=acceleration if acceleration is not None else 1,
                geometry=geometry,
                protocol=protocol,
                identifiers=info.identifiers,
            )
        return Scan.from_kspace(
            kspace,
            mask,
            acs=acs,
            acceleration=acceleration,
            geometry=geometry,
            protocol=protocol,
            identifiers=info.identifiers,
        )
    except InvalidScanError as exc:
        raise FileFormatError(path, str(exc)) from exc


def write_fastmri(scan: Scan, path: str | Path) -> Path:
    """Write `scan` as a fastMRI multi-coil file, atomically."""
    path = Path(path)
    num_lines = scan.matrix[1]
    acs = scan.acs
    with atomic_output(path) as temporary, h5py.File(temporary, "w") as handle:
        handle.create_dataset("kspace", data=scan.kspace)
        handle.create_dataset("mask", data=scan.sampled)
        handle.attrs["acceleration"] = scan.acceleration
        if acs is None:
            handle.attrs["num_low_frequency"] = 0
        elif acs == centred_acs_block(num_lines, acs.lines):
            handle.attrs["num_low_frequency"] = acs.lines
        handle.attrs["ismrmrd_header"] = build_ismrmrd_header(scan)
        geometry = scan.geometry
        if geometry.slice_positions_mm is not None:
            handle.attrs["slice_positions_mm"] = np.asarray(
                geometry.slice_positions_mm, dtype=np.float64
            )
        for name in _DIRECTIONS:
            direction = getattr(geometry, name)
            if direction is not None:
                handle.attrs[name] = np.asarray(direction, dtype=np.float64)
    return path


def _read_kspace(path: Path, handle: h5py.File) -> np.ndarray:
    dataset = handle.get("kspace")
    if not isinstance(dataset, h5py.Dataset):
        raise FileFormatError(path, "has no 'kspace' dataset: not a fastMRI file")
    if dataset.ndim != 4:
        raise FileFormatError(
            path,
            f"kspace has {dataset.ndim} axes (shape {dataset.shape}); fastMRI multi-coil "
            "k-space has 4 [slice, coil, kx, ky] (single-coil data cannot use parallel imaging)",
        )
    if as_complex(np.zeros(0, dtype=dataset.dtype)) is None:
        raise FileFormatError(
            path, f"kspace is {dataset.dtype} (real-valued); k-space must be complex"
        )
    kspace = as_complex(read_array(path, dataset, "kspace"))
    assert kspace is not None
    return kspace.astype(np.complex64, copy=False)


def _read_mask(path: Path, handle: h5py.File, num_lines: int) -> np.ndarray:
    dataset = handle["mask"]
    if not isinstance(dataset, h5py.Dataset):
        raise FileFormatError(path, "'mask' is not a dataset")
    mask = np.asarray(read_array(path, dataset, "mask"))
    if mask.dtype.kind not in "biuf":
        raise FileFormatError(path, f"mask has type {mask.dtype}; expected booleans or numbers")
    mask = mask.squeeze() if mask.ndim > 1 else mask
    if mask.ndim != 1:
        raise FileFormatError(
            path, f"mask has shape {dataset.shape}; expected one value per ky line"
        )
    if mask.size != num_lines:
        raise FileFormatError(
            path, f"mask has {mask.size} entries but kspace has {num_lines} ky lines"
        )
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise FileFormatError(path, "mask holds NaN or infinite values")
    sampled = mask != 0
    if not sampled.any():
        raise FileFormatError(path, "mask is empty: no ky line is acquired")
    return sampled


def _header(path: Path, document: object) -> HeaderInfo:
    if document is None:
        return HeaderInfo()
    text = _text(document)
    if text is None:
        raise FileFormatError(path, "ismrmrd_header attribute is not text")
    try:
        return parse_ismrmrd_header(text)
    except ValueError as exc:
        raise FileFormatError(path, f"ismrmrd_header attribute {exc}") from None


def _text(value: object) -> str | None:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return None


def _positive_int(
    path: Path, attrs: dict[str, object], name: str, *, allow_zero: bool = False
) -> int | None:
    if name not in attrs:
        return None
    value = np.asarray(attrs[name])
    if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value).all():
        raise FileFormatError(path, f"attribute {name} is not a number ({value!r})")
    number = float(value.reshape(()))
    lowest = 0 if allow_zero else 1
    if number != round(number) or number < lowest:
        raise FileFormatError(path, f"attribute {name}={number:g} is not a valid count")
    return int(number)


def _positions(
    path: Path, attrs: dict[str, object], num_slices: int
) -> tuple[tuple[float, float, float], ...] | None:
    if "slice_positions_mm" not in attrs:
        return None
    positions = np.asarray(attrs["slice_positions_mm"])
    if positions.shape != (num_slices, 3) or positions.dtype.kind not in "iuf":
        raise FileFormatError(
            path,
            f"attribute slice_positions_mm has shape {positions.shape}; expected ({num_slices}, 3)",
        )
    return tuple(tuple(float(x) for x in row) for row in positions)  # type: ignore[misc]


def _direction(
    path: Path, attrs: dict[str, object], name: str
) -> tuple[float, float, float] | None:
    if name not in attrs:
        return None
    direction = np.asarray(attrs[name])
    if direction.shape != (3,) or direction.dtype.kind not in "iuf":
        raise FileFormatError(path, f"attribute {name} has shape {direction.shape}; expected (3,)")
    return (float(direction[0]), float(direction[1]), float(direction[2]))
