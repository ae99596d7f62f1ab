"""`mrictl bench`: the numbers an operator sizes a compute environment with."""

from __future__ import annotations

import pytest

from mrictl.errors import ExitCode
from tests.mrictl.cli_helpers import invoke


def test_bench_reports_rates_and_cost_per_scan():
    outcome = invoke(
        "bench",
        "--method",
        "grappa",
        "--matrix",
        "48x40",
        "--coils",
        "4",
        "--slices",
        "3",
        "--acs",
        "12",
        "--slices-per-scan",
        "10",
        "--price-per-hour",
        "3.6",
        "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert len(document["slice_seconds"]) == 3
    per_slice = document["seconds_per_slice"]
    assert per_slice > 0
    assert document["seconds_per_scan"] == pytest.approx(10 * per_slice)
    assert document["cost_per_scan"] == pytest.approx(3.6 * 10 * per_slice / 3600)
    assert document["slices_per_hour"] == pytest.approx(3600 / per_slice)
    assert document["machine"]["cores"] >= 1


def test_bench_as_a_volume_with_training_settings():
    outcome = invoke(
        "bench",
        "--method",
        "raki",
        "--matrix",
        "40x36",
        "--coils",
        "3",
        "--slices",
        "2",
        "--acs",
        "12",
        "--accel",
        "3",
        "--iterations",
        "5",
        "--volume",
        "--slices-per-batch",
        "2",
        "--lr-schedule",
        "cosine",
        "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert document["settings"]["volume"] is True
    assert document["settings"]["training"] == {"lr_schedule": "cosine", "slices_per_batch": 2}
    assert document["slice_seconds"][1] == document["slice_seconds"][2]
    # Plain RAKI trains in fp32 wherever it runs ("auto" gives bf16 to rraki only).
    assert document["precision"] == "fp32"
    assert isinstance(document["machine"]["cpu_native_bf16"], bool)


def test_bench_refuses_bad_settings_in_one_line():
    outcome = invoke("bench", "--method", "raki", "--batch-fraction", "0", "--json")
    assert outcome.exit_code == ExitCode.USAGE
