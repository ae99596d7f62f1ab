"""`mrictl bench`: time a standard phantom study so that sizing compute is a measurement.

Prints seconds per slice, slices per hour and the cost of one scan at a given hourly price.
The first slice is timed apart (it pays for start-up: thread pools, CUDA context), the rest give
the steady-state rate that a queue of scans sees.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mrictl.choices import check_method_and_device
from raki.methods import reconstruct
from raki.phantom import simulate_scan


@dataclass(frozen=True)
class BenchSettings:
    method: str
    matrix: tuple[int, int] = (320, 320)
    coils: int = 16
    slices: int = 3
    acceleration: int = 4
    acs_lines: int = 32
    iterations: int | None = None
    device: str = "auto"
    slices_per_scan: int = 32
    price_per_hour: float | None = None
    seed: int = 0
    # TrainingConfig fields to change (mrictl.recon_service.training_config).
    training: dict[str, Any] = field(default_factory=dict)
    # Reconstruct the slices as one volume (one call, slices trained together on a GPU)
    # instead of one by one; seconds per slice is then the volume's time over its slices.
    volume: bool = False

    def __post_init__(self) -> None:
        check_method_and_device(self.method, self.device)


def machine_description() -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, GPU if torch sees one."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from raki.device import has_native_bf16

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "cpu_native_bf16": has_native_bf16(torch.device("cpu")),
    }


def run_bench(
    settings: BenchSettings, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Reconstruct `settings.slices` phantom slices and summarise the timings.

    One by one, the first slice is timed apart (start-up) and the median of the rest is the
    rate; as a volume, a warm-up slice runs first and the volume's time is divided by its slices.
    """
    from mrictl.recon_service import training_config

    config = training_config(settings.training)
    study = simulate_scan(
        settings.matrix, num_coils=settings.coils, num_slices=settings.slices, seed=settings.seed
    )
    undersampled = study.undersampled(settings.acceleration, settings.acs_lines)

    def timed(scan) -> float:
        start = time.perf_counter()
        reconstruct(
            scan,
            settings.method,
            device=settings.device,
            iterations=settings.iterations,
            config=config,
        )
        return time.perf_counter() - start

    seconds: list[float] = []
    if settings.volume:
        seconds.append(timed(undersampled.replace(kspace=undersampled.kspace[:1])))
        volume_s = timed(undersampled)
        seconds.extend([volume_s / settings.slices] * settings.slices)
        if progress is not None:
            progress(settings.slices, settings.slices)
    else:
        for index in range(settings.slices):
            one_slice = undersampled.kspace[index : index + 1]
            seconds.append(timed(undersampled.replace(kspace=one_slice)))
            if progress is not None:
                progress(index + 1, settings.slices)
    steady = seconds[1:] or seconds
    per_slice = statistics.median(steady)
    per_scan_s = per_slice * settings.slices_per_scan
    cost = None
    if settings.price_per_hour is not None:
        cost = settings.price_per_hour * per_scan_s / 3600.0
    from raki.device import resolve_device
    from raki.train import resolve_precision

    precision = resolve_precision(
        config.precision, settings.method, resolve_device(settings.device)
    )
    return {
        "settings": {**asdict(settings), "matrix": list(settings.matrix)},
        "machine": machine_description(),
        "precision": precision if settings.method in ("raki", "rraki") else None,
        "first_slice_s": seconds[0],
        "seconds_per_slice": per_slice,
        "slices_per_hour": 3600.0 / per_slice if per_slice > 0 else None,
        "seconds_per_scan": per_scan_s,
        "cost_per_scan": cost,
        "slice_seconds": seconds,
    }
