"""The scaling Lambda: sets the preprocess service's task count from the preprocess queue's depth.

compute.yaml runs `mrictl.autoscale.handler` on a schedule (one run at a time). Its zip holds
only this module and `mrictl/__init__.py` (mrictl/infra/lambda_package.py), so it imports
nothing of mrictl and nothing but the standard library at import time; boto3 (which the Lambda
runtime provides) is imported when the handler runs.

The rule (`desired_count`): every `messages_per_task` messages, waiting or being worked on, ask
for one task, between `min_tasks` and `max_tasks`. More tasks are started at once. Fewer are
set only when the service has been left alone for the cooldown (a queue that drains and fills
again within minutes keeps its tasks), and never fewer than the messages in flight, since each
in-flight message is held by a busy worker (one job at a time each). ECS chooses which tasks
stop; a job whose worker is stopped is taken over when its lease expires.

Environment (set by compute.yaml): MRICTL_AUTOSCALE_QUEUE_URL, MRICTL_AUTOSCALE_CLUSTER,
MRICTL_AUTOSCALE_SERVICE, MRICTL_AUTOSCALE_MAX_TASKS, MRICTL_AUTOSCALE_MESSAGES_PER_TASK; and,
optional (not set by the template), MRICTL_AUTOSCALE_MIN_TASKS (0) and
MRICTL_AUTOSCALE_COOLDOWN_SECONDS (300).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENVIRONMENT_PREFIX = "MRICTL_AUTOSCALE_"
DEFAULT_COOLDOWN_S = 300.0
QUEUE_ATTRIBUTES = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")


def desired_count(
    visible: int,
    in_flight: int,
    current: int,
    *,
    min_tasks: int = 0,
    max_tasks: int,
    messages_per_task: int,
    last_scale_in_at: float | None,
    now: float,
    cooldown_s: float,
) -> int:
    """The task count to set: one task per `messages_per_task` messages (visible or in flight),
    within [min_tasks, max_tasks]. Scale-out is immediate; scale-in waits until `cooldown_s` has
    passed since `last_scale_in_at` (None: no change seen) and keeps a task per in-flight
    message."""
    if messages_per_task < 1 or max_tasks < 1 or not 0 <= min_tasks <= max_tasks:
        raise ValueError("need messages_per_task >= 1 and 0 <= min_tasks <= max_tasks >= 1")
    backlog = max(visible, 0) + max(in_flight, 0)
    target = min(max(math.ceil(backlog / messages_per_task), min_tasks), max_tasks)
    if target >= current:
        return target
    target = max(target, min(max(in_flight, 0), current))
    cooling = last_scale_in_at is not None and now - last_scale_in_at < cooldown_s
    return current if cooling else target


@dataclass(frozen=True)
class AutoscaleConfig:
    """What the Lambda's environment names: the queue, the service and the limits."""

    queue_url: str
    cluster: str
    service: str
    max_tasks: int
    messages_per_task: int
    min_tasks: int = 0
    cooldown_s: float = DEFAULT_COOLDOWN_S

    @classmethod
    def from_environment(cls, environment: Mapping[str, str]) -> AutoscaleConfig:
        def value(name: str, default: str | None = None) -> str:
            text = environment.get(ENVIRONMENT_PREFIX + name, default)
            if text is None or text == "":
                raise KeyError(f"{ENVIRONMENT_PREFIX}{name} is not set")
            return text

        return cls(
            queue_url=value("QUEUE_URL"),
            cluster=value("CLUSTER"),
            service=value("SERVICE"),
            max_tasks=int(value("MAX_TASKS")),
            messages_per_task=int(value("MESSAGES_PER_TASK")),
            min_tasks=int(value("MIN_TASKS", "0")),
            cooldown_s=float(value("COOLDOWN_SECONDS", str(DEFAULT_COOLDOWN_S))),
        )


def _epoch(moment: Any) -> float | None:
    """A datetime (boto3) or a number as POSIX seconds; None when absent."""
    if moment is None:
        return None
    return moment.timestamp() if hasattr(moment, "timestamp") else float(moment)


def scale(sqs: Any, ecs: Any, config: AutoscaleConfig, *, now: float) -> dict[str, Any]:
    """Read the queue and the service, set the new count if it differs; what was decided.

    The cooldown is measured from the service's last change (its primary deployment's
    `updatedAt`): a stateless Lambda has no memory of its own last scale-in, and the service's
    own record also counts changes made by hand."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=config.queue_url, AttributeNames=list(QUEUE_ATTRIBUTES)
    )["Attributes"]
    visible = int(attributes.get("ApproximateNumberOfMessages", 0))
    in_flight = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
    described = ecs.describe_services(cluster=config.cluster, services=[config.service])
    services = described.get("services", [])
    if not services:
        reasons = [failure.get("reason", "?") for failure in described.get("failures", [])]
        raise LookupError(f"service {config.service}: {', '.join(reasons) or 'not found'}")
    service = services[0]
    current = int(service["desiredCount"])
    primary = [d for d in service.get("deployments", []) if d.get("status") == "PRIMARY"]
    changed_at = _epoch(primary[0].get("updatedAt")) if primary else None
    desired = desired_count(
        visible,
        in_flight,
        current,
        min_tasks=config.min_tasks,
        max_tasks=config.max_tasks,
        messages_per_task=config.messages_per_task,
        last_scale_in_at=changed_at,
        now=now,
        cooldown_s=config.cooldown_s,
    )
    if desired != current:
        ecs.update_service(cluster=config.cluster, service=config.service, desiredCount=desired)
    return {
        "visible": visible,
        "in_flight": in_flight,
        "current": current,
        "desired": desired,
        "changed": desired != current,
    }


def _clients() -> tuple[Any, Any]:
    """The SQS and ECS clients of the Lambda's own region and role."""
    import boto3

    return boto3.client("sqs"), boto3.client("ecs")


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda's entry point (compute.yaml: `mrictl.autoscale.handler`)."""
    config = AutoscaleConfig.from_environment(os.environ)
    sqs, ecs = _clients()
    decision = scale(sqs, ecs, config, now=time.time())
    print(json.dumps({"service": config.service, **decision}))  # one line in its log group
    return decision
