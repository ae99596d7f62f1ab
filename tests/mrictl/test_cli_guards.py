"""What the CLI refuses before doing any work, and how it says so (found by probing it as a user).

Each case is one clear line, the documented exit code, JSON on stdout with --json, and nothing
written or lost.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import h5py
import numpy as np
import pytest

from mrictl.cli.main import report
from mrictl.errors import ExitCode
from tests.mrictl.cli_helpers import invoke


@pytest.fixture
def full_scan(tmp_path):
    path = tmp_path / "full.h5"
    made = invoke("scan", "simulate", "--out", str(path), "--matrix", "48x40", "--coils", "4")
    assert made.exit_code == 0, made.stderr
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(outcome, code: ExitCode) -> dict:
    assert outcome.exit_code == code, (outcome.stdout, outcome.stderr)
    assert len(outcome.stderr.strip().splitlines()) == 1, outcome.stderr
    return outcome.json()["error"]


def test_an_output_that_names_an_input_is_refused_and_the_input_kept(tmp_path, full_scan):
    before = digest(full_scan)
    for args in (
        ("recon", "run", str(full_scan), "--accel", "4", "--method", "grappa"),
        ("scan", "undersample", str(full_scan), "--accel", "4"),
        ("train", str(full_scan), "--accel", "4"),
    ):
        error = refused(invoke(*args, "--out", str(full_scan), "--json"), ExitCode.USAGE)
        assert "input" in error["message"]
    reference = tmp_path / "ref.h5"
    reference.write_bytes(full_scan.read_bytes())
    under = tmp_path / "under.h5"
    assert invoke("scan", "undersample", str(full_scan), "--accel", "4", "--out", str(under))
    outcome = invoke(
        "recon",
        "run",
        str(under),
        "--reference",
        str(reference),
        "--out",
        str(reference),
        "--method",
        "grappa",
        "--json",
    )
    refused(outcome, ExitCode.USAGE)
    assert digest(full_scan) == before and digest(reference) == before


def test_an_output_that_is_a_folder_or_not_hdf5_is_refused(tmp_path, full_scan):
    folder = tmp_path / "results"
    folder.mkdir()
    error = refused(
        invoke("recon", "run", str(full_scan), "--accel", "4", "--out", str(folder), "--json"),
        ExitCode.USAGE,
    )
    assert "folder" in error["message"]
    error = refused(
        invoke(
            "recon",
            "run",
            str(full_scan),
            "--accel",
            "4",
            "--out",
            str(tmp_path / "r.dcm"),
            "--json",
        ),
        ExitCode.USAGE,
    )
    assert "HDF5" in error["message"] and not (tmp_path / "r.dcm").exists()
    error = refused(
        invoke("scan", "convert", str(full_scan), str(tmp_path / "out.txt"), "--json"),
        ExitCode.USAGE,
    )
    assert "--to" in error["message"]


def test_a_missing_file_is_not_found(tmp_path, full_scan):
    missing = tmp_path / "nope.h5"
    for args in (
        ("recon", "run", str(missing), "--out", str(tmp_path / "x.h5")),
        (
            "recon",
            "run",
            str(full_scan),
            "--accel",
            "4",
            "--reference",
            str(missing),
            "--out",
            str(tmp_path / "x.h5"),
        ),
        ("train", str(missing), "--out", str(tmp_path / "w.pt")),
        ("scan", "info", str(missing)),
    ):
        error = refused(invoke(*args, "--json"), ExitCode.NOT_FOUND)
        assert error == {"code": 4, "message": "nope.h5: no such file"}


def test_usage_errors_are_json_with_json(tmp_path, full_scan):
    missing_out = refused(invoke("recon", "run", str(full_scan), "--json"), ExitCode.USAGE)
    assert "--out" in missing_out["message"]
    refused(invoke("recon", "run", str(full_scan), "--bogus", "--json"), ExitCode.USAGE)
    refused(invoke("recon", "run", str(full_scan), "--accel", "1", "--json"), ExitCode.USAGE)


@pytest.mark.parametrize("method", ["grappa", "raki"])
def test_unknown_method_or_device_is_a_usage_error_for_every_method(tmp_path, full_scan, method):
    out = tmp_path / "x.h5"
    base = ("recon", "run", str(full_scan), "--accel", "4", "--out", str(out), "--json")
    error = refused(invoke(*base, "--method", "fast"), ExitCode.USAGE)
    assert "unknown method 'fast'" in error["message"]
    error = refused(invoke(*base, "--method", method, "--device", "tpu"), ExitCode.USAGE)
    assert "unknown device 'tpu'" in error["message"]
    assert not out.exists()


def test_acs_on_an_undersampled_input_is_refused(tmp_path, full_scan):
    under = tmp_path / "under.h5"
    invoke(
        "scan", "undersample", str(full_scan), "--accel", "4", "--acs", "16", "--out", str(under)
    )
    outcome = invoke(
        "recon",
        "run",
        str(under),
        "--acs",
        "10",
        "--method",
        "grappa",
        "--out",
        str(tmp_path / "x.h5"),
        "--json",
    )
    assert "16 ACS lines" in refused(outcome, ExitCode.BAD_INPUT)["message"]
    same = invoke(
        "recon",
        "run",
        str(under),
        "--acs",
        "16",
        "--method",
        "grappa",
        "--out",
        str(tmp_path / "x.h5"),
        "--json",
    )
    assert same.exit_code == 0, same.stderr


def test_weights_applied_with_another_method_are_refused(tmp_path, full_scan):
    weights = tmp_path / "w.pt"
    trained = invoke(
        "train",
        str(full_scan),
        "--accel",
        "4",
        "--method",
        "rraki",
        "--iterations",
        "2",
        "--out",
        str(weights),
    )
    assert trained.exit_code == 0, trained.stderr
    outcome = invoke(
        "recon",
        "run",
        str(full_scan),
        "--accel",
        "4",
        "--weights",
        str(weights),
        "--method",
        "grappa",
        "--out",
        str(tmp_path / "x.h5"),
        "--json",
    )
    assert "--method rraki" in refused(outcome, ExitCode.USAGE)["message"]


@pytest.mark.parametrize("method", ["grappa", "rraki"])
def test_an_all_zero_slice_stays_zero_and_the_others_are_reconstructed(tmp_path, method):
    path = tmp_path / "two.h5"
    invoke(
        "scan", "simulate", "--out", str(path), "--matrix", "48x40", "--coils", "4", "--slices", "2"
    )
    with h5py.File(path, "a") as file:
        file["kspace"][1] = 0
    out = tmp_path / "x.h5"
    done = invoke(
        "recon",
        "run",
        str(path),
        "--accel",
        "4",
        "--method",
        method,
        "--iterations",
        "3",
        "--out",
        str(out),
        "--json",
    )
    assert done.exit_code == 0, done.stderr
    assert "warning" not in done.stderr.lower()
    with h5py.File(out, "r") as file:
        image = file["reconstruction"][()]
    assert np.isfinite(image).all() and image[0].max() > 0 and not image[1].any()


def test_a_stream_that_cannot_be_written_gives_no_second_traceback(monkeypatch):
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("sys.stdout", Full())
    monkeypatch.setattr("sys.stderr", Full())
    assert report(ExitCode.BAD_INPUT, "bad scan", json_mode=True) == ExitCode.BAD_INPUT


@pytest.mark.parametrize("json_flag", [False, True])
def test_ctrl_c_is_one_line_exit_130_and_no_output_file(tmp_path, full_scan, json_flag):
    import signal
    import subprocess
    import sys

    out = tmp_path / "x.h5"
    command = [sys.executable, "-m", "mrictl", "recon", "run", str(full_scan), "--accel", "4",
               "--method", "raki", "--iterations", "100000", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(
        command + (["--json"] if json_flag else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_cpu_seconds(process.pid, 6.0)  # imports done (about 2 s), training under way
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    if json_flag:
        assert '"code": 130' in stdout
    assert not list(tmp_path.glob("*x.h5*"))


def wait_for_cpu_seconds(pid: int, seconds: float, timeout: float = 120.0) -> None:
    """Until the process has used `seconds` of CPU (Linux /proc): a fixed sleep is too short
    on a loaded CI machine."""
    import os
    import time

    ticks = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if (int(fields[11]) + int(fields[12])) / ticks >= seconds:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} used under {seconds} s of CPU in {timeout} s")


def test_training_flags_with_weights_are_refused_not_ignored(tmp_path, full_scan):
    weights = tmp_path / "w.pt"
    trained = invoke("train", str(full_scan), "--accel", "4", "--iterations", "2", "--out",
                     str(weights))  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    for flag in (("--iterations", "500"), ("--faithful",), ("--learning-rate", "0.1")):
        out = str(tmp_path / "x.h5")
        outcome = invoke("recon", "run", str(full_scan), "--accel", "4", "--weights",
                         str(weights), *flag, "--out", out, "--json")  # fmt: skip
        assert "--weights" in refused(outcome, ExitCode.USAGE)["message"]


def test_cuda_without_a_gpu_is_refused_for_every_method(tmp_path, full_scan):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for method in ("grappa", "zerofill"):
        outcome = invoke("recon", "run", str(full_scan), "--accel", "4", "--method", method,
                         "--device", "cuda", "--out", str(tmp_path / "x.h5"), "--json")  # fmt: skip
        assert "no CUDA GPU" in refused(outcome, ExitCode.USAGE)["message"]


def test_a_zero_padded_fully_sampled_file_is_undersampled_and_scored(tmp_path, full_scan):
    with h5py.File(full_scan, "a") as file:
        kspace = file["kspace"][()]
        kspace[..., :4] = 0
        kspace[..., -3:] = 0
        file["kspace"][...] = kspace
    out = tmp_path / "x.h5"
    done = invoke("recon", "run", str(full_scan), "--accel", "4", "--method", "grappa",
                  "--out", str(out), "--json")  # fmt: skip
    assert done.exit_code == 0, done.stderr
    metrics = done.json()["metrics"]
    zero = invoke("recon", "run", str(full_scan), "--accel", "4", "--method", "zerofill",
                  "--out", str(tmp_path / "z.h5"), "--json").json()["metrics"]  # fmt: skip
    assert metrics["nmse"] < zero["nmse"]
