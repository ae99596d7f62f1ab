"""Image quality of every method on real k-space and on phantoms: RAKI beside GRAPPA and zero-fill.

One command (from the repository root, in the project venv; pygrappa's column appears when run
in the benchmark venv that has it, see scripts/bench/README.md):

    .venv/bin/python scripts/bench/quality.py --out bench-results/quality.json

Each case undersamples a fully sampled file retrospectively (every R-th line through the centre
line plus a centred ACS block) and scores each method's RSS image against the fully sampled RSS
with fastMRI's NMSE / PSNR / SSIM (raki.metrics). Times are wall seconds of one run on this
machine (training included for RAKI), not medians: they show scale, `mrictl bench` and
scripts/bench/speed.py measure speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grappa_peer import data_folder, machine, pygrappa_filled

from raki.fft import rss_image
from raki.io import read_scan
from raki.methods import default_method_for, reconstruct
from raki.metrics import evaluate
from raki.phantom import simulate_scan
from raki.scan import Scan
from raki.train import TrainingConfig

FILE_CASES = {
    "brain_8ch_320x168.h5": [(3, 32), (4, 32), (5, 32), (6, 32), (4, 24), (4, 40)],
    "brain_16ch_96x96.h5": [(3, 24), (4, 24), (5, 24), (6, 24), (4, 32)],
    "brain_16ch_64x64.h5": [(3, 20), (4, 20), (5, 20), (4, 24)],
}
PHANTOM_SNRS = (5.0, 10.0, 20.0, 50.0)
METHODS = ("zerofill", "grappa", "pygrappa", "raki", "rraki", "default")


def has_pygrappa() -> bool:
    try:
        import pygrappa  # noqa: F401
    except ImportError:
        return False
    return True


def named_cases(text: str) -> dict[str, list[tuple[int, int, float]]]:
    """ "file:R:ACS[:noise],..." as FILE_CASES' shape: settings the grid does not name.

    noise (default 0) adds complex Gaussian noise of that standard deviation relative to the
    file's k-space RMS, seeded, before undersampling; the noisy k-space is the reference.
    """
    cases: dict[str, list[tuple[int, int, float]]] = {}
    for case in text.split(","):
        name, acceleration, acs_lines, *noise = case.split(":")
        level = float(noise[0]) if noise else 0.0
        cases.setdefault(name, []).append((int(acceleration), int(acs_lines), level))
    return cases


def with_noise(scan: Scan, level: float, seed: int = 0) -> Scan:
    """`scan` with complex Gaussian noise of `level` x its k-space RMS added (0: unchanged)."""
    if level <= 0:
        return scan
    rng = np.random.default_rng(seed)
    kspace = scan.kspace
    sigma = level * float(np.sqrt(np.mean(np.abs(kspace) ** 2))) / np.sqrt(2.0)
    noise = rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape)
    return scan.replace(kspace=(kspace + sigma * noise).astype(np.complex64))


def score_methods(
    full: Scan,
    acceleration: int,
    acs_lines: int,
    methods: list[str],
    iterations: int | None,
    seed: int = 0,
    precision: str = "auto",
    linear_rate_scale: float | None = None,
    network_start: str = "random",
) -> dict[str, dict[str, float]]:
    reference = rss_image(full.kspace)
    scan = full.undersampled(acceleration, acs_lines)
    rows: dict[str, dict[str, float]] = {}
    config = TrainingConfig(
        seed=seed,
        precision=precision,
        linear_rate_scale=linear_rate_scale,
        network_start=network_start,
    )
    for method in methods:
        start = time.perf_counter()
        if method == "pygrappa":
            image = rss_image(pygrappa_filled(scan, 0.01))
        elif method == "default":
            # What `mrictl recon run` does when no method is named (GRAPPA where the ACS is
            # too small for the networks).
            ran = default_method_for(scan).method
            image = reconstruct(scan, ran, iterations=iterations, config=config).image
        else:
            image = reconstruct(scan, method, iterations=iterations, config=config).image
        seconds = time.perf_counter() - start
        rows[method] = {**evaluate(reference, image), "time_s": seconds}
        if method == "default":
            rows[method]["ran"] = ran
        print(
            f"  {method:9s} nmse {rows[method]['nmse']:.5f} ssim {rows[method]['ssim']:.4f} "
            f"{seconds:6.1f} s",
            flush=True,
        )
    return rows


def markdown(cases: list[dict]) -> str:
    methods = [m for m in METHODS if any(m in case["methods"] for case in cases)]
    header = "| data | R | ACS | " + " | ".join(f"{m} NMSE / SSIM" for m in methods) + " |"
    lines = [header, "|---|---:|---:|" + "---|" * len(methods)]
    for case in cases:
        cells = []
        best = min(case["methods"][m]["nmse"] for m in methods if m in case["methods"])
        for method in methods:
            row = case["methods"].get(method)
            if row is None:
                cells.append("-")
                continue
            text = f"{row['nmse']:.4f} / {row['ssim']:.3f}"
            cells.append(f"**{text}**" if row["nmse"] == best else text)
        lines.append(
            f"| {case['data']} | {case['R']} | {case['acs']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--data", help="folder with the brain_*.h5 files (default ../shared/data)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--iterations", type=int, help="RAKI iterations (default: the library's)")
    parser.add_argument("--only", help="run only cases whose data name contains this text")
    parser.add_argument("--accels", help="only these R, e.g. 4,5")
    parser.add_argument("--acs", help="only these ACS sizes, e.g. 32")
    parser.add_argument(
        "--cases",
        help="instead of the grid's files and settings, e.g. brain_16ch_64x64.h5:6:20,... "
        "(a fourth field adds noise: file:R:ACS:0.05)",
    )
    parser.add_argument("--no-phantoms", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks' start")
    parser.add_argument(
        "--precision", default="auto", help="training precision: auto (default), fp32 or bf16"
    )
    parser.add_argument(
        "--linear-rate-scale",
        type=float,
        help="rraki: the linear branch's learning-rate factor (default: the library's rule)",
    )
    parser.add_argument(
        "--network-start", default="random", help="raki: random (the paper) or grappa"
    )
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m and (m != "pygrappa" or has_pygrappa())]
    cases = []
    folder = data_folder(args.data)
    jobs: list[tuple[str, Scan, int, int]] = []
    file_cases = (
        {name: [(r, acs, 0.0) for r, acs in grid] for name, grid in FILE_CASES.items()}
        if args.cases is None
        else named_cases(args.cases)
    )
    for name, settings in file_cases.items():
        path = folder / name
        if path.is_file():
            scan = read_scan(path)
            for r, acs, noise in settings:
                label = f"{name} + noise {noise:g}" if noise else name
                jobs.append((label, with_noise(scan, noise), r, acs))
    if not args.no_phantoms:
        for snr in PHANTOM_SNRS:
            phantom = simulate_scan((192, 160), num_coils=8, snr=snr, seed=1)
            jobs.append((f"phantom 8ch SNR {snr:g}", phantom, 4, 24))
    for name, full, acceleration, acs_lines in jobs:
        if args.only and args.only not in name:
            continue
        if args.accels and str(acceleration) not in args.accels.split(","):
            continue
        if args.acs and str(acs_lines) not in args.acs.split(","):
            continue
        print(f"{name} R={acceleration} ACS={acs_lines}", flush=True)
        rows = score_methods(
            full,
            acceleration,
            acs_lines,
            methods,
            args.iterations,
            args.seed,
            args.precision,
            args.linear_rate_scale,
            args.network_start,
        )
        cases.append({"data": name, "R": acceleration, "acs": acs_lines, "methods": rows})
    table = markdown(cases)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine(),
        "iterations": args.iterations,
        "seed": args.seed,
        "precision": args.precision,
        "linear_rate_scale": args.linear_rate_scale,
        "network_start": args.network_start,
        "cases": cases,
        "markdown": table,
    }
    args.out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
