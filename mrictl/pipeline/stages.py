"""The stage registry: every job stage, declared once; the worker looks stages up here.

A stage is a function `StageContext -> result dict`, imported only when a worker runs it, so a
worker that serves only `preprocess` (the Fargate service) never imports torch. `area` is where
the stage publishes its own outputs (mrictl.keys), which are removed if the job is cancelled.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mrictl import keys
from mrictl.errors import ExitCode, MrictlError

if TYPE_CHECKING:
    from mrictl.pipeline.context import StageContext

StageFunction = Callable[["StageContext"], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    entry_point: str  # "module:function"
    area: str | None  # the key area of the job's own outputs (None: content-keyed outputs)
    needs_torch: bool  # whether running it loads the science's neural code (GPU jobs)
    summary: str

    def function(self) -> StageFunction:
        module, _, name = self.entry_point.partition(":")
        return getattr(importlib.import_module(module), name)

    def outputs_prefix(self, job_id: str) -> str | None:
        return None if self.area is None else keys.outputs_prefix(self.area, job_id)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "preprocess",
            "mrictl.pipeline.preprocess_stage:run_preprocess",
            None,
            False,
            "unpack, verify and convert an upload to the canonical HDF5",
        ),
        Stage(
            "recon",
            "mrictl.pipeline.recon_stage:run_recon",
            keys.RECONSTRUCTED,
            True,
            "reconstruct a preprocessed scan into image files",
        ),
        Stage(
            "train",
            "mrictl.pipeline.train_stage:run_train",
            keys.WEIGHTS,
            True,
            "fit a scan's networks on its ACS and store the weights",
        ),
    )
}
STAGE_NAMES = tuple(STAGES)
# Stages whose jobs end with outputs a user fetches.
FETCHABLE = tuple(name for name, stage in STAGES.items() if stage.area is not None)


def stage_named(name: str) -> Stage:
    """The registered stage, or a usage error that lists them."""
    stage = STAGES.get(name)
    if stage is None:
        raise MrictlError(
            f"unknown stage {name!r}; choose from {', '.join(STAGE_NAMES)}", ExitCode.USAGE
        )
    return stage
