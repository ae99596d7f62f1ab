"""Settings from flags > MRICTL_* environment > XDG TOML file > defaults, one section per backend.

The file is $MRICTL_CONFIG or $XDG_CONFIG_HOME/mrictl/config.toml:

    [mrictl]                      # or top level: backend, method, device, lease_seconds, ...
    backend = "local"
    [local]
    home = "/data/mrictl"         # also accepted at top level, as before
    [aws]
    region = "eu-west-1"
    profile = "hospital-it"
    stack_prefix = "mrictl-prod"
    endpoint_url = "http://127.0.0.1:5000"   # a test server; never set in production
    [pacs]                        # the DICOM node of `fetch --pacs` and `watch --pacs`
    host = "pacs.hospital.example"
    port = 104
    called_aet = "PACS"           # its AE title
    calling_aet = "MRICTL"        # ours, as the PACS knows us (the default)
    retries = 3                   # tries more for refused or unsent instances (the default)
    backoff_seconds = 2.0         # before the first of them, doubled each time (the default)

Flags and environment reach us together through typer's `envvar=`, or as `overrides` here (both
outrank the file). Nothing here writes files or creates clients (mrictl.backends does).

`mrictl provision` saves its stacks' outputs in $XDG_CONFIG_HOME/mrictl/aws/<stack_prefix>.json
(mrictl/infra/stack_settings.py writes it); `AwsSettings.outputs` holds them, flat (OutputKey ->
value, e.g. RawBucketName), for the configured stack prefix, so that no command needs an ARN.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mrictl.errors import ExitCode, MrictlError

BACKENDS = ("local", "aws")
# Environment variables of the backend sections (the top-level ones come through typer).
SECTION_ENVIRONMENT = {
    ("local", "home"): "MRICTL_HOME",
    ("aws", "region"): "MRICTL_AWS_REGION",
    ("aws", "profile"): "MRICTL_AWS_PROFILE",
    ("aws", "stack_prefix"): "MRICTL_AWS_STACK_PREFIX",
    ("aws", "endpoint_url"): "MRICTL_AWS_ENDPOINT_URL",
    ("aws", "fsx_mount"): "MRICTL_AWS_FSX_MOUNT",
    ("aws", "resumable_upload_threshold"): "MRICTL_AWS_RESUMABLE_UPLOAD_THRESHOLD",
    ("aws", "upload_part_size"): "MRICTL_AWS_UPLOAD_PART_SIZE",
    ("aws", "slices_per_array_child"): "MRICTL_AWS_SLICES_PER_ARRAY_CHILD",
    ("pacs", "host"): "MRICTL_PACS_HOST",
    ("pacs", "port"): "MRICTL_PACS_PORT",
    ("pacs", "called_aet"): "MRICTL_PACS_CALLED_AET",
    ("pacs", "calling_aet"): "MRICTL_PACS_CALLING_AET",
    ("pacs", "retries"): "MRICTL_PACS_RETRIES",
    ("pacs", "backoff_seconds"): "MRICTL_PACS_BACKOFF_SECONDS",
}


@dataclass(frozen=True)
class LocalSettings:
    """The embedded backend: everything under one folder."""

    home: Path


@dataclass(frozen=True)
class AwsSettings:
    """The cloud backend: where its stacks live and how to reach the AWS APIs."""

    region: str | None = None
    profile: str | None = None
    stack_prefix: str = "mrictl-prod"  # <project>-<environment>, the templates' defaults
    endpoint_url: str | None = None  # one endpoint for every service (a moto server in tests)
    # Where the FSx for Lustre file system linked to the preprocessed bucket is mounted: reads
    # of that bucket use its files when they match (mrictl/backends/aws/fsx.py).
    fsx_mount: str | None = None
    # Bytes from which uploads go in resumable parts (default 64 MiB), and the parts' size
    # (default 16 MiB, at least S3's 5 MiB): mrictl/backends/aws/multipart.py.
    resumable_upload_threshold: str | None = None
    upload_part_size: str | None = None
    # A recon job whose volume has more slices than this (default 4; "0": never) runs as an
    # AWS Batch array job, this many slices per child, and an assembler (backends/aws/batch.py).
    slices_per_array_child: str | None = None
    # What `mrictl provision` saved for this prefix (never set in the config file or by a flag).
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PacsSettings:
    """The DICOM node (a PACS) that `fetch --pacs` and `watch --pacs` deliver to
    (mrictl.pacs.node_from_settings makes the node, flags over these)."""

    host: str | None = None
    port: int | None = None
    called_aet: str | None = None  # the PACS's AE title
    calling_aet: str = "MRICTL"  # ours, as the PACS knows us
    retries: int = 3  # tries more for the instances refused or not sent
    backoff_seconds: float = 2.0  # before the first of them, doubled each time

    def __post_init__(self) -> None:
        # The file gives numbers, the environment text: both end as numbers, or a usage error.
        for name in ("host", "called_aet", "calling_aet"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise MrictlError(f"pacs.{name} must be a string", ExitCode.USAGE)
        for name, kind, least, most in (
            ("port", int, 1, 65535),
            ("retries", int, 0, 100),
            ("backoff_seconds", float, 0, 3600),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                if isinstance(value, bool):
                    raise ValueError
                number = kind(str(value).strip())
            except ValueError:
                number = None
            if number is None or not least <= number <= most:
                raise MrictlError(
                    f"pacs.{name} must be a number {least}-{most}, not {str(value)!r}",
                    ExitCode.USAGE,
                )
            object.__setattr__(self, name, number)


@dataclass(frozen=True)
class Settings:
    local: LocalSettings
    aws: AwsSettings = field(default_factory=AwsSettings)
    pacs: PacsSettings = field(default_factory=PacsSettings)
    backend: str = "local"
    method: str | None = None  # None: the library's DEFAULT_METHOD
    device: str = "auto"
    lease_seconds: float = 600.0
    max_attempts: int = 3

    @property
    def home(self) -> Path:
        """The local backend's folder (where scratch space lives for every backend too)."""
        return self.local.home


TOP_LEVEL = ("backend", "method", "device", "lease_seconds", "max_attempts")
SECTIONS = {"local": LocalSettings, "aws": AwsSettings, "pacs": PacsSettings}
SAVED_BY_COMMANDS = {"aws": {"outputs"}}  # fields filled from files that commands write
_SAFE_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")  # a file name, never a path


def config_path() -> Path:
    explicit = os.environ.get("MRICTL_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mrictl" / "config.toml"


def outputs_path(stack_prefix: str) -> Path:
    """The settings file of a stack prefix: its stacks' outputs, the gateway's share
    (mrictl/infra/stack_settings.py writes it)."""
    if not _SAFE_PREFIX.fullmatch(stack_prefix):
        raise MrictlError(f"stack prefix {stack_prefix!r} cannot name a file", ExitCode.USAGE)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mrictl" / "aws" / f"{stack_prefix}.json"


def read_outputs(stack_prefix: str) -> dict[str, str]:
    """The saved outputs of every stack of the prefix, flat; {} if none were saved (or the
    prefix could not name a file: provision refuses it with the rule)."""
    if not _SAFE_PREFIX.fullmatch(stack_prefix):
        return {}
    path = outputs_path(stack_prefix)
    if not path.is_file():
        return {}
    try:  # other commands keep their own records beside "stacks" (the gateway's share)
        stacks = json.loads(path.read_text(encoding="utf-8")).get("stacks", {})
        flat = {}
        for stack in stacks.values():
            flat.update({str(key): str(value) for key, value in stack["outputs"].items()})
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        message = (
            f"settings file {path.name} is damaged: fix it, or remove it and run mrictl "
            "provision again"
        )
        raise MrictlError(message, ExitCode.USAGE) from None
    return flat


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mrictl"


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's values as {top-level key: value, "local": {...}, "aws": {...}}; {} if none."""
    if not path.is_file():
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        message = f"config file {path.name} is not valid TOML: {exc}"
        raise MrictlError(message, ExitCode.USAGE) from None
    table = dict(document.get("mrictl", document))
    for section in SECTIONS:  # [local] and [aws] may sit beside [mrictl] or inside it
        if section in document and section not in table:
            table[section] = document[section]
    if "home" in table:  # the top-level home of earlier versions
        table.setdefault("local", {})
        if isinstance(table["local"], dict):
            table["local"] = {"home": table.pop("home"), **table["local"]}
    unknown = sorted(set(table) - set(TOP_LEVEL) - set(SECTIONS))
    for section, kind in SECTIONS.items():
        values = table.get(section, {})
        if not isinstance(values, dict):
            raise MrictlError(
                f"config file {path.name}: [{section}] must be a table", ExitCode.USAGE
            )
        known = {item.name for item in fields(kind)} - SAVED_BY_COMMANDS.get(section, set())
        unknown += [f"{section}.{key}" for key in sorted(set(values) - known)]
    if unknown:
        raise MrictlError(
            f"config file {path.name} has unknown keys: {', '.join(unknown)}", ExitCode.USAGE
        )
    return table


def _checked(values: dict[str, Any], source: str) -> dict[str, Any]:
    """The file's values with their types and ranges checked: a bad one is a usage error that
    names the key, not a job record with a string where a count belongs."""
    problems = []
    for key in ("backend", "method", "device"):
        if key in values and not isinstance(values[key], str):
            problems.append(f"{key} must be a string")
    for section in SECTIONS:
        for key, value in values.get(section, {}).items():
            if not isinstance(value, str) and section != "pacs":  # PacsSettings checks its own
                name = "home" if (section, key) == ("local", "home") else f"{section}.{key}"
                problems.append(f"{name} must be a string")
    for key, kind, least in (("lease_seconds", float, 1.0), ("max_attempts", int, 1)):
        if key not in values:
            continue
        value = values[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)) or value < least:
            what = "a whole number" if kind is int else "a number"
            problems.append(f"{key} must be {what} >= {least:g}")
    if problems:
        raise MrictlError(f"{source}: {'; '.join(problems)}", ExitCode.USAGE)
    return values


def _section_environment() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for (section, key), variable in SECTION_ENVIRONMENT.items():
        value = os.environ.get(variable)
        if value:
            found.setdefault(section, {})[key] = value
    return found


def load_settings(
    *, local: dict[str, Any] | None = None, aws: dict[str, Any] | None = None, **overrides: Any
) -> Settings:
    """Merge flags (`overrides`; `home=` for the local section; None = not given) over the
    MRICTL_* variables of the backend sections over the config file over the defaults."""
    path = config_path()
    values: dict[str, Any] = _checked(dict(read_config_file(path)), f"config file {path.name}")
    home = overrides.pop("home", None)
    sections = {name: dict(values.pop(name, {})) for name in SECTIONS}
    for name, given in _section_environment().items():
        sections[name].update(given)
    for name, given in (("local", local), ("aws", aws), ("local", {"home": home})):
        sections[name].update({key: value for key, value in (given or {}).items() if value})
    values.update({key: value for key, value in overrides.items() if value is not None})
    sections["local"]["home"] = Path(sections["local"].get("home") or default_home()).expanduser()
    prefix = sections["aws"].get("stack_prefix") or AwsSettings.stack_prefix
    try:
        sections["aws"]["outputs"] = read_outputs(prefix)
    except MrictlError:
        if values.get("backend") == "aws":
            raise
        sections["aws"]["outputs"] = {}  # a damaged cloud file must not stop local work
    settings = Settings(
        local=LocalSettings(**sections["local"]),
        aws=AwsSettings(**sections["aws"]),
        pacs=PacsSettings(**sections["pacs"]),
        **values,
    )
    if settings.backend not in BACKENDS:
        raise MrictlError(
            f"unknown backend {settings.backend!r}; choose one of {', '.join(BACKENDS)}",
            ExitCode.USAGE,
        )
    return settings


def with_home(settings: Settings, home: Path) -> Settings:
    """The same settings on another local home (the demo's own folder)."""
    return replace(settings, local=LocalSettings(home))
