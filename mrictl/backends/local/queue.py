"""The local job queue: job records, leases, claims and logs in one SQLite database.

Claims run under `BEGIN IMMEDIATE`, so two worker processes never take the same job. A lease is
a deadline plus a random token (like an SQS receipt handle): heartbeats, completion and failure
must present the token, so a worker whose lease expired cannot overwrite its successor's work.
Jobs are pulled by stage (`claim`) or pushed by id (`claim_job`), as the contract in
mrictl.backends.base describes.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Mapping
from typing import Any

from mrictl.backends.base import (
    DEFAULT_MAX_ATTEMPTS,
    Claim,
    ConflictError,
    Job,
    JobCancelledError,
    JobState,
    LeaseLostError,
    LogEntry,
    NotFoundError,
    new_job_id,
)
from mrictl.backends.local.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    stage TEXT NOT NULL,
    state TEXT NOT NULL,
    payload TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    parent_id TEXT,
    idempotency_key TEXT UNIQUE,
    worker_id TEXT,
    lease_token TEXT,
    lease_expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_stage_state ON jobs (stage, state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_parent ON jobs (parent_id, seq);
CREATE TABLE IF NOT EXISTS claims (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    claimed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_by_job ON claims (job_id);
CREATE TABLE IF NOT EXISTS job_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_by_job ON job_logs (job_id, seq)
"""


def job_from_row(row: sqlite3.Row, *, with_lease: bool = False) -> Job:
    return Job(
        job_id=row["job_id"],
        stage=row["stage"],
        state=JobState(row["state"]),
        payload=json.loads(row["payload"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        result=json.loads(row["result"]),
        error=row["error"],
        parent_id=row["parent_id"],
        worker_id=row["worker_id"],
        lease_token=row["lease_token"] if with_lease else None,
        lease_expires_at=row["lease_expires_at"],
    )


class LocalJobQueue:
    """See the module docstring. Expired leases are noticed by the next claim of their stage."""

    def __init__(self, db: Database, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self.db = db
        self.max_attempts = max_attempts
        db.ensure_schema(SCHEMA)

    def enqueue(
        self,
        stage: str,
        payload: Mapping[str, Any],
        *,
        parent_id: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        now = time.time()
        job_id = new_job_id()
        with self.db.transaction() as connection:
            if idempotency_key is not None:
                row = connection.execute(
                    "SELECT job_id FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    return str(row["job_id"])
            connection.execute(
                "INSERT INTO jobs (job_id, stage, state, payload, max_attempts, parent_id, "
                "idempotency_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    stage,
                    JobState.QUEUED.value,
                    json.dumps(dict(payload), sort_keys=True),
                    max_attempts or self.max_attempts,
                    parent_id,
                    idempotency_key,
                    now,
                    now,
                ),
            )
        return job_id

    def claim(self, stage: str, worker_id: str, lease_seconds: float) -> Job | None:
        now = time.time()
        with self.db.transaction() as connection:
            self._expire_leases(connection, now, stage=stage)
            row = connection.execute(
                "SELECT job_id FROM jobs WHERE stage = ? AND state = ? ORDER BY seq LIMIT 1",
                (stage, JobState.QUEUED.value),
            ).fetchone()
            if row is None:
                return None
            return self._lease(connection, row["job_id"], worker_id, lease_seconds, now)

    def claim_job(self, job_id: str, worker_id: str, lease_seconds: float) -> Job:
        now = time.time()
        with self.db.transaction() as connection:
            self._expire_leases(connection, now, job_id=job_id)
            row = self._row(connection, job_id)
            state = JobState(row["state"])
            if state is JobState.QUEUED:
                return self._lease(connection, job_id, worker_id, lease_seconds, now)
        # Raised after the commit: a lease that expired on its last attempt stays dead-lettered.
        if state is JobState.RUNNING:
            raise ConflictError(f"{job_id} is running on {row['worker_id']} (its lease is live)")
        detail = f": {row['error']}" if row["error"] else ""
        raise ConflictError(f"{job_id} already {state.value}{detail}")

    def _lease(
        self,
        connection: sqlite3.Connection,
        job_id: str,
        worker_id: str,
        lease_seconds: float,
        now: float,
    ) -> Job:
        """Lease a queued job to `worker_id` with a fresh token; one more attempt, one claim."""
        token = uuid.uuid4().hex
        connection.execute(
            "UPDATE jobs SET state = ?, attempts = attempts + 1, worker_id = ?, "
            "lease_token = ?, lease_expires_at = ?, updated_at = ? WHERE job_id = ?",
            (JobState.RUNNING.value, worker_id, token, now + lease_seconds, now, job_id),
        )
        claimed = self._row(connection, job_id)
        connection.execute(
            "INSERT INTO claims (job_id, attempt, worker_id, claimed_at) VALUES (?, ?, ?, ?)",
            (job_id, claimed["attempts"], worker_id, now),
        )
        return job_from_row(claimed, with_lease=True)

    def _expire_leases(
        self,
        connection: sqlite3.Connection,
        now: float,
        *,
        stage: str | None = None,
        job_id: str | None = None,
    ) -> None:
        """Running jobs (of a stage, or one job) whose worker stopped renewing: back to the
        queue, or dead-lettered when their attempts are used up."""
        column, value = ("stage", stage) if job_id is None else ("job_id", job_id)
        expired = connection.execute(
            "SELECT seq, job_id, attempts, max_attempts, worker_id FROM jobs "
            f"WHERE {column} = ? AND state = ? AND lease_expires_at < ?",
            (value, JobState.RUNNING.value, now),
        ).fetchall()
        for row in expired:
            reason = (
                f"worker {row['worker_id']} stopped renewing its lease (attempt {row['attempts']})"
            )
            exhausted = row["attempts"] >= row["max_attempts"]
            state = JobState.FAILED if exhausted else JobState.QUEUED
            error = f"{reason}; gave up after {row['attempts']} attempts" if exhausted else reason
            connection.execute(
                "UPDATE jobs SET state = ?, error = ?, lease_token = NULL, "
                "lease_expires_at = NULL, updated_at = ? WHERE seq = ?",
                (state.value, error, now, row["seq"]),
            )
            self._log(connection, row["job_id"], row["attempts"], None, f"lease expired: {error}")

    def heartbeat(self, job: Job, lease_seconds: float) -> Job:
        now = time.time()
        with self.db.transaction() as connection:
            self._check_lease(connection, job, now)
            connection.execute(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE job_id = ?",
                (now + lease_seconds, now, job.job_id),
            )
            row = connection.execute(
                "SELECT * FROM jobs WHERE job_id = ?", (job.job_id,)
            ).fetchone()
        return job_from_row(row, with_lease=True)

    def complete(self, job: Job, result: Mapping[str, Any]) -> None:
        now = time.time()
        with self.db.transaction() as connection:
            self._check_lease(connection, job, now)
            connection.execute(
                "UPDATE jobs SET state = ?, result = ?, error = NULL, lease_token = NULL, "
                "lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                (JobState.SUCCEEDED.value, json.dumps(dict(result)), now, job.job_id),
            )

    def fail(self, job: Job, reason: str, *, retryable: bool = True) -> JobState:
        now = time.time()
        with self.db.transaction() as connection:
            row = self._check_lease(connection, job, now)
            exhausted = row["attempts"] >= row["max_attempts"]
            state = JobState.QUEUED if retryable and not exhausted else JobState.FAILED
            error = reason
            if retryable and exhausted:
                error = f"{reason} (gave up after {row['attempts']} attempts)"
            connection.execute(
                "UPDATE jobs SET state = ?, error = ?, lease_token = NULL, "
                "lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                (state.value, error, now, job.job_id),
            )
        return state

    def _check_lease(self, connection: sqlite3.Connection, job: Job, now: float) -> sqlite3.Row:
        row = connection.execute("SELECT * FROM jobs WHERE job_id = ?", (job.job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"{job.job_id}: no such job")
        if row["state"] == JobState.CANCELLED.value:
            raise JobCancelledError(f"{job.job_id} was cancelled")
        if (
            job.lease_token is None
            or row["lease_token"] != job.lease_token
            or row["state"] != JobState.RUNNING.value
            or row["lease_expires_at"] < now
        ):
            raise LeaseLostError(f"{job.job_id}: the lease of attempt {job.attempts} was lost")
        return row

    def cancel(self, job_id: str) -> Job:
        now = time.time()
        with self.db.transaction() as connection:
            row = self._row(connection, job_id)
            state = JobState(row["state"])
            if state.is_final:
                raise ConflictError(f"{job_id} already {state.value}: nothing to cancel")
            connection.execute(
                "UPDATE jobs SET state = ?, error = ?, lease_token = NULL, "
                "lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                (JobState.CANCELLED.value, f"cancelled while {state.value}", now, job_id),
            )
            self._log(connection, job_id, row["attempts"], None, f"cancelled while {state.value}")
            return job_from_row(self._row(connection, job_id))

    def retry(self, job_id: str) -> Job:
        now = time.time()
        with self.db.transaction() as connection:
            row = self._row(connection, job_id)
            state = JobState(row["state"])
            if state not in (JobState.FAILED, JobState.CANCELLED):
                raise ConflictError(
                    f"{job_id} is {state.value}: only failed or cancelled jobs retry"
                )
            connection.execute(
                "UPDATE jobs SET state = ?, attempts = 0, error = NULL, worker_id = NULL, "
                "updated_at = ? WHERE job_id = ?",
                (JobState.QUEUED.value, now, job_id),
            )
            self._log(
                connection, job_id, row["attempts"], None, f"queued again after {state.value}"
            )
            return job_from_row(self._row(connection, job_id))

    def get(self, job_id: str) -> Job:
        with self.db.reading() as connection:
            return job_from_row(self._row(connection, job_id))

    def children(self, job_id: str) -> list[Job]:
        with self.db.reading() as connection:
            rows = connection.execute(
                "SELECT * FROM jobs WHERE parent_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        return [job_from_row(row) for row in rows]

    def list(self, *, state: JobState | str | None = None, stage: str | None = None) -> list[Job]:
        clauses, values = [], []
        if state is not None:
            clauses.append("state = ?")
            values.append(JobState(state).value)
        if stage is not None:
            clauses.append("stage = ?")
            values.append(stage)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.reading() as connection:
            rows = connection.execute(f"SELECT * FROM jobs {where} ORDER BY seq", values).fetchall()
        return [job_from_row(row) for row in rows]

    def append_log(self, job_id: str, message: str, *, worker_id: str | None = None) -> None:
        with self.db.transaction() as connection:
            row = self._row(connection, job_id)
            self._log(connection, job_id, row["attempts"], worker_id, message)

    def logs(self, job_id: str) -> list[LogEntry]:
        with self.db.reading() as connection:
            self._row(connection, job_id)
            rows = connection.execute(
                "SELECT * FROM job_logs WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        return [
            LogEntry(row["job_id"], row["at"], row["attempt"], row["worker_id"], row["message"])
            for row in rows
        ]

    def claims(self, job_id: str | None = None) -> list[Claim]:
        with self.db.reading() as connection:
            if job_id is None:
                rows = connection.execute("SELECT * FROM claims ORDER BY rowid").fetchall()
            else:
                rows = connection.execute(
                    "SELECT * FROM claims WHERE job_id = ? ORDER BY rowid", (job_id,)
                ).fetchall()
        return [Claim(r["job_id"], r["attempt"], r["worker_id"], r["claimed_at"]) for r in rows]

    @staticmethod
    def _row(connection: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = connection.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"{job_id}: no such job")
        return row

    @staticmethod
    def _log(
        connection: sqlite3.Connection,
        job_id: str,
        attempt: int,
        worker_id: str | None,
        message: str,
    ) -> None:
        connection.execute(
            "INSERT INTO job_logs (job_id, at, attempt, worker_id, message) VALUES (?, ?, ?, ?, ?)",
            (job_id, time.time(), attempt, worker_id, message),
        )
