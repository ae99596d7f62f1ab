"""`mrictl scan ...` as a user runs it: JSON out, one-line errors, documented exit codes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mrictl import __version__
from mrictl.errors import ExitCode
from tests.mrictl.cli_helpers import invoke, run_cli


def test_version():
    outcome = invoke("--version")
    assert outcome.exit_code == 0 and __version__ in outcome.stdout


def test_simulate_then_info_describes_the_file(tmp_path):
    path = tmp_path / "phantom.h5"
    made = invoke(
        "scan", "simulate", "--out", str(path), "--matrix", "48x40", "--coils", "4", "--json"
    )
    assert made.exit_code == 0, made.stderr
    info = invoke("scan", "info", str(path), "--json").json()
    assert info["format"] == "fastmri"
    assert info["coils"] == 4 and info["matrix"] == [48, 40]
    assert info["sampled_lines"] == 40 and info["fully_sampled"]


def test_undersample_reports_r_and_acs_when_read_back(tmp_path):
    full, under = tmp_path / "full.h5", tmp_path / "r4.h5"
    assert invoke("scan", "simulate", "--out", str(full), "--matrix", "64x96").exit_code == 0
    done = invoke(
        "scan", "undersample", str(full), "--accel", "4", "--acs", "24", "--out", str(under)
    )
    assert done.exit_code == 0, done.stderr
    info = invoke("scan", "info", str(under), "--json").json()
    assert info["acceleration"] == 4 and info["acs_lines"] == 24
    assert not info["fully_sampled"]


def test_fastmri_spacing_makes_a_mask_that_recon_run_fills(tmp_path):
    """fastMRI's masks keep 1/R of all lines, the ACS included, so the outer gaps are wider than
    R and vary: GRAPPA's kernels, fitted for those gaps, cannot take the held-out test's, so
    the default (auto) scores cs alone, says why, and reconstructs."""
    full, under = tmp_path / "full.h5", tmp_path / "fastmri.h5"
    assert invoke("scan", "simulate", "--out", str(full), "--matrix", "64x96").exit_code == 0
    done = invoke(
        "scan",
        "undersample",
        str(full),
        "--accel",
        "3",
        "--acs",
        "12",
        "--spacing",
        "fastmri",
        "--out",
        str(under),
        "--json",
    )
    assert done.exit_code == 0, done.stderr
    info = done.json()
    assert info["sampled_lines"] == 32 and info["acs_lines"] == 12 and not info["equispaced"]
    recon = invoke(
        "recon",
        "run",
        str(under),
        "--reference",
        str(full),
        "--out",
        str(tmp_path / "r.h5"),
        "--json",
    )
    assert recon.exit_code == 0, recon.stderr
    document = recon.json()
    selection = document["selection"]
    assert document["method"] == selection["method"] == "cs"
    assert list(selection["candidates"]) == ["cs"]
    assert "grappa not scored: GRAPPA kernel has no weights" in selection["reason"]
    assert document["metrics"]["ssim"] > 0.9
    named = invoke("recon", "run", str(under), "--method", "grappa", "--reference", str(full),
                   "--out", str(tmp_path / "g.h5"), "--json")  # fmt: skip
    assert named.exit_code == 0 and named.json()["metrics"]["ssim"] > 0.9, named.stderr


def test_convert_to_mrd_and_back_keeps_the_kspace(tmp_path):
    source, mrd, back = tmp_path / "a.h5", tmp_path / "a.mrd", tmp_path / "b.h5"
    assert invoke("scan", "simulate", "--out", str(source), "--matrix", "32x24").exit_code == 0
    assert invoke("scan", "convert", str(source), str(mrd)).exit_code == 0
    assert invoke("scan", "info", str(mrd), "--json").json()["format"] == "mrd"
    assert invoke("scan", "convert", str(mrd), str(back)).exit_code == 0
    with h5py.File(source) as a, h5py.File(back) as b:
        np.testing.assert_array_equal(a["kspace"][()], b["kspace"][()])


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40), "fastmri"),
        (lambda p: p.write_text("hello"), None),
    ],
)
def test_bad_files_exit_non_zero_with_one_line(tmp_path, make, expected):
    path = tmp_path / "bad.h5"
    make(path)
    outcome = invoke("scan", "info", str(path))
    assert outcome.exit_code == ExitCode.BAD_INPUT
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.h5" in lines[0] and "Traceback" not in outcome.stderr
    assert str(tmp_path) not in outcome.stderr


def test_missing_file_is_not_found_and_json_error_document(tmp_path):
    outcome = invoke("scan", "info", str(tmp_path / "nope.h5"), "--json")
    assert outcome.exit_code in (ExitCode.NOT_FOUND, ExitCode.BAD_INPUT)
    assert outcome.json()["error"]["code"] == outcome.exit_code


def test_undersampling_an_undersampled_scan_is_refused(tmp_path):
    path = tmp_path / "r4.h5"
    invoke(
        "scan", "simulate", "--out", str(path), "--matrix", "32x48", "--accel", "4", "--acs", "12"
    )
    outcome = invoke(
        "scan", "undersample", str(path), "--accel", "2", "--out", str(tmp_path / "x.h5")
    )
    assert outcome.exit_code == ExitCode.BAD_INPUT
    assert "fully sampled" in outcome.stderr


def test_subprocess_run_has_no_traceback_and_respects_no_color(tmp_path):
    outcome = run_cli("scan", "info", str(tmp_path / "missing.h5"))
    assert outcome.exit_code != 0
    assert "Traceback" not in outcome.stderr and "\x1b[" not in outcome.stderr


SHARED_FILES = [
    ("brain_8ch_320x168.h5", "fastmri", 8, [320, 168], 168),
    ("brain_16ch_96x96.h5", "fastmri", 16, [96, 96], 96),
    ("brain_16ch_64x64.h5", "fastmri", 16, [64, 64], 64),
    ("originals/peng-cao_mripy_brain_alias_8ch.mat", "mat", 8, [320, 256], 168),
    ("originals/mchiew_SENSE-tutorial_raw_data.mat", "mat", 16, [96, 96], 96),
    ("originals/pdawood_iterativeRaki_preScanRefData.npy", "npy", 16, [64, 64], 64),
]


@pytest.mark.parametrize("name, fmt, coils, matrix, lines", SHARED_FILES)
def test_info_describes_the_real_files(shared_data, name, fmt, coils, matrix, lines):
    info = invoke("scan", "info", str(shared_data / name), "--json").json()
    assert info["format"] == fmt
    assert (info["coils"], info["matrix"], info["sampled_lines"]) == (coils, matrix, lines)


def test_info_reads_the_siemens_twix_file(shared_data):
    path = shared_data / "originals/pulseq_UMRAM_sol15_twix_vb.dat"
    info = invoke("scan", "info", str(path), "--json").json()
    assert info["format"] == "twix"
    assert info["coils"] == 4 and info["matrix"][1] == 256 and info["sampled_lines"] == 256
