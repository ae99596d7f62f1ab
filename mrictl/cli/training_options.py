"""The RAKI training flags shared by `recon run` and `train`: each speed lever, by name.

Every flag left out keeps the library default (`raki.train.TrainingConfig`); `--faithful`
starts from the paper's configuration instead. The flags only say what to change, so the
defaults stay in one place.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


FaithfulFlag = Annotated[
    bool,
    typer.Option(
        "--faithful",
        help="RAKI as published: fp32, lr 3e-3 constant, 1000 iterations, physical coils, "
        "full readout, no GRAPPA average.",
    ),
]
LearningRateOption = Annotated[
    float | None, typer.Option("--learning-rate", min=1e-6, max=1.0, help="Adam's step size.")
]
ScheduleOption = Annotated[
    Schedule | None, typer.Option("--lr-schedule", help="constant, or cosine annealing to zero.")
]
BatchFractionOption = Annotated[
    float | None,
    typer.Option(
        "--batch-fraction",
        min=0.01,
        max=1.0,
        help="Share of the ACS readout patches used per iteration (1: all).",
    ),
]
CoilEnergyOption = Annotated[
    float | None,
    typer.Option(
        "--coil-energy",
        min=0.5,
        max=1.0,
        help="SVD coil compression keeping this share of the ACS energy (e.g. 0.999).",
    ),
]
PrecisionOption = Annotated[
    Precision | None, typer.Option("--precision", help="fp32, or bf16 on hardware that has it.")
]
EarlyStopOption = Annotated[
    int | None,
    typer.Option("--early-stop", min=1, help="Stop after N checks without held-out gain."),
]
OversamplingOption = Annotated[
    float | None,
    typer.Option(
        "--readout-oversampling",
        min=1.0,
        max=8.0,
        help="Readout oversampling to remove before the networks, e.g. 2 for fastMRI (halves "
        "the work). Default: rraki removes what the file declares, raki keeps the full readout.",
    ),
]
SliceBatchOption = Annotated[
    int | None,
    typer.Option(
        "--slices-per-batch",
        min=1,
        help="Slices trained together in one pass (default: 1 on CPU, up to 16 on a GPU).",
    ),
]


def training_overrides(
    *,
    faithful: bool = False,
    learning_rate: float | None = None,
    lr_schedule: Schedule | None = None,
    batch_fraction: float | None = None,
    coil_energy: float | None = None,
    precision: Precision | None = None,
    early_stop: int | None = None,
    readout_oversampling: float | None = None,
    slices_per_batch: int | None = None,
) -> dict[str, Any]:
    """The TrainingConfig fields the flags set ("faithful": True starts from the paper's)."""
    chosen = {
        "learning_rate": learning_rate,
        "lr_schedule": lr_schedule.value if lr_schedule else None,
        "batch_fraction": batch_fraction,
        "coil_energy": coil_energy,
        "precision": precision.value if precision else None,
        "early_stop_patience": early_stop,
        "readout_oversampling": readout_oversampling,
        "slices_per_batch": slices_per_batch,
    }
    overrides: dict[str, Any] = {key: value for key, value in chosen.items() if value is not None}
    if faithful:
        overrides["faithful"] = True
    return overrides
