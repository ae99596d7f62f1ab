"""AWS Batch for recon and train jobs: submit one, stop one, say why one waits, read its logs.

A job of a stage with a Batch job definition here (`AwsResources.batch_definition_for`) is run
by a Batch job, `jobName=<stage>-<job_id>`, `parameters={"job_id": ...}`: the definition's
command is `mrictl worker run --job Ref::job_id`, and its retry strategy (only host failures,
status reasons "Host EC2*") and timeout apply. The job record stays the fence: a second
container for the same job finds it claimed or final (exit 6) and does nothing.

Batch's states add to the record's, never replace them: a queued record's Batch job may be
SUBMITTED, PENDING, RUNNABLE (waiting for an instance: the reason, where AWS tells it, comes
from the job's `statusReason` and its compute environments), STARTING or RUNNING (the
container is starting the worker); a Batch job that ended while its record is still queued
ran nothing, and will not (`mrictl recon retry` submits another).

**Large volumes: array jobs.** A recon job whose preprocessed volume has more slices than
`slices_per_child` (the preprocessed object's `slices` metadata, `keys.SLICES_METADATA`; a
volume without it is not split) runs as two Batch jobs: an array job of
ceil(slices / slices_per_child) children, `jobName=recon-<job_id>-shards`, each running
`mrictl worker run --job ID --shard` (its index from AWS_BATCH_JOB_ARRAY_INDEX: its slice range
to `keys.shard`; children hold no lease), and the assembler, the definition's own command,
`dependsOn` the array job: it claims the job, assembles the shards and publishes the outputs as
one job would. The plan (`keys.ShardPlan`) is written into the job's payload (`shards`) before
either is submitted, so every container reads the same one. While the array runs, `waiting_reason`
says how far it is (its `arrayProperties.statusSummary`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mrictl import keys
from mrictl.backends.aws.errors import aws_error, error_code, translated
from mrictl.backends.aws.resources import AwsResources
from mrictl.backends.base import BackendError, LogEntry
from mrictl.errors import ExitCode, MrictlError

CANCEL_REASON = "cancelled by operator"
DEFAULT_LOG_GROUP = "/aws/batch/job"  # Batch's own, for a definition that names none
MAX_LOG_EVENTS = 2000  # per log stream, the first ones: a job's own log is short
FINAL_STATUSES = ("SUCCEEDED", "FAILED")
# The categories of a RUNNABLE job's statusReason (AWS Batch, "Jobs stuck in RUNNABLE"), said
# plainly; the text AWS gave follows in parentheses.
RUNNABLE_REASONS = {
    "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY": (
        "no capacity: EC2 cannot supply the compute environments' GPU instance types now"
    ),
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT": (
        "no instance type of the compute environments fits the job's vCPUs, memory or GPUs"
    ),
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE": (
        "the compute environments' MaxvCpus is below what the job needs"
    ),
    "MISCONFIGURATION:EC2_INSTANCE_CONFIGURATION_UNSUPPORTED": (
        "the GPU instance type (or its image) is not offered here"
    ),
    "MISCONFIGURATION:SERVICE_ROLE_PERMISSIONS": "AWS Batch's service role lacks a permission",
    "ACTION_REQUIRED": "the compute environments need attention",
}
# A compute environment's statusReason worth repeating even while it is VALID and ENABLED.
ENVIRONMENT_HINTS = ("limit", "capacity", "insufficient", "quota")
DEFAULT_SLICES_PER_CHILD = 4  # aws.slices_per_array_child when not set
MAX_ARRAY_SIZE = 10000  # AWS Batch's limit on an array job's children
SPLIT_STAGE = "recon"  # the stage whose slices are reconstructed independently
SHARD_FLAG = "--shard"  # `mrictl worker run --job ID --shard`: an array child's command


def slices_per_child_setting(value: str | int | None) -> int:
    """`aws.slices_per_array_child` as a count: DEFAULT_SLICES_PER_CHILD when not set, 0 to
    never split; anything else is a usage error naming the setting."""
    if value is None or value == "":
        return DEFAULT_SLICES_PER_CHILD
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise MrictlError(
            f"aws.slices_per_array_child must be a whole number >= 0 (0: never split), "
            f"not {text!r}",
            ExitCode.USAGE,
        )
    return int(text)


# The states of an array job's children, in the order a summary names them.
ARRAY_STATES = ("SUCCEEDED", "RUNNING", "STARTING", "RUNNABLE", "PENDING", "SUBMITTED", "FAILED")


def shard_command(job_id: str) -> list[str]:
    """An array child's command (the job definition's, with the shard flag)."""
    return ["mrictl", "worker", "run", "--job", job_id, SHARD_FLAG]



def _explained(reason: str) -> str:
    category = reason.split(" - ", 1)[0].strip()
    plain = RUNNABLE_REASONS.get(category)
    return f"{plain} ({reason})" if plain else reason


class BatchService:
    """The Batch and CloudWatch Logs calls of the aws backend; clients made on first use."""

    def __init__(
        self,
        client_for: Callable[[str], Any],
        resources: AwsResources,
        *,
        slices_per_child: int = DEFAULT_SLICES_PER_CHILD,
    ) -> None:
        self._client_for = client_for
        self.resources = resources
        self.slices_per_child = slices_per_child

    @property
    def batch(self) -> Any:
        return self._client_for("batch")

    def runs(self, stage: str) -> bool:
        """Whether this process submits `stage`'s jobs to Batch (else they go through SQS)."""
        return self.resources.batch_definition_for(stage) is not None

    def submit(self, stage: str, job_id: str) -> str:
        """Submit the Batch job that runs `job_id`; its Batch job id."""
        with translated(f"submitting {job_id} to AWS Batch"):
            response = self.batch.submit_job(
                jobName=f"{stage}-{job_id}",
                jobQueue=self.resources.batch_job_queue,
                jobDefinition=self.resources.batch_definition_for(stage),
                parameters={"job_id": job_id},
            )
        return str(response["jobId"])

    # Large volumes ------------------------------------------------------------------------------

    def plan_for(self, stage: str, payload: Mapping[str, Any]) -> keys.ShardPlan | None:
        """The array plan of a job, or None to run it as one Batch job: only recon jobs, not
        those applying a train job's weights (its networks are per slice of its whole volume),
        and only volumes of more than `slices_per_child` slices whose count the preprocessed
        object records."""
        per_shard = self.slices_per_child
        scan_id = payload.get("scan_id")
        if stage != SPLIT_STAGE or per_shard < 1 or not keys.is_scan_id(scan_id):
            return None
        if (payload.get("options") or {}).get("weights_job"):
            return None
        slices = self.volume_slices(str(scan_id))
        if slices is None or slices <= per_shard:
            return None
        per_shard = max(per_shard, math.ceil(slices / MAX_ARRAY_SIZE))
        return keys.ShardPlan(slices, per_shard)

    def volume_slices(self, scan_id: str) -> int | None:
        """The slice count the preprocessed object's metadata records; None when it records
        none (preprocessed by an earlier version) or is not there yet."""
        key = keys.preprocessed(scan_id)
        try:
            head = self._client_for("s3").head_object(
                Bucket=self.resources.bucket_for(key), Key=key
            )
        except ClientError as error:
            if error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise aws_error(f"reading the size of {scan_id}", error, service="S3") from None
        except BotoCoreError as error:
            raise aws_error(f"reading the size of {scan_id}", error, service="S3") from None
        text = str((head.get("Metadata") or {}).get(keys.SLICES_METADATA, ""))
        return int(text) if text.isdigit() and int(text) > 0 else None

    def submit_array(self, stage: str, job_id: str, plan: keys.ShardPlan) -> tuple[str, str]:
        """Submit the array job of `plan` and the assembler that depends on it; (array job id,
        assembler's id). An assembler that cannot be submitted stops the array job again."""
        with translated(f"submitting {job_id}'s array job to AWS Batch"):
            array = self.batch.submit_job(
                jobName=f"{stage}-{job_id}-shards",
                jobQueue=self.resources.batch_job_queue,
                jobDefinition=self.resources.batch_definition_for(stage),
                parameters={"job_id": job_id},
                arrayProperties={"size": plan.count},
                containerOverrides={"command": shard_command(job_id)},
            )
        array_id = str(array["jobId"])
        try:
            with translated(f"submitting {job_id}'s assembler to AWS Batch"):
                assembler = self.batch.submit_job(
                    jobName=f"{stage}-{job_id}",
                    jobQueue=self.resources.batch_job_queue,
                    jobDefinition=self.resources.batch_definition_for(stage),
                    parameters={"job_id": job_id},
                    dependsOn=[{"jobId": array_id}],
                )
        except BackendError:
            with contextlib.suppress(BackendError):
                self.terminate(array_id)
            raise
        return array_id, str(assembler["jobId"])

    def terminate(self, batch_job_id: str) -> None:
        """Stop a Batch job (cancelled if it has not started, its container sent SIGTERM if it
        has); Batch never retries a terminated job, whatever the retry strategy."""
        with translated(f"stopping AWS Batch job {batch_job_id}"):
            self.batch.terminate_job(jobId=batch_job_id, reason=CANCEL_REASON)

    def describe(self, batch_job_id: str) -> dict[str, Any] | None:
        """DescribeJobs of one job; None when Batch no longer knows it (kept about a week)."""
        with translated(f"describing AWS Batch job {batch_job_id}"):
            found = self.batch.describe_jobs(jobs=[batch_job_id]).get("jobs") or []
        return found[0] if found else None

    def is_over(self, batch_job_id: str) -> bool:
        """Whether the Batch job ended (or is gone): it will run nothing more."""
        found = self.describe(batch_job_id)
        return found is None or found.get("status") in FINAL_STATUSES

    # Why a queued job waits --------------------------------------------------------------------

    def array_waiting_reason(
        self, array_job_id: str, assembler_id: str, plan: keys.ShardPlan
    ) -> str:
        """How far a split job's array job is (slices done, from Batch's count of its
        children), or, once it succeeded, why the assembler waits."""
        found = self.describe(array_job_id)
        name = f"AWS Batch array job {array_job_id}"
        if found is None:
            return f"{name} is no longer known to Batch: `mrictl recon retry` submits another"
        status = str(found.get("status"))
        if status == "SUCCEEDED":
            return f"all {plan.slices} slices reconstructed; " + self.waiting_reason(assembler_id)
        summary = (found.get("arrayProperties") or {}).get("statusSummary") or {}
        counts = {state: int(summary.get(state) or 0) for state in summary}
        done = counts.get("SUCCEEDED", 0)
        if status == "FAILED":
            failed = counts.get("FAILED", 0)
            return (
                f"{name} ended FAILED ({failed} of {plan.count} shards failed): its assembler "
                f"{assembler_id} will not run the job; `mrictl recon retry` submits both again"
            )
        parts = [f"slices {plan.slices_done_at_least(done)}/{plan.slices}"]
        parts += [f"{counts[state]} {state}" for state in ARRAY_STATES if counts.get(state)]
        reason = f"{name}: {', '.join(parts)} (shards of {plan.per_shard} slices)"
        if counts.get("RUNNABLE"):
            waits = ["RUNNABLE shards wait for an instance"]
            if found.get("statusReason"):
                waits.append(_explained(str(found["statusReason"])))
            waits += self._queue_reasons(str(found.get("jobQueue") or ""))
            reason += "; " + "; ".join(waits)
        return f"{reason}; its assembler {assembler_id} waits for it"

    def waiting_reason(self, batch_job_id: str) -> str:
        found = self.describe(batch_job_id)
        name = f"AWS Batch job {batch_job_id}"
        if found is None:
            return f"{name} is no longer known to Batch: `mrictl recon retry` submits another"
        status = str(found.get("status"))
        reason = found.get("statusReason")
        if status in FINAL_STATUSES:
            why = f" ({reason})" if reason else ""
            return (
                f"{name} ended {status}{why} without running the job: nothing will run it now; "
                "`mrictl recon retry` submits another"
            )
        if status == "RUNNABLE":
            parts = [f"{name} is RUNNABLE: waiting for an instance"]
            if reason:
                parts.append(_explained(str(reason)))
            parts += self._queue_reasons(str(found.get("jobQueue") or ""))
            return "; ".join(parts)
        if status == "STARTING":
            return f"{name} is STARTING: an instance was found, the container is starting"
        if status == "RUNNING":
            return f"{name} is RUNNING: its container is starting the worker"
        return f"{name} is {status}" + (f": {reason}" if reason else "")

    def _queue_reasons(self, job_queue: str) -> list[str]:
        """What the job queue and its compute environments say about placing jobs."""
        if not job_queue:
            return []
        with translated("describing the AWS Batch job queue"):
            queues = self.batch.describe_job_queues(jobQueues=[job_queue]).get("jobQueues") or []
        reasons = []
        environments = []
        for queue in queues:
            if queue.get("state") != "ENABLED" or queue.get("status") not in (None, "VALID"):
                reasons.append(self._not_ready("job queue", queue, "jobQueueName"))
            order = sorted(queue.get("computeEnvironmentOrder") or [], key=lambda e: e["order"])
            environments += [entry["computeEnvironment"] for entry in order]
        if not environments:
            return reasons
        with translated("describing the AWS Batch compute environments"):
            described = self.batch.describe_compute_environments(
                computeEnvironments=environments
            ).get("computeEnvironments", [])
        for environment in described:
            status_reason = str(environment.get("statusReason") or "")
            resources = environment.get("computeResources") or {}
            desired, ceiling = resources.get("desiredvCpus"), resources.get("maxvCpus")
            name = environment.get("computeEnvironmentName")
            if environment.get("state") != "ENABLED" or environment.get("status") != "VALID":
                reasons.append(self._not_ready("compute environment", environment, None))
            elif any(hint in status_reason.lower() for hint in ENVIRONMENT_HINTS):
                reasons.append(f"compute environment {name}: {status_reason}")
            elif desired is not None and ceiling is not None and desired >= ceiling:
                reasons.append(
                    f"compute environment {name} is at its ceiling ({desired} of MaxvCpus "
                    f"{ceiling} in use)"
                )
        return reasons

    @staticmethod
    def _not_ready(kind: str, described: Mapping[str, Any], name_field: str | None) -> str:
        name = described.get(name_field or "computeEnvironmentName")
        state, status = described.get("state"), described.get("status")
        reason = described.get("statusReason")
        return f"{kind} {name} is {state}/{status}" + (f": {reason}" if reason else "")

    # Container logs ----------------------------------------------------------------------------

    def log_entries(self, job_id: str, stage: str, batch_job_id: str) -> list[LogEntry]:
        """The lines each attempt's container wrote to CloudWatch Logs, attempt by attempt;
        `worker_id` names the log stream."""
        found = self.describe(batch_job_id)
        if found is None:
            return []
        container = found.get("container") or {}
        options = (container.get("logConfiguration") or {}).get("options") or {}
        group = (
            options.get("awslogs-group") or self.resources.log_group_for(stage) or DEFAULT_LOG_GROUP
        )
        streams: list[str] = []
        for attempt in found.get("attempts") or []:
            stream = (attempt.get("container") or {}).get("logStreamName")
            if stream and stream not in streams:
                streams.append(stream)
        if container.get("logStreamName") and container["logStreamName"] not in streams:
            streams.append(container["logStreamName"])
        entries = []
        for number, stream in enumerate(streams, start=1):
            entries += [
                LogEntry(
                    job_id,
                    event["timestamp"] / 1000.0,
                    number,
                    stream,
                    str(event["message"]).rstrip("\n"),
                )
                for event in self._events(group, stream)
            ]
        return entries

    def _events(self, group: str, stream: str) -> list[dict[str, Any]]:
        logs = self._client_for("logs")
        events: list[dict[str, Any]] = []
        token = None
        while len(events) < MAX_LOG_EVENTS:
            arguments: dict[str, Any] = {
                "logGroupName": group,
                "logStreamName": stream,
                "startFromHead": True,
            }
            if token is not None:
                arguments["nextToken"] = token
            try:
                page = logs.get_log_events(**arguments)
            except ClientError as error:
                if error_code(error) == "ResourceNotFoundException":
                    return events  # the container has written nothing yet
                raise aws_error(f"reading log stream {stream}", error) from None
            except BotoCoreError as error:
                raise aws_error(f"reading log stream {stream}", error) from None
            events += page.get("events") or []
            if page.get("nextForwardToken") in (None, token):
                break
            token = page["nextForwardToken"]
        return events[:MAX_LOG_EVENTS]
