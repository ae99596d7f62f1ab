"""`mrictl upload`, `mrictl fetch` and the queued side of `mrictl recon`."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from mrictl.cli.common import (
    BackendOption,
    DeviceOption,
    HomeOption,
    JsonFlag,
    TimeoutOption,
    WaitOption,
    check_timeout_needs_wait,
    confirm_or_refuse,
    open_configured_backend,
    report_submitted,
)
from mrictl.cli.pacs_options import (
    AetOption,
    CalledAetOption,
    PacsFlag,
    ToPacsOption,
    requested_node,
)
from mrictl.cli.recon import (
    AccelOption,
    AcsOption,
    CsGridOption,
    CsRegularizerOption,
    CsWeightOption,
    IterationsOption,
    MethodOption,
)
from mrictl.cli.recon import app as recon_app
from mrictl.config import load_settings
from mrictl.errors import ExitCode, MrictlError
from mrictl.output import Output, key_value_table, records_table

STATUS_COLUMNS = ["job_id", "stage", "state", "method", "attempts", "updated_at", "error"]


def recon_options(
    accel: int | None, acs: int | None, device: str | None, iterations: int | None
) -> dict:
    return {"acceleration": accel, "acs_lines": acs, "device": device, "iterations": iterations}


TO_STORE = "s3"


def upload(
    paths: Annotated[list[Path], typer.Argument(help="The scan's file(s).")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="s3: the aws backend's store (the same as --backend aws); or a share folder "
            "(a mounted Storage Gateway file share: ./s3 for a folder named s3) to write the "
            "tar into.",
        ),
    ] = None,
    method: MethodOption = None,
    accel: AccelOption = None,
    acs: AcsOption = None,
    axis_order: Annotated[str | None, typer.Option("--axis-order")] = None,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """Package a scan (tar + manifest + checksums) and send it to the store or a share."""
    from mrictl.pipeline.upload import SendListener
    from mrictl.pipeline.upload import upload as upload_scan

    output = Output(json)
    share = None
    if to == TO_STORE:
        if backend not in (None, "aws"):
            raise MrictlError(
                f"--to s3 sends to the aws backend's store, not the {backend!r} backend: "
                "leave out --backend (or MRICTL_BACKEND)",
                ExitCode.USAGE,
            )
        backend = "aws"
    elif to is not None:
        share = Path(to)
        if not share.is_dir():
            raise MrictlError(f"{share.name}: share folder does not exist", ExitCode.NOT_FOUND)
    if share is not None and (method or accel is not None or acs is not None):
        # The share only carries the package: a request given here would be silently lost.
        raise MrictlError(
            "--method, --accel and --acs do not travel with --to: the share holds only the "
            "package; queue its reconstruction where it arrives (`mrictl recon submit SCAN_ID`)",
            ExitCode.USAGE,
        )
    mib = float(1 << 20)
    # 0, not None, until the package's size is known: the bar's count column cannot show None.
    with output.progress("upload (MiB)", total=0) as update:

        def started(size: int, already: int) -> None:
            update(total=size / mib, completed=0)
            if already:
                output.info(f"resumed at {already / mib:.0f} MiB of {size / mib:.0f}")

        result = upload_scan(
            open_configured_backend(home, backend),
            paths,
            to_dir=share,
            method=method or load_settings().method,
            options=recon_options(accel, acs, None, None),
            axis_order=axis_order,
            phase=lambda step: update(status=step),
            listener=SendListener(started, lambda sent: update(advance=sent / mib)),
        )
    document = {
        "scan_id": result.scan_id,
        "already_uploaded": result.already_uploaded,
        "location": result.location,
        "job_id": result.job_id,
    }
    note = (
        "already uploaded: nothing queued (another reconstruction: "
        f"mrictl recon submit {result.scan_id})"
        if result.already_uploaded
        else "uploaded"
    )
    output.result(document, lambda c: c.print(key_value_table(document, title=note)))


@recon_app.command("submit")
def submit(
    source: Annotated[str, typer.Argument(help="A scan file, or the id of an uploaded scan.")],
    method: MethodOption = None,
    accel: AccelOption = None,
    acs: AcsOption = None,
    device: DeviceOption = None,
    iterations: IterationsOption = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="Apply the weights of a train job (its id)."),
    ] = None,
    cs_regularizer: CsRegularizerOption = None,
    cs_weight: CsWeightOption = None,
    cs_grid: CsGridOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """Queue a reconstruction (workers run it: `mrictl worker run`)."""
    from mrictl.pipeline import jobs

    check_timeout_needs_wait(wait, timeout)
    output = Output(json)
    store = open_configured_backend(home, backend)
    settings = load_settings()
    options = recon_options(accel, acs, device or settings.device, iterations)
    record = jobs.submit(
        store,
        source,
        method or (None if weights else settings.method),
        {
            **options,
            "weights_job": weights,
            "cs_regularizer": cs_regularizer,
            "cs_weight": cs_weight,
            "cs_grid": cs_grid,
        },
    )
    report_submitted(output, store, record, wait, timeout)


@recon_app.command("status")
def status(
    job: Annotated[str | None, typer.Argument(help="A job id (default: all jobs).")] = None,
    state: Annotated[str | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """Job records (schema: docs/jobs-schema.md)."""
    from mrictl.pipeline import jobs

    records = jobs.status(open_configured_backend(home, backend), job, state=state)

    def render(console) -> None:
        console.print(records_table(records, STATUS_COLUMNS))
        for record in records:
            if record["waiting_reason"]:
                line = f"{record['job_id']} waiting: {record['waiting_reason']}"
                console.print(line, markup=False, highlight=False)

    Output(json).result({"jobs": records}, render)


@recon_app.command("watch")
def watch(
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Refresh (s).")] = 1.0,
    timeout: TimeoutOption = None,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """A live table of jobs until none is queued or running (one snapshot off a TTY, unless
    --timeout is given: then it waits up to that long there too, and exits 8 if jobs remain)."""
    from rich.live import Live

    from mrictl.pipeline import jobs

    output = Output(json)
    store = open_configured_backend(home, backend)
    deadline = None if timeout is None else time.monotonic() + timeout

    def busy(records: list[dict]) -> int:
        return sum(r["state"] in ("queued", "running") for r in records)

    records = jobs.status(store)
    live = output.interactive and not json
    if live or timeout is not None:
        # The live view is progress on stderr, gone when done: the final table is the result.
        table = Live(records_table(records, STATUS_COLUMNS), console=output.console, transient=True)
        with table if live else contextlib.nullcontext():
            while busy(records) and (deadline is None or time.monotonic() < deadline):
                time.sleep(interval if deadline is None else min(interval, timeout))
                records = jobs.status(store)
                if live:
                    table.update(records_table(records, STATUS_COLUMNS))
        if busy(records):
            raise MrictlError(
                f"watch gave up after {timeout:g} s: {busy(records)} job(s) still queued or "
                "running (they go on)",
                ExitCode.TIMEOUT,
            )
    output.result({"jobs": records}, lambda c: c.print(records_table(records, STATUS_COLUMNS)))


@recon_app.command("logs")
def logs(
    job: Annotated[str, typer.Argument(help="Job id.")],
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """The log lines of a job and of the jobs it led to; then, on AWS Batch, what their
    containers wrote (marked batch)."""
    from mrictl.pipeline import jobs

    entries = jobs.logs(open_configured_backend(home, backend), job)

    def render(console) -> None:
        for entry in entries:
            mark = " [batch]" if entry["source"] == "batch" else ""
            console.print(
                f"{entry['at']} {entry['job_id']}{mark} #{entry['attempt']} {entry['message']}",
                markup=False,
                highlight=False,
            )

    Output(json).result({"job_id": job, "logs": entries}, render)


@recon_app.command("cancel")
def cancel(
    job: Annotated[str, typer.Argument(help="Job id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """Cancel a queued or running job (a running worker stops at its next heartbeat)."""
    from mrictl.pipeline import jobs

    output = Output(json)
    confirm_or_refuse(output, yes, f"cancel {job}?")
    record = jobs.cancel(open_configured_backend(home, backend), job)
    output.result(record, lambda c: c.print(key_value_table(record, title="cancelled")))


@recon_app.command("retry")
def retry(
    job: Annotated[str, typer.Argument(help="Job id of a failed or cancelled job.")],
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """Queue a failed or cancelled job again with a fresh set of attempts."""
    from mrictl.pipeline import jobs

    record = jobs.retry(open_configured_backend(home, backend), job)
    Output(json).result(record, lambda c: c.print(key_value_table(record, title="queued again")))


def fetch(
    job: Annotated[str, typer.Argument(help="Job id (as `recon submit` printed it).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder to copy the outputs into (or/and a PACS)."),
    ] = None,
    formats: Annotated[
        str | None,
        typer.Option("--format", help="Comma list: h5,dicom,nifti,png,report,json (default all)."),
    ] = None,
    to_pacs: ToPacsOption = None,
    pacs: PacsFlag = False,
    aet: AetOption = None,
    called_aet: CalledAetOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """Copy a finished job's outputs (checksums verified) into a folder, and/or send its DICOM
    series to a PACS (C-ECHO, then C-STORE; exit 9 unless the PACS accepted every instance)."""
    from mrictl.pipeline import jobs

    check_timeout_needs_wait(wait, timeout)
    node = requested_node(to_pacs, pacs, aet, called_aet)
    if out is None and node is None:
        raise MrictlError("give --out FOLDER, --to-pacs HOST:PORT or --pacs", ExitCode.USAGE)
    store = open_configured_backend(home, backend)
    if wait:
        jobs.wait(store, job, timeout)
    selected = [name.strip() for name in formats.split(",") if name.strip()] if formats else None
    written = jobs.fetch(store, job, out, selected) if out is not None else []
    document = {
        "job_id": job,
        "out": None if out is None else str(out),
        "files": [str(path) for path in written],
    }
    fetched = f"fetched {len(written)} file(s) into {out}" if out is not None else ""
    output = Output(json)
    if node is None:
        output.result(document, fetched)
        return
    from mrictl.pipeline.delivery import deliver_job

    with_series = out is not None and (not selected or "dicom" in selected)
    settings = load_settings(home=home, backend=backend)
    report = deliver_job(
        store,
        job,
        node,
        home=settings.home,
        fetched=written if with_series else None,
        retries=settings.pacs.retries,
        backoff_s=settings.pacs.backoff_seconds,
    )
    document["pacs"] = report.to_document()
    counts = ", ".join(f"{n} {name}" for name, n in report.counts.items() if n)
    output.result(document, "; ".join(filter(None, [fetched, f"PACS {node}: {counts}"])))
    if not report.complete:
        output.info(f"error: PACS {node} did not accept {report.missing} instance(s)")
        raise typer.Exit(int(ExitCode.DELIVERY))
