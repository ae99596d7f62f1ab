"""Regularised SENSE (`--method cs`) against BART's `ecalib` and `pics`, side by side.

From the repository root, in the project venv (BART from Debian, `apt-get install bart`; its
columns are left out where `bart` is not on the PATH):

    .venv/bin/python scripts/bench/cs_peer.py --threads 1 --out bench-results/cs-peer.json

Part 1, coil maps: ESPIRiT maps of ours (`raki.espirit`), BART's `ecalib -m2 -c0` (and `-m1`)
and, with `--sigpy-python PY` (an interpreter that has SigPy), SigPy's `EspiritCalib` (one
set), all from the ACS of the R = 4 case of each shared file; scored by the projection error
|x - S S^H x| / |x| of the fully sampled coil images x (what the maps cannot express, up to
any phase), and timed.

Part 2, images: each case undersamples a fully sampled file retrospectively (every R-th line
through the centre line plus a centred ACS block; `with_noise` adds seeded noise on some; 8-coil
phantoms at SNR 5-50 and a 16-coil 320 x 320 one, the size of issue 16's time target) and
scores the RSS image against the fully sampled RSS with fastMRI's NMSE / SSIM
(`raki.metrics`). Methods: zero-fill; our GRAPPA; cs with the automatic weight (L1-wavelet, the
default, and Tikhonov); cs at the best weight of a grid around the automatic one (an oracle:
it reads the reference); BART `pics -S -R W:7:0:lambda -i 100` with `ecalib -m2 -c0` maps at
its best weight of 0.0003-0.3, its image brought back to coil k-space through the maps with
the acquired lines kept as measured (as our cs output is). Times are wall seconds per slice
of one run at `--threads` threads for torch, BLAS and BART's OpenMP alike.

`--choices` adds the measurement behind cs's settings, on the R = 4 case of each shared file
and the SNR-10 phantom, at the automatic weight: FISTA iterations (20-200), the wavelet (db1,
db2, db4) with and without cycle spinning, and the ESPIRiT crop and threshold.
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
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grappa_peer import data_folder, machine  # noqa: E402
from quality import with_noise  # noqa: E402

from raki.espirit import espirit_maps  # noqa: E402
from raki.fft import fft2c, ifft2c, rss_image  # noqa: E402
from raki.io import read_scan  # noqa: E402
from raki.methods import reconstruct  # noqa: E402
from raki.metrics import nmse, ssim  # noqa: E402
from raki.phantom import simulate_scan  # noqa: E402
from raki.scan import Scan  # noqa: E402
from raki.sense import automatic_weight, l1_wavelet_sense, reconstruct_sense  # noqa: E402
from raki.sense_operator import SenseOperator, coil_kspace  # noqa: E402

# (file, R, ACS lines, noise relative to the k-space RMS): the quality grid's cases
# (scripts/bench/quality.py), and the 16-coil files at R = 4 and 6 with noise added.
FILE_CASES = [
    ("brain_8ch_320x168.h5", 3, 32, 0.0),
    ("brain_8ch_320x168.h5", 4, 32, 0.0),
    ("brain_8ch_320x168.h5", 5, 32, 0.0),
    ("brain_8ch_320x168.h5", 6, 32, 0.0),
    ("brain_8ch_320x168.h5", 4, 24, 0.0),
    ("brain_8ch_320x168.h5", 4, 40, 0.0),
    ("brain_16ch_96x96.h5", 3, 24, 0.0),
    ("brain_16ch_96x96.h5", 4, 24, 0.0),
    ("brain_16ch_96x96.h5", 5, 24, 0.0),
    ("brain_16ch_96x96.h5", 6, 24, 0.0),
    ("brain_16ch_96x96.h5", 4, 32, 0.0),
    ("brain_16ch_64x64.h5", 3, 20, 0.0),
    ("brain_16ch_64x64.h5", 4, 20, 0.0),
    ("brain_16ch_64x64.h5", 5, 20, 0.0),
    ("brain_16ch_64x64.h5", 4, 24, 0.0),
    ("brain_16ch_96x96.h5", 4, 24, 0.05),
    ("brain_16ch_96x96.h5", 6, 24, 0.05),
    ("brain_16ch_64x64.h5", 4, 20, 0.05),
    ("brain_16ch_64x64.h5", 6, 20, 0.05),
]
PHANTOM_SNRS = (5.0, 10.0, 20.0, 50.0)
MAP_CASES = [("brain_8ch_320x168.h5", 4, 32), ("brain_16ch_96x96.h5", 4, 24)]
MAP_CASES += [("brain_16ch_64x64.h5", 4, 20)]
BART_WEIGHTS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
L1_FACTORS = tuple(2.0**k for k in range(-3, 4))  # x the automatic weight
TIKHONOV_FACTORS = tuple(4.0**k for k in range(-2, 3))

SIGPY_SCRIPT = """
import sys, time, numpy as np, sigpy.mri as mr
data = np.load(sys.argv[1])
calib = mr.app.EspiritCalib(data["kspace"], calib_width=24, thresh=0.02, kernel_width=6,
                            crop=0.8, show_pbar=False)
calib.run()
start = time.perf_counter()
maps = mr.app.EspiritCalib(data["kspace"], calib_width=24, thresh=0.02, kernel_width=6,
                           crop=0.8, show_pbar=False).run()
np.savez(sys.argv[2], maps=maps, seconds=time.perf_counter() - start)
"""


def write_cfl(base: Path, array: np.ndarray) -> None:
    """BART's format: a text header of dimensions, then complex64 in column-major order."""
    array = np.asarray(array, dtype=np.complex64)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, array.shape)) + "\n")
    array.ravel(order="F").tofile(base.with_suffix(".cfl"))


def read_cfl(base: Path) -> np.ndarray:
    dims = [int(n) for n in base.with_suffix(".hdr").read_text().splitlines()[1].split()]
    return np.fromfile(base.with_suffix(".cfl"), dtype=np.complex64).reshape(dims, order="F")


def bart(*args: str) -> float:
    """Run one BART tool; its wall seconds."""
    start = time.perf_counter()
    subprocess.run(["bart", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - start


class BartSlice:
    """One slice in BART's layout [kx, ky, 1, coil] in a scratch folder."""

    def __init__(self, folder: Path, kspace: np.ndarray) -> None:
        self.folder = folder
        write_cfl(folder / "kspace", kspace.transpose(1, 2, 0)[:, :, None, :])

    def maps(self, *flags: str) -> tuple[np.ndarray, float]:
        """ecalib's maps as [set, coil, kx, ky] and its seconds."""
        seconds = bart("ecalib", *flags, str(self.folder / "kspace"), str(self.folder / "maps"))
        maps = read_cfl(self.folder / "maps")
        maps = maps.reshape(maps.shape[0], maps.shape[1], maps.shape[3], -1)
        return np.ascontiguousarray(maps.transpose(3, 2, 0, 1)), seconds

    def pics(self, weight: float, iterations: int = 100) -> tuple[np.ndarray, float]:
        """pics' image [set, kx, ky] with the last `maps` and its seconds."""
        seconds = bart(
            "pics",
            "-S",
            "-R",
            f"W:7:0:{weight}",
            "-i",
            str(iterations),
            str(self.folder / "kspace"),
            str(self.folder / "maps"),
            str(self.folder / "image"),
        )
        image = read_cfl(self.folder / "image")
        return image.reshape(image.shape[0], image.shape[1], -1).transpose(2, 0, 1), seconds


def projection_error(coil_images: np.ndarray, maps: np.ndarray) -> float:
    projected = np.einsum("scxy,sdxy,dxy->cxy", maps, maps.conj(), coil_images)
    return float(np.linalg.norm(coil_images - projected) / np.linalg.norm(coil_images))


def sigpy_maps(python: str, kspace: np.ndarray) -> tuple[np.ndarray, float]:
    with tempfile.TemporaryDirectory() as scratch:
        given, found = Path(scratch) / "in.npz", Path(scratch) / "out.npz"
        np.savez(given, kspace=kspace)
        subprocess.run([python, "-c", SIGPY_SCRIPT, str(given), str(found)], check=True)
        result = np.load(found)
        return result["maps"][None], float(result["seconds"])


def compare_maps(folder: Path, sigpy_python: str | None) -> list[dict[str, object]]:
    rows = []
    for name, acceleration, acs_lines in MAP_CASES:
        path = folder / name
        if not path.is_file():
            continue
        full = read_scan(path)
        scan = full.undersampled(acceleration, acs_lines)
        coil_images = ifft2c(full.kspace[0])
        row: dict[str, object] = {"data": name, "R": acceleration, "acs": acs_lines}
        for max_sets in (1, 2):
            espirit_maps(scan.acs_kspace()[0], scan.matrix, max_sets=max_sets)  # warm-up
            start = time.perf_counter()
            ours = espirit_maps(scan.acs_kspace()[0], scan.matrix, max_sets=max_sets)
            row[f"ours_m{max_sets}"] = {
                "error": projection_error(coil_images, ours.maps),
                "seconds": time.perf_counter() - start,
                "sets": ours.sets,
            }
        if shutil.which("bart"):
            with tempfile.TemporaryDirectory() as scratch:
                peer = BartSlice(Path(scratch), scan.kspace[0])
                for max_sets in (1, 2):
                    maps, seconds = peer.maps(f"-m{max_sets}", "-c0")
                    row[f"bart_m{max_sets}"] = {
                        "error": projection_error(coil_images, maps),
                        "seconds": seconds,
                        "sets": maps.shape[0],
                    }
        if sigpy_python:
            maps, seconds = sigpy_maps(sigpy_python, scan.kspace[0])
            row["sigpy"] = {"error": projection_error(coil_images, maps), "seconds": seconds}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def solver_choices(folder: Path) -> list[dict[str, object]]:
    """NMSE and seconds of cs at its automatic weight as each setting changes from the default."""
    scans = [
        (name, read_scan(folder / name), r, acs)
        for name, r, acs in MAP_CASES
        if (folder / name).is_file()
    ]
    phantom = simulate_scan((192, 160), num_coils=8, snr=10, seed=1)
    scans.append(("phantom 8ch SNR 10", phantom, 4, 24))
    settings = [("iterations", n, {"iterations": n}, {}) for n in (20, 50, 100, 200)]
    settings += [
        (
            "wavelet",
            f"{name}{'' if shifts else ' fixed grid'}",
            {"wavelet": name, "shifts": shifts},
            {},
        )
        for name in ("db1", "db2", "db4")
        for shifts in (True, False)
    ]
    settings += [("crop", value, {}, {"crop": value}) for value in (0.5, 0.8, 0.95)]
    settings += [("threshold", value, {}, {"threshold": value}) for value in (0.005, 0.01, 0.02)]
    rows = []
    for name, full, acceleration, acs_lines in scans:
        reference = rss_image(full.kspace)
        scan = full.undersampled(acceleration, acs_lines)
        acs = scan.acs_kspace()[0]
        measured = torch.from_numpy(scan.kspace[0])
        for setting, value, solver_options, map_options in settings:
            start = time.perf_counter()
            maps = espirit_maps(acs, scan.matrix, **map_options)
            operator = SenseOperator.build(maps.maps, scan.sampled)
            weight = automatic_weight("wavelet", maps, acs)
            image, _ = l1_wavelet_sense(operator, measured, weight, **solver_options)
            filled = coil_kspace(operator, image, measured).numpy()[None]
            seconds = time.perf_counter() - start
            row = {"data": name, "setting": setting, "value": value, "sets": maps.sets}
            row.update(score(reference, filled), seconds=seconds)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def choices_markdown(rows: list[dict[str, object]]) -> str:
    data = list(dict.fromkeys(row["data"] for row in rows))
    lines = ["| setting | " + " | ".join(data) + " |", "|---|" + "---|" * len(data)]
    for key in dict.fromkeys((row["setting"], row["value"]) for row in rows):
        cells = [
            f"{row['nmse']:.3g} ({row['seconds']:.2f} s)"
            for name in data
            for row in rows
            if row["data"] == name and (row["setting"], row["value"]) == key
        ]
        lines.append(f"| {key[0]} {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def score(reference: np.ndarray, kspace: np.ndarray) -> dict[str, float]:
    image = rss_image(kspace)
    return {"nmse": nmse(reference, image), "ssim": ssim(reference, image)}


def timed(run):
    start = time.perf_counter()
    value = run()
    return value, time.perf_counter() - start


def bart_best(scan: Scan, reference: np.ndarray) -> dict[str, object]:
    """pics at every weight of BART_WEIGHTS; the best by NMSE, and every score."""
    kspace = scan.kspace[0]
    with tempfile.TemporaryDirectory() as scratch:
        peer = BartSlice(Path(scratch), kspace)
        maps, maps_seconds = peer.maps("-m2", "-c0")
        sweep = {}
        for weight in BART_WEIGHTS:
            image, seconds = peer.pics(weight)
            filled = np.where(scan.sampled, kspace, fft2c(np.einsum("scxy,sxy->cxy", maps, image)))
            sweep[weight] = {**score(reference, filled[None]), "seconds": maps_seconds + seconds}
    best = min(sweep, key=lambda w: sweep[w]["nmse"])
    return {**sweep[best], "weight": best, "sweep": sweep}


def cs_oracle(scan: Scan, reference: np.ndarray, regularizer: str, automatic: float) -> dict:
    factors = L1_FACTORS if regularizer != "tikhonov" else TIKHONOV_FACTORS
    sweep = {}
    for factor in factors:
        result = reconstruct_sense(scan, regularizer, weight=automatic * factor)
        sweep[factor] = score(reference, result.kspace)
    best = min(sweep, key=lambda f: sweep[f]["nmse"])
    return {**sweep[best], "factor": best, "sweep": sweep}


def run_case(full: Scan, acceleration: int, acs_lines: int, peers: bool) -> dict[str, object]:
    reference = rss_image(full.kspace)
    scan = full.undersampled(acceleration, acs_lines)
    rows: dict[str, object] = {"zerofill": score(reference, scan.kspace)}
    grappa, seconds = timed(lambda: reconstruct(scan, "grappa").kspace)
    rows["grappa"] = {**score(reference, grappa), "seconds": seconds}
    for regularizer, label in (("wavelet", "cs"), ("tikhonov", "cs_tikhonov")):
        result, seconds = timed(lambda r=regularizer: reconstruct_sense(scan, r, device="cpu"))
        rows[label] = {
            **score(reference, result.kspace),
            "seconds": seconds,
            "weight": result.weights[0],
            "map_sets": result.map_sets[0],
        }
        oracle = cs_oracle(scan, reference, regularizer, result.weights[0])
        rows[f"{label}_oracle"] = oracle
    if peers:
        rows["bart"] = bart_best(scan, reference)
    for method, row in rows.items():
        extra = f" {row['seconds']:.2f} s" if "seconds" in row else ""
        print(f"  {method:18s} nmse {row['nmse']:.3g} ssim {row['ssim']:.3f}{extra}", flush=True)
    return rows


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}"


def markdown(cases: list[dict[str, object]]) -> str:
    header = (
        "| data | R | ACS | zero-fill | GRAPPA (ours) | cs auto | cs oracle (x auto) | "
        "cs Tikhonov auto | BART pics best (lambda) | cs / BART | cs / GRAPPA | "
        "s/slice cs | s/slice BART | s/slice GRAPPA |"
    )
    lines = [header, "|---|---:|---:|" + "---|" * 6 + "---:|" * 5]

    def cell(rows: dict, key: str) -> str:
        return f"{rows[key]['nmse']:.3g} / {rows[key]['ssim']:.3f}"

    for case in cases:
        m = case["methods"]
        bart = m.get("bart")
        lines.append(
            f"| {case['data']} | {case['R']} | {case['acs']} | {cell(m, 'zerofill')} | "
            f"{cell(m, 'grappa')} | {cell(m, 'cs')} | {cell(m, 'cs_oracle')} "
            f"({m['cs_oracle']['factor']:g}) | {cell(m, 'cs_tikhonov')} | "
            + (f"{cell(m, 'bart')} ({bart['weight']:g}) | " if bart else "- | ")
            + (ratio(m["cs"]["nmse"], bart["nmse"]) if bart else "-")
            + f" | {ratio(m['cs']['nmse'], m['grappa']['nmse'])} | {m['cs']['seconds']:.2f} | "
            + (f"{bart['seconds']:.2f}" if bart else "-")
            + f" | {m['grappa']['seconds']:.2f} |"
        )
    return "\n".join(lines)


def maps_markdown(rows: list[dict[str, object]]) -> str:
    columns = ["ours_m1", "ours_m2", "bart_m1", "bart_m2", "sigpy"]
    names = {
        "ours_m1": "ours, 1 set",
        "ours_m2": "ours, up to 2",
        "bart_m1": "BART -m1 -c0",
        "bart_m2": "BART -m2 -c0",
        "sigpy": "SigPy (1 set)",
    }
    present = [c for c in columns if any(c in row for row in rows)]
    lines = [
        "| data | " + " | ".join(f"{names[c]}: error / s" for c in present) + " |",
        "|---|" + "---|" * len(present),
    ]
    for row in rows:
        cells = []
        for column in present:
            entry = row.get(column)
            sets = f" ({entry['sets']} sets)" if entry and entry.get("sets") == 2 else ""
            cells.append(f"{entry['error']:.4f} / {entry['seconds']:.2f}{sets}" if entry else "-")
        lines.append(f"| {row['data']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--data", help="folder with the brain_*.h5 files (default ../shared/data)")
    parser.add_argument("--threads", type=int, default=1, help="torch, BLAS and BART threads")
    parser.add_argument("--only", help="run only cases whose data name or label has this text")
    parser.add_argument("--no-phantoms", action="store_true")
    parser.add_argument("--no-maps", action="store_true", help="skip part 1 (coil maps)")
    parser.add_argument("--sigpy-python", help="a Python with SigPy, for its maps in part 1")
    parser.add_argument("--choices", action="store_true", help="add the settings' measurement")
    parser.add_argument("--choices-only", action="store_true", help="only that measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peers = shutil.which("bart") is not None
    if not peers:
        print("bart is not installed: its columns are left out", flush=True)
    folder = data_folder(args.data)
    started = machine()
    choices = solver_choices(folder) if args.choices or args.choices_only else []
    if args.choices_only:
        print(choices_markdown(choices))
        payload = {"machine": started, "choices": choices, "markdown": choices_markdown(choices)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        return 0
    maps = [] if args.no_maps else compare_maps(folder, args.sigpy_python)
    jobs: list[tuple[str, Scan, int, int]] = []
    for name, acceleration, acs_lines, noise in FILE_CASES:
        path = folder / name
        if path.is_file() and (not args.only or args.only in name):
            label = f"{name} + noise {noise:g}" if noise else name
            jobs.append((label, with_noise(read_scan(path), noise), acceleration, acs_lines))
    if not args.no_phantoms:
        for snr in PHANTOM_SNRS:
            if not args.only or args.only in f"phantom 8ch SNR {snr:g}":
                phantom = simulate_scan((192, 160), num_coils=8, snr=snr, seed=1)
                jobs.append((f"phantom 8ch SNR {snr:g}", phantom, 4, 24))
        # The size of issue 16's time target (16 coils, 320 x 320).
        if not args.only or args.only in "phantom 16ch 320x320 SNR 20":
            phantom = simulate_scan((320, 320), num_coils=16, snr=20, seed=1)
            jobs.append(("phantom 16ch 320x320 SNR 20", phantom, 4, 32))
    cases = []
    for label, full, acceleration, acs_lines in jobs:
        print(f"{label} R={acceleration} ACS={acs_lines}", flush=True)
        rows = run_case(full, acceleration, acs_lines, peers)
        cases.append({"data": label, "R": acceleration, "acs": acs_lines, "methods": rows})
    table = markdown(cases)
    print(maps_markdown(maps) if maps else "", table, sep="\n\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {
            **started,
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "torch_threads": torch.get_num_threads(),
            "bart": subprocess.run(["bart", "version"], capture_output=True, text=True).stdout
            if peers
            else None,
        },
        "maps": maps,
        "choices": choices,
        "choices_markdown": choices_markdown(choices) if choices else "",
        "cases": cases,
        "maps_markdown": maps_markdown(maps) if maps else "",
        "markdown": table,
    }
    args.out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
