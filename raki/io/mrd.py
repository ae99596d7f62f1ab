"""ISMRMRD / MRD v1 HDF5 raw data: an XML header and one acquisition per readout.

Read (the layout the `ismrmrd` package and the vendor converters write): the first group holding
`xml` and `data` (normally `/dataset`). Acquisitions flagged as noise, navigator, phase
correction, feedback, dummy or phase-stabilisation data are skipped, as are those of another
encoding space. Of repetitions, contrasts, phases and sets the first (lowest index) is read;
averages of a line are averaged (see `raki.io.lines`). ky = kspace_encode_step_1 - limits.center
+ matrix_y // 2, so that the k-space centre lands on ky = N//2 (fastMRI's convention); slices are
numbered in the order of their indices. Readouts are kept as acquired (samples discarded at
either end stay), zero-padded only so that `center_sample` lands on kx = N//2. Reversed (EPI)
readouts, 3D encodings and non-Cartesian trajectories are refused.

Write: `/dataset/xml` and `/dataset/data` with the `ismrmrd` package's own HDF5 types, one
acquisition per sampled (slice, ky) line in slice-major order. Lines inside the ACS block are
flagged ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING when they lie on the R-lattice of the acquired
lines outside the block (through ky = N//2 when there are none) and ACQ_IS_PARALLEL_CALIBRATION
otherwise, as a scanner's integrated reference scan does.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import ismrmrd
import numpy as np
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype

from raki.errors import FileFormatError, InvalidScanError
from raki.io.atomic import atomic_output
from raki.io.hdf5 import open_hdf5
from raki.io.header import HeaderInfo, build_ismrmrd_header, parse_ismrmrd_header
from raki.io.lines import Readouts, assemble, place_readout, readout_width, scan_from_grid
from raki.scan import Geometry, Scan

_SKIPPED = (
    ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
    ismrmrd.ACQ_IS_NAVIGATION_DATA,
    ismrmrd.ACQ_IS_PHASECORR_DATA,
    ismrmrd.ACQ_IS_HPFEEDBACK_DATA,
    ismrmrd.ACQ_IS_RTFEEDBACK_DATA,
    ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
    ismrmrd.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION_REFERENCE,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION,
)
_HEAD_FIELDS = (
    "flags",
    "number_of_samples",
    "active_channels",
    "center_sample",
    "encoding_space_ref",
    "trajectory_dimensions",
    "position",
    "read_dir",
    "phase_dir",
    "slice_dir",
    "idx",
)
_FIRST_ONLY = ("repetition", "contrast", "phase", "set")


def flag_bit(flag: int) -> np.uint64:
    """The bit of an ISMRMRD acquisition flag (flags are numbered from 1)."""
    return np.uint64(1) << np.uint64(flag - 1)


def read_mrd(path: str | Path) -> Scan:
    """The scan in an ISMRMRD/MRD v1 HDF5 file."""
    path = Path(path)
    with open_hdf5(path) as handle:
        group = _dataset_group(path, handle)
        info = _header(path, group)
        heads, payloads = _acquisitions(path, group)
    try:
        return _scan(path, info, heads, payloads)
    except InvalidScanError as exc:
        raise FileFormatError(path, str(exc)) from exc


def write_mrd(scan: Scan, path: str | Path) -> Path:
    """Write `scan` as an MRD v1 file that the `ismrmrd` package reads, atomically."""
    path = Path(path)
    num_slices, num_coils, num_kx, _ = scan.kspace.shape
    lines = np.flatnonzero(scan.sampled)
    slices = np.repeat(np.arange(num_slices), lines.size)
    line_of = np.tile(lines, num_slices)
    count = slices.size

    heads = np.zeros(count, dtype=acquisition_header_dtype)
    heads["version"] = 1
    heads["scan_counter"] = np.arange(1, count + 1)
    heads["number_of_samples"] = num_kx
    heads["available_channels"] = num_coils
    heads["active_channels"] = num_coils
    for coil in range(num_coils):
        heads["channel_mask"][:, coil // 64] |= np.uint64(1) << np.uint64(coil % 64)
    heads["center_sample"] = num_kx // 2
    heads["idx"]["kspace_encode_step_1"] = line_of
    heads["idx"]["slice"] = slices
    heads["flags"] = _line_flags(scan, line_of, slices)
    geometry = scan.geometry
    if geometry.slice_positions_mm is not None:
        heads["position"] = np.asarray(geometry.slice_positions_mm, dtype=np.float32)[slices]
    for name in ("read_dir", "phase_dir", "slice_dir"):
        direction = getattr(geometry, name)
        if direction is not None:
            heads[name] = np.asarray(direction, dtype=np.float32)

    table = np.zeros(count, dtype=acquisition_dtype)
    table["head"] = heads
    empty = np.zeros(0, dtype=np.float32)
    readouts = scan.kspace.transpose(0, 3, 1, 2)  # [slice, ky, coil, kx]
    for row, (slice_index, line) in enumerate(zip(slices, line_of, strict=True)):
        samples = np.ascontiguousarray(readouts[slice_index, line], dtype=np.complex64)
        table[row]["data"] = samples.view(np.float32).ravel()
        table[row]["traj"] = empty

    xml = build_ismrmrd_header(scan).encode("utf-8")
    with atomic_output(path) as temporary, h5py.File(temporary, "w") as handle:
        group = handle.create_group("dataset")
        header = group.create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
        header[0] = xml
        group.create_dataset("data", data=table, maxshape=(None,), chunks=True)
    return path


def _imaging_phase(scan: Scan) -> int:
    """ky mod R of the imaging lattice: that of most acquired lines outside the ACS (a mask
    need not pass through N//2, and fastMRI's rounded gaps only mostly keep one phase), else
    the one through the centre line."""
    lines = np.arange(scan.sampled.size)
    outside = scan.sampled & ~((lines >= scan.acs.start) & (lines < scan.acs.stop))
    if scan.acceleration < 2 or not outside.any():
        return scan.matrix[1] // 2
    return int(np.bincount(lines[outside] % scan.acceleration).argmax())


def _line_flags(scan: Scan, lines: np.ndarray, slices: np.ndarray) -> np.ndarray:
    flags = np.zeros(lines.size, dtype=np.uint64)
    if scan.acs is not None:
        in_acs = (lines >= scan.acs.start) & (lines < scan.acs.stop)
        on_lattice = (lines - _imaging_phase(scan)) % scan.acceleration == 0
        flags[in_acs & on_lattice] |= flag_bit(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
        flags[in_acs & ~on_lattice] |= flag_bit(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
    starts = np.flatnonzero(np.diff(slices, prepend=-1))
    ends = np.flatnonzero(np.diff(slices, append=slices[-1] + 1))
    flags[starts] |= flag_bit(ismrmrd.ACQ_FIRST_IN_SLICE) | flag_bit(
        ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1
    )
    flags[ends] |= flag_bit(ismrmrd.ACQ_LAST_IN_SLICE) | flag_bit(ismrmrd.ACQ_LAST_IN_ENCODE_STEP1)
    flags[-1] |= flag_bit(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    return flags


def _dataset_group(path: Path, handle: h5py.File) -> h5py.Group:
    candidates = ["dataset", *(name for name in handle if name != "dataset")]
    for name in candidates:
        group = handle.get(name)
        if isinstance(group, h5py.Group) and "xml" in group:
            return group
    raise FileFormatError(path, "has no ISMRMRD dataset (no group holding an 'xml' header)")


def _header(path: Path, group: h5py.Group) -> HeaderInfo:
    dataset = group["xml"]
    if not isinstance(dataset, h5py.Dataset) or dataset.size < 1 or dataset.dtype.kind not in "OS":
        raise FileFormatError(path, "ISMRMRD 'xml' header is not a string dataset")
    try:
        document = dataset[0]
    except (OSError, ValueError, TypeError) as exc:
        raise FileFormatError(
            path, f"cannot read the ISMRMRD header ({exc.__class__.__name__})"
        ) from None
    try:
        info = parse_ismrmrd_header(document)
    except (ValueError, TypeError) as exc:
        raise FileFormatError(path, f"ISMRMRD header {exc}") from None
    if info.trajectory not in (None, "cartesian"):
        raise FileFormatError(
            path, f"has a {info.trajectory} trajectory; only Cartesian k-space is supported"
        )
    return info


def _acquisitions(path: Path, group: h5py.Group) -> tuple[np.ndarray, np.ndarray]:
    dataset = group.get("data")
    if dataset is None:
        raise FileFormatError(path, "MRD dataset holds no acquisitions")
    names = dataset.dtype.names if isinstance(dataset, h5py.Dataset) else None
    if not names or "head" not in names or "data" not in names or dataset.ndim != 1:
        raise FileFormatError(path, "'data' is not an ISMRMRD acquisition table")
    missing = [name for name in _HEAD_FIELDS if name not in (dataset.dtype["head"].names or ())]
    if missing:
        raise FileFormatError(path, f"acquisition headers lack {', '.join(missing)}")
    if dataset.shape[0] == 0:
        raise FileFormatError(path, "MRD dataset holds no acquisitions")
    try:
        heads = dataset.fields("head")[()]
        payloads = dataset.fields("data")[()]
    except (OSError, ValueError, TypeError) as exc:
        raise FileFormatError(
            path, f"cannot read acquisitions ({exc.__class__.__name__})"
        ) from None
    return heads, payloads


def _scan(path: Path, info: HeaderInfo, heads: np.ndarray, payloads: np.ndarray) -> Scan:
    flags = heads["flags"].astype(np.uint64)
    idx = heads["idx"]

    def has(flag: int) -> np.ndarray:
        return (flags & flag_bit(flag)) != 0

    keep = heads["encoding_space_ref"] == 0
    for flag in _SKIPPED:
        keep &= ~has(flag)
    if not keep.any():
        raise FileFormatError(path, "holds no imaging acquisitions (only noise or other data)")
    if (has(ismrmrd.ACQ_IS_REVERSE) & keep).any():
        raise FileFormatError(path, "holds reversed (EPI) readouts, which are not supported")
    if (heads["trajectory_dimensions"][keep] > 0).any():
        raise FileFormatError(path, "acquisitions carry trajectories; only Cartesian is supported")
    if (idx["kspace_encode_step_2"][keep] != 0).any() or (info.matrix and info.matrix[2] > 1):
        raise FileFormatError(path, "is a 3D acquisition; only 2D (multi-slice) is supported")
    for dimension in _FIRST_ONLY:
        keep &= idx[dimension] == idx[dimension][keep].min()
    rows = np.flatnonzero(keep)

    coils = np.unique(heads["active_channels"][rows])
    if coils.size != 1 or coils[0] == 0:
        raise FileFormatError(
            path, f"acquisitions disagree on the number of coils ({coils.tolist()})"
        )
    num_coils = int(coils[0])
    samples = heads["number_of_samples"][rows].astype(int)
    centres = [int(c) if c > 0 else None for c in heads["center_sample"][rows]]
    width = readout_width(samples.tolist(), centres)
    data = np.zeros((rows.size, num_coils, width), dtype=np.complex64)
    for out, (row, count, centre) in enumerate(zip(rows, samples, centres, strict=True)):
        values = np.asarray(payloads[row], dtype=np.float32)
        if values.size != 2 * num_coils * count:
            raise FileFormatError(
                path,
                f"acquisition {row} holds {values.size // 2} samples; its header says "
                f"{num_coils} coils x {count}",
            )
        readout = values.view(np.complex64).reshape(num_coils, count)
        data[out] = place_readout(readout, centre, width)

    encode_step = idx["kspace_encode_step_1"][rows].astype(int)
    num_ky, centre_line = _ky_layout(info, encode_step)
    slice_numbers, slices = np.unique(idx["slice"][rows], return_inverse=True)
    calibration = has(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)[rows]
    both = has(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)[rows]
    readouts = Readouts(
        data=data,
        slices=slices.astype(int),
        lines=encode_step - centre_line + num_ky // 2,
        imaging=~calibration | both,
        calibration=calibration | both,
    )
    header_r = info.acceleration if info.acceleration and info.acceleration > 1 else None
    grid = assemble(readouts, num_ky, header_r)
    first_of_slice = [rows[np.flatnonzero(slices == s)[0]] for s in range(slice_numbers.size)]
    geometry = _geometry(info, heads, first_of_slice)
    return scan_from_grid(grid, geometry, info.protocol, info.identifiers)


def _ky_layout(info: HeaderInfo, encode_step: np.ndarray) -> tuple[int, int]:
    """(ky lines, encode step of the k-space centre) from the header, else from the data."""
    if info.matrix is None:
        top = int(encode_step.max()) + 1
        return top, top // 2
    num_ky = info.matrix[1]
    if info.ky_limits is not None:
        low, high, centre = info.ky_limits
        if low < centre <= high:  # a centre at the first line means "not set"
            return num_ky, centre
    return num_ky, num_ky // 2


def _geometry(info: HeaderInfo, heads: np.ndarray, first_of_slice: list[int]) -> Geometry:
    directions = {
        name: _vector(heads[name][first_of_slice[0]])
        for name in ("read_dir", "phase_dir", "slice_dir")
    }
    positions = tuple(_vector(heads["position"][row], keep_zero=True) for row in first_of_slice)
    unknown = all(d is None for d in directions.values()) and not np.any(
        heads["position"][first_of_slice]
    )
    return Geometry(
        fov_mm=info.fov_mm,
        slice_thickness_mm=info.slice_thickness_mm,
        readout_oversampling=info.readout_oversampling,
        slice_positions_mm=None if unknown else positions,  # type: ignore[arg-type]
        **directions,  # type: ignore[arg-type]
    )


def _vector(values: np.ndarray, *, keep_zero: bool = False) -> tuple[float, float, float] | None:
    """A float32 header vector as the shortest decimals that round-trip (0.1, not 0.100000001)."""
    if not keep_zero and not np.any(values):
        return None
    return tuple(float(str(np.float32(v))) for v in values)  # type: ignore[return-value]
