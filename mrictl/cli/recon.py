"""`mrictl recon`: reconstruct here and now (`run`), or through the job queue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mrictl.cli import training_options as flags
from mrictl.cli.common import DeviceOption, JsonFlag
from mrictl.cli.paths import check_hdf5_output, check_output
from mrictl.config import load_settings
from mrictl.output import Output, key_value_table
from raki.method_names import (
    AUTO_CANDIDATES,
    CS_GRIDS,
    CS_REGULARIZERS,
    DEFAULT_METHOD,
    METHODS,
)

app = typer.Typer(help="Reconstruct scans: locally now, or as queued jobs.", no_args_is_help=True)

MethodOption = Annotated[
    str | None,
    typer.Option(
        "--method",
        envvar="MRICTL_METHOD",
        help=f"{', '.join(METHODS)}. Default {DEFAULT_METHOD}: per scan, whichever of "
        f"{' and '.join(AUTO_CANDIDATES)} best predicts ACS lines held out of the central "
        "slice; the choice and each candidate's held-out error are in the output.",
    ),
]
CsRegularizerOption = Annotated[
    str | None,
    typer.Option(
        "--cs-regularizer",
        help=f"cs (also when auto picks it): {', '.join(CS_REGULARIZERS)} (default "
        f"{CS_REGULARIZERS[0]}: wavelet sparsity by p-shrinkage; l1-wavelet: the classic L1, "
        "as BART's pics -R W; tikhonov: CG-SENSE).",
    ),
]
CsWeightOption = Annotated[
    float | None,
    typer.Option(
        "--cs-weight",
        help="cs: the regularisation weight on the k-space's scale (default: chosen per slice "
        "from the ACS noise level).",
    ),
]
CsGridOption = Annotated[
    str | None,
    typer.Option(
        "--cs-grid",
        help=f"cs's image grid: {CS_GRIDS[0]} (a scanner's data) or {CS_GRIDS[1]} (k-space made "
        "by an image's FFT). Default: cs uses extended, auto tests both.",
    ),
]
AccelOption = Annotated[
    int | None,
    typer.Option("--accel", min=2, help="Undersample a fully sampled input to this R first."),
]
AcsOption = Annotated[
    int | None, typer.Option("--acs", min=0, help="ACS lines with --accel (default 24).")
]
IterationsOption = Annotated[
    int | None, typer.Option("--iterations", min=1, help="Training iterations (RAKI, rRAKI).")
]


def progress_reporter(update: Callable[..., None]) -> Callable[[dict], None]:
    """Turn the library's progress callbacks into bar updates (iteration, loss)."""

    def report(event: dict) -> None:
        if "iteration" in event:
            update(
                completed=event["iteration"],
                total=event.get("iterations"),
                status=f"slice {int(event.get('slice', 0))} loss {event.get('loss', 0):.3g}",
            )

    return report


@app.command("run")
@flags.with_training_flags
def run(
    source: Annotated[Path, typer.Argument(help="Undersampled (or fully sampled) scan file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output HDF5 (reconstruction).")],
    method: MethodOption = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Fully sampled file for NMSE/PSNR/SSIM.")
    ] = None,
    accel: AccelOption = None,
    acs: AcsOption = None,
    device: DeviceOption = None,
    iterations: IterationsOption = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Apply networks saved by `mrictl train`.")
    ] = None,
    cs_regularizer: CsRegularizerOption = None,
    cs_weight: CsWeightOption = None,
    cs_grid: CsGridOption = None,
    json: JsonFlag = False,
    training: dict[str, Any] | None = None,
) -> None:
    """Reconstruct one scan file now, on this machine."""
    from mrictl.recon_service import ReconOptions, reconstruct_file

    check_output(out, (source, reference, weights))
    check_hdf5_output(out)
    output = Output(json)
    settings = load_settings()
    method = method or settings.method
    options = ReconOptions(
        method=method,
        acceleration=accel,
        acs_lines=acs,
        device=device or settings.device,
        iterations=iterations,
        weights=weights,
        training=training,
        cs_regularizer=cs_regularizer,
        cs_weight=cs_weight,
        cs_grid=cs_grid,
    )
    with output.progress(method or DEFAULT_METHOD, total=None) as update:
        document = reconstruct_file(
            source,
            out,
            options,
            reference_path=reference,
            progress=progress_reporter(update),
        )

    if document.get("fallback"):
        output.info(f"note: {document['fallback']}")

    def render(console) -> None:
        hidden = ("timings", "metrics", "fallback", "selection", "cs")
        rows = {k: v for k, v in document.items() if k not in hidden and v is not None}
        rows.update({f"time {k}": f"{v:.2f}" for k, v in document["timings"].items()})
        if document.get("selection"):
            from raki.selection import describe_selection

            rows["method"] = describe_selection(document["selection"])
        if document.get("cs"):
            cs = document["cs"]
            grid = f", {cs['grid']} grid" if cs.get("grid") else ""
            rows["cs"] = f"{cs['regularizer']}, weight {cs['weight_rule']}{grid}"
        for key, value in (document.get("metrics") or {}).items():
            rows[key] = f"{value:.4g}"
        console.print(key_value_table(rows, title=f"reconstructed {source.name}"))

    output.result(document, render)
