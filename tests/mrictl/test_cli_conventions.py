"""What a script and a person expect of any command (issue 17, item 6): the result on stdout and
everything else on stderr, help that reads as help, one-line usage errors, and docs that name
only commands that exist."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from mrictl.cli.main import app
from mrictl.errors import ExitCode
from tests.mrictl.cli_helpers import invoke, run_cli

REPOSITORY = Path(__file__).resolve().parents[2]


def command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the CLI, as the words that name it (() is `mrictl`)."""
    paths, pending = [], [((), typer.main.get_command(app))]
    while pending:
        path, command = pending.pop()
        paths.append(path)
        if isinstance(command, TyperGroup):
            pending += [((*path, name), sub) for name, sub in command.commands.items()]
    return sorted(paths)


@pytest.fixture
def tiny_scan(tmp_path) -> Path:
    path = tmp_path / "tiny.h5"
    made = invoke("scan", "simulate", "--out", str(path), "--matrix", "16x12", "--coils", "2")
    assert made.exit_code == 0, made.stderr
    return path


# --- results on stdout, the rest on stderr ------------------------------------------------


def test_scan_info_into_a_file_keeps_the_result(tiny_scan, tmp_path):
    saved = tmp_path / "info.txt"
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    with saved.open("w") as stdout:
        completed = subprocess.run(
            [sys.executable, "-m", "mrictl", "scan", "info", str(tiny_scan)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            timeout=120,
        )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    text = saved.read_text()
    assert "coils" in text and "16" in text
    assert "\x1b" not in text  # a file gets no colour or control codes


def test_json_goes_to_stdout_alone(tiny_scan):
    outcome = run_cli("scan", "info", str(tiny_scan), "--json")
    assert outcome.exit_code == 0 and outcome.stderr == ""
    assert outcome.json()["coils"] == 2


def test_a_note_while_waiting_is_on_stderr_and_the_result_is_not(tiny_scan, tmp_path):
    home = str(tmp_path / "home")
    # No worker runs: --wait gives up, after saying on stderr what it waits for.
    outcome = invoke("recon", "submit", str(tiny_scan), "--accel", "2", "--method", "zerofill",
                     "--wait", "--timeout", "0.2", "--home", home)  # fmt: skip
    assert outcome.exit_code == ExitCode.TIMEOUT
    assert outcome.stdout == ""
    assert "submitted job-" in outcome.stderr and "error:" in outcome.stderr
    status = invoke("recon", "status", "--home", home)
    assert status.exit_code == 0 and status.stderr == ""
    assert "queued" in status.stdout and "job-" in status.stdout


def test_results_into_a_pipe_are_not_cut_to_80_columns(monkeypatch):
    from mrictl.output import PIPE_WIDTH, Output

    monkeypatch.delenv("COLUMNS", raising=False)
    output = Output()  # pytest captures both streams: neither is a terminal
    assert output.result_console.width == output.console.width == PIPE_WIDTH
    assert output.result_console.file is sys.stdout and output.console.file is sys.stderr


@pytest.mark.parametrize(("no_color", "coloured"), [("", True), ("1", False)])
def test_colour_only_where_a_terminal_is_and_never_with_no_color(no_color, coloured):
    script = (
        "from mrictl.output import Output\n"
        "Output().result({}, lambda console: console.print('[red]red[/red] plain'))\n"
    )
    environment = {**os.environ, "FORCE_COLOR": "1", "NO_COLOR": no_color}  # as a terminal
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               env=environment, timeout=60)  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert ("\x1b[31m" in completed.stdout) is coloured
    assert "red plain" in completed.stdout.replace("\x1b[31m", "").replace("\x1b[0m", "")


# --- help -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", command_paths(), ids=lambda path: " ".join(path) or "mrictl")
def test_every_help_renders_flags_as_flags_and_arguments_by_name(path):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"Usage: {' '.join(('mrictl', *path))}" in text
    assert "<bool>" not in text  # a flag takes no value
    assert not re.search(r"\{[a-z_]+\}", text), text  # an argument is not a set of choices
    assert "--help" in text


def test_arguments_are_named_in_capitals_and_optional_ones_in_brackets():
    usage = CliRunner().invoke(app, ["recon", "run", "--help"], env={"COLUMNS": "200"}).output
    assert "Usage: mrictl recon run [OPTIONS] SOURCE" in usage
    usage = CliRunner().invoke(app, ["recon", "status", "--help"], env={"COLUMNS": "200"}).output
    assert "Usage: mrictl recon status [OPTIONS] [JOB]" in usage


@pytest.mark.parametrize("path", [("recon", "run"), ("recon", "submit"), ("demo",)])
def test_the_help_says_which_method_is_the_default(path):
    from raki.method_names import DEFAULT_METHOD

    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    words = " ".join(result.output.replace("│", " ").split())
    assert f"Default {DEFAULT_METHOD}" in words


# --- usage errors -----------------------------------------------------------------------

USAGE_ERRORS = [
    (["recon", "run", "x.h5", "--foo", "1"], "No such option: --foo", "mrictl recon run"),
    (["recon", "status", "--method", "x"], "No such option: --method", "mrictl recon status"),
    (["recon", "run", "x.h5", "--ouT", "y"], "No such option: --ouT; did you mean --out?",
     "mrictl recon run"),
    (["nosuch"], "No such command 'nosuch'", "mrictl"),
    (["scan", "info"], "Missing argument 'PATH'", "mrictl scan info"),
    (["scan", "undersample", "a.h5", "-o", "b.h5", "--accel", "x"], "Invalid value for '--accel'",
     "mrictl scan undersample"),
    (["recon", "run", "x.h5", "--out"], "Option '--out' requires an argument", "mrictl recon run"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message", "command"), USAGE_ERRORS)
def test_a_usage_error_is_one_line_pointing_at_the_help(args, message, command):
    outcome = invoke(*args)
    assert outcome.exit_code == ExitCode.USAGE
    assert outcome.stdout == ""
    (line,) = outcome.stderr.splitlines()
    assert line.startswith(f"error: {message}")
    assert line.endswith(f"(see `{command} --help`)")
    at = len(command.split()) - 1  # --json right after the command's name: --out takes no flag
    with_json = invoke(*args[:at], "--json", *args[at:]) if at else invoke(*args, "--json")
    assert with_json.exit_code == ExitCode.USAGE
    error = with_json.json()["error"]
    assert error == {"code": ExitCode.USAGE, "message": line.removeprefix("error: ")}
    assert with_json.stderr == outcome.stderr


def test_a_usage_error_names_mrictl_however_it_was_started():
    outcome = run_cli("recon", "run", "--foo")
    assert outcome.exit_code == ExitCode.USAGE
    assert outcome.stderr == (
        "error: No such option: --foo; did you mean --out? (see `mrictl recon run --help`)\n"
    )


# --- docs name commands that exist ------------------------------------------------------

FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")
# `mrictl` where a shell line runs it: at the start, after a prompt, a pipe, `;`, `&&` or `(`.
INVOCATION = re.compile(r"(?:^|\$ |[|;&(] *)mrictl((?: +[a-z][\w-]*)*)")


def documented_command_lines() -> list[tuple[str, str]]:
    """(file, line) for each command line of README.md and docs/*.md: the lines of code blocks
    and the code spans that start with `mrictl` (a span quoting prose is left out)."""
    found = []
    for path in [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
        lines += [span for span in SPAN.findall(FENCE.sub("", text)) if span.startswith("mrictl ")]
        found += [(path.name, line.strip()) for line in lines if "mrictl" in line]
    return found


def wrong_commands(lines: list[tuple[str, str]]) -> list[str]:
    """The lines that name a (sub)command the CLI does not have."""
    root = typer.main.get_command(app)
    wrong = []
    for name, line in lines:
        for invocation in INVOCATION.finditer(line):
            command = root
            for word in invocation.group(1).split():
                if not isinstance(command, TyperGroup):
                    break  # a command's arguments: a file name, a job id
                if word not in command.commands:
                    wrong.append(f"{name}: {line}  ({word!r} is no command of that group)")
                    break
                command = command.commands[word]
    return wrong


def test_the_docs_name_only_commands_that_exist():
    lines = documented_command_lines()
    assert len(lines) > 20  # the extraction finds the README's commands
    assert wrong_commands(lines) == []


def test_the_docs_check_finds_a_command_that_does_not_exist():
    lines = [
        ("jobs-schema.md", "mrictl status --json"),  # what the issue found
        ("x.md", "$ mrictl recon stat JOB | head"),
        ("x.md", "mrictl recon status JOB && mrictl fetch JOB --out r/"),
        ("x.md", "mrictl scan info knee.h5 --json"),
    ]
    assert wrong_commands(lines) == [
        "jobs-schema.md: mrictl status --json  ('status' is no command of that group)",
        "x.md: $ mrictl recon stat JOB | head  ('stat' is no command of that group)",
    ]


def test_the_json_error_document_is_valid_json_on_its_own():
    outcome = invoke("recon", "run", "--foo", "--json")
    assert json.loads(outcome.stdout)["error"]["code"] == ExitCode.USAGE
