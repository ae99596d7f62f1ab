"""The settings file of one stack prefix, `$XDG_CONFIG_HOME/mrictl/aws/<stack_prefix>.json`: what
`mrictl provision` saved of its stacks and what `provision gateway` made, in one JSON document.

    {"stack_prefix": "mrictl-prod", "region": "eu-west-1", "updated_at": "...",
     "stacks": {"storage": {"status": "CREATE_COMPLETE", "outputs": {"RawBucketName": ...}}, ...},
     "gateway": {"share_arn": ..., "location": ..., ...}}

mrictl.config reads the stacks' outputs back into `AwsSettings.outputs`, so that no command
needs an ARN. This module is the file's one writer: each command replaces its own key and keeps
every other, and the document is written whole under a hidden temporary name, flushed to disk
and renamed over the old one, so a reader never sees half a file and a failed write leaves the
old one as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mrictl.config import outputs_path
from mrictl.errors import ExitCode, MrictlError
from mrictl.infra.cloudformation import stack_outputs
from mrictl.infra.stacks import STACK_ORDER, StackPrefix
from mrictl.partial_files import partial_name, remove_stale_partials

STACKS = "stacks"  # the provisioner's: each deployed stack's status and outputs
GATEWAY = "gateway"  # provision gateway's: the file share's record
_PROVISION_KEYS = frozenset({"stack_prefix", "region", "updated_at", STACKS})


def settings_path(prefix: StackPrefix) -> Path:
    """Where the settings of a prefix live (a parsed prefix: the rule of mrictl/infra/stacks.py)."""
    return outputs_path(prefix.text)


def read_settings(path: Path) -> dict[str, Any]:
    """The file's document; {} when there is none yet. A damaged file is a usage error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict):
        raise MrictlError(
            f"settings file {path.name} is not a JSON object: fix it, or remove it and run "
            "mrictl provision again",
            ExitCode.USAGE,
        )
    return document


def saved_outputs(document: Mapping[str, Any], stack: str) -> dict[str, str]:
    """The outputs of one stack as the provisioner saved them ({} if none)."""
    outputs: Any = document
    for name in (STACKS, stack, "outputs"):
        outputs = outputs.get(name) if isinstance(outputs, Mapping) else None
    if not isinstance(outputs, Mapping):
        return {}
    return {name: value for name, value in outputs.items() if isinstance(value, str)}


def save_stacks(
    path: Path,
    prefix: StackPrefix,
    region: str | None,
    stacks: Mapping[str, Mapping[str, Any]],
) -> None:
    """Save each deployed stack's status and outputs (from its CloudFormation description) under
    "stacks", keeping every other key (the gateway's record). A file left holding nothing but
    the provisioner's keys, and no stack, is removed."""
    document = read_settings(path)
    saved = {
        stack: {"status": stacks[stack]["StackStatus"], "outputs": stack_outputs(stacks[stack])}
        for stack in STACK_ORDER
        if stack in stacks and stacks[stack].get("StackStatus")
    }
    document.update(
        {
            "stack_prefix": prefix.text,
            "region": region,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            STACKS: saved,
        }
    )
    if not saved and set(document) <= _PROVISION_KEYS:
        path.unlink(missing_ok=True)
        return
    write_settings(path, document)


def save_gateway(path: Path, record: Mapping[str, Any]) -> None:
    """Put the file share's record under "gateway", keeping every other key."""
    document = read_settings(path)
    document[GATEWAY] = dict(record)
    write_settings(path, document)


def write_settings(path: Path, document: Mapping[str, Any]) -> None:
    """Replace the file with `document`, atomically (the old file's permissions kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    temporary = partial_name(path)
    try:
        with open(temporary, "x", encoding="utf-8") as stream:
            stream.write(json.dumps(document, indent=2) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
