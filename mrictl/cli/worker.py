"""`mrictl worker run`: the same worker loop that runs inside the containers."""

from __future__ import annotations

import os
import threading
from typing import Annotated

import typer

from mrictl.cli.common import BackendOption, HomeOption, JsonFlag, open_configured_backend
from mrictl.errors import ExitCode, MrictlError
from mrictl.output import Output

app = typer.Typer(help="Run pipeline workers.", no_args_is_help=True)


@app.command("run")
def run(
    once: Annotated[bool, typer.Option("--once", help="Stop when the queue is empty.")] = False,
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help="preprocess, recon and/or train (default: all)."),
    ] = None,
    job: Annotated[
        str | None,
        typer.Option("--job", help="Run exactly this job, then exit (as a Batch container)."),
    ] = None,
    shard: Annotated[
        bool,
        typer.Option(
            "--shard",
            hidden=True,  # the command of an AWS Batch array child, never a user's
            help="With --job: reconstruct the slice range of array child "
            "AWS_BATCH_JOB_ARRAY_INDEX of a split recon job (AWS Batch's array containers).",
        ),
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 1,
    lease_seconds: Annotated[
        float | None, typer.Option("--lease-seconds", min=1.0, help="Job lease (s).")
    ] = None,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", min=0.05, help="Seconds between empty polls.")
    ] = 1.0,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """Claim and run jobs until stopped (Ctrl-C or SIGTERM finishes the job in hand).

    With --job, the job is run until it is final (a retryable failure is tried again here);
    exit 0 when it succeeded, 5 when it failed or was cancelled, 6 when it was not claimable
    (running elsewhere, or already finished: nothing to do), 130 when SIGTERM or Ctrl-C
    stopped it (the job is handed back at once). As an AWS Batch retry (AWS_BATCH_JOB_ATTEMPT
    above 1: the host of the last attempt failed), it first waits for that attempt's lease.
    """
    from mrictl.config import load_settings
    from mrictl.pipeline.stages import STAGE_NAMES, stage_named
    from mrictl.worker import run_job, run_worker, stop_on_signals

    stages = tuple(stage) if stage else STAGE_NAMES
    for name in stages:
        stage_named(name)
    if job is not None and (stage or workers != 1 or once):
        raise MrictlError(
            "--job runs one job: leave out --stage, --workers and --once", ExitCode.USAGE
        )
    if shard and job is None:
        raise MrictlError("--shard runs one array child of a job: give --job", ExitCode.USAGE)
    store = open_configured_backend(home, backend)
    lease = lease_seconds if lease_seconds is not None else load_settings().lease_seconds
    output = Output(json)
    if shard:
        from mrictl.worker import run_shard

        index = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX", "")
        if not index.isdigit():
            raise MrictlError(
                "--shard is an AWS Batch array child's command: AWS_BATCH_JOB_ARRAY_INDEX "
                "is not set here",
                ExitCode.USAGE,
            )
        with stop_on_signals(threading.Event(), interrupt=True):
            outcome = run_shard(store, str(job), int(index))
        document = {"job_id": job, "shard": int(index), "outcome": outcome}
        output.result(document, f"{job} shard {index}: {outcome}")
        return
    if job is not None:
        from mrictl.pipeline.jobs import job_record

        retried = os.environ.get("AWS_BATCH_JOB_ATTEMPT", "1")
        take_over = lease + 30.0 if retried.isdigit() and int(retried) > 1 else 0.0
        with stop_on_signals(threading.Event(), interrupt=True):
            done_job = run_job(store, job, lease_seconds=lease, take_over_within=take_over)
        record = job_record(done_job)
        output.result(record, f"{record['job_id']} {record['state']}")
        if record["state"] != "succeeded":
            raise typer.Exit(int(ExitCode.JOB_FAILED))
        return
    stop = threading.Event()
    if workers == 1:
        with stop_on_signals(stop):
            done = run_worker(
                store,
                stages=stages,
                once=once,
                lease_seconds=lease,
                stop_event=stop,
                poll_interval=poll_interval,
            )
    else:
        arguments = [f"--stage={name}" for name in stages] + [f"--lease-seconds={lease}"]
        arguments += [f"--poll-interval={poll_interval}"]
        arguments += ["--once"] if once else []
        processes = store.start_worker_processes(workers, arguments)
        # Each child finishes the job in hand, then exits.
        with stop_on_signals(stop, on_stop=processes.stop):
            done = processes.wait()
    document = {"jobs_done": done, "workers": workers, "stages": list(stages)}
    output.result(document, f"worker stopped ({done if done is not None else '?'} jobs)")
