"""One command's view of the stacks of a prefix on CloudFormation: reading them (templates,
parameters, outputs, resources), changing them and following each change to its end through
the stack's events, with AWS failures as one line.

`mrictl provision` (mrictl/infra/provision.py) and `provision destroy` (mrictl/infra/destroy.py)
both work through an `Account` and a `Runner`. A stack that ends anywhere but *_COMPLETE of its
operation (a rollback, a *_FAILED) raises one line naming the first resource that failed and its
reason; a CloudFormation that fails a call at once (moto does, instead of a failed stack) gives
one line with its message. Every function takes an `AwsClients`; boto3 is imported by it, when
a client is first made.
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrictl.errors import ExitCode, MrictlError
from mrictl.infra.stacks import CAPABILITIES, StackPrefix, template_path
from mrictl.infra.validate import default_templates_dir

if TYPE_CHECKING:
    from mrictl.backends import AwsClients

POLL_SECONDS = 5.0
SUCCESS = {"create": "CREATE_COMPLETE", "update": "UPDATE_COMPLETE", "delete": "DELETE_COMPLETE"}
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
CANCELLED = ("cancelled", "canceled")  # the resources CloudFormation stopped after the first
EventHandler = Callable[["StackEvent"], None]


# --- What a run reports --------------------------------------------------------------------


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


def error_code(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Message", ""))


# --- Reading the account -------------------------------------------------------------------


# --- Reading the account -------------------------------------------------------------------


def normalized(value: Any, parameter_type: str) -> str:
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


def stack_outputs(stack: Mapping[str, Any]) -> dict[str, str]:
    """A described stack's outputs, OutputKey -> value."""
    return {o["OutputKey"]: str(o["OutputValue"]) for o in stack.get("Outputs") or []}


class Account:
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
            if error_code(error) == "ValidationError" and "does not exist" in error_message(error):
                return None
            raise
        return None if found["StackStatus"] == "DELETE_COMPLETE" else found

    def deployed_parameters(self, stack: str, deployed: Mapping[str, Any]) -> dict[str, str]:
        declared = self.declared(stack)
        return {
            p["ParameterKey"]: normalized(
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


def parameter_list(parameters: Mapping[str, str]) -> list[dict[str, str]]:
    """Parameters as create_stack, update_stack and create_change_set take them."""
    return [{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()]


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


def ignore_event(_: StackEvent) -> None:
    """The `on_event` of a run nobody watches."""
    return None


@dataclass
class Runner:
    """Applies operations to stacks, following each to its end."""

    account: Account
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
                Parameters=parameter_list(parameters),
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
                    Parameters=parameter_list(parameters),
                    Capabilities=list(CAPABILITIES),
                    Tags=self.account.prefix.tags(),
                )
            except Exception as error:
                if any(text in error_message(error) for text in NO_CHANGES):
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
