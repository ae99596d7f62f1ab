"""`mrictl completion SHELL` prints a script for that shell, and the bash script really completes:
bash sources it and runs its completion function with COMP_WORDS set, which calls `mrictl`
back (an `mrictl` on PATH made by the test, running this checkout) as a shell would on Tab.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mrictl.cli_helpers import invoke

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_its_script(shell):
    outcome = invoke("completion", shell)
    assert outcome.exit_code == 0, outcome.stderr
    script = outcome.stdout.strip()
    assert script
    assert f"_MRICTL_COMPLETE=complete_{shell}" in script  # mrictl is called back to complete
    if shell == "bash":
        assert "complete -o default -F _mrictl_completion mrictl" in script
    if shell == "zsh":
        assert script.startswith("#compdef mrictl")
    if shell == "fish":
        assert script.startswith("complete --command mrictl")


def test_an_unknown_shell_is_a_usage_error():
    outcome = invoke("completion", "tcsh")
    assert outcome.exit_code == 2
    assert "tcsh" in outcome.stderr


def test_the_help_says_how_to_install_it():
    outcome = invoke("completion", "--help")
    assert outcome.exit_code == 0
    assert "bash-completion/completions/mrictl" in outcome.stdout
    assert "~/.config/fish/completions/mrictl.fish" in outcome.stdout
    assert "compinit" in outcome.stdout


def mrictl_on_path(folder: Path) -> dict[str, str]:
    """An environment whose PATH starts with an `mrictl` that runs this checkout's CLI."""
    folder.mkdir()
    command = folder / "mrictl"
    command.write_text(f"#!{sys.executable}\nfrom mrictl.cli.main import main\nmain()\n")
    command.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPOSITORY),
        "NO_COLOR": "1",
    }


def complete_in_bash(environment: dict[str, str], words: list[str]) -> list[str]:
    """What bash offers on Tab after `words` (the last one the word being completed)."""
    quoted = " ".join(f"'{word}'" for word in words)
    script = (
        "source <(mrictl completion bash)\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        "_mrictl_completion mrictl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    completed = subprocess.run(
        [shutil.which("bash") or "bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_and_sub_commands(tmp_path):
    environment = mrictl_on_path(tmp_path / "bin")
    assert complete_in_bash(environment, ["mrictl", "re"]) == ["recon"]
    offered = complete_in_bash(environment, ["mrictl", "recon", ""])
    assert {"run", "submit", "status"} <= set(offered)
    assert "doctor" in complete_in_bash(environment, ["mrictl", "do"])
