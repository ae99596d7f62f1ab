"""Our GRAPPA against pygrappa's mdgrappa on real multi-coil brain k-space, side by side.

Run in the benchmark venv (pygrappa lives only there; see scripts/bench/README.md):

    /work/bench-venv/bin/python scripts/bench/grappa_peer.py --threads 1 --out grappa_peer.json

Each case undersamples a fully sampled file retrospectively (equispaced, centred ACS), and every
method is scored with raki.metrics.evaluate against the RSS of the full k-space. Times are the
median of --repeats runs of the whole reconstruction (calibration and application) of one slice.
`--sweep` adds the measurement that chose our defaults: NMSE over lambda for several kernels on
the brain files and on phantoms, the best lambda per case, and where the automatic lambda lands.
"""

from __future__ import annotations

import argparse
import os
import sys


def _limit_threads(argv: list[str]) -> None:
    """BLAS reads its thread count at import: set it before numpy loads."""
    for index, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else None
        if arg == "--threads" and index + 1 < len(argv):
            value = argv[index + 1]
        if value is not None:
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[name] = value


_limit_threads(sys.argv[1:])

import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from raki import grappa  # noqa: E402
from raki.fft import rss_image  # noqa: E402
from raki.grappa import (  # noqa: E402
    DEFAULT_KERNEL_SIZE,
    calibrate_grappa_with_lambda,
    fit_grappa,
    reconstruct_grappa,
)
from raki.metrics import evaluate  # noqa: E402
from raki.phantom import simulate_scan  # noqa: E402
from raki.sampling import equispaced_mask, undersample  # noqa: E402
from raki.scan import Scan  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# (file, acceleration, ACS lines)
CASES = [
    ("brain_8ch_320x168.h5", 4, 32),
    ("brain_8ch_320x168.h5", 3, 32),
    ("brain_8ch_320x168.h5", 5, 32),
    ("brain_8ch_320x168.h5", 6, 32),
    ("brain_16ch_96x96.h5", 3, 24),
    ("brain_16ch_96x96.h5", 4, 24),
    ("brain_16ch_64x64.h5", 3, 16),
    ("brain_16ch_64x64.h5", 4, 16),
]
PYGRAPPA_LAMBDAS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)
OUR_LAMBDAS = tuple(float(v) for v in np.logspace(-6, -0.5, 12))
SWEEP_KERNELS = ((5, 2), (7, 2), (9, 2), (5, 4), (7, 4))
EDGE_FACTORS = (1.0, 10.0, 100.0, 1000.0)


def data_folder(given: str | None) -> Path:
    if given:
        return Path(given)
    if os.environ.get("MRICTL_SHARED_DATA"):
        return Path(os.environ["MRICTL_SHARED_DATA"])
    return (REPO / "../shared/data").resolve()


def machine() -> dict[str, object]:
    """CPU model, cores and load, so that a reader can tell how busy the machine was."""
    model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "blas_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "numpy": np.__version__,
    }


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    result = run()  # warm-up, not timed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def scores(reference: np.ndarray, kspace: np.ndarray) -> dict[str, float]:
    return {key: float(value) for key, value in evaluate(reference, rss_image(kspace)).items()}


def pygrappa_filled(scan: Scan, lamda: float) -> np.ndarray:
    """mdgrappa at its default 5x5 kernel (k-space points) on each slice, ACS passed explicitly."""
    from pygrappa import mdgrappa

    acs = scan.acs_kspace().astype(np.complex128)
    measured = scan.kspace.astype(np.complex128) * scan.sampled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack(
            [
                mdgrappa(kspace, calib=calib, coil_axis=0, lamda=lamda)
                for kspace, calib in zip(measured, acs, strict=True)
            ]
        ).astype(np.complex64)


def our_filled(scan: Scan, regularization: float | None) -> np.ndarray:
    return reconstruct_grappa(scan, regularization=regularization)


def best_over(
    lambdas: tuple[float, ...], fill: Callable[[float], np.ndarray], reference: np.ndarray
) -> tuple[float, dict[str, float], list[dict[str, float]]]:
    sweep = [{"lambda": lam, **scores(reference, fill(lam))} for lam in lambdas]
    best = min(sweep, key=lambda row: row["nmse"])
    return best["lambda"], best, sweep


def run_case(path: Path, acceleration: int, acs_lines: int, repeats: int) -> dict[str, object]:
    with h5py.File(path, "r") as file:
        full = np.asarray(file["kspace"][()], dtype=np.complex64)
    reference = rss_image(full)
    mask = equispaced_mask(full.shape[-1], acceleration, acs_lines)
    scan = Scan.from_kspace(undersample(full, mask), mask)
    case: dict[str, object] = {
        "file": path.name,
        "acceleration": acceleration,
        "acs_lines": acs_lines,
        "coils": scan.num_coils,
        "matrix": list(scan.matrix),
        "methods": {},
    }
    methods: dict[str, dict[str, object]] = {}
    methods["zero-fill"] = scores(reference, scan.kspace)

    seconds, filled = median_seconds(lambda: our_filled(scan, None), repeats)
    chosen = fit_grappa(scan).regularization
    methods["ours default"] = {
        **scores(reference, filled),
        "seconds": seconds,
        "lambda": chosen[0],
        "kernel": list(DEFAULT_KERNEL_SIZE),
    }
    lam, best, sweep = best_over(OUR_LAMBDAS, lambda v: our_filled(scan, v), reference)
    methods["ours best lambda"] = {**best, "kernel": list(DEFAULT_KERNEL_SIZE), "sweep": sweep}

    seconds, filled = median_seconds(lambda: pygrappa_filled(scan, 0.01), repeats)
    methods["pygrappa default"] = {
        **scores(reference, filled),
        "seconds": seconds,
        "lambda": 0.01,
        "kernel": [5, 5],
    }
    lam, best, sweep = best_over(PYGRAPPA_LAMBDAS, lambda v: pygrappa_filled(scan, v), reference)
    seconds, _ = median_seconds(lambda: pygrappa_filled(scan, lam), repeats)
    methods["pygrappa best lambda"] = {**best, "seconds": seconds, "kernel": [5, 5], "sweep": sweep}
    case["methods"] = methods
    return case


def markdown(cases: list[dict[str, object]]) -> str:
    lines = [
        "| data | R | ACS | method | lambda | NMSE | PSNR dB | SSIM | time s | vs ours |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        methods = case["methods"]
        ours = methods["ours default"]["seconds"]
        for name, row in methods.items():
            seconds = row.get("seconds")
            lam = row.get("lambda")
            speed = f"{seconds / ours:.0f}x slower" if seconds and name.startswith("py") else ""
            lines.append(
                f"| {case['file']} | {case['acceleration']} | {case['acs_lines']} | {name} | "
                f"{'' if lam is None else f'{lam:.1e}'} | {row['nmse']:.3g} | "
                f"{row['psnr']:.2f} | {row['ssim']:.3f} | "
                f"{'' if seconds is None else f'{seconds:.3f}'} | {speed} |"
            )
    return "\n".join(lines)


def sweep_defaults(folder: Path, only: str | None = None) -> dict[str, object]:
    """NMSE over lambda per kernel, on the brain files and phantoms at R = 3..6: the evidence
    behind DEFAULT_KERNEL_SIZE and the automatic lambda (scale and form). Missing files are
    left out; `only` keeps the data whose name contains it."""
    datasets = [
        (name, np.asarray(h5py.File(folder / name, "r")["kspace"][0]), acs)
        for name, acs in (
            ("brain_8ch_320x168.h5", 32),
            ("brain_16ch_96x96.h5", 24),
            ("brain_16ch_64x64.h5", 24),
        )
        if (folder / name).is_file() and (not only or only in name)
    ]
    for snr in (10.0, 30.0, 100.0):
        if not only or only in f"phantom 8ch snr {snr:g}":
            phantom = simulate_scan(matrix=(128, 96), num_coils=8, snr=snr, seed=1)
            datasets.append((f"phantom 8ch snr {snr:g}", phantom.kspace[0], 24))
    rows = []
    for name, kspace, acs_lines in datasets:
        reference = rss_image(kspace[None])
        for acceleration in (3, 4, 5, 6):
            mask = equispaced_mask(kspace.shape[-1], acceleration, acs_lines)
            scan = Scan.from_kspace(undersample(kspace[None], mask), mask)
            acs = scan.acs_kspace()[0]
            for kernel in SWEEP_KERNELS:
                try:
                    _, auto = calibrate_grappa_with_lambda(acs, acceleration, kernel_size=kernel)
                except ValueError:
                    continue  # ACS too small for this kernel at this R
                curve = []
                for lam in (*OUR_LAMBDAS, auto):
                    filled = reconstruct_grappa(scan, kernel_size=kernel, regularization=lam)
                    curve.append(scores(reference, filled)["nmse"])
                best = int(np.argmin(curve[:-1]))
                rows.append(
                    {
                        "data": name,
                        "acceleration": acceleration,
                        "acs_lines": acs_lines,
                        "kernel": list(kernel),
                        "lambdas": list(OUR_LAMBDAS),
                        "nmse": curve[:-1],
                        "best_lambda": OUR_LAMBDAS[best],
                        "best_nmse": curve[best],
                        "auto_lambda": auto,
                        "auto_nmse": curve[-1],
                    }
                )
    return {
        "rows": rows,
        "summary": sweep_summary(rows),
        "edge_factors": sweep_edge_factors(datasets),
    }


def sweep_edge_factors(datasets: list[tuple[str, np.ndarray, int]]) -> list[dict[str, object]]:
    """NMSE at the default kernel and automatic lambda for each edge-kernel damping factor."""
    chosen = grappa.EDGE_REGULARIZATION_FACTOR
    rows = []
    try:
        for name, kspace, acs_lines in datasets:
            reference = rss_image(kspace[None])
            for acceleration in (3, 4, 5, 6):
                mask = equispaced_mask(kspace.shape[-1], acceleration, acs_lines)
                scan = Scan.from_kspace(undersample(kspace[None], mask), mask)
                nmse_by_factor = []
                for factor in EDGE_FACTORS:
                    grappa.EDGE_REGULARIZATION_FACTOR = factor
                    nmse_by_factor.append(scores(reference, reconstruct_grappa(scan))["nmse"])
                rows.append(
                    {
                        "data": name,
                        "acceleration": acceleration,
                        "factors": list(EDGE_FACTORS),
                        "nmse": nmse_by_factor,
                    }
                )
    finally:
        grappa.EDGE_REGULARIZATION_FACTOR = chosen
    return rows


def edge_markdown(rows: list[dict[str, object]]) -> str:
    """Geometric mean and worst of NMSE over the best factor per case."""
    ratios = np.array([np.asarray(r["nmse"]) / min(r["nmse"]) for r in rows])
    lines = ["| edge damping factor | geo-mean / worst NMSE ratio |", "|---|---|"]
    for index, factor in enumerate(EDGE_FACTORS):
        column = ratios[:, index]
        lines.append(f"| {factor:g} | {np.exp(np.mean(np.log(column))):.3f} / {column.max():.3f} |")
    return "\n".join(lines)


def sweep_summary(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per kernel: NMSE at the automatic lambda over the best NMSE of any kernel and lambda."""
    best_any: dict[tuple[str, int], float] = {}
    for row in rows:
        key = (row["data"], row["acceleration"])
        best_any[key] = min(best_any.get(key, np.inf), row["best_nmse"])
    summary = []
    for kernel in SWEEP_KERNELS:
        mine = [r for r in rows if tuple(r["kernel"]) == kernel]
        if not mine:
            continue
        auto = [r["auto_nmse"] / best_any[(r["data"], r["acceleration"])] for r in mine]
        per_lambda = []
        for index, lam in enumerate(OUR_LAMBDAS):
            fixed = [r["nmse"][index] / best_any[(r["data"], r["acceleration"])] for r in mine]
            per_lambda.append((float(np.exp(np.mean(np.log(fixed)))), max(fixed), lam))
        geo, worst, lam = min(per_lambda)
        summary.append(
            {
                "kernel": list(kernel),
                "cases": len(mine),
                "auto_geomean_ratio": float(np.exp(np.mean(np.log(auto)))),
                "auto_worst_ratio": float(max(auto)),
                "best_fixed_lambda": lam,
                "best_fixed_geomean_ratio": geo,
                "best_fixed_worst_ratio": worst,
            }
        )
    return summary


def sweep_markdown(summary: list[dict[str, object]]) -> str:
    lines = [
        "| kernel | cases | auto lambda: geo-mean / worst NMSE ratio | best fixed lambda | "
        "fixed: geo-mean / worst |",
        "|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['kernel'][0]}x{row['kernel'][1]} | {row['cases']} | "
            f"{row['auto_geomean_ratio']:.2f} / {row['auto_worst_ratio']:.2f} | "
            f"{row['best_fixed_lambda']:.1e} | "
            f"{row['best_fixed_geomean_ratio']:.2f} / {row['best_fixed_worst_ratio']:.2f} |"
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, object]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        json.dump(payload, file, indent=1)
    os.replace(temporary, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--data", help="folder with the brain_*.h5 files (default ../shared/data)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median)")
    parser.add_argument("--threads", type=int, help="BLAS threads for both methods")
    parser.add_argument("--sweep", action="store_true", help="also run the defaults sweep")
    parser.add_argument("--sweep-only", action="store_true", help="run only the defaults sweep")
    parser.add_argument("--only", help="run only cases (and sweep data) whose name has this text")
    args = parser.parse_args()
    folder = data_folder(args.data)
    if not folder.is_dir():
        print(f"data folder not found: {folder.name}", file=sys.stderr)
        return 2
    payload: dict[str, object] = {"machine": machine(), "cases": []}
    for name, acceleration, acs_lines in CASES:
        if args.sweep_only or (args.only and args.only not in name):
            continue
        print(f"{name} R={acceleration} ACS {acs_lines} ...", file=sys.stderr, flush=True)
        payload["cases"].append(run_case(folder / name, acceleration, acs_lines, args.repeats))
        write_json(args.out, payload)
    if args.sweep or args.sweep_only:
        print("defaults sweep ...", file=sys.stderr, flush=True)
        payload["sweep"] = sweep_defaults(folder, args.only)
    payload["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(args.out, payload)
    if payload["cases"]:
        print(markdown(payload["cases"]))
    if "sweep" in payload:
        print()
        print(sweep_markdown(payload["sweep"]["summary"]))
        print()
        print(edge_markdown(payload["sweep"]["edge_factors"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
