"""The backend contract (mrictl.backends.base), held against every backend in conftest.py.

Each test is what a caller does and what any backend must give back: objects whole and checked,
jobs delivered to one worker at a time under a fenced lease, retried, dead-lettered, cancelled
and retried on request, and records with the documented schema. Leases are fractions of a
second, so the suite runs in seconds.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mrictl import keys
from mrictl.backends.base import (
    DEFAULT_MAX_ATTEMPTS,
    MAX_METADATA,
    Backend,
    ChecksumMismatchError,
    ConflictError,
    Job,
    JobCancelledError,
    JobQueue,
    JobState,
    LeaseLostError,
    NotFoundError,
    ObjectStore,
)
from mrictl.errors import ExitCode
from mrictl.pipeline import jobs
from mrictl.pipeline.context import Heartbeat, JobAborted, StageContext
from mrictl.pipeline.stages import STAGES, Stage
from mrictl.worker import run_worker
from tests.mrictl.cli_helpers import invoke

SHORT_LEASE_S = 0.3  # a lease the test lets expire
PAST_LEASE_S = 0.5  # long enough for it to have
LONG_LEASE_S = 30.0  # a lease that outlives the test

SCAN_KEY = "uploads/scan-0123456789abcdef.tar"
UNKNOWN_JOB = "job-0000000000000000"
REPOSITORY = Path(__file__).resolve().parents[3]


def past_the_lease() -> None:
    time.sleep(PAST_LEASE_S)


def source_file(folder: Path, data: bytes, name: str = "source.bin") -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def run_together(count: int, action: Callable[[int], Any]) -> list[Any]:
    """`action(i)` in `count` threads released at the same instant; results or exceptions."""
    barrier = threading.Barrier(count)
    outcomes: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = action(index)
        except Exception as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def publish_greeting(context: StageContext) -> dict[str, Any]:
    """The test stage: one output, published through the fenced context."""
    path = context.work_dir / "greeting.txt"
    path.write_text(f"hello from {context.job.job_id}")
    key = context.output_key("greeting.txt")
    context.publish(path, key, metadata={"stage": "greet"})
    return {"outputs": [key]}


GREET = Stage(
    "greet",
    f"{__name__}:publish_greeting",
    keys.RECONSTRUCTED,
    False,
    "write one greeting (tests)",
)


@pytest.fixture
def greet_stage(monkeypatch) -> Stage:
    """The test stage, registered for the worker in this process."""
    monkeypatch.setitem(STAGES, GREET.name, GREET)
    return GREET


def test_backend_offers_a_store_a_queue_and_scratch_space(backend, backend_name):
    assert isinstance(backend, Backend)
    assert isinstance(backend.store, ObjectStore)
    assert isinstance(backend.queue, JobQueue)
    assert backend.name == backend_name
    assert backend.scratch_dir.is_dir()


# The object store ------------------------------------------------------------------------------


def test_put_then_get_gives_the_bytes_their_sha256_and_metadata(backend, tmp_path):
    data = b"k-space" * 1000
    source = source_file(tmp_path, data)
    metadata = {"format": "mrictl-package", "scan-id": "scan-0123456789abcdef"}
    info = backend.store.put_file(SCAN_KEY, source, metadata=metadata)
    assert (info.key, info.size, info.metadata) == (SCAN_KEY, len(data), metadata)
    assert re.fullmatch(r"[0-9a-f]{64}", info.sha256)

    dest = tmp_path / "fetched" / "nested" / "copy.tar"
    copy = backend.store.get_file(SCAN_KEY, dest)
    assert dest.read_bytes() == data
    assert copy == info
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.tar"]  # no temporaries


def test_put_without_metadata_records_none_and_a_second_put_replaces(backend, tmp_path):
    first = backend.store.put_file(SCAN_KEY, source_file(tmp_path, b"one"))
    assert first.metadata == {}
    second = backend.store.put_file(
        SCAN_KEY, source_file(tmp_path, b"second", "other.bin"), metadata={"format": "h5"}
    )
    assert second.sha256 != first.sha256
    assert backend.store.head(SCAN_KEY) == second
    backend.store.get_file(SCAN_KEY, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"second"


@pytest.mark.parametrize(
    "metadata",
    [
        {"Scan-Id": "x"},  # upper case
        {"scan id": "x"},  # a space in the name
        {"": "x"},
        {"note": "line\nbreak"},  # not printable
        {"note": "x" * 257},
        {"note": 3},
        {f"k{i}": "v" for i in range(MAX_METADATA + 1)},
    ],
    ids=["upper-case", "space", "empty-name", "newline", "too-long", "not-text", "too-many"],
)
def test_invalid_metadata_is_refused_and_nothing_is_stored(backend, tmp_path, metadata):
    with pytest.raises(ValueError):
        backend.store.put_file(SCAN_KEY, source_file(tmp_path, b"x"), metadata=metadata)
    assert not backend.store.exists(SCAN_KEY)


def test_head_tells_size_sha256_and_metadata_without_reading_the_bytes(backend, tmp_path, corrupt):
    info = backend.store.put_file(SCAN_KEY, source_file(tmp_path, b"abc"), metadata={"a": "b"})
    assert backend.store.head(SCAN_KEY) == info
    corrupt(SCAN_KEY)
    # head reports what was recorded at put: it did not read (and hash) the changed bytes.
    assert backend.store.head(SCAN_KEY).sha256 == info.sha256


def test_verify_is_true_until_the_bytes_change(backend, tmp_path, corrupt):
    backend.store.put_file(SCAN_KEY, source_file(tmp_path, b"original bytes"))
    assert backend.store.verify(SCAN_KEY) is True
    corrupt(SCAN_KEY)
    assert backend.store.verify(SCAN_KEY) is False


def test_get_of_a_corrupt_object_raises_and_leaves_no_file(backend, tmp_path, corrupt):
    backend.store.put_file("preprocessed/scan-0123456789abcdef.h5", source_file(tmp_path, b"h5"))
    corrupt("preprocessed/scan-0123456789abcdef.h5")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumMismatchError, match=r"preprocessed/scan-0123456789abcdef\.h5"):
        backend.store.get_file("preprocessed/scan-0123456789abcdef.h5", out / "scan.h5")
    assert list(out.iterdir()) == []  # neither the file nor a temporary


def test_missing_objects_are_not_found(backend, tmp_path):
    with pytest.raises(NotFoundError) as missing:
        backend.store.get_file(SCAN_KEY, tmp_path / "x")
    assert missing.value.exit_code == ExitCode.NOT_FOUND
    assert not (tmp_path / "x").exists()
    with pytest.raises(NotFoundError):
        backend.store.head(SCAN_KEY)
    with pytest.raises(NotFoundError):
        backend.store.verify(SCAN_KEY)
    assert backend.store.exists(SCAN_KEY) is False


def test_list_by_prefix_is_sorted(backend, tmp_path):
    source = source_file(tmp_path, b"x")
    stored = [
        "uploads/scan-0123456789abcdef.tar",
        "reconstructed/job-1111111111111111/result.json",
        "reconstructed/job-1111111111111111/dicom/IM0001.dcm",
        "reconstructed/job-2222222222222222/result.json",
        "preprocessed/scan-0123456789abcdef.h5",
    ]
    for key in stored:
        backend.store.put_file(key, source)
    assert backend.store.list() == sorted(stored)
    assert backend.store.list("reconstructed/job-1111111111111111/") == [
        "reconstructed/job-1111111111111111/dicom/IM0001.dcm",
        "reconstructed/job-1111111111111111/result.json",
    ]
    # A prefix is a string prefix, not a folder (as S3 has it).
    assert backend.store.list("recon") == sorted(stored[1:4])
    assert backend.store.list("reconstructed/job-2") == [stored[3]]
    assert backend.store.list("weights/") == []


def test_exists_and_delete(backend, tmp_path):
    backend.store.put_file(SCAN_KEY, source_file(tmp_path, b"x"))
    assert backend.store.exists(SCAN_KEY) is True
    backend.store.delete(SCAN_KEY)
    assert backend.store.exists(SCAN_KEY) is False
    assert backend.store.list() == []
    with pytest.raises(NotFoundError):
        backend.store.head(SCAN_KEY)
    backend.store.delete(SCAN_KEY)  # absent: not an error
    backend.store.delete("weights/job-1111111111111111/weights.pt")


@pytest.mark.parametrize(
    "key", ["", "/abs", "../x", "a/../b", "a//b", ".hidden", "a/.b", "a b", "trailing/"]
)
def test_invalid_keys_are_refused(backend, tmp_path, key):
    source = source_file(tmp_path, b"x")
    with pytest.raises(ValueError):
        backend.store.put_file(key, source)
    with pytest.raises(ValueError):
        backend.store.get_file(key, tmp_path / "out")
    with pytest.raises(ValueError):
        backend.store.head(key)
    with pytest.raises(ValueError):
        backend.store.exists(key)
    with pytest.raises(ValueError):
        backend.store.delete(key)
    assert backend.store.list() == []


# Queueing and claiming -------------------------------------------------------------------------


def test_enqueue_records_a_queued_job(backend):
    before = time.time()
    job_id = backend.queue.enqueue("recon", {"scan_id": "scan-0123456789abcdef", "n": [1, 2]})
    assert keys.is_job_id(job_id)
    job = backend.queue.get(job_id)
    assert (job.job_id, job.stage, job.state) == (job_id, "recon", JobState.QUEUED)
    assert job.payload == {"scan_id": "scan-0123456789abcdef", "n": [1, 2]}
    assert (job.attempts, job.max_attempts) == (0, DEFAULT_MAX_ATTEMPTS)
    assert job.result == {} and job.error is None and job.parent_id is None
    assert job.worker_id is None and job.lease_token is None
    assert before - 1 <= job.created_at <= job.updated_at <= time.time() + 1
    assert backend.queue.get(backend.queue.enqueue("recon", {}, max_attempts=5)).max_attempts == 5
    with pytest.raises(NotFoundError):
        backend.queue.get(UNKNOWN_JOB)


def test_an_idempotency_key_makes_one_job_whoever_sends_it(backend):
    first = backend.queue.enqueue("preprocess", {"n": 1}, idempotency_key="uploads/scan-a")
    again = backend.queue.enqueue("preprocess", {"n": 2}, idempotency_key="uploads/scan-a")
    other = backend.queue.enqueue("preprocess", {"n": 3}, idempotency_key="uploads/scan-b")
    assert first == again != other
    assert backend.queue.get(first).payload == {"n": 1}
    # Still the same job once it has finished.
    backend.queue.complete(backend.queue.claim_job(first, "w", LONG_LEASE_S), {})
    assert backend.queue.enqueue("preprocess", {}, idempotency_key="uploads/scan-a") == first
    assert len(backend.queue.list()) == 2


def test_an_idempotency_key_sent_by_several_threads_at_once_is_one_job(backend):
    ids = run_together(
        6, lambda i: backend.queue.enqueue("recon", {"i": i}, idempotency_key="job-a/recon")
    )
    assert len(set(ids)) == 1 and keys.is_job_id(ids[0])
    assert [job.job_id for job in backend.queue.list()] == ids[:1]


def test_claim_by_stage_takes_the_oldest_job_of_that_stage(backend):
    first, second = (backend.queue.enqueue("recon", {"i": i}) for i in range(2))
    preprocess = backend.queue.enqueue("preprocess", {})
    third = backend.queue.enqueue("recon", {"i": 2})
    taken = [backend.queue.claim("recon", "w", LONG_LEASE_S) for _ in range(4)]
    assert [job.job_id if job else None for job in taken] == [first, second, third, None]
    claimed = taken[0]
    assert claimed.state is JobState.RUNNING and claimed.worker_id == "w"
    assert claimed.attempts == 1 and claimed.lease_token
    assert claimed.lease_expires_at > time.time() + LONG_LEASE_S / 2
    assert backend.queue.claim("preprocess", "w", LONG_LEASE_S).job_id == preprocess
    assert backend.queue.claim("train", "w", LONG_LEASE_S) is None


def test_claim_of_an_empty_queue_is_none(backend):
    assert backend.queue.claim("recon", "w", LONG_LEASE_S) is None


def test_only_the_claimed_copy_carries_the_lease_token(backend):
    job_id = backend.queue.enqueue("recon", {})
    claimed = backend.queue.claim("recon", "w", LONG_LEASE_S)
    assert claimed.lease_token
    assert backend.queue.get(job_id).lease_token is None
    assert [job.lease_token for job in backend.queue.list()] == [None]
    # A copy read from the queue cannot finish the job: only the lease holder can.
    with pytest.raises(LeaseLostError):
        backend.queue.complete(backend.queue.get(job_id), {})
    assert backend.queue.get(job_id).state is JobState.RUNNING


def test_claim_job_by_id_leases_a_queued_job(backend):
    job_id = backend.queue.enqueue("recon", {})
    claimed = backend.queue.claim_job(job_id, "batch-1", LONG_LEASE_S)
    assert (claimed.job_id, claimed.state, claimed.worker_id) == (
        job_id,
        JobState.RUNNING,
        "batch-1",
    )
    assert claimed.attempts == 1 and claimed.lease_token
    assert backend.queue.claim("recon", "w", LONG_LEASE_S) is None  # not delivered twice


def test_claim_job_of_a_job_under_a_live_lease_is_a_conflict(backend):
    job_id = backend.queue.enqueue("recon", {})
    backend.queue.claim_job(job_id, "first", LONG_LEASE_S)
    with pytest.raises(ConflictError) as conflict:
        backend.queue.claim_job(job_id, "second", LONG_LEASE_S)
    assert conflict.value.exit_code == ExitCode.CONFLICT
    job = backend.queue.get(job_id)
    assert (job.worker_id, job.attempts) == ("first", 1)


def test_claim_job_of_a_finished_job_is_a_conflict(backend):
    done, failed, cancelled = (backend.queue.enqueue("recon", {}) for _ in range(3))
    backend.queue.complete(backend.queue.claim_job(done, "w", LONG_LEASE_S), {})
    backend.queue.fail(backend.queue.claim_job(failed, "w", LONG_LEASE_S), "bad", retryable=False)
    backend.queue.cancel(cancelled)
    for job_id in (done, failed, cancelled):
        with pytest.raises(ConflictError):
            backend.queue.claim_job(job_id, "w", LONG_LEASE_S)
    with pytest.raises(NotFoundError):
        backend.queue.claim_job(UNKNOWN_JOB, "w", LONG_LEASE_S)


def test_claim_job_takes_over_an_expired_lease(backend):
    job_id = backend.queue.enqueue("recon", {})
    dead = backend.queue.claim_job(job_id, "dead", SHORT_LEASE_S)
    past_the_lease()
    taken = backend.queue.claim_job(job_id, "alive", LONG_LEASE_S)
    assert (taken.worker_id, taken.attempts) == ("alive", 2)
    assert taken.lease_token != dead.lease_token
    with pytest.raises(LeaseLostError):
        backend.queue.heartbeat(dead, LONG_LEASE_S)


def test_two_workers_racing_for_one_job_one_wins(backend):
    backend.queue.enqueue("recon", {})
    pulled = run_together(4, lambda i: backend.queue.claim("recon", f"puller-{i}", LONG_LEASE_S))
    assert sum(isinstance(outcome, Job) for outcome in pulled) == 1
    assert pulled.count(None) == 3

    pushed_id = backend.queue.enqueue("train", {})
    pushed = run_together(
        4, lambda i: backend.queue.claim_job(pushed_id, f"pusher-{i}", LONG_LEASE_S)
    )
    winners = [outcome for outcome in pushed if not isinstance(outcome, Exception)]
    assert len(winners) == 1 and winners[0].job_id == pushed_id
    assert all(isinstance(o, ConflictError) for o in pushed if o is not winners[0])
    assert len(backend.queue.claims(pushed_id)) == 1
    assert backend.queue.get(pushed_id).worker_id == winners[0].worker_id


# Leases and the fence ----------------------------------------------------------------------------


def test_heartbeat_extends_the_lease(backend):
    job_id = backend.queue.enqueue("recon", {})
    claimed = backend.queue.claim("recon", "w", 2 * SHORT_LEASE_S)
    renewed = backend.queue.heartbeat(claimed, LONG_LEASE_S)
    assert renewed.lease_expires_at > claimed.lease_expires_at + 1
    assert renewed.lease_token and renewed.state is JobState.RUNNING
    time.sleep(2 * PAST_LEASE_S)  # the first lease would have expired by now
    assert backend.queue.claim("recon", "other", LONG_LEASE_S) is None
    backend.queue.complete(renewed, {})
    assert backend.queue.get(job_id).state is JobState.SUCCEEDED


def test_an_expired_lease_is_lost_even_before_another_worker_claims(backend):
    backend.queue.enqueue("recon", {})
    claimed = backend.queue.claim("recon", "w", SHORT_LEASE_S)
    past_the_lease()
    with pytest.raises(LeaseLostError):
        backend.queue.heartbeat(claimed, LONG_LEASE_S)


def test_a_lease_taken_over_locks_the_first_worker_out(backend):
    job_id = backend.queue.enqueue("recon", {})
    first = backend.queue.claim("recon", "stalled", SHORT_LEASE_S)
    past_the_lease()
    second = backend.queue.claim("recon", "live", LONG_LEASE_S)
    assert (second.job_id, second.attempts) == (job_id, 2)
    for attempt in (
        lambda: backend.queue.heartbeat(first, LONG_LEASE_S),
        lambda: backend.queue.complete(first, {"outputs": ["stale"]}),
        lambda: backend.queue.fail(first, "stale"),
    ):
        with pytest.raises(LeaseLostError) as lost:
            attempt()
        assert not isinstance(lost.value, JobCancelledError)
    job = backend.queue.get(job_id)
    assert (job.state, job.worker_id, job.result) == (JobState.RUNNING, "live", {})
    backend.queue.complete(second, {"outputs": ["fresh"]})
    assert backend.queue.get(job_id).result == {"outputs": ["fresh"]}


def test_a_stage_whose_lease_was_taken_over_publishes_nothing(backend, greet_stage, tmp_path):
    job_id = backend.queue.enqueue(greet_stage.name, {})
    first = backend.queue.claim(greet_stage.name, "stalled", SHORT_LEASE_S)
    heartbeat = Heartbeat(backend, first, SHORT_LEASE_S)  # never started: the worker stalled
    context = StageContext(backend, first, greet_stage, "stalled", tmp_path / "work", heartbeat)
    key = context.output_key("greeting.txt")
    past_the_lease()
    second = backend.queue.claim_job(job_id, "live", LONG_LEASE_S)

    with pytest.raises(JobAborted) as aborted:
        context.publish(source_file(tmp_path, b"stale"), key)
    assert isinstance(aborted.value.cause, LeaseLostError)
    with pytest.raises(JobAborted):
        context.enqueue_next("recon", {})
    assert not backend.store.exists(key)
    assert backend.store.list() == []
    assert backend.queue.children(job_id) == []
    assert second.attempts == 2 and backend.queue.get(job_id).worker_id == "live"


def test_complete_stores_the_result(backend):
    job_id = backend.queue.enqueue("recon", {})
    claimed = backend.queue.claim("recon", "w", LONG_LEASE_S)
    result = {"outputs": ["reconstructed/x/result.json"], "metrics": {"psnr": 31.5}}
    backend.queue.complete(claimed, result)
    done = backend.queue.get(job_id)
    assert (done.state, done.result, done.error, done.attempts) == (
        JobState.SUCCEEDED,
        result,
        None,
        1,
    )
    assert done.lease_token is None
    with pytest.raises(LeaseLostError):  # finished: nothing more to renew or record
        backend.queue.heartbeat(claimed, LONG_LEASE_S)
    with pytest.raises(LeaseLostError):
        backend.queue.complete(claimed, {})


# Failures and the dead-letter state ------------------------------------------------------------


def test_a_retryable_failure_queues_the_job_again(backend):
    job_id = backend.queue.enqueue("preprocess", {})
    first = backend.queue.claim("preprocess", "w", LONG_LEASE_S)
    assert backend.queue.fail(first, "disk busy") is JobState.QUEUED
    job = backend.queue.get(job_id)
    assert (job.state, job.error, job.attempts) == (JobState.QUEUED, "disk busy", 1)
    again = backend.queue.claim("preprocess", "w", LONG_LEASE_S)
    assert (again.job_id, again.attempts) == (job_id, 2)


def test_a_permanent_failure_dead_letters_at_once(backend):
    job_id = backend.queue.enqueue("preprocess", {})
    claimed = backend.queue.claim("preprocess", "w", LONG_LEASE_S)
    assert backend.queue.fail(claimed, "bad upload", retryable=False) is JobState.FAILED
    dead = backend.queue.get(job_id)
    assert (dead.state, dead.error, dead.attempts) == (JobState.FAILED, "bad upload", 1)
    assert backend.queue.claim("preprocess", "w", LONG_LEASE_S) is None


def test_failures_dead_letter_after_max_attempts_with_the_reason(backend):
    job_id = backend.queue.enqueue("preprocess", {}, max_attempts=3)
    states = [
        backend.queue.fail(backend.queue.claim("preprocess", "w", LONG_LEASE_S), "disk on fire")
        for _ in range(3)
    ]
    assert states == [JobState.QUEUED, JobState.QUEUED, JobState.FAILED]
    dead = backend.queue.get(job_id)
    assert (dead.state, dead.attempts) == (JobState.FAILED, 3)
    assert "disk on fire" in dead.error and "gave up after 3 attempts" in dead.error
    assert backend.queue.claim("preprocess", "w", LONG_LEASE_S) is None


def test_leases_that_keep_expiring_dead_letter_the_job(backend):
    pulled = backend.queue.enqueue("recon", {}, max_attempts=2)
    for worker in ("a", "b"):
        assert backend.queue.claim("recon", worker, SHORT_LEASE_S).job_id == pulled
        past_the_lease()
    assert backend.queue.claim("recon", "c", LONG_LEASE_S) is None
    dead = backend.queue.get(pulled)
    assert (dead.state, dead.attempts) == (JobState.FAILED, 2)
    assert "lease" in dead.error and "gave up after 2 attempts" in dead.error

    pushed = backend.queue.enqueue("train", {}, max_attempts=1)
    backend.queue.claim_job(pushed, "a", SHORT_LEASE_S)
    past_the_lease()
    with pytest.raises(ConflictError):
        backend.queue.claim_job(pushed, "b", LONG_LEASE_S)
    dead = backend.queue.get(pushed)
    assert dead.state is JobState.FAILED and "lease" in dead.error


# Cancel and retry --------------------------------------------------------------------------------


def test_cancel_of_a_queued_job(backend):
    job_id = backend.queue.enqueue("recon", {})
    cancelled = backend.queue.cancel(job_id)
    assert cancelled.job_id == job_id and cancelled.state is JobState.CANCELLED
    assert backend.queue.get(job_id).state is JobState.CANCELLED
    assert backend.queue.claim("recon", "w", LONG_LEASE_S) is None


def test_cancel_of_a_running_job_stops_its_worker(backend):
    job_id = backend.queue.enqueue("recon", {})
    running = backend.queue.claim("recon", "w", LONG_LEASE_S)
    assert backend.queue.cancel(job_id).state is JobState.CANCELLED
    with pytest.raises(JobCancelledError):
        backend.queue.heartbeat(running, LONG_LEASE_S)
    with pytest.raises(JobCancelledError):
        backend.queue.complete(running, {"outputs": ["late"]})
    with pytest.raises(JobCancelledError):
        backend.queue.fail(running, "late")
    job = backend.queue.get(job_id)
    assert (job.state, job.result) == (JobState.CANCELLED, {})


def test_a_cancelled_stage_publishes_nothing(backend, greet_stage, tmp_path):
    job_id = backend.queue.enqueue(greet_stage.name, {})
    running = backend.queue.claim(greet_stage.name, "w", LONG_LEASE_S)
    heartbeat = Heartbeat(backend, running, LONG_LEASE_S)
    context = StageContext(backend, running, greet_stage, "w", tmp_path / "work", heartbeat)
    backend.queue.cancel(job_id)
    with pytest.raises(JobAborted) as aborted:
        context.publish(source_file(tmp_path, b"late"), context.output_key("greeting.txt"))
    assert isinstance(aborted.value.cause, JobCancelledError)
    assert backend.store.list() == []


def test_cancel_of_a_finished_job_is_a_conflict(backend):
    done = backend.queue.enqueue("recon", {})
    backend.queue.complete(backend.queue.claim("recon", "w", LONG_LEASE_S), {})
    cancelled = backend.queue.enqueue("recon", {})
    backend.queue.cancel(cancelled)
    for job_id in (done, cancelled):
        with pytest.raises(ConflictError) as conflict:
            backend.queue.cancel(job_id)
        assert conflict.value.exit_code == ExitCode.CONFLICT
    assert backend.queue.get(done).state is JobState.SUCCEEDED
    with pytest.raises(NotFoundError):
        backend.queue.cancel(UNKNOWN_JOB)


def test_retry_queues_failed_and_cancelled_jobs_with_fresh_attempts(backend):
    failed = backend.queue.enqueue("preprocess", {}, max_attempts=2)
    for _ in range(2):
        backend.queue.fail(backend.queue.claim("preprocess", "w", LONG_LEASE_S), "flaky")
    cancelled = backend.queue.enqueue("preprocess", {})
    backend.queue.claim_job(cancelled, "w", LONG_LEASE_S)
    backend.queue.cancel(cancelled)
    for job_id in (failed, cancelled):
        again = backend.queue.retry(job_id)
        assert (again.job_id, again.state, again.attempts, again.error) == (
            job_id,
            JobState.QUEUED,
            0,
            None,
        )
    claimed = backend.queue.claim("preprocess", "w", LONG_LEASE_S)
    assert (claimed.job_id, claimed.attempts) == (failed, 1)
    assert backend.queue.fail(claimed, "flaky") is JobState.QUEUED  # a whole new set of attempts


def test_retry_of_a_queued_running_or_succeeded_job_is_a_conflict(backend):
    queued, running, done = (backend.queue.enqueue("recon", {}) for _ in range(3))
    backend.queue.claim_job(running, "w", LONG_LEASE_S)
    backend.queue.complete(backend.queue.claim_job(done, "w", LONG_LEASE_S), {})
    for job_id in (queued, running, done):
        with pytest.raises(ConflictError):
            backend.queue.retry(job_id)
    assert [backend.queue.get(j).state for j in (queued, running, done)] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    with pytest.raises(NotFoundError):
        backend.queue.retry(UNKNOWN_JOB)


# Chains, logs, claims and records ----------------------------------------------------------------


def test_children_are_the_direct_children_oldest_first(backend):
    parent = backend.queue.enqueue("preprocess", {})
    first = backend.queue.enqueue("recon", {}, parent_id=parent)
    backend.queue.enqueue("preprocess", {})  # unrelated
    second = backend.queue.enqueue("train", {}, parent_id=parent)
    grandchild = backend.queue.enqueue("recon", {}, parent_id=first)
    assert [job.job_id for job in backend.queue.children(parent)] == [first, second]
    assert [job.parent_id for job in backend.queue.children(parent)] == [parent, parent]
    assert [job.job_id for job in backend.queue.children(first)] == [grandchild]
    assert backend.queue.children(grandchild) == []


def test_cancelling_a_chain_cancels_the_running_parent_and_its_queued_child(backend):
    parent_id = backend.queue.enqueue("preprocess", {})
    parent = backend.queue.claim("preprocess", "w", LONG_LEASE_S)
    # The stage queued its successor just before the cancel landed.
    child_id = backend.queue.enqueue(
        "recon", {}, parent_id=parent_id, idempotency_key=f"{parent_id}/recon"
    )
    record = jobs.cancel(backend, parent_id)
    assert (record["job_id"], record["state"]) == (parent_id, "cancelled")
    assert backend.queue.get(child_id).state is JobState.CANCELLED
    with pytest.raises(JobCancelledError):
        backend.queue.heartbeat(parent, LONG_LEASE_S)
    assert backend.queue.claim("recon", "w", LONG_LEASE_S) is None


def test_logs_keep_lines_in_order_with_attempt_and_worker(backend):
    job_id = backend.queue.enqueue("recon", {})
    backend.queue.append_log(job_id, "queued by the test")
    backend.queue.claim("recon", "w1", LONG_LEASE_S)
    backend.queue.append_log(job_id, "attempt started", worker_id="w1")
    entries = backend.queue.logs(job_id)
    assert [(e.job_id, e.attempt, e.worker_id, e.message) for e in entries] == [
        (job_id, 0, None, "queued by the test"),
        (job_id, 1, "w1", "attempt started"),
    ]
    assert entries[0].at <= entries[1].at <= time.time()
    assert backend.queue.logs(backend.queue.enqueue("recon", {})) == []
    with pytest.raises(NotFoundError):
        backend.queue.logs(UNKNOWN_JOB)


def test_claims_record_every_delivery(backend):
    job_id = backend.queue.enqueue("recon", {})
    other = backend.queue.enqueue("train", {})
    backend.queue.claim("recon", "a", SHORT_LEASE_S)
    past_the_lease()
    backend.queue.claim("recon", "b", LONG_LEASE_S)
    backend.queue.claim_job(other, "c", LONG_LEASE_S)
    deliveries = [(c.job_id, c.attempt, c.worker_id) for c in backend.queue.claims(job_id)]
    assert deliveries == [(job_id, 1, "a"), (job_id, 2, "b")]
    assert {(c.job_id, c.worker_id) for c in backend.queue.claims()} == {
        (job_id, "a"),
        (job_id, "b"),
        (other, "c"),
    }
    assert backend.queue.claims(backend.queue.enqueue("recon", {})) == []


def documented_record_fields() -> list[str]:
    """The field names of the table under "## Record fields" in docs/jobs-schema.md."""
    text = (REPOSITORY / "docs" / "jobs-schema.md").read_text()
    table = text.split("## Record fields", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE)


def test_list_filters_by_state_and_stage_into_documented_records(backend):
    preprocess = backend.queue.enqueue("preprocess", {"scan_id": "scan-0123456789abcdef"})
    recon = backend.queue.enqueue(
        "recon", {"scan_id": "scan-0123456789abcdef", "method": "grappa", "options": {"r": 2}}
    )
    cancelled = backend.queue.enqueue("recon", {})
    backend.queue.cancel(cancelled)
    backend.queue.claim("preprocess", "w", LONG_LEASE_S)

    def ids(**filters: Any) -> list[str]:
        return [job.job_id for job in backend.queue.list(**filters)]

    assert ids() == [preprocess, recon, cancelled]
    assert ids(stage="recon") == [recon, cancelled]
    assert ids(state="running") == [preprocess]
    assert ids(state=JobState.CANCELLED) == [cancelled]
    assert ids(state="queued", stage="recon") == [recon]
    assert ids(state="succeeded") == [] and ids(stage="train") == []

    records = [jobs.job_record(job) for job in backend.queue.list(stage="recon")]
    assert list(jobs.RECORD_FIELDS) == documented_record_fields()
    for record in records:
        assert list(record) == list(jobs.RECORD_FIELDS)
    assert records[0]["scan_id"] == "scan-0123456789abcdef"
    assert (records[0]["method"], records[0]["options"]) == ("grappa", {"r": 2})
    assert records[1]["state"] == "cancelled"
    assert all(record["created_at"].endswith("Z") for record in records)


# Workers on the backend --------------------------------------------------------------------------


def test_a_worker_pulling_by_stage_skips_other_stages(backend, greet_stage):
    recon = backend.queue.enqueue("recon", {})
    greet = backend.queue.enqueue(greet_stage.name, {})
    done = run_worker(
        backend, stages=[greet_stage.name], once=True, lease_seconds=5, poll_interval=0.05
    )
    assert done == 1
    job = backend.queue.get(greet)
    assert job.state is JobState.SUCCEEDED
    key = keys.output(keys.RECONSTRUCTED, greet, "greeting.txt")
    assert job.result["outputs"] == [key]
    assert backend.store.head(key).metadata == {"stage": "greet"}
    untouched = backend.queue.get(recon)
    assert (untouched.state, untouched.attempts) == (JobState.QUEUED, 0)
    assert backend.queue.claims(recon) == []


def test_worker_run_with_job_runs_exactly_that_job(backend, greet_stage, cli_options, tmp_path):
    first = backend.queue.enqueue(greet_stage.name, {})
    chosen = backend.queue.enqueue(greet_stage.name, {})
    outcome = invoke("worker", "run", "--job", chosen, *cli_options, "--json")
    assert outcome.exit_code == 0, outcome.stderr
    record = outcome.json()
    assert list(record) == list(jobs.RECORD_FIELDS)
    assert (record["job_id"], record["state"], record["attempts"]) == (chosen, "succeeded", 1)
    assert backend.queue.get(chosen).state is JobState.SUCCEEDED
    assert backend.queue.get(first).state is JobState.QUEUED
    backend.store.get_file(record["outputs"][0], tmp_path / "greeting.txt")
    assert (tmp_path / "greeting.txt").read_text() == f"hello from {chosen}"

    again = invoke("worker", "run", "--job", chosen, *cli_options, "--json")
    assert again.exit_code == ExitCode.CONFLICT, again.stderr
    assert again.json()["error"]["code"] == ExitCode.CONFLICT
    unknown = invoke("worker", "run", "--job", UNKNOWN_JOB, *cli_options, "--json")
    assert unknown.exit_code == ExitCode.NOT_FOUND, unknown.stderr


def test_worker_processes_started_by_the_backend_work_its_queue(backend):
    # A preprocess job of a scan never uploaded: its one attempt fails (retryable, none left).
    job_id = backend.queue.enqueue(
        "preprocess", {"scan_id": "scan-0123456789abcdef"}, max_attempts=1
    )
    processes = backend.start_worker_processes(
        1, ["--stage=preprocess", "--poll-interval=0.05", "--lease-seconds=5"]
    )
    try:
        deadline = time.monotonic() + 60
        while not backend.queue.get(job_id).state.is_final and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        processes.stop()
    assert processes.wait() == 1
    job = backend.queue.get(job_id)
    assert job.state is JobState.FAILED and job.attempts == 1
    assert [claim.worker_id for claim in backend.queue.claims(job_id)] == [job.worker_id]
