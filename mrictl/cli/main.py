"""The `mrictl` command: sub-commands are registered here; errors become one line + exit code."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from mrictl import __version__
from mrictl.cli import (
    bench,
    completion,
    demo,
    doctor,
    image,
    infra,
    jobs,
    provision,
    recon,
    scan,
    train,
    worker,
)
from mrictl.cli import watch as watch_command
from mrictl.cli.help_format import tidy_help
from mrictl.errors import ExitCode, MrictlError
from mrictl.output import to_json
from raki.errors import (
    DeviceUnavailableError,
    FileFormatError,
    IncompatibleWeightsError,
    InvalidScanError,
    MissingFileError,
    RakiError,
)

log = logging.getLogger("mrictl")


def exit_code_for(error: BaseException) -> ExitCode:
    """The documented exit code of an error the library or the product raised."""
    if isinstance(error, MrictlError):
        return error.exit_code
    if isinstance(error, IncompatibleWeightsError):
        return ExitCode.CONFLICT
    if isinstance(error, MissingFileError):
        return ExitCode.NOT_FOUND
    from raki.errors import NotAFileError  # a folder or a device named where a file is expected

    if isinstance(error, DeviceUnavailableError | NotAFileError):
        return ExitCode.USAGE
    if isinstance(error, FileFormatError | InvalidScanError | RakiError):
        return ExitCode.BAD_INPUT
    if isinstance(error, FileNotFoundError):
        return ExitCode.NOT_FOUND
    return ExitCode.INTERNAL


def message_for(error: BaseException) -> str:
    """One line, never a traceback, never a directory path (it may name a patient)."""
    if isinstance(error, MrictlError | RakiError):
        text = str(error)
    elif isinstance(error, FileNotFoundError):
        name = os.path.basename(str(error.filename)) if error.filename else "file"
        text = f"{name}: no such file"
    elif isinstance(error, PermissionError):
        name = os.path.basename(str(error.filename)) if error.filename else "file"
        text = f"{name}: permission denied"
    elif isinstance(error, OSError) and error.strerror:
        # A full disk or a closed pipe is the machine's state, not a bug: say what happened.
        name = os.path.basename(str(error.filename)) if error.filename else "I/O error"
        text = f"{name}: {error.strerror}"
    else:
        text = f"internal error ({type(error).__name__}); set MRICTL_DEBUG=1 for a traceback"
    return " ".join(text.split())


def report_error(error: BaseException, json_mode: bool) -> ExitCode:
    return report(exit_code_for(error), message_for(error), json_mode)


def report(code: ExitCode | int, message: str, json_mode: bool) -> ExitCode | int:
    """The error document on stdout (with --json) and one line on stderr; a stream that cannot
    be written (a full disk, a closed pipe) is skipped, never a second traceback."""
    if json_mode:
        document = to_json({"error": {"code": int(code), "message": message}}) + "\n"
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.write(document)
            sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"error: {message}\n")
    return code


def usage_message(error: TyperException, root: TyperGroup, argv: list[str]) -> str:
    """click's usage error as one line, pointing at the help of the command it concerns."""
    message = error.format_message()
    if hasattr(error, "possibilities"):  # click's NoSuchOption: its hint in words
        message = f"No such option: {error.option_name}"
        if error.possibilities:
            message += f"; did you mean {' or '.join(sorted(error.possibilities))}?"
    message = " ".join(message.split()).rstrip(".")
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else command_path(root, argv)
    return f"{message} (see `{command} --help`)"


def command_path(root: TyperGroup, argv: list[str]) -> str:
    """`mrictl recon run` for `recon run x --out`: the sub-commands that argv names (some usage
    errors are raised before click knows which command they concern)."""
    names, command = ["mrictl"], root
    for token in argv:
        if token.startswith("-") or not isinstance(command, TyperGroup):
            break
        if token not in command.commands:
            break
        names.append(token)
        command = command.commands[token]
    return " ".join(names)


class MrictlGroup(TyperGroup):
    """Runs a command and turns every failure into one line on stderr and its exit code."""

    def main(self, args: Any = None, *pargs: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        json_mode = "--json" in argv
        tidy_help(self)
        if not pargs:  # `python -m mrictl` and test runners too: the command is mrictl
            kwargs["prog_name"] = "mrictl"
        # click reports usage errors itself (a boxed, multi-line panel) only in standalone
        # mode: without it they come here, and both modes get one line and the usage code.
        kwargs["standalone_mode"] = False
        try:
            try:
                result = super().main(argv, *pargs, **kwargs)
            except TyperException as error:  # a bad flag, a missing argument, no such command
                if type(error).__name__ == "NoArgsIsHelpError":  # the help is already shown
                    sys.exit(error.exit_code)
                sys.exit(report(error.exit_code, usage_message(error, self, argv), json_mode))
            except typer.Abort:
                result = ExitCode.INTERRUPTED
            # Without standalone mode typer returns an Exit's code (130: Ctrl-C) instead.
            if result == ExitCode.INTERRUPTED:
                sys.exit(report(ExitCode.INTERRUPTED, "interrupted", json_mode))
            sys.exit(result if isinstance(result, int) else ExitCode.OK)
        except BrokenPipeError:
            # A reader that stopped early (`| head`) is no failure to report: stop quietly, with
            # stdout pointed nowhere so that the interpreter's last flush raises nothing either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(ExitCode.INTERNAL)
        except (MrictlError, RakiError, OSError) as error:
            if os.environ.get("MRICTL_DEBUG"):
                raise
            sys.exit(report_error(error, json_mode))
        except Exception as error:
            if os.environ.get("MRICTL_DEBUG"):
                raise
            log.debug("internal error", exc_info=True)
            sys.exit(report_error(error, json_mode))


app = typer.Typer(
    cls=MrictlGroup,
    help="Scan-specific neural MRI reconstruction (RAKI) from the scanner to the cloud.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.add_typer(scan.app, name="scan")
app.add_typer(recon.app, name="recon")
app.command("train")(train.train)
app.command("bench")(bench.bench)
app.command("upload")(jobs.upload)
app.command("fetch")(jobs.fetch)
app.command("watch")(watch_command.watch)
app.command("demo")(demo.demo)
app.add_typer(worker.app, name="worker")
app.add_typer(infra.app, name="infra")
app.add_typer(image.app, name="image")
app.add_typer(provision.app, name="provision")
app.command("doctor")(doctor.doctor)
app.command("completion")(completion.completion)


def _print_version(value: bool) -> None:
    if value:
        from mrictl.revision import git_revision, version_line

        typer.echo(version_line(__version__, git_revision()))
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Show the version and the git revision it was built from.",
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log details to stderr.")
    ] = False,
) -> None:
    """mrictl: RAKI reconstruction for MR technologists, researchers and hospital IT."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except typer.Abort:
        sys.exit(ExitCode.INTERRUPTED)
