"""Workers as real processes on a real SQLite queue: exactly-once results, leases, dead letters.

A slow stage is made on the test side (tests.mrictl.slow_publishing): the stage pauses after
writing its outputs into its work folder and before publishing them, so a worker can be killed
or cancelled exactly there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mrictl.backends.local import LocalBackend
from mrictl.backends.local.processes import THREAD_VARIABLES, worker_environment
from mrictl.pipeline import jobs
from mrictl.pipeline.requests import enqueue_recon
from mrictl.worker import run_worker
from raki.io.image_hdf5 import read_reconstruction
from tests.mrictl.jobs_helpers import (
    RETROSPECTIVE,
    put_preprocessed,
    tree,
    write_tiny_scan,
)
from tests.mrictl.slow_publishing import pause_before_publishing


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "home")


@pytest.fixture
def scan_id(backend, tmp_path) -> str:
    return put_preprocessed(backend, write_tiny_scan(tmp_path / "scan.h5"))


REPOSITORY = Path(__file__).resolve().parents[2]


def worker_process(backend, *arguments: str, pause_s: float = 0.0) -> subprocess.Popen:
    """`mrictl worker run` on the backend's home as its own process, its stages pausing
    `pause_s` before they publish (tests.mrictl.slow_publishing)."""
    import os
    import sys

    command = [sys.executable, "-m", "tests.mrictl.slow_publishing", str(pause_s)]
    command += ["worker", "run", "--home", str(backend.home), *arguments, "--json"]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    return subprocess.Popen(
        command, cwd=REPOSITORY, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=60)


def assert_complete_outputs(backend: LocalBackend, job_id: str) -> dict:
    """Every output the record lists is there, whole, and nothing else is under the job."""
    record = jobs.get_record(backend, job_id)
    prefix = f"reconstructed/{job_id}/"
    assert sorted(record["outputs"]) == backend.store.list(prefix)
    assert f"{prefix}result.json" in record["outputs"]
    folder = backend.store.root / prefix
    assert not [name for name in tree(folder) if Path(name).name.startswith(".")]
    result = json.loads((folder / "result.json").read_text())
    assert result["job_id"] == job_id and result["method"] == "zerofill"
    image, attrs = read_reconstruction(folder / "reconstruction.h5")
    assert image.shape == (1, 32, 24) and attrs["method"] == "zerofill"
    return record


@pytest.mark.slow
def test_fifty_jobs_two_worker_processes_each_done_exactly_once(backend, scan_id):
    workers = [worker_process(backend, "--stage", "recon", "--poll-interval", "0.1") for _ in "ab"]
    try:
        ids = [
            enqueue_recon(backend, scan_id, method="zerofill", options=RETROSPECTIVE)
            for _ in range(50)
        ]
        wait_until(
            lambda: all(r["state"] == "succeeded" for r in jobs.status(backend)),
            timeout=240,
            what="50 jobs",
        )
    finally:
        stop(workers)
    claims = backend.queue.claims()
    assert Counter(claim.job_id for claim in claims) == Counter(ids)  # each claimed once
    assert len({claim.worker_id for claim in claims}) == 2  # both processes took part
    for job_id in ids:
        assert assert_complete_outputs(backend, job_id)["attempts"] == 1
    assert [p.returncode for p in workers] == [0, 0]
    assert list(backend.scratch_dir.iterdir()) == []


@pytest.mark.slow
def test_killed_worker_job_is_finished_by_another_after_lease_expiry(backend, scan_id):
    job_id = enqueue_recon(backend, scan_id, method="zerofill", options=RETROSPECTIVE)
    doomed = worker_process(backend, "--lease-seconds", "2", pause_s=60)
    rescuers: list[subprocess.Popen] = []
    try:
        # Outputs written in its work folder, none published: kill it there.
        wait_until(
            lambda: any(backend.scratch_dir.glob(f"{job_id}-*/outputs/result.json")),
            what="the first worker to write its outputs",
        )
        # The second worker starts while the first still renews its lease: it must wait.
        rescuers = [worker_process(backend, "--lease-seconds", "2", "--poll-interval", "0.1")]
        time.sleep(1.0)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
        assert backend.store.list(f"reconstructed/{job_id}/") == []
        final = jobs.wait(backend, job_id, timeout=120)
    finally:
        if doomed.poll() is None:
            doomed.kill()
        stop(rescuers)
    assert final["state"] == "succeeded" and final["attempts"] == 2
    claims = backend.queue.claims(job_id)
    assert [c.attempt for c in claims] == [1, 2]
    assert claims[0].worker_id != claims[1].worker_id
    assert_complete_outputs(backend, job_id)
    assert len(backend.queue.list(stage="recon")) == 1
    assert list(backend.scratch_dir.iterdir()) == []  # the dead worker's leftovers are gone
    messages = [line["message"] for line in jobs.logs(backend, job_id)]
    assert any("stopped renewing its lease" in message for message in messages)


def test_missing_input_is_retried_then_dead_lettered_with_its_reason(backend):
    job_id = backend.queue.enqueue("preprocess", {"scan_id": "scan-00000000000000ff"})
    assert run_worker(backend, once=True, worker_id="w", lease_seconds=30) == 3
    record = jobs.get_record(backend, job_id)
    assert record["state"] == "failed" and record["attempts"] == 3
    assert record["error"] == (
        "uploads/scan-00000000000000ff.tar: no such object in the store (gave up after 3 attempts)"
    )
    messages = [line["message"] for line in jobs.logs(backend, job_id)]
    assert [m for m in messages if m.startswith("attempt") and "started" in m] == [
        "attempt 1/3 started on w",
        "attempt 2/3 started on w",
        "attempt 3/3 started on w",
    ]
    assert messages[-1] == "dead-lettered (no attempts left)"
    assert list(backend.scratch_dir.iterdir()) == []


def test_bad_request_fails_at_once_without_retry(backend, scan_id):
    job_id = enqueue_recon(backend, scan_id, method="zerofill")  # fully sampled, no --accel
    run_worker(backend, once=True, lease_seconds=30)
    record = jobs.get_record(backend, job_id)
    assert record["state"] == "failed" and record["attempts"] == 1
    assert "fully sampled" in record["error"] and "\n" not in record["error"]


def test_cancelled_running_job_stops_at_heartbeat_and_publishes_nothing(backend, scan_id):
    undo = pause_before_publishing(30)
    job_id = enqueue_recon(backend, scan_id, method="zerofill", options=RETROSPECTIVE)
    done = []
    worker = threading.Thread(
        target=lambda: done.append(run_worker(backend, once=True, lease_seconds=0.6))
    )
    worker.start()
    wait_until(lambda: any(backend.scratch_dir.glob(f"{job_id}-*/outputs/result.json")))
    started = time.monotonic()
    jobs.cancel(backend, job_id)
    worker.join(timeout=30)
    undo()
    assert not worker.is_alive() and done == [1]
    assert time.monotonic() - started < 5  # noticed at a heartbeat, not after the 30 s sleep
    record = jobs.get_record(backend, job_id)
    assert record["state"] == "cancelled" and record["outputs"] == []
    assert backend.store.list("reconstructed/") == []
    assert list(backend.scratch_dir.iterdir()) == []


def test_stop_event_ends_an_idle_worker(backend):
    stop_event = threading.Event()
    result = []
    worker = threading.Thread(
        target=lambda: result.append(run_worker(backend, stop_event=stop_event, poll_interval=0.05))
    )
    worker.start()
    time.sleep(0.2)
    stop_event.set()
    worker.join(timeout=10)
    assert result == [0]


def test_worker_run_with_several_processes_reports_the_jobs_they_did(backend, scan_id):
    from tests.mrictl.cli_helpers import invoke

    ids = [
        enqueue_recon(backend, scan_id, method="zerofill", options=RETROSPECTIVE) for _ in range(4)
    ]
    outcome = invoke(
        "worker", "run", "--workers", "2", "--once", "--home", str(backend.home), "--json"
    )
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert document["workers"] == 2 and document["jobs_done"] == len(ids)
    assert all(jobs.get_record(backend, job_id)["state"] == "succeeded" for job_id in ids)
    assert list(backend.scratch_dir.iterdir()) == []


def test_worker_processes_split_the_cores_and_keep_a_count_the_caller_set():
    """n processes each starting a thread per core would run n x cores threads on the cores."""
    split = worker_environment(2, {"PATH": "/bin"}, cores=8)
    assert [split[name] for name in THREAD_VARIABLES] == ["4", "4", "4"]
    assert split["PATH"] == "/bin"
    assert worker_environment(4, {}, cores=2)["OMP_NUM_THREADS"] == "1"
    assert worker_environment(2, {"OMP_NUM_THREADS": "3"}, cores=8)["OMP_NUM_THREADS"] == "3"
    one = worker_environment(1, {})
    assert int(one["OMP_NUM_THREADS"]) >= 1


def cancelled_then_chains(context) -> dict:
    """A stage whose job is cancelled while it runs, just before it queues its successor."""
    jobs.cancel(context.backend, context.job.job_id)  # long before the next heartbeat (200 s)
    context.enqueue_next("recon", {"scan_id": "x"})
    return {}


def test_a_job_cancelled_while_running_queues_no_next_stage(backend, monkeypatch):
    import dataclasses

    from mrictl.backends.base import JobState
    from mrictl.pipeline.stages import STAGES
    from mrictl.worker import process_job

    entry = f"{__name__}:cancelled_then_chains"
    monkeypatch.setitem(
        STAGES, "preprocess", dataclasses.replace(STAGES["preprocess"], entry_point=entry)
    )
    backend.queue.enqueue("preprocess", {})
    job = backend.queue.claim("preprocess", "w1", 600)
    state = process_job(backend, job, worker_id="w1", lease_seconds=600)
    assert state is JobState.CANCELLED
    assert backend.queue.list(stage="recon") == []


def test_cancel_stops_a_successor_queued_just_before_it(backend):
    parent = backend.queue.enqueue("preprocess", {})
    backend.queue.claim("preprocess", "w1", 600)
    child = backend.queue.enqueue("recon", {}, parent_id=parent)
    jobs.cancel(backend, parent)
    assert backend.queue.get(child).state.value == "cancelled"


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_worker_run_finishes_the_job_in_hand_when_told_to_stop(backend, scan_id, signal_number):
    """`mrictl worker run` on SIGTERM or a first Ctrl-C: the running job completes, exit 0."""
    job_id = enqueue_recon(backend, scan_id, method="zerofill", options=RETROSPECTIVE)
    process = worker_process(backend, pause_s=3)
    try:
        wait_until(
            lambda: any(backend.scratch_dir.glob(f"{job_id}-*/outputs/result.json")),
            what="the job to be running",
        )
        process.send_signal(signal_number)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout)["jobs_done"] == 1
    assert jobs.get_record(backend, job_id)["state"] == "succeeded"
