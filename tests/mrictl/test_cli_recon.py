"""`mrictl recon run` and `mrictl train` as a researcher uses them."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mrictl.errors import ExitCode
from tests.mrictl.cli_helpers import invoke


@pytest.fixture
def full_scan(tmp_path):
    path = tmp_path / "full.h5"
    made = invoke(
        "scan", "simulate", "--out", str(path), "--matrix", "48x40", "--coils", "6", "--snr", "40"
    )
    assert made.exit_code == 0, made.stderr
    return path


def test_fully_sampled_input_is_undersampled_and_scored(tmp_path, full_scan):
    out = tmp_path / "recon.h5"
    outcome = invoke(
        "recon",
        "run",
        str(full_scan),
        "--method",
        "grappa",
        "--accel",
        "3",
        "--acs",
        "16",
        "--out",
        str(out),
        "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert document["acceleration"] == 3 and document["acs_lines"] == 16
    zerofill = invoke(
        "recon",
        "run",
        str(full_scan),
        "--method",
        "zerofill",
        "--accel",
        "3",
        "--acs",
        "16",
        "--out",
        str(tmp_path / "zf.h5"),
        "--json",
    ).json()
    assert document["metrics"]["nmse"] < 0.5 * zerofill["metrics"]["nmse"]
    with h5py.File(out) as handle:
        image = handle["reconstruction"][()]
        assert image.shape == (1, 48, 40) and image.dtype == np.float32
        assert handle.attrs["method"] == "grappa"


def test_undersampled_input_with_reference(tmp_path, full_scan):
    under = tmp_path / "r2.h5"
    invoke(
        "scan", "undersample", str(full_scan), "--accel", "2", "--acs", "12", "--out", str(under)
    )
    outcome = invoke(
        "recon",
        "run",
        str(under),
        "--method",
        "raki",
        "--iterations",
        "50",
        "--reference",
        str(full_scan),
        "--out",
        str(tmp_path / "r.h5"),
        "--json",
    )
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.json()["metrics"]["ssim"] > 0


def test_fully_sampled_input_without_accel_is_a_clear_error(tmp_path, full_scan):
    outcome = invoke("recon", "run", str(full_scan), "--out", str(tmp_path / "x.h5"))
    assert outcome.exit_code == ExitCode.BAD_INPUT
    assert "--accel" in outcome.stderr and not (tmp_path / "x.h5").exists()


def test_train_then_apply_weights_and_refuse_misfits(tmp_path, full_scan):
    under = tmp_path / "r2.h5"
    invoke(
        "scan", "undersample", str(full_scan), "--accel", "2", "--acs", "12", "--out", str(under)
    )
    weights = tmp_path / "weights.pt"
    trained = invoke("train", str(under), "--out", str(weights), "--iterations", "30", "--json")
    assert trained.exit_code == 0, trained.stderr
    assert trained.json()["acceleration"] == 2
    applied = invoke(
        "recon", "run", str(under), "--weights", str(weights), "--out", str(tmp_path / "w.h5")
    )
    assert applied.exit_code == 0, applied.stderr
    other = tmp_path / "r3.h5"
    invoke(
        "scan", "undersample", str(full_scan), "--accel", "3", "--acs", "16", "--out", str(other)
    )
    refused = invoke(
        "recon", "run", str(other), "--weights", str(weights), "--out", str(tmp_path / "n.h5")
    )
    assert refused.exit_code == ExitCode.CONFLICT
    assert len(refused.stderr.strip().splitlines()) == 1


def test_training_flags_reach_the_saved_weights(tmp_path, full_scan):
    from raki.weights import RakiWeights

    weights = tmp_path / "weights.pt"
    trained = invoke(
        "train",
        str(full_scan),
        "--accel",
        "2",
        "--acs",
        "12",
        "--out",
        str(weights),
        "--iterations",
        "20",
        "--learning-rate",
        "0.01",
        "--lr-schedule",
        "cosine",
        "--batch-fraction",
        "0.5",
        "--coil-energy",
        "0.999",
        "--network-start",
        "grappa",
        "--json",
    )
    assert trained.exit_code == 0, trained.stderr
    saved = RakiWeights.load(weights).hyperparameters
    assert (saved["learning_rate"], saved["lr_schedule"], saved["batch_fraction"]) == (
        0.01,
        "cosine",
        0.5,
    )
    assert saved["coil_energy"] == 0.999 and saved["iterations"] == 20
    assert saved["network_start"] == "grappa"


def test_faithful_flag_and_bad_training_values(tmp_path, full_scan):
    out = tmp_path / "faithful.h5"
    done = invoke(
        "recon",
        "run",
        str(full_scan),
        "--accel",
        "2",
        "--acs",
        "12",
        "--method",
        "raki",
        "--faithful",
        "--iterations",
        "5",
        "--out",
        str(out),
        "--json",
    )
    assert done.exit_code == 0, done.stderr
    bad = invoke(
        "recon", "run", str(full_scan), "--accel", "2", "--batch-fraction", "2", "--out", str(out)
    )
    assert bad.exit_code == ExitCode.USAGE
    schedule = invoke(
        "recon", "run", str(full_scan), "--accel", "2", "--lr-schedule", "step", "--out", str(out)
    )
    assert schedule.exit_code == ExitCode.USAGE


def test_the_default_runs_where_the_networks_cannot_and_rraki_by_name_is_refused(
    tmp_path, full_scan
):
    """R = 6 with 10 ACS lines: the networks need 13 (2R + 1), GRAPPA 7, cs 6. Unasked, the
    default (auto) reconstructs and says what it chose; asked for by name, rraki is refused
    with the reason."""
    common = ["--accel", "6", "--acs", "10", "--json"]
    out = tmp_path / "recon.h5"
    outcome = invoke("recon", "run", str(full_scan), "--out", str(out), *common)
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert document["method"] in ("cs", "grappa") and document["fallback"] is None
    assert document["selection"]["method"] == document["method"]
    with h5py.File(out) as handle:
        assert handle.attrs["method"] == document["method"]
    named = invoke("recon", "run", str(full_scan), "--method", "rraki", "--out", str(out), *common)
    assert named.exit_code == ExitCode.BAD_INPUT
    assert "at least 13 are needed" in named.json()["error"]["message"]


def test_every_training_command_offers_every_training_flag():
    import typer.main

    from mrictl.cli.main import app
    from mrictl.cli.training_options import TRAINING_FLAGS

    root = typer.main.get_command(app)
    commands = {
        "recon run": root.commands["recon"].commands["run"],
        "train": root.commands["train"],
        "bench": root.commands["bench"],
    }
    for name, command in commands.items():
        offered = {param.name for param in command.params}
        assert set(TRAINING_FLAGS) <= offered, name
        assert "training" not in offered, name  # the collected overrides are no flag
