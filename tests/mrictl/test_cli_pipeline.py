"""The local pipeline through the real `mrictl` command, in subprocesses, as an operator runs it."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel
import pydicom
import pytest

from mrictl.errors import ExitCode
from tests.mrictl.cli_helpers import run_cli


@pytest.fixture
def home(tmp_path) -> dict[str, str]:
    return {"MRICTL_HOME": str(tmp_path / "home")}


@pytest.mark.slow
def test_demo_runs_end_to_end_and_prints_the_quality_table(tmp_path, home):
    out = tmp_path / "demo"
    outcome = run_cli("demo", "--out", str(out), "--iterations", "60", "--json", env=home)
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    comparison = document["comparison"]
    assert set(comparison) == {"grappa", "zerofill"}
    assert document["metrics"]["nmse"] < comparison["zerofill"]["nmse"]
    outputs = Path(document["out"])
    with h5py.File(outputs / "reconstruction.h5") as handle:
        assert handle["reconstruction"].shape == (3, 128, 96)
    slices = sorted((outputs / "dicom").glob("*.dcm"))
    assert len(slices) == 3
    assert pydicom.dcmread(slices[0]).Modality == "MR"
    assert nibabel.load(outputs / "reconstruction.nii.gz").shape[:3] == (128, 96, 3)
    assert (outputs / "report.md").read_text().count("|") > 10
    assert (outputs / "preview" / "comparison_strip.png").is_file()
    human = run_cli("demo", "--out", str(out), "--method", "grappa", env=home)
    # The quality table is the result (stdout); the steps and the estimate are not (stderr).
    assert human.exit_code == 0 and "NMSE" in human.stdout and "NMSE" not in human.stderr
    assert "the demo should take about" in human.stderr and "4/4 fetching" in human.stderr


def test_upload_worker_status_fetch(tmp_path, home):
    scan = tmp_path / "knee.h5"
    assert (
        run_cli("scan", "simulate", "--out", str(scan), "--matrix", "32x24", env=home).exit_code
        == 0
    )
    uploaded = run_cli(
        "upload",
        str(scan),
        "--method",
        "zerofill",
        "--accel",
        "2",
        "--acs",
        "8",
        "--json",
        env=home,
    )
    assert uploaded.exit_code == 0, uploaded.stderr
    job_id = uploaded.json()["job_id"]
    again = run_cli("upload", str(scan), "--json", env=home).json()
    assert again["already_uploaded"] and again["job_id"] == job_id  # the upload's one job
    worked = run_cli("worker", "run", "--once", "--json", env=home)
    assert worked.exit_code == 0, worked.stderr
    records = run_cli("recon", "status", "--json", env=home).json()["jobs"]
    assert {r["state"] for r in records} == {"succeeded"}
    assert {r["stage"] for r in records} == {"preprocess", "recon"}
    fetched = run_cli(
        "fetch", job_id, "--out", str(tmp_path / "got"), "--format", "h5,dicom", "--json", env=home
    )
    assert fetched.exit_code == 0, fetched.stderr
    names = {Path(f).name for f in fetched.json()["files"]}
    assert "reconstruction.h5" in names and any(n.endswith(".dcm") for n in names)
    logs = run_cli("recon", "logs", job_id, "--json", env=home).json()["logs"]
    assert logs and all("knee" not in entry["message"] for entry in logs)


def test_exit_codes_for_scripts(tmp_path, home):
    missing = run_cli("recon", "status", "job-0000000000000000", "--json", env=home)
    assert missing.exit_code == ExitCode.NOT_FOUND
    assert missing.json()["error"]["code"] == ExitCode.NOT_FOUND
    refused = run_cli("recon", "cancel", "job-0000000000000000", env=home)
    assert refused.exit_code == ExitCode.USAGE and "--yes" in refused.stderr
    bad = tmp_path / "notes.txt"
    bad.write_text("not a scan")
    failed = run_cli("upload", str(bad), env=home)
    assert failed.exit_code == ExitCode.BAD_INPUT
    assert len(failed.stderr.strip().splitlines()) == 1


def test_failed_job_has_its_own_exit_code(tmp_path, home):
    scan = tmp_path / "r2.h5"
    run_cli(
        "scan",
        "simulate",
        "--out",
        str(scan),
        "--matrix",
        "32x24",
        "--accel",
        "2",
        "--acs",
        "8",
        env=home,
    )
    # The scan is already undersampled at R=2: asking for R=3 on top of it is refused.
    submitted = run_cli(
        "recon", "submit", str(scan), "--method", "zerofill", "--accel", "3", "--json", env=home
    )
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.json()["job_id"]
    run_cli("worker", "run", "--once", env=home)
    fetched = run_cli("fetch", job_id, "--out", str(tmp_path / "x"), "--json", env=home)
    assert fetched.exit_code == ExitCode.JOB_FAILED
    assert "failed" in fetched.json()["error"]["message"]
    chain = run_cli("recon", "status", "--state", "failed", "--json", env=home).json()["jobs"]
    assert len(chain) == 1 and "fully sampled" in chain[0]["error"]
    assert str(tmp_path) not in chain[0]["error"]
