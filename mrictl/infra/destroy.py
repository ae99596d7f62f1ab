"""Delete the stacks of one prefix (`mrictl provision destroy`), keeping or deleting their data.

Stacks are deleted in reverse order. storage and jobs (the buckets, the key, the job table) are
kept unless `delete_data`: then every object version and delete marker is removed from the
buckets, the stacks are deleted (their data resources are `Retain`, so they outlive the stacks)
and the buckets, the table (its deletion protection turned off first) and the key (scheduled,
7 days: the least KMS allows) are deleted by name. The image repository is emptied before
compute is deleted (CloudFormation cannot delete a repository that holds images; images are
rebuilt from the source). The stacks still deployed stay in the settings file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrictl.errors import ExitCode, MrictlError
from mrictl.infra import stack_settings
from mrictl.infra.cloudformation import (
    POLL_SECONDS,
    Account,
    EventHandler,
    Runner,
    StackResult,
    aws_errors,
    error_code,
    ignore_event,
    stack_outputs,
)
from mrictl.infra.stacks import DATA_RESOURCE_TYPES, DATA_STACKS, STACK_ORDER, StackPrefix

if TYPE_CHECKING:
    from mrictl.backends import AwsClients

KEY_DELETION_DAYS = 7
ACCESS_LOG_BUCKET = "AccessLogBucket"  # emptied and deleted last: the others log into it


@dataclass(frozen=True)
class DestroyPlan:
    """What `destroy` deletes, in order, and what it keeps."""

    prefix: StackPrefix
    region: str | None
    delete: tuple[str, ...]  # the stacks, in the order they go
    keep: tuple[str, ...]  # deployed data stacks kept (no --delete-data)
    data: tuple[str, ...] = ()  # the data resources deleted with --delete-data

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack_prefix": self.prefix.text,
            "region": self.region,
            "delete": list(self.delete),
            "keep": list(self.keep),
            "data": list(self.data),
        }


def _data_resources(account: Account, stacks: list[str]) -> list[dict[str, Any]]:
    return [
        {**resource, "stack": stack}
        for stack in stacks
        for resource in account.resources(stack)
        if resource.get("ResourceType") in DATA_RESOURCE_TYPES
        and resource["ResourceType"] != "AWS::SQS::Queue"  # deleted with their stack
    ]


def _describe_data(resource: Mapping[str, Any]) -> str:
    kind, name = resource["ResourceType"], resource["PhysicalResourceId"]
    if kind == "AWS::S3::Bucket":
        return f"bucket {name} (every object version)"
    if kind == "AWS::DynamoDB::Table":
        return f"table {name}"
    if kind == "AWS::KMS::Key":
        return f"key {name} (scheduled for deletion in {KEY_DELETION_DAYS} days)"
    return f"{kind} {name}"


def plan_destroy(clients: AwsClients, prefix: StackPrefix, *, delete_data: bool) -> DestroyPlan:
    """The deployed stacks that `destroy` deletes (reverse order) and those it keeps."""
    with aws_errors():
        account = Account(clients, prefix, None)
        deployed = [s for s in STACK_ORDER if account.describe(s) is not None]
        delete = [s for s in reversed(deployed) if delete_data or s not in DATA_STACKS]
        keep = [s for s in deployed if s not in delete]
        data = _data_resources(account, [s for s in delete if s in DATA_STACKS])
        return DestroyPlan(
            prefix,
            account.region,
            tuple(delete),
            tuple(keep),
            tuple(_describe_data(resource) for resource in data),
        )


def _empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object version and delete marker; how many were deleted."""
    deleted = 0
    while True:
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=1000)
        objects = [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for item in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if not objects:
            return deleted
        answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        if answer.get("Errors"):
            error = answer["Errors"][0]
            raise MrictlError(
                f"bucket {bucket}: cannot delete {error.get('Key')}: {error.get('Message')}",
                ExitCode.BACKEND,
            )
        deleted += len(objects)


def _delete_bucket(s3: Any, bucket: str, attempts: int = 3) -> None:
    """Empty and delete a bucket; again if objects arrived meanwhile (late access logs)."""
    for attempt in range(attempts):
        _empty_bucket(s3, bucket)
        try:
            s3.delete_bucket(Bucket=bucket)
            return
        except Exception as error:
            code = error_code(error)
            if code == "NoSuchBucket":
                return
            if code != "BucketNotEmpty" or attempt == attempts - 1:
                raise


def _delete_table(dynamodb: Any, table: str) -> None:
    try:
        dynamodb.delete_table(TableName=table)
    except Exception as error:
        if error_code(error) != "ResourceNotFoundException":
            raise


def _schedule_key_deletion(kms: Any, key: str) -> None:
    """Schedule the key's deletion (KMS never deletes a key at once); one already pending is
    left as it is."""
    try:
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=KEY_DELETION_DAYS)
    except Exception as error:
        if error_code(error) != "KMSInvalidStateException":
            raise


def _empty_repository(ecr: Any, repository: str) -> None:
    """Delete every image of an ECR repository (CloudFormation deletes only empty ones)."""
    try:
        pages = ecr.get_paginator("list_images").paginate(repositoryName=repository)
        images = [image for page in pages for image in page.get("imageIds", [])]
    except Exception as error:
        if error_code(error) == "RepositoryNotFoundException":
            return
        raise
    for start in range(0, len(images), 100):
        ecr.batch_delete_image(repositoryName=repository, imageIds=images[start : start + 100])


def destroy(
    clients: AwsClients,
    plan: DestroyPlan,
    *,
    templates: Path | None = None,
    on_event: EventHandler = ignore_event,
    save_to: Path | None = None,
    poll_s: float = POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[StackResult]:
    """Delete the plan's stacks in its order (and, for data stacks, their data); what happened.
    The settings file keeps the stacks still deployed (and goes when none is, unless it holds
    the gateway's record)."""
    results: list[StackResult] = []
    account = None
    try:
        with aws_errors():
            account = Account(clients, plan.prefix, templates)
            runner = Runner(account, on_event, poll_s, sleep)
            for stack in plan.delete:
                deployed = account.describe(stack)
                if deployed is None:
                    continue
                resources = account.resources(stack)
                by_type: dict[str, list[dict[str, Any]]] = {}
                for resource in resources:
                    by_type.setdefault(resource["ResourceType"], []).append(resource)
                for repository in by_type.get("AWS::ECR::Repository", []):
                    _empty_repository(clients.client("ecr"), repository["PhysicalResourceId"])
                buckets = sorted(
                    by_type.get("AWS::S3::Bucket", []),
                    key=lambda r: r["LogicalResourceId"] == ACCESS_LOG_BUCKET,
                )
                for bucket in buckets:
                    _empty_bucket(clients.client("s3"), bucket["PhysicalResourceId"])
                for table in by_type.get("AWS::DynamoDB::Table", []):
                    clients.client("dynamodb").update_table(
                        TableName=table["PhysicalResourceId"], DeletionProtectionEnabled=False
                    )
                final = runner.delete(stack, deployed)
                # Retained (DeletionPolicy: Retain) resources outlive their stack.
                for bucket in buckets:
                    _delete_bucket(clients.client("s3"), bucket["PhysicalResourceId"])
                for table in by_type.get("AWS::DynamoDB::Table", []):
                    _delete_table(clients.client("dynamodb"), table["PhysicalResourceId"])
                for key in by_type.get("AWS::KMS::Key", []):
                    _schedule_key_deletion(clients.client("kms"), key["PhysicalResourceId"])
                results.append(
                    StackResult(
                        stack, plan.prefix.stack_name(stack), "deleted", final["StackStatus"]
                    )
                )
            for stack in plan.keep:
                kept = account.describe(stack)
                if kept is not None:
                    name = plan.prefix.stack_name(stack)
                    results.append(
                        StackResult(stack, name, "kept", kept["StackStatus"], stack_outputs(kept))
                    )
    finally:
        if save_to is not None and account is not None:
            # Best effort after a failure: the failure itself is what the operator must see.
            with contextlib.suppress(MrictlError), aws_errors():
                remaining = {s: d for s in STACK_ORDER if (d := account.describe(s)) is not None}
                stack_settings.save_stacks(save_to, plan.prefix, account.region, remaining)
    return results
