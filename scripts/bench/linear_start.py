"""Residual RAKI's linear branch before any training: how close its start is to GRAPPA.

One command (repository root, project venv; seconds per case, no training):

    .venv/bin/python scripts/bench/linear_start.py --out bench-results/linear-start.json

For each case (one slice, retrospectively undersampled through the centre line) the branch
alone fills the skipped lines (the CNN's last layer set to zero) and its RSS image is scored
against the fully sampled one, as NMSE over our GRAPPA's NMSE:

- "real, 3 lines": the start used until 2026-11-25: real least squares over the whole 7 x 3
  lattice field (2 Nc real channels), Tikhonov 1e-3 of the mean feature energy;
- "complex, 2 lines": `raki.linear_branch.fit_linear_kernel`, GRAPPA's complex kernel over the
  two lines around the gap, damped with `raki.grappa.automatic_lambda`;
- "+ GRAPPA at blind spots": the same, with GRAPPA's prediction where the branch read the
  zero padding past the k-space (`raki.methods.blind_spots`), as the default method applies it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grappa_peer import data_folder, machine

from raki.fft import rss_image
from raki.grappa import reconstruct_grappa
from raki.io import read_scan
from raki.methods import blind_spots, fill_slice, lattice_offset
from raki.metrics import nmse
from raki.model import RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES
from raki.phantom import simulate_scan
from raki.scan import Scan
from raki.train import TrainingConfig, _start_networks

FILE_CASES = {
    "brain_8ch_320x168.h5": [(4, 32), (5, 32), (6, 32)],
    "brain_16ch_96x96.h5": [(3, 24), (4, 24), (5, 24), (6, 24)],
    "brain_16ch_64x64.h5": [(3, 20), (4, 20), (5, 20), (4, 24)],
}


def real_three_line_start(inputs: torch.Tensor, targets: torch.Tensor, acceleration: int):
    """The former start: real Tikhonov least squares over the 7 x 3 field, 1e-3 mean energy."""
    patches = functional.unfold(
        inputs.double(), (RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES), dilation=(1, acceleration)
    )[0]
    wanted = targets.double().reshape(targets.shape[1], -1)
    gram = patches @ patches.T
    gram += 1e-3 * torch.trace(gram) / gram.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype)
    kernel = torch.linalg.solve(gram, patches @ wanted.T).T
    shape = (targets.shape[1], inputs.shape[1], RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES)
    return kernel.reshape(shape).float()


def score_case(full: Scan, acceleration: int, acs_lines: int) -> dict[str, float]:
    full = replace(full, kspace=full.kspace[:1])
    scan = full.undersampled(acceleration, acs_lines)
    reference = rss_image(full.kspace)
    acs = scan.acs_kspace()[0]
    networks, scale, inputs, targets = _start_networks(acs, acceleration, "rraki", TrainingConfig())
    with torch.no_grad():
        networks.cnn.layer3.weight.zero_()
    kspace, offset = scan.kspace[0], lattice_offset(scan)
    grappa = reconstruct_grappa(scan)
    grappa_nmse = nmse(reference, rss_image(grappa))

    def branch_image(blind: np.ndarray | None) -> float:
        predicted = fill_slice(networks, kspace, acceleration, offset, scale, torch.device("cpu"))
        if blind is not None:
            predicted = np.where(blind, grappa[0], predicted)
        filled = np.where(scan.sampled, kspace, predicted)[None]
        return nmse(reference, rss_image(filled)) / grappa_nmse

    new_start = branch_image(None)
    with_grappa_edges = branch_image(blind_spots(scan.matrix, acceleration, offset))
    with torch.no_grad():
        networks.linear.weight.copy_(real_three_line_start(inputs, targets, acceleration))
    return {
        "grappa_nmse": grappa_nmse,
        "real_3_lines": branch_image(None),
        "complex_2_lines": new_start,
        "complex_2_lines_grappa_blind_spots": with_grappa_edges,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", help="folder with the brain_*.h5 files (default ../shared/data)")
    args = parser.parse_args()
    folder = data_folder(args.data)
    jobs = [
        (name, read_scan(folder / name), r, acs)
        for name, settings in FILE_CASES.items()
        if (folder / name).is_file()
        for r, acs in settings
    ]
    for snr in (5.0, 50.0):
        jobs.append(
            (f"phantom 8ch SNR {snr:g}", simulate_scan((192, 160), 8, snr=snr, seed=1), 4, 24)
        )
    rows = []
    columns = "GRAPPA NMSE | real, 3 lines | complex, 2 lines | + GRAPPA at blind spots"
    print(f"| data | R | ACS | {columns} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, full, acceleration, acs_lines in jobs:
        row = {"data": name, "R": acceleration, "acs": acs_lines}
        row.update(score_case(full, acceleration, acs_lines))
        rows.append(row)
        print(
            f"| {name.removesuffix('.h5')} | {acceleration} | {acs_lines} | "
            f"{row['grappa_nmse']:.3g} | {row['real_3_lines']:.2f} | "
            f"{row['complex_2_lines']:.2f} | {row['complex_2_lines_grappa_blind_spots']:.2f} |",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
