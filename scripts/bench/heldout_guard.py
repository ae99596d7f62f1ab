"""A guard for the default method, tried and rejected: networks kept at their best held-out error.

One command (repository root, project venv; about 3 minutes):

    .venv/bin/python scripts/bench/heldout_guard.py --out bench-results/heldout-guard.json

Per case (one slice, retrospectively undersampled), the `rraki` networks are trained as the
default trains them (Adam lr 3e-3, 1000 iterations) but with every fifth 8-row readout band of
the ACS kept out of the loss, and the CNN's last layer started at zero, so that the start is
the linear branch alone. Every 10 iterations the held-out error is read; "best" is the state
with the lowest one (the start included), "final" the state after 1000 iterations. Both are
applied as the default applies its weights (averaged with GRAPPA, GRAPPA at the blind spots)
and scored as NMSE over our GRAPPA's. If held-out ACS error saw what the image needs, "best"
would never lose to "final".
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grappa_peer import data_folder, machine

from raki.fft import rss_image
from raki.fit import denormals_flushed, network_error_norms
from raki.grappa import reconstruct_grappa
from raki.io import read_scan
from raki.methods import apply_weights
from raki.metrics import nmse
from raki.phantom import simulate_scan
from raki.runtime import tune_process
from raki.scan import Scan
from raki.train import TrainingConfig, _start_networks, train_scan
from raki.weights import RakiWeights

BAND_ROWS, EVERY_BAND = 8, 5
CASES = ["brain_16ch_64x64.h5:6:20", "brain_8ch_320x168.h5:4:32", "phantom5"]


def load_case(case: str, folder: Path) -> tuple[Scan, int, int]:
    if case.startswith("phantom"):
        snr = float(case.removeprefix("phantom"))
        return simulate_scan((192, 160), num_coils=8, snr=snr, seed=1), 4, 24
    name, acceleration, acs_lines = case.split(":")
    return read_scan(folder / name), int(acceleration), int(acs_lines)


def guarded_training(scan: Scan, iterations: int = 1000) -> dict[str, object]:
    """Best-held-out and final network states of slice 0, and where the best one was."""
    config = TrainingConfig()
    networks, _, inputs, targets = _start_networks(
        scan.acs_kspace()[0], scan.acceleration, "rraki", config
    )
    with torch.no_grad():
        networks.cnn.layer3.weight.zero_()
    rows, positions = targets.shape[-2:]
    held_rows = (torch.arange(rows) // BAND_ROWS) % EVERY_BAND == EVERY_BAND // 2
    held = held_rows[:, None].expand(rows, positions)
    count = networks.cnn.num_networks
    optimizer = torch.optim.Adam(networks.parameters(), lr=config.learning_rate)
    best, best_iteration, best_state = float("inf"), 0, None
    with denormals_flushed():
        for iteration in range(iterations + 1):
            error = networks(inputs, scan.acceleration) - targets
            if iteration % 10 == 0:
                value = float(network_error_norms(error[..., held].detach(), count))
                if value < best:
                    best, best_iteration = value, iteration
                    best_state = {k: v.detach().clone() for k, v in networks.state_dict().items()}
            if iteration == iterations:
                break
            optimizer.zero_grad()
            network_error_norms(error[..., ~held], count).backward()
            optimizer.step()
    final_state = {k: v.detach().clone() for k, v in networks.state_dict().items()}
    return {"best_iteration": best_iteration, "best": best_state, "final": final_state}


def score(
    scan: Scan, template: RakiWeights, state: dict[str, torch.Tensor], reference: np.ndarray
) -> float:
    """NMSE of the default's application with `state` in place of the trained networks."""
    weights = replace(template, state_dicts=[state])
    return nmse(reference, rss_image(apply_weights(scan, weights, "cpu")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", help="folder with the brain_*.h5 files (default ../shared/data)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--iterations", type=int, default=1000, help="training iterations")
    args = parser.parse_args()
    tune_process()
    folder = data_folder(args.data)
    rows = []
    print("| case | best held-out at iteration | best / GRAPPA | final / GRAPPA |")
    print("|---|---:|---:|---:|")
    for case in args.cases.split(","):
        full, acceleration, acs_lines = load_case(case, folder)
        full = replace(full, kspace=full.kspace[:1])
        scan = full.undersampled(acceleration, acs_lines)
        reference = rss_image(full.kspace)
        grappa = nmse(reference, rss_image(reconstruct_grappa(scan)))
        # The default's weights (GRAPPA kernel, metadata); its networks are replaced below.
        template = train_scan(scan, "rraki", device="cpu", iterations=1)
        trained = guarded_training(scan, args.iterations)

        row = {
            "case": case,
            "best_iteration": trained["best_iteration"],
            "best_over_grappa": score(scan, template, trained["best"], reference) / grappa,
            "final_over_grappa": score(scan, template, trained["final"], reference) / grappa,
        }
        rows.append(row)
        print(
            f"| {case} | {row['best_iteration']} | {row['best_over_grappa']:.3f} | "
            f"{row['final_over_grappa']:.3f} |",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "iterations": args.iterations, "cases": rows}
    args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
