"""`mrictl demo`: the whole local pipeline on one scan, as a new user's first run.

simulate (or take a file) -> upload -> preprocess -> reconstruct (with GRAPPA and zero-fill
beside the chosen method, for the quality table) -> fetch, all through the same backend, queue
and worker code that production uses. It says how long it should take before it starts, and
what it is doing while it runs (mrictl.demo_progress).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrictl.demo_progress import DemoProgress, about, estimate_seconds, host_gflops
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline import jobs
from mrictl.worker import run_worker
from raki.io import write_scan
from raki.phantom import simulate_scan

COMPARED_METHODS = ("grappa", "zerofill")


def _fetch_replacing_earlier_demo(backend: Any, job_id: str, outputs: Path) -> list[Path]:
    """Fetch into `outputs`, replacing what an earlier demo fetched there (its result.json
    says so); a folder that holds anything else is left alone and refused."""
    staging = outputs.with_name(f".{outputs.name}.{job_id}")
    shutil.rmtree(staging, ignore_errors=True)
    files = jobs.fetch(backend, job_id, staging)
    if outputs.exists():
        if not (outputs / "result.json").is_file():
            shutil.rmtree(staging, ignore_errors=True)
            raise MrictlError(
                f"{outputs.name} exists and is not an earlier demo's outputs: choose another --out",
                ExitCode.CONFLICT,
            )
        shutil.rmtree(outputs)
    os.replace(staging, outputs)
    return [outputs / path.relative_to(staging) for path in files]


def run_demo(
    backend: Any,
    out_dir: Path,
    *,
    input_path: Path | None = None,
    method: str | None = None,
    acceleration: int = 4,
    acs_lines: int = 24,
    iterations: int | None = None,
    matrix: tuple[int, int] = (128, 96),
    coils: int = 8,
    slices: int = 3,
    snr: float = 20.0,
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every stage on one scan and return the final job record plus where outputs went.

    `step` is told each step, the estimate before the start and the progress (one line each).
    """
    from raki.method_names import DEFAULT_METHOD

    step = step or (lambda _: None)
    started = time.monotonic()
    waiting = [job for state in ("queued", "running") for job in backend.queue.list(state=state)]
    if waiting:
        # The demo's worker would run them first (a queue is first in, first out), and a
        # queued RAKI job can take minutes: say so instead of surprising the user.
        raise MrictlError(
            f"{len(waiting)} other job(s) are queued or running in this home: run the demo "
            "with --home on an empty folder, or let a worker finish them first",
            ExitCode.CONFLICT,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if input_path is not None:
        from mrictl.scans import describe_scan_file

        slices = int(describe_scan_file(input_path)["slices"])
    gflops = host_gflops()
    estimate = estimate_seconds(
        method or DEFAULT_METHOD, slices=slices, iterations=iterations, gflops=gflops
    )
    step(
        f"this host computes {gflops:.0f} GFLOP/s now (a 0.2 s calibration): "
        f"the demo should take {about(estimate)}"
    )
    if input_path is None:
        step(f"1/4 simulating a {coils}-coil {matrix[0]}x{matrix[1]} phantom, {slices} slices")
        input_path = write_scan(
            simulate_scan(matrix, num_coils=coils, num_slices=slices, snr=snr, seed=0),
            out_dir / "phantom_fully_sampled.h5",
        )
    options = {"acceleration": acceleration, "acs_lines": acs_lines, "iterations": iterations}
    options["compare"] = list(COMPARED_METHODS)
    step("2/4 uploading (tar + manifest + checksums) and queueing")
    record = jobs.submit(backend, input_path, method, options)
    compared = " and ".join(COMPARED_METHODS)
    step(f"3/4 running the worker: preprocess, then reconstruct (and {compared} to compare)")
    with DemoProgress(step, slices=slices, estimate=estimate):
        run_worker(backend, once=True)
    final = jobs.wait(backend, record["job_id"], timeout=0)
    if final["state"] != "succeeded":
        raise MrictlError(
            f"demo job {final['job_id']} {final['state']}: {final['error']}", ExitCode.JOB_FAILED
        )
    step("4/4 fetching outputs")
    files = _fetch_replacing_earlier_demo(backend, record["job_id"], out_dir / "outputs")
    step(f"done in {time.monotonic() - started:.0f} s (the estimate was {about(estimate)})")
    return {
        "job_id": record["job_id"],
        "final_job_id": final["job_id"],
        "scan_id": final["scan_id"],
        "method": final["method"],
        "acceleration": acceleration,
        "acs_lines": acs_lines,
        "metrics": final["metrics"],
        "timings": final["timings"],
        "comparison": final.get("comparison"),
        "out": str(out_dir / "outputs"),
        "files": [str(path) for path in files],
    }
