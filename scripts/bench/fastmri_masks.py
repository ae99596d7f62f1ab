"""GRAPPA on fastMRI-style masks, whose rounded spacing makes the gaps vary by a line.

One command (repository root; the benchmark venv adds pygrappa's column):

    /work/bench-venv/bin/python scripts/bench/fastmri_masks.py \
        --out bench-results/fastmri-masks.json

fastMRI's equispaced masks count the ACS towards the 1/R share of lines, so the lines outside
it lie a little more than R apart, rounded to whole lines (`raki.sampling.rounded_spacing_mask`):
at R = 4 with an 8% ACS the gaps are 5 and 6 lines, at R = 8 with 4% they are 11 and 12. RAKI
needs one lattice and refuses such masks; `mrictl recon run` then falls back to GRAPPA, whose
kernels are per source pattern. For each shared file at those two settings this scores (NMSE /
SSIM of the RSS image, fastMRI's definitions) zero-fill, our GRAPPA, pygrappa's `mdgrappa` at
its defaults when installed, and, for scale, our GRAPPA on an every-R-th-line mask with the same
ACS (more lines outside the ACS than the fastMRI-style mask has).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grappa_peer import data_folder, machine, pygrappa_filled
from quality import has_pygrappa

from raki.errors import InvalidScanError
from raki.fft import rss_image
from raki.grappa import reconstruct_grappa
from raki.io import read_scan
from raki.methods import default_method_for
from raki.metrics import evaluate
from raki.sampling import rounded_spacing_mask, undersample
from raki.scan import Scan

FILES = ("brain_8ch_320x168.h5", "brain_16ch_96x96.h5", "brain_16ch_64x64.h5")
# (R, ACS share of the lines): fastMRI's two standard settings.
SETTINGS = ((4, 0.08), (8, 0.04))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--data", help="folder with the brain_*.h5 files (default ../shared/data)")
    parser.add_argument("--offset", type=int, default=1, help="first outer line of the mask")
    parser.add_argument("--only", help="run only the files whose name contains this text")
    args = parser.parse_args()
    folder = data_folder(args.data)
    peer = has_pygrappa()
    rows = []
    print("| data | R | ACS | gaps | zero-fill | GRAPPA | pygrappa | GRAPPA, every R-th line |")
    print("|---|---:|---:|---|---|---|---|---|")
    for name in FILES:
        if not (folder / name).is_file() or (args.only and args.only not in name):
            continue
        full = read_scan(folder / name)
        reference = rss_image(full.kspace)
        lines = full.matrix[1]
        for acceleration, share in SETTINGS:
            acs_lines = max(2, round(share * lines))
            mask = rounded_spacing_mask(lines, acceleration, acs_lines, args.offset)
            scan = Scan.from_kspace(undersample(full.kspace, mask), mask)
            gaps = sorted({int(g) for g in (mask.nonzero()[0][1:] - mask.nonzero()[0][:-1])})
            try:
                grappa = reconstruct_grappa(scan)
            except InvalidScanError as error:  # an ACS too small for the kernel at this R
                print(f"| {name} | {acceleration} | {acs_lines} | {gaps} | refused: {error} ||||")
                rows.append(
                    {"data": name, "R": acceleration, "acs": acs_lines, "refused": str(error)}
                )
                continue
            scores = {
                "zerofill": evaluate(reference, rss_image(scan.kspace)),
                "grappa": evaluate(reference, rss_image(grappa)),
                "default_runs": default_method_for(scan).method,
            }
            if peer:
                scores["pygrappa"] = evaluate(reference, rss_image(pygrappa_filled(scan, 0.01)))
            lattice = full.undersampled(acceleration, acs_lines)
            scores["grappa_lattice"] = evaluate(reference, rss_image(reconstruct_grappa(lattice)))
            rows.append({"data": name, "R": acceleration, "acs": acs_lines, "gaps": gaps, **scores})
            cells = " | ".join(
                f"{scores[key]['nmse']:.3g} / {scores[key]['ssim']:.3f}" if key in scores else "-"
                for key in ("zerofill", "grappa", "pygrappa", "grappa_lattice")
            )
            print(f"| {name} | {acceleration} | {acs_lines} | {gaps} | {cells} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "cases": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
