"""Create, update, inspect and delete the stacks of one prefix (`mrictl provision`), and the
outputs file that lets later commands name no ARN.

**Plan** (`plan`). For each stack in order (mrictl/infra/stacks.py): absent, or left dead by a
failed creation (ROLLBACK_COMPLETE, REVIEW_IN_PROGRESS), it will be *created*; deployed, it is
*unchanged* when the deployed template (`get_template`, the original text) and parameters
(`describe_stacks`) equal what would be sent and its tags are ours, else it will be *updated*.
CloudFormation's change sets are not the test of "nothing to change" (moto's list every
resource); for an update a change set is made, read (adds, modifications, replacements) and
deleted, and a resource that holds data (stacks.DATA_RESOURCE_TYPES) that would be replaced
(Replacement True or Conditional) or removed is flagged. Every parameter is sent: the ones this
run decides (stacks.stack_parameters), else the deployed value, else the template's default
(`get_template_summary`); list values are compared as comma-separated text (moto reports them as
a Python list's repr).

**Apply** (`provision`). The same decision is made again stack by stack, with the outputs of
the stacks just created or updated, so a later stack always gets its inputs' current values.
The scaling Lambda's zip (mrictl/infra/lambda_package.py) is uploaded before compute is created
or updated. `create_stack`/`update_stack` with CAPABILITY_IAM and the tags project and
environment; then describe_stacks and describe_stack_events are polled, each new event is
handed to `on_event`, and a stack that ends anywhere but *_COMPLETE of its operation (a
rollback, a *_FAILED) raises one line naming the first resource that failed and its reason. A
CloudFormation that fails a call at once (moto does, instead of a failed stack) gives one line
with its message. The outputs of every stack reached are saved (`write_outputs_file`), also
when a later stack fails.

**Destroy** (`plan_destroy`, `destroy`). Stacks are deleted in reverse order. storage and jobs
(the buckets, the key, the job table) are kept unless `delete_data`: then every object version
and delete marker is removed from the buckets, the stacks are deleted (their data resources are
`Retain`, so they outlive the stacks) and the buckets, the table (its deletion protection
turned off first) and the key (scheduled, 7 days: the least KMS allows) are deleted by name.
The image repository is emptied before compute is deleted (CloudFormation cannot delete a
repository that holds images; images are rebuilt from the source).

Every function takes an `AwsClients`; boto3 is imported by it, when a client is first made.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrictl.errors import ExitCode, MrictlError
from mrictl.infra.lambda_package import LambdaPackage, build_autoscale_package, upload_package
from mrictl.infra.stacks import (
    CAPABILITIES,
    DATA_RESOURCE_TYPES,
    DATA_STACKS,
    INPUTS,
    STACK_ORDER,
    ProvisionOptions,
    StackPrefix,
    flat_outputs,
    stack_parameters,
    stacks_to_provision,
    template_path,
)
from mrictl.infra.validate import default_templates_dir
from mrictl.partial_files import partial_name, remove_stale_partials

if TYPE_CHECKING:
    from mrictl.backends import AwsClients

POLL_SECONDS = 5.0
SUCCESS = {"create": "CREATE_COMPLETE", "update": "UPDATE_COMPLETE", "delete": "DELETE_COMPLETE"}
READY = frozenset(
    {
        "CREATE_COMPLETE",
        "UPDATE_COMPLETE",
        "UPDATE_ROLLBACK_COMPLETE",
        "IMPORT_COMPLETE",
        "IMPORT_ROLLBACK_COMPLETE",
    }
)
# A stack that never came to life: deleted, then created again.
RECREATE = frozenset({"ROLLBACK_COMPLETE", "CREATE_FAILED", "REVIEW_IN_PROGRESS"})
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
CANCELLED = ("cancelled", "canceled")  # the resources CloudFormation stopped after the first
KEY_DELETION_DAYS = 7
ACCESS_LOG_BUCKET = "AccessLogBucket"  # emptied and deleted last: the others log into it
EventHandler = Callable[["StackEvent"], None]


# --- What a run reports --------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceChange:
    """One line of a change set."""

    logical_id: str
    resource_type: str
    action: str  # CloudFormation's: Add, Modify, Remove
    replacement: str = ""  # True, False or Conditional (Modify only)

    @property
    def holds_data(self) -> bool:
        return self.resource_type in DATA_RESOURCE_TYPES

    @property
    def loses_data(self) -> bool:
        """A data resource replaced (maybe) or removed: what it holds does not follow."""
        replaced = self.replacement in ("True", "Conditional")
        return self.holds_data and (replaced or self.action == "Remove")

    def line(self) -> str:
        verb = {"Add": "add", "Modify": "modify", "Remove": "remove"}.get(self.action, self.action)
        if self.replacement == "True":
            verb = "replace"
        elif self.replacement == "Conditional":
            verb = "modify (may replace)"
        warning = "  <- HOLDS DATA: what it holds is lost" if self.loses_data else ""
        return f"{verb} {self.logical_id} ({self.resource_type}){warning}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "holds_data": self.holds_data, "loses_data": self.loses_data}


@dataclass(frozen=True)
class StackPlan:
    """What would happen to one stack: create, update (with its changes) or unchanged."""

    stack: str
    stack_name: str
    action: str
    status: str | None  # as deployed; None when absent
    changed_parameters: tuple[str, ...] = ()
    template_changed: bool = False
    changes: tuple[ResourceChange, ...] = ()
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "stack_name": self.stack_name,
            "action": self.action,
            "status": self.status,
            "changed_parameters": list(self.changed_parameters),
            "template_changed": self.template_changed,
            "changes": [change.to_dict() for change in self.changes],
            "note": self.note,
        }


@dataclass(frozen=True)
class Plan:
    prefix: StackPrefix
    region: str | None
    stacks: tuple[StackPlan, ...]

    @property
    def changed(self) -> bool:
        return any(stack.action != "unchanged" for stack in self.stacks)

    def data_at_risk(self) -> list[tuple[str, ResourceChange]]:
        return [(s.stack, c) for s in self.stacks for c in s.changes if c.loses_data]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack_prefix": self.prefix.text,
            "region": self.region,
            "changed": self.changed,
            "stacks": [stack.to_dict() for stack in self.stacks],
            "data_at_risk": [f"{stack}: {change.line()}" for stack, change in self.data_at_risk()],
        }


@dataclass(frozen=True)
class StackEvent:
    """One resource's step, as describe_stack_events tells it."""

    stack: str
    logical_id: str
    resource_type: str
    status: str
    reason: str = ""

    def line(self) -> str:
        reason = f": {self.reason}" if self.reason else ""
        return " ".join(f"{self.stack}: {self.logical_id} {self.status}{reason}".split())


@dataclass(frozen=True)
class StackResult:
    """What a run did to one stack, and the stack's state after it."""

    stack: str
    stack_name: str
    action: str  # created, updated, unchanged, deleted, kept
    status: str
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DestroyPlan:
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


# --- AWS errors as one line ----------------------------------------------------------------


def _error_line(error: BaseException) -> str | None:
    """A botocore error as one line (None for any other error): never a traceback."""
    from botocore import exceptions as aws
    from botocore.parsers import ResponseParserError

    if isinstance(error, aws.ClientError):
        info = error.response.get("Error", {})
        text = f"{error.operation_name}: {info.get('Code', '?')}: {info.get('Message', '')}"
    elif isinstance(error, aws.NoCredentialsError | aws.PartialCredentialsError):
        text = "no AWS credentials: give --profile, or set AWS_PROFILE or the AWS_* keys"
    elif isinstance(error, aws.NoRegionError):
        text = "no AWS region: give --region or set MRICTL_AWS_REGION"
    elif isinstance(error, aws.EndpointConnectionError | aws.ConnectionError):
        text = f"cannot reach AWS: {error}"
    elif isinstance(error, ResponseParserError):
        # A service's JSON error inside CloudFormation's XML answer (moto fails calls so).
        found = re.search(r'"message"\s*:\s*"([^"]*)"|<Message>(.*?)</Message>', str(error))
        text = (found.group(1) or found.group(2)) if found else str(error).splitlines()[0]
    elif isinstance(error, aws.BotoCoreError):
        text = str(error)
    else:
        return None
    return " ".join(text.split())


@contextlib.contextmanager
def aws_errors(context: str = "") -> Iterator[None]:
    """AWS failures become one-line MrictlErrors with the BACKEND exit code (7)."""
    try:
        yield
    except MrictlError:
        raise
    except Exception as error:
        line = _error_line(error)
        if line is None:
            raise
        raise MrictlError(f"{context}{line}", ExitCode.BACKEND) from error


def _error_code(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _error_message(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Message", ""))


# --- Reading the account -------------------------------------------------------------------


def _normalized(value: Any, parameter_type: str) -> str:
    """A parameter value as text; a list as `a,b` (moto writes one as "['a', 'b']")."""
    text = str(value)
    if parameter_type == "CommaDelimitedList" or parameter_type.startswith("List<"):
        if text.startswith("[") and text.endswith("]"):
            with contextlib.suppress(ValueError, SyntaxError):
                items = ast.literal_eval(text)
                if isinstance(items, list):
                    return ",".join(str(item).strip() for item in items)
        return ",".join(part.strip() for part in text.split(","))
    return text


def _outputs(stack: Mapping[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: str(o["OutputValue"]) for o in stack.get("Outputs") or []}


def _time(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else value


class _Account:
    """One command's view of the stacks of a prefix: templates read once, stacks described
    when asked (again after each change)."""

    def __init__(self, clients: AwsClients, prefix: StackPrefix, templates: Path | None) -> None:
        self.clients = clients
        self.prefix = prefix
        self.templates = templates or default_templates_dir()
        self.cloudformation = clients.client("cloudformation")
        self._bodies: dict[str, str] = {}
        self._declared: dict[str, dict[str, dict[str, Any]]] = {}

    @property
    def region(self) -> str | None:
        return self.cloudformation.meta.region_name

    def body(self, stack: str) -> str:
        if stack not in self._bodies:
            path = template_path(stack, self.templates)
            if not path.is_file():
                raise MrictlError(f"{path.name}: no such template", ExitCode.NOT_FOUND)
            self._bodies[stack] = path.read_text(encoding="utf-8")
        return self._bodies[stack]

    def declared(self, stack: str) -> dict[str, dict[str, Any]]:
        """The template's parameters, as CloudFormation reads them: name -> type, default."""
        if stack not in self._declared:
            summary = self.cloudformation.get_template_summary(TemplateBody=self.body(stack))
            self._declared[stack] = {p["ParameterKey"]: p for p in summary.get("Parameters", [])}
        return self._declared[stack]

    def describe(self, stack: str) -> dict[str, Any] | None:
        """The deployed stack, or None when there is none (a deleted one is none)."""
        try:
            [found] = self.cloudformation.describe_stacks(StackName=self.prefix.stack_name(stack))[
                "Stacks"
            ]
        except Exception as error:
            if _error_code(error) == "ValidationError" and "does not exist" in _error_message(
                error
            ):
                return None
            raise
        return None if found["StackStatus"] == "DELETE_COMPLETE" else found

    def deployed_parameters(self, stack: str, deployed: Mapping[str, Any]) -> dict[str, str]:
        declared = self.declared(stack)
        return {
            p["ParameterKey"]: _normalized(
                p.get("ParameterValue", ""),
                declared.get(p["ParameterKey"], {}).get("ParameterType", "String"),
            )
            for p in deployed.get("Parameters") or []
        }

    def deployed_template(self, stack: str) -> Any:
        return self.cloudformation.get_template(
            StackName=self.prefix.stack_name(stack), TemplateStage="Original"
        )["TemplateBody"]

    def resources(self, stack: str) -> list[dict[str, Any]]:
        """The stack's resources (moto lists the ones it skipped with empty fields)."""
        found, token = [], None
        while True:
            page = self.cloudformation.list_stack_resources(
                StackName=self.prefix.stack_name(stack), **({"NextToken": token} if token else {})
            )
            found += [r for r in page["StackResourceSummaries"] if r.get("PhysicalResourceId")]
            token = page.get("NextToken")
            if not token:
                return found


def _same_template(deployed: Any, body: str) -> bool:
    if isinstance(deployed, str):
        return deployed == body
    try:  # a JSON template comes back parsed
        return deployed == json.loads(body)
    except ValueError:
        return False


def _check_state(stack_name: str, status: str | None) -> None:
    """Refuse to touch a stack that is busy or stuck (a conflict the operator resolves)."""
    if status is None or status in READY or status in RECREATE:
        return
    if status.endswith("_IN_PROGRESS"):
        raise MrictlError(
            f"{stack_name} is {status}: run again when it has finished (mrictl provision status)",
            ExitCode.CONFLICT,
        )
    raise MrictlError(
        f"{stack_name} is {status}: repair it in the CloudFormation console (or delete it), "
        "then run again",
        ExitCode.CONFLICT,
    )


# --- Deciding what to do -------------------------------------------------------------------


@dataclass
class _Decision:
    stack: str
    action: str  # create, update, unchanged
    deployed: dict[str, Any] | None
    parameters: dict[str, str] | None  # None: its inputs' stacks do not exist yet
    changed_parameters: tuple[str, ...] = ()
    template_changed: bool = False
    note: str = ""


def _decide(
    account: _Account,
    stack: str,
    options: ProvisionOptions,
    outputs: Mapping[str, Mapping[str, str]],
    package: LambdaPackage,
) -> _Decision:
    deployed = account.describe(stack)
    status = deployed["StackStatus"] if deployed else None
    _check_state(account.prefix.stack_name(stack), status)
    create = deployed is None or status in RECREATE
    note = f"a failed stack ({status}) is deleted first" if deployed and create else ""
    missing = [needed for needed in INPUTS[stack] if needed not in outputs]
    if missing:
        inputs = f"its parameters come from {', '.join(missing)}, created first"
        action = "create" if create else "update"
        return _Decision(
            stack, action, deployed, None, note="; ".join(filter(None, [note, inputs]))
        )
    decided = stack_parameters(
        stack, account.prefix, options, outputs, autoscale_code_key=package.key
    )
    declared = account.declared(stack)
    undeclared = sorted(set(decided) - set(declared))
    if undeclared:
        raise MrictlError(
            f"{stack}.yaml does not declare {', '.join(undeclared)}: is it mrictl's template?",
            ExitCode.BAD_INPUT,
        )
    previous = {} if create or deployed is None else account.deployed_parameters(stack, deployed)
    parameters = {}
    for key, parameter in declared.items():
        kind = parameter.get("ParameterType", "String")
        if key in decided:
            parameters[key] = _normalized(decided[key], kind)
        elif key in previous:
            parameters[key] = previous[key]
        elif "DefaultValue" in parameter:
            parameters[key] = _normalized(parameter["DefaultValue"], kind)
        else:
            raise MrictlError(f"{stack}.yaml: parameter {key} has no value", ExitCode.BAD_INPUT)
    if create or deployed is None:
        return _Decision(stack, "create", deployed, parameters, note=note)
    changed = tuple(
        sorted(
            k for k in parameters.keys() | previous.keys() if parameters.get(k) != previous.get(k)
        )
    )
    template_changed = not _same_template(account.deployed_template(stack), account.body(stack))
    tags = {t["Key"]: t["Value"] for t in deployed.get("Tags") or []}
    tags_changed = tags != {t["Key"]: t["Value"] for t in account.prefix.tags()}
    action = "update" if changed or template_changed or tags_changed else "unchanged"
    return _Decision(
        stack,
        action,
        deployed,
        parameters,
        changed_parameters=changed,
        template_changed=template_changed,
        note="its tags differ" if tags_changed else "",
    )


def _parameter_list(parameters: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()]


def _change_set(
    account: _Account,
    stack: str,
    parameters: Mapping[str, str],
    *,
    poll_s: float,
    sleep: Callable[[float], None],
) -> tuple[ResourceChange, ...] | None:
    """The resources an update would add, modify (replace) or remove; None if CloudFormation
    finds nothing to change. The change set is deleted again."""
    cloudformation = account.cloudformation
    stack_name = account.prefix.stack_name(stack)
    with aws_errors(f"{stack_name}: change set: "):
        try:
            created = cloudformation.create_change_set(
                StackName=stack_name,
                ChangeSetName=f"mrictl-plan-{uuid.uuid4().hex[:12]}",
                ChangeSetType="UPDATE",
                TemplateBody=account.body(stack),
                Parameters=_parameter_list(parameters),
                Capabilities=list(CAPABILITIES),
                Tags=account.prefix.tags(),
            )
        except Exception as error:  # moto refuses at once what AWS marks FAILED later
            if any(text in _error_message(error) for text in NO_CHANGES):
                return None
            raise
    change_set = created["Id"]
    try:
        with aws_errors(f"{stack_name}: change set: "):
            while True:
                described = cloudformation.describe_change_set(
                    StackName=stack_name, ChangeSetName=change_set
                )
                if described["Status"] not in ("CREATE_PENDING", "CREATE_IN_PROGRESS"):
                    break
                sleep(poll_s)
            if described["Status"] == "FAILED":
                reason = described.get("StatusReason", "")
                if any(text in reason for text in NO_CHANGES):
                    return None
                raise MrictlError(
                    f"{stack_name}: change set failed: {' '.join(reason.split())}",
                    ExitCode.BACKEND,
                )
            raw = list(described.get("Changes", []))
            while described.get("NextToken"):
                described = cloudformation.describe_change_set(
                    StackName=stack_name, ChangeSetName=change_set, NextToken=described["NextToken"]
                )
                raw += described.get("Changes", [])
    finally:
        with contextlib.suppress(Exception):  # a leftover change set costs nothing
            cloudformation.delete_change_set(StackName=stack_name, ChangeSetName=change_set)
    return tuple(
        ResourceChange(
            logical_id=item["ResourceChange"].get("LogicalResourceId", "?"),
            resource_type=item["ResourceChange"].get("ResourceType", "?"),
            action=item["ResourceChange"].get("Action", "?"),
            replacement=item["ResourceChange"].get("Replacement", ""),
        )
        for item in raw
        if item.get("Type", "Resource") == "Resource" and "ResourceChange" in item
    )


def plan(
    clients: AwsClients,
    prefix: StackPrefix,
    options: ProvisionOptions,
    *,
    templates: Path | None = None,
    poll_s: float = POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> Plan:
    """What `provision` would do to each stack, changing nothing (change sets are deleted)."""
    options.check()
    with aws_errors():
        account = _Account(clients, prefix, templates)
        package = build_autoscale_package()
        existing = frozenset(s for s in STACK_ORDER if account.describe(s) is not None)
        outputs: dict[str, dict[str, str]] = {}
        planned = []
        for stack in stacks_to_provision(options, existing):
            decision = _decide(account, stack, options, outputs, package)
            changes: tuple[ResourceChange, ...] = ()
            action = decision.action
            if action == "update" and decision.parameters is not None:
                found = _change_set(account, stack, decision.parameters, poll_s=poll_s, sleep=sleep)
                if found is None:
                    action = "unchanged"
                else:
                    changes = found
            deployed = decision.deployed
            if deployed is not None and deployed["StackStatus"] in READY:
                outputs[stack] = _outputs(deployed)
            planned.append(
                StackPlan(
                    stack=stack,
                    stack_name=prefix.stack_name(stack),
                    action=action,
                    status=deployed["StackStatus"] if deployed else None,
                    changed_parameters=decision.changed_parameters,
                    template_changed=decision.template_changed,
                    changes=changes,
                    note=decision.note,
                )
            )
        return Plan(prefix, account.region, tuple(planned))


# --- Changing stacks and following them ----------------------------------------------------


def _newest_event_id(cloudformation: Any, stack_id: str) -> str | None:
    events = cloudformation.describe_stack_events(StackName=stack_id)["StackEvents"]
    return events[0]["EventId"] if events else None


def _events_since(
    cloudformation: Any, stack_id: str, stack: str, after: str | None
) -> list[tuple[str, StackEvent]]:
    """The stack's events newer than the event `after` (all if None), oldest first."""
    fresh: list[tuple[str, StackEvent]] = []
    token = None
    while True:
        page = cloudformation.describe_stack_events(
            StackName=stack_id, **({"NextToken": token} if token else {})
        )
        for raw in page["StackEvents"]:  # newest first
            if raw["EventId"] == after:
                return fresh[::-1]
            event = StackEvent(
                stack=stack,
                logical_id=raw.get("LogicalResourceId", "?"),
                resource_type=raw.get("ResourceType", "?"),
                status=raw.get("ResourceStatus", "?"),
                reason=" ".join(str(raw.get("ResourceStatusReason") or "").split()),
            )
            fresh.append((raw["EventId"], event))
        token = page.get("NextToken")
        if not token:
            return fresh[::-1]


def first_failure(events: list[StackEvent]) -> StackEvent | None:
    """The resource that failed first (the root cause): not the stack itself, not one that
    CloudFormation cancelled because another failed."""
    failed = [e for e in events if e.status.endswith("_FAILED")]
    resources = [e for e in failed if e.resource_type != "AWS::CloudFormation::Stack"]
    for event in resources:
        if not any(word in event.reason.lower() for word in CANCELLED):
            return event
    return (resources or failed or [None])[0]


def wait_for_stack(
    cloudformation: Any,
    stack_id: str,
    stack: str,
    stack_name: str,
    operation: str,
    *,
    after: str | None,
    on_event: EventHandler,
    poll_s: float,
    sleep: Callable[[float], None],
) -> dict[str, Any]:
    """Poll until the operation ends; its events go to `on_event` as they come. A stack that
    does not end in the operation's *_COMPLETE raises one line with the first failure."""
    events: list[StackEvent] = []
    while True:
        [current] = cloudformation.describe_stacks(StackName=stack_id)["Stacks"]
        fresh = _events_since(cloudformation, stack_id, stack, after)
        if fresh:
            after = fresh[-1][0]
        for _, event in fresh:
            events.append(event)
            on_event(event)
        status = current["StackStatus"]
        if status.endswith("_IN_PROGRESS"):
            sleep(poll_s)
            continue
        if status == SUCCESS[operation]:
            return current
        failure = first_failure(events)
        if failure is not None and failure.resource_type != "AWS::CloudFormation::Stack":
            detail = (
                f"{failure.logical_id} ({failure.resource_type}) {failure.status}: "
                f"{failure.reason or 'no reason given'}"
            )
        else:
            detail = current.get("StackStatusReason") or (failure.reason if failure else "")
        text = f"{stack_name} {operation} failed ({status}): {detail or 'no reason given'}"
        raise MrictlError(" ".join(text.split()), ExitCode.BACKEND)


def _ignore(_: StackEvent) -> None:
    return None


@dataclass
class _Runner:
    """Applies operations to stacks, following each to its end."""

    account: _Account
    on_event: EventHandler
    poll_s: float
    sleep: Callable[[float], None]

    def _follow(self, stack: str, stack_id: str, operation: str, after: str | None) -> dict:
        return wait_for_stack(
            self.account.cloudformation,
            stack_id,
            stack,
            self.account.prefix.stack_name(stack),
            operation,
            after=after,
            on_event=self.on_event,
            poll_s=self.poll_s,
            sleep=self.sleep,
        )

    def create(self, stack: str, parameters: Mapping[str, str]) -> dict[str, Any]:
        stack_name = self.account.prefix.stack_name(stack)
        with aws_errors(f"{stack_name} create failed: "):
            created = self.account.cloudformation.create_stack(
                StackName=stack_name,
                TemplateBody=self.account.body(stack),
                Parameters=_parameter_list(parameters),
                Capabilities=list(CAPABILITIES),
                Tags=self.account.prefix.tags(),
                OnFailure="ROLLBACK",
            )
        return self._follow(stack, created["StackId"], "create", None)

    def update(self, stack: str, deployed: Mapping[str, Any], parameters: Mapping[str, str]):
        stack_name = self.account.prefix.stack_name(stack)
        cloudformation = self.account.cloudformation
        with aws_errors(f"{stack_name} update failed: "):
            after = _newest_event_id(cloudformation, deployed["StackId"])
            try:
                cloudformation.update_stack(
                    StackName=deployed["StackId"],
                    TemplateBody=self.account.body(stack),
                    Parameters=_parameter_list(parameters),
                    Capabilities=list(CAPABILITIES),
                    Tags=self.account.prefix.tags(),
                )
            except Exception as error:
                if any(text in _error_message(error) for text in NO_CHANGES):
                    return dict(deployed), False
                raise
        return self._follow(stack, deployed["StackId"], "update", after), True

    def delete(self, stack: str, deployed: Mapping[str, Any]) -> dict[str, Any]:
        stack_name = self.account.prefix.stack_name(stack)
        cloudformation = self.account.cloudformation
        with aws_errors(f"{stack_name} delete failed: "):
            after = _newest_event_id(cloudformation, deployed["StackId"])
            cloudformation.delete_stack(StackName=deployed["StackId"])
        return self._follow(stack, deployed["StackId"], "delete", after)


def provision(
    clients: AwsClients,
    prefix: StackPrefix,
    options: ProvisionOptions,
    *,
    templates: Path | None = None,
    on_event: EventHandler = _ignore,
    save_to: Path | None = None,
    poll_s: float = POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[StackResult]:
    """Create or update every stack in order; what happened to each. The outputs of the stacks
    reached are written to `save_to` (if given), also when a stack fails."""
    options.check()
    results: list[StackResult] = []
    known: dict[str, dict[str, Any]] = {}
    account = None
    try:
        with aws_errors():
            account = _Account(clients, prefix, templates)
            runner = _Runner(account, on_event, poll_s, sleep)
            package = build_autoscale_package()
            for stack in STACK_ORDER:  # the file keeps the stacks this run does not reach
                if (found := account.describe(stack)) is not None:
                    known[stack] = found
            outputs: dict[str, dict[str, str]] = {}
            for stack in stacks_to_provision(options, frozenset(known)):
                decision = _decide(account, stack, options, outputs, package)
                if decision.parameters is None:  # its inputs come first in the order: a bug
                    raise MrictlError(f"{stack}: {decision.note}", ExitCode.INTERNAL)
                deployed, action = decision.deployed, decision.action
                if action != "unchanged" and stack == "compute":
                    bucket = outputs["storage"]["ReconstructedBucketName"]
                    upload_package(clients, bucket, package)
                if action == "create":
                    if deployed is not None:  # a failed creation's remains
                        runner.delete(stack, deployed)
                    final, done = runner.create(stack, decision.parameters), "created"
                elif action == "update" and deployed is not None:
                    final, updated = runner.update(stack, deployed, decision.parameters)
                    done = "updated" if updated else "unchanged"
                else:
                    final, done = deployed or {}, "unchanged"
                known[stack] = final
                outputs[stack] = _outputs(final)
                results.append(
                    StackResult(
                        stack, prefix.stack_name(stack), done, final["StackStatus"], outputs[stack]
                    )
                )
    finally:
        if save_to is not None and account is not None:
            write_outputs_file(save_to, prefix, account.region, known)
    return results


# --- Status and the outputs file ------------------------------------------------------------


def stack_states(clients: AwsClients, prefix: StackPrefix) -> dict[str, dict[str, Any]]:
    """Every deployed stack of the prefix, in order: its description (absent ones left out)."""
    with aws_errors():
        account = _Account(clients, prefix, None)
        found = {stack: account.describe(stack) for stack in STACK_ORDER}
    return {stack: described for stack, described in found.items() if described is not None}


def status(clients: AwsClients, prefix: StackPrefix) -> dict[str, Any]:
    """Each stack's status ("absent" if none), last change and outputs."""
    deployed = stack_states(clients, prefix)
    stacks = {}
    for stack in STACK_ORDER:
        described = deployed.get(stack)
        stacks[stack] = {
            "stack_name": prefix.stack_name(stack),
            "status": described["StackStatus"] if described else "absent",
            "updated_at": _time(
                (described.get("LastUpdatedTime") or described.get("CreationTime"))
                if described
                else None
            ),
            "outputs": _outputs(described) if described else {},
        }
    region = clients.client("cloudformation").meta.region_name
    return {"stack_prefix": prefix.text, "region": region, "stacks": stacks}


def write_outputs_file(
    path: Path, prefix: StackPrefix, region: str | None, stacks: Mapping[str, Mapping[str, Any]]
) -> None:
    """Save each deployed stack's status and outputs under "stacks" (mrictl.config reads them
    into `AwsSettings.outputs`), keeping what other commands keep in the file (the gateway's
    record). Atomic: a hidden temporary file, then a rename. A file left empty is removed."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        document = {}
    if not isinstance(document, dict):
        document = {}
    saved = {
        stack: {"status": stacks[stack]["StackStatus"], "outputs": _outputs(stacks[stack])}
        for stack in STACK_ORDER
        if stack in stacks and stacks[stack].get("StackStatus")
    }
    document.update(
        {
            "stack_prefix": prefix.text,
            "region": region,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "stacks": saved,
        }
    )
    if not saved and set(document) <= {"stack_prefix", "region", "updated_at", "stacks"}:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    temporary = partial_name(path)
    try:
        with open(temporary, "x", encoding="utf-8") as stream:
            stream.write(json.dumps(document, indent=2) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_outputs(clients: AwsClients, prefix: StackPrefix, path: Path) -> dict[str, str]:
    """Write the outputs file from the stacks as deployed; their outputs, flat."""
    deployed = stack_states(clients, prefix)
    region = clients.client("cloudformation").meta.region_name
    write_outputs_file(path, prefix, region, deployed)
    return flat_outputs({stack: _outputs(found) for stack, found in deployed.items()})


# --- Destroy ---------------------------------------------------------------------------------


def _data_resources(account: _Account, stacks: list[str]) -> list[dict[str, Any]]:
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
        account = _Account(clients, prefix, None)
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
            code = _error_code(error)
            if code == "NoSuchBucket":
                return
            if code != "BucketNotEmpty" or attempt == attempts - 1:
                raise


def _delete_table(dynamodb: Any, table: str) -> None:
    try:
        dynamodb.delete_table(TableName=table)
    except Exception as error:
        if _error_code(error) != "ResourceNotFoundException":
            raise


def _schedule_key_deletion(kms: Any, key: str) -> None:
    """Schedule the key's deletion (KMS never deletes a key at once); one already pending is
    left as it is."""
    try:
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=KEY_DELETION_DAYS)
    except Exception as error:
        if _error_code(error) != "KMSInvalidStateException":
            raise


def _empty_repository(ecr: Any, repository: str) -> None:
    """Delete every image of an ECR repository (CloudFormation deletes only empty ones)."""
    try:
        pages = ecr.get_paginator("list_images").paginate(repositoryName=repository)
        images = [image for page in pages for image in page.get("imageIds", [])]
    except Exception as error:
        if _error_code(error) == "RepositoryNotFoundException":
            return
        raise
    for start in range(0, len(images), 100):
        ecr.batch_delete_image(repositoryName=repository, imageIds=images[start : start + 100])


def destroy(
    clients: AwsClients,
    plan: DestroyPlan,
    *,
    templates: Path | None = None,
    on_event: EventHandler = _ignore,
    save_to: Path | None = None,
    poll_s: float = POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[StackResult]:
    """Delete the plan's stacks in its order (and, for data stacks, their data); what happened.
    The outputs file keeps the stacks still deployed (and goes when none is)."""
    results: list[StackResult] = []
    account = None
    try:
        with aws_errors():
            account = _Account(clients, plan.prefix, templates)
            runner = _Runner(account, on_event, poll_s, sleep)
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
                        StackResult(stack, name, "kept", kept["StackStatus"], _outputs(kept))
                    )
    finally:
        if save_to is not None and account is not None:
            # Best effort after a failure: the failure itself is what the operator must see.
            with contextlib.suppress(MrictlError), aws_errors():
                remaining = {s: d for s in STACK_ORDER if (d := account.describe(s)) is not None}
                write_outputs_file(save_to, plan.prefix, account.region, remaining)
    return results
