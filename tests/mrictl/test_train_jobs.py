"""Training as a queued job: `train --submit`, the weights in the store, `fetch` and
`recon submit --weights JOB` reusing them, and `worker run --job ID` as a Batch container runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrictl import keys
from mrictl.backends.local import LocalBackend
from mrictl.errors import ExitCode
from mrictl.pipeline import jobs
from raki.io.image_hdf5 import read_reconstruction
from raki.weights import RakiWeights
from tests.mrictl.cli_helpers import invoke
from tests.mrictl.jobs_helpers import write_tiny_scan

TRAIN_FLAGS = ("--method", "raki", "--accel", "2", "--acs", "8", "--iterations", "3")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def cli(home: Path, *args: str):
    return invoke(*args, "--home", str(home), "--json")


def test_train_submit_stores_weights_that_fetch_returns_and_recon_submit_applies(home, tmp_path):
    scan = write_tiny_scan(tmp_path / "knee.h5")
    submitted = cli(home, "train", str(scan), "--submit", *TRAIN_FLAGS)
    assert submitted.exit_code == 0, submitted.stderr
    first = submitted.json()
    assert first["stage"] == "preprocess" and first["method"] == "raki"
    ran = cli(home, "worker", "run", "--once")
    assert ran.exit_code == 0 and ran.json()["jobs_done"] == 2  # preprocess, then train
    backend = LocalBackend(home)
    train_job = jobs.final_job(backend, first["job_id"])
    record = jobs.job_record(train_job)
    assert record["stage"] == "train" and record["state"] == "succeeded", record["error"]
    assert record["outputs"] == [
        keys.weights(train_job.job_id),
        f"weights/{train_job.job_id}/result.json",
    ]
    assert record["parent_job_id"] == first["job_id"]

    fetched = cli(home, "fetch", first["job_id"], "--out", str(tmp_path / "w"))
    assert fetched.exit_code == 0, fetched.stderr
    weights = RakiWeights.load(tmp_path / "w" / "weights.pt")
    assert weights.method == "raki" and weights.acceleration == 2 and weights.num_coils == 4
    result = json.loads((tmp_path / "w" / "result.json").read_text())
    assert result["job_id"] == train_job.job_id and "knee" not in json.dumps(result)
    only_weights = cli(home, "fetch", first["job_id"], "--out", str(tmp_path / "o"),
                       "--format", "weights")  # fmt: skip
    assert [Path(p).name for p in only_weights.json()["files"]] == ["weights.pt"]

    # A later scan of the same protocol, reconstructed with the stored networks.
    later = write_tiny_scan(tmp_path / "later.h5", seed=7, undersampled=True)
    recon = cli(home, "recon", "submit", str(later), "--weights", first["job_id"])
    assert recon.exit_code == 0, recon.stderr
    assert recon.json()["method"] == "raki" and recon.json()["options"]["weights_job"] == (
        train_job.job_id
    )
    assert cli(home, "worker", "run", "--once").json()["jobs_done"] == 2
    done = jobs.final_job(backend, recon.json()["job_id"])
    assert done.state.value == "succeeded", done.error
    out = tmp_path / "r"
    assert cli(home, "fetch", done.job_id, "--out", str(out), "--format", "h5").exit_code == 0
    image, attrs = read_reconstruction(out / "reconstruction.h5")
    assert image.shape == (1, 32, 24) and attrs["method"] == "raki"
    messages = [line["message"] for line in jobs.logs(backend, done.job_id)]
    assert f"applying the weights of {train_job.job_id}" in messages


def test_weights_of_an_unfinished_or_other_job_are_refused(home, tmp_path):
    scan = write_tiny_scan(tmp_path / "scan.h5")
    queued = cli(home, "train", str(scan), "--submit", *TRAIN_FLAGS).json()
    later = write_tiny_scan(tmp_path / "later.h5", seed=2, undersampled=True)
    refused = cli(home, "recon", "submit", str(later), "--weights", queued["job_id"])
    assert refused.exit_code == ExitCode.CONFLICT and "not stored yet" in refused.stderr
    assert cli(home, "recon", "submit", str(later), "--weights", "weights.pt").exit_code == (
        ExitCode.USAGE
    )
    missing = cli(home, "recon", "submit", str(later), "--weights", "job-0123456789abcdef")
    assert missing.exit_code == ExitCode.NOT_FOUND
    with_flags = cli(home, "recon", "submit", str(later), "--weights", queued["job_id"],
                     "--iterations", "5")  # fmt: skip
    assert with_flags.exit_code == ExitCode.USAGE


def test_train_flags_that_do_not_fit_are_usage_errors(home, tmp_path):
    scan = write_tiny_scan(tmp_path / "scan.h5")
    both = cli(home, "train", str(scan), "--submit", "--out", str(tmp_path / "w.pt"))
    assert both.exit_code == ExitCode.USAGE
    assert cli(home, "train", str(scan)).exit_code == ExitCode.USAGE  # neither --out nor --submit
    grappa = cli(home, "train", str(scan), "--submit", "--method", "grappa")
    assert grappa.exit_code == ExitCode.USAGE and "cannot train" in grappa.stderr
    assert LocalBackend(home).queue.list() == []  # nothing was queued by a refused request


def test_worker_run_job_runs_exactly_that_job_and_exits(home, tmp_path):
    first = write_tiny_scan(tmp_path / "a.h5")
    second = write_tiny_scan(tmp_path / "b.h5", seed=1)
    options = ("--method", "zerofill", "--accel", "2", "--acs", "8")
    one = cli(home, "recon", "submit", str(first), *options).json()["job_id"]
    other = cli(home, "recon", "submit", str(second), *options).json()["job_id"]
    ran = cli(home, "worker", "run", "--job", other)
    assert ran.exit_code == 0, ran.stderr
    assert ran.json()["job_id"] == other and ran.json()["state"] == "succeeded"
    backend = LocalBackend(home)
    assert backend.queue.get(one).state.value == "queued"  # untouched
    assert cli(home, "worker", "run", "--job", other).exit_code == ExitCode.CONFLICT
    assert cli(home, "worker", "run", "--job", "job-0123456789abcdef").exit_code == (
        ExitCode.NOT_FOUND
    )
    assert cli(home, "worker", "run", "--job", one, "--once").exit_code == ExitCode.USAGE


def test_worker_run_job_exits_5_when_the_job_fails(home, tmp_path):
    scan = write_tiny_scan(tmp_path / "full.h5")  # fully sampled and no --accel: refused
    job_id = cli(home, "recon", "submit", str(scan), "--method", "zerofill").json()["job_id"]
    ran = cli(home, "worker", "run", "--job", job_id)
    assert ran.exit_code == 0, ran.stderr  # the preprocess job itself succeeds
    recon_id = jobs.final_job(LocalBackend(home), job_id).job_id
    failed = cli(home, "worker", "run", "--job", recon_id)
    assert failed.exit_code == ExitCode.JOB_FAILED
    assert failed.json()["state"] == "failed" and "fully sampled" in failed.json()["error"]
