"""Options shared by every command, so that flags read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (human text on stderr).")
]
HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", envvar="MRICTL_HOME", help="Local backend folder (default: XDG data dir)."
    ),
]
BackendOption = Annotated[
    str | None,
    typer.Option("--backend", envvar="MRICTL_BACKEND", help="Backend: local (default) or aws."),
]
AxisOrderOption = Annotated[
    str | None,
    typer.Option(
        "--axis-order",
        help="Axes of a .mat/.npy array, e.g. 'coil,ky,kx' (names: slice, coil, kx, ky).",
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option("--device", envvar="MRICTL_DEVICE", help="auto, cpu or cuda."),
]
