"""Where the aws backend's buckets, queues and table are: stack outputs overlaid by variables.

A workstation knows them from what `mrictl provision` saved (`AwsSettings.outputs`, OutputKey ->
value); a container gets them as MRICTL_AWS_* variables from its task or job definition
(infra_templates/compute.yaml), which win. Only the job table is needed by every process: a Batch
container running one recon job is given neither the raw bucket nor the queues, so a missing
bucket or queue is reported when it is first needed, naming the output and the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from mrictl import keys
from mrictl.backends.base import BackendError

PROVISION_HINT = "run `mrictl provision` (or set {variable})"

# field -> (stack output key, container variable)
SOURCES: dict[str, tuple[str, str]] = {
    "job_table": ("JobTableName", "MRICTL_AWS_JOB_TABLE"),
    "raw_bucket": ("RawBucketName", "MRICTL_AWS_RAW_BUCKET"),
    "preprocessed_bucket": ("PreprocessedBucketName", "MRICTL_AWS_PREPROCESSED_BUCKET"),
    "reconstructed_bucket": ("ReconstructedBucketName", "MRICTL_AWS_RECONSTRUCTED_BUCKET"),
    "preprocess_queue_url": ("PreprocessQueueUrl", "MRICTL_AWS_PREPROCESS_QUEUE_URL"),
    "recon_queue_url": ("ReconQueueUrl", "MRICTL_AWS_RECON_QUEUE_URL"),
    "batch_job_queue": ("BatchJobQueueArn", "MRICTL_AWS_BATCH_JOB_QUEUE"),
    "recon_job_definition": ("ReconJobDefinitionArn", "MRICTL_AWS_RECON_JOB_DEFINITION"),
    "train_job_definition": ("TrainJobDefinitionArn", "MRICTL_AWS_TRAIN_JOB_DEFINITION"),
    "recon_log_group": ("ReconLogGroupName", "MRICTL_AWS_RECON_LOG_GROUP"),
    "train_log_group": ("TrainLogGroupName", "MRICTL_AWS_TRAIN_LOG_GROUP"),
    # Not a stack output: `mrictl provision gateway --results` records it (refresh.py reads it).
    "results_share_arn": ("ResultsShareArn", "MRICTL_AWS_RESULTS_SHARE_ARN"),
}
# Stages run as AWS Batch jobs where the Batch job queue and the stage's job definition are
# known -> the fields naming that definition and the log group of its containers.
BATCH_STAGES = {
    "recon": ("recon_job_definition", "recon_log_group"),
    "train": ("train_job_definition", "train_log_group"),
}

# Key area (the first component of every key, mrictl.keys) -> the field naming its bucket.
AREA_BUCKETS = {
    keys.UPLOADS: "raw_bucket",
    keys.PREPROCESSED: "preprocessed_bucket",
    keys.RECONSTRUCTED: "reconstructed_bucket",
    keys.WEIGHTS: "reconstructed_bucket",
    keys.DEPLOY: "reconstructed_bucket",
}
PREPROCESS_STAGE = "preprocess"


def _missing(field_name: str) -> str:
    output, variable = SOURCES[field_name]
    return f"{output} ({variable})"


@dataclass(frozen=True)
class AwsResources:
    """Names and URLs of what the stacks made; None where this process was not told."""

    job_table: str
    raw_bucket: str | None = None
    preprocessed_bucket: str | None = None
    reconstructed_bucket: str | None = None
    preprocess_queue_url: str | None = None
    recon_queue_url: str | None = None
    batch_job_queue: str | None = None
    recon_job_definition: str | None = None
    train_job_definition: str | None = None
    recon_log_group: str | None = None
    train_log_group: str | None = None
    results_share_arn: str | None = None

    @classmethod
    def from_sources(cls, outputs: Mapping[str, str], environ: Mapping[str, str]) -> AwsResources:
        """The stack outputs (`mrictl provision`), overlaid by the MRICTL_AWS_* variables."""
        found = {}
        for name, (output, variable) in SOURCES.items():
            value = environ.get(variable) or outputs.get(output)
            found[name] = value or None
        if not found["job_table"]:
            absent = [_missing(name) for name, value in found.items() if not value][:6]
            raise BackendError(
                "the aws backend is not available here: its resources are unknown (no "
                f"{', '.join(absent)}): run `mrictl provision` for this stack prefix, or set "
                "the MRICTL_AWS_* variables"
            )
        return cls(**found)

    def environment(self) -> dict[str, str]:
        """The MRICTL_AWS_* variables that give another process these same resources."""
        return {
            SOURCES[item.name][1]: value
            for item in fields(self)
            if (value := getattr(self, item.name))
        }

    def require(self, field_name: str) -> str:
        value = getattr(self, field_name)
        if not value:
            output, variable = SOURCES[field_name]
            hint = PROVISION_HINT.format(variable=variable)
            raise BackendError(f"the aws backend does not know its {output} here: {hint}")
        return str(value)

    def bucket_for(self, key: str) -> str:
        """The bucket holding `key` (a validated key): its area decides."""
        area = key.split("/", 1)[0]
        field_name = AREA_BUCKETS.get(area)
        if field_name is None:
            raise ValueError(f"no bucket holds the key area {area!r} ({key!r})")
        return self.require(field_name)

    def buckets_for_prefix(self, prefix: str) -> dict[str, list[str]]:
        """Bucket -> the areas in it that keys starting with `prefix` may belong to."""
        found: dict[str, list[str]] = {}
        for area, field_name in AREA_BUCKETS.items():
            head = f"{area}/"
            if head.startswith(prefix) or prefix.startswith(head):
                found.setdefault(self.require(field_name), []).append(area)
        return found

    def queue_for(self, stage: str) -> str | None:
        """The SQS queue delivering jobs of `stage` (None where this process was not told):
        preprocess jobs (and raw-upload events) on one, every later stage on the other."""
        return self.preprocess_queue_url if stage == PREPROCESS_STAGE else self.recon_queue_url

    def batch_definition_for(self, stage: str) -> str | None:
        """The Batch job definition that runs `stage`, where this process may submit it (the
        job queue and the definition both known); None: the stage goes through SQS."""
        if stage not in BATCH_STAGES or not self.batch_job_queue:
            return None
        return getattr(self, BATCH_STAGES[stage][0])

    def log_group_for(self, stage: str) -> str | None:
        """The log group of `stage`'s Batch containers, where this process was told it."""
        return getattr(self, BATCH_STAGES[stage][1]) if stage in BATCH_STAGES else None

    def require_queue(self, stage: str) -> str:
        return self.require(
            "preprocess_queue_url" if stage == PREPROCESS_STAGE else "recon_queue_url"
        )
