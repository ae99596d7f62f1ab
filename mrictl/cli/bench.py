"""`mrictl bench`: measure reconstruction speed and cost on this machine."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mrictl.cli import training_options as flags
from mrictl.cli.common import DeviceOption, JsonFlag
from mrictl.cli.recon import IterationsOption
from mrictl.cli.scan import parse_matrix
from mrictl.config import load_settings
from mrictl.output import Output, key_value_table


@flags.with_training_flags
def bench(
    method: Annotated[str | None, typer.Option("--method", help="Method to time.")] = None,
    matrix: Annotated[str, typer.Option(help="Readout x phase-encode size.")] = "320x320",
    coils: Annotated[int, typer.Option(min=1, help="Coils.")] = 16,
    slices: Annotated[int, typer.Option(min=1, help="Slices to time.")] = 3,
    accel: Annotated[int, typer.Option("--accel", min=2, help="Acceleration R.")] = 4,
    acs: Annotated[int, typer.Option("--acs", min=2, help="ACS lines.")] = 32,
    iterations: IterationsOption = None,
    device: DeviceOption = None,
    slices_per_scan: Annotated[
        int, typer.Option(min=1, help="Slices in one clinical scan, for the cost per scan.")
    ] = 32,
    price_per_hour: Annotated[
        float | None, typer.Option(min=0.0, help="Instance price per hour, for cost per scan.")
    ] = None,
    volume: Annotated[
        bool, typer.Option("--volume", help="Reconstruct the slices as one volume (GPU batch).")
    ] = False,
    json: JsonFlag = False,
    training: dict[str, Any] | None = None,
) -> None:
    """Time a standard phantom study: seconds per slice, slices per hour, cost per scan."""
    from mrictl.bench import BenchSettings, run_bench
    from raki.methods import DEFAULT_METHOD

    output = Output(json)
    settings = BenchSettings(
        method=method or load_settings().method or DEFAULT_METHOD,
        matrix=parse_matrix(matrix),
        coils=coils,
        slices=slices,
        acceleration=accel,
        acs_lines=acs,
        iterations=iterations,
        device=device or load_settings().device,
        slices_per_scan=slices_per_scan,
        price_per_hour=price_per_hour,
        volume=volume,
        training=training,
    )
    with output.progress("benchmark", total=slices) as update:
        document = run_bench(settings, lambda done, total: update(completed=done, total=total))

    def render(console) -> None:
        rows = {
            "method": settings.method,
            "machine": f"{document['machine']['cpu']} ({document['machine']['cores']} cores)",
            "gpu": document["machine"]["gpu"],
            "training precision": document["precision"],
            "first slice (s)": f"{document['first_slice_s']:.2f}",
            "seconds per slice": f"{document['seconds_per_slice']:.2f}",
            "slices per hour": f"{document['slices_per_hour']:.0f}",
            f"seconds per scan ({slices_per_scan} slices)": f"{document['seconds_per_scan']:.1f}",
        }
        if document["cost_per_scan"] is not None:
            rows["cost per scan"] = f"{document['cost_per_scan']:.4f}"
        console.print(key_value_table(rows, title="mrictl bench"))

    output.result(document, render)
