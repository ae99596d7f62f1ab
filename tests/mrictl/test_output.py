"""Progress bars on a terminal: an unknown total must draw, not raise (upload passes None)."""

from __future__ import annotations

import io

from rich.console import Console

from mrictl.output import Output


def terminal_output() -> tuple[Output, io.StringIO]:
    output = Output()
    screen = io.StringIO()
    output.console = Console(file=screen, force_terminal=True, width=100)
    return output, screen


def test_a_bar_without_a_total_draws_and_takes_one_later():
    output, screen = terminal_output()
    assert output.interactive
    with output.progress("sending", total=None) as update:
        update(completed=3)
        output.console.file.flush()
        update(total=10, completed=5)
    assert "sending" in screen.getvalue()


def test_off_a_terminal_a_bar_is_silent():
    output = Output()
    screen = io.StringIO()
    output.console = Console(file=screen, force_terminal=False)
    with output.progress("sending", total=None) as update:
        update(completed=3)
    assert screen.getvalue() == ""
