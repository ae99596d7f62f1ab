"""A large scan's upload cut off after some parts, put again: only the missing parts go (counted
through botocore's events as the client sends them), the object reads back verified against
its SHA-256, and the resume record is gone. A changed file, an aborted upload or another key's
upload id starts over; a file changed mid-upload leaves nothing. On the moto server and on
seaweedfs (a real S3 server that checks each part's ChecksumSHA256 and keeps upload ids per
key); both refuse parts below S3's 5 MiB but the last, so the parts here are 5 MiB.

Then `mrictl upload --to s3` of a package above the threshold (the settings
MRICTL_AWS_RESUMABLE_UPLOAD_THRESHOLD and MRICTL_AWS_UPLOAD_PART_SIZE), and of one an earlier
upload left half sent: it says where it resumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mrictl import keys
from mrictl.backends import open_backend
from mrictl.backends.aws import AwsBackend
from mrictl.backends.aws.multipart import MIN_PART_SIZE
from mrictl.backends.aws.resources import AwsResources
from mrictl.backends.aws.store import S3ObjectStore
from mrictl.backends.base import BackendError
from mrictl.backends.local import LocalBackend
from mrictl.config import load_settings
from mrictl.pipeline.package import MANIFEST_NAME, write_package
from mrictl.pipeline.upload import STAGING_FOLDER, SendListener, package_scan, store_scan
from raki.io.fastmri import write_fastmri
from raki.phantom import simulate_scan
from tests.mrictl.backends.conftest import SessionMoto, make_aws
from tests.mrictl.cli_helpers import invoke
from tests.mrictl.jobs_helpers import write_tiny_scan
from tests.servers import client, reset_moto, seaweedfs_server

PART = MIN_PART_SIZE
SIZE = 3 * PART + 1234  # four parts, the last short
KEY = keys.upload("scan-0123456789abcdef")
METADATA = {"format": "package"}


class Interrupted(Exception):
    """What a cut connection or Ctrl-C is to the uploader: it stops between parts."""


@pytest.fixture(scope="module")
def seaweedfs_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as (url, access, secret):
        yield client("s3", url, access, secret)


@pytest.fixture(params=["moto", "seaweedfs"])
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def store_on(s3: Any, tmp_path: Path) -> S3ObjectStore:
    """A store on fresh buckets of a server: resumable from one part, 5 MiB parts."""
    tag = uuid.uuid4().hex[:8]
    buckets = {role: f"resume-{tag}-{role}" for role in ("raw", "preprocessed", "reconstructed")}
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
    resources = AwsResources(
        job_table="unused",
        raw_bucket=buckets["raw"],
        preprocessed_bucket=buckets["preprocessed"],
        reconstructed_bucket=buckets["reconstructed"],
    )
    return S3ObjectStore(
        s3, resources, resumable_threshold=PART, part_size=PART, resume_dir=tmp_path / "resume"
    )


@pytest.fixture
def store(server: str, request: pytest.FixtureRequest, tmp_path: Path) -> S3ObjectStore:
    if server == "moto":
        url = SessionMoto.endpoint()
        reset_moto(url)
        return store_on(client("s3", url), tmp_path)
    return store_on(request.getfixturevalue("seaweedfs_s3"), tmp_path)


def scan_file(path: Path, seed: int = 0, size: int = SIZE) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


@contextlib.contextmanager
def parts_sent(s3: Any) -> Iterator[list[int]]:
    """The part numbers of every UploadPart the client sends while the block runs."""
    numbers: list[int] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        numbers.append(int(params["query_string"]["partNumber"]))

    handler_id = f"count-parts-{uuid.uuid4().hex}"
    s3.meta.events.register("before-call.s3.UploadPart", count, unique_id=handler_id)
    try:
        yield numbers
    finally:
        s3.meta.events.unregister("before-call.s3.UploadPart", unique_id=handler_id)


def stop_after(parts: int) -> Any:
    """A progress listener that cuts the upload once `parts` parts have gone."""
    sent = [0]

    def progress(count: int) -> None:
        sent[0] += count
        if sent[0] >= parts * PART:
            raise Interrupted

    return progress


def records(store: S3ObjectStore) -> list[dict[str, Any]]:
    folder = store.resume_records.directory
    assert folder is not None
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def incomplete_uploads(store: S3ObjectStore) -> list[str]:
    listed = store.s3.list_multipart_uploads(Bucket=store.resources.raw_bucket)
    return [upload["UploadId"] for upload in listed.get("Uploads", [])]


def interrupted_upload(store: S3ObjectStore, path: Path, parts: int = 2) -> dict[str, Any]:
    with pytest.raises(Interrupted), parts_sent(store.s3) as sent:
        store.put_file(KEY, path, metadata=METADATA, progress=stop_after(parts))
    assert sent == list(range(1, parts + 1))
    assert not store.exists(KEY)
    [record] = records(store)
    assert sorted(record["parts"]) == [str(n) for n in range(1, parts + 1)]
    return record


def assert_stored(store: S3ObjectStore, path: Path, tmp_path: Path) -> None:
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.head(KEY).sha256 == sha256
    copy = store.get_file(KEY, tmp_path / "back" / "scan.tar")
    assert copy.sha256 == sha256 and copy.size == path.stat().st_size
    assert store.verify(KEY)
    assert records(store) == []


def test_an_interrupted_upload_sends_only_the_missing_parts(store, tmp_path):
    path = scan_file(tmp_path / "scan.tar")
    record = interrupted_upload(store, path)
    assert str(path) not in json.dumps(record) and path.name not in json.dumps(record)
    heard: list[tuple[int, int]] = []
    progress: list[int] = []
    with parts_sent(store.s3) as sent:
        info = store.put_file(
            KEY,
            path,
            metadata=METADATA,
            progress=progress.append,
            started=lambda size, already: heard.append((size, already)),
        )
    assert sent == [3, 4]
    assert heard == [(SIZE, 2 * PART)]
    assert progress[0] == 2 * PART and sum(progress) == SIZE  # the resumed bytes first
    assert info.metadata == METADATA
    assert_stored(store, path, tmp_path)
    assert store.head(KEY).metadata == METADATA
    assert incomplete_uploads(store) == []


def test_a_put_with_other_metadata_starts_over(store, tmp_path):
    path = scan_file(tmp_path / "scan.tar")
    interrupted_upload(store, path)
    with parts_sent(store.s3) as sent:
        store.put_file(KEY, path, metadata={"format": "other"})
    assert sent == [1, 2, 3, 4]
    assert store.head(KEY).metadata == {"format": "other"}
    assert records(store) == [] and incomplete_uploads(store) == []


def test_a_changed_file_does_not_resume_the_old_upload(store, tmp_path):
    path = scan_file(tmp_path / "scan.tar")
    interrupted_upload(store, path)
    scan_file(path, seed=1)  # same size, other bytes
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with parts_sent(store.s3) as sent:
        store.put_file(KEY, path, metadata=METADATA)
    assert sent == [1, 2, 3, 4]
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.get_file(KEY, tmp_path / "back.tar").sha256 == sha256
    # The old file's record stays until the buckets' lifecycle would have aborted its upload.
    assert len(records(store)) == 1


def test_an_aborted_upload_starts_over(store, tmp_path):
    path = scan_file(tmp_path / "scan.tar")
    record = interrupted_upload(store, path)
    store.s3.abort_multipart_upload(
        Bucket=store.resources.raw_bucket, Key=KEY, UploadId=record["upload_id"]
    )
    with parts_sent(store.s3) as sent:
        store.put_file(KEY, path, metadata=METADATA)
    assert sent == [1, 2, 3, 4]
    assert_stored(store, path, tmp_path)


def test_an_unknown_upload_id_starts_over(store, tmp_path):
    path = scan_file(tmp_path / "scan.tar")
    interrupted_upload(store, path)
    [record_path] = list(store.resume_records.directory.glob("*.json"))
    record = json.loads(record_path.read_text())
    record["upload_id"] = "no-such-upload-" + uuid.uuid4().hex
    record_path.write_text(json.dumps(record))
    with parts_sent(store.s3) as sent:
        store.put_file(KEY, path, metadata=METADATA)
    assert sent == [1, 2, 3, 4]
    assert_stored(store, path, tmp_path)


def test_a_damaged_record_starts_over(tmp_path):
    url = SessionMoto.endpoint()
    reset_moto(url)
    store = store_on(client("s3", url), tmp_path)
    path = scan_file(tmp_path / "scan.tar")
    interrupted_upload(store, path)
    [record_path] = list(store.resume_records.directory.glob("*.json"))
    record = json.loads(record_path.read_text())
    record["parts"]["1"] = {"size": "5 MiB"}
    record_path.write_text(json.dumps(record))
    with parts_sent(store.s3) as sent:
        store.put_file(KEY, path, metadata=METADATA)
    assert sent == [1, 2, 3, 4]
    assert_stored(store, path, tmp_path)


def test_another_keys_upload_id_starts_over_on_seaweedfs(seaweedfs_s3, tmp_path):
    """Not on moto: it lists any upload's parts under any key (S3 says NoSuchUpload)."""
    store = store_on(seaweedfs_s3, tmp_path)
    path = scan_file(tmp_path / "scan.tar")
    interrupted_upload(store, path)
    bucket = store.resources.raw_bucket
    other = store.s3.create_multipart_upload(Bucket=bucket, Key="uploads/other.tar")["UploadId"]
    [record_path] = list(store.resume_records.directory.glob("*.json"))
    record = json.loads(record_path.read_text())
    record["upload_id"] = other
    record_path.write_text(json.dumps(record))
    with parts_sent(store.s3) as sent:
        store.put_file(KEY, path, metadata=METADATA)
    assert sent == [1, 2, 3, 4]
    assert_stored(store, path, tmp_path)
    assert store.s3.list_parts(Bucket=bucket, Key="uploads/other.tar", UploadId=other)


def test_a_part_whose_record_disagrees_with_the_server_is_sent_again(store, tmp_path):
    path = scan_file(tmp_path / "scan.tar")
    interrupted_upload(store, path)
    [record_path] = list(store.resume_records.directory.glob("*.json"))
    record = json.loads(record_path.read_text())
    record["parts"]["2"]["etag"] = '"0123456789abcdef0123456789abcdef"'
    record_path.write_text(json.dumps(record))
    with parts_sent(store.s3) as sent:
        store.put_file(KEY, path, metadata=METADATA)
    assert sent == [2, 3, 4]
    assert_stored(store, path, tmp_path)


def test_a_file_changed_during_the_upload_leaves_nothing(store, tmp_path):
    path = scan_file(tmp_path / "scan.tar")
    original_mtime = path.stat().st_mtime_ns

    def tamper(_: int) -> None:
        with path.open("r+b") as stream:  # the same size, another byte in part 3
            stream.seek(2 * PART + 7)
            stream.write(b"\xff" if stream.read(1) != b"\xff" else b"\x00")
        os.utime(path, ns=(original_mtime, original_mtime))

    with pytest.raises(BackendError, match="changed while it was stored; nothing kept"):
        store.put_file(KEY, path, progress=tamper)
    assert not store.exists(KEY)
    assert records(store) == []
    assert incomplete_uploads(store) == []


# The CLI --------------------------------------------------------------------------------------


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsBackend]:
    """The stacks' resources on moto, uploads resumable from 1 KiB in 5 MiB parts."""
    monkeypatch.setenv("MRICTL_AWS_RESUMABLE_UPLOAD_THRESHOLD", "1024")
    monkeypatch.setenv("MRICTL_AWS_UPLOAD_PART_SIZE", str(PART))
    with make_aws(tmp_path) as backend:
        yield backend


def upload_cli(backend: AwsBackend, scan: Path) -> Any:
    return invoke(
        "upload", "--to", "s3", str(scan), "--home", str(backend.scratch_dir.parent), "--json"
    )


def test_cli_upload_above_the_threshold_goes_in_parts(aws, tmp_path):
    scan = write_tiny_scan(tmp_path / "scan.h5", seed=5)
    outcome = upload_cli(aws, scan)
    assert outcome.exit_code == 0, outcome.stderr
    key = outcome.json()["location"]
    s3 = aws.clients.client("s3")
    head = s3.head_object(Bucket=aws.resources.raw_bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-1")  # a multipart object of one part
    assert aws.store.verify(key)
    home = aws.scratch_dir.parent
    assert list((home / "upload-resume").glob("*.json")) == []
    assert not (aws.scratch_dir / STAGING_FOLDER).exists()


def test_cli_upload_resumes_a_package_an_earlier_upload_left_half_sent(aws, tmp_path):
    scan = tmp_path / "scan.h5"  # about 6.3 MiB of k-space: a package of two 5 MiB parts
    write_fastmri(simulate_scan(matrix=(256, 256), num_coils=12, seed=2), scan)
    cut_off = open_backend(load_settings(backend="aws", home=aws.scratch_dir.parent))

    def interrupt(_: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        store_scan(cut_off, [scan], listener=SendListener(lambda *_: None, interrupt))
    [staged] = list((aws.scratch_dir / STAGING_FOLDER).iterdir())
    outcome = upload_cli(aws, scan)
    assert outcome.exit_code == 0, outcome.stderr
    assert not staged.exists()  # sent, then removed
    assert "resumed at 5 MiB of " in outcome.stderr
    key = outcome.json()["location"]
    assert aws.store.verify(key)
    assert (
        aws.clients.client("s3")
        .head_object(Bucket=aws.resources.raw_bucket, Key=key)["ETag"]
        .strip('"')
        .endswith("-2")
    )


# The staged package (any backend: the local one here) ----------------------------------------


def test_a_staged_package_of_the_same_scan_read_another_way_is_written_anew(tmp_path):
    """Only a staged package holding this upload's manifest is sent again as it is."""
    backend = LocalBackend(tmp_path / "home")
    scan = write_tiny_scan(tmp_path / "scan.h5", seed=7)
    staging = backend.scratch_dir / STAGING_FOLDER
    staging.mkdir(parents=True)
    package = package_scan([scan], dest_dir=staging)
    assert package.manifest is not None
    expected = package.manifest.to_json()
    other = dataclasses.replace(package.manifest, tool="mrictl 0.0 (an older upload)")
    write_package(other, [scan], staging)
    scan_id, _ = store_scan(backend, [scan])
    with tarfile.open(backend.store.path_of(keys.upload(scan_id))) as archive:
        member = archive.extractfile(MANIFEST_NAME)
        assert member is not None and member.read() == expected
    assert not staging.exists()


def test_a_permanent_refusal_aborts_the_upload_and_forgets_it(tmp_path):
    """The bucket went away between the cut and the next put: S3 answers NoSuchBucket (404),
    which no retry changes. On moto (seaweedfs will not delete a bucket holding an upload)."""
    url = SessionMoto.endpoint()
    reset_moto(url)
    store = store_on(client("s3", url), tmp_path)
    path = scan_file(tmp_path / "scan.tar")
    interrupted_upload(store, path)
    bucket = store.resources.raw_bucket
    for upload in store.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        store.s3.abort_multipart_upload(Bucket=bucket, Key=KEY, UploadId=upload["UploadId"])
    store.s3.delete_bucket(Bucket=bucket)
    with pytest.raises(
        BackendError, match=r"put refused \(upload aborted\): S3 error \(NoSuchBucket\)"
    ):
        store.put_file(KEY, path, metadata=METADATA)
    assert records(store) == []
