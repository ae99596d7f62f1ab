"""The S3 object store: keys map onto the raw, preprocessed and reconstructed buckets by area.

Each object carries the SHA-256 of its bytes in its user metadata (`sha256`), beside the
caller's metadata; every read hashes what arrived and compares. Puts go through boto3's
transfer manager (multipart above a threshold), so an object appears whole or not at all:
S3 shows a multipart object only when the upload completes. The bytes are also checked in
transit: a single-part put sends the whole object's SHA-256 (`ChecksumSHA256`), which S3
verifies before it stores anything; multipart puts send a SHA-256 per part (S3 computes no
full-object SHA-256 of a multipart upload). Encryption is the bucket's default (SSE-KMS with the
stack's key), so nothing here names a key.

Objects another writer put (the Storage Gateway's file share) have no recorded SHA-256: `head`
hashes their bytes, and reads can only report what arrived.

Raw uploads move to Glacier Deep Archive after the raw bucket's lifecycle days. A read of an
archived object (its head says GLACIER or DEEP_ARCHIVE without a finished restore, or an
Intelligent-Tiering archive access tier; or S3 answers `InvalidObjectState`) starts a restore
(`restore_tier`, a temporary copy kept `restore_days` days) and raises ObjectArchivedError
saying within how many hours it will be readable; a second read while it runs starts nothing
more (the head's `ongoing-request="true"`, or S3's `RestoreAlreadyInProgress`).

A file of `resumable_threshold` bytes or more (64 MiB) goes up in `part_size` parts (16 MiB)
that this store sends itself, recording each part on local disk, so a put of the same file
under the same key after an interruption sends only the missing parts (`multipart.py`).

With `local_copies` (`fsx.py`: an FSx for Lustre file system linked to the preprocessed
bucket, mounted here), a read takes the object's bytes from that copy when its size and SHA-256
match what the object's head records, and from S3 otherwise.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from mrictl.backends.aws.errors import aws_error, error_code
from mrictl.backends.aws.multipart import (
    FileChangedError,
    PermanentUploadError,
    ResumableUpload,
    ResumeRecords,
    Started,
    UploadGoneError,
    hash_file,
    part_size_for,
)
from mrictl.backends.aws.resources import AwsResources
from mrictl.backends.base import (
    BackendError,
    ChecksumMismatchError,
    NotFoundError,
    ObjectArchivedError,
    ObjectInfo,
    validate_key,
    validate_metadata,
)
from mrictl.partial_files import partial_name

CHUNK = 1 << 20
SHA256_NAME = "sha256"  # our user-metadata entry; the caller's names cannot collide with it
MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 64 << 20
RESUMABLE_THRESHOLD = 64 << 20  # files this large are sent in parts this store records
PART_SIZE = 16 << 20  # 4 parts of a 64 MiB scan: at most 16 MiB sent again after a cut
READ_TRIES = 3  # a put racing a get: read again before calling the object corrupt
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
ARCHIVED_CODE = "InvalidObjectState"  # GetObject of an archived object not restored
RESTORE_DAYS = 7  # how long S3 keeps the restored copy beside the archived object
# Hours until a restore's copy can be read, as AWS states them (upper bounds), per archive
# (storage class, or Intelligent-Tiering's archive access tier) and retrieval tier.
RESTORE_HOURS = {
    ("GLACIER", "Standard"): 5,
    ("GLACIER", "Bulk"): 12,
    ("DEEP_ARCHIVE", "Standard"): 12,
    ("DEEP_ARCHIVE", "Bulk"): 48,
    ("ARCHIVE_ACCESS", "Standard"): 5,
    ("ARCHIVE_ACCESS", "Bulk"): 12,
    ("DEEP_ARCHIVE_ACCESS", "Standard"): 12,
    ("DEEP_ARCHIVE_ACCESS", "Bulk"): 48,
}
RESTORE_TIERS = ("Standard", "Bulk")

Progress = Callable[[int], None]  # bytes transferred since the last call


class LocalCopies(Protocol):
    """A read strategy: serve an object from a local copy of its bucket (`fsx.py`)."""

    def copy_to(self, bucket: str, recorded: ObjectInfo, dest: Path) -> ObjectInfo | None:
        """Write the object's bytes to `dest` if a copy matches `recorded`; None if not."""
        ...


def default_transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK
    )


def file_digest(path: Path) -> tuple[int, bytes]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.digest()


def backend_error(what: str, error: Exception) -> BackendError:
    """An S3 failure as the contract's error, naming the operation and S3's code only."""
    return aws_error(what, error, service="S3")


class S3ObjectStore:
    """Objects in the stack's buckets; see the module docstring."""

    reports_progress = True  # put_file takes `progress` and `started` listeners

    def __init__(
        self,
        s3_client: Any,
        resources: AwsResources,
        *,
        transfer_config: Any = None,
        restore_tier: str = "Standard",
        restore_days: int = RESTORE_DAYS,
        resumable_threshold: int = RESUMABLE_THRESHOLD,
        part_size: int = PART_SIZE,
        resume_dir: Path | None = None,
        local_copies: LocalCopies | None = None,
    ) -> None:
        """`resume_dir` keeps the resume records (None: an interrupted upload starts over);
        `part_size` below S3's 5 MiB works only on servers that allow it."""
        if restore_tier not in RESTORE_TIERS:
            raise ValueError(f"restore tier {restore_tier!r}: choose from {RESTORE_TIERS}")
        if part_size < 1 or resumable_threshold < 0:
            raise ValueError("part size and resumable threshold must be positive")
        self.s3 = s3_client
        self.resources = resources
        self.transfer_config = transfer_config or default_transfer_config()
        self.restore_tier = restore_tier
        self.restore_days = restore_days
        self.resumable_threshold = resumable_threshold
        self.part_size = part_size
        self.resume_records = ResumeRecords(resume_dir)
        self.local_copies = local_copies

    def _where(self, key: str) -> tuple[str, str]:
        return self.resources.bucket_for(validate_key(key)), key

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        metadata: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        started: Started | None = None,
    ) -> ObjectInfo:
        """`started(size, already)` hears the file's size and the bytes an interrupted upload
        left in S3 (0 unless resumed) before the first byte goes; `progress(n)` each n bytes
        sent (the resumed bytes first)."""
        bucket, key = self._where(key)
        clean = validate_metadata(metadata)
        # The SHA-256 must be known before the first byte goes (S3 takes metadata with the
        # request that starts the upload), so the file is read twice: once here, once sent.
        before = os.stat(path)
        if before.st_size >= self.resumable_threshold:
            return self._put_resumable(bucket, key, path, clean, progress, started)
        size, digest = file_digest(path)
        if started is not None:
            started(size, 0)
        sha256 = digest.hex()
        extra: dict[str, Any] = {"Metadata": {**clean, SHA256_NAME: sha256}}
        if size < self.transfer_config.multipart_threshold:
            extra["ChecksumSHA256"] = base64.b64encode(digest).decode("ascii")
        else:
            extra["ChecksumAlgorithm"] = "SHA256"
        try:
            self.s3.upload_file(
                str(path),
                bucket,
                key,
                ExtraArgs=extra,
                Config=self.transfer_config,
                Callback=progress,
            )
        except (ClientError, BotoCoreError) as error:
            raise backend_error(f"{key}: put failed", error) from None
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            # Multipart parts are checked one by one, not against the SHA-256 read first.
            self.delete(key)
            raise BackendError(f"{key}: {path.name} changed while it was stored; nothing kept")
        return ObjectInfo(key, size, sha256, clean)

    def _put_resumable(
        self,
        bucket: str,
        key: str,
        path: Path,
        metadata: dict[str, str],
        progress: Progress | None,
        started: Started | None,
    ) -> ObjectInfo:
        local = hash_file(path, part_size_for(os.stat(path).st_size, self.part_size))
        sha256 = local.sha256.hex()
        upload = ResumableUpload(
            self.s3, self.resume_records, bucket, key, local, {**metadata, SHA256_NAME: sha256}
        )
        try:
            upload.run(progress, started)
        except FileChangedError:
            raise BackendError(
                f"{key}: {path.name} changed while it was stored; nothing kept"
            ) from None
        except UploadGoneError:  # twice in one put: S3 dropped the fresh upload too
            raise BackendError(
                f"{key}: put failed: S3 no longer holds the upload; put the same file again"
            ) from None
        except PermanentUploadError as refused:
            raise backend_error(f"{key}: put refused (upload aborted)", refused.error) from None
        except (ClientError, BotoCoreError) as error:
            raise backend_error(
                f"{key}: put interrupted (put the same file again to resume)", error
            ) from None
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (local.size, local.mtime_ns):
            self.delete(key)
            raise BackendError(f"{key}: {path.name} changed while it was stored; nothing kept")
        return ObjectInfo(key, local.size, sha256, metadata)

    def get_file(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        bucket, key = self._where(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(READ_TRIES):
            response = self._head_object(bucket, key)
            self._raise_if_archived(bucket, key, response)
            recorded, etag = self._info(key, response)
            if self.local_copies is not None and recorded.sha256:
                served = self.local_copies.copy_to(bucket, recorded, dest)
                if served is not None:
                    return served
            temporary = partial_name(dest)
            try:
                try:
                    self.s3.download_file(
                        bucket,
                        key,
                        str(temporary),
                        Config=self.transfer_config,
                        Callback=progress,
                    )
                except ClientError as error:
                    if error_code(error) in NOT_FOUND_CODES:
                        raise NotFoundError(f"{key}: no such object in the store") from None
                    if error_code(error) == ARCHIVED_CODE:  # archived since the head
                        raise self._archived(bucket, key, self._head_object(bucket, key)) from None
                    raise backend_error(f"{key}: get failed", error) from None
                except BotoCoreError as error:
                    raise backend_error(f"{key}: get failed", error) from None
                size, digest = file_digest(temporary)
                if recorded.sha256 in ("", digest.hex()):
                    os.replace(temporary, dest)
                    return ObjectInfo(key, size, digest.hex(), recorded.metadata)
            finally:
                temporary.unlink(missing_ok=True)
            if self._head(bucket, key)[1] == etag:
                break  # the same object as before: its bytes are what they are
        raise ChecksumMismatchError(
            f"{key}: stored bytes do not match their recorded SHA-256 (corrupt in the store; "
            "an upload of the same scan replaces it)"
        )

    def head(self, key: str) -> ObjectInfo:
        bucket, key = self._where(key)
        info, _ = self._head(bucket, key)
        if info.sha256:
            return info
        # Put by another writer: no SHA-256 recorded, so the bytes are hashed now.
        return ObjectInfo(key, info.size, self._stream_sha256(bucket, key), info.metadata)

    def verify(self, key: str) -> bool:
        bucket, key = self._where(key)
        recorded, _ = self._head(bucket, key)
        try:
            actual = self._stream_sha256(bucket, key)
        except NotFoundError:
            return False
        return not recorded.sha256 or actual == recorded.sha256

    def ensure_readable(self, key: str) -> None:
        """`ArchivedObjects.ensure_readable`: restore an archived object (see the module
        docstring)."""
        bucket, key = self._where(key)
        self._raise_if_archived(bucket, key, self._head_object(bucket, key))

    def exists(self, key: str) -> bool:
        bucket, key = self._where(key)
        try:
            self._head(bucket, key)
        except NotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        for bucket, areas in self.resources.buckets_for_prefix(prefix).items():
            paginator = self.s3.get_paginator("list_objects_v2")
            try:
                for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                    found.extend(
                        item["Key"]
                        for item in page.get("Contents", [])
                        if item["Key"].split("/", 1)[0] in areas
                    )
            except (ClientError, BotoCoreError) as error:
                raise backend_error(f"listing {prefix!r} failed", error) from None
        return sorted(found)

    def delete(self, key: str) -> None:
        bucket, key = self._where(key)
        try:
            self.s3.delete_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error_code(error) not in NOT_FOUND_CODES:
                raise backend_error(f"{key}: delete failed", error) from None
        except BotoCoreError as error:
            raise backend_error(f"{key}: delete failed", error) from None

    def _head(self, bucket: str, key: str) -> tuple[ObjectInfo, str]:
        """The recorded info ('' for a SHA-256 nobody recorded) and the ETag."""
        return self._info(key, self._head_object(bucket, key))

    def _head_object(self, bucket: str, key: str) -> dict[str, Any]:
        try:
            return dict(self.s3.head_object(Bucket=bucket, Key=key))
        except ClientError as error:
            if error_code(error) in NOT_FOUND_CODES:
                raise NotFoundError(f"{key}: no such object in the store") from None
            raise backend_error(f"{key}: head failed", error) from None
        except BotoCoreError as error:
            raise backend_error(f"{key}: head failed", error) from None

    @staticmethod
    def _info(key: str, response: Mapping[str, Any]) -> tuple[ObjectInfo, str]:
        metadata = dict(response.get("Metadata") or {})
        sha256 = metadata.pop(SHA256_NAME, "")
        info = ObjectInfo(key, int(response["ContentLength"]), sha256, metadata)
        return info, str(response.get("ETag", ""))

    def _stream_sha256(self, bucket: str, key: str) -> str:
        digest = hashlib.sha256()
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
            with contextlib.closing(body):
                for chunk in body.iter_chunks(CHUNK):
                    digest.update(chunk)
        except ClientError as error:
            if error_code(error) in NOT_FOUND_CODES:
                raise NotFoundError(f"{key}: no such object in the store") from None
            if error_code(error) == ARCHIVED_CODE:
                raise self._archived(bucket, key, self._head_object(bucket, key)) from None
            raise backend_error(f"{key}: read failed", error) from None
        except BotoCoreError as error:
            raise backend_error(f"{key}: read failed", error) from None
        return digest.hexdigest()

    def _raise_if_archived(self, bucket: str, key: str, response: Mapping[str, Any]) -> None:
        if _archive_of(response) is not None:
            raise self._archived(bucket, key, response)

    def _archived(self, bucket: str, key: str, response: Mapping[str, Any]) -> BackendError:
        """Start the restore of an archived object (unless one runs) and say when it is ready."""
        archive = _archive_of(response) or str(response.get("StorageClass") or "DEEP_ARCHIVE")
        hours = RESTORE_HOURS.get((archive, self.restore_tier), 48)
        label = (
            archive if archive in ("GLACIER", "DEEP_ARCHIVE") else f"Intelligent-Tiering {archive}"
        )

        def archived(started: bool) -> ObjectArchivedError:
            return ObjectArchivedError(
                key, ready_in_hours=hours, started=started, storage_class=label
            )

        if 'ongoing-request="true"' in str(response.get("Restore") or ""):
            return archived(started=False)
        request: dict[str, Any] = {"GlacierJobParameters": {"Tier": self.restore_tier}}
        if archive in ("GLACIER", "DEEP_ARCHIVE"):
            request["Days"] = self.restore_days  # Intelligent-Tiering takes none: no copy kept
        try:
            self.s3.restore_object(Bucket=bucket, Key=key, RestoreRequest=request)
        except ClientError as error:
            if error_code(error) == "RestoreAlreadyInProgress":
                return archived(started=False)
            return backend_error(f"{key}: archived, and its restore failed", error)
        except BotoCoreError as error:
            return backend_error(f"{key}: archived, and its restore failed", error)
        return archived(started=True)


def _archive_of(response: Mapping[str, Any]) -> str | None:
    """The archive an object's bytes are in while they cannot be read (a storage class, or an
    Intelligent-Tiering archive access tier); None when they can (a restore finished)."""
    status = response.get("ArchiveStatus")
    if status in ("ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS"):
        return str(status)
    storage_class = response.get("StorageClass")
    if storage_class in ("GLACIER", "DEEP_ARCHIVE"):
        if 'ongoing-request="false"' in str(response.get("Restore") or ""):
            return None
        return str(storage_class)
    return None
