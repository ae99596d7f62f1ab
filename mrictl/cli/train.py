"""`mrictl train`: fit a scan's networks and store them for later scans of the protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mrictl.cli import training_options as flags
from mrictl.cli.common import DeviceOption, JsonFlag
from mrictl.cli.paths import check_output
from mrictl.cli.recon import AccelOption, AcsOption, IterationsOption, progress_reporter
from mrictl.config import load_settings
from mrictl.output import Output, key_value_table


@flags.with_training_flags
def train(
    source: Annotated[Path, typer.Argument(help="Scan to train on (its ACS lines).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights file to write.")],
    method: Annotated[str, typer.Option("--method", help="raki or rraki.")] = "raki",
    accel: AccelOption = None,
    acs: AcsOption = None,
    device: DeviceOption = None,
    iterations: IterationsOption = None,
    json: JsonFlag = False,
    training: dict[str, Any] | None = None,
) -> None:
    """Train RAKI networks on a scan's ACS and save them (apply with `recon run --weights`)."""
    from mrictl.training import train_file

    check_output(out, (source,))
    output = Output(json)
    with output.progress(f"training {method}", total=None) as update:
        document = train_file(
            source,
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
