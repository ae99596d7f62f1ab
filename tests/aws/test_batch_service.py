"""Why a queued job waits, as AWS Batch tells it: what moto's Batch never says (its jobs are
SUCCEEDED when submitted), so Batch's answers come from botocore's Stubber, in the shapes the
Batch API documents (statusReason categories from "Jobs stuck in RUNNABLE")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from mrictl.backends.aws import AwsResources, BatchService
from mrictl.backends.aws.batch import CANCEL_REASON

QUEUE = "arn:aws:batch:us-east-1:123456789012:job-queue/mrictl-prod-gpu"
ONDEMAND = "arn:aws:batch:us-east-1:123456789012:compute-environment/mrictl-prod-gpu-ondemand"
SPOT = "arn:aws:batch:us-east-1:123456789012:compute-environment/mrictl-prod-gpu-spot"
JOB = "4c6bd3a9-9c52-4e0b-9a0e-0e5d1f1e6a11"
RESOURCES = AwsResources(
    job_table="mrictl-prod-jobs",
    batch_job_queue=QUEUE,
    recon_job_definition="mrictl-prod-recon",
)


@pytest.fixture
def batch() -> Iterator[tuple[BatchService, Stubber]]:
    client = boto3.client(
        "batch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stubber:
        yield BatchService(lambda service: client, RESOURCES), stubber
        stubber.assert_no_pending_responses()


def described(status: str, reason: str | None = None) -> dict[str, Any]:
    job: dict[str, Any] = {
        "jobName": "recon-job-0123456789abcdef",
        "jobId": JOB,
        "jobQueue": QUEUE,
        "status": status,
        "startedAt": 0,
        "jobDefinition": "arn:aws:batch:us-east-1:123456789012:job-definition/mrictl-prod-recon:1",
    }
    if reason is not None:
        job["statusReason"] = reason
    return {"jobs": [job]}


def environment(arn: str, *, status: str = "VALID", state: str = "ENABLED", reason: str = "",
                desired: int = 0, ceiling: int = 64) -> dict[str, Any]:  # fmt: skip
    return {
        "computeEnvironmentName": arn.rsplit("/", 1)[1],
        "computeEnvironmentArn": arn,
        "state": state,
        "status": status,
        "statusReason": reason or "ComputeEnvironment Healthy",
        "computeResources": {
            "type": "EC2",
            "minvCpus": 0,
            "maxvCpus": ceiling,
            "desiredvCpus": desired,
            "subnets": ["subnet-1"],
            "instanceRole": "role",
        },
    }


def expect_queue(stubber: Stubber, *environments: dict[str, Any]) -> None:
    order = [
        {"order": number, "computeEnvironment": e["computeEnvironmentArn"]}
        for number, e in enumerate(environments, start=1)
    ]
    stubber.add_response(
        "describe_job_queues",
        {
            "jobQueues": [
                {
                    "jobQueueName": "mrictl-prod-gpu",
                    "jobQueueArn": QUEUE,
                    "state": "ENABLED",
                    "status": "VALID",
                    "priority": 1,
                    "computeEnvironmentOrder": order,
                }
            ]
        },
        {"jobQueues": [QUEUE]},
    )
    stubber.add_response(
        "describe_compute_environments",
        {"computeEnvironments": list(environments)},
        {"computeEnvironments": [e["computeEnvironmentArn"] for e in environments]},
    )


def test_runnable_without_capacity_says_so_in_plain_words_then_in_aws_words(batch):
    service, stubber = batch
    reason = (
        "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity "
        "requested for instance type [g5.xlarge]"
    )
    stubber.add_response("describe_jobs", described("RUNNABLE", reason), {"jobs": [JOB]})
    expect_queue(stubber, environment(ONDEMAND))
    said = service.waiting_reason(JOB)
    assert said.startswith(f"AWS Batch job {JOB} is RUNNABLE: waiting for an instance; ")
    assert "no capacity: EC2 cannot supply" in said and reason in said


def test_runnable_because_no_instance_type_fits_the_job(batch):
    service, stubber = batch
    reason = (
        "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement "
        "(vCPU/memory/GPU) is higher than that can be met by the CE(s) attached to the job queue."
    )
    stubber.add_response("describe_jobs", described("RUNNABLE", reason), {"jobs": [JOB]})
    expect_queue(stubber, environment(ONDEMAND))
    assert "no instance type of the compute environments fits" in service.waiting_reason(JOB)


def test_runnable_at_a_vcpu_limit_names_the_compute_environment(batch):
    service, stubber = batch
    stubber.add_response("describe_jobs", described("RUNNABLE"), {"jobs": [JOB]})
    limit = (
        "CLIENT_ERROR - You have requested more vCPU capacity than your current vCPU limit of "
        "0 allows for the instance bucket that the specified instance type belongs to."
    )
    expect_queue(
        stubber,
        environment(SPOT, status="INVALID", reason="CLIENT_ERROR - spot fleet role missing"),
        environment(ONDEMAND, reason=limit),
    )
    said = service.waiting_reason(JOB)
    assert "compute environment mrictl-prod-gpu-spot is ENABLED/INVALID: CLIENT_ERROR" in said
    assert f"compute environment mrictl-prod-gpu-ondemand: {limit}" in said


def test_runnable_at_the_stacks_own_ceiling(batch):
    service, stubber = batch
    stubber.add_response("describe_jobs", described("RUNNABLE"), {"jobs": [JOB]})
    expect_queue(stubber, environment(ONDEMAND, desired=64, ceiling=64))
    assert "at its ceiling (64 of MaxvCpus 64 in use)" in service.waiting_reason(JOB)


def test_a_batch_job_that_ended_while_the_record_waits_ran_nothing(batch):
    service, stubber = batch
    reason = "CannotPullContainerError: pull image manifest has been retried 5 time(s)"
    stubber.add_response("describe_jobs", described("FAILED", reason), {"jobs": [JOB]})
    said = service.waiting_reason(JOB)
    assert f"ended FAILED ({reason}) without running the job" in said
    assert "`mrictl recon retry` submits another" in said
    stubber.add_response("describe_jobs", {"jobs": []}, {"jobs": [JOB]})
    assert "no longer known to Batch" in service.waiting_reason(JOB)


def test_starting_says_the_container_is_on_its_way(batch):
    service, stubber = batch
    stubber.add_response("describe_jobs", described("STARTING"), {"jobs": [JOB]})
    assert service.waiting_reason(JOB).endswith("is STARTING: an instance was found, the "
                                                "container is starting")  # fmt: skip


def test_submit_passes_only_the_job_id_and_terminate_says_it_was_an_operator(batch):
    service, stubber = batch
    stubber.add_response(
        "submit_job",
        {"jobName": "recon-job-0123456789abcdef", "jobId": JOB, "jobArn": f"arn:{JOB}"},
        {
            "jobName": "recon-job-0123456789abcdef",
            "jobQueue": QUEUE,
            "jobDefinition": "mrictl-prod-recon",
            "parameters": {"job_id": "job-0123456789abcdef"},
        },
    )
    assert service.submit("recon", "job-0123456789abcdef") == JOB
    stubber.add_response("terminate_job", {}, {"jobId": JOB, "reason": CANCEL_REASON})
    service.terminate(JOB)
    assert CANCEL_REASON == "cancelled by operator"
    assert service.runs("recon") and not service.runs("train") and not service.runs("preprocess")
