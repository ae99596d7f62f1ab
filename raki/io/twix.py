"""Siemens twix raw data (.dat, VB and VD/VE multi-RAID) through `twixtools`.

The last measurement of a multi-RAID file is the image scan (the ones before are adjustments
and noise). Readouts flagged as noise, phase correction, phase stabilisation, feedback, sync
data or slice-acceleration reference are skipped. PATREFSCAN lines are calibration-only,
PATREFANDIMASCAN lines calibration and imaging (placement rules: `raki.io.lines`). Each
readout goes to ky = Lin - CenterLin + N//2 and its centre column to kx = width//2; the first
repetition, echo, phase and set are read and averages are averaged.

Readout oversampling is kept as acquired (nothing is removed); the readout FOV is scaled to
match, so that FOV / matrix stays the true sample spacing. Geometry is in DICOM LPS (Siemens'
patient coordinates are LPS): slice centres from each slice's first readout, directions from
its quaternion with siemens_to_ismrmrd's convention (columns: phase, read, slice). Identifiers
come from the protocol; values made only of 'x' (Siemens' anonymisation) count as absent, and
the study date/time is that of the frame of reference. 3D (partition-encoded) and EPI
(reflected-line) scans are refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np

from raki.errors import FileFormatError, InvalidScanError, MissingFileError
from raki.io.lines import Readouts, assemble, place_readout, readout_width, scan_from_grid
from raki.io.paths import check_input_file
from raki.scan import Geometry, Identifiers, Scan

_SKIPPED = (
    "ACQEND",
    "SYNCDATA",
    "NOISEADJSCAN",
    "PHASCOR",
    "REFPHASESTABSCAN",
    "PHASESTABSCAN",
    "RTFEEDBACK",
    "HPFEEDBACK",
    "SLICE_ACCEL_REFSCAN",
    "SLICE_ACCEL_PHASCOR",
    "noname60",
)
_FIRST_ONLY = ("Rep", "Eco", "Phs", "Set")
_VB_HEADER_BYTES = 128
_VD_SCAN_HEADER_BYTES = 192
_VD_CHANNEL_HEADER_BYTES = 32
_RAID_ENTRY_BYTES = 152
_ACQEND, _SYNCDATA = 1 << 0, 1 << 5


def read_twix(path: str | Path) -> Scan:
    """The image scan of a Siemens raw data file."""
    path = check_input_file(path)
    _check_measurement_blocks(path)
    measurement = _load(path)
    try:
        return _scan(path, measurement)
    except InvalidScanError as exc:
        raise FileFormatError(path, str(exc)) from exc


def measurement_offsets(handle: BinaryIO, size: int) -> tuple[bool, list[tuple[int, int]]]:
    """(is VD/VE, [(offset, length)] of each measurement) as the file's first bytes state them.

    The first measurement must start with a protocol header (length, buffer count, a buffer
    name such as "Config"); later ones are checked when read. Raises ValueError otherwise.
    """
    handle.seek(0)
    first, second = struct.unpack("<II", handle.read(8))
    is_vd = first < 10000 and 0 < second <= 64  # twixtools' test: a multi-RAID table
    measurements = [(0, size)]
    if is_vd:
        measurements = []
        for index in range(second):
            handle.seek(8 + index * _RAID_ENTRY_BYTES + 8)
            offset, length = struct.unpack("<QQ", handle.read(16))
            measurements.append((offset, length if length or second > 1 else size - offset))
    _check_protocol_header(handle, *measurements[0])
    return is_vd, measurements


def _check_protocol_header(handle: BinaryIO, offset: int, length: int) -> None:
    handle.seek(offset)
    start = handle.read(56)
    if len(start) < 56:
        raise ValueError("the measurement header lies past the end of the file")
    header_length, buffers = struct.unpack_from("<II", start)
    if not (8 < header_length < length and 0 < buffers < 64):
        raise ValueError("no protocol header at the measurement start")
    if not re.match(rb"[A-Za-z]\w{3,}\x00", start[8:]):
        raise ValueError("no protocol buffer name at the measurement start")


def _check_measurement_blocks(path: Path) -> None:
    """Walk the readout blocks of the last measurement as twixtools will, refusing bad ones.

    twixtools steps from block to block by each block's own length; a zero length (corrupt
    data) would make it loop forever, and a truncated block fail deep inside. This walk reads
    only the few header bytes of each block.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            is_vd, measurements = measurement_offsets(handle, size)
            offset, length = measurements[-1]
            if offset + length > size:
                raise ValueError(
                    f"truncated: the image scan needs {offset + length} bytes, the file has {size}"
                )
            _check_protocol_header(handle, offset, length)
            handle.seek(offset)
            header_length = struct.unpack("<I", handle.read(4))[0]
            position, end = offset + header_length, offset + length
            mask_at, samples_at = (40, 48) if is_vd else (20, 28)
            while position + 128 < end:
                handle.seek(position)
                block = handle.read(_VD_SCAN_HEADER_BYTES)
                if len(block) < samples_at + 4:
                    raise ValueError("a readout header is cut off")
                flags_and_length = struct.unpack_from("<I", block, 0)[0]
                mask = struct.unpack_from("<Q", block, mask_at)[0]
                samples, channels = struct.unpack_from("<HH", block, samples_at)
                if mask & _ACQEND:
                    return
                if mask & _SYNCDATA:
                    step = flags_and_length % (1 << 25)
                elif is_vd:
                    step = _VD_SCAN_HEADER_BYTES + channels * (
                        _VD_CHANNEL_HEADER_BYTES + 8 * samples
                    )
                else:
                    step = channels * (_VB_HEADER_BYTES + 8 * samples)
                if step == 0:
                    raise ValueError(f"a readout block at byte {position} has zero length")
                if position + step > end:
                    raise ValueError("truncated: the last readout is cut off")
                position += step
    except FileNotFoundError:
        raise MissingFileError(path) from None
    except OSError as exc:
        raise FileFormatError(path, f"cannot be read ({exc.strerror or 'I/O error'})") from None
    except (struct.error, ValueError) as exc:
        raise FileFormatError(path, f"not a readable Siemens raw file ({exc})") from None


def _load(path: Path) -> dict:
    """twixtools' view of the last measurement, with its console output silenced."""
    import twixtools  # here, not at the top: it loads scipy and matplotlib (0.7 s)

    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
            _with_dat_suffix(path) as readable,
        ):
            warnings.simplefilter("ignore")
            scans = twixtools.read_twix(
                str(readable),
                parse_prot=True,
                parse_data=True,
                parse_pmu=False,
                parse_geometry=False,
                verbose=False,
                keep_syncdata=False,
            )
    except Exception as exc:  # twixtools raises many types on corrupt input
        raise FileFormatError(
            path, f"not a readable Siemens raw file ({exc.__class__.__name__})"
        ) from None
    if not scans or not scans[-1].get("mdb"):
        raise FileFormatError(path, "Siemens raw file holds no readouts")
    return scans[-1]


@contextlib.contextmanager
def _with_dat_suffix(path: Path):
    """twixtools appends '.dat' to a name without a suffix; give it a link that has one."""
    if path.suffix:
        yield path
        return
    with tempfile.TemporaryDirectory() as folder:
        link = Path(folder) / "scan.dat"
        os.symlink(path.resolve(), link)
        yield link


def _scan(path: Path, measurement: dict) -> Scan:
    header = measurement.get("hdr") or {}
    blocks = [
        block
        for block in measurement["mdb"]
        if not any(block.is_flag_set(flag) for flag in _SKIPPED)
    ]
    if not blocks:
        raise FileFormatError(path, "Siemens raw file holds no imaging readouts")
    if any(block.is_flag_set("REFLECT") for block in blocks):
        raise FileFormatError(path, "holds reflected (EPI) readouts, which are not supported")
    if any(block.cPar != 0 for block in blocks) or _yaps(header, "sKSpace", "ucDimension") == 4:
        raise FileFormatError(path, "is a 3D acquisition; only 2D (multi-slice) is supported")
    for counter in _FIRST_ONLY:
        first = min(getattr(block.mdh.Counter, counter) for block in blocks)
        blocks = [block for block in blocks if getattr(block.mdh.Counter, counter) == first]

    coils = {int(block.mdh.UsedChannels) for block in blocks}
    if len(coils) != 1 or 0 in coils:
        raise FileFormatError(path, f"readouts disagree on the number of coils ({sorted(coils)})")
    num_coils = coils.pop()
    samples = [int(block.mdh.SamplesInScan) for block in blocks]
    centres = [int(block.mdh.CenterCol) or None for block in blocks]
    width = readout_width(samples, centres)
    data = np.zeros((len(blocks), num_coils, width), dtype=np.complex64)
    for row, (block, centre) in enumerate(zip(blocks, centres, strict=True)):
        try:
            readout = np.asarray(block.data, dtype=np.complex64)
        except (ValueError, OSError) as exc:
            raise FileFormatError(path, f"cannot read readout {row} ({exc})") from None
        if readout.shape != (num_coils, samples[row]):
            raise FileFormatError(path, f"readout {row} has shape {readout.shape}")
        data[row] = place_readout(readout, centre, width)

    lines = np.array([block.cLin for block in blocks], dtype=int)
    centre_lines = np.array([block.mdh.CenterLin for block in blocks], dtype=int)
    num_ky = _num_lines(header, lines - centre_lines)
    slice_numbers, slices = np.unique([block.cSlc for block in blocks], return_inverse=True)
    reference = np.array([block.is_flag_set("PATREFSCAN") for block in blocks])
    both = np.array([block.is_flag_set("PATREFANDIMASCAN") for block in blocks])
    readouts = Readouts(
        data=data,
        slices=slices.astype(int),
        lines=lines - centre_lines + num_ky // 2,
        imaging=~reference | both,
        calibration=reference | both,
    )
    header_r = _number(_yaps(header, "sPat", "lAccelFactPE"))
    grid = assemble(readouts, num_ky, int(header_r) if header_r and header_r > 1 else None)
    first_of_slice = [
        blocks[int(np.flatnonzero(slices == s)[0])] for s in range(slice_numbers.size)
    ]
    geometry = _geometry(header, first_of_slice, width, num_ky)
    protocol = _protocol(header)
    identifiers = _identifiers(header)
    return scan_from_grid(grid, geometry, protocol, identifiers)


def _num_lines(header: dict, offsets: np.ndarray) -> int:
    """ky lines: the protocol's FFT length, widened if readouts fall outside it."""
    meas = header.get("Meas", {})
    stated = next(
        (
            int(value)
            for value in (
                _number(meas.get("iPEFTLength")),
                _number(meas.get("iNoOfFourierLines")),
                _number(_yaps(header, "sKSpace", "lPhaseEncodingLines")),
            )
            if value and value > 0
        ),
        0,
    )
    needed = 2 * max(int(-offsets.min()), int(offsets.max()) + 1, 1)
    fits = stated > 0 and stated // 2 >= -offsets.min() and stated - stated // 2 > offsets.max()
    return stated if fits else max(needed, stated)


def _geometry(header: dict, first_of_slice: list, width: int, num_ky: int) -> Geometry:
    slice_protocol = _yaps(header, "sSliceArray", "asSlice")
    first_slice = slice_protocol[0] if isinstance(slice_protocol, list) and slice_protocol else {}
    readout_fov = _number(first_slice.get("dReadoutFOV"))
    phase_fov = _number(first_slice.get("dPhaseFOV"))
    thickness = _number(first_slice.get("dThickness"))
    base = _number(_yaps(header, "sKSpace", "lBaseResolution"))
    lines = _number(_yaps(header, "sKSpace", "lPhaseEncodingLines"))
    fov = None
    if readout_fov and phase_fov and base:
        fov = (
            readout_fov * width / base,
            phase_fov * (num_ky / lines if lines else 1.0),
            thickness or 0.0,
        )
    positions = tuple(_position(block) for block in first_of_slice)
    directions = _directions(np.asarray(first_of_slice[0].mdh.SliceData.Quaternion, dtype=float))
    return Geometry(
        fov_mm=fov,
        slice_thickness_mm=thickness or None,
        slice_positions_mm=positions,  # type: ignore[arg-type]
        read_dir=directions[1] if directions else None,
        phase_dir=directions[0] if directions else None,
        slice_dir=directions[2] if directions else None,
    )


def _position(block) -> tuple[float, float, float]:
    position = block.mdh.SliceData.SlicePos
    return tuple(float(str(np.float32(getattr(position, axis)))) for axis in ("Sag", "Cor", "Tra"))  # type: ignore[return-value]


def _directions(quaternion: np.ndarray) -> list[tuple[float, float, float]] | None:
    """(phase, read, slice) unit vectors from Siemens' scalar-first quaternion, or None."""
    norm = float(np.linalg.norm(quaternion))
    if norm < 1e-6:
        return None
    a, b, c, d = quaternion / norm
    rotation = np.array(
        [
            [1 - 2 * (c * c + d * d), 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), 1 - 2 * (b * b + d * d), 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), 1 - 2 * (b * b + c * c)],
        ]
    )
    return [
        tuple(float(round(value, 7)) + 0.0 for value in rotation[:, column])  # type: ignore[misc]
        for column in range(3)
    ]


def _protocol(header: dict) -> str:
    for section, key in (
        ("MeasYaps", "tProtocolName"),
        ("Config", "ProtocolName"),
        ("Dicom", "tProtocolName"),
    ):
        value = header.get(section, {}).get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().strip('"')
    return ""


def _identifiers(header: dict) -> Identifiers:
    def lookup(*keys: str) -> str | None:
        for section in ("Config", "Meas", "Dicom"):
            for key in keys:
                value = header.get(section, {}).get(key)
                text = _identifier_text(value)
                if text is not None:
                    return text
        return None

    sex = lookup("PatientSex", "lPatientSex")
    sex_code = _number(sex)
    sex = {1: "F", 2: "M", 3: "O"}.get(int(sex_code)) if sex_code is not None else sex
    study_date = study_time = None
    frame = lookup("FrameOfReference", "tFrameOfReference")
    stamp = re.search(r"(?:^|\.)((?:19|20)\d{6})(\d{6})\d*(?:\.|$)", frame or "")
    if stamp:
        study_date, study_time = stamp.groups()
    return Identifiers(
        patient_name=lookup("tPatientName", "PatientName"),
        patient_id=lookup("PatientID"),
        patient_birth_date=lookup("PatientBirthDay"),
        patient_sex=sex,
        study_date=study_date,
        study_time=study_time,
        study_description=lookup("tStudyDescription"),
        institution_name=lookup("InstitutionName"),
    )


def _identifier_text(value: object) -> str | None:
    if isinstance(value, float) and value.is_integer():
        value = str(int(value))
    if not isinstance(value, str):
        return None
    text = value.strip().strip('"').strip()
    if not text or set(text.lower()) == {"x"}:
        return None
    return text


def _yaps(header: dict, *keys: str) -> object:
    value: object = header.get("MeasYaps", {})
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
