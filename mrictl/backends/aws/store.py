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

Not yet here: resuming an interrupted upload of a large scan (a multipart upload is abandoned,
and the bucket's lifecycle rule aborts it after a week); a put starts again from the first byte.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mrictl.backends.aws.resources import AwsResources
from mrictl.backends.base import (
    BackendError,
    ChecksumMismatchError,
    NotFoundError,
    ObjectInfo,
    validate_key,
    validate_metadata,
)
from mrictl.partial_files import partial_name

CHUNK = 1 << 20
SHA256_NAME = "sha256"  # our user-metadata entry; the caller's names cannot collide with it
MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 64 << 20
READ_TRIES = 3  # a put racing a get: read again before calling the object corrupt
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}

Progress = Callable[[int], None]  # bytes transferred since the last call


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


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def backend_error(what: str, error: Exception) -> BackendError:
    """An S3 failure as the contract's error, naming the operation and S3's code only."""
    detail = error_code(error) if isinstance(error, ClientError) else type(error).__name__
    return BackendError(f"{what}: S3 error ({detail})")


class S3ObjectStore:
    """Objects in the stack's buckets; see the module docstring."""

    def __init__(
        self, s3_client: Any, resources: AwsResources, *, transfer_config: Any = None
    ) -> None:
        self.s3 = s3_client
        self.resources = resources
        self.transfer_config = transfer_config or default_transfer_config()

    def _where(self, key: str) -> tuple[str, str]:
        return self.resources.bucket_for(validate_key(key)), key

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        metadata: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        bucket, key = self._where(key)
        clean = validate_metadata(metadata)
        # The SHA-256 must be known before the first byte goes (S3 takes metadata with the
        # request that starts the upload), so the file is read twice: once here, once sent.
        before = os.stat(path)
        size, digest = file_digest(path)
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

    def get_file(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        bucket, key = self._where(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(READ_TRIES):
            recorded, etag = self._head(bucket, key)
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
        try:
            response = self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error_code(error) in NOT_FOUND_CODES:
                raise NotFoundError(f"{key}: no such object in the store") from None
            raise backend_error(f"{key}: head failed", error) from None
        except BotoCoreError as error:
            raise backend_error(f"{key}: head failed", error) from None
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
            raise backend_error(f"{key}: read failed", error) from None
        except BotoCoreError as error:
            raise backend_error(f"{key}: read failed", error) from None
        return digest.hexdigest()
