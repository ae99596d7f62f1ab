"""The layers of docs/architecture.md hold: import-linter's contracts in pyproject.toml pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]


def lint_imports_command() -> str | None:
    """The venv's lint-imports beside this Python, else one on PATH; None if not installed."""
    beside = Path(sys.executable).with_name("lint-imports")
    return str(beside) if beside.is_file() else shutil.which("lint-imports")


def test_import_contracts_are_kept():
    command = lint_imports_command()
    if command is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    # --no-cache: no cache folders left in the checkout.
    completed = subprocess.run(
        [command, "--no-cache"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "0 broken" in completed.stdout
