"""Zero-shot SSDU (`--method ssdu`) beside cs, GRAPPA and the default rraki, on a few cases.

From the repository root, in the project venv:

    .venv/bin/python scripts/bench/learned_peer.py --threads 1 --out bench-results/learned-peer.json

Each case undersamples a fully sampled shared file retrospectively (every R-th line through
the centre plus a centred ACS block; `with_noise` adds seeded noise, as in
scripts/bench/cs_peer.py) and scores the RSS image against the fully sampled RSS with
fastMRI's NMSE / PSNR / SSIM (`raki.metrics`). Methods through `raki.methods.reconstruct` at
their defaults; `--no-rraki` leaves the slowest out. Times are wall seconds per slice of one
run at `--threads` threads. `--time-only` skips the cases and times one epoch of ssdu on a
16-coil 320 x 320 phantom (issue 16's size) and the cs start it needs, to estimate a slice.
"""

from __future__ import annotations

import argparse
import os
import sys


def _limit_threads(argv: list[str]) -> None:
    """BLAS and OpenMP read their thread counts at import: set them before numpy loads."""
    for index, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else None
        if arg == "--threads" and index + 1 < len(argv):
            value = argv[index + 1]
        if value is not None:
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[name] = value


_limit_threads(sys.argv[1:])

import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grappa_peer import data_folder, machine  # noqa: E402
from quality import with_noise  # noqa: E402

from raki.fft import rss_image  # noqa: E402
from raki.io import read_scan  # noqa: E402
from raki.methods import reconstruct  # noqa: E402
from raki.metrics import nmse, psnr, ssim  # noqa: E402
from raki.phantom import simulate_scan  # noqa: E402
from raki.scan import Scan  # noqa: E402
from raki.zero_shot import ZeroShotConfig, reconstruct_zero_shot  # noqa: E402

# (file, R, ACS lines, noise relative to the k-space RMS): issue 16's 8-coil case, a noisy
# 16-coil case and the clean 16-coil case where cs loses to GRAPPA (docs/benchmarks.md).
CASES = [
    ("brain_8ch_320x168.h5", 4, 32, 0.0),
    ("brain_16ch_96x96.h5", 6, 24, 0.05),
    ("brain_16ch_96x96.h5", 4, 24, 0.0),
]
METHODS = ("zerofill", "grappa", "cs", "ssdu", "rraki")


def score(reference, kspace) -> dict[str, float]:
    image = rss_image(kspace)
    return {
        "nmse": nmse(reference, image),
        "psnr": psnr(reference, image),
        "ssim": ssim(reference, image),
    }


def run_case(
    full: Scan, acceleration: int, acs_lines: int, methods, iterations: int | None = None
) -> dict[str, object]:
    """`iterations` (None: each method's default) caps ssdu's epochs and rraki's training."""
    reference = rss_image(full.kspace)
    scan = full.undersampled(acceleration, acs_lines)
    rows: dict[str, object] = {}
    for method in methods:
        start = time.perf_counter()
        capped = iterations if method in ("ssdu", "rraki") else None
        result = reconstruct(scan, method, device="cpu", iterations=capped)
        seconds = (time.perf_counter() - start) / scan.num_slices
        row = {**score(reference, result.kspace), "seconds": seconds}
        if method == "ssdu":
            row.update(
                epochs=result.details["epochs"],
                best_epochs=result.details["best_epochs"],
                mu=result.details["mu"],
                validation_losses=result.details["validation_losses"],
            )
        rows[method] = row
        print(
            f"  {method:9s} nmse {row['nmse']:.3g} psnr {row['psnr']:.2f} ssim {row['ssim']:.3f}"
            f" {seconds:.1f} s",
            flush=True,
        )
    return rows


def time_large_slice() -> dict[str, float]:
    """Seconds of ssdu on a 16-coil 320 x 320 phantom with no epoch and with one epoch: the
    difference is one epoch's cost, the rest the maps and the cs starts."""
    scan = simulate_scan((320, 320), num_coils=16, snr=20, seed=1).undersampled(4, 32)
    timings = {}
    for epochs in (1, 2):
        start = time.perf_counter()
        reconstruct_zero_shot(scan, ZeroShotConfig(max_epochs=epochs, patience=epochs))
        timings[f"{epochs}_epochs_s"] = time.perf_counter() - start
        print(f"  16ch 320x320, {epochs} epochs: {timings[f'{epochs}_epochs_s']:.1f} s", flush=True)
    timings["epoch_s"] = timings["2_epochs_s"] - timings["1_epochs_s"]
    timings["fixed_s"] = timings["1_epochs_s"] - timings["epoch_s"]
    return timings


def markdown(cases: list[dict[str, object]], methods) -> str:
    lines = [
        "| data | R | ACS | " + " | ".join(methods) + " | ssdu / cs | epochs (best) |",
        "|---|---:|---:|" + "---|" * len(methods) + "---:|---|",
    ]
    for case in cases:
        rows = case["methods"]
        cells = [
            f"{rows[m]['nmse']:.3g} / {rows[m]['psnr']:.2f} / {rows[m]['ssim']:.3f} "
            f"({rows[m]['seconds']:.1f} s)"
            for m in methods
        ]
        ssdu = rows.get("ssdu")
        ratio = f"{ssdu['nmse'] / rows['cs']['nmse']:.2f}" if ssdu and "cs" in rows else "-"
        epochs = f"{ssdu['epochs'][0]} ({ssdu['best_epochs'][0]})" if ssdu else "-"
        lines.append(
            f"| {case['data']} | {case['R']} | {case['acs']} | "
            + " | ".join(cells)
            + f" | {ratio} | {epochs} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--data", help="folder with the brain_*.h5 files (default ../shared/data)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--no-rraki", action="store_true", help="leave out the default rraki")
    parser.add_argument("--time-only", action="store_true", help="only the 320 x 320 timing")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a quick check: one small phantom instead of the files, ssdu 1 epoch, rraki 1 "
        "iteration, no 320 x 320 timing",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in METHODS if not (args.no_rraki and m == "rraki")]
    folder = data_folder(args.data)
    started = machine()
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    started["avx512"] = sorted({word for word in flags.split() if word.startswith("avx512")})
    cases = []
    if args.smoke:
        full = simulate_scan((64, 64), num_coils=8, snr=20, seed=1)
        rows = run_case(full, 4, 16, methods, iterations=1)
        cases.append({"data": "phantom 8ch 64x64 SNR 20", "R": 4, "acs": 16, "methods": rows})
    elif not args.time_only:
        for name, acceleration, acs_lines, noise in CASES:
            path = folder / name
            if not path.is_file():
                print(f"{name} is missing: skipped", flush=True)
                continue
            label = f"{name} + noise {noise:g}" if noise else name
            print(f"{label} R={acceleration} ACS={acs_lines}", flush=True)
            full = with_noise(read_scan(path), noise)
            rows = run_case(full, acceleration, acs_lines, methods)
            cases.append({"data": label, "R": acceleration, "acs": acs_lines, "methods": rows})
    large = {} if args.smoke else time_large_slice()
    table = markdown(cases, methods) if cases else ""
    print(table)
    payload = {
        "machine": {
            **started,
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "torch_threads": torch.get_num_threads(),
        },
        "config": ZeroShotConfig().__dict__,
        "cases": cases,
        "large_slice": large,
        "markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
