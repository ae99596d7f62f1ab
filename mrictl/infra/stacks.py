"""The stacks `mrictl provision` manages, in dependency order, and the parameters it decides for
each: pure functions of the stack prefix, the command's options and the earlier stacks' outputs.

No stack imports another's exports (infra_templates/README.md): the provisioner reads each
stack's Outputs and passes them to the later stacks as Parameters (`INPUTS` says whose).
`stack_parameters` returns only what this run decides: the naming pair, those wired values, the
Lambda's code location and the options given. Every other parameter of a template keeps the
value the stack was deployed with, or the template's default on creation (mrictl/infra/
provision.py fills them in and passes all of them: moto does not split a list parameter's
default). So a flag given once (`--max-vcpus 128`) stays until it is given again.

The stack prefix is `<project>-<environment>`, split on its last `-`: the templates' ProjectName
(2-12 characters) and Environment (2-8), whose lengths keep every bucket name within 63.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mrictl.errors import ExitCode, MrictlError

STACK_ORDER = ("network", "storage", "jobs", "compute", "fsx")
OPTIONAL_STACKS = frozenset({"fsx"})  # only with --with-fsx, or once it exists
# The buckets, the key and the job table: `destroy` keeps these stacks unless --delete-data.
DATA_STACKS = frozenset({"storage", "jobs"})
# Whose outputs each stack's parameters are made of.
INPUTS: dict[str, tuple[str, ...]] = {
    "network": (),
    "storage": (),
    "jobs": ("storage",),
    "compute": ("network", "storage", "jobs"),
    "fsx": ("network", "storage"),
}
# Outputs a stack reads when that stack is deployed, though it comes later in the order: the
# compute stack mounts the fsx stack's file system. The provisioner gives these from the stack
# as deployed when the run starts, so the run after the fsx stack is created (or removed)
# updates compute.
LATER_INPUTS: dict[str, tuple[str, ...]] = {"compute": ("fsx",)}
# Resources whose replacement (or removal) loses what they hold.
DATA_RESOURCE_TYPES = frozenset(
    {
        "AWS::S3::Bucket",
        "AWS::DynamoDB::Table",
        "AWS::KMS::Key",
        "AWS::SQS::Queue",
        "AWS::FSx::FileSystem",
        "AWS::ECR::Repository",
    }
)
CAPABILITIES = ("CAPABILITY_IAM",)  # roles have generated names under a path
# CloudWatch Logs' retention periods (compute.yaml's AllowedValues; moto does not check them).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827)
LOG_RETENTION_DAYS += (2192, 2557, 2922, 3288, 3653)

# compute.yaml runs <ImageTag>-cpu (preprocess) and <ImageTag>-gpu (Batch): ImageTag is the base
# tag `mrictl image push` names, never one image's.
IMAGE_SUFFIXES = ("-cpu", "-gpu")

PROJECT_NAME = re.compile(r"^[a-z][a-z0-9-]{1,11}$")
ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9]{1,7}$")
PREFIX_RULE = (
    "the stack prefix is <project>-<environment>: a project of 2-12 lower-case letters, digits "
    "and '-' starting with a letter, and an environment of 2-8 lower-case letters and digits "
    "starting with a letter (e.g. mrictl-prod)"
)
STORAGE_WIRING = (
    "DataKeyArn",
    "RawBucketName",
    "PreprocessedBucketName",
    "ReconstructedBucketName",
    "PreprocessQueueUrl",
    "PreprocessQueueArn",
    "ReconQueueUrl",
    "ReconQueueArn",
)


@dataclass(frozen=True)
class StackPrefix:
    """`<project>-<environment>`, the prefix of every stack and resource name."""

    project: str
    environment: str

    @property
    def text(self) -> str:
        return f"{self.project}-{self.environment}"

    def stack_name(self, stack: str) -> str:
        return f"{self.text}-{stack}"

    def tags(self) -> list[dict[str, str]]:
        """The stack tags; CloudFormation puts them on every resource (the key has none else)."""
        return [
            {"Key": "project", "Value": self.project},
            {"Key": "environment", "Value": self.environment},
        ]


def parse_stack_prefix(text: str) -> StackPrefix:
    """The project and environment of a prefix; a usage error naming the rule if it does not fit."""
    project, _, environment = text.rpartition("-")
    if not PROJECT_NAME.fullmatch(project) or not ENVIRONMENT_NAME.fullmatch(environment):
        raise MrictlError(f"stack prefix {text!r} does not fit: {PREFIX_RULE}", ExitCode.USAGE)
    return StackPrefix(project, environment)


@dataclass(frozen=True)
class ProvisionOptions:
    """What `mrictl provision`'s flags ask for; None or empty: keep what is deployed."""

    with_fsx: bool = False
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    route_table_ids: tuple[str, ...] = ()
    gpu_instance_types: tuple[str, ...] = ()
    max_vcpus: int | None = None
    use_spot: bool | None = None
    archive_days: int | None = None
    log_retention_days: int | None = None
    image_tag: str | None = None
    # The read-only results share `provision gateway --results` recorded (its cache refreshed
    # by recon jobs); None keeps what is deployed.
    results_share_arn: str | None = None

    def check(self) -> None:
        """Usage errors in the combination of flags (CloudFormation checks each value)."""
        if self.vpc_id is not None and len(self.subnet_ids) < 2:
            raise MrictlError(
                "--vpc-id needs --subnet-ids: two or more of its private subnets, in different "
                "availability zones",
                ExitCode.USAGE,
            )
        if (
            self.log_retention_days is not None
            and self.log_retention_days not in LOG_RETENTION_DAYS
        ):
            raise MrictlError(
                f"--log-retention-days must be one of CloudWatch's periods: "
                f"{', '.join(map(str, LOG_RETENTION_DAYS))}",
                ExitCode.USAGE,
            )
        if self.image_tag is not None and self.image_tag.endswith(IMAGE_SUFFIXES):
            raise MrictlError(
                f"--image-tag {self.image_tag!r}: give the base tag that mrictl image push "
                "printed; the stacks add -cpu and -gpu themselves",
                ExitCode.USAGE,
            )
        if self.vpc_id is None and (self.subnet_ids or self.route_table_ids):
            raise MrictlError(
                "--subnet-ids and --route-table-ids describe an existing VPC: give --vpc-id too",
                ExitCode.USAGE,
            )


def template_path(stack: str, directory: Path) -> Path:
    """The template of a stack in a folder of templates (infra_templates/)."""
    if stack not in STACK_ORDER:
        raise ValueError(f"no such stack: {stack!r}")
    return directory / f"{stack}.yaml"


def stacks_to_provision(options: ProvisionOptions, existing: frozenset[str]) -> list[str]:
    """The stacks of this run in order: every required one, and an optional one when asked for
    or already deployed (provision never deletes a stack; destroy does)."""
    return [
        stack
        for stack in STACK_ORDER
        if stack not in OPTIONAL_STACKS or options.with_fsx or stack in existing
    ]


def stack_parameters(
    stack: str,
    prefix: StackPrefix,
    options: ProvisionOptions,
    outputs: Mapping[str, Mapping[str, str]],
    *,
    autoscale_code_key: str = "",
) -> dict[str, str]:
    """The parameters this run decides for `stack`, from `outputs[s]` of the stacks in
    `INPUTS[stack]` (a KeyError if one is missing), of those in `LATER_INPUTS[stack]` when
    present, and the options given."""
    values = {"ProjectName": prefix.project, "Environment": prefix.environment}
    given: dict[str, str | None] = {}
    if stack == "network":
        if options.vpc_id is not None:
            given = {
                "ExistingVpcId": options.vpc_id,
                "ExistingSubnetIds": ",".join(options.subnet_ids),
                "ExistingRouteTableIds": ",".join(options.route_table_ids),
            }
    elif stack == "storage":
        given = {"ArchiveDays": _number(options.archive_days)}
    elif stack == "jobs":
        values["DataKeyArn"] = outputs["storage"]["DataKeyArn"]
    elif stack == "compute":
        network, storage = outputs["network"], outputs["storage"]
        values |= {
            "SubnetIds": network["SubnetIds"],
            "WorkloadSecurityGroupId": network["WorkloadSecurityGroupId"],
            **{name: storage[name] for name in STORAGE_WIRING},
            "JobTableName": outputs["jobs"]["JobTableName"],
            "AutoscaleCodeBucket": storage["ReconstructedBucketName"],
            "AutoscaleCodeKey": autoscale_code_key,
            **fsx_mount_parameters(outputs.get("fsx", {})),
        }
        spot = None if options.use_spot is None else str(options.use_spot).lower()
        given = {
            "GpuInstanceTypes": ",".join(options.gpu_instance_types) or None,
            "MaxvCpus": _number(options.max_vcpus),
            "UseSpot": spot,
            "LogRetentionDays": _number(options.log_retention_days),
            "ImageTag": options.image_tag,
            "ResultsShareArn": options.results_share_arn,
        }
    elif stack == "fsx":
        network, storage = outputs["network"], outputs["storage"]
        values |= {
            "VpcId": network["VpcId"],
            "SubnetId": network["SubnetIds"].split(",")[0],
            "WorkloadSecurityGroupId": network["WorkloadSecurityGroupId"],
            "DataKeyArn": storage["DataKeyArn"],
            "PreprocessedBucketName": storage["PreprocessedBucketName"],
        }
    else:
        raise ValueError(f"no such stack: {stack!r}")
    return values | {key: value for key, value in given.items() if value is not None}


def fsx_mount_parameters(fsx_outputs: Mapping[str, str]) -> dict[str, str]:
    """Compute's FsxDnsName and FsxMountName: the fsx stack's file system, or both empty (no
    mount) when there is none. Always decided, so that compute follows the fsx stack."""
    dns_name = fsx_outputs.get("FileSystemDnsName", "")
    mount_name = fsx_outputs.get("FileSystemMountName", "")
    if not (dns_name and mount_name):
        return {"FsxDnsName": "", "FsxMountName": ""}
    return {"FsxDnsName": dns_name, "FsxMountName": mount_name}


def _number(value: int | None) -> str | None:
    return None if value is None else str(value)


def flat_outputs(outputs: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Every stack's outputs in one mapping, OutputKey -> value, in stack order (the keys are
    unique across the templates)."""
    flat: dict[str, str] = {}
    for stack in STACK_ORDER:
        flat.update(outputs.get(stack, {}))
    return flat
