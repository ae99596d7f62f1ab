"""Slices in parallel across cores: one process per core, one torch thread each, against one
slice at a time with torch using every core (issue 4's last CPU lever).

One command (repository root, project venv, on an otherwise idle machine):

    .venv/bin/python scripts/bench/parallel_slices.py --out bench-results/parallel-slices.json

A phantom volume (`simulate_scan`, R = 4, ACS 32) is trained slice by slice with
`raki.train.train_scan`, the way `mrictl recon run` trains it, two ways: sequentially in this
process with torch's default threads (one per core), and split over one worker process per core
(spawned, torch limited to one thread each, every process trains its share of the slices one
after another). Times are wall seconds of training the whole volume, medians of `--repeats`
runs, measured side by side; the ratio is sequential over parallel (above 1: parallel pays).
`--oversubscribed` runs the worker processes with torch's default threads instead (one per
core each, so processes x cores threads on the cores): what several worker processes did before
`mrictl worker run --workers N` split the cores between them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import machine

from raki.phantom import simulate_scan
from raki.runtime import tune_process
from raki.scan import Scan
from raki.train import TrainingConfig, train_scan

ACCELERATION = 4
ACS_LINES = 32


def _one_thread() -> None:
    torch.set_num_threads(1)
    tune_process()


def _default_threads() -> None:
    tune_process()


def train_slices(scan: Scan, method: str, iterations: int) -> float:
    """Wall seconds to train every slice of `scan`, one after another, in this process."""
    start = time.perf_counter()
    train_scan(scan, method, iterations=iterations, device="cpu", config=TrainingConfig())
    return time.perf_counter() - start


def split(scan: Scan, parts: int) -> list[Scan]:
    """`scan`'s slices dealt into `parts` scans (slice s to part s mod parts)."""
    return [scan.replace(kspace=scan.kspace[part::parts]) for part in range(parts)]


def parallel_seconds(
    pool: ProcessPoolExecutor, workers: int, scan: Scan, method: str, iterations: int
) -> float:
    """Wall seconds to train `scan`'s slices dealt over the pool's `workers` processes."""
    parts = split(scan, workers)
    start = time.perf_counter()
    list(pool.map(train_slices, parts, [method] * len(parts), [iterations] * len(parts)))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="16x320,8x320", help="coils x readout, comma-separated")
    parser.add_argument("--methods", default="rraki,raki")
    parser.add_argument(
        "--oversubscribed", action="store_true", help="workers keep torch's default threads"
    )
    args = parser.parse_args()
    tune_process()
    load_before = os.getloadavg()
    workers = os.cpu_count() or 1
    rows = []
    initializer = _default_threads if args.oversubscribed else _one_thread
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=initializer
    ) as pool:
        pool.submit(initializer).result()  # start the workers before timing
        for case in args.cases.split(","):
            coils, readout = (int(value) for value in case.split("x"))
            full = simulate_scan((readout, 320), num_coils=coils, num_slices=args.slices, snr=30)
            scan = full.undersampled(ACCELERATION, ACS_LINES)
            for method in args.methods.split(","):
                sequential, parallel = [], []
                for _ in range(args.repeats):
                    sequential.append(train_slices(scan, method, args.iterations))
                    parallel.append(parallel_seconds(pool, workers, scan, method, args.iterations))
                row = {
                    "case": case,
                    "method": method,
                    "slices": args.slices,
                    "iterations": args.iterations,
                    "sequential_s": statistics.median(sequential),
                    "parallel_s": statistics.median(parallel),
                    "all_sequential_s": sequential,
                    "all_parallel_s": parallel,
                }
                row["sequential_over_parallel"] = row["sequential_s"] / row["parallel_s"]
                rows.append(row)
                print(
                    f"{case} {method}: sequential {row['sequential_s']:.1f} s, "
                    f"{workers} processes {row['parallel_s']:.1f} s, "
                    f"ratio {row['sequential_over_parallel']:.2f}",
                    flush=True,
                )
    payload = {
        "machine": machine(),
        "workers": workers,
        "worker_threads": "torch default" if args.oversubscribed else 1,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
