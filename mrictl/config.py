"""Settings from flags > MRICTL_* environment > XDG TOML file > defaults.

Flags and environment reach us together through typer's `envvar=` (both outrank the file); the
file is $MRICTL_CONFIG or $XDG_CONFIG_HOME/mrictl/config.toml. Nothing here writes files.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mrictl.errors import ExitCode, MrictlError

BACKENDS = ("local", "aws")


@dataclass(frozen=True)
class Settings:
    home: Path
    backend: str = "local"
    method: str | None = None  # None: the library's DEFAULT_METHOD
    device: str = "auto"
    lease_seconds: float = 600.0
    max_attempts: int = 3


def config_path() -> Path:
    explicit = os.environ.get("MRICTL_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mrictl" / "config.toml"


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mrictl"


def read_config_file(path: Path) -> dict[str, Any]:
    """The [mrictl] table (or top level) of the TOML file; {} when there is no file."""
    if not path.is_file():
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        message = f"config file {path.name} is not valid TOML: {exc}"
        raise MrictlError(message, ExitCode.USAGE) from None
    table = document.get("mrictl", document)
    known = {field.name for field in fields(Settings)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise MrictlError(
            f"config file {path.name} has unknown keys: {', '.join(unknown)}", ExitCode.USAGE
        )
    return table


def _checked(values: dict[str, Any], source: str) -> dict[str, Any]:
    """The file's values with their types and ranges checked: a bad one is a usage error that
    names the key, not a job record with a string where a count belongs."""
    problems = []
    for key in ("home", "backend", "method", "device"):
        if key in values and not isinstance(values[key], str):
            problems.append(f"{key} must be a string")
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


def load_settings(**overrides: Any) -> Settings:
    """Merge flag/env values (None = not given) over the config file over the defaults."""
    path = config_path()
    values: dict[str, Any] = _checked(dict(read_config_file(path)), f"config file {path.name}")
    values.update({key: value for key, value in overrides.items() if value is not None})
    values["home"] = Path(values.get("home") or default_home()).expanduser()
    settings = Settings(**values)
    if settings.backend not in BACKENDS:
        raise MrictlError(
            f"unknown backend {settings.backend!r}; choose one of {', '.join(BACKENDS)}",
            ExitCode.USAGE,
        )
    return settings
