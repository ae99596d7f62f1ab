"""The default method, auto, against its candidates (cs, GRAPPA) and BART's best-weight `pics`.

From the repository root, in the project venv (BART from Debian, `apt-get install bart`; its
columns are left out where `bart` is not on the PATH):

    .venv/bin/python scripts/bench/auto_peer.py --threads 2 --out bench-results/auto-peer.json

The cases are those of `cs_peer.py` (the quality grid's shared files at R = 3-6 and several
ACS sizes, noise added on some, 8-coil phantoms at SNR 5-50, and a 16-coil 320 x 320 phantom,
the size of issue 16's time target). Per case: NMSE / SSIM of auto, of each candidate alone
(the truth the rule should find: which of them is better by the reference), of BART `pics`
at its best weight (an oracle: it reads the reference), which candidate auto chose with the
held-out errors that decided it, and wall seconds per slice of auto (the choice included)
and of BART's `ecalib` plus `pics` at its best weight, both at `--threads` threads. cs runs
on each of its two image grids ("extended", the default, and "measured", the periodic model;
`raki.sense.grid_matrix`), and auto's grid test is checked against both. Two phantoms whose
k-space is a window of a finer object's spectrum (`simulate_scan(finer=2)`, as a scanner
measures) follow the grid's periodic phantoms. Every timed run starts without cached maps.
"""

from __future__ import annotations

import sys

# cs_peer sets the BLAS and OpenMP thread counts from --threads when imported, before numpy.
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from cs_peer import FILE_CASES, PHANTOM_SNRS, bart_best, score, timed  # noqa: I001

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import torch
from grappa_peer import data_folder, machine
from quality import with_noise

from raki.espirit import clear_maps_cache
from raki.fft import rss_image
from raki.io import read_scan
from raki.methods import reconstruct
from raki.phantom import simulate_scan
from raki.scan import Scan

CANDIDATES = ("cs", "grappa")
# What auto can end up running: cs on either grid, or GRAPPA.
OUTCOMES = {"cs/extended": ("cs", "extended"), "cs/measured": ("cs", "measured")}
OUTCOMES["grappa"] = ("grappa", None)


def cold(run):
    """`run` timed without the maps an earlier run calibrated."""
    clear_maps_cache()
    return timed(run)


def run_case(full: Scan, acceleration: int, acs_lines: int, peers: bool) -> dict[str, object]:
    reference = rss_image(full.kspace)
    scan = full.undersampled(acceleration, acs_lines)
    rows: dict[str, object] = {}
    for name, (method, grid) in OUTCOMES.items():
        result, seconds = cold(lambda m=method, g=grid: reconstruct(scan, m, cs_grid=g))
        rows[name] = {**score(reference, result.kspace), "seconds": seconds / scan.num_slices}
    auto, seconds = cold(lambda: reconstruct(scan, "auto"))
    rows["auto"] = {
        **score(reference, auto.kspace),
        "seconds": seconds / scan.num_slices,
        "selection": auto.selection,
    }
    if peers:  # BART on the first slice: its NMSE is that slice's where there are several
        rows["bart"] = bart_best(scan.replace(kspace=scan.kspace[:1]), reference[:1])
    chosen = auto.selection["method"]
    if chosen == "cs":
        chosen += "/" + auto.selection["cs_grid"]["grid"]
    best = min(OUTCOMES, key=lambda m: rows[m]["nmse"])
    print(
        f"  auto -> {chosen} (truth best: {best}) nmse {rows['auto']['nmse']:.3g} "
        f"{rows['auto']['seconds']:.2f} s | "
        + " | ".join(f"{name} {rows[name]['nmse']:.3g}" for name in OUTCOMES)
        + (f" | bart {rows['bart']['nmse']:.3g} {rows['bart']['seconds']:.2f} s" if peers else ""),
        flush=True,
    )
    return {"methods": rows, "chosen": chosen, "best_candidate": best}


def markdown(cases: list[dict[str, object]]) -> str:
    lines = [
        "| data | R | ACS | auto -> chose (truth) | held-out error cs / grappa | auto | "
        "cs extended | cs measured | GRAPPA | BART pics best (lambda) | auto / BART | "
        "auto / GRAPPA | s/slice auto | s/slice BART |",
        "|---|---:|---:|---|---|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        m = case["methods"]
        bart = m.get("bart")
        errors = m["auto"]["selection"]["candidates"]
        held = " / ".join(f"{errors[c]:.3g}" if c in errors else "-" for c in CANDIDATES)
        truth = "" if case["chosen"] == case["best_candidate"] else f" ({case['best_candidate']})"

        def cell(key: str, m: dict = m) -> str:
            return f"{m[key]['nmse']:.3g} / {m[key]['ssim']:.3f}"

        lines.append(
            f"| {case['data']} | {case['R']} | {case['acs']} | {case['chosen']}{truth} | {held} | "
            f"{cell('auto')} | {cell('cs/extended')} | {cell('cs/measured')} | "
            f"{cell('grappa')} | "
            + (f"{cell('bart')} ({bart['weight']:g}) | " if bart else "- | ")
            + (f"{m['auto']['nmse'] / bart['nmse']:.2f}" if bart else "-")
            + f" | {m['auto']['nmse'] / m['grappa']['nmse']:.2f} | {m['auto']['seconds']:.2f} | "
            + (f"{bart['seconds']:.2f}" if bart else "-")
            + " |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--data", help="folder with the brain_*.h5 files (default ../shared/data)")
    parser.add_argument("--threads", type=int, default=2, help="torch, BLAS and BART threads")
    parser.add_argument("--only", help="run only cases whose label contains this text")
    parser.add_argument("--no-phantoms", action="store_true")
    parser.add_argument(
        "--slices",
        type=int,
        default=1,
        help="slices of the 16-coil 320 x 320 phantoms (auto chooses once per volume)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peers = shutil.which("bart") is not None
    if not peers:
        print("bart is not installed: its columns are left out", flush=True)
    folder = data_folder(args.data)
    started = machine()
    jobs: list[tuple[str, Scan, int, int]] = []
    for name, acceleration, acs_lines, noise in FILE_CASES:
        path = folder / name
        label = f"{name} + noise {noise:g}" if noise else name
        if path.is_file() and (not args.only or args.only in label):
            jobs.append((label, with_noise(read_scan(path), noise), acceleration, acs_lines))
    if not args.no_phantoms:
        for snr in PHANTOM_SNRS:
            label = f"phantom 8ch SNR {snr:g}"
            if not args.only or args.only in label:
                jobs.append((label, simulate_scan((192, 160), num_coils=8, snr=snr, seed=1), 4, 24))
        label = "phantom 16ch 320x320 SNR 20"
        if not args.only or args.only in label:
            full = simulate_scan((320, 320), num_coils=16, num_slices=args.slices, snr=20, seed=1)
            jobs.append((label, full, 4, 32))
        label = "windowed phantom 8ch SNR 20"
        if not args.only or args.only in label:
            full = simulate_scan((192, 160), num_coils=8, snr=20, seed=1, finer=2)
            jobs.append((label, full, 4, 24))
        label = "windowed phantom 16ch 320x320 SNR 20"
        if not args.only or args.only in label:
            full = simulate_scan(
                (320, 320), num_coils=16, num_slices=args.slices, snr=20, seed=1, finer=2
            )
            jobs.append((label, full, 4, 32))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cases = []
    for label, full, acceleration, acs_lines in jobs:
        print(f"{label} R={acceleration} ACS={acs_lines}", flush=True)
        case = run_case(full, acceleration, acs_lines, peers)
        cases.append({"data": label, "R": acceleration, "acs": acs_lines, **case})
        payload = {
            "machine": {
                **started,
                "load_average_now": [round(v, 2) for v in os.getloadavg()],
                "torch_threads": torch.get_num_threads(),
                "bart": subprocess.run(["bart", "version"], capture_output=True, text=True).stdout
                if peers
                else None,
            },
            "cases": cases,
            "markdown": markdown(cases),
        }
        # Written after every case, so an interrupted run keeps what it measured.
        args.out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(markdown(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
