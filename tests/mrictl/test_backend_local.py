"""The local backend: objects with checksums in a folder, jobs with leases in SQLite."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from pathlib import Path

import pytest

from mrictl.backends.base import (
    Backend,
    ChecksumMismatchError,
    ConflictError,
    JobCancelledError,
    JobQueue,
    JobState,
    LeaseLostError,
    NotFoundError,
    ObjectStore,
    validate_key,
)
from mrictl.backends.local import LocalBackend
from mrictl.errors import ExitCode


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "home")


def test_local_backend_implements_the_interface(backend):
    assert isinstance(backend, Backend)
    assert isinstance(backend.store, ObjectStore)
    assert isinstance(backend.queue, JobQueue)
    assert (backend.home / "mrictl.sqlite3").is_file()


def test_put_get_roundtrip_records_sha256(backend, tmp_path):
    source = tmp_path / "data.bin"
    source.write_bytes(b"k-space" * 1000)
    info = backend.store.put_file("uploads/scan-0123456789abcdef.tar", source)
    assert info.size == 7000
    assert backend.store.head(info.key).sha256 == info.sha256
    assert backend.store.exists(info.key)
    assert backend.store.path_of(info.key).read_bytes() == source.read_bytes()
    copy = backend.store.get_file(info.key, tmp_path / "out" / "copy.bin")
    assert copy.sha256 == info.sha256
    assert (tmp_path / "out" / "copy.bin").read_bytes() == source.read_bytes()
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "copy.bin"]


def test_list_delete_and_hidden_temporaries(backend, tmp_path):
    source = tmp_path / "x"
    source.write_bytes(b"x")
    for key in (
        "reconstructed/job-1/a.h5",
        "reconstructed/job-1/dicom/IM0001.dcm",
        "uploads/s.tar",
    ):
        backend.store.put_file(key, source)
    # A writer's temporary file is never listed.
    (backend.store.root / "uploads" / ".s2.tar.abc.partial").write_bytes(b"half")
    assert backend.store.list() == [
        "reconstructed/job-1/a.h5",
        "reconstructed/job-1/dicom/IM0001.dcm",
        "uploads/s.tar",
    ]
    assert backend.store.list("reconstructed/job-1/") == [
        "reconstructed/job-1/a.h5",
        "reconstructed/job-1/dicom/IM0001.dcm",
    ]
    backend.store.delete("reconstructed/job-1/dicom/IM0001.dcm")
    backend.store.delete("reconstructed/job-1/a.h5")
    backend.store.delete("reconstructed/job-1/never-there")
    assert backend.store.list("reconstructed/") == []
    assert not (backend.store.root / "reconstructed" / "job-1").exists()
    assert (backend.store.root / "reconstructed").is_dir()


def test_missing_and_corrupt_objects(backend, tmp_path):
    with pytest.raises(NotFoundError) as missing:
        backend.store.get_file("uploads/nope.tar", tmp_path / "x")
    assert missing.value.exit_code == ExitCode.NOT_FOUND
    source = tmp_path / "x"
    source.write_bytes(b"original")
    backend.store.put_file("preprocessed/s.h5", source)
    backend.store.path_of("preprocessed/s.h5").write_bytes(b"bit rot!")
    with pytest.raises(ChecksumMismatchError, match=r"preprocessed/s\.h5"):
        backend.store.get_file("preprocessed/s.h5", tmp_path / "y")
    assert not (tmp_path / "y").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("key", ["", "/abs", "../x", "a/../b", "a//b", ".hidden", "a/.b", "a b"])
def test_keys_are_validated(key):
    with pytest.raises(ValueError):
        validate_key(key)


def test_claim_complete_and_record(backend):
    job_id = backend.queue.enqueue("recon", {"scan_id": "scan-0000000000000000"})
    job = backend.queue.get(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0 and job.lease_token is None
    assert backend.queue.claim("preprocess", "w", 10) is None
    claimed = backend.queue.claim("recon", "w", 10)
    assert claimed.job_id == job_id and claimed.state is JobState.RUNNING
    assert claimed.attempts == 1 and claimed.lease_token
    assert backend.queue.claim("recon", "w2", 10) is None
    renewed = backend.queue.heartbeat(claimed, 60)
    assert renewed.lease_expires_at > claimed.lease_expires_at
    backend.queue.complete(renewed, {"outputs": ["k"]})
    done = backend.queue.get(job_id)
    assert done.state is JobState.SUCCEEDED and done.result == {"outputs": ["k"]}
    assert [c.worker_id for c in backend.queue.claims(job_id)] == ["w"]


def test_expired_lease_is_claimed_again_and_old_holder_is_locked_out(backend):
    job_id = backend.queue.enqueue("recon", {})
    first = backend.queue.claim("recon", "dead-worker", 0.1)
    time.sleep(0.2)
    second = backend.queue.claim("recon", "live-worker", 10)
    assert second.job_id == job_id and second.attempts == 2
    with pytest.raises(LeaseLostError):
        backend.queue.heartbeat(first, 10)
    with pytest.raises(LeaseLostError):
        backend.queue.complete(first, {})
    backend.queue.complete(second, {})
    assert backend.queue.get(job_id).state is JobState.SUCCEEDED
    assert any("lease expired" in entry.message for entry in backend.queue.logs(job_id))


def test_failures_retry_then_dead_letter_with_reason(backend):
    job_id = backend.queue.enqueue("preprocess", {}, max_attempts=3)
    states = []
    for _ in range(3):
        job = backend.queue.claim("preprocess", "w", 10)
        states.append(backend.queue.fail(job, "disk on fire"))
    assert states == [JobState.QUEUED, JobState.QUEUED, JobState.FAILED]
    dead = backend.queue.get(job_id)
    assert dead.state is JobState.FAILED and dead.attempts == 3
    assert dead.error == "disk on fire (gave up after 3 attempts)"
    assert backend.queue.claim("preprocess", "w", 10) is None
    again = backend.queue.retry(job_id)
    assert again.state is JobState.QUEUED and again.attempts == 0 and again.error is None


def test_permanent_failure_dead_letters_at_once(backend):
    job_id = backend.queue.enqueue("preprocess", {})
    job = backend.queue.claim("preprocess", "w", 10)
    assert backend.queue.fail(job, "bad upload", retryable=False) is JobState.FAILED
    assert backend.queue.get(job_id).error == "bad upload"


def test_expired_leases_count_as_attempts(backend):
    job_id = backend.queue.enqueue("recon", {}, max_attempts=2)
    backend.queue.claim("recon", "a", 0.05)
    time.sleep(0.1)
    backend.queue.claim("recon", "b", 0.05)
    time.sleep(0.1)
    assert backend.queue.claim("recon", "c", 10) is None
    dead = backend.queue.get(job_id)
    assert dead.state is JobState.FAILED and "gave up after 2 attempts" in dead.error


def test_cancel_queued_and_running_jobs(backend):
    queued = backend.queue.enqueue("recon", {})
    running_id = backend.queue.enqueue("recon", {})
    assert backend.queue.cancel(queued).state is JobState.CANCELLED
    running = backend.queue.claim("recon", "w", 10)
    assert running.job_id == running_id
    backend.queue.cancel(running_id)
    with pytest.raises(JobCancelledError):
        backend.queue.heartbeat(running, 10)
    with pytest.raises(JobCancelledError):
        backend.queue.complete(running, {})
    with pytest.raises(ConflictError) as finished:
        backend.queue.cancel(running_id)
    assert finished.value.exit_code == ExitCode.CONFLICT
    with pytest.raises(ConflictError):
        backend.queue.retry(backend.queue.enqueue("recon", {}))
    with pytest.raises(NotFoundError):
        backend.queue.get("job-missing")


def test_idempotency_key_enqueues_once(backend):
    first = backend.queue.enqueue("recon", {"n": 1}, idempotency_key="job-a/recon")
    second = backend.queue.enqueue("recon", {"n": 2}, idempotency_key="job-a/recon")
    assert first == second and len(backend.queue.list(stage="recon")) == 1


def test_list_filters_and_logs(backend):
    a = backend.queue.enqueue("preprocess", {})
    b = backend.queue.enqueue("recon", {})
    backend.queue.cancel(b)
    assert [j.job_id for j in backend.queue.list()] == [a, b]
    assert [j.job_id for j in backend.queue.list(state="cancelled")] == [b]
    assert [j.job_id for j in backend.queue.list(stage="preprocess")] == [a]
    backend.queue.append_log(a, "hello", worker_id="w")
    assert [(e.message, e.worker_id) for e in backend.queue.logs(a)] == [("hello", "w")]


def _claim_all(home: str, worker_id: str, results) -> None:
    backend = LocalBackend(Path(home))
    mine = []
    while (job := backend.queue.claim("recon", worker_id, 60)) is not None:
        mine.append(job.job_id)
        backend.queue.complete(job, {})
    results.put(mine)


def test_two_processes_never_claim_the_same_job(backend):
    ids = [backend.queue.enqueue("recon", {"i": i}) for i in range(200)]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_claim_all, args=(str(backend.home), f"p{n}", results))
        for n in range(2)
    ]
    for worker in workers:
        worker.start()
    claimed = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(claimed[0] + claimed[1]) == sorted(ids)
    assert not set(claimed[0]) & set(claimed[1])
    counts = Counter(claim.job_id for claim in backend.queue.claims())
    assert set(counts.values()) == {1} and len(counts) == 200
    assert {job.state for job in backend.queue.list()} == {JobState.SUCCEEDED}
