"""Time to quality: wall time until a RAKI configuration's image reaches faithful RAKI's NMSE.

One command (repository root, project venv, on an otherwise idle machine):

    .venv/bin/python scripts/bench/time_to_quality.py --out bench-results/ttq.json

For each case (a single slice, retrospectively undersampled) it first trains faithful RAKI
(`TrainingConfig.faithful()`: fp32, Adam lr 3e-3, 1000 iterations, physical coils) and takes the
NMSE of its final image as the bar. Then every configuration in `CONFIGS` trains on the same
slice; every `--every` iterations the networks are copied (the copy's time is not counted), and
after training each copy fills the k-space and its RSS image is scored. A configuration's time
to quality is its training wall time at the first copy whose NMSE is within `--tolerance` (2%)
of the bar, plus the time to apply the networks once. "final" is the NMSE after all its
iterations. The faithful run's own curve gives its time to quality too (often far below 1000
iterations: that is the first lever).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import machine

from raki.device import resolve_device
from raki.fft import rss_image
from raki.grappa import fit_grappa
from raki.methods import apply_weights
from raki.metrics import nmse
from raki.oversampling import cropped_readout
from raki.phantom import simulate_scan
from raki.runtime import tune_process
from raki.scan import Scan
from raki.train import TrainingConfig, train_scan

FAITHFUL = TrainingConfig.faithful()
DEFAULT = TrainingConfig()
COSINE = {"learning_rate": 1e-2, "lr_schedule": "cosine"}
# name -> (method, config, coil energy or None). Iterations are the budget; the curve shows
# the rest. "rraki" rows average with GRAPPA as the default method does (grappa_share 0.5).
CONFIGS: dict[str, tuple[str, TrainingConfig, float | None]] = {
    "raki lr 3e-3 cosine, 400 it": (
        "raki",
        replace(FAITHFUL, iterations=400, lr_schedule="cosine"),
        None,
    ),
    "raki lr 1e-2 cosine, 300 it": ("raki", replace(FAITHFUL, iterations=300, **COSINE), None),
    "raki lr 1e-2 cosine, 150 it": ("raki", replace(FAITHFUL, iterations=150, **COSINE), None),
    "raki patches 25%, lr 1e-2 cosine, 400 it": (
        "raki",
        replace(FAITHFUL, iterations=400, batch_fraction=0.25, **COSINE),
        None,
    ),
    "raki compress 99.9%, lr 1e-2 cosine, 300 it": (
        "raki",
        replace(FAITHFUL, iterations=300, **COSINE),
        0.999,
    ),
    "raki faithful, readout oversampling removed": (
        "raki",
        replace(FAITHFUL, readout_oversampling=2.0),
        None,
    ),
    "raki grappa start, 1000 it": ("raki", replace(FAITHFUL, network_start="grappa"), None),
    "rraki default 1000 it": ("rraki", DEFAULT, None),
    "rraki 1000 it, full readout": ("rraki", replace(DEFAULT, readout_oversampling=1.0), None),
    "rraki 1000 it, readout oversampling removed": (
        "rraki",
        replace(DEFAULT, readout_oversampling=2.0),
        None,
    ),
    "rraki lr 1e-2 cosine, 200 it": ("rraki", replace(DEFAULT, iterations=200, **COSINE), None),
    "rraki compress 99.9%, lr 1e-2 cosine, 200 it": (
        "rraki",
        replace(DEFAULT, iterations=200, **COSINE),
        0.999,
    ),
}


def phantom_case(
    readout: int, coils: int, snr: float, oversampling: float | None = None
) -> tuple[Scan, np.ndarray]:
    """A 320-line phantom; with 640 readout points the head fills the central half (2x)."""
    full = simulate_scan((readout, 320), num_coils=coils, snr=snr, seed=0)
    full = replace(full, geometry=replace(full.geometry, readout_oversampling=oversampling))
    return full.undersampled(4, 32), rss_image(full.kspace)


def file_case(path: Path, acceleration: int, acs: int) -> tuple[Scan, np.ndarray]:
    from raki.io import read_scan

    full = read_scan(path)
    full = replace(full, kspace=full.kspace[:1]) if full.num_slices > 1 else full
    return full.undersampled(acceleration, acs), rss_image(full.kspace)


def run_config(
    scan: Scan,
    reference: np.ndarray,
    method: str,
    config: TrainingConfig,
    coil_energy: float | None,
    every: int,
    device: torch.device,
) -> dict[str, object]:
    """Train once, copying the networks every `every` iterations; score every copy.

    Training and applying are the library's own (`train_scan`, `apply_weights`): each copy is
    applied as the trained weights with that copy's networks in place of the final ones.
    """
    config = replace(config, coil_energy=coil_energy)
    snapshots: list[tuple[int, float, dict[str, torch.Tensor]]] = []
    paused = 0.0
    start = time.perf_counter()

    def observer(done: int, networks: torch.nn.Module) -> None:
        nonlocal paused
        entered = time.perf_counter()
        if done % every == 0 or done == config.iterations:
            state = {k: v.detach().clone() for k, v in networks.state_dict().items()}
            snapshots.append((done, entered - start - paused, state))
        paused += time.perf_counter() - entered

    weights = train_scan(scan, method, device=str(device), config=config, observer=observer)
    train_seconds = time.perf_counter() - start - paused
    # The GRAPPA half of rraki is fitted after the networks: timed again here, it is added to
    # each copy's time with the application.
    grappa_seconds = 0.0
    if weights.grappa is not None:
        fitted = time.perf_counter()
        fit_grappa(weights.network_scan(scan))
        grappa_seconds = time.perf_counter() - fitted
    fov = recon_fov(scan)
    points, apply_seconds = [], 0.0
    for done, seconds, state in snapshots:
        copy = replace(weights, state_dicts=[state])
        applied = time.perf_counter()
        image = rss_image(apply_weights(scan, copy, str(device)))
        apply_seconds = time.perf_counter() - applied
        points.append(
            {
                "iteration": done,
                "train_s": seconds,
                "nmse": nmse(reference, image),
                "nmse_fov": nmse(reference[:, fov], image[:, fov]),
            }
        )
    return {
        "method": method,
        "config": asdict(config),
        "virtual_coils": weights.metadata()["virtual_coils"],
        "train_s": train_seconds,
        "apply_s": apply_seconds + grappa_seconds,
        "final_nmse": points[-1]["nmse"],
        "final_nmse_fov": points[-1]["nmse_fov"],
        "final_loss": weights.loss_curves[0][-1],
        "curve": points,
    }


def recon_fov(scan: Scan) -> slice:
    """The readout rows of the recon FOV (all of them unless the scan declares oversampling)."""
    kept = cropped_readout(scan.matrix[0], scan.geometry.readout_oversampling or 1.0)
    start = scan.matrix[0] // 2 - kept // 2
    return slice(start, start + kept)


def time_to_quality(row: dict[str, object], bar: float, tolerance: float) -> float | None:
    for point in row["curve"]:
        if point["nmse"] <= bar * (1 + tolerance):
            return point["train_s"] + row["apply_s"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cases", default="phantom16x320")
    parser.add_argument("--configs", default=None, help="names separated by ';' (default: all)")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--snr", type=float, default=30.0)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[3] / "shared/data")
    parser.add_argument(
        "--iterations", type=int, default=None, help="every run's budget (default: its own)"
    )
    args = parser.parse_args()
    device = resolve_device("cpu")
    tune_process()
    chosen = (
        CONFIGS
        if args.configs is None
        else {name: CONFIGS[name] for name in args.configs.split(";")}
    )
    faithful_config = FAITHFUL
    if args.iterations is not None:
        faithful_config = replace(FAITHFUL, iterations=args.iterations)
        chosen = {
            name: (method, replace(config, iterations=args.iterations), energy)
            for name, (method, config, energy) in chosen.items()
        }
    results: dict[str, object] = {"machine": machine(), "load_before": os.getloadavg()}
    cases = {}
    for case in args.cases.split(","):
        if case.startswith("phantom"):
            size, _, oversampling = case.removeprefix("phantom").partition("os")
            coils, readout = (int(v) for v in size.split("x"))
            scan, reference = phantom_case(
                readout, coils, args.snr, float(oversampling) if oversampling else None
            )
        else:
            name, r, acs = case.split(":")
            scan, reference = file_case(args.data / name, int(r), int(acs))
        faithful = run_config(scan, reference, "raki", faithful_config, None, args.every, device)
        bar = faithful["final_nmse"]
        rows = {f"raki faithful {faithful_config.iterations} it": faithful}
        for name, (method, config, energy) in chosen.items():
            if ("oversampling" in name or "full readout" in name) and not (
                scan.geometry.readout_oversampling
            ):
                continue  # the same run as faithful on a scan without oversampling
            rows[name] = run_config(scan, reference, method, config, energy, args.every, device)
            print(case, name, rows[name]["final_nmse"], flush=True)
        print(f"\n{case}: faithful NMSE {bar:.5f}, bar {bar * (1 + args.tolerance):.5f}")
        print("| configuration | final NMSE | NMSE in recon FOV | vs faithful | train s | ttq s |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, row in rows.items():
            row["time_to_quality_s"] = time_to_quality(row, bar, args.tolerance)
            ttq = row["time_to_quality_s"]
            print(
                f"| {name} | {row['final_nmse']:.5f} | {row['final_nmse_fov']:.5f} | "
                f"{row['final_nmse'] / bar:.3f} | "
                f"{row['train_s']:.1f} | {'not reached' if ttq is None else f'{ttq:.1f}'} |",
                flush=True,
            )
        cases[case] = {"bar": bar, "rows": rows}
    results["cases"] = cases
    results["load_after"] = os.getloadavg()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
