"""A raw scan the raw bucket's lifecycle moved to Glacier Deep Archive, read again: the store
starts a restore and says when it will be ready, the job is failed at once (its attempts kept
for after the restore) and `recon retry` then runs it, and `recon submit SCAN_ID` says so before
queueing anything. On the moto server (it archives on put with a storage class, refuses a
GetObject with InvalidObjectState, and finishes a restore at once).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from mrictl import keys
from mrictl.backends.aws import AwsBackend
from mrictl.backends.aws.store import _archive_of
from mrictl.backends.base import JobState, ObjectArchivedError
from mrictl.errors import ExitCode
from mrictl.pipeline import jobs
from mrictl.pipeline.upload import store_scan
from mrictl.worker import run_worker
from tests.mrictl.backends.conftest import aws_cli_options, make_aws
from tests.mrictl.cli_helpers import invoke
from tests.mrictl.jobs_helpers import write_tiny_scan


@pytest.fixture
def aws(tmp_path: Path) -> Iterator[AwsBackend]:
    with make_aws(tmp_path) as backend:
        yield backend


def archive(backend: AwsBackend, key: str) -> None:
    """What the lifecycle rule does after ArchiveDays: the same object, in DEEP_ARCHIVE."""
    s3 = backend.clients.client("s3")
    bucket = backend.resources.bucket_for(key)
    s3.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        StorageClass="DEEP_ARCHIVE",
        MetadataDirective="COPY",
    )
    assert s3.head_object(Bucket=bucket, Key=key)["StorageClass"] == "DEEP_ARCHIVE"


def uploaded_scan(backend: AwsBackend, tmp_path: Path) -> str:
    scan_id, _ = store_scan(backend, [write_tiny_scan(tmp_path / "scan.h5", seed=3)])
    return scan_id


def restore_header(backend: AwsBackend, key: str) -> str | None:
    s3 = backend.clients.client("s3")
    return s3.head_object(Bucket=backend.resources.bucket_for(key), Key=key).get("Restore")


def test_a_get_of_an_archived_object_starts_a_restore_and_says_when_it_is_ready(aws, tmp_path):
    scan_id = uploaded_scan(aws, tmp_path)
    key = keys.upload(scan_id)
    archive(aws, key)
    with pytest.raises(ObjectArchivedError) as raised:
        aws.store.get_file(key, tmp_path / "back.tar")
    error = raised.value
    assert (error.started, error.ready_in_hours, error.exit_code) == (True, 12, ExitCode.BACKEND)
    assert str(error) == (
        f"{key} is archived in DEEP_ARCHIVE: a restore was started; it should be readable "
        "within 12 h; try again then"
    )
    assert not (tmp_path / "back.tar").exists()
    assert restore_header(aws, key) is not None  # moto's restore ends at once
    info = aws.store.get_file(key, tmp_path / "back.tar")
    assert info.sha256 == aws.store.head(key).sha256


class RestoreUnderWay:
    """The S3 client as it answers while a restore runs (moto's ends at once): the head says
    `ongoing-request="true"` or RestoreObject says RestoreAlreadyInProgress."""

    def __init__(self, s3: Any, *, in_head: bool) -> None:
        self.s3 = s3
        self.in_head = in_head
        self.restores = 0

    def head_object(self, **request: Any) -> dict[str, Any]:
        response = dict(self.s3.head_object(**request))
        if self.in_head:
            response["Restore"] = 'ongoing-request="true"'
        return response

    def restore_object(self, **request: Any) -> dict[str, Any]:
        self.restores += 1
        error = {"Error": {"Code": "RestoreAlreadyInProgress", "Message": "in progress"}}
        raise ClientError(error, "RestoreObject")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)


@pytest.mark.parametrize("in_head", [True, False])
def test_a_restore_under_way_is_not_started_again(aws, tmp_path, monkeypatch, in_head):
    scan_id = uploaded_scan(aws, tmp_path)
    archive(aws, keys.upload(scan_id))
    under_way = RestoreUnderWay(aws.store.s3, in_head=in_head)
    monkeypatch.setattr(aws.store, "s3", under_way)
    with pytest.raises(ObjectArchivedError) as raised:
        aws.store.ensure_readable(keys.upload(scan_id))
    assert raised.value.started is False
    assert "a restore is already under way" in str(raised.value)
    assert under_way.restores == (0 if in_head else 1)


def test_the_bulk_tier_and_intelligent_tiering_archives_are_told_apart(aws, tmp_path):
    assert _archive_of({"StorageClass": "STANDARD"}) is None
    assert _archive_of({"StorageClass": "GLACIER", "Restore": 'ongoing-request="true"'})
    assert _archive_of({"StorageClass": "GLACIER", "Restore": 'ongoing-request="false"'}) is None
    tiering = {"StorageClass": "INTELLIGENT_TIERING", "ArchiveStatus": "DEEP_ARCHIVE_ACCESS"}
    assert _archive_of(tiering) == "DEEP_ARCHIVE_ACCESS"
    with pytest.raises(ValueError, match="restore tier"):
        type(aws.store)(aws.store.s3, aws.resources, restore_tier="Expedited")


def test_a_job_on_an_archived_scan_fails_at_once_and_retry_runs_it_when_restored(aws, tmp_path):
    scan_id = uploaded_scan(aws, tmp_path)
    archive(aws, keys.upload(scan_id))
    first = jobs.submit(aws, [tmp_path / "scan.h5"])  # the files again: put again, not archived
    assert first["state"] == "queued"
    archive(aws, keys.upload(scan_id))  # archived again before a worker reads it
    run_worker(aws, stages=["preprocess"], once=True, worker_id="w1")
    job = aws.queue.get(first["job_id"])
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    assert job.error is not None
    assert "archived in DEEP_ARCHIVE: a restore was started" in job.error
    assert job.error.endswith(f"then `mrictl recon retry {job.job_id}`")
    messages = [entry.message for entry in aws.queue.logs(job.job_id)]
    assert messages[-1] == "dead-lettered (input archived: waiting for its restore, not retried)"
    jobs.retry(aws, job.job_id)  # moto's restore is over already
    run_worker(aws, stages=["preprocess"], once=True, worker_id="w2")
    assert aws.queue.get(job.job_id).state is JobState.SUCCEEDED


def test_recon_submit_of_an_archived_scan_says_so_and_queues_nothing(aws, tmp_path):
    scan_id = uploaded_scan(aws, tmp_path)
    archive(aws, keys.upload(scan_id))
    outcome = invoke("recon", "submit", scan_id, *aws_cli_options(aws), "--json")
    assert outcome.exit_code == ExitCode.BACKEND
    assert "a restore was started; it should be readable within 12 h" in outcome.stderr
    assert f"submit {scan_id} again then; nothing was queued" in outcome.stderr
    assert aws.queue.list() == []
    again = invoke("recon", "submit", scan_id, *aws_cli_options(aws), "--json")
    assert again.exit_code == 0, again.stderr  # restored (at once, on moto): queued now
