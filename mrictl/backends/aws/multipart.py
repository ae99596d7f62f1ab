"""Resumable multipart uploads: a large file goes to S3 in parts, and the parts S3 holds are
recorded on local disk after each one, so an interrupted upload sends only the missing parts
when the same file is put under the same key again.

boto3's transfer manager cannot resume (it aborts its upload, or leaves one nobody can find),
so the parts are sent here: CreateMultipartUpload with the object's metadata and a SHA-256 per
part, UploadPart with each part's ChecksumSHA256 (S3 refuses a part whose bytes do not match),
CompleteMultipartUpload.

A resume record is named by a hash of bucket, key, file size, mtime and whole-file SHA-256, so
a changed file never resumes an old upload, and it holds no path (a file name may name a
patient). It is rewritten atomically after every part. On a later put, ListParts says what S3
still holds; a part is trusted only when its size and ETag (and its ChecksumSHA256, where S3
lists one) match the record, and the record's SHA-256 of that part matches the file's now. An
upload S3 no longer knows (aborted, expired by the buckets' lifecycle rule, or another key's)
starts over. A permanent error aborts the upload; anything else (a dropped connection, a
throttled call out of retries, Ctrl-C) keeps it and the record for the next put.

S3's own checksum of a completed multipart object is a checksum of the parts' checksums
("<base64>-<parts>"); where S3 returns it, it is checked against the parts sent. The whole
object's SHA-256 is the one in the object's metadata, which every read verifies.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mrictl.backends.aws.errors import error_code
from mrictl.partial_files import partial_name

MIN_PART_SIZE = 5 << 20  # S3's smallest part but the last (moto and seaweedfs enforce it too)
MAX_PARTS = 10_000  # S3's most parts of one upload
RECORD_VERSION = 1
# The buckets' lifecycle aborts incomplete uploads after 7 days (storage.yaml): an older
# record cannot resume anything.
RECORD_MAX_AGE_S = 7 * 24 * 3600.0
READ_CHUNK = 1 << 20
GONE_CODES = {"NoSuchUpload", "InvalidPart", "InvalidPartOrder"}  # the upload is not as recorded
# Errors that say nothing about the upload itself: keep it and resume later.
TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "BadDigest",  # bytes damaged in transit
    "XAmzContentSHA256Mismatch",
}

Progress = Callable[[int], None]  # bytes sent since the last call
Started = Callable[[int, int], None]  # (the file's size, bytes S3 already held from before)


class UploadGoneError(Exception):
    """The recorded upload is not in S3 as recorded: start a fresh one."""


class FileChangedError(Exception):
    """The file's bytes differ from those hashed before the first part went."""


class PermanentUploadError(Exception):
    """S3 refused the upload for good (the upload was aborted); `error` says why."""

    def __init__(self, error: ClientError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class LocalFile:
    """The file as hashed before its first byte went: whole and per part."""

    path: Path
    size: int
    mtime_ns: int
    sha256: bytes
    part_size: int
    part_sha256s: tuple[bytes, ...]

    def part_range(self, number: int) -> tuple[int, int]:
        """Offset and length of part `number` (from 1)."""
        offset = (number - 1) * self.part_size
        return offset, min(self.part_size, self.size - offset)


def part_size_for(size: int, preferred: int) -> int:
    """`preferred`, raised to whole MiB as far as S3's 10,000 parts need for `size` bytes."""
    least = -(-size // MAX_PARTS)
    if least <= preferred:
        return preferred
    return -(-least // (1 << 20)) * (1 << 20)


def hash_file(path: Path, part_size: int) -> LocalFile:
    """One read of the file: its SHA-256 and each part's (the parts' are checked again on the
    bytes sent, so a file changed in between is caught part by part)."""
    before = os.stat(path)
    whole = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    with path.open("rb") as stream:
        while True:
            part = hashlib.sha256()
            left = part_size
            while left and (chunk := stream.read(min(READ_CHUNK, left))):
                part.update(chunk)
                whole.update(chunk)
                left -= len(chunk)
                size += len(chunk)
            if left == part_size:
                break
            parts.append(part.digest())
            if left:
                break
    if not parts:  # an empty file is one empty part
        parts.append(hashlib.sha256(b"").digest())
    return LocalFile(path, size, before.st_mtime_ns, whole.digest(), part_size, tuple(parts))


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def composite_checksum(part_sha256s: list[bytes]) -> str:
    """S3's ChecksumSHA256 of a multipart object: the SHA-256 of the parts' SHA-256s, '-N'."""
    return f"{b64(hashlib.sha256(b''.join(part_sha256s)).digest())}-{len(part_sha256s)}"


def is_permanent(error: ClientError) -> bool:
    """A refusal that sending again would not change (4xx other than the transient ones)."""
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 400 <= status < 500 and error_code(error) not in TRANSIENT_CODES | GONE_CODES


class ResumeRecords:
    """The resume records of this machine's uploads, one JSON file each in `directory`
    (None: none are kept, so nothing resumes)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def path_for(self, bucket: str, key: str, local: LocalFile) -> Path | None:
        if self.directory is None:
            return None
        identity = "\0".join(
            (bucket, key, str(local.size), str(local.mtime_ns), local.sha256.hex())
        )
        return self.directory / f"{hashlib.sha256(identity.encode()).hexdigest()}.json"

    def load(self, path: Path | None) -> dict[str, Any] | None:
        """The record, or None (none, unreadable, or of another version: it is removed)."""
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if _well_formed(record):
                return record
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        self.delete(path)
        return None

    def save(self, path: Path | None, record: Mapping[str, Any]) -> None:
        """Write the record under a temporary name, then rename: a kill leaves the old one."""
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = partial_name(path)
        try:
            with temporary.open("w", encoding="utf-8") as stream:
                json.dump(record, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def delete(self, path: Path | None) -> None:
        if path is not None:
            path.unlink(missing_ok=True)

    def prune(self, *, now: float | None = None) -> None:
        """Remove records older than any upload they could resume."""
        if self.directory is None or not self.directory.is_dir():
            return
        limit = (now or time.time()) - RECORD_MAX_AGE_S
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()


def _well_formed(record: Any) -> bool:
    """Whether a loaded record has this version's shape (a damaged one is started over)."""
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        return False
    parts = record.get("parts")
    return (
        isinstance(record.get("upload_id"), str)
        and isinstance(parts, dict)
        and all(
            isinstance(part, dict)
            and isinstance(part.get("size"), int)
            and isinstance(part.get("etag"), str)
            and isinstance(part.get("checksum"), str)
            for part in parts.values()
        )
    )


class ResumableUpload:
    """One put of `local` under `bucket`/`key`, resuming the recorded upload if S3 holds it."""

    def __init__(
        self,
        s3: Any,
        records: ResumeRecords,
        bucket: str,
        key: str,
        local: LocalFile,
        metadata: Mapping[str, str],
    ) -> None:
        self.s3 = s3
        self.records = records
        self.bucket = bucket
        self.key = key
        self.local = local
        self.metadata = dict(metadata)
        self.record_path = records.path_for(bucket, key, local)

    def run(self, progress: Progress | None = None, started: Started | None = None) -> None:
        """Send what S3 does not hold yet and complete; a vanished upload starts over once."""
        self.records.prune()
        try:
            self._send(progress, started, resume=True)
        except UploadGoneError:
            self.records.delete(self.record_path)
            self._send(progress, started, resume=False)

    def _send(self, progress: Progress | None, started: Started | None, *, resume: bool) -> None:
        upload_id = ""
        try:
            record, held = self._resumed() if resume else (None, {})
            if record is None:
                record = self._create()
            upload_id = str(record["upload_id"])
            already = sum(part["size"] for part in held.values())
            if started is not None:
                started(self.local.size, already)
            if progress is not None and already:
                progress(already)
            parts = dict(held)
            with self.local.path.open("rb") as stream:
                for number in range(1, len(self.local.part_sha256s) + 1):
                    if number in parts:
                        continue
                    parts[number] = self._upload_part(upload_id, number, stream)
                    record["parts"][str(number)] = parts[number]
                    self.records.save(self.record_path, record)
                    if progress is not None:
                        progress(parts[number]["size"])
            self._complete(upload_id, parts)
        except FileChangedError:
            self._abort(upload_id)
            raise
        except ClientError as error:
            if error_code(error) in GONE_CODES:
                raise UploadGoneError from None
            if is_permanent(error):
                self._abort(upload_id)
                raise PermanentUploadError(error) from None
            raise
        self.records.delete(self.record_path)

    def _resumed(self) -> tuple[dict[str, Any] | None, dict[int, dict[str, Any]]]:
        """The record and the parts S3 holds as it says (by number); (None, {}) to start over."""
        record = self.records.load(self.record_path)
        if record is None:
            return None, {}
        wanted = (self.bucket, self.key, self.local.part_size, self.metadata)
        if tuple(record.get(name) for name in ("bucket", "key", "part_size", "metadata")) != wanted:
            # Another part size or other metadata (S3 took them when the upload began).
            self._abort(str(record.get("upload_id", "")))
            return None, {}
        try:
            listed = self._list_parts(str(record["upload_id"]))
        except ClientError as error:
            if error_code(error) in GONE_CODES:
                self.records.delete(self.record_path)
                return None, {}
            raise
        recorded = record.get("parts", {})
        held = {}
        for number, part in listed.items():
            mine = recorded.get(str(number))
            if mine is None or not 1 <= number <= len(self.local.part_sha256s):
                continue
            expected = b64(self.local.part_sha256s[number - 1])
            same = (
                part["Size"] == mine["size"] == self.local.part_range(number)[1]
                and part["ETag"] == mine["etag"]
                and mine["checksum"] == expected
                and part.get("ChecksumSHA256", expected) == expected
            )
            if same:
                held[number] = mine
        # Parts S3 holds that are not trusted are sent again (the same number replaces them).
        record["parts"] = {str(number): part for number, part in held.items()}
        return record, held

    def _list_parts(self, upload_id: str) -> dict[int, dict[str, Any]]:
        listed: dict[int, dict[str, Any]] = {}
        marker = 0
        while True:
            page = self.s3.list_parts(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id, PartNumberMarker=marker
            )
            if page.get("Key", self.key) != self.key:
                raise UploadGoneError  # another key's upload (S3 answers NoSuchUpload)
            for part in page.get("Parts", []):
                listed[int(part["PartNumber"])] = part
            if not page.get("IsTruncated"):
                return listed
            marker = int(page["NextPartNumberMarker"])

    def _create(self) -> dict[str, Any]:
        upload = self.s3.create_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            Metadata=self.metadata,
            ChecksumAlgorithm="SHA256",
        )
        record = {
            "version": RECORD_VERSION,
            "bucket": self.bucket,
            "key": self.key,
            "upload_id": upload["UploadId"],
            "part_size": self.local.part_size,
            "size": self.local.size,
            "metadata": self.metadata,
            "parts": {},
        }
        self.records.save(self.record_path, record)
        return record

    def _upload_part(self, upload_id: str, number: int, stream: Any) -> dict[str, Any]:
        offset, length = self.local.part_range(number)
        stream.seek(offset)
        body = stream.read(length)
        digest = hashlib.sha256(body).digest()
        if len(body) != length or digest != self.local.part_sha256s[number - 1]:
            raise FileChangedError
        checksum = b64(digest)
        response = self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
        )
        return {"size": length, "etag": response["ETag"], "checksum": checksum}

    def _complete(self, upload_id: str, parts: Mapping[int, Mapping[str, Any]]) -> None:
        numbers = sorted(parts)
        response = self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [
                    {
                        "PartNumber": number,
                        "ETag": parts[number]["etag"],
                        "ChecksumSHA256": parts[number]["checksum"],
                    }
                    for number in numbers
                ]
            },
        )
        returned = response.get("ChecksumSHA256")
        if returned and "-" in returned:
            expected = composite_checksum(list(self.local.part_sha256s))
            if returned != expected:  # S3 assembled other bytes than the file's: not kept
                with contextlib.suppress(ClientError):
                    self.s3.delete_object(Bucket=self.bucket, Key=self.key)
                raise FileChangedError

    def _abort(self, upload_id: str) -> None:
        """Forget the upload and ask S3 to drop its parts (the lifecycle rule does it later if
        this fails)."""
        self.records.delete(self.record_path)
        if upload_id:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
