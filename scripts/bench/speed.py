"""RAKI training speed: the fused networks against a per-network loop, then each CPU lever.

One command (repository root, project venv):

    .venv/bin/python scripts/bench/speed.py --out bench-results/speed.json

Part 1 times one Adam iteration (forward, backward, step) of the fused module
(`raki.model.RakiNetworks`, all 2 Nc networks in one pass) against a loop written the way the
original RAKI code is structured: one network per coil and real/imaginary part, each trained on
its own, one after another, on the same ACS pair. The loop runs `--loop-iterations` iterations
per network; its per-iteration time (summed over the 2 Nc networks) is extrapolated to 1000.
Part 2 measures each lever on the 16-coil 320x320 phantom: bf16 autocast, channels-last, SVD
coil compression (time per iteration and image NMSE after `--iterations` iterations against the
fp32 reference at the same count). The malloc thresholds are raised before part 1 unless
`--no-mallopt`; run it twice to see that lever. Times are medians over `--repeats` timed
iterations after two warm-up iterations. The JSON records the CPU, threads, date and the load
average before and after: the machine is shared, so read the load before the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from raki.coils import compress_scan, fit_compression
from raki.device import has_native_bf16
from raki.fft import rss_image
from raki.methods import reconstruct
from raki.metrics import nmse
from raki.model import RakiNetworks, build_networks, to_channels
from raki.phantom import simulate_scan
from raki.runtime import tune_process
from raki.scan import Scan
from raki.train import TrainingConfig, acs_scale, network_error_norms, training_pair

ACCELERATION = 4
ACS_LINES = 32
PHASE_LINES = 320


def iteration_flops(
    coils: int,
    readout: int,
    acs_lines: int = ACS_LINES,
    r: int = ACCELERATION,
    method: str = "raki",
):
    """Multiply-adds x 2 of forward + backward of one fused iteration (no input gradient).

    rRAKI adds its linear branch (a 7 x 3 convolution, forward and weight gradient).
    """
    channels = 2 * coils
    first = (readout - 4) * (acs_lines - r)
    last = (readout - 6) * (acs_lines - 2 * r)
    layer1 = 2 * first * channels * (channels * 32) * 10
    layer2 = 2 * first * (channels * 32) * 8
    layer3 = 2 * last * channels * (r - 1) * 8 * 6
    linear = 2 * last * channels * channels * (r - 1) * 21 if method == "rraki" else 0
    # Layer 1 needs only its weight gradient; layers 2 and 3 need weight and input gradients.
    return 2 * (layer1 + linear) + 3 * (layer2 + layer3)


def acs_pair(scan: Scan) -> tuple[torch.Tensor, torch.Tensor]:
    acs = scan.acs_kspace()[0]
    return training_pair(torch.from_numpy(to_channels(acs / acs_scale(acs))), scan.acceleration)


def time_steps(step, repeats: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fused_step(
    scan: Scan, precision: str = "fp32", channels_last: bool = False, method: str = "raki"
):
    inputs, targets = acs_pair(scan)
    networks = build_networks(method, scan.num_coils, scan.acceleration)
    count = 2 * scan.num_coils
    if channels_last:
        networks = networks.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(networks.parameters(), lr=3e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            output = networks(inputs, scan.acceleration)
        loss = network_error_norms(output.float() - targets, count)
        loss.backward()
        optimizer.step()

    return step


def loop_seconds_per_iteration(scan: Scan, iterations: int) -> float:
    """The original's structure: 2 Nc single networks, each trained alone, one after another."""
    inputs, targets = acs_pair(scan)
    outputs = scan.acceleration - 1
    total = 0.0
    for index in range(2 * scan.num_coils):
        network = RakiNetworks(2 * scan.num_coils, 1, outputs)
        optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
        own = targets[:, index * outputs : (index + 1) * outputs]
        start = time.perf_counter()
        for _ in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.linalg.vector_norm(network(inputs, scan.acceleration) - own)
            loss.backward()
            optimizer.step()
        total += (time.perf_counter() - start) / iterations
    return total


def compressed_image(scan: Scan, energy: float, iterations: int) -> tuple[np.ndarray, int, float]:
    """RAKI with SVD coil compression, as the library runs it (`TrainingConfig.coil_energy`)."""
    start = time.perf_counter()
    config = TrainingConfig(coil_energy=energy)
    result = reconstruct(scan, "raki", device="cpu", iterations=iterations, config=config)
    virtual = result.details["virtual_coils"]
    return result.image, virtual, time.perf_counter() - start


FILE_CASES = {"brain_16ch_96x96.h5": (24, 300), "brain_8ch_320x168.h5": (32, 150)}


def file_compression_rows(
    folder: Path, energies: tuple[float, ...], iterations_override: int | None = None
) -> list[dict[str, object]]:
    """RAKI with and without coil compression on the shared files (R = 4), NMSE and seconds."""
    from raki.io import read_scan

    rows: list[dict[str, object]] = []
    for name, (acs_lines, iterations) in FILE_CASES.items():
        if not (folder / name).is_file():
            continue
        iterations = iterations_override or iterations
        full = read_scan(folder / name)
        reference = rss_image(full.kspace)
        scan = full.undersampled(ACCELERATION, acs_lines)
        start = time.perf_counter()
        plain = reconstruct(scan, "raki", device="cpu", iterations=iterations)
        row = {"file": name, "iterations": iterations, "coils": scan.num_coils}
        row["physical"] = {"nmse": nmse(reference, plain.image), "s": time.perf_counter() - start}
        for energy in energies:
            image, virtual, seconds = compressed_image(scan, energy, iterations)
            row[f"energy_{energy}"] = {
                "virtual": virtual,
                "nmse": nmse(reference, image),
                "s": seconds,
            }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def machine() -> dict[str, object]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    model = next(
        (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line), ""
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def matmul_rate(dtype: torch.dtype, size: int = 2048, flops: float = 2e10) -> float:
    """GFLOP/s of a square matrix product, timed over about `flops` work after a warm-up.

    A handful of products is not enough: the first ones run before the thread pool and the
    CPU clock settle (5 products of 1024 read 80 GFLOP/s here, 2e10 FLOP of them 115-120).
    """
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    repeats = max(2, int(flops / (2 * size**3)))
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-iterations", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=200, help="for the NMSE comparisons")
    parser.add_argument("--energy", type=float, default=0.995)
    parser.add_argument("--cases", default="16x320,8x320,16x640,8x640")
    parser.add_argument("--no-levers", action="store_true")
    parser.add_argument("--no-mallopt", action="store_true")
    parser.add_argument("--file-iterations", type=int, default=None)
    parser.add_argument(
        "--files",
        type=Path,
        default=None,
        help="folder of the shared files: also run coil compression on real k-space",
    )
    args = parser.parse_args()
    results: dict[str, object] = {"machine": machine(), "load_before": os.getloadavg()}
    if not args.no_mallopt:
        results["tuning"] = tune_process().as_dict()
    native_bf16 = has_native_bf16(torch.device("cpu"))
    results["cpu_native_bf16"] = native_bf16
    results["matmul_gflops"] = {
        "fp32": matmul_rate(torch.float32),
        # Emulated bf16 runs at about 1 GFLOP/s: a small product says so without the wait.
        "bf16": matmul_rate(torch.bfloat16)
        if native_bf16
        else matmul_rate(torch.bfloat16, size=256, flops=1e8),
    }
    print(f"matmul GFLOP/s now: {results['matmul_gflops']}", flush=True)
    rows = []
    print(
        "| coils x readout | fused s/iter | GFLOP/s | loop s/iter | fused 1000 it | loop 1000 it |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        coils, readout = (int(part) for part in case.split("x"))
        scan = simulate_scan((readout, PHASE_LINES), num_coils=coils, snr=30.0).undersampled(
            ACCELERATION, ACS_LINES
        )
        fused = time_steps(fused_step(scan), args.repeats)
        loop = loop_seconds_per_iteration(scan, args.loop_iterations)
        rate = iteration_flops(coils, readout) / fused / 1e9
        row = {"coils": coils, "readout": readout, "fused_s": fused, "loop_s": loop, "gflops": rate}
        rows.append(row)
        print(
            f"| {coils} x {readout} | {fused:.3f} | {rate:.0f} | {loop:.3f} | "
            f"{1000 * fused:.0f} s | {1000 * loop:.0f} s |",
            flush=True,
        )
        if native_bf16:
            # The default method's model in each precision: what `recon run` trains.
            for method in ("raki", "rraki"):
                for precision in ("fp32", "bf16"):
                    seconds = time_steps(fused_step(scan, precision, method=method), args.repeats)
                    flops = iteration_flops(coils, readout, method=method)
                    row[f"{method}_{precision}_s"] = seconds
                    row[f"{method}_{precision}_gflops"] = flops / seconds / 1e9
            print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    results["fused_vs_loop"] = rows
    if not args.no_levers:
        scan = simulate_scan((320, PHASE_LINES), num_coils=16, snr=30.0)
        reference = rss_image(scan.kspace)
        undersampled = scan.undersampled(ACCELERATION, ACS_LINES)
        levers = {
            "fp32": time_steps(fused_step(undersampled), args.repeats),
            "channels_last": time_steps(fused_step(undersampled, channels_last=True), 3),
            "bf16": time_steps(fused_step(undersampled, "bf16"), 1),
        }
        start = time.perf_counter()
        full = reconstruct(undersampled, "raki", device="cpu", iterations=args.iterations)
        quality = {
            "fp32": {"nmse": nmse(reference, full.image), "seconds": time.perf_counter() - start}
        }
        image, virtual, seconds = compressed_image(undersampled, args.energy, args.iterations)
        quality[f"compressed_{virtual}"] = {"nmse": nmse(reference, image), "seconds": seconds}
        compressed = compress_scan(
            undersampled, fit_compression(undersampled.acs_kspace(), args.energy)
        )
        levers[f"compressed_{virtual}"] = time_steps(fused_step(compressed), args.repeats)
        results["levers_s_per_iteration"] = levers
        results["quality"] = quality
        print(json.dumps({"levers_s_per_iteration": levers, "quality": quality}, indent=1))
    if args.files is not None:
        results["file_compression"] = file_compression_rows(
            args.files, (0.995, 0.999), args.file_iterations
        )
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
