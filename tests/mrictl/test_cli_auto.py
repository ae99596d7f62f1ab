"""The default method, auto, from the command line: its choice is shown; cs's settings are taken."""

from __future__ import annotations

import json

import h5py
import pytest
import torch

from mrictl.errors import ExitCode
from tests.mrictl.cli_helpers import invoke


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small solves on a shared 2-core host: one thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full_scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "full.h5"
    made = invoke(
        "scan", "simulate", "--out", str(path), "--matrix", "48x40", "--coils", "6", "--snr", "20"
    )
    assert made.exit_code == 0, made.stderr
    return path


RETROSPECTIVE = ("--accel", "3", "--acs", "16")


def test_json_shows_what_auto_chose_and_why(tmp_path, full_scan):
    out = tmp_path / "auto.h5"
    outcome = invoke("recon", "run", str(full_scan), *RETROSPECTIVE, "--out", str(out), "--json")
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    selection = document["selection"]
    assert document["method"] == selection["method"] in ("cs", "grappa")
    assert set(selection["candidates"]) == {"cs", "grappa"}
    best = min(selection["candidates"], key=selection["candidates"].get)
    assert selection["method"] == best
    assert selection["rule"] == "held-out ACS lines at R" and selection["seconds"] > 0
    assert document["timings"]["select_s"] == pytest.approx(selection["seconds"], abs=1e-3)
    with h5py.File(out) as handle:
        assert json.loads(handle.attrs["selection"])["method"] == document["method"]


def test_the_human_output_says_auto_and_its_choice(tmp_path, full_scan):
    out = tmp_path / "a.h5"
    outcome = invoke("recon", "run", str(full_scan), *RETROSPECTIVE, "--out", str(out))
    assert outcome.exit_code == 0, outcome.stderr
    text = outcome.stdout + outcome.stderr
    assert "auto -> " in text and "held-out error cs " in text and " < " in text


def test_help_states_the_default_and_what_auto_does():
    text = " ".join(invoke("recon", "run", "--help").stdout.replace("│", " ").split())
    assert "Default auto" in text and "--cs-regularizer" in text and "--cs-weight" in text
    assert "--cs-grid" in text and "auto tests both" in text


def test_cs_regularizer_and_weight_are_honoured(tmp_path, full_scan):
    outcome = invoke(
        "recon",
        "run",
        str(full_scan),
        *RETROSPECTIVE,
        "--method",
        "cs",
        "--cs-regularizer",
        "tikhonov",
        "--cs-weight",
        "0.5",
        "--out",
        str(tmp_path / "cs.h5"),
        "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    given = {
        "regularizer": "tikhonov",
        "weight_rule": "given",
        "weights": [0.5],
        "grid": "extended",
    }
    assert outcome.json()["cs"] == given
    automatic = invoke(
        "recon",
        "run",
        str(full_scan),
        *RETROSPECTIVE,
        "--method",
        "cs",
        "--out",
        str(tmp_path / "l1.h5"),
        "--json",
    ).json()
    assert automatic["cs"]["regularizer"] == "wavelet"
    assert automatic["cs"]["weight_rule"] == "automatic"


def test_cs_grid_reaches_cs_and_auto(tmp_path, full_scan):
    """--cs-grid measured: cs solves on the measured grid (recorded in the JSON and the output
    file); auto tests that grid alone instead of both."""
    out = tmp_path / "measured.h5"
    cs = invoke(
        "recon", "run", str(full_scan), *RETROSPECTIVE, "--method", "cs", "--cs-grid", "measured",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert cs.exit_code == 0, cs.stderr
    assert cs.json()["cs"]["grid"] == "measured"
    with h5py.File(out) as handle:
        assert json.loads(handle.attrs["cs"])["grid"] == "measured"
    auto = invoke(
        "recon", "run", str(full_scan), *RETROSPECTIVE, "--cs-grid", "measured",
        "--out", str(tmp_path / "auto.h5"), "--json",
    )  # fmt: skip
    assert auto.exit_code == 0, auto.stderr
    tested = auto.json()["selection"]["cs_grid"]
    assert tested["grid"] == "measured" and set(tested["acs_errors"]) == {"measured"}
    if auto.json()["method"] == "cs":
        assert auto.json()["cs"]["grid"] == "measured"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--cs-regularizer", "tv"), "unknown cs regularizer 'tv'; choose one of wavelet, "),
        (("--cs-weight", "-1"), "--cs-weight must be >= 0"),
        (("--method", "grappa", "--cs-regularizer", "tikhonov"), "apply to cs and auto only"),
        (("--cs-grid", "periodic"), "unknown cs grid 'periodic'; choose one of extended, measured"),
        (("--method", "zerofill", "--cs-grid", "measured"), "apply to cs and auto only"),
    ],
)
def test_bad_cs_settings_are_one_line_usage_errors(tmp_path, full_scan, flags, message):
    out = tmp_path / "never.h5"
    outcome = invoke("recon", "run", str(full_scan), *RETROSPECTIVE, *flags, "--out", str(out))
    assert outcome.exit_code == ExitCode.USAGE
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in outcome.stderr
    assert not out.exists()


def test_recon_submit_carries_the_cs_settings_in_the_payload(full_scan):
    submitted = invoke(
        "recon", "submit", str(full_scan), *RETROSPECTIVE, "--cs-regularizer", "tikhonov", "--json"
    )
    assert submitted.exit_code == 0, submitted.stderr
    record = submitted.json()
    assert record["method"] == "auto" and record["options"]["cs_regularizer"] == "tikhonov"
    refused = invoke("recon", "submit", str(full_scan), *RETROSPECTIVE, "--cs-regularizer", "tv")
    assert refused.exit_code == ExitCode.USAGE
    assert "unknown cs regularizer 'tv'" in refused.stderr


def test_recon_submit_carries_the_cs_grid_and_refuses_a_bad_one(tmp_path, full_scan):
    """The payload carries --cs-grid and the worker's cs solves on that grid."""
    submitted = invoke(
        "recon", "submit", str(full_scan), *RETROSPECTIVE, "--method", "cs",
        "--cs-grid", "measured", "--json",
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.stderr
    assert submitted.json()["options"]["cs_grid"] == "measured"
    worked = invoke("worker", "run", "--once", "--json")
    assert worked.exit_code == 0, worked.stderr
    got = tmp_path / "got"
    fetched = invoke("fetch", submitted.json()["job_id"], "--out", str(got), "--json")
    assert fetched.exit_code == 0, fetched.stderr
    assert json.loads((got / "result.json").read_text())["cs"]["grid"] == "measured"
    with h5py.File(got / "reconstruction.h5") as handle:
        assert json.loads(handle.attrs["cs"])["grid"] == "measured"
    for flags, message in (
        (("--cs-grid", "periodic"), "unknown cs grid 'periodic'"),
        (("--method", "grappa", "--cs-grid", "measured"), "apply to cs and auto only"),
    ):
        refused = invoke("recon", "submit", str(full_scan), *RETROSPECTIVE, *flags)
        assert refused.exit_code == ExitCode.USAGE
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0]
