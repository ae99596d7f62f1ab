"""What `mrictl demo` says while it runs: before it starts, about how long it will take on this
host (from the host's measured speed); then each step, each slice of the reconstruction and the
time left, so that a loaded machine (12 minutes instead of one) is never silent.

The estimate scales seconds measured on a reference host by the ratio of a short calibration
(fp32 matrix products, about 0.2 s) there and here: a busy or slow host gets a longer estimate.
It is an estimate; after the first slice the time left is extrapolated from the slices done.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from types import TracebackType

# The calibration's speed on the host that measured the seconds below (GFLOP/s), and the
# seconds each method's reconstruction of one demo slice took there (128x96, 8 coils, R4,
# ACS 24; raki and rraki at their default iterations, NEURAL_ITERATIONS), and what the rest of
# the demo took (phantom, upload, preprocess, the grappa and zerofill comparison, outputs,
# fetch: FIXED_SECONDS). Measured 2026-12-06 on a 2-core host that other jobs were loading,
# with calibration and demo under the same load; rerun: python -m mrictl.demo_progress.
REFERENCE_GFLOPS = 60.0
REFERENCE_SLICE_SECONDS = {"raki": 20.0, "rraki": 20.0, "cs": 3.0, "grappa": 0.5, "zerofill": 0.1}
NEURAL_ITERATIONS = {"raki": 1000, "rraki": 1000}
FIXED_SECONDS = 5.0
CALIBRATION_SECONDS = 0.2
CALIBRATION_SIZE = 256
TICK_SECONDS = 15.0  # the longest silence: a line at least this often
SLICE_NOTE_SECONDS = 10.0  # within a slice, an iteration count at most this often

_RECONSTRUCTING = re.compile(r"reconstructing with (\S+)")


def host_gflops(seconds: float = CALIBRATION_SECONDS) -> float:
    """One core's fp32 matrix-product speed now, in GFLOP/s, measured for about `seconds`.

    One thread: a thread pool on a loaded host measures its own contention (10-20x slower,
    ../shared/NOTES.md) more than the share of the CPU that the demo will get.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    left = torch.randn(CALIBRATION_SIZE, CALIBRATION_SIZE, generator=generator)
    right = torch.randn(CALIBRATION_SIZE, CALIBRATION_SIZE, generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.mm(left, right)  # the first product pays for start-up: not timed
        products, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            torch.mm(left, right)
            products += 1
    finally:
        torch.set_num_threads(threads)
    return products * 2 * CALIBRATION_SIZE**3 / max(elapsed, 1e-9) / 1e9


def estimate_seconds(
    method: str | None, *, slices: int, iterations: int | None, gflops: float
) -> float:
    """The demo's seconds on a host whose calibration gave `gflops`. A method the table does
    not know (a new default, "auto") counts as the slowest one: an estimate errs long."""
    slowest = max(REFERENCE_SLICE_SECONDS, key=REFERENCE_SLICE_SECONDS.__getitem__)
    name = method if method in REFERENCE_SLICE_SECONDS else slowest
    per_slice = REFERENCE_SLICE_SECONDS[name]
    if name in NEURAL_ITERATIONS and iterations is not None:
        per_slice *= iterations / NEURAL_ITERATIONS[name]
    return (FIXED_SECONDS + slices * per_slice) * REFERENCE_GFLOPS / max(gflops, 1e-3)


def about(seconds: float) -> str:
    """'about 40 s', 'about 3 min': as precise as an estimate is."""
    if seconds < 90:
        return f"about {max(5, 5 * math.ceil(seconds / 5)):.0f} s"
    return f"about {math.ceil(seconds / 60):.0f} min"


class DemoProgress(logging.Handler):
    """While in use, turns the worker's job log lines and its stage's progress updates (the
    `mrictl.worker` and `mrictl.progress` loggers of this process) into step lines, and says
    how long it has been at least every TICK_SECONDS."""

    def __init__(self, say: Callable[[str], None], *, slices: int, estimate: float) -> None:
        super().__init__(level=logging.DEBUG)
        self.say_line = say
        self.slices = slices
        self.estimate = estimate
        self.started = time.monotonic()
        self.last_line = self.started
        self.method: str | None = None
        self.slice: int | None = None
        self.slice_started = self.started  # the first slice starts with the method
        self.last_iteration_note = self.started
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="demo-progress", daemon=True)
        self._saved: list[tuple[logging.Logger, int, bool]] = []
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            self.last_line = time.monotonic()
            self.say_line(text)

    def __enter__(self) -> DemoProgress:
        for name in ("mrictl.worker", "mrictl.progress"):
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level, logger.propagate))
            wanted = logging.DEBUG if name == "mrictl.progress" else logging.INFO
            if not logger.isEnabledFor(wanted):
                # Records that --verbose would not have shown: here alone, not on the root.
                logger.setLevel(wanted)
                logger.propagate = False
            logger.addHandler(self)
        self._ticker.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._ticker.join()
        for logger, level, propagate in self._saved:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate

    def emit(self, record: logging.LogRecord) -> None:
        try:
            update = getattr(record, "progress", None)
            if update is not None:
                self._progress(update)
            elif record.levelno >= logging.WARNING:
                self.say(f"warning: {record.getMessage()}")
            elif len(record.args or ()) == 3:  # a job log line: (stage, job id, message)
                stage, _, message = record.args
                found = _RECONSTRUCTING.search(str(message))
                if found:
                    self.method, self.slice = found.group(1), None
                    self.slice_started = time.monotonic()
                self.say(f"{stage}: {message}")
        except Exception:  # a progress line must never stop the demo
            self.handleError(record)

    def _progress(self, update: dict) -> None:
        if "slice" not in update:
            return
        now = time.monotonic()
        index = int(update["slice"])
        method = self.method or "reconstruction"
        if index != self.slice:
            if self.slice is not None and index > self.slice:
                done = index  # slices 0..index-1 are done
                per_slice = (now - self.slice_started) / (index - self.slice)
                left = max(0, self.slices - done) * per_slice
                self.say(
                    f"{method}: slice {done}/{self.slices} done in {per_slice:.0f} s; "
                    f"{about(left)} left for the other slices"
                )
                self.slice_started = now
            self.slice, self.last_iteration_note = index, now
            self.say(f"{method}: slice {index + 1}/{self.slices}")
        elif now - self.last_iteration_note >= SLICE_NOTE_SECONDS and "iteration" in update:
            self.last_iteration_note = now
            total = update.get("iterations")
            count = f"{int(update['iteration'])}/{int(total)}" if total else update["iteration"]
            self.say(f"{method}: slice {index + 1}/{self.slices}, iteration {count}")

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, TICK_SECONDS)):
            now = time.monotonic()
            if now - self.last_line >= TICK_SECONDS:
                self.say(
                    f"still working: {now - self.started:.0f} s so far, "
                    f"{about(self.estimate)} expected"
                )


def measure_reference(methods: tuple[str, ...], iterations: int | None) -> dict:
    """The table above, measured here: for each method, a calibration and a demo run in a
    fresh local home (neural methods at `iterations`, scaled to NEURAL_ITERATIONS)."""
    import tempfile
    from pathlib import Path

    from mrictl.backends.local import LocalBackend
    from mrictl.demo import run_demo

    runs = {}
    for method in methods:
        with tempfile.TemporaryDirectory() as folder:
            gflops = host_gflops()
            started = time.monotonic()
            document = run_demo(
                LocalBackend(Path(folder) / "home"),
                Path(folder) / "demo",
                method=method,
                iterations=iterations if method in NEURAL_ITERATIONS else None,
            )
            wall = time.monotonic() - started
        main = document["timings"]["total_s"]
        per_slice = main / 3
        if method in NEURAL_ITERATIONS and iterations is not None:
            per_slice *= NEURAL_ITERATIONS[method] / iterations
        runs[method] = {
            "gflops": round(gflops, 1),
            "slice_seconds": round(per_slice, 2),
            "fixed_seconds": round(wall - main, 2),
        }
    return runs


if __name__ == "__main__":
    import json
    import sys

    chosen = tuple(sys.argv[1:]) or tuple(REFERENCE_SLICE_SECONDS)
    print(json.dumps(measure_reference(chosen, iterations=200), indent=2))
