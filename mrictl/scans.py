"""The service functions behind `mrictl scan`: describe, simulate, undersample, convert files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raki.io import detect_format, read_scan, write_scan
from raki.phantom import simulate_scan
from raki.scan import Scan


def describe_scan_file(path: Path, *, axis_order: str | None = None) -> dict[str, Any]:
    """Format and summary of a scan file (never identifiers), for `scan info`."""
    scan = read_scan(path, axis_order=axis_order)
    return {"file": path.name, "format": detect_format(path), **scan.summary()}


def simulate_scan_file(
    out: Path,
    *,
    matrix: tuple[int, int],
    coils: int,
    slices: int,
    snr: float,
    seed: int,
    acceleration: int | None = None,
    acs_lines: int | None = None,
) -> dict[str, Any]:
    """Write a phantom scan (fully sampled, or undersampled when R is given) to `out`."""
    scan = simulate_scan(matrix, num_coils=coils, num_slices=slices, snr=snr, seed=seed)
    if acceleration is not None and acceleration > 1:
        scan = scan.undersampled(acceleration, acs_lines if acs_lines is not None else 24)
    written = write_scan(scan, out)
    return {"file": written.name, "path": str(written), **scan.summary()}


def undersample_scan_file(
    source: Path,
    out: Path,
    *,
    acceleration: int,
    acs_lines: int,
    axis_order: str | None = None,
    spacing: str = "lattice",
) -> dict[str, Any]:
    """Retrospectively undersample a fully sampled scan file into a new file."""
    scan: Scan = read_scan(source, axis_order=axis_order).undersampled(
        acceleration, acs_lines, spacing=spacing
    )
    written = write_scan(scan, out)
    return {"file": written.name, "path": str(written), **scan.summary()}


def convert_scan_file(
    source: Path, out: Path, *, output_format: str | None = None, axis_order: str | None = None
) -> dict[str, Any]:
    """Read any supported scan file and write it in another format (by suffix or explicit)."""
    scan = read_scan(source, axis_order=axis_order)
    written = write_scan(scan, out, format=output_format)
    return {
        "source": source.name,
        "source_format": detect_format(source),
        "file": written.name,
        "path": str(written),
        "format": detect_format(written),
        **scan.summary(),
    }
