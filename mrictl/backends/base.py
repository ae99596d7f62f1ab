"""The backend interface: an object store with checksums and a job queue with leases.

Cloud-shaped so that the local backend (folder + SQLite) and a later AWS backend (S3, SQS,
DynamoDB/Batch) are interchangeable: objects are addressed by opaque, content-derived keys that
never carry patient data; a claimed job holds a lease (like an SQS visibility timeout) that the
worker extends by heartbeats; delivery is at-least-once, so every stage must be idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mrictl.errors import ExitCode, MrictlError

STAGES = ("preprocess", "recon")
DEFAULT_MAX_ATTEMPTS = 3

# Key areas of the object store (the first component of every key).
UPLOADS = "uploads"
PREPROCESSED = "preprocessed"
RECONSTRUCTED = "reconstructed"
AREAS = (UPLOADS, PREPROCESSED, RECONSTRUCTED)

_KEY_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_KEY = re.compile(rf"^{_KEY_PART}(/{_KEY_PART})*$")


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


class ChecksumMismatchError(BackendError):
    """A stored object's bytes no longer match the SHA-256 recorded when it was put."""


def validate_key(key: str) -> str:
    """Keys are relative, '/'-separated, with no hidden, empty or '..' component."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"invalid object key {key!r}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    """A stored object: its key, size in bytes and SHA-256 (hex)."""

    key: str
    size: int
    sha256: str


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

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Store the file's bytes under `key` atomically, recording their SHA-256."""
        ...

    def get_file(self, key: str, dest: Path) -> ObjectInfo:
        """Copy the object to `dest` atomically, verifying its SHA-256; NotFoundError if absent."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting an absent key is not an error (S3 semantics)."""
        ...

    def sha256(self, key: str) -> str:
        """The recorded SHA-256 (hex) of the object; NotFoundError if absent."""
        ...


@runtime_checkable
class JobQueue(Protocol):
    """Jobs per stage with leases, retries, a dead-letter state, records and per-job logs."""

    def enqueue(
        self,
        stage: str,
        payload: Mapping[str, Any],
        *,
        parent_id: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        """Queue a job and return its id; an `idempotency_key` seen before returns that job's id."""
        ...

    def claim(self, stage: str, worker_id: str, lease_seconds: float) -> Job | None:
        """Take the oldest available job of `stage`, leased to `worker_id`; None if there is none.

        A running job whose lease expired is available again (its worker is presumed dead), or
        dead-lettered if it has used all its attempts.
        """
        ...

    def heartbeat(self, job: Job, lease_seconds: float) -> Job:
        """Extend the lease; LeaseLostError if lost, JobCancelledError if cancelled."""
        ...

    def complete(self, job: Job, result: Mapping[str, Any]) -> None:
        """Mark the job succeeded with its result; LeaseLostError if the lease is no longer ours."""
        ...

    def fail(self, job: Job, reason: str, *, retryable: bool = True) -> JobState:
        """Record a failed attempt: QUEUED again, or FAILED (dead-letter, reason kept)."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; ConflictError if it already finished."""
        ...

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again with a fresh set of attempts."""
        ...

    def get(self, job_id: str) -> Job: ...

    def list(self, *, state: JobState | str | None = None, stage: str | None = None) -> list[Job]:
        """Jobs, oldest first, optionally filtered."""
        ...

    def append_log(self, job_id: str, message: str, *, worker_id: str | None = None) -> None: ...

    def logs(self, job_id: str) -> list[LogEntry]: ...

    def claims(self, job_id: str | None = None) -> list[Claim]: ...


@runtime_checkable
class Backend(Protocol):
    """Where scans, outputs and jobs live; `scratch_dir` is this machine's per-job work area."""

    name: str
    store: ObjectStore
    queue: JobQueue
    scratch_dir: Path
