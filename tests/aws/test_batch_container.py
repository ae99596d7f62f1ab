"""What a Batch container does with the one job it was started for (`mrictl worker run --job
ID`), whatever the backend: it runs the job until it is final (a retryable failure is tried
again in the same container, since nothing else would deliver it), takes over the lease of an
attempt whose host failed (a Batch retry), leaves a live worker's job alone, and on SIGTERM
(Batch stops a container: a cancel, a timeout, a Spot reclaim) hands the job back at once.

On the local backend: these are the worker's rules, and the record is the same fence there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mrictl import keys
from mrictl.backends.base import ConflictError, JobState
from mrictl.backends.local import LocalBackend
from mrictl.errors import ExitCode
from mrictl.pipeline.context import StageContext
from mrictl.pipeline.requests import enqueue_recon
from mrictl.pipeline.stages import STAGES, Stage
from mrictl.worker import run_job
from tests.mrictl.cli_helpers import invoke
from tests.mrictl.jobs_helpers import RETROSPECTIVE, put_preprocessed, write_tiny_scan

REPOSITORY = Path(__file__).resolve().parents[2]
FAILURES: list[str] = []  # what the flaky stage raises, one per attempt, then it succeeds


def flaky(context: StageContext) -> dict[str, Any]:
    """The test stage: fails with the next queued failure, if any, then succeeds."""
    if FAILURES:
        raise OSError(FAILURES.pop(0))
    return {"outputs": []}


FLAKY = Stage("flaky", f"{__name__}:flaky", keys.RECONSTRUCTED, False, "fail, then succeed")


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalBackend:
    monkeypatch.setitem(STAGES, FLAKY.name, FLAKY)
    FAILURES.clear()
    return LocalBackend(tmp_path / "home")


def test_a_retryable_failure_is_tried_again_in_the_same_container(backend):
    job_id = backend.queue.enqueue(FLAKY.name, {})
    FAILURES.append("disk busy")
    done = run_job(backend, job_id, worker_id="container", retry_delay=0.0)
    assert (done.state, done.attempts, done.error) == (JobState.SUCCEEDED, 2, None)
    assert [claim.worker_id for claim in backend.queue.claims(job_id)] == ["container"] * 2

    failing = backend.queue.enqueue(FLAKY.name, {}, max_attempts=2)
    FAILURES.extend(["disk busy", "disk still busy"])
    dead = run_job(backend, failing, worker_id="container", retry_delay=0.0)
    assert dead.state is JobState.FAILED and dead.attempts == 2
    assert "gave up after 2 attempts" in dead.error


def test_a_batch_retry_takes_over_the_lease_of_an_attempt_whose_host_failed(backend, monkeypatch):
    job_id = backend.queue.enqueue(FLAKY.name, {})
    backend.queue.claim_job(job_id, "failed-host", 1.0)  # then the host died: no heartbeat
    with pytest.raises(ConflictError):
        run_job(backend, job_id, worker_id="first-attempt")  # no waiting: not a retry
    outcome = invoke("worker", "run", "--job", job_id, "--home", str(backend.home), "--json")
    assert outcome.exit_code == ExitCode.CONFLICT
    started = time.monotonic()
    monkeypatch.setenv("AWS_BATCH_JOB_ATTEMPT", "2")  # as Batch sets it in a retried attempt
    retried = invoke("worker", "run", "--job", job_id, "--home", str(backend.home), "--json")
    assert retried.exit_code == 0, retried.stderr
    assert (retried.json()["state"], retried.json()["attempts"]) == ("succeeded", 2)
    assert time.monotonic() - started < 10


def test_a_lease_that_is_renewed_belongs_to_a_live_worker_and_is_left_alone(backend):
    job_id = backend.queue.enqueue(FLAKY.name, {})
    held = backend.queue.claim_job(job_id, "live", 1.0)
    stop = threading.Event()

    def renew() -> None:
        job = held
        while not stop.wait(0.2):
            job = backend.queue.heartbeat(job, 1.0)

    renewing = threading.Thread(target=renew, daemon=True)
    renewing.start()
    try:
        with pytest.raises(ConflictError, match="lease was renewed"):
            run_job(backend, job_id, worker_id="duplicate", take_over_within=30.0)
    finally:
        stop.set()
        renewing.join()
    assert [claim.worker_id for claim in backend.queue.claims(job_id)] == ["live"]


@pytest.mark.slow
def test_sigterm_hands_the_job_back_at_once_and_the_next_container_finishes_it(tmp_path):
    backend = LocalBackend(tmp_path / "home")
    scan_id = put_preprocessed(backend, write_tiny_scan(tmp_path / "scan.h5"))
    job_id = enqueue_recon(backend, scan_id, method="zerofill", options=RETROSPECTIVE)
    command = [sys.executable, "-m", "tests.mrictl.slow_publishing", "120", "worker", "run"]
    command += ["--job", job_id, "--home", str(backend.home), "--json"]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    process = subprocess.Popen(
        command, cwd=REPOSITORY, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not any(backend.scratch_dir.glob(f"{job_id}-*/outputs/result.json")):
            assert time.monotonic() < deadline and process.poll() is None, "never got running"
            time.sleep(0.05)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - started < 10  # not the 120 s the stage would still have paused
    assert process.returncode == ExitCode.INTERRUPTED, stderr.decode()
    assert json.loads(stdout)["error"]["code"] == ExitCode.INTERRUPTED
    handed_back = backend.queue.get(job_id)
    assert (handed_back.state, handed_back.attempts) == (JobState.QUEUED, 1)
    assert handed_back.error == "interrupted: the worker was stopped"
    messages = [entry.message for entry in backend.queue.logs(job_id)]
    assert "handed back: the worker was stopped (queued)" in messages
    assert backend.store.list(f"reconstructed/{job_id}/") == []
    assert not list(backend.scratch_dir.glob(f"{job_id}-*"))

    done = run_job(backend, job_id, worker_id="next-container")
    assert (done.state, done.attempts) == (JobState.SUCCEEDED, 2)
