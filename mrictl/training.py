"""`mrictl train`: fit a scan's networks on its ACS and store them for later scans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrictl.choices import check_method_and_device
from mrictl.recon_service import prepare_scan, training_config
from raki.io import read_scan
from raki.methods import ProgressCallback
from raki.train import NEURAL_METHODS, train_scan


def train_file(
    source: Path,
    out: Path,
    *,
    method: str = "raki",
    acceleration: int | None = None,
    acs_lines: int | None = None,
    device: str = "auto",
    iterations: int | None = None,
    progress: ProgressCallback | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train on `source` (undersampled first if fully sampled) and save the weights to `out`.

    `training` holds the TrainingConfig fields to change (see `training_config`).
    """
    check_method_and_device(method, device, NEURAL_METHODS)
    scan, _ = prepare_scan(read_scan(source), acceleration, acs_lines)
    weights = train_scan(
        scan,
        method,
        device=device,
        iterations=iterations,
        progress=progress,
        config=training_config(training or {}),
    )
    written = weights.save(out)
    return {
        "input": source.name,
        "weights": str(written),
        "method": weights.method,
        "acceleration": weights.acceleration,
        "acs_lines": weights.acs_lines,
        "coils": weights.num_coils,
        "slices": weights.num_slices,
        "train_s": weights.train_seconds,
        "final_losses": weights.metadata()["final_losses"],
    }
