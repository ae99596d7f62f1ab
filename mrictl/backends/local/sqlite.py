"""One SQLite database file shared by processes: WAL, a busy timeout and explicit transactions.

Each thread of each process has its own connection (heartbeat threads and worker processes never
share one), kept open because closing the last connection checkpoints the WAL with an fsync.
`BEGIN IMMEDIATE` takes the write lock before reading, so two processes never act on the same
stale read.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mrictl.backends.base import BackendError

BUSY_TIMEOUT_S = 30.0


class Database:
    """A path to a SQLite file and the way to talk to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        try:
            self._connection().execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as error:
            raise BackendError(f"{path.name}: cannot open the job database ({error})") from error

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened anew after a fork."""
        cached = getattr(self._local, "connection", None)
        if cached is not None and self._local.pid == os.getpid():
            return cached
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True
        )
        connection.row_factory = sqlite3.Row
        connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        connection.execute("PRAGMA synchronous=NORMAL")
        self._local.connection = connection
        self._local.pid = os.getpid()
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its first statement."""
        try:
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise BackendError(f"{self.path.name}: database error ({error})") from error
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise BackendError(f"{self.path.name}: database error ({error})") from error
            raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (WAL readers never block writers)."""
        try:
            yield self._connection()
        except sqlite3.Error as error:
            raise BackendError(f"{self.path.name}: database error ({error})") from error

    def ensure_columns(self, table: str, migrations: tuple[str, ...]) -> None:
        """Apply `ALTER TABLE table ADD COLUMN` statements whose column is still missing."""
        with self.transaction() as connection:
            present = {row["name"] for row in connection.execute(f"PRAGMA table_info({table})")}
            for statement in migrations:
                column = statement.split("ADD COLUMN", 1)[1].split()[0]
                if column not in present:
                    connection.execute(statement)

    def ensure_schema(self, statements: str) -> None:
        """Create tables and indexes (idempotent `CREATE ... IF NOT EXISTS` statements)."""
        with self.transaction() as connection:
            for statement in statements.split(";"):
                if statement.strip():
                    connection.execute(statement)
