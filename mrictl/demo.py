"""`mrictl demo`: the whole local pipeline on one scan, as a new user's first run.

simulate (or take a file) -> upload -> preprocess -> reconstruct (with GRAPPA and zero-fill
beside the chosen method, for the quality table) -> fetch, all through the same backend, queue
and worker code that production uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline import jobs
from mrictl.worker import run_worker
from raki.io import write_scan
from raki.phantom import simulate_scan

COMPARED_METHODS = ("grappa", "zerofill")


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
    """Run every stage on one scan and return the final job record plus where outputs went."""
    step = step or (lambda _: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    if input_path is None:
        step(f"simulating a {coils}-coil {matrix[0]}x{matrix[1]} phantom, {slices} slices")
        input_path = write_scan(
            simulate_scan(matrix, num_coils=coils, num_slices=slices, snr=snr, seed=0),
            out_dir / "phantom_fully_sampled.h5",
        )
    options = {"acceleration": acceleration, "acs_lines": acs_lines, "iterations": iterations}
    options["compare"] = list(COMPARED_METHODS)
    step("uploading (tar + manifest + checksums) and queueing")
    record = jobs.submit(backend, input_path, method, options)
    step("running the worker: preprocess, then reconstruct")
    run_worker(backend, once=True)
    final = jobs.wait(backend, record["job_id"], timeout=0)
    if final["state"] != "succeeded":
        raise MrictlError(
            f"demo job {final['job_id']} {final['state']}: {final['error']}", ExitCode.JOB_FAILED
        )
    step("fetching outputs")
    files = jobs.fetch(backend, record["job_id"], out_dir / "outputs")
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
