"""`mrictl demo`: simulate -> upload -> preprocess -> recon -> fetch, then a quality table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mrictl.cli.common import BackendOption, HomeOption, JsonFlag
from mrictl.cli.recon import IterationsOption, MethodOption
from mrictl.config import load_settings
from mrictl.output import Output


def quality_table(document: dict) -> Table:
    """Methods side by side: NMSE / PSNR / SSIM against the fully sampled reference, and time."""
    table = Table(title=f"R={document['acceleration']}, ACS {document['acs_lines']} lines")
    for column in ("method", "NMSE", "PSNR (dB)", "SSIM", "time (s)"):
        table.add_column(column, justify="left" if column == "method" else "right")
    rows = dict(document.get("comparison") or {})
    rows[document["method"]] = {**document["metrics"], "time_s": document["timings"].get("total_s")}
    for name, row in sorted(rows.items(), key=lambda item: item[1].get("nmse", 1e9)):
        table.add_row(
            name + (" (this run)" if name == document["method"] else ""),
            f"{row.get('nmse', float('nan')):.4f}",
            f"{row.get('psnr', float('nan')):.2f}",
            f"{row.get('ssim', float('nan')):.4f}",
            f"{row.get('time_s', float('nan')):.1f}",
        )
    return table


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where outputs go.")] = Path(
        "mrictl-demo"
    ),
    input_path: Annotated[
        Path | None, typer.Option("--input", help="A fully sampled scan instead of a phantom.")
    ] = None,
    method: MethodOption = None,
    accel: Annotated[int, typer.Option("--accel", min=2, help="Acceleration R.")] = 4,
    acs: Annotated[int, typer.Option("--acs", min=2, help="ACS lines.")] = 24,
    iterations: IterationsOption = None,
    home: HomeOption = None,
    backend: BackendOption = None,
    json: JsonFlag = False,
) -> None:
    """Run the whole local pipeline on a simulated (or given) scan and print the quality."""
    from mrictl.cli.common import open_configured_backend
    from mrictl.demo import run_demo

    output = Output(json)
    document = run_demo(
        open_configured_backend(home, backend),
        out,
        input_path=input_path,
        method=method or load_settings().method,
        acceleration=accel,
        acs_lines=acs,
        iterations=iterations,
        step=lambda text: output.info(f"- {text}"),
    )

    def render(console) -> None:
        console.print(quality_table(document))
        console.print(f"outputs: {document['out']} ({len(document['files'])} files)")

    output.result(document, render)
