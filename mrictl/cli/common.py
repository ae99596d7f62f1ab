"""Options shared by every command, so that flags read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mrictl.errors import ExitCode, MrictlError

if TYPE_CHECKING:
    from mrictl.output import Output

JsonFlag = Annotated[
    bool,
    typer.Option(
        "--json", help="The result as one JSON document on stdout (notes and errors: stderr)."
    ),
]
HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", envvar="MRICTL_HOME", help="Local backend folder (default: XDG data dir)."
    ),
]
BackendOption = Annotated[
    str | None,
    typer.Option("--backend", envvar="MRICTL_BACKEND", help="Backend: local (default) or aws."),
]
AxisOrderOption = Annotated[
    str | None,
    typer.Option(
        "--axis-order",
        help="Axes of a .mat/.npy array, e.g. 'coil,ky,kx' (names: slice, coil, kx, ky).",
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option("--device", envvar="MRICTL_DEVICE", help="auto, cpu or cuda."),
]
StackPrefixOption = Annotated[
    str | None,
    typer.Option(
        "--stack-prefix",
        envvar="MRICTL_AWS_STACK_PREFIX",
        help="<project>-<environment>: 2-12 and 2-8 lower-case characters (default mrictl-prod).",
    ),
]


def open_configured_backend(home: Path | None, backend: str | None):
    """The backend that flags, environment and config file name (mrictl.backends.open_backend)."""
    from mrictl.backends import open_backend
    from mrictl.config import load_settings

    return open_backend(load_settings(home=home, backend=backend))


WaitOption = Annotated[bool, typer.Option("--wait", help="Wait until the job is finished.")]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", min=0.0, help="Give up waiting after this many s.")
]


def check_timeout_needs_wait(wait: bool, timeout: float | None) -> None:
    """--timeout bounds --wait; alone it would be ignored, so a script's intent would be lost."""
    if timeout is not None and not wait:
        raise MrictlError("--timeout bounds --wait: give both, or neither", ExitCode.USAGE)


def report_submitted(output, store, record: dict, wait: bool, timeout: float | None) -> None:
    """Print a queued job's record, or with `wait` the final record of its chain (exit 5 if
    that did not succeed)."""
    from mrictl.output import key_value_table
    from mrictl.pipeline import jobs

    if wait:
        output.info(f"submitted {record['job_id']}; waiting")
        record = jobs.wait(store, record["job_id"], timeout)
    output.result(record, lambda c: c.print(key_value_table(record, title="job")))
    if wait:
        exit_for_record(record)


def exit_for_record(record: dict) -> None:
    """A finished job that did not succeed gives the JOB_FAILED exit code."""
    if record["state"] != "succeeded":
        raise typer.Exit(int(ExitCode.JOB_FAILED))


def confirm_or_refuse(output: Output, yes: bool, question: str) -> None:
    """Destructive commands ask on a TTY; without one they need --yes (never a hidden prompt)."""
    if yes:
        return
    if not output.interactive or not typer.get_text_stream("stdin").isatty():
        raise MrictlError(f"{question.rstrip('?')}: refusing without --yes", ExitCode.USAGE)
    if not typer.confirm(question):
        raise typer.Exit(int(ExitCode.USAGE))


# The AWS API settings of the cloud commands (provision, gateway, image); MRICTL_AWS_* too.
RegionOption = Annotated[
    str | None,
    typer.Option("--region", envvar="MRICTL_AWS_REGION", help="AWS region (default: profile's)."),
]
ProfileOption = Annotated[
    str | None,
    typer.Option("--profile", envvar="MRICTL_AWS_PROFILE", help="AWS profile of the credentials."),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        envvar="MRICTL_AWS_ENDPOINT_URL",
        help="One endpoint for every AWS API (a test server; never in production).",
    ),
]
