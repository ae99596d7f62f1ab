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

# What the demo's reconstruction costs, per method, on a host whose calibration gives
# REFERENCE_GFLOPS: (seconds once per process, the first call's set-up: oneDNN's kernels; seconds
# per slice; seconds per training iteration of a slice), one demo slice being 128x96, 8 coils,
# R4, ACS 24. FIXED_SECONDS is the rest (phantom, upload, preprocess, the grappa and zerofill
# comparison, outputs, fetch). Measured 2026-12-06 on a 2-core AVX-512 (BF16) host that other
# test runs were loading (load average 4-10), each run scaled by its own calibration; rerun with
# `python -m mrictl.demo_progress` (prints the table).
REFERENCE_GFLOPS = 60.0
REFERENCE_COSTS: dict[str, tuple[float, float, float]] = {
    "rraki": (18.0, 0.4, 0.113),
    "raki": (5.0, 0.3, 0.062),
    "auto": (0.0, 5.6, 0.0),
    "cs": (0.0, 1.6, 0.0),
    # Not measured on the demo: scripts/bench/learned_peer.py's 207 s per 8-coil 320x168
    # slice scaled by the pixel count (its epochs stop early; this is the upper side).
    "ssdu": (0.0, 47.0, 0.0),
    "grappa": (0.0, 0.02, 0.0),
    "zerofill": (0.0, 0.0, 0.0),
}
NEURAL_ITERATIONS = 1000  # raki.fit.DEFAULT_ITERATIONS, the paper's
FIXED_SECONDS = 3.0
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
    not know (a new default) counts as the slowest one: an estimate errs long."""
    if method not in REFERENCE_COSTS:
        method = max(REFERENCE_COSTS, key=lambda name: _seconds(name, slices, iterations))
    return _seconds(method, slices, iterations) * REFERENCE_GFLOPS / max(gflops, 1e-3)


def _seconds(method: str, slices: int, iterations: int | None) -> float:
    once, per_slice, per_iteration = REFERENCE_COSTS[method]
    count = NEURAL_ITERATIONS if iterations is None else iterations
    return FIXED_SECONDS + once + slices * (per_slice + per_iteration * count)


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


def measure_reference(methods: tuple[str, ...]) -> dict[str, list[float]]:
    """REFERENCE_COSTS measured here, each time scaled to REFERENCE_GFLOPS by a calibration just
    before it: a neural method cold at 10 iterations, then warm at 10 and at 110 (set-up per
    process, per slice and per iteration); the others once, on one demo slice."""
    from raki.methods import reconstruct
    from raki.phantom import simulate_scan

    scan = simulate_scan((128, 96), num_coils=8, num_slices=1, snr=20.0, seed=0)
    scan = scan.undersampled(4, 24)

    def timed(method: str, iterations: int | None) -> float:
        scale = host_gflops() / REFERENCE_GFLOPS
        started = time.perf_counter()
        reconstruct(scan, method, iterations=iterations)
        return (time.perf_counter() - started) * scale

    table = {}
    for method in methods:
        if method in ("raki", "rraki"):
            cold, short, long = timed(method, 10), timed(method, 10), timed(method, 110)
            per_iteration = max(0.0, (long - short) / 100)
            per_slice = max(0.0, short - 10 * per_iteration)
            table[method] = [round(cold - short, 1), round(per_slice, 2), round(per_iteration, 3)]
        else:
            table[method] = [0.0, round(timed(method, None), 2), 0.0]
    return table


if __name__ == "__main__":
    import json
    import sys

    chosen = tuple(sys.argv[1:]) or tuple(REFERENCE_COSTS)
    print(json.dumps(measure_reference(chosen)))
