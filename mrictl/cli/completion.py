"""`mrictl completion bash|zsh|fish`: the shell's completion script, printed for installing once.

The shell is named, never detected: detection reads the parent process, which in a container,
over ssh or under sudo is often not the shell the script is for.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from typer.completion import completion_init, shell_complete

PROG_NAME = "mrictl"
COMPLETE_VARIABLE = "_MRICTL_COMPLETE"  # the script runs `_MRICTL_COMPLETE=complete_bash mrictl`

# The scripts call mrictl back with COMPLETE_VARIABLE set, and typer answers before any command
# runs, with the shell classes registered here (typer registers them only for apps made with
# its own --install-completion). mrictl.cli.main imports this module, so every start has them.
completion_init()


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion(
    ctx: typer.Context,
    shell: Annotated[Shell, typer.Argument(help="The shell to complete in: bash, zsh or fish.")],
) -> None:
    """Print the shell completion script for mrictl (commands, options, choices).

    bash (bash-completion loads it in new shells):
      mrictl completion bash > ~/.local/share/bash-completion/completions/mrictl
    or in ~/.bashrc:  eval "$(mrictl completion bash)"

    zsh (a folder on fpath, added before compinit in ~/.zshrc):
      mrictl completion zsh > ~/.zfunc/_mrictl
    or in ~/.zshrc, after compinit:  eval "$(mrictl completion zsh)"

    fish:
      mrictl completion fish > ~/.config/fish/completions/mrictl.fish

    Then open a new shell. The script calls mrictl back to complete,
    so it offers the commands of the mrictl first on PATH.
    """
    root = ctx.find_root().command
    code = shell_complete(root, {}, PROG_NAME, COMPLETE_VARIABLE, f"source_{shell.value}")
    if code:
        raise typer.Exit(code)
