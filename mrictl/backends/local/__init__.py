"""The embedded local backend: objects in a folder tree and jobs in SQLite, all under one home.

Layout of `home`:

    objects/<key>                          every object, under its key (mrictl.keys)
    mrictl.sqlite3                         jobs, claims, job logs, object checksums (WAL)
    work/<job_id>-<attempt>-<token>/       a worker's scratch area for one attempt

Worker processes (`--workers N`) are children of the caller on the same home.
"""

from __future__ import annotations

from pathlib import Path

from mrictl.backends.base import DEFAULT_MAX_ATTEMPTS, BackendError
from mrictl.backends.local.queue import LocalJobQueue
from mrictl.backends.local.sqlite import Database
from mrictl.backends.local.store import LocalObjectStore
from mrictl.backends.processes import LocalWorkerProcesses

DATABASE_NAME = "mrictl.sqlite3"


class LocalBackend:
    """Store, queue and scratch space under `home`, safe to share between processes."""

    name = "local"

    def __init__(self, home: Path, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self.home = Path(home)
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            (self.home / "work").mkdir(exist_ok=True)
        except OSError as error:  # a file in the way, a read-only or missing mount
            raise BackendError(
                f"{self.home.name}: cannot be the local backend's home "
                f"({error.strerror or type(error).__name__})"
            ) from None
        self.db = Database(self.home / DATABASE_NAME)
        self.store = LocalObjectStore(self.home / "objects", self.db)
        self.queue = LocalJobQueue(self.db, max_attempts=max_attempts)
        self.scratch_dir = self.home / "work"
        self.scratch_dir.mkdir(exist_ok=True)

    def start_worker_processes(self, count: int, arguments: list[str]) -> LocalWorkerProcesses:
        environment = {"MRICTL_BACKEND": "local", "MRICTL_HOME": str(self.home)}
        return LocalWorkerProcesses(count, arguments, environment)

    def __repr__(self) -> str:
        return f"LocalBackend(home={self.home.name!r})"
