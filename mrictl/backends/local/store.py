"""The local object store: a folder tree whose files are the objects, SHA-256s kept in SQLite.

A key maps to `root/<key>`, so people can browse outputs; an object is written under a hidden
temporary name in its own folder and renamed into place, so a reader sees it whole or not at all
(and a killed writer's leftover is removed by the next put of that key). Metadata lives beside
the checksum in SQLite.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from mrictl.backends.base import (
    ChecksumMismatchError,
    NotFoundError,
    ObjectInfo,
    validate_key,
    validate_metadata,
)
from mrictl.backends.local.sqlite import Database
from mrictl.partial_files import partial_name, remove_stale_partials

CHUNK = 1 << 20
VERIFY_TRIES = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
)
"""
# Homes made before objects had metadata get the column.
MIGRATIONS = ("ALTER TABLE objects ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'",)


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
        db.ensure_columns("objects", MIGRATIONS)

    def path_of(self, key: str) -> Path:
        """Where the object lives on disk (for people and for tests; code uses get_file)."""
        return self.root / validate_key(key)

    def put_file(
        self, key: str, path: Path, *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        metadata = validate_metadata(metadata)
        final = self.path_of(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final)
        temporary = partial_name(final)
        try:
            with path.open("rb") as source, temporary.open("xb") as target:
                size, sha256 = copy_hashing(source, target)
            os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)
        self._record(key, sha256, size, metadata)
        return ObjectInfo(key, size, sha256, metadata)

    def get_file(self, key: str, dest: Path) -> ObjectInfo:
        source_path = self.path_of(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A concurrent put of the same key can swap file and checksum between our two reads;
        # read again before calling the object corrupt.
        for _ in range(VERIFY_TRIES):
            temporary = partial_name(dest)
            try:
                try:
                    with source_path.open("rb") as source, temporary.open("xb") as target:
                        size, sha256 = copy_hashing(source, target)
                except FileNotFoundError:
                    raise NotFoundError(f"{key}: no such object in the store") from None
                recorded = self._recorded(key)
                if recorded is None:
                    # Written but not yet recorded (a crash between rename and record).
                    self._record(key, sha256, size, {})
                    recorded = ObjectInfo(key, size, sha256)
                if recorded.sha256 == sha256:
                    os.replace(temporary, dest)
                    return ObjectInfo(key, size, sha256, recorded.metadata)
            finally:
                temporary.unlink(missing_ok=True)
            time.sleep(0.05)
        raise ChecksumMismatchError(
            f"{key}: stored bytes do not match their recorded SHA-256 (corrupt in the store; "
            "an upload of the same scan replaces it)"
        )

    def head(self, key: str) -> ObjectInfo:
        recorded = self._recorded(key)
        if recorded is not None and self.exists(key):
            return recorded
        if not self.exists(key):
            raise NotFoundError(f"{key}: no such object in the store")
        path = self.path_of(key)
        sha256 = file_sha256(path)
        self._record(key, sha256, path.stat().st_size, {})
        return ObjectInfo(key, path.stat().st_size, sha256)

    def verify(self, key: str) -> bool:
        recorded = self.head(key)
        try:
            return file_sha256(self.path_of(key)) == recorded.sha256
        except FileNotFoundError:
            return False

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

    def _record(self, key: str, sha256: str, size: int, metadata: Mapping[str, str]) -> None:
        with self.db.transaction() as connection:
            connection.execute(
                "INSERT INTO objects (key, sha256, size, stored_at, metadata) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
                "stored_at = excluded.stored_at, metadata = excluded.metadata",
                (key, sha256, size, time.time(), json.dumps(dict(metadata), sort_keys=True)),
            )

    def _recorded(self, key: str) -> ObjectInfo | None:
        with self.db.reading() as connection:
            row = connection.execute(
                "SELECT sha256, size, metadata FROM objects WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return ObjectInfo(key, int(row["size"]), str(row["sha256"]), json.loads(row["metadata"]))
