"""GRAPPA where the ACS block is small for R: what the source patterns and the power ceiling do.

One command (repository root, project venv; seconds per case, no training):

    .venv/bin/python scripts/bench/small_acs.py --out bench-results/small-acs.json

For each case (one slice, retrospectively undersampled through the centre line: every R-th
line plus a centred ACS block) it scores the RSS image against the fully sampled one (NMSE,
fastMRI's definition) for:

- "lattice only": GRAPPA as it was until 2026-11-27: every skipped line from the lattice lines
  around it (`calibrate_grappa` with its lattice patterns, applied where the mask has others
  by falling back to them), no ceiling;
- "patterns": one kernel per source pattern (`fit_grappa`), so lines beside the ACS read the
  closer ACS lines, no ceiling;
- "patterns + ceiling": GRAPPA as the method now runs (`reconstruct_grappa`).

Cases are settings no issue names: ACS blocks of 1.5R to 3R lines, fastMRI's R = 8 with a 4%
ACS among them, plus two grid cases to show that well-calibrated GRAPPA is left alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grappa_peer import data_folder, machine

from raki.fft import rss_image
from raki.grappa import apply_grappa, calibrate_grappa, fit_grappa, reconstruct_grappa
from raki.io import read_scan
from raki.metrics import nmse
from raki.phantom import simulate_scan
from raki.scan import Scan

CASES = [
    ("brain_8ch_320x168.h5", 8, 14),
    ("brain_8ch_320x168.h5", 6, 10),
    ("brain_8ch_320x168.h5", 4, 8),
    ("brain_8ch_320x168.h5", 4, 12),
    ("brain_16ch_96x96.h5", 8, 12),
    ("brain_16ch_96x96.h5", 6, 16),
    ("brain_16ch_64x64.h5", 8, 16),
    ("brain_16ch_64x64.h5", 5, 10),
    ("phantom 64x64 8ch SNR 5", 6, 10),
    ("brain_8ch_320x168.h5", 4, 32),
    ("brain_16ch_96x96.h5", 4, 24),
]


def lattice_only(scan: Scan) -> np.ndarray:
    """GRAPPA before source patterns and the ceiling, with today's automatic lambda."""
    kernel = fit_grappa(scan)
    filled = []
    for kspace, acs, lam in zip(scan.kspace, scan.acs_kspace(), kernel.regularization, strict=True):
        weights = calibrate_grappa(acs, scan.acceleration, regularization=lam)
        filled.append(apply_grappa(kspace, scan.sampled, weights, scan.acceleration))
    return np.stack(filled)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--data", help="folder with the brain_*.h5 files (default ../shared/data)")
    args = parser.parse_args()
    folder = data_folder(args.data)
    rows = []
    print("| data | R | ACS | zero-fill | lattice only | patterns | patterns + ceiling |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, acceleration, acs_lines in CASES:
        if name.startswith("phantom"):
            full = simulate_scan((64, 64), num_coils=8, snr=5.0, seed=3)
        elif (folder / name).is_file():
            full = read_scan(folder / name)
        else:
            continue
        reference = rss_image(full.kspace)
        scan = full.undersampled(acceleration, acs_lines)
        scores = {
            "zerofill": nmse(reference, rss_image(scan.kspace)),
            "lattice_only": nmse(reference, rss_image(lattice_only(scan))),
            "patterns": nmse(reference, rss_image(reconstruct_grappa(scan, limit_power=False))),
            "patterns_ceiling": nmse(reference, rss_image(reconstruct_grappa(scan))),
        }
        rows.append({"data": name, "R": acceleration, "acs": acs_lines, "nmse": scores})
        cells = " | ".join(f"{value:.4f}" for value in scores.values())
        print(f"| {name} | {acceleration} | {acs_lines} | {cells} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "cases": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
