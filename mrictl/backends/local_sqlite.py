"""One SQLite database file shared by processes: WAL, a busy timeout and explicit transactions.

Every operation opens its own short-lived connection, so that threads (heartbeats) and processes
(workers) never share one, and `BEGIN IMMEDIATE` takes the write lock before reading, so two
processes never act on the same stale read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mrictl.backends.base import BackendError

BUSY_TIMEOUT_S = 30.0


class Database:
    """A path to a SQLite file and the way to talk to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            connection = self._connect()
            try:
                connection.execute("PRAGMA journal_mode=WAL")
            finally:
                connection.close()
        except sqlite3.Error as error:
            raise BackendError(f"{path.name}: cannot open the job database ({error})") from error

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its first statement."""
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise BackendError(f"{self.path.name}: database error ({error})") from error
        finally:
            connection.close()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (WAL readers never block writers)."""
        connection = self._connect()
        try:
            yield connection
        except sqlite3.Error as error:
            raise BackendError(f"{self.path.name}: database error ({error})") from error
        finally:
            connection.close()

    def ensure_schema(self, statements: str) -> None:
        """Create tables and indexes (idempotent `CREATE ... IF NOT EXISTS` statements)."""
        with self.transaction() as connection:
            for statement in statements.split(";"):
                if statement.strip():
                    connection.execute(statement)
