"""The report says what the default method, auto, chose and why."""

from __future__ import annotations

import json

from mrictl.pipeline.report import write_report
from raki.phantom import simulate_scan

SELECTION = {
    "method": "cs",
    "rule": "held-out ACS lines at R",
    "candidates": {"cs": 0.012, "grappa": 0.019},
    "candidate_seconds": {"cs": 0.4, "grappa": 0.05},
    "seconds": 0.45,
    "slices": [1],
    "held_out_lines": 9,
    "reason": None,
}


def test_the_report_shows_the_choice_its_errors_and_its_rule(tmp_path):
    scan = simulate_scan((32, 24), num_coils=4).undersampled(2, 8)
    json_path, md_path = write_report(
        tmp_path,
        method="cs",
        acceleration=2,
        acs_lines=8,
        timings={"select_s": 0.45, "total_s": 1.0},
        metrics={"nmse": 0.001, "psnr": 40.0, "ssim": 0.95},
        comparison=None,
        strip_png=None,
        scan_summary=scan.summary(),
        selection=SELECTION,
    )
    assert json.loads(json_path.read_text())["selection"] == SELECTION
    markdown = md_path.read_text()
    assert "- Chosen by: auto -> cs (held-out error cs 0.012 < grappa 0.019)" in markdown
    assert "- Rule: held-out ACS lines at R, 0.45 s" in markdown


def report(tmp_path, method: str = "cs", selection=None):
    """write_report's (json, markdown) paths for a small run that auto chose with `selection`
    (None: a named method)."""
    scan = simulate_scan((32, 24), num_coils=4).undersampled(2, 8)
    return write_report(
        tmp_path,
        method=method,
        acceleration=2,
        acs_lines=8,
        timings={},
        metrics=None,
        comparison=None,
        strip_png=None,
        scan_summary=scan.summary(),
        selection=selection,
    )


def report_lines(tmp_path, selection) -> list[str]:
    """The markdown report's lines for a cs run that auto chose with `selection`."""
    return report(tmp_path, "cs", selection)[1].read_text().splitlines()


def test_the_report_shows_the_cs_grid_and_its_held_out_errors(tmp_path):
    both = {
        "grid": "measured",
        "acs_errors": {"extended": 0.0123456, "measured": 0.00987654},
        "edge_errors": {"extended": 0.2345678, "measured": 0.1},
    }
    lines = report_lines(tmp_path, {**SELECTION, "cs_grid": both})
    assert (
        "- cs grid: measured (held-out error extended 0.0123 / measured 0.00988 on the ACS "
        "lines, 0.235 / 0.1 on the edge lines)"
    ) in lines
    # A grid given (--cs-grid) is the only one tested; a scan too narrow has no edge test.
    given = {"grid": "extended", "acs_errors": {"extended": 0.02}, "edge_errors": {}}
    lines = report_lines(tmp_path, {**SELECTION, "cs_grid": given})
    assert "- cs grid: extended (held-out error extended 0.02 on the ACS lines)" in lines
    untested = {"grid": "extended", "acs_errors": {}, "edge_errors": {}}
    assert "- cs grid: extended" in report_lines(tmp_path, {**SELECTION, "cs_grid": untested})
    without = report_lines(tmp_path, {**SELECTION, "cs_grid": None})
    assert not [line for line in without if line.startswith("- cs grid")]


def test_without_auto_the_report_has_no_choice(tmp_path):
    json_path, md_path = report(tmp_path, "grappa")
    assert json.loads(json_path.read_text())["selection"] is None
    assert "Chosen by" not in md_path.read_text()
