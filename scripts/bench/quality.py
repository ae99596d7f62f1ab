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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grappa_peer import data_folder, machine, pygrappa_filled

from raki.fft import rss_image
from raki.io import read_scan
from raki.metrics import evaluate
from raki.phantom import simulate_scan
from raki.recon import reconstruct
from raki.scan import Scan
from raki.train import TrainingConfig

FILE_CASES = {
    "brain_8ch_320x168.h5": [(3, 32), (4, 32), (5, 32), (6, 32), (4, 24), (4, 40)],
    "brain_16ch_96x96.h5": [(3, 24), (4, 24), (5, 24), (6, 24), (4, 32)],
    "brain_16ch_64x64.h5": [(3, 20), (4, 20), (5, 20), (4, 24)],
}
PHANTOM_SNRS = (5.0, 10.0, 20.0, 50.0)
METHODS = ("zerofill", "grappa", "pygrappa", "raki", "rraki")


def has_pygrappa() -> bool:
    try:
        import pygrappa  # noqa: F401
    except ImportError:
        return False
    return True


def named_cases(text: str) -> dict[str, list[tuple[int, int]]]:
    """ "file:R:ACS,file:R:ACS" as FILE_CASES' shape: settings the grid does not name."""
    cases: dict[str, list[tuple[int, int]]] = {}
    for case in text.split(","):
        name, acceleration, acs_lines = case.split(":")
        cases.setdefault(name, []).append((int(acceleration), int(acs_lines)))
    return cases


def score_methods(
    full: Scan,
    acceleration: int,
    acs_lines: int,
    methods: list[str],
    iterations: int | None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    reference = rss_image(full.kspace)
    scan = full.undersampled(acceleration, acs_lines)
    rows: dict[str, dict[str, float]] = {}
    for method in methods:
        start = time.perf_counter()
        if method == "pygrappa":
            image = rss_image(pygrappa_filled(scan, 0.01))
        else:
            config = TrainingConfig(seed=seed)
            image = reconstruct(scan, method, iterations=iterations, config=config).image
        seconds = time.perf_counter() - start
        rows[method] = {**evaluate(reference, image), "time_s": seconds}
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
        help="instead of the grid's files and settings, e.g. brain_16ch_64x64.h5:6:20,...",
    )
    parser.add_argument("--no-phantoms", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks' start")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m and (m != "pygrappa" or has_pygrappa())]
    cases = []
    folder = data_folder(args.data)
    jobs: list[tuple[str, Scan, int, int]] = []
    file_cases = FILE_CASES if args.cases is None else named_cases(args.cases)
    for name, settings in file_cases.items():
        path = folder / name
        if path.is_file():
            jobs += [(name, read_scan(path), r, acs) for r, acs in settings]
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
        rows = score_methods(full, acceleration, acs_lines, methods, args.iterations, args.seed)
        cases.append({"data": name, "R": acceleration, "acs": acs_lines, "methods": rows})
    table = markdown(cases)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine(),
        "iterations": args.iterations,
        "seed": args.seed,
        "cases": cases,
        "markdown": table,
    }
    args.out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
