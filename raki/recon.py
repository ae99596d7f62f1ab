"""Apply a reconstruction method to a Scan: fill the skipped lines, keep the acquired ones, combine.

The one entry point every caller (CLI, workers, benchmarks) uses; methods plug in below.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from raki.errors import InvalidScanError
from raki.fft import rss_image
from raki.scan import Scan

METHODS = ("zerofill",)
DEFAULT_METHOD = "zerofill"

ProgressCallback = Callable[[dict[str, float]], None]


@dataclass
class ReconResult:
    """A reconstruction: filled k-space, its RSS image on the input's scale, and how it was made."""

    kspace: np.ndarray  # [slice, coil, kx, ky] complex64
    image: np.ndarray  # [slice, kx, ky] float32, RSS of the centred orthonormal inverse FFT
    method: str
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)


def zerofill(scan: Scan) -> np.ndarray:
    """k-space with skipped lines left at zero: the floor every method must beat."""
    return (scan.kspace * scan.sampled).astype(np.complex64)


def reconstruct(
    scan: Scan,
    method: str = DEFAULT_METHOD,
    *,
    device: str = "auto",
    iterations: int | None = None,
    progress: ProgressCallback | None = None,
) -> ReconResult:
    """Reconstruct `scan` with `method`; acquired and ACS lines are kept as measured."""
    if method not in METHODS:
        raise InvalidScanError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    start = time.perf_counter()
    kspace = zerofill(scan)
    elapsed = time.perf_counter() - start
    return ReconResult(
        kspace=kspace,
        image=rss_image(kspace),
        method=method,
        timings={"total_s": elapsed},
    )
