"""Siemens twix files: a VD/VE multi-RAID file written by twixtools, and the real VB file."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import twixtools
from twixtools.mdb import Mdb_local

from raki.errors import FileFormatError
from raki.io import detect_format, read_scan

NUM_COILS, NUM_SAMPLES, NUM_LINES = 4, 16, 32
TWIX_VB = "originals/pulseq_UMRAM_sol15_twix_vb.dat"

_CONFIG = """<XProtocol>
{
  <ParamString."tPatientName">  { "DOE^JOHN"  }
  <ParamString."PatientID">  { "PID7"  }
  <ParamString."PatientBirthDay">  { "19700101"  }
  <ParamLong."PatientSex">  { 2  }
  <ParamString."InstitutionName">  { "xxxxxxxx"  }
}
"""
_MEAS = """<XProtocol>
{
  <ParamString."FrameOfReference">  { "1.3.12.2.1107.5.2.32.35287.1.20240322140748296.0.0.0"  }
  <ParamLong."iPEFTLength">  { 32  }
}
"""
_MEAS_YAPS = """### ASCCONV BEGIN ###
tProtocolName = "gre_pat2"
sKSpace.lBaseResolution = 8
sKSpace.lPhaseEncodingLines = 32
sKSpace.ucDimension = 0x2
sSliceArray.asSlice[0].dThickness = 3
sSliceArray.asSlice[0].dPhaseFOV = 200
sSliceArray.asSlice[0].dReadoutFOV = 100
sPat.lAccelFactPE = 2
sPat.lRefLinesPE = 8
### ASCCONV END ###
"""


def _protocol_header() -> np.ndarray:
    """A measurement header as Siemens writes it: length, buffer count, named text buffers."""
    buffers = b""
    for name, text in (("Config", _CONFIG), ("Meas", _MEAS), ("MeasYaps", _MEAS_YAPS)):
        data = text.encode("latin1")
        buffers += name.encode() + b"\0" + struct.pack("<I", len(data)) + data
    length = 8 + len(buffers)
    padding = -length % 32
    header = struct.pack("<II", length + padding, 3) + buffers + b"\0" * padding
    return np.frombuffer(header, dtype="S1")


def _readout(samples: np.ndarray, line: int, slice_index: int, *flags: str) -> Mdb_local:
    block = Mdb_local(samples.astype(np.complex64), version_is_ve=True)
    block.mdh.Counter.Lin = line
    block.mdh.Counter.Sli = slice_index
    block.mdh.CenterLin = NUM_LINES // 2
    block.mdh.CenterCol = NUM_SAMPLES // 2
    block.mdh.SliceData.SlicePos.Tra = 4.0 * slice_index - 2.0
    block.mdh.SliceData.Quaternion[:] = [1.0, 0.0, 0.0, 0.0]
    for flag in flags:
        block.add_flag(flag)
    return block


def _truth() -> np.ndarray:
    rng = np.random.default_rng(3)
    shape = (2, NUM_COILS, NUM_SAMPLES, NUM_LINES)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _write_vd(path, extra_flags: tuple[str, ...] = ()) -> np.ndarray:
    """A two-measurement VD file: a noise adjustment scan, then a 2-slice GRAPPA R=2 scan whose
    reference lines 12..19 are PATREFSCAN (even ones) and PATREFANDIMASCAN (odd ones)."""
    truth = _truth()
    rng = np.random.default_rng(4)
    noise = _readout(rng.standard_normal((NUM_COILS, 64)), 0, 0, "NOISEADJSCAN")
    blocks = []
    for slice_index in range(2):
        for line in range(NUM_LINES):
            on_lattice = line % 2 == 0
            in_reference = 12 <= line < 20
            if not (on_lattice or in_reference):
                continue
            flags = ()
            if in_reference:
                flags = ("PATREFANDIMASCAN", "PATREFSCAN") if on_lattice else ("PATREFSCAN",)
            samples = truth[slice_index, :, :, line]
            blocks.append(_readout(samples, line, slice_index, *flags, *extra_flags))
    header = _protocol_header()
    twixtools.write_twix(
        [{"hdr_str": header, "mdb": [noise]}, {"hdr_str": header, "mdb": blocks}],
        str(path),
        version_is_ve=True,
    )
    return truth


def test_vd_multi_raid_file_written_by_twixtools(tmp_path):
    path = tmp_path / "meas_MID00042_gre.dat"
    truth = _write_vd(path)
    assert detect_format(path) == "twix"
    scan = read_scan(path)
    assert scan.kspace.shape == (2, NUM_COILS, NUM_SAMPLES, NUM_LINES)
    expected = np.zeros(NUM_LINES, dtype=bool)
    expected[::2] = True
    expected[12:20] = True
    np.testing.assert_array_equal(scan.sampled, expected)
    np.testing.assert_array_equal(scan.kspace[..., expected], truth[..., expected])
    assert (scan.acs.start, scan.acs.stop, scan.acceleration) == (12, 20, 2)
    geometry = scan.geometry
    # Readout FOV 100 mm at base resolution 8 with 16 samples: 2x oversampling kept.
    assert geometry.fov_mm == (200.0, 200.0, 3.0)
    assert geometry.slice_positions_mm == ((0.0, 0.0, -2.0), (0.0, 0.0, 2.0))
    assert (geometry.phase_dir, geometry.read_dir, geometry.slice_dir) == (
        (1.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
        (0.0, 0.0, 1.0),
    )
    ids = scan.identifiers
    assert (ids.patient_name, ids.patient_id, ids.patient_sex) == ("DOE^JOHN", "PID7", "M")
    assert (ids.study_date, ids.study_time) == ("20240322", "140748")
    assert ids.institution_name is None  # 'xxxxxxxx' is Siemens' anonymisation
    assert scan.protocol == "gre_pat2"


def test_file_without_suffix_is_read(tmp_path):
    path = tmp_path / "meas_MID00042"
    _write_vd(path)
    assert read_scan(path).num_slices == 2


def test_reflected_epi_lines_are_refused(tmp_path):
    path = tmp_path / "epi.dat"
    _write_vd(path, extra_flags=("REFLECT",))
    with pytest.raises(FileFormatError, match="reflected"):
        read_scan(path)


def test_truncated_twix_file_is_refused(tmp_path):
    whole = tmp_path / "whole.dat"
    _write_vd(whole)
    cut = tmp_path / "cut.dat"
    cut.write_bytes(whole.read_bytes()[:-3000])
    with pytest.raises(FileFormatError, match="truncated") as caught:
        read_scan(cut)
    assert str(caught.value).startswith("cut.dat: ")


def test_real_vb_file(shared_data):
    scan = read_scan(shared_data / TWIX_VB)
    assert detect_format(shared_data / TWIX_VB) == "twix"
    assert scan.kspace.shape == (1, 4, 256, 256)
    assert scan.is_fully_sampled and scan.acceleration == 1
    assert scan.geometry.fov_mm == (256.0, 256.0, 3.0)
    assert scan.geometry.slice_dir == (1.0, 0.0, 0.0)  # a sagittal slice
    assert scan.protocol == "sol15"
    assert scan.identifiers.patient_name is None  # anonymised as 'xxxx...'
    # The bottle phantom's k-space peaks at the centre line and column.
    energy = np.abs(scan.kspace[0]).sum(axis=0)
    assert np.unravel_index(energy.argmax(), energy.shape) == (128, 128)


def test_zero_length_readout_block_does_not_hang(shared_data, tmp_path):
    broken = tmp_path / "broken.dat"
    shutil.copyfile(shared_data / TWIX_VB, broken)
    with open(broken, "r+b") as handle:
        header_length = struct.unpack("<I", handle.read(4))[0]
        handle.seek(header_length + 30)  # UsedChannels of the first VB readout header
        handle.write(b"\0\0")
    with pytest.raises(FileFormatError, match="zero length"):
        read_scan(broken)
