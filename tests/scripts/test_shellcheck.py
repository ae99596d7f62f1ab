"""Every shell script in scripts/ (and CI's own .ci/run) passes shellcheck, as CI runs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHELL_SCRIPTS = [*sorted(REPO.glob("scripts/**/*.sh")), REPO / ".ci" / "run"]


@pytest.mark.parametrize(
    "script", SHELL_SCRIPTS, ids=lambda path: path.relative_to(REPO).as_posix()
)
def test_shellcheck_is_clean(script: Path):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck; .ci/run installs it)")
    completed = subprocess.run(
        ["shellcheck", "-x", script.name],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_scripts_are_strict_and_executable():
    """A script that does not stop at its first error could deliver half a study."""
    for script in SHELL_SCRIPTS:
        text = script.read_text(encoding="utf-8")
        assert text.startswith("#!/usr/bin/env bash\n"), script.name
        assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
        if script.suffix == ".sh":
            assert "\nset -euo pipefail\n" in text, script.name
