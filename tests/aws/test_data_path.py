"""The whole data path on the stacks `mrictl provision` creates, on a moto server: upload -> S3
event in SQS -> `mrictl worker run --stage preprocess --once` -> Batch job submitted -> the
job's own command run as its container would -> outputs in S3 -> `mrictl fetch` returns the
right image; and every `mrictl` command a user runs, on `--backend aws`, answering as on local.

Elsewhere, not repeated here: a corrupted object refused on read (tests/mrictl/backends/
test_contract.py, `test_get_of_a_corrupt_object_raises_and_leaves_no_file[aws]`, and against
seaweedfs in test_aws_delivery.py); a pulling worker killed mid-job taken over exactly once
(test_aws_delivery.py, `test_a_killed_worker_process_is_taken_over_by_the_next`); throttled
DynamoDB calls retried (test_aws_delivery.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from mrictl import keys
from mrictl.backends import AwsClients
from mrictl.backends.aws import AwsBackend, AwsResources
from mrictl.config import load_settings
from mrictl.errors import ExitCode
from mrictl.pipeline import jobs
from mrictl.pipeline.context import StageContext
from mrictl.pipeline.stages import STAGES, Stage
from mrictl.worker import run_worker
from raki.fft import rss_image
from raki.io.fastmri import read_fastmri
from raki.io.image_hdf5 import read_reconstruction
from raki.metrics import nmse
from raki.weights import RakiWeights
from tests.aws.conftest import Cloud
from tests.mrictl.cli_helpers import invoke
from tests.mrictl.jobs_helpers import RETROSPECTIVE, write_tiny_scan

RECON_FLAGS = ("--accel", "2", "--acs", "8")
pytestmark = pytest.mark.usefixtures("on_the_cloud")


@dataclass(frozen=True)
class Delivered:
    """One scan taken through the whole path (module fixture `delivered`)."""

    scan: Path
    scan_id: str
    upload_job: str  # the preprocess job `mrictl upload` printed
    recon_job: str
    batch_job_id: str
    container_seconds: float


def record(cloud: Cloud, job_id: str) -> dict[str, Any]:
    outcome = cloud.cli("recon", "status", job_id)
    assert outcome.exit_code == 0, outcome.stderr
    [found] = outcome.json()["jobs"]
    return found


@pytest.fixture(scope="module")
def delivered(cloud: Cloud, tmp_path_factory: pytest.TempPathFactory) -> Delivered:
    folder = tmp_path_factory.mktemp("scan")
    scan = write_tiny_scan(folder / "brain.h5")
    sent = cloud.cli("upload", str(scan), *RECON_FLAGS, "--method", "grappa")
    assert sent.exit_code == 0, sent.stderr
    upload = sent.json()
    assert upload["location"] == keys.upload(upload["scan_id"])
    # S3 told the preprocess queue, beside the CLI's own message for the same job (and the
    # s3:TestEvent S3 sends when a notification is configured).
    assert cloud.messages("PreprocessQueueUrl") == 3

    pulled = cloud.cli("worker", "run", "--stage", "preprocess", "--once")
    assert pulled.exit_code == 0, pulled.stderr
    assert pulled.json()["jobs_done"] == 1
    assert cloud.messages("PreprocessQueueUrl") == 0  # the event and the CLI's: one job
    preprocess = record(cloud, upload["job_id"])
    assert preprocess["state"] == "succeeded", preprocess["error"]
    recon = record(cloud, preprocess["next_job_id"])
    assert (recon["stage"], recon["state"], recon["attempts"]) == ("recon", "queued", 0)
    assert recon["batch_job_id"] and cloud.messages("ReconQueueUrl") == 0  # Batch, not SQS

    started = time.monotonic()
    container = cloud.run_container(recon["batch_job_id"], folder / "container")
    seconds = time.monotonic() - started
    assert container.returncode == 0, container.stderr
    return Delivered(
        scan,
        upload["scan_id"],
        upload["job_id"],
        recon["job_id"],
        recon["batch_job_id"],
        seconds,
    )


def test_the_preprocess_worker_submits_the_recon_job_to_batch(cloud, delivered):
    job = cloud.batch_job(delivered.batch_job_id)
    assert job["jobName"] == f"recon-{delivered.recon_job}"
    assert job["parameters"] == {"job_id": delivered.recon_job}
    assert job["jobQueue"] == cloud.outputs["BatchJobQueueArn"]
    assert job["jobDefinition"] == cloud.outputs["ReconJobDefinitionArn"]
    listed = cloud.client("batch").list_jobs(
        jobQueue=cloud.outputs["BatchJobQueueArn"], jobStatus="SUCCEEDED"
    )["jobSummaryList"]
    assert [summary["jobId"] for summary in listed] == [delivered.batch_job_id]


def test_the_container_publishes_the_outputs_and_fetch_returns_the_right_image(
    cloud, delivered, tmp_path
):
    done = record(cloud, delivered.recon_job)
    assert (done["state"], done["attempts"]) == ("succeeded", 1), done["error"]
    assert done["waiting_reason"] is None
    prefix = f"reconstructed/{delivered.recon_job}/"
    stored = cloud.client("s3").list_objects_v2(
        Bucket=cloud.outputs["ReconstructedBucketName"], Prefix=prefix
    )
    assert sorted(item["Key"] for item in stored["Contents"]) == sorted(done["outputs"])

    fetched = cloud.cli("fetch", delivered.upload_job, "--out", str(tmp_path / "out"))
    assert fetched.exit_code == 0, fetched.stderr
    image, attrs = read_reconstruction(tmp_path / "out" / "reconstruction.h5")
    assert attrs["method"] == "grappa" and image.shape == (1, 32, 24)
    scan = read_fastmri(delivered.scan)
    reference = rss_image(scan.kspace)
    zero_filled = rss_image(scan.undersampled(2, 8).kspace)
    error = nmse(reference, image)
    assert error == pytest.approx(done["metrics"]["nmse"], rel=1e-6)
    # GRAPPA on the R=2 phantom: 0.0006, where zero-filling gives 0.108 (the local pipeline's).
    assert error < 0.01 < nmse(reference, zero_filled)


def test_a_duplicate_upload_event_does_no_duplicate_work(cloud, delivered):
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": cloud.outputs["RawBucketName"]},
                    "object": {"key": keys.upload(delivered.scan_id)},
                },
            }
        ]
    }
    cloud.client("sqs").send_message(
        QueueUrl=cloud.outputs["PreprocessQueueUrl"], MessageBody=json.dumps(event)
    )
    pulled = cloud.cli("worker", "run", "--stage", "preprocess", "--once")
    assert pulled.exit_code == 0 and pulled.json()["jobs_done"] == 0
    assert cloud.messages("PreprocessQueueUrl") == 0
    assert record(cloud, delivered.upload_job)["attempts"] == 1
    listed = cloud.client("batch").list_jobs(
        jobQueue=cloud.outputs["BatchJobQueueArn"], jobStatus="SUCCEEDED"
    )["jobSummaryList"]
    assert delivered.batch_job_id in [summary["jobId"] for summary in listed]
    assert len([s for s in listed if s["jobName"] == f"recon-{delivered.recon_job}"]) == 1


def test_recon_logs_add_the_containers_cloudwatch_lines_after_the_records(cloud, delivered):
    # moto's Batch runs no container and so writes no log: write the stream the job names.
    stream = cloud.batch_job(delivered.batch_job_id)["container"]["logStreamName"]
    logs = cloud.client("logs")
    group = cloud.outputs["ReconLogGroupName"]
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[
            {"timestamp": now, "message": "worker started"},
            {"timestamp": now + 1, "message": "reconstructing with grappa"},
        ],
    )
    outcome = cloud.cli("recon", "logs", delivered.upload_job)
    assert outcome.exit_code == 0, outcome.stderr
    entries = outcome.json()["logs"]
    sources = [entry["source"] for entry in entries]
    assert sources == sorted(sources, key=lambda source: source == "batch")  # records first
    record_lines = [entry["message"] for entry in entries if entry["source"] == "record"]
    assert f"submitted to AWS Batch as {delivered.batch_job_id}" in record_lines
    batch_lines = [entry for entry in entries if entry["source"] == "batch"]
    assert [entry["message"] for entry in batch_lines] == [
        "worker started",
        "reconstructing with grappa",
    ]
    assert {(e["job_id"], e["worker_id"], e["attempt"]) for e in batch_lines} == {
        (delivered.recon_job, stream, 1)
    }
    human = invoke("recon", "logs", delivered.upload_job)
    assert f"{delivered.recon_job} [batch] #1 worker started" in human.output


@pytest.mark.slow
def test_recon_commands_on_aws_answer_as_on_local(cloud, delivered, tmp_path):
    submitted = cloud.cli("recon", "submit", delivered.scan_id, "--method", "zerofill",
                          *RECON_FLAGS)  # fmt: skip
    assert submitted.exit_code == 0, submitted.stderr
    job = submitted.json()
    assert list(job) == list(jobs.RECORD_FIELDS)
    assert (job["stage"], job["state"]) == ("recon", "queued")  # preprocessed: straight on
    first_batch_job = job["batch_job_id"]
    assert cloud.batch_job(first_batch_job)["parameters"] == {"job_id": job["job_id"]}

    # moto's Batch ends every job when it is submitted: one that ran nothing, as Batch says.
    waiting = record(cloud, job["job_id"])["waiting_reason"]
    assert f"AWS Batch job {first_batch_job} ended SUCCEEDED" in waiting
    human = invoke("recon", "status", job["job_id"])
    assert f"{job['job_id']} waiting: AWS Batch job" in human.output
    # A queued job Batch will not run is submitted again by retry (on local: exit 6).
    resubmitted = cloud.cli("recon", "retry", job["job_id"])
    assert resubmitted.exit_code == 0, resubmitted.stderr
    assert resubmitted.json()["batch_job_id"] not in (None, first_batch_job)
    first_batch_job = resubmitted.json()["batch_job_id"]
    logged = [line["message"] for line in cloud.cli("recon", "logs", job["job_id"]).json()["logs"]]
    assert f"its AWS Batch job {job['batch_job_id']} ran nothing: submitting another" in logged

    watched = cloud.cli("recon", "watch", "--timeout", "0.2")
    assert watched.exit_code == ExitCode.TIMEOUT
    cancelled = cloud.cli("recon", "cancel", job["job_id"], "--yes")
    assert cancelled.exit_code == 0, cancelled.stderr
    assert (cancelled.json()["state"], cancelled.json()["error"]) == (
        "cancelled",
        "cancelled while queued",
    )
    twice = cloud.cli("recon", "cancel", job["job_id"], "--yes")
    assert twice.exit_code == ExitCode.CONFLICT
    messages = [
        line["message"] for line in cloud.cli("recon", "logs", job["job_id"]).json()["logs"]
    ]
    assert f"stopped AWS Batch job {first_batch_job}" in messages

    retried = cloud.cli("recon", "retry", job["job_id"])
    assert retried.exit_code == 0, retried.stderr
    again = retried.json()
    assert (again["state"], again["attempts"]) == ("queued", 0)
    assert again["batch_job_id"] not in (None, first_batch_job)
    container = cloud.run_container(again["batch_job_id"], tmp_path / "container")
    assert container.returncode == 0, container.stderr
    fetched = cloud.cli("fetch", job["job_id"], "--out", str(tmp_path / "out"), "--format", "h5")
    assert fetched.exit_code == 0, fetched.stderr
    assert [Path(name).name for name in fetched.json()["files"]] == ["reconstruction.h5"]
    # The container run again has nothing to do: it says so and Batch does not retry it.
    rerun = cloud.run_container(again["batch_job_id"], tmp_path / "rerun")
    assert rerun.returncode == ExitCode.CONFLICT

    # The same commands on the local backend: the same shapes and exit codes.
    local = ("--backend", "local", "--home", str(tmp_path / "local"))
    there = invoke("recon", "submit", str(delivered.scan), "--method", "zerofill", *RECON_FLAGS,
                   *local, "--json")  # fmt: skip
    assert list(there.json()) == list(job)
    assert invoke("recon", "watch", "--timeout", "0.2", *local, "--json").exit_code == (
        watched.exit_code
    )
    local_cancel = invoke("recon", "cancel", there.json()["job_id"], "--yes", *local, "--json")
    assert list(local_cancel.json()) == list(cancelled.json())
    assert invoke("recon", "cancel", there.json()["job_id"], "--yes", *local).exit_code == (
        twice.exit_code
    )
    local_logs = invoke("recon", "logs", there.json()["job_id"], *local, "--json").json()["logs"]
    assert list(local_logs[0]) == list(cloud.cli("recon", "logs", job["job_id"]).json()["logs"][0])
    local_status = invoke("recon", "status", there.json()["job_id"], *local, "--json").json()
    assert list(local_status["jobs"][0]) == list(record(cloud, job["job_id"]))


@pytest.mark.slow
def test_train_submit_runs_as_a_batch_train_job_whose_weights_fetch_returns(
    cloud, delivered, tmp_path
):
    flags = ("--method", "raki", *RECON_FLAGS, "--iterations", "3")
    submitted = cloud.cli("train", delivered.scan_id, "--submit", *flags)
    assert submitted.exit_code == 0, submitted.stderr
    job = submitted.json()
    assert (job["stage"], job["state"]) == ("train", "queued")
    batch_job = cloud.batch_job(job["batch_job_id"])
    assert batch_job["jobDefinition"] == cloud.outputs["TrainJobDefinitionArn"]
    assert batch_job["jobName"] == f"train-{job['job_id']}"
    container = cloud.run_container(job["batch_job_id"], tmp_path / "container")
    assert container.returncode == 0, container.stderr
    fetched = cloud.cli("fetch", job["job_id"], "--out", str(tmp_path / "w"))
    assert fetched.exit_code == 0, fetched.stderr
    weights = RakiWeights.load(tmp_path / "w" / "weights.pt")
    assert weights.method == "raki" and weights.acceleration == 2 and weights.num_coils == 4


def test_upload_to_s3_is_the_aws_store(cloud, tmp_path, monkeypatch):
    scan = write_tiny_scan(tmp_path / "other.h5", seed=5)
    monkeypatch.setenv("MRICTL_BACKEND", "local")
    refused = invoke("upload", str(scan), "--to", "s3", "--json")
    assert refused.exit_code == ExitCode.USAGE and "--to s3" in refused.stderr
    monkeypatch.delenv("MRICTL_BACKEND")
    sent = invoke("upload", str(scan), "--to", "s3", "--method", "zerofill", *RECON_FLAGS, "--json")
    assert sent.exit_code == 0, sent.stderr
    monkeypatch.setenv("MRICTL_BACKEND", "aws")
    key = sent.json()["location"]
    head = cloud.client("s3").head_object(Bucket=cloud.outputs["RawBucketName"], Key=key)
    assert (
        head["Metadata"]["sha256"]
        == hashlib.sha256(
            cloud.client("s3")
            .get_object(Bucket=cloud.outputs["RawBucketName"], Key=key)["Body"]
            .read()
        ).hexdigest()
    )
    assert record(cloud, sent.json()["job_id"])["method"] == "zerofill"
    share = tmp_path / "share"
    share.mkdir()
    dropped = invoke("upload", str(scan), "--to", str(share), "--json")
    assert dropped.exit_code == 0 and (share / f"{sent.json()['scan_id']}.tar").is_file()


def event_only_backend(cloud: Cloud, tmp_path: Path) -> AwsBackend:
    """The preprocess service's view, with no grace period for an upload event (an upload
    that arrived without the CLI: a gateway share, or another tool)."""
    settings = load_settings()
    resources = AwsResources.from_sources(settings.aws.outputs, {})
    return AwsBackend(
        settings.aws,
        AwsClients(settings.aws),
        resources=resources,
        scratch_dir=tmp_path / "work",
        receive_wait_seconds=0,
        upload_grace_seconds=0.0,
    )


def test_a_poison_upload_is_dead_lettered_with_its_reason_and_its_message_deleted(cloud, tmp_path):
    backend = event_only_backend(cloud, tmp_path)
    run_worker(backend, stages=["preprocess"], once=True, lease_seconds=30)  # drain the queue
    scan_id = "scan-00000000deadbeef"
    poison = b"not a tar at all"
    cloud.client("s3").put_object(
        Bucket=cloud.outputs["RawBucketName"],
        Key=keys.upload(scan_id),
        Body=poison,
        Metadata={"sha256": hashlib.sha256(poison).hexdigest()},
    )
    assert run_worker(backend, stages=["preprocess"], once=True, lease_seconds=30) == 1
    [job] = [job for job in backend.queue.list(stage="preprocess")
             if job.payload.get("scan_id") == scan_id]  # fmt: skip
    assert (job.state.value, job.attempts) == ("failed", 1)
    assert job.error and "tar" in job.error
    messages = [entry.message for entry in backend.queue.logs(job.job_id)]
    assert "dead-lettered (input refused)" in messages
    assert cloud.messages("PreprocessQueueUrl") == 0
    assert backend.queue.children(job.job_id) == []


class TooManyRequests:
    """Answers the first `times` Batch SubmitJob requests with HTTP 429 before they leave
    botocore, as Batch throttles."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.calls = 0

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        self.calls += 1
        if self.calls > self.times:
            return None
        body = json.dumps({"__type": "TooManyRequestsException", "message": "slow"}).encode()
        raw = type("Raw", (), {"stream": lambda self, **_: iter([body])})()
        headers = {"x-amzn-requestid": "throttled", "x-amzn-errortype": "TooManyRequestsException"}
        return AWSResponse(request.url, 429, headers, raw)


def test_a_throttled_batch_submission_is_retried(cloud, delivered, tmp_path):
    backend = event_only_backend(cloud, tmp_path)
    throttle = TooManyRequests(times=2)
    backend.clients.client("batch").meta.events.register("before-send.batch.SubmitJob", throttle)
    job_id = backend.queue.enqueue("recon", {"scan_id": delivered.scan_id, "method": "zerofill",
                                             "options": RETROSPECTIVE})  # fmt: skip
    assert throttle.calls == 3
    batch_job_id = backend.queue.get(job_id).batch_job_id
    assert cloud.batch_job(batch_job_id)["parameters"] == {"job_id": job_id}
    backend.queue.cancel(job_id)


def stopped_hard(context: StageContext) -> dict[str, Any]:
    """The test stage: the worker is stopped hard while it runs (a second Ctrl-C)."""
    raise KeyboardInterrupt


def test_a_pulled_job_handed_back_by_a_stopped_worker_is_delivered_again_at_once(
    cloud, tmp_path, monkeypatch
):
    stage = Stage("halt", f"{__name__}:stopped_hard", None, False, "stop the worker (tests)")
    monkeypatch.setitem(STAGES, stage.name, stage)
    backend = event_only_backend(cloud, tmp_path)
    job_id = backend.queue.enqueue(stage.name, {})
    with pytest.raises(KeyboardInterrupt):
        run_worker(backend, stages=[stage.name], once=True, lease_seconds=600)
    handed_back = backend.queue.get(job_id)
    assert (handed_back.state.value, handed_back.attempts) == ("queued", 1)
    # Its message is visible again now, not when the 600 s lease would have ended.
    other = event_only_backend(cloud, tmp_path / "other")
    again = other.queue.claim(stage.name, "next-worker", 60)
    assert (again.job_id, again.attempts) == (job_id, 2)
    other.queue.complete(again, {})
    assert cloud.messages("ReconQueueUrl") == 0
