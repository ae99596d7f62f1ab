"""The backend contract: an object store with checksums and a job queue with fenced leases.

Every backend (the embedded `local` one: a folder and SQLite; `aws`: S3, DynamoDB, SQS, Batch)
implements these protocols, and nothing outside a backend's package knows which one runs. The
contract in words, with the job flow, is in docs/architecture.md; tests/mrictl/backends/
test_contract.py holds every backend to it.

- Objects are addressed by keys from `mrictl.keys` (no patient data can reach one), written
  whole or not at all, with a SHA-256 recorded at put and verified on every read.
- Jobs are pulled by stage (a worker loop) or pushed by id (a Batch container started with its
  job id). A claim holds a lease: a deadline plus a token. The job record is the fence: a
  heartbeat, completion, failure or output write must present the current token, so a worker
  whose lease was taken over can do none of them. Delivery is at-least-once; stages are
  idempotent and publish their outputs last.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mrictl.errors import ExitCode, MrictlError

DEFAULT_MAX_ATTEMPTS = 3

_KEY_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_KEY = re.compile(rf"^{_KEY_PART}(/{_KEY_PART})*$")
# Object metadata: short lower-case names and printable values (S3 sends them as headers).
_META_NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_META_VALUE = re.compile(r"^[ -~]{0,256}$")
MAX_METADATA = 16


def new_job_id() -> str:
    """`job-` + 16 hex digits: random, so it says nothing about the scan or the patient."""
    return f"job-{uuid.uuid4().hex[:16]}"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the dead-letter state: attempts exhausted or input refused; reason kept
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class BackendError(MrictlError):
    """The store or queue is unreachable, misconfigured or holds corrupt data."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.BACKEND)


class NotFoundError(MrictlError):
    """No such job or object."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NOT_FOUND)


class ConflictError(MrictlError):
    """The request does not fit the job's state (cancel a finished job, retry a queued one)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.CONFLICT)


class LeaseLostError(ConflictError):
    """The worker no longer holds the job: its lease expired and another worker may have it."""


class JobCancelledError(LeaseLostError):
    """The job was cancelled while a worker held it; the worker must stop and publish nothing."""


class ChecksumMismatchError(MrictlError):
    """A stored object's bytes no longer match the SHA-256 recorded when it was put.

    Permanent for the job that read it (reading again gives the same bytes); uploading the scan
    again replaces the object.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.BACKEND)


class ObjectArchivedError(BackendError):
    """The object's bytes are in an archive storage class (S3 Glacier, Deep Archive): a restore
    was started, or is under way, and the object can be read in about `ready_in_hours` hours.

    Not a failure of the input, and not one that trying again soon can mend: a job that meets it
    is failed at once, and `retry` after the restore reads it. `next_step` is what the one-line
    message tells the reader to do then.
    """

    def __init__(
        self,
        key: str,
        *,
        ready_in_hours: float,
        started: bool,
        storage_class: str,
        next_step: str = "try again then",
    ) -> None:
        self.key = key
        self.ready_in_hours = ready_in_hours
        self.started = started
        self.storage_class = storage_class
        self.next_step = next_step
        if started:
            when = f"a restore was started; it should be readable within {ready_in_hours:g} h"
        else:
            when = (
                f"a restore is already under way; it should be readable within "
                f"{ready_in_hours:g} h of its start"
            )
        super().__init__(f"{key} is archived in {storage_class}: {when}; {next_step}")

    def but_then(self, next_step: str) -> ObjectArchivedError:
        """The same error, telling the reader a different next step."""
        return ObjectArchivedError(
            self.key,
            ready_in_hours=self.ready_in_hours,
            started=self.started,
            storage_class=self.storage_class,
            next_step=next_step,
        )


@runtime_checkable
class ArchivedObjects(Protocol):
    """What a store whose objects can move to an archive storage class (the aws backend's raw
    bucket: Glacier Deep Archive after N days) offers beyond the contract; stores without one
    (local) do not implement it."""

    def ensure_readable(self, key: str) -> None:
        """Return when the object's bytes can be read now; otherwise start its restore (or find
        one under way) and raise ObjectArchivedError. NotFoundError if absent."""
        ...


def validate_key(key: str) -> str:
    """Keys are relative, '/'-separated, with no hidden, empty or '..' component."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"invalid object key {key!r}")
    return key


def validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Object metadata the code chose (format, scan id, tool version): never free text from a
    file, since S3 shows it to anyone who may list the bucket."""
    clean = dict(metadata or {})
    if len(clean) > MAX_METADATA:
        raise ValueError(f"more than {MAX_METADATA} metadata entries")
    for name, value in clean.items():
        if not isinstance(name, str) or not _META_NAME.fullmatch(name):
            raise ValueError(f"invalid metadata name {name!r}")
        if not isinstance(value, str) or not _META_VALUE.fullmatch(value):
            raise ValueError(f"invalid metadata value for {name!r}")
    return clean


@dataclass(frozen=True)
class ObjectInfo:
    """A stored object: its key, size in bytes, SHA-256 (hex) and metadata."""

    key: str
    size: int
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """A job record; `lease_token` is set only on the copy a worker got from `claim`.

    Times are POSIX seconds (UTC). `payload` is what the stage needs (scan id, method, options),
    `result` what it produced (output keys, metrics, timings); neither ever holds identifiers.
    """

    job_id: str
    stage: str
    state: JobState
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    created_at: float
    updated_at: float
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    parent_id: str | None = None
    worker_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    batch_job_id: str | None = None  # the batch service's job that runs it (aws: AWS Batch)


@dataclass(frozen=True)
class Claim:
    """One delivery of a job to a worker (the audit trail of at-least-once delivery)."""

    job_id: str
    attempt: int
    worker_id: str
    claimed_at: float


@dataclass(frozen=True)
class LogEntry:
    """One line a worker wrote to a job's log."""

    job_id: str
    at: float
    attempt: int
    worker_id: str | None
    message: str


@runtime_checkable
class ObjectStore(Protocol):
    """Whole-object storage addressed by keys; an object appears complete or not at all."""

    def put_file(
        self, key: str, path: Path, *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Store the file's bytes under `key` atomically, recording their SHA-256 and metadata
        (`validate_metadata`); a put replaces what was there."""
        ...

    def get_file(self, key: str, dest: Path) -> ObjectInfo:
        """Copy the object to `dest` atomically, verifying its SHA-256; NotFoundError if absent,
        ChecksumMismatchError (and no `dest`) if the bytes do not match."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size, recorded SHA-256 and metadata without reading the bytes; NotFoundError."""
        ...

    def verify(self, key: str) -> bool:
        """Whether the stored bytes still match their recorded SHA-256 (reads them all)."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting an absent key is not an error (S3 semantics)."""
        ...


@runtime_checkable
class JobQueue(Protocol):
    """Job records with fenced leases, retries, a dead-letter state, children and per-job logs."""

    def enqueue(
        self,
        stage: str,
        payload: Mapping[str, Any],
        *,
        parent_id: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        """Queue a job and return its id; an `idempotency_key` seen before returns that job's id
        (the same key twice is one job, whoever sends it: the CLI, an S3 event, a retry)."""
        ...

    def claim(self, stage: str, worker_id: str, lease_seconds: float) -> Job | None:
        """Pull: take the oldest available job of `stage`, leased to `worker_id`; None if none.

        A running job whose lease expired is available again (its worker is presumed dead), or
        dead-lettered if it has used all its attempts.
        """
        ...

    def claim_job(self, job_id: str, worker_id: str, lease_seconds: float) -> Job:
        """Push: take this one job (a container started with its id). Queued, or running with
        an expired lease: leased to `worker_id`. Running under a live lease, or final:
        ConflictError; an expired lease on the last attempt: dead-lettered, then ConflictError.
        """
        ...

    def heartbeat(self, job: Job, lease_seconds: float) -> Job:
        """Extend the lease; LeaseLostError if lost, JobCancelledError if cancelled. Also the
        fence a worker checks before it writes an output."""
        ...

    def complete(self, job: Job, result: Mapping[str, Any]) -> None:
        """Mark the job succeeded with its result; LeaseLostError if the lease is no longer ours."""
        ...

    def fail(self, job: Job, reason: str, *, retryable: bool = True) -> JobState:
        """Record a failed attempt: QUEUED again (retryable, attempts left), or FAILED (the
        dead-letter state: permanent, or attempts used up; the reason kept). Fenced."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; ConflictError if it already finished. The worker
        holding it learns at its next heartbeat and publishes nothing more."""
        ...

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again with a fresh set of attempts."""
        ...

    def get(self, job_id: str) -> Job: ...

    def children(self, job_id: str) -> list[Job]:
        """Jobs queued with `parent_id=job_id`, oldest first (an index, not a scan of all)."""
        ...

    def list(self, *, state: JobState | str | None = None, stage: str | None = None) -> list[Job]:
        """Jobs, oldest first, optionally filtered."""
        ...

    def append_log(self, job_id: str, message: str, *, worker_id: str | None = None) -> None: ...

    def logs(self, job_id: str) -> list[LogEntry]: ...

    def claims(self, job_id: str | None = None) -> list[Claim]: ...


@runtime_checkable
class BatchDispatch(Protocol):
    """What a queue that hands jobs to a batch service (the aws backend: AWS Batch, for recon and
    train) can say beyond the record; queues without one (local) do not implement it."""

    def waiting_reason(self, job: Job) -> str | None:
        """Why a queued job has not started yet, as the batch service tells it (no capacity, no
        instance type that fits, a vCPU limit, its batch job over without running it); None
        when there is nothing to say."""
        ...

    def batch_logs(self, job: Job) -> list[LogEntry]:
        """The log lines the job's batch containers wrote (one entry per line, oldest first,
        `worker_id` naming the log stream); [] when there are none."""
        ...


@runtime_checkable
class PublishedOutputsHook(Protocol):
    """A backend that has something to do once a job's outputs are all in the store (the aws
    backend: refresh the results file share, so the hospital sees them); others do not
    implement it."""

    def after_outputs_published(self, prefix: str) -> str | None:
        """Act on the outputs under `prefix` (`reconstructed/<job_id>/`) and return a line for
        the job's log (None: nothing done). BackendError when it failed: the caller logs it and
        the job still succeeds (its outputs are stored)."""
        ...


class WorkerProcesses(Protocol):
    """Worker processes a backend started on this machine."""

    def stop(self) -> None:
        """Ask each to finish the job in hand and exit (SIGTERM)."""
        ...

    def wait(self) -> int | None:
        """Wait for all to exit; the jobs they finished (None if none could say)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Where scans, outputs and jobs live; `scratch_dir` is this machine's per-job work area."""

    name: str
    store: ObjectStore
    queue: JobQueue
    scratch_dir: Path

    def start_worker_processes(self, count: int, arguments: list[str]) -> WorkerProcesses:
        """Start `count` processes running `mrictl worker run ARGUMENTS --json` on this backend
        (the local backend's way to use several cores; in the cloud, ECS and Batch start them)."""
        ...
