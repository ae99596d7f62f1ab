"""`mrictl watch DIR`: the scanner's export folder, each scan picked up once and carried on."""

from __future__ import annotations

import json as json_module
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from mrictl.cli.common import (
    BackendOption,
    DeviceOption,
    HomeOption,
    open_configured_backend,
)
from mrictl.cli.jobs import recon_options
from mrictl.cli.pacs_options import (
    AetOption,
    CalledAetOption,
    PacsFlag,
    ToPacsOption,
    requested_node,
)
from mrictl.cli.recon import AccelOption, AcsOption, IterationsOption, MethodOption
from mrictl.errors import ExitCode, MrictlError

# What a log line leaves out of an event (it says them first) and never says at all.
_LEAD = ("at", "event", "entry", "scan_id", "job_id", "state")


def log_line(event: dict[str, Any]) -> str:
    """One line per event for a log (journald, a file): the scan id, else the entry's hash,
    never a file name."""
    who = event.get("scan_id") or event.get("entry") or "watch"
    words = [event["at"], who, event["event"]]
    words += [f"{name}={event[name]}" for name in ("job_id", "state") if event.get(name)]
    words += [
        f"{name}={value}"
        for name, value in event.items()
        if name not in _LEAD and value is not None
    ]
    return " ".join(str(word) for word in words)


def watch(
    folder: Annotated[
        Path, typer.Argument(help="The scanner's export folder (a network share is fine).")
    ],
    quiet_seconds: Annotated[
        float,
        typer.Option(
            "--quiet-seconds",
            min=0.0,
            help="A scan is complete when unchanged this long, or at once when NAME.done "
            "appears beside it.",
        ),
    ] = 30.0,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between looks at the folder.")
    ] = 5.0,
    recon: Annotated[
        bool,
        typer.Option("--recon", help="Queue each scan's reconstruction (its upload's job)."),
    ] = False,
    method: MethodOption = None,
    accel: AccelOption = None,
    acs: AcsOption = None,
    device: DeviceOption = None,
    iterations: IterationsOption = None,
    to_pacs: ToPacsOption = None,
    pacs: PacsFlag = False,
    aet: AetOption = None,
    called_aet: CalledAetOption = None,
    fetch_to: Annotated[
        Path | None,
        typer.Option("--fetch-to", help="Fetch each reconstruction into this folder/<scan_id>/."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Worker processes to run here while jobs are awaited (default: 1 on the local "
            "backend with --recon, else 0: the cloud runs them).",
        ),
    ] = None,
    job_timeout: Annotated[
        float | None,
        typer.Option(
            "--job-timeout",
            min=0.0,
            help="Seconds to wait for a scan's job (from when this run began waiting for it): "
            "then a job-timed-out event, the scan stays awaited (a restart waits again), and "
            "--once exits 8. Default: wait as long as it takes.",
        ),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option("--state", help="The state file (default: <home>/watch/<hash>.json)."),
    ] = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="One pass: carry every complete scan through, then exit."),
    ] = False,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: Annotated[
        bool, typer.Option("--json", help="One JSON object per event on stdout (JSON lines).")
    ] = False,
) -> None:
    """Watch a folder: upload each complete scan once; with --recon, reconstruct it and deliver
    the series (--pacs/--to-pacs, --fetch-to). SIGTERM or Ctrl-C finishes the step in hand and
    exits 0; --once exits with the first failure's code (0 if none; 8 a job past
    --job-timeout)."""
    from mrictl.config import load_settings
    from mrictl.watch import WatchOptions, default_state_path, watch_folder
    from mrictl.worker import stop_on_signals

    if not folder.exists():
        raise MrictlError(f"{folder.name}: no such folder", ExitCode.NOT_FOUND)
    if not folder.is_dir():
        raise MrictlError(f"{folder.name}: is a file; watch takes a folder", ExitCode.USAGE)
    settings = load_settings(home=home, backend=backend)
    store = open_configured_backend(home, backend)
    local_workers = 1 if recon and store.name == "local" else 0
    options = WatchOptions(
        quiet_seconds=quiet_seconds,
        interval=interval,
        recon=recon,
        method=(method or settings.method) if recon else None,
        recon_options=recon_options(accel, acs, device if recon else None, iterations),
        pacs=requested_node(to_pacs, pacs, aet, called_aet),
        pacs_retries=settings.pacs.retries,
        pacs_backoff_s=settings.pacs.backoff_seconds,
        fetch_to=fetch_to,
        workers=local_workers if workers is None else workers,
        worker_arguments=(
            "--stage=preprocess",
            "--stage=recon",
            f"--lease-seconds={settings.lease_seconds}",
            "--poll-interval=0.5",
        ),
        once=once,
        job_timeout=job_timeout,
    )

    def report(event: dict[str, Any]) -> None:
        if json:
            sys.stdout.write(json_module.dumps(event) + "\n")
            sys.stdout.flush()
        sys.stderr.write(log_line(event) + "\n")
        sys.stderr.flush()

    stop = threading.Event()
    with stop_on_signals(stop):
        code = watch_folder(
            store,
            folder,
            options,
            state_path=state or default_state_path(settings.home, folder),
            home=settings.home,
            on_event=report,
            stop=stop,
        )
    if code:
        raise typer.Exit(int(code))
