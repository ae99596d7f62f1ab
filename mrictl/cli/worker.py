"""`mrictl worker run`: the same worker loop that runs inside the containers."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from mrictl.cli.common import BackendOption, HomeOption, JsonFlag
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
    from mrictl.worker import reported_jobs, run_worker, spawn_workers

    stages = tuple(stage) if stage else STAGES
    store = backend_for(home, backend)
    kwargs = {} if lease_seconds is None else {"lease_seconds": lease_seconds}
    if workers == 1:
        done = run_worker(store, stages=stages, once=once, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="workers-", dir=store.scratch_dir) as reports:
            processes = spawn_workers(
                workers, store.home, stages=stages, once=once, report_dir=Path(reports), **kwargs
            )
            for process in processes:
                process.wait()
            done = reported_jobs(Path(reports))
    document = {"jobs_done": done, "workers": workers, "stages": list(stages)}
    Output(json).result(document, f"worker stopped ({done if done is not None else '?'} jobs)")
