"""`mrictl doctor`: what is wrong with this set-up, one line per check (mrictl.doctor)."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from mrictl.cli.common import (
    BackendOption,
    EndpointOption,
    HomeOption,
    JsonFlag,
    ProfileOption,
    RegionOption,
    StackPrefixOption,
)
from mrictl.errors import ExitCode


class Skippable(StrEnum):
    torch = "torch"
    home = "home"
    aws = "aws"
    pacs = "pacs"


def render_line(status: str, name: str, detail: str, hint: str | None, width: int) -> str:
    """`ok   name  detail`, `fail name  detail (hint: ...)`: status first, so grep finds it."""
    line = f"{status:<4} {name:<{width}}  {detail}"
    return f"{line} (hint: {hint})" if hint else line


def doctor(
    home: HomeOption = None,
    backend: BackendOption = None,
    region: RegionOption = None,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
    stack_prefix: StackPrefixOption = None,
    skip: Annotated[
        list[Skippable] | None,
        typer.Option(
            "--skip", metavar="GROUP", help="Leave out torch, home, aws or pacs (repeatable)."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds each network call may take.")
    ] = 3.0,
    min_free_gb: Annotated[
        float, typer.Option("--min-free-gb", min=0.0, help="Warn below this much free disk.")
    ] = 10.0,
    json: JsonFlag = False,
) -> None:
    """Check this set-up and say what is wrong, with a hint for each problem.

    Checks: versions, torch and the GPU, the configuration, the home folder's
    disk space and write access; with the aws backend the identity, region,
    stacks, queues, table and buckets; the DICOM node of the pacs section by
    C-ECHO. Secrets are never shown: variables are named, not printed.

    Each check is a line on stdout: ok|warn|fail NAME DETAIL (hint: ...).
    --json prints {"checks": [...], "ok": true|false} instead.
    Exit 0 when nothing fails (warnings pass), 10 when a check fails.
    """
    from mrictl import doctor as service
    from mrictl.output import to_json

    aws = {
        "region": region,
        "profile": profile,
        "endpoint_url": endpoint_url,
        "stack_prefix": stack_prefix,
    }
    checks = service.diagnose(
        home=home,
        backend=backend,
        aws=aws,
        skip=[item.value for item in skip or ()],
        timeout_s=timeout,
        min_free_gb=min_free_gb,
    )
    if json:
        typer.echo(to_json(service.report(checks)))
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            typer.echo(render_line(check.status, check.name, check.detail, check.hint, width))
    failed = sum(check.status == service.FAIL for check in checks)
    warned = sum(check.status == service.WARN for check in checks)
    if failed or warned:
        print(f"doctor: {failed} fail, {warned} warn", file=sys.stderr)
    if failed:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
