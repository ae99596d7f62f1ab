"""`mrictl demo` is never silent: an estimate from this host's measured speed before it starts,
then each step, each slice of the reconstruction, and the time it took."""

from __future__ import annotations

import logging
import re

import pytest

from mrictl import demo_progress
from mrictl.backends.local import LocalBackend
from mrictl.demo import run_demo
from mrictl.demo_progress import about, estimate_seconds, host_gflops


def test_the_demo_says_how_long_it_should_take_then_each_step_and_slice(tmp_path):
    lines: list[str] = []
    document = run_demo(
        LocalBackend(tmp_path / "home"),
        tmp_path / "demo",
        method="rraki",
        iterations=20,
        matrix=(32, 40),
        acs_lines=12,
        coils=4,
        slices=2,
        step=lines.append,
    )
    assert document["method"] == "rraki"
    text = "\n".join(lines)
    assert re.match(r"this host computes \d+ GFLOP/s now .*: the demo should take about \d+", text)
    steps = [line[:3] for line in lines if re.match(r"\d/4 ", line)]
    assert steps == ["1/4", "2/4", "3/4", "4/4"]
    # The worker's own lines (which stage, which method), then the slices as they are done.
    assert "recon: reconstructing with rraki" in text
    assert "rraki: slice 1/2" in text and "rraki: slice 2/2" in text
    assert re.search(r"rraki: slice 1/2 done in \d+ s; about \d+ s left", text)
    assert re.search(r"done in \d+ s \(the estimate was about \d+ \w+\)$", lines[-1])
    # The loggers the demo listened to are as it found them.
    assert logging.getLogger("mrictl.progress").handlers == []
    assert logging.getLogger("mrictl.worker").propagate is True


def test_a_long_silence_is_broken_by_a_line_saying_how_long_it_has_been(monkeypatch):
    import time

    monkeypatch.setattr(demo_progress, "TICK_SECONDS", 0.05)
    lines: list[str] = []
    with demo_progress.DemoProgress(lines.append, slices=3, estimate=42.0):
        time.sleep(0.5)  # a worker busy with one long slice: nothing else to say
    assert lines and all(
        re.fullmatch(r"still working: \d+ s so far, about 45 s expected", line) for line in lines
    )


def test_the_estimate_follows_the_hosts_speed_the_method_and_the_work():
    fast = estimate_seconds("grappa", slices=3, iterations=None, gflops=100.0)
    assert estimate_seconds("grappa", slices=3, iterations=None, gflops=50.0) == pytest.approx(
        2 * fast
    )  # half the speed (a loaded host), twice the time
    neural = estimate_seconds("rraki", slices=3, iterations=None, gflops=100.0)
    assert neural > fast
    assert estimate_seconds("rraki", slices=3, iterations=100, gflops=100.0) < neural
    assert estimate_seconds("rraki", slices=6, iterations=None, gflops=100.0) > neural
    # A method the table does not know (a new default) is estimated as the slowest one.
    slowest = max(
        estimate_seconds(name, slices=3, iterations=None, gflops=100.0)
        for name in demo_progress.REFERENCE_COSTS
    )
    assert estimate_seconds("unheard-of", slices=3, iterations=None, gflops=100.0) == slowest


def test_the_calibration_measures_this_host_quickly():
    import time

    started = time.perf_counter()
    speed = host_gflops(0.05)
    assert 0.1 < speed < 1e5 and time.perf_counter() - started < 2.0


def test_an_estimate_is_said_as_precisely_as_it_is():
    assert about(3) == "about 5 s" and about(41) == "about 45 s"
    assert about(200) == "about 4 min"
