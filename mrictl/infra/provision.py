"""Create, update and inspect the stacks of one prefix (`mrictl provision`, `provision status`),
and save their outputs so that later commands name no ARN.

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
environment, followed to their end by mrictl/infra/cloudformation.py (each new event handed to
`on_event`; a failure is one line naming the first resource that failed). The outputs of every
stack reached are saved in the settings file (mrictl/infra/stack_settings.py), also when a later
stack fails.

Destroying the stacks is mrictl/infra/destroy.py. Every function takes an `AwsClients`; boto3
is imported by it, when a client is first made.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrictl.errors import ExitCode, MrictlError
from mrictl.infra import stack_settings
from mrictl.infra.cloudformation import (
    NO_CHANGES,
    POLL_SECONDS,
    Account,
    EventHandler,
    Runner,
    StackResult,
    aws_errors,
    error_message,
    ignore_event,
    normalized,
    parameter_list,
    stack_outputs,
)
from mrictl.infra.lambda_package import LambdaPackage, build_autoscale_package, upload_package
from mrictl.infra.stacks import (
    CAPABILITIES,
    DATA_RESOURCE_TYPES,
    INPUTS,
    LATER_INPUTS,
    STACK_ORDER,
    ProvisionOptions,
    StackPrefix,
    flat_outputs,
    stack_parameters,
    stacks_to_provision,
)

if TYPE_CHECKING:
    from mrictl.backends import AwsClients

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


# --- Comparing with what is deployed ---------------------------------------------------------


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
    account: Account,
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
            parameters[key] = normalized(decided[key], kind)
        elif key in previous:
            parameters[key] = previous[key]
        elif "DefaultValue" in parameter:
            parameters[key] = normalized(parameter["DefaultValue"], kind)
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


def _later_inputs(deployed: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """The outputs, as deployed when the run starts, of the stacks that an earlier stack reads
    (stacks.LATER_INPUTS: compute mounts fsx's file system); a later stack's own turn replaces
    them with its outputs of this run."""
    later = {stack for stacks in LATER_INPUTS.values() for stack in stacks}
    return {
        stack: stack_outputs(found)
        for stack, found in deployed.items()
        if stack in later and found.get("StackStatus") in READY
    }


def _change_set(
    account: Account,
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
                Parameters=parameter_list(parameters),
                Capabilities=list(CAPABILITIES),
                Tags=account.prefix.tags(),
            )
        except Exception as error:  # moto refuses at once what AWS marks FAILED later
            if any(text in error_message(error) for text in NO_CHANGES):
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
        account = Account(clients, prefix, templates)
        package = build_autoscale_package()
        found = {s: d for s in STACK_ORDER if (d := account.describe(s)) is not None}
        existing = frozenset(found)
        outputs = _later_inputs(found)
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
                outputs[stack] = stack_outputs(deployed)
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


def provision(
    clients: AwsClients,
    prefix: StackPrefix,
    options: ProvisionOptions,
    *,
    templates: Path | None = None,
    on_event: EventHandler = ignore_event,
    save_to: Path | None = None,
    poll_s: float = POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[StackResult]:
    """Create or update every stack in order; what happened to each. The outputs of the stacks
    reached are saved in the settings file at `save_to` (if given), also when a stack fails."""
    options.check()
    results: list[StackResult] = []
    known: dict[str, dict[str, Any]] = {}
    account = None
    try:
        with aws_errors():
            account = Account(clients, prefix, templates)
            runner = Runner(account, on_event, poll_s, sleep)
            package = build_autoscale_package()
            for stack in STACK_ORDER:  # the file keeps the stacks this run does not reach
                if (found := account.describe(stack)) is not None:
                    known[stack] = found
            outputs = _later_inputs(known)
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
                outputs[stack] = stack_outputs(final)
                results.append(
                    StackResult(
                        stack, prefix.stack_name(stack), done, final["StackStatus"], outputs[stack]
                    )
                )
    finally:
        if save_to is not None and account is not None:
            stack_settings.save_stacks(save_to, prefix, account.region, known)
    return results


# --- Status and the saved outputs ------------------------------------------------------------


def stack_states(clients: AwsClients, prefix: StackPrefix) -> dict[str, dict[str, Any]]:
    """Every deployed stack of the prefix, in order: its description (absent ones left out)."""
    with aws_errors():
        account = Account(clients, prefix, None)
        found = {stack: account.describe(stack) for stack in STACK_ORDER}
    return {stack: described for stack, described in found.items() if described is not None}


def _time(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else value


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
            "outputs": stack_outputs(described) if described else {},
        }
    region = clients.client("cloudformation").meta.region_name
    return {"stack_prefix": prefix.text, "region": region, "stacks": stacks}


def save_outputs(clients: AwsClients, prefix: StackPrefix, path: Path) -> dict[str, str]:
    """Save the stacks as deployed in the settings file at `path`; their outputs, flat."""
    deployed = stack_states(clients, prefix)
    region = clients.client("cloudformation").meta.region_name
    stack_settings.save_stacks(path, prefix, region, deployed)
    return flat_outputs({stack: stack_outputs(found) for stack, found in deployed.items()})
