"""How parameters read in `--help` and usage lines: flags as plain flags, arguments as NAME.

typer 0.29 (its vendored click) writes every option's type in the rich help panel, flags
included (`--json <bool>`, `--help <bool>`: the plain formatter skips flags, the panel does not),
and writes a required argument as `{source}` in the usage line, which reads as a set of choices.
One walk over the command tree, before anything is parsed or shown, sets each parameter the way
click documents it: a flag with an empty metavar (no value column), an argument named in
capitals, `SOURCE` when required and `[SOURCE]` when optional. New commands are covered
without a change here.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption


class PlainArgument(TyperArgument):
    """A positional argument as usage lines have always written it: NAME, [NAME], NAME..."""

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return [f"{name}..." if self.nargs != 1 else name]


def _tidy_parameter(parameter: Any) -> None:
    if isinstance(parameter, TyperOption) and parameter.is_flag and parameter.metavar is None:
        parameter.metavar = ""  # the panel shows the metavar instead of the type: none
    elif isinstance(parameter, TyperArgument) and not isinstance(parameter, PlainArgument):
        if parameter.metavar is None:
            parameter.metavar = parameter.name.upper()
        parameter.__class__ = PlainArgument  # the same object, one method more: no new state


def tidy_help(command: Any) -> None:
    """Give every parameter of `command` and of its sub-commands a plain help rendering."""
    context = typer.Context(command)
    pending = [command]
    while pending:
        current = pending.pop()
        for parameter in [*current.params, current.get_help_option(context)]:
            if parameter is not None:
                _tidy_parameter(parameter)
        if isinstance(current, TyperGroup):
            pending.extend(current.commands.values())
