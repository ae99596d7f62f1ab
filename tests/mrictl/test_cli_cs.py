"""`--method cs` (regularised SENSE) from the command line: now, and as a queued job."""

from __future__ import annotations

import h5py
import pytest

from tests.mrictl.cli_helpers import invoke


@pytest.fixture
def full_scan(tmp_path):
    path = tmp_path / "full.h5"
    made = invoke(
        "scan", "simulate", "--out", str(path), "--matrix", "48x40", "--coils", "6", "--snr", "20"
    )
    assert made.exit_code == 0, made.stderr
    return path


def test_recon_run_cs_with_a_reference(tmp_path, full_scan):
    under = tmp_path / "r3.h5"
    undersampled = invoke(
        "scan", "undersample", str(full_scan), "--accel", "3", "--acs", "16", "--out", str(under)
    )
    assert undersampled.exit_code == 0, undersampled.stderr
    out = tmp_path / "cs.h5"
    outcome = invoke(
        "recon",
        "run",
        str(under),
        "--method",
        "cs",
        "--reference",
        str(full_scan),
        "--out",
        str(out),
        "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert document["method"] == "cs"
    assert {"maps_s", "solve_s"} <= set(document["timings"])
    zero_filled = invoke(
        "recon",
        "run",
        str(under),
        "--method",
        "zerofill",
        "--reference",
        str(full_scan),
        "--out",
        str(tmp_path / "zf.h5"),
        "--json",
    ).json()
    assert document["metrics"]["nmse"] < 0.2 * zero_filled["metrics"]["nmse"]
    with h5py.File(out) as handle:
        assert handle["reconstruction"].shape == (1, 48, 40)
        assert handle.attrs["method"] == "cs"


def test_cs_is_listed_and_runs_as_a_queued_job(tmp_path, full_scan):
    assert "cs" in invoke("recon", "run", "--help").stdout
    submitted = invoke(
        "recon", "submit", str(full_scan), "--method", "cs", "--accel", "3", "--acs", "16", "--json"
    )
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.json()["job_id"]
    worked = invoke("worker", "run", "--once", "--json")
    assert worked.exit_code == 0, worked.stderr
    fetched = invoke("fetch", job_id, "--out", str(tmp_path / "got"), "--json")
    assert fetched.exit_code == 0, fetched.stderr
    with h5py.File(tmp_path / "got" / "reconstruction.h5") as handle:
        assert handle.attrs["method"] == "cs"
