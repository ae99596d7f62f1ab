"""The hospital IT scripts in scripts/ops/, run as cron runs them, on real jobs of the local
backend: a failed job is queued again once, a finished study is delivered once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mrictl.backends.local import LocalBackend
from mrictl.pipeline import jobs
from mrictl.worker import run_worker
from raki.io.fastmri import write_fastmri
from raki.phantom import simulate_scan
from raki.scan import Identifiers
from tests.mrictl.jobs_helpers import TINY

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / "scripts" / "ops"
PATIENT_FILE = "Doe_Jane_brain"


def mrictl_command(folder: Path) -> Path:
    """An `mrictl` on PATH that is this interpreter's (the scripts call `mrictl` by name)."""
    command = folder / "mrictl"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mrictl "$@"\n')
    command.chmod(0o755)
    return command


@pytest.fixture
def ops_env(tmp_path: Path, isolated_home: Path) -> dict[str, str]:
    """The environment of a cron job: the mrictl home, a state folder, mrictl on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mrictl_command(bin_dir)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MRICTL_HOME": str(isolated_home),
        "MRICTL_OPS_STATE_DIR": str(tmp_path / "state"),
        "NO_COLOR": "1",
    }


def run_script(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(OPS / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def patient_scan(folder: Path, seed: int, *, undersampled: bool) -> Path:
    """A tiny scan that carries identifiers and a patient's name in its file name."""
    scan = simulate_scan(**TINY, seed=seed).replace(
        identifiers=Identifiers(patient_name="Doe^Jane", patient_id="PID-778899")
    )
    if undersampled:
        scan = scan.undersampled(2, 8)
    folder.mkdir(parents=True, exist_ok=True)
    return write_fastmri(scan, folder / f"{PATIENT_FILE}_{seed}.h5")


@pytest.fixture
def finished_and_failed(tmp_path: Path, isolated_home: Path) -> tuple[str, str]:
    """Two real submissions through the worker: one reconstruction that succeeds, one that
    fails (a fully sampled scan asked for zerofill without --accel). Their recon job ids."""
    backend = LocalBackend(isolated_home)
    good = jobs.submit(backend, patient_scan(tmp_path / "scans", 1, undersampled=True), "zerofill")
    bad = jobs.submit(backend, patient_scan(tmp_path / "scans", 2, undersampled=False), "zerofill")
    run_worker(backend, once=True, worker_id="test-worker", lease_seconds=30)
    succeeded = jobs.wait(backend, good["job_id"], timeout=10)
    failed = jobs.wait(backend, bad["job_id"], timeout=10)
    assert succeeded["state"] == "succeeded" and failed["state"] == "failed"
    return succeeded["job_id"], failed["job_id"]


def state_of(home: Path, job_id: str) -> str:
    return jobs.status(LocalBackend(home), job_id)[0]["state"]


def summary_of(completed: subprocess.CompletedProcess, name: str) -> dict[str, str]:
    """The script's one summary line, as key=value pairs; nothing identifying in it."""
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, completed.stdout + completed.stderr
    assert f" {name}: " in lines[0]
    assert PATIENT_FILE not in completed.stdout + completed.stderr
    assert "Doe" not in completed.stdout + completed.stderr
    return dict(part.split("=", 1) for part in lines[0].split(" ")[2:])


def test_retry_failed_queues_a_failed_job_again_once(ops_env, isolated_home, finished_and_failed):
    succeeded, failed = finished_and_failed
    first = run_script("retry-failed.sh", "--since", "24", env=ops_env)
    assert first.returncode == 0, first.stderr
    summary = summary_of(first, "retry-failed")
    assert summary["found"] == "1" and summary["retried"] == "1" and summary["refused"] == "0"
    assert summary["retried_ids"] == failed
    assert state_of(isolated_home, failed) == "queued"
    assert state_of(isolated_home, succeeded) == "succeeded"

    # The worker runs it again and it fails again: the next night leaves it for a person.
    run_worker(LocalBackend(isolated_home), once=True, worker_id="test-worker", lease_seconds=30)
    assert state_of(isolated_home, failed) == "failed"
    second = run_script("retry-failed.sh", env=ops_env)
    assert second.returncode == 0, second.stderr
    summary = summary_of(second, "retry-failed")
    assert summary["found"] == "1" and summary["retried"] == "0" and summary["skipped"] == "1"
    assert state_of(isolated_home, failed) == "failed"
    ledger = Path(ops_env["MRICTL_OPS_STATE_DIR"]) / "retried.txt"
    assert ledger.read_text().split() == [failed]
    assert not list(ledger.parent.glob("*.tmp.*"))


def test_retry_failed_since_filters_by_age(ops_env, isolated_home, finished_and_failed):
    _, failed = finished_and_failed
    recent_only = run_script("retry-failed.sh", "--since", "0", env=ops_env)
    assert recent_only.returncode == 0, recent_only.stderr
    assert summary_of(recent_only, "retry-failed")["found"] == "0"
    assert state_of(isolated_home, failed) == "failed"


def test_retry_failed_exits_with_the_refusal_after_trying_every_job(
    ops_env, isolated_home, finished_and_failed
):
    succeeded, failed = finished_and_failed
    completed = run_script("retry-failed.sh", succeeded, failed, env=ops_env)
    assert completed.returncode == 6  # CONFLICT: a succeeded job does not retry
    summary = summary_of(completed, "retry-failed")
    assert summary["retried"] == "1" and summary["refused"] == "1"
    assert summary["refused_ids"] == succeeded
    assert state_of(isolated_home, failed) == "queued"


def test_scripts_pass_mrictl_exit_code_and_one_line_errors(ops_env, tmp_path):
    not_a_folder = tmp_path / "home-is-a-file"
    not_a_folder.write_text("")
    broken = {**ops_env, "MRICTL_HOME": str(not_a_folder)}
    out = str(tmp_path / "results")
    for script, args in (("retry-failed.sh", ()), ("fetch-finished.sh", ("--out", out))):
        completed = run_script(script, *args, env={**broken})
        assert completed.returncode == 7, completed.stderr  # BACKEND
        assert completed.stderr.strip().splitlines()[-1].startswith(script[:-3] + ": error: ")
        assert "Traceback" not in completed.stderr
    for script, args in (
        ("retry-failed.sh", ("--bogus",)),
        ("retry-failed.sh", ("--max-retries", "many")),
        ("retry-failed.sh", ("not-a-job",)),
        ("fetch-finished.sh", ()),
        ("fetch-finished.sh", ("--out", out, "--aet", "US")),
        ("fetch-finished.sh", ("--to-pacs", "127.0.0.1:11112")),
    ):
        completed = run_script(script, *args, env=ops_env)
        assert completed.returncode == 2, (script, args, completed.stderr)
        assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
        assert completed.stdout == ""


def test_fetch_finished_delivers_each_study_once(
    ops_env, isolated_home, finished_and_failed, tmp_path
):
    succeeded, _ = finished_and_failed
    results = tmp_path / "results"
    first = run_script("fetch-finished.sh", "--out", str(results), env=ops_env)
    assert first.returncode == 0, first.stderr
    summary = summary_of(first, "fetch-finished")
    assert summary["found"] == "1" and summary["delivered"] == "1"
    assert summary["delivered_ids"] == succeeded
    study = results / succeeded
    assert (study / "result.json").is_file() and (study / "reconstruction.h5").is_file()
    assert list((study / "dicom").glob("*.dcm"))
    ledger = Path(ops_env["MRICTL_OPS_STATE_DIR"]) / "fetched-to-folder.txt"
    assert ledger.read_text().split() == [succeeded]

    # The ledger stops a second delivery: a study taken away by the reading room stays away.
    shutil.rmtree(study)
    second = run_script("fetch-finished.sh", "--out", str(results), env=ops_env)
    assert second.returncode == 0, second.stderr
    summary = summary_of(second, "fetch-finished")
    assert summary["delivered"] == "0" and summary["before"] == "1"
    assert not study.exists()
    assert not list(ledger.parent.glob("*.tmp.*"))


def test_fetch_finished_formats_and_its_own_ledger(
    ops_env, isolated_home, finished_and_failed, tmp_path
):
    succeeded, _ = finished_and_failed
    ledger = tmp_path / "dicom-ledger.txt"
    args = ("--out", str(tmp_path / "dicom"), "--format", "dicom", "--ledger", str(ledger))
    completed = run_script("fetch-finished.sh", *args, env=ops_env)
    assert completed.returncode == 0, completed.stderr
    study = tmp_path / "dicom" / succeeded
    assert [path.parent.name for path in study.rglob("*") if path.is_file()] == ["dicom"]
    assert ledger.read_text().split() == [succeeded]
