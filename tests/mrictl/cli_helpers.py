"""Running the real `mrictl` command in tests: in-process (fast) or as a subprocess (end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from typer.testing import CliRunner

from mrictl.cli.main import app


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    output: str  # both streams: what a person at the terminal reads (human text: assert here)

    def json(self):
        return json.loads(self.stdout)


def invoke(*args: str) -> Outcome:
    """`mrictl ARGS` in this process, with stdout and stderr kept apart."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "120", "NO_COLOR": "1"})
    return Outcome(result.exit_code, result.stdout, result.stderr, result.output)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> Outcome:
    """`mrictl ARGS` as a separate process, as a script or an operator runs it."""
    environment = {**os.environ, "NO_COLOR": "1", **(env or {})}
    completed = subprocess.run(
        [sys.executable, "-m", "mrictl", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    combined = completed.stdout + completed.stderr
    return Outcome(completed.returncode, completed.stdout, completed.stderr, combined)
