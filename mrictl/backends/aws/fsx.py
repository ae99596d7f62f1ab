"""Reads of the preprocessed bucket from an FSx for Lustre file system linked to it.

fsx.yaml links the file system's /preprocessed to s3://<preprocessed bucket>/preprocessed/, so
with the file system mounted at <mount>, the object `preprocessed/<scan_id>.h5` is the file
<mount>/preprocessed/<scan_id>.h5: a GPU job reads it at Lustre's speed, without an S3 GET.

The file is what Lustre imported, possibly before the object was replaced, or damaged: it is
used only when its size and SHA-256 match what the object's head records (S3 answers the head,
never a GET), and copied to the destination under a temporary name as it is hashed. A missing,
different or unreadable copy, or one whose resolved path leaves the mount (a symbolic link),
means a read from S3, with one log line that names the key only (keys hold no identifiers).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from mrictl.backends.base import ObjectInfo, validate_key
from mrictl.partial_files import partial_name

log = logging.getLogger("mrictl.backends.aws.fsx")
CHUNK = 1 << 20


class FsxCopies:
    """The objects of `bucket` as files under `mount` (`LocalCopies` of the S3 store)."""

    def __init__(self, mount: Path, bucket: str) -> None:
        self.mount = Path(mount)
        self.bucket = bucket

    def path_of(self, key: str) -> Path | None:
        """<mount>/<key> resolved, or None when that leaves the mount."""
        root = self.mount.resolve()
        candidate = (root / validate_key(key)).resolve()
        return candidate if candidate.is_relative_to(root) and candidate != root else None

    def copy_to(self, bucket: str, recorded: ObjectInfo, dest: Path) -> ObjectInfo | None:
        """Copy the file of `recorded.key` to `dest` if its size and SHA-256 match `recorded`
        (a head's); None (and nothing at `dest`) otherwise, and S3 is read instead."""
        if bucket != self.bucket or not recorded.sha256:
            return None
        source = self.path_of(recorded.key)
        if source is None:
            log.warning("fsx: %s resolves outside the mount; reading it from S3", recorded.key)
            return None
        reason = self._copy_if_same(source, recorded, dest)
        if reason is None:
            return ObjectInfo(recorded.key, recorded.size, recorded.sha256, recorded.metadata)
        log.warning("fsx: %s %s; reading it from S3", recorded.key, reason)
        return None

    @staticmethod
    def _copy_if_same(source: Path, recorded: ObjectInfo, dest: Path) -> str | None:
        """Why the copy was not used, or None when `dest` now holds the matching bytes."""
        try:
            if not source.is_file():
                return "is not on the file system"
            if source.stat().st_size != recorded.size:
                return "has another size there"
            dest.parent.mkdir(parents=True, exist_ok=True)
            temporary = partial_name(dest)
            try:
                digest = hashlib.sha256()
                with source.open("rb") as reader, temporary.open("xb") as writer:
                    while chunk := reader.read(CHUNK):
                        digest.update(chunk)
                        writer.write(chunk)
                if digest.hexdigest() != recorded.sha256:
                    return "does not match its recorded SHA-256 there"
                os.replace(temporary, dest)
            finally:
                temporary.unlink(missing_ok=True)
        except OSError as error:
            return f"cannot be read there ({error.strerror or type(error).__name__})"
        return None
