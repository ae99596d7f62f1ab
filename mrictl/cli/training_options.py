"""The RAKI training flags shared by `recon run`, `train` and `bench`: each speed lever, by name.

Every flag left out keeps the library default (`raki.train.TrainingConfig`); `--faithful`
starts from the paper's configuration instead. The flags only say what to change, so the
defaults stay in one place. Commands take them all through `@with_training_flags`, so a new
lever is declared once here and every command offers it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Annotated, Any

import typer


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"


class NetworkStart(StrEnum):
    random = "random"
    grappa = "grappa"


class Precision(StrEnum):
    auto = "auto"
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
    Precision | None,
    typer.Option(
        "--precision",
        help="fp32, bf16, or auto (the default: bf16 for rraki where the CPU or GPU computes "
        "bf16 in hardware, else fp32).",
    ),
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
NetworkStartOption = Annotated[
    NetworkStart | None,
    typer.Option(
        "--network-start",
        help="raki: random (as published, the default), or grappa: the networks start as a "
        "GRAPPA kernel (much better on high-SNR data, slightly worse on noisy data).",
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


# Every training flag: parameter name -> (annotation, default), in the order `--help` lists them.
TRAINING_FLAGS: dict[str, tuple[Any, Any]] = {
    "faithful": (FaithfulFlag, False),
    "learning_rate": (LearningRateOption, None),
    "lr_schedule": (ScheduleOption, None),
    "batch_fraction": (BatchFractionOption, None),
    "coil_energy": (CoilEnergyOption, None),
    "precision": (PrecisionOption, None),
    "early_stop": (EarlyStopOption, None),
    "readout_oversampling": (OversamplingOption, None),
    "slices_per_batch": (SliceBatchOption, None),
    "network_start": (NetworkStartOption, None),
}

# Flag parameter name -> TrainingConfig field.
FIELDS = {
    "learning_rate": "learning_rate",
    "lr_schedule": "lr_schedule",
    "batch_fraction": "batch_fraction",
    "coil_energy": "coil_energy",
    "precision": "precision",
    "early_stop": "early_stop_patience",
    "readout_oversampling": "readout_oversampling",
    "slices_per_batch": "slices_per_batch",
    "network_start": "network_start",
}


def training_overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainingConfig fields a command's flags set ("faithful": True starts from the paper's).

    `flags` is the command's parameters (its `locals()`); names that are not training flags and
    flags left out (None) are ignored, so each command declares only the flags it offers.
    """
    overrides: dict[str, Any] = {}
    for name, field in FIELDS.items():
        value = flags.get(name)
        if value is not None:
            overrides[field] = value.value if isinstance(value, StrEnum) else value
    if flags.get("faithful"):
        overrides["faithful"] = True
    return overrides


def with_training_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give a typer command every training flag; it receives them as `training`, the
    TrainingConfig overrides (`training_overrides`), instead of one parameter per flag.

    The flags go into the command's signature (before `--json`, where it has one), which is
    what typer reads to build the options.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [param for name, param in signature.parameters.items() if name != "training"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, (kind, default) in TRAINING_FLAGS.items()
    ]
    names = [param.name for param in own]
    at = names.index("json") if "json" in names else len(own)
    # Keyword-only from here on, so that the order is valid whatever the command declares.
    tail = [param.replace(kind=inspect.Parameter.KEYWORD_ONLY) for param in own[at:]]
    parameters = own[:at] + added + tail

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        flags = {name: kwargs.pop(name, default) for name, (_, default) in TRAINING_FLAGS.items()}
        return command(*args, training=training_overrides(flags), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return wrapper
