"""What only the aws backend does: SQS delivery and S3 upload events on a moto server, retries of
throttled calls, and the object store against seaweedfs, a real S3 server that checks what
moto does not (a wrong `ChecksumSHA256`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from mrictl import keys
from mrictl.backends import AwsClients, open_backend
from mrictl.backends.aws import AwsBackend, AwsJobQueue, AwsResources, S3ObjectStore
from mrictl.backends.aws.queue import upload_job_payload
from mrictl.backends.base import (
    BackendError,
    ChecksumMismatchError,
    Job,
    JobState,
    LeaseLostError,
    NotFoundError,
)
from mrictl.config import load_settings
from mrictl.pipeline.requests import enqueue_preprocess, recon_request
from mrictl.pipeline.upload import upload
from mrictl.worker import run_worker
from tests.mrictl.backends.conftest import SessionMoto, make_aws
from tests.mrictl.backends.test_contract import LONG_LEASE_S, run_together, source_file
from tests.mrictl.jobs_helpers import write_tiny_scan
from tests.servers import client, seaweedfs_server

SCAN_ID = "scan-0123456789abcdef"
REPOSITORY = Path(__file__).resolve().parents[3]


@pytest.fixture
def aws(tmp_path: Path) -> Iterator[AwsBackend]:
    with make_aws(tmp_path) as backend:
        yield backend


def put_upload(backend: AwsBackend, tmp_path: Path, scan_id: str = SCAN_ID) -> None:
    """An upload lands in the raw bucket (S3 then tells the preprocess queue)."""
    backend.store.put_file(keys.upload(scan_id), source_file(tmp_path, b"package", "scan.tar"))


def messages_left(backend: AwsBackend, stage: str) -> int:
    """Messages on the stage's queue, visible or not."""
    counts = backend.clients.client("sqs").get_queue_attributes(
        QueueUrl=backend.resources.queue_for(stage),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in counts.values())


def send_raw(backend: AwsBackend, stage: str, body: str) -> None:
    backend.clients.client("sqs").send_message(
        QueueUrl=backend.resources.queue_for(stage), MessageBody=body
    )


def second_worker(backend: AwsBackend) -> AwsJobQueue:
    """The same queue as another process sees it (its own receipt handles)."""
    return AwsJobQueue(
        backend.clients.client("dynamodb"),
        backend.clients.client("sqs"),
        backend.resources,
        receive_wait_seconds=0,
        upload_grace_seconds=0,
    )


# Upload events ----------------------------------------------------------------------------------


def test_an_upload_event_alone_queues_the_upload_job_with_the_default_request(aws, tmp_path):
    put_upload(aws, tmp_path)
    claimed = aws.queue.claim("preprocess", "w", LONG_LEASE_S)
    assert claimed is not None and claimed.stage == "preprocess"
    # What `mrictl upload` queues when no method is named, built by the pipeline itself.
    expected = {"scan_id": SCAN_ID, "next_stage": "recon", **recon_request(None, None)}
    assert claimed.payload == expected == upload_job_payload(SCAN_ID)
    again = aws.queue.enqueue("preprocess", {}, idempotency_key=keys.idempotency_of_upload(SCAN_ID))
    assert again == claimed.job_id
    assert [job.job_id for job in aws.queue.list()] == [claimed.job_id]


def test_the_cli_and_the_event_of_one_upload_make_one_job_and_duplicates_do_no_work(aws, tmp_path):
    job_id = enqueue_preprocess(
        aws,
        SCAN_ID,
        recon_request("zerofill", None),
        idempotency_key=keys.idempotency_of_upload(SCAN_ID),
    )
    put_upload(aws, tmp_path)
    put_upload(aws, tmp_path)  # S3 delivers at least once: the same event twice
    claimed = aws.queue.claim("preprocess", "w", LONG_LEASE_S)
    assert claimed.job_id == job_id and claimed.payload["method"] == "zerofill"
    assert aws.queue.claim("preprocess", "other", LONG_LEASE_S) is None
    aws.queue.complete(claimed, {})
    put_upload(aws, tmp_path)  # the same scan uploaded again later
    assert aws.queue.claim("preprocess", "w", LONG_LEASE_S) is None
    assert [job.job_id for job in aws.queue.list()] == [job_id]
    assert [claim.attempt for claim in aws.queue.claims(job_id)] == [1]
    assert messages_left(aws, "preprocess") == 0


def test_an_upload_event_waits_for_the_clis_request_during_the_grace_period(tmp_path):
    with make_aws(tmp_path, upload_grace_seconds=30) as backend:
        put_upload(backend, tmp_path)
        assert backend.queue.claim("preprocess", "w", LONG_LEASE_S) is None
        assert backend.queue.list() == []  # nothing queued yet: the CLI may still send its own
        job_id = enqueue_preprocess(
            backend,
            SCAN_ID,
            recon_request("grappa", None),
            idempotency_key=keys.idempotency_of_upload(SCAN_ID),
        )
        claimed = backend.queue.claim("preprocess", "w", LONG_LEASE_S)
        assert (claimed.job_id, claimed.payload["method"]) == (job_id, "grappa")


def test_an_s3_test_event_and_malformed_messages_are_dropped(aws):
    assert messages_left(aws, "preprocess") == 1  # S3 sent its test event when told to notify
    send_raw(aws, "preprocess", "not json")
    send_raw(aws, "preprocess", json.dumps({"job_id": "../etc"}))
    send_raw(aws, "preprocess", json.dumps({"job_id": "job-0000000000000000"}))  # unknown job
    assert aws.queue.claim("preprocess", "w", LONG_LEASE_S) is None
    assert messages_left(aws, "preprocess") == 0


def test_a_message_whose_job_is_final_is_deleted(aws):
    done = aws.queue.enqueue("recon", {})
    aws.queue.complete(aws.queue.claim_job(done, "batch", LONG_LEASE_S), {})  # pushed: no message
    cancelled = aws.queue.enqueue("train", {})
    aws.queue.cancel(cancelled)
    assert messages_left(aws, "recon") == 2
    assert aws.queue.claim("recon", "w", LONG_LEASE_S) is None
    assert aws.queue.claim("train", "w", LONG_LEASE_S) is None
    assert messages_left(aws, "recon") == 0


def test_recon_and_train_share_a_queue_and_each_claim_takes_only_its_stage(aws):
    recon = aws.queue.enqueue("recon", {})
    train = aws.queue.enqueue("train", {})
    assert aws.queue.claim("train", "w", LONG_LEASE_S).job_id == train
    assert aws.queue.claim("train", "w", LONG_LEASE_S) is None
    assert aws.queue.claim("recon", "w", LONG_LEASE_S).job_id == recon
    assert aws.queue.get(recon).attempts == 1  # handed back once, never claimed by train


# Leases and messages ----------------------------------------------------------------------------


def test_a_worker_killed_mid_job_is_taken_over_exactly_once(aws):
    job_id = aws.queue.enqueue("recon", {})
    killed = aws.queue.claim("recon", "killed", 1.0)  # its message hidden for the lease
    rivals = [second_worker(aws), second_worker(aws)]
    assert rivals[0].claim("recon", "early", LONG_LEASE_S) is None
    send_raw(aws, "recon", json.dumps({"job_id": job_id}))  # a duplicate delivery
    time.sleep(1.3)  # the killed worker renews nothing: its lease and visibility run out
    taken = run_together(2, lambda i: rivals[i].claim("recon", f"rival-{i}", LONG_LEASE_S))
    winners = [outcome for outcome in taken if isinstance(outcome, Job)]
    assert len(winners) == 1 and taken.count(None) == 1, taken
    winner = winners[0]
    assert (winner.job_id, winner.attempts) == (job_id, 2)
    with pytest.raises(LeaseLostError):
        aws.queue.heartbeat(killed, LONG_LEASE_S)
    rivals[taken.index(winner)].complete(winner, {"outputs": []})
    assert [(c.attempt, c.worker_id) for c in aws.queue.claims(job_id)] == [
        (1, "killed"),
        (2, winner.worker_id),
    ]
    assert aws.queue.claim("recon", "late", LONG_LEASE_S) is None
    assert messages_left(aws, "recon") == 0


def test_a_heartbeat_keeps_the_message_hidden_and_a_retryable_failure_shows_it(aws):
    job_id = aws.queue.enqueue("recon", {})
    claimed = aws.queue.claim("recon", "w", 1.0)
    claimed = aws.queue.heartbeat(claimed, LONG_LEASE_S)
    time.sleep(1.2)
    assert second_worker(aws).claim("recon", "other", LONG_LEASE_S) is None
    assert aws.queue.fail(claimed, "disk busy") is JobState.QUEUED
    again = second_worker(aws).claim("recon", "other", LONG_LEASE_S)
    assert (again.job_id, again.attempts) == (job_id, 2)


@pytest.mark.slow
def test_a_killed_worker_process_is_taken_over_by_the_next(aws, tmp_path, monkeypatch):
    """End to end: an upload (CLI request and S3 event), a worker process killed while its
    stage runs, and the job finished by the next worker once lease and visibility ran out."""
    sent = upload(aws, [write_tiny_scan(tmp_path / "in" / "brain.h5")], method="zerofill")
    command = [sys.executable, "-m", "tests.mrictl.slow_publishing", "60", "worker", "run"]
    command += ["--stage", "preprocess", "--lease-seconds", "2", "--poll-interval", "0.05"]
    command += ["--backend", "aws", "--home", str(tmp_path / "killed"), "--json"]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    process = subprocess.Popen(command, cwd=REPOSITORY, env=environment)
    try:
        deadline = time.monotonic() + 60
        while not aws.queue.claims(sent.job_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # into the stage, paused before it publishes
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert aws.queue.get(sent.job_id).state is JobState.RUNNING
    deadline = time.monotonic() + 30
    done = 0
    while not done and time.monotonic() < deadline:
        done = run_worker(aws, stages=["preprocess"], once=True, lease_seconds=30)
        time.sleep(0.2)
    job = aws.queue.get(sent.job_id)
    assert (job.state, job.attempts) == (JobState.SUCCEEDED, 2)
    assert len(aws.queue.claims(sent.job_id)) == 2
    assert [child.stage for child in aws.queue.children(sent.job_id)] == ["recon"]
    assert aws.store.list("preprocessed/") == [keys.preprocessed(sent.scan_id)]


# Throttling ---------------------------------------------------------------------------------------


class Throttle:
    """Answers the first `times` DynamoDB requests of one operation with ThrottlingException
    before they leave botocore (a Stubber would answer before the retry logic, not under it)."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.calls = 0

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        self.calls += 1
        if self.calls > self.times:
            return None  # sent to the server
        body = json.dumps(
            {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "slow"}
        ).encode()
        raw = type("Raw", (), {"stream": lambda self, **_: iter([body])})()
        return AWSResponse(request.url, 400, {"x-amzn-requestid": "throttled"}, raw)


def test_throttled_dynamodb_calls_are_retried_by_the_client_factory(aws):
    clients = AwsClients(SessionMoto.settings())  # the production factory: standard retries
    dynamodb = clients.client("dynamodb")
    queue = AwsJobQueue(dynamodb, clients.client("sqs"), aws.resources, receive_wait_seconds=0)
    job_id = queue.enqueue("recon", {})
    throttle = Throttle(times=1)
    dynamodb.meta.events.register("before-send.dynamodb.UpdateItem", throttle)
    claimed = queue.claim_job(job_id, "w", LONG_LEASE_S)  # a conditional write, throttled once
    assert throttle.calls == 2 and claimed.attempts == 1
    assert [claim.attempt for claim in queue.claims(job_id)] == [1]


def test_a_backend_error_names_the_failure_when_retries_run_out(aws):
    import boto3
    from botocore.config import Config

    # Two attempts in all, not the factory's nine: the same path without a minute of back-off.
    dynamodb = boto3.session.Session(region_name="us-east-1").client(
        "dynamodb",
        endpoint_url=SessionMoto.endpoint(),
        config=Config(retries={"mode": "standard", "total_max_attempts": 2}),
    )
    throttle = Throttle(times=100)
    dynamodb.meta.events.register("before-send.dynamodb.GetItem", throttle)
    queue = AwsJobQueue(dynamodb, aws.clients.client("sqs"), aws.resources)
    with pytest.raises(BackendError, match="ThrottlingException"):
        queue.get("job-0000000000000000")
    assert throttle.calls == 2


# Resources and the CLI's backend ------------------------------------------------------------------


def test_resources_come_from_stack_outputs_overlaid_by_container_variables():
    outputs = {"JobTableName": "t", "RawBucketName": "raw", "ReconQueueUrl": "http://q/recon"}
    environ = {"MRICTL_AWS_RAW_BUCKET": "raw-from-task", "MRICTL_AWS_PREPROCESSED_BUCKET": "pre"}
    resources = AwsResources.from_sources(outputs, environ)
    assert (resources.job_table, resources.raw_bucket) == ("t", "raw-from-task")
    assert resources.bucket_for("uploads/scan-0123456789abcdef.tar") == "raw-from-task"
    assert resources.bucket_for("preprocessed/scan-0123456789abcdef.h5") == "pre"
    assert (
        resources.queue_for("train") == "http://q/recon"
        and resources.queue_for("preprocess") is None
    )
    with pytest.raises(BackendError, match=r"ReconstructedBucketName.*mrictl provision"):
        resources.bucket_for("weights/job-0123456789abcdef/weights.pt")
    with pytest.raises(BackendError, match="mrictl provision"):
        AwsResources.from_sources({}, {})


def test_open_backend_builds_the_aws_backend_from_the_settings(aws, tmp_path):
    backend = open_backend(load_settings(backend="aws", home=tmp_path / "cli-home"))
    assert isinstance(backend, AwsBackend) and backend.resources == aws.resources
    job_id = aws.queue.enqueue("recon", {})
    assert backend.queue.get(job_id).state is JobState.QUEUED
    assert backend.scratch_dir == tmp_path / "cli-home" / "work"


# The object store on a real S3 server ----------------------------------------------------------


@pytest.fixture(scope="module")
def seaweedfs_store(tmp_path_factory) -> Iterator[S3ObjectStore]:
    """A store on a seaweedfs server with the three buckets; multipart above 5 MiB (S3's
    smallest part)."""
    from boto3.s3.transfer import TransferConfig

    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as (url, access, secret):
        s3 = client("s3", url, access, secret)
        buckets = {role: f"mrictl-test-{role}" for role in ("raw", "preprocessed", "reconstructed")}
        for bucket in buckets.values():
            s3.create_bucket(Bucket=bucket)
        resources = AwsResources(
            job_table="unused",
            raw_bucket=buckets["raw"],
            preprocessed_bucket=buckets["preprocessed"],
            reconstructed_bucket=buckets["reconstructed"],
        )
        config = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
        yield S3ObjectStore(s3, resources, transfer_config=config)


@pytest.fixture
def s3_store(seaweedfs_store: S3ObjectStore) -> S3ObjectStore:
    """The seaweedfs store, emptied."""
    for key in seaweedfs_store.list():
        seaweedfs_store.delete(key)
    return seaweedfs_store


def test_seaweedfs_round_trips_objects_single_and_multipart(s3_store, tmp_path):
    small = source_file(tmp_path, b"k-space" * 100, "small.bin")
    large = source_file(tmp_path, os.urandom((11 << 20) + 3), "large.bin")
    key_small, key_large = keys.upload(SCAN_ID), keys.preprocessed(SCAN_ID)
    sent = [
        s3_store.put_file(key_small, small, metadata={"format": "mrictl-package"}),
        s3_store.put_file(key_large, large),
    ]
    for info, path in zip(sent, (small, large), strict=True):
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert s3_store.head(info.key) == info
        copy = s3_store.get_file(info.key, tmp_path / "out" / path.name)
        assert copy == info and (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()
        assert s3_store.verify(info.key)
    assert s3_store.list() == sorted([key_small, key_large])
    assert s3_store.list("pre") == [key_large]
    s3_store.delete(key_small)
    s3_store.delete(key_small)
    assert not s3_store.exists(key_small)
    with pytest.raises(NotFoundError):
        s3_store.get_file(key_small, tmp_path / "missing")


def test_seaweedfs_refuses_bytes_that_do_not_match_their_checksum(s3_store):
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    with pytest.raises(ClientError) as refused:
        s3_store.s3.put_object(
            Bucket=s3_store.resources.raw_bucket,
            Key=keys.upload(SCAN_ID),
            Body=b"bytes changed in transit",
            ChecksumSHA256=wrong,
        )
    assert refused.value.response["Error"]["Code"] in ("BadDigest", "XAmzContentSHA256Mismatch")
    assert not s3_store.exists(keys.upload(SCAN_ID))


def test_seaweedfs_object_corrupted_in_the_store_is_refused_on_read(s3_store, tmp_path):
    key = keys.preprocessed(SCAN_ID)
    s3_store.put_file(key, source_file(tmp_path, b"canonical hdf5"), metadata={"format": "h5"})
    bucket = s3_store.resources.preprocessed_bucket
    metadata = s3_store.s3.head_object(Bucket=bucket, Key=key)["Metadata"]
    s3_store.s3.put_object(Bucket=bucket, Key=key, Body=b"bit rot", Metadata=metadata)
    out = tmp_path / "out"
    with pytest.raises(ChecksumMismatchError):
        s3_store.get_file(key, out / "scan.h5")
    assert not out.exists() or list(out.iterdir()) == []
    assert s3_store.verify(key) is False
