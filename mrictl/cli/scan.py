"""`mrictl scan`: inspect, simulate, undersample and convert scan files."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from mrictl.cli.common import AxisOrderOption, JsonFlag
from mrictl.cli.paths import check_output
from mrictl.errors import ExitCode, MrictlError
from mrictl.output import Output, key_value_table

app = typer.Typer(
    help="Inspect, simulate, undersample and convert scan files.", no_args_is_help=True
)


class Spacing(StrEnum):
    lattice = "lattice"
    fastmri = "fastmri"


ExistingFile = Annotated[Path, typer.Argument(help="A scan file (format detected from content).")]
OutFile = Annotated[Path, typer.Option("--out", "-o", help="File to write (format from suffix).")]


def parse_matrix(text: str) -> tuple[int, int]:
    """'320x168' -> (320, 168)."""
    try:
        readout, phase = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise MrictlError(f"matrix must look like 320x168, got {text!r}", ExitCode.USAGE) from None
    if readout < 8 or phase < 8:
        raise MrictlError(f"matrix {text} is too small (at least 8x8)", ExitCode.USAGE)
    return readout, phase


def _render(output: Output, document: dict, title: str) -> None:
    flat = {key: value for key, value in document.items() if key != "path"}
    output.result(document, lambda console: console.print(key_value_table(flat, title=title)))


@app.command("info")
def info(path: ExistingFile, axis_order: AxisOrderOption = None, json: JsonFlag = False) -> None:
    """Describe a scan file: format, coils, matrix, sampled lines, R and ACS."""
    from mrictl import scans

    _render(Output(json), scans.describe_scan_file(path, axis_order=axis_order), path.name)


@app.command("simulate")
def simulate(
    out: OutFile,
    matrix: Annotated[str, typer.Option(help="Readout x phase-encode size.")] = "128x96",
    coils: Annotated[int, typer.Option(min=1, max=128, help="Receive coils.")] = 8,
    slices: Annotated[int, typer.Option(min=1, max=512, help="Slices.")] = 1,
    snr: Annotated[float, typer.Option(min=1.0, help="Image SNR (mean head / noise).")] = 50.0,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same scan.")] = 0,
    accel: Annotated[int | None, typer.Option(min=1, help="Undersample to this R.")] = None,
    acs: Annotated[int | None, typer.Option(min=0, help="ACS lines when --accel is set.")] = None,
    json: JsonFlag = False,
) -> None:
    """Write a multi-coil phantom scan (fully sampled unless --accel is given)."""
    from mrictl import scans

    document = scans.simulate_scan_file(
        out,
        matrix=parse_matrix(matrix),
        coils=coils,
        slices=slices,
        snr=snr,
        seed=seed,
        acceleration=accel,
        acs_lines=acs,
    )
    _render(Output(json), document, f"wrote {out.name}")


@app.command("undersample")
def undersample(
    path: ExistingFile,
    out: OutFile,
    accel: Annotated[int, typer.Option("--accel", min=2, help="Acceleration R.")],
    acs: Annotated[int, typer.Option("--acs", min=0, help="Centred ACS lines.")] = 24,
    spacing: Annotated[
        Spacing,
        typer.Option(
            "--spacing",
            help="lattice: every R-th line; fastmri: 1/R of all lines with the ACS counted, "
            "rounded wider gaps (fastMRI's equispaced masks; GRAPPA only).",
        ),
    ] = Spacing.lattice,
    axis_order: AxisOrderOption = None,
    json: JsonFlag = False,
) -> None:
    """Retrospectively undersample a fully sampled scan (every R-th line + centred ACS)."""
    from mrictl import scans

    check_output(out, (path,))
    document = scans.undersample_scan_file(
        path, out, acceleration=accel, acs_lines=acs, axis_order=axis_order, spacing=spacing.value
    )
    _render(Output(json), document, f"wrote {out.name}")


@app.command("convert")
def convert(
    source: ExistingFile,
    out: Annotated[Path, typer.Argument(help="File to write.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Output format (default: from the suffix).")
    ] = None,
    axis_order: AxisOrderOption = None,
    json: JsonFlag = False,
) -> None:
    """Convert a scan between formats (fastMRI HDF5, ISMRMRD/MRD, ...)."""
    check_output(out, (source,), flag="the output")
    from mrictl import scans
    from raki.io import WRITABLE_FORMATS, format_from_suffix

    if to is None and format_from_suffix(out) is None:
        raise MrictlError(
            f"{out.name}: cannot tell the format from the suffix {out.suffix or '(none)'!r}; "
            f"pass --to ({', '.join(WRITABLE_FORMATS)})",
            ExitCode.USAGE,
        )
    if to is not None and to not in WRITABLE_FORMATS:
        raise MrictlError(
            f"--to {to!r} is not a format this writes ({', '.join(WRITABLE_FORMATS)})",
            ExitCode.USAGE,
        )
    document = scans.convert_scan_file(source, out, output_format=to, axis_order=axis_order)
    _render(Output(json), document, f"wrote {out.name}")
