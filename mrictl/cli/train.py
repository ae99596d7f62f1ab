"""`mrictl train`: fit a scan's networks and store them for later scans of the protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mrictl.cli import training_options as flags
from mrictl.cli.common import (
    BackendOption,
    DeviceOption,
    HomeOption,
    JsonFlag,
    TimeoutOption,
    WaitOption,
    check_timeout_needs_wait,
    open_configured_backend,
    report_submitted,
)
from mrictl.cli.paths import check_output
from mrictl.cli.recon import AccelOption, AcsOption, IterationsOption, progress_reporter
from mrictl.config import load_settings
from mrictl.errors import ExitCode, MrictlError
from mrictl.output import Output, key_value_table


@flags.with_training_flags
def train(
    source: Annotated[
        str, typer.Argument(help="Scan to train on (its ACS lines), or an uploaded scan's id.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Weights file to write (here and now).")
    ] = None,
    submit: Annotated[
        bool,
        typer.Option(
            "--submit",
            help="Queue the training on the backend instead; the weights go to its store "
            "(`mrictl fetch JOB`, `mrictl recon submit --weights JOB`).",
        ),
    ] = False,
    method: Annotated[str, typer.Option("--method", help="raki or rraki.")] = "raki",
    accel: AccelOption = None,
    acs: AcsOption = None,
    device: DeviceOption = None,
    iterations: IterationsOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
    training: dict[str, Any] | None = None,
) -> None:
    """Train RAKI networks on a scan's ACS and save them (apply with `recon run --weights`)."""
    output = Output(json)
    if submit:
        if out is not None:
            raise MrictlError(
                "--submit stores the weights in the backend: leave out --out (then "
                "`mrictl fetch JOB --out DIR`)",
                ExitCode.USAGE,
            )
        _submit(output, source, method, accel, acs, device, iterations, training, wait, timeout,
                home, backend)  # fmt: skip
        return
    if out is None:
        raise MrictlError("give --out FILE (or --submit to queue the training)", ExitCode.USAGE)
    if wait or timeout is not None:
        raise MrictlError("--wait and --timeout go with --submit", ExitCode.USAGE)
    from mrictl.training import train_file

    check_output(out, (Path(source),))
    with output.progress(f"training {method}", total=None) as update:
        document = train_file(
            Path(source),
            out,
            method=method,
            acceleration=accel,
            acs_lines=acs,
            device=device or load_settings().device,
            iterations=iterations,
            progress=progress_reporter(update),
            training=training,
        )
    output.result(document, lambda console: console.print(key_value_table(document)))


def _submit(
    output: Output,
    source: str,
    method: str,
    accel: int | None,
    acs: int | None,
    device: str | None,
    iterations: int | None,
    training: dict[str, Any] | None,
    wait: bool,
    timeout: float | None,
    home: Path | None,
    backend: str | None,
) -> None:
    from mrictl.pipeline import jobs

    check_timeout_needs_wait(wait, timeout)
    store = open_configured_backend(home, backend)
    options = {
        "acceleration": accel,
        "acs_lines": acs,
        "device": device or load_settings().device,
        "iterations": iterations,
        "training": training or None,
    }
    record = jobs.submit_training(store, source, method, options)
    report_submitted(output, store, record, wait, timeout)
