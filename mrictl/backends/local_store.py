"""The local object store: a folder tree whose files are the objects, SHA-256s kept in SQLite.

A key maps to `root/<key>`, so people can browse outputs; an object is written under a hidden
temporary name in its own folder and renamed into place, so a reader sees it whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from mrictl.backends.base import (
    ChecksumMismatchError,
    NotFoundError,
    ObjectInfo,
    validate_key,
)
from mrictl.backends.local_sqlite import Database

CHUNK = 1 << 20
VERIFY_TRIES = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored_at REAL NOT NULL
)
"""


def temporary_name(final: Path) -> Path:
    """A hidden name beside `final` that no listing or watcher mistakes for the object."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.partial")


def copy_hashing(source: BinaryIO, target: BinaryIO) -> tuple[int, str]:
    """Copy a stream, returning size and SHA-256; fsync so that the rename after it is durable."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
    target.flush()
    os.fsync(target.fileno())
    return size, digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LocalObjectStore:
    """Objects as files under `root`; see the module docstring."""

    def __init__(self, root: Path, db: Database) -> None:
        self.root = root
        self.db = db
        self.root.mkdir(parents=True, exist_ok=True)
        db.ensure_schema(SCHEMA)

    def path_of(self, key: str) -> Path:
        """Where the object lives on disk (for people and for tests; code uses get_file)."""
        return self.root / validate_key(key)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        final = self.path_of(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_name(final)
        try:
            with path.open("rb") as source, temporary.open("xb") as target:
                size, sha256 = copy_hashing(source, target)
            os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)
        self._record(key, sha256, size)
        return ObjectInfo(key, size, sha256)

    def get_file(self, key: str, dest: Path) -> ObjectInfo:
        source_path = self.path_of(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A concurrent put of the same key can swap file and checksum between our two reads;
        # read again before calling the object corrupt.
        for _ in range(VERIFY_TRIES):
            temporary = temporary_name(dest)
            try:
                try:
                    with source_path.open("rb") as source, temporary.open("xb") as target:
                        size, sha256 = copy_hashing(source, target)
                except FileNotFoundError:
                    raise NotFoundError(f"{key}: no such object in the store") from None
                recorded = self._recorded(key)
                if recorded is None:
                    # Written but not yet recorded (a crash between rename and record).
                    self._record(key, sha256, size)
                    recorded = sha256
                if recorded == sha256:
                    os.replace(temporary, dest)
                    return ObjectInfo(key, size, sha256)
            finally:
                temporary.unlink(missing_ok=True)
            time.sleep(0.05)
        raise ChecksumMismatchError(f"{key}: stored bytes do not match their recorded SHA-256")

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        keys = []
        for folder, dirs, files in os.walk(start):
            dirs[:] = [name for name in dirs if not name.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                key = (Path(folder) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        path.unlink(missing_ok=True)
        with self.db.transaction() as connection:
            connection.execute("DELETE FROM objects WHERE key = ?", (key,))
        # Drop folders left empty (a job's output folder), never the areas themselves.
        folder = path.parent
        while folder != self.root and folder.parent != self.root:
            with contextlib.suppress(OSError):
                folder.rmdir()
            folder = folder.parent

    def sha256(self, key: str) -> str:
        recorded = self._recorded(key)
        if recorded is not None and self.exists(key):
            return recorded
        if not self.exists(key):
            raise NotFoundError(f"{key}: no such object in the store")
        path = self.path_of(key)
        sha256 = file_sha256(path)
        self._record(key, sha256, path.stat().st_size)
        return sha256

    def _record(self, key: str, sha256: str, size: int) -> None:
        with self.db.transaction() as connection:
            connection.execute(
                "INSERT INTO objects (key, sha256, size, stored_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
                "stored_at = excluded.stored_at",
                (key, sha256, size, time.time()),
            )

    def _recorded(self, key: str) -> str | None:
        with self.db.reading() as connection:
            row = connection.execute("SELECT sha256 FROM objects WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["sha256"])
