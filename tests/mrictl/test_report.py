"""The run report: report.json and report.md side by side, free of patient identifiers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline.report import write_report
from raki.fft import rss_image
from raki.io.png import write_image_strip
from raki.metrics import evaluate
from raki.phantom import simulate_scan
from raki.sampling import equispaced_mask, undersample
from raki.scan import Identifiers, Scan

IDENTIFIERS = Identifiers(
    patient_name="Doe^Jane",
    patient_id="PID-314159",
    patient_birth_date="19700102",
    patient_sex="F",
    study_instance_uid="1.2.840.113619.2.55.3.2831164355.123.1700000000.1",
    study_date="20240305",
    study_time="101112",
    study_description="Brain of Jane",
    accession_number="ACC271828",
    institution_name="Hopital Universitaire",
)

COMPARISON = {
    "raki": {"nmse": 0.0042, "psnr": 33.5, "ssim": 0.912, "time": 41.0},
    "grappa": {"nmse": 0.0061, "psnr": 31.25, "ssim": 0.887, "time_s": 0.8},
    "zerofill": {"nmse": 0.093, "psnr": 22.1, "ssim": 0.61, "time_s": 0.01},
}


@pytest.fixture(scope="module")
def undersampled() -> tuple[Scan, np.ndarray]:
    """A phantom scan at R=2 (9 ACS lines) carrying identifiers, and its reference image."""
    full = simulate_scan(matrix=(32, 24), num_coils=4, num_slices=2, seed=3)
    mask = equispaced_mask(24, 2, 8)
    scan = Scan.from_kspace(
        undersample(full.kspace, mask),
        mask,
        geometry=full.geometry,
        protocol="phantom",
        identifiers=IDENTIFIERS,
    )
    return scan, rss_image(full.kspace)


def report_args(scan: Scan, **changes: object) -> dict[str, object]:
    args: dict[str, object] = {
        "method": "raki",
        "acceleration": scan.acceleration,
        "acs_lines": scan.acs.lines if scan.acs else 0,
        "timings": {"train_s": 40.0, "apply_s": 1.0, "total_s": 41.0},
        "metrics": COMPARISON["raki"],
        "comparison": COMPARISON,
        "strip_png": None,
        "scan_summary": scan.summary(),
    }
    args.update(changes)
    return args


def test_json_and_markdown_put_raki_beside_grappa_and_zero_fill(
    tmp_path: Path, undersampled: tuple[Scan, np.ndarray]
) -> None:
    scan, _ = undersampled
    json_path, md_path = write_report(tmp_path / "out", **report_args(scan))
    assert (json_path.name, md_path.name) == ("report.json", "report.md")
    report = json.loads(json_path.read_text())
    assert report["schema"] == "mrictl.report/1"
    assert (report["method"], report["acceleration"]) == ("raki", 2)
    assert report["acs_lines"] == scan.acs.lines == 9
    assert list(report["comparison"]) == ["zerofill", "grappa", "raki"]
    assert report["comparison"]["raki"]["time_s"] == 41.0
    assert report["scan"]["matrix"] == [32, 24]
    assert report["timings"]["train_s"] == 40.0

    markdown = md_path.read_text()
    assert "| Method | NMSE | PSNR (dB) | SSIM | Time (s) |" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    methods = [row.split("|")[1].strip() for row in rows[1:4]]
    assert methods == ["Zero-filled", "GRAPPA", "RAKI (this run)"]
    assert "| RAKI (this run) | **4.200e-03** | **33.50** | **0.9120** | 41.00 |" in markdown
    assert "| Zero-filled | 9.300e-02 | 22.10 | 0.6100 | **0.01** |" in markdown
    assert "R = 2" in markdown and "ACS lines: 9" in markdown
    assert "| train_s | 40.00 |" in markdown
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]


def test_no_identifier_reaches_any_report_file(
    tmp_path: Path, undersampled: tuple[Scan, np.ndarray]
) -> None:
    scan, reference = undersampled
    zero_filled = rss_image(scan.kspace)
    comparison = {"zerofill": {**evaluate(reference, zero_filled), "time_s": 0.01}}
    # The strip lives in a folder named after the patient: the report must not say so.
    strip = write_image_strip(
        {"reference": reference[0], "zero-fill": zero_filled[0]},
        tmp_path / "Doe_Jane PID-314159" / "strip.png",
    )
    out = tmp_path / "out"
    write_report(
        out, **report_args(scan, method="zerofill", comparison=comparison, strip_png=strip)
    )
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "strip.png"]
    assert "![Reconstructions side by side](strip.png)" in (out / "report.md").read_text()
    # Every identifier long enough to be searched for (the sex "F" is a single letter).
    secrets = [value for value in dataclasses.astuple(IDENTIFIERS) if value and len(value) > 1]
    secrets += ["Doe", "Jane", "314159", "Doe_Jane"]
    for path in out.iterdir():
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"{secret!r} found in {path.name}"


def test_a_strip_inside_the_output_folder_is_linked_relatively(
    tmp_path: Path, undersampled: tuple[Scan, np.ndarray]
) -> None:
    scan, reference = undersampled
    strip = write_image_strip({"reference": reference[0]}, tmp_path / "images" / "cmp a.png")
    _, md_path = write_report(tmp_path, **report_args(scan, strip_png=strip))
    assert "](images/cmp%20a.png)" in md_path.read_text()
    assert json.loads((tmp_path / "report.json").read_text())["strip"] == "images/cmp a.png"


def test_a_summary_with_identifiers_is_refused(
    tmp_path: Path, undersampled: tuple[Scan, np.ndarray]
) -> None:
    scan, _ = undersampled
    summary = {**scan.summary(), "patient_name": "Doe^Jane"}
    with pytest.raises(ValueError, match="patient_name"):
        write_report(tmp_path, **report_args(scan, scan_summary=summary))
    assert not list(tmp_path.iterdir())


def test_metrics_alone_make_a_one_row_table(
    tmp_path: Path, undersampled: tuple[Scan, np.ndarray]
) -> None:
    scan, _ = undersampled
    metrics = {"nmse": 0.01, "psnr": float("inf"), "ssim": 1.0}
    json_path, md_path = write_report(
        tmp_path, **report_args(scan, method="grappa", metrics=metrics, comparison=None)
    )
    report = json.loads(json_path.read_text())
    assert report["comparison"] is None
    assert report["metrics"]["psnr"] is None  # JSON has no infinity
    assert "| GRAPPA (this run) | 1.000e-02 | ∞ | 1.0000 | 41.00 |" in md_path.read_text()


def test_without_metrics_there_is_no_quality_table(
    tmp_path: Path, undersampled: tuple[Scan, np.ndarray]
) -> None:
    scan, _ = undersampled
    _, md_path = write_report(tmp_path, **report_args(scan, metrics=None, comparison=None))
    markdown = md_path.read_text()
    assert "Image quality" not in markdown
    assert "| apply_s | 1.00 |" in markdown


def test_a_missing_strip_is_a_not_found_error(
    tmp_path: Path, undersampled: tuple[Scan, np.ndarray]
) -> None:
    scan, _ = undersampled
    with pytest.raises(MrictlError) as caught:
        write_report(tmp_path / "out", **report_args(scan, strip_png=tmp_path / "Doe" / "s.png"))
    assert caught.value.exit_code == ExitCode.NOT_FOUND
    assert str(caught.value) == "s.png: no such image for the report"


def test_the_run_method_is_a_row_beside_the_compared_ones(
    tmp_path: Path, undersampled: tuple[Scan, np.ndarray]
) -> None:
    scan, _ = undersampled
    compared = {name: row for name, row in COMPARISON.items() if name != "raki"}
    json_path, md_path = write_report(
        tmp_path, **report_args(scan, metrics=COMPARISON["raki"], comparison=compared)
    )
    rows = json.loads(json_path.read_text())["comparison"]
    assert set(rows) == {"raki", "grappa", "zerofill"}
    assert "RAKI" in md_path.read_text()
