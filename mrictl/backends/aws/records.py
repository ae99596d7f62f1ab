"""Job records as DynamoDB items: attribute values, update expressions, items back to Jobs.

The item layout is described in mrictl/backends/aws/queue.py; this module only encodes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mrictl.backends.base import BackendError, Job, JobState

# Record fields get/list/children read (logs and claims stay on the item until asked for).
JOB_FIELDS = (
    "job_id",
    "stage",
    "state",
    "payload",
    "result",
    "error",
    "attempts",
    "max_attempts",
    "parent_job_id",
    "worker_id",
    "lease_token",
    "lease_expires_at",
    "created_at",
    "created_seconds",
    "updated_at",
    "batch_job_id",
)
FINAL_STATES = tuple(state.value for state in JobState if state.is_final)


def created_text(seconds: float) -> str:
    """POSIX seconds as fixed-width text, so that text order is time order (index sort keys)."""
    return f"{seconds:017.6f}"


def text_value(text: str) -> dict[str, str]:
    return {"S": text}


def number_value(number: float) -> dict[str, str]:
    return {"N": repr(int(number)) if float(number).is_integer() else f"{number:.6f}"}


def plain_value(attribute: Mapping[str, Any]) -> Any:
    if "S" in attribute:
        return attribute["S"]
    if "N" in attribute:
        number = float(attribute["N"])
        return int(number) if number.is_integer() and "." not in attribute["N"] else number
    if "NULL" in attribute:
        return None
    if "L" in attribute:
        return [plain_value(item) for item in attribute["L"]]
    if "M" in attribute:
        return {name: plain_value(item) for name, item in attribute["M"].items()}
    if "BOOL" in attribute:
        return attribute["BOOL"]
    raise BackendError(f"unexpected attribute type in the job table: {sorted(attribute)}")


def list_entry(**values: str | float | None) -> dict[str, Any]:
    """A map for a list attribute (a log line, a claim)."""
    fields: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            fields[name] = {"NULL": True}
        elif isinstance(value, str):
            fields[name] = text_value(value)
        else:
            fields[name] = number_value(value)
    return {"M": fields}


def plain_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: plain_value(attribute) for name, attribute in item.items()}


class Update:
    """An UpdateExpression with its names and values, aliased (`state` is a reserved word)."""

    def __init__(self) -> None:
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def name(self, attribute: str) -> str:
        alias = f"#{attribute}"
        self.names[alias] = attribute
        return alias

    def value(self, value: Any) -> str:
        alias = f":v{len(self.values)}"
        if isinstance(value, dict):
            self.values[alias] = value
        elif isinstance(value, str):
            self.values[alias] = text_value(value)
        else:
            self.values[alias] = number_value(value)
        return alias

    def set(self, attribute: str, value: Any) -> Update:
        self.sets.append(f"{self.name(attribute)} = {self.value(value)}")
        return self

    def append(self, attribute: str, entry: dict[str, Any]) -> Update:
        name = self.name(attribute)
        empty = self.value({"L": []})
        self.sets.append(
            f"{name} = list_append(if_not_exists({name}, {empty}), {self.value({'L': [entry]})})"
        )
        return self

    def remove(self, *attributes: str) -> Update:
        self.removes.extend(self.name(attribute) for attribute in attributes)
        return self

    def expression(self) -> str:
        parts = []
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.removes:
            parts.append("REMOVE " + ", ".join(self.removes))
        return " ".join(parts)


class ConditionFailed(Exception):
    """A conditional write lost: `item` is the record as it was (None if there is none)."""

    def __init__(self, item: dict[str, Any] | None) -> None:
        super().__init__("condition failed")
        self.item = item


def job_from_item(item: Mapping[str, Any], *, with_lease: bool = False) -> Job:
    """A Job from a plain (decoded) item."""
    created = item.get("created_seconds")
    return Job(
        job_id=item["job_id"],
        stage=item["stage"],
        state=JobState(item["state"]),
        payload=json.loads(item.get("payload") or "{}"),
        attempts=int(item.get("attempts", 0)),
        max_attempts=int(item["max_attempts"]),
        created_at=float(created if created is not None else item["created_at"]),
        updated_at=float(item["updated_at"]),
        result=json.loads(item.get("result") or "{}"),
        error=item.get("error"),
        parent_id=item.get("parent_job_id"),
        worker_id=item.get("worker_id"),
        lease_token=item.get("lease_token") if with_lease else None,
        lease_expires_at=item.get("lease_expires_at"),
        batch_job_id=item.get("batch_job_id"),
    )
