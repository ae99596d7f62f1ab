"""`mrictl worker run`: the same worker loop that runs inside the containers."""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import typer

from mrictl.cli.common import BackendOption, HomeOption, JsonFlag
from mrictl.errors import ExitCode, MrictlError
from mrictl.output import Output

app = typer.Typer(help="Run pipeline workers.", no_args_is_help=True)


@app.command("run")
def run(
    once: Annotated[bool, typer.Option("--once", help="Stop when the queue is empty.")] = False,
    stage: Annotated[
        list[str] | None, typer.Option("--stage", help="preprocess and/or recon (default both).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 1,
    lease_seconds: Annotated[
        float | None, typer.Option("--lease-seconds", min=1.0, help="Job lease (s).")
    ] = None,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """Claim and run jobs until stopped (Ctrl-C or SIGTERM finishes the job in hand)."""
    from mrictl.backends.base import STAGES
    from mrictl.cli.jobs import backend_for
    from mrictl.config import load_settings
    from mrictl.worker import reported_jobs, run_worker, spawn_workers, stop_on_signals

    stages = tuple(stage) if stage else STAGES
    unknown = [name for name in stages if name not in STAGES]
    if unknown:
        raise MrictlError(
            f"unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}", ExitCode.USAGE
        )
    store = backend_for(home, backend)
    lease = lease_seconds if lease_seconds is not None else load_settings().lease_seconds
    stop = threading.Event()
    if workers == 1:
        with stop_on_signals(stop):
            done = run_worker(store, stages=stages, once=once, lease_seconds=lease, stop_event=stop)
    else:
        with tempfile.TemporaryDirectory(prefix="workers-", dir=store.scratch_dir) as reports:
            processes = spawn_workers(
                workers, store.home, stages=stages, once=once, report_dir=Path(reports),
                lease_seconds=lease,
            )  # fmt: skip

            def stop_children() -> None:  # each finishes the job in hand, then exits
                for process in processes:
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)

            with stop_on_signals(stop, on_stop=stop_children):
                for process in processes:
                    process.wait()
            done = reported_jobs(Path(reports))
    document = {"jobs_done": done, "workers": workers, "stages": list(stages)}
    Output(json).result(document, f"worker stopped ({done if done is not None else '?'} jobs)")
