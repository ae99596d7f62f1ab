"""Rendering: a command's result on stdout (human text, or one JSON document with --json);
progress, notes, warnings and errors on stderr.

As gh, kubectl and aws do: `mrictl scan info x.h5 > info.txt` keeps the result, and a script's
stdout holds the result alone. Both streams go through rich, which honours NO_COLOR and writes
colour and progress bars only to a terminal, so that files and logs stay free of control codes.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: scripts get null instead of invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


PIPE_WIDTH = 200


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def to_json(document: Any) -> str:
    return json.dumps(_finite(document), default=_json_default, indent=2, sort_keys=False)


def _console(stderr: bool) -> Console:
    """A rich console on stdout or stderr. Off a terminal it writes no colour or control codes
    (rich's own rule; NO_COLOR is honoured on a terminal too) and is PIPE_WIDTH wide unless
    COLUMNS says otherwise: a pipe or a log file has no width to fit, and rich's 80 columns would
    cut job ids and times short ("job-0b93a…"), which scripts and log readers need whole."""
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not _is_terminal(stream) and not os.environ.get("COLUMNS"):
        width = PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, width=width)


class Output:
    """Where a command's result and its messages go, decided once per invocation.

    `result` writes to stdout; `console` (stderr) is for what is not the result: progress,
    notes, warnings, a plan shown before a confirmation, live views.
    """

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.console = _console(stderr=True)
        self.result_console = _console(stderr=False)

    def result(self, document: Any, human: Callable[[Console], None] | str | None = None) -> None:
        """Emit the command's result on stdout: the JSON document, or the human rendering."""
        if self.json_mode:
            sys.stdout.write(to_json(document) + "\n")
            sys.stdout.flush()
        elif callable(human):
            human(self.result_console)
        elif human is not None:
            # A plain line may hold a path or a message with brackets: never read as markup.
            self.result_console.print(human, markup=False)

    def info(self, message: str) -> None:
        """A note on stderr, shown in both modes: progress and diagnostics, never the result."""
        self.console.print(message, markup=False)

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    @contextmanager
    def progress(self, description: str, total: float | None) -> Iterator[Callable[..., None]]:
        """A progress bar on a TTY; elsewhere a no-op, so logs and pipes get no control codes."""
        if not self.interactive:
            yield lambda **_: None
            return
        # Here, not at the top: only commands that compute draw bars, and startup is shorter.
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),  # "3/?" while the total is unknown (None)
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total, status="")

            def update(**fields: Any) -> None:
                bar.update(task, **fields)

            yield update


def key_value_table(rows: dict[str, Any], title: str | None = None) -> Table:
    """A two-column table for a flat mapping."""
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, "-" if value is None else str(value))
    return table


def records_table(records: list[dict[str, Any]], columns: list[str], title: str | None = None):
    """A table of records, one row each, the given columns."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for record in records:
        table.add_row(*("-" if record.get(c) is None else str(record.get(c)) for c in columns))
    return table
