"""Seconds per slice of the default method (auto) beside BART's ecalib + pics, medians of
repeated runs, on issue 16's time target: 16-coil 320 x 320 slices at R = 4, 32 ACS lines.

From the repository root, in the project venv (BART from Debian, `apt-get install bart`;
without it only our column is measured):

    .venv/bin/python scripts/bench/auto_time.py --threads 2 --repeats 3 \\
        --out bench-results/auto-time.json

Cases: the periodic phantom (k-space as an image's DFT, `simulate_scan`) and the windowed one
(`finer=2`, a window of a finer object's spectrum, as a scanner measures), each as one slice
(auto pays its whole choice: two ESPIRiT calibrations and two held-out cs solves) and as a
volume of `--slices` slices (one choice per volume). Runs alternate between auto and BART so
that both see the same load; every auto run starts without cached maps. BART runs `ecalib
-m2 -c0` and `pics -S -R W:7:0:0.003 -i 100` (its best weight on these phantoms, from
auto_peer.py) on one slice; its seconds are per slice.
"""

from __future__ import annotations

import sys

# cs_peer sets the BLAS and OpenMP thread counts from --threads when imported, before numpy.
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from cs_peer import BartSlice  # noqa: I001

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from grappa_peer import machine

from raki.espirit import clear_maps_cache
from raki.methods import reconstruct
from raki.phantom import simulate_scan

BART_WEIGHT = 0.003


def auto_seconds(scan) -> tuple[float, str]:
    """Wall seconds per slice of auto from a cold start, and what it chose."""
    clear_maps_cache()
    started = time.perf_counter()
    result = reconstruct(scan)
    seconds = (time.perf_counter() - started) / scan.num_slices
    grid = (result.selection.get("cs_grid") or {}).get("grid")
    return seconds, result.method + (f"/{grid}" if result.method == "cs" and grid else "")


def bart_seconds(kspace) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        peer = BartSlice(Path(scratch), kspace)
        _, maps_seconds = peer.maps("-m2", "-c0")
        _, pics_seconds = peer.pics(BART_WEIGHT)
    return maps_seconds + pics_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--threads", type=int, default=2, help="torch, BLAS and BART threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--slices", type=int, default=4, help="slices of the volume cases")
    parser.add_argument("--size", type=int, default=320, help="matrix (size x size)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peers = shutil.which("bart") is not None
    started = machine()
    cases = []
    for finer, kind in ((1, "periodic"), (2, "windowed")):
        for slices in (1, args.slices):
            full = simulate_scan(
                (args.size, args.size), num_coils=16, num_slices=slices, snr=20, seed=1,
                finer=finer,
            )  # fmt: skip
            scan = full.undersampled(4, 32)
            ours, theirs, chosen = [], [], set()
            for _ in range(args.repeats):
                seconds, method = auto_seconds(scan)
                ours.append(seconds)
                chosen.add(method)
                if peers:
                    theirs.append(bart_seconds(scan.kspace[0]))
            case = {
                "data": f"{kind} phantom 16ch {args.size}x{args.size}",
                "slices": slices,
                "chosen": sorted(chosen),
                "auto_seconds": ours,
                "bart_seconds": theirs,
                "auto_median": statistics.median(ours),
                "bart_median": statistics.median(theirs) if theirs else None,
            }
            ratio = case["auto_median"] / case["bart_median"] if theirs else float("nan")
            print(
                f"{case['data']} x{slices}: auto {case['auto_median']:.2f} s/slice "
                f"({', '.join(case['chosen'])}), BART "
                + (f"{case['bart_median']:.2f} s/slice, ratio {ratio:.2f}" if theirs else "-"),
                flush=True,
            )
            cases.append(case)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {
            **started,
            "load_average_now": [round(v, 2) for v in os.getloadavg()],
            "torch_threads": torch.get_num_threads(),
        },
        "cases": cases,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
