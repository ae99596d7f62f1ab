"""`mrictl` starts at once: commands that compute nothing, and the preprocess worker, never load
torch or the science; only the commands that reconstruct or train do.

Each check runs in a fresh interpreter (this one has long imported everything) and reads
`sys.modules` when the command has finished. Timings on a loaded CI machine are noisy, so the
module lists are the guard and the one time bound is loose.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mrictl.backends.local import LocalBackend
from mrictl.pipeline.upload import upload
from tests.mrictl.jobs_helpers import write_tiny_scan

# What importing the CLI must not load: the science, its format libraries and the cloud SDK.
HEAVY = ("torch", "numpy", "scipy", "h5py", "matplotlib", "twixtools", "boto3", "botocore")
# What the preprocess stage must not load on a fastMRI upload (it runs in a small container).
NOT_IN_PREPROCESS = ("torch", "scipy", "matplotlib", "twixtools")
IMPORT_SECONDS_BOUND = 0.5  # about 0.1 s measured; the margin is for a busy 2-core machine

# Runs `mrictl ARGS` (argv[2:]) as the console script does, then writes the names of HEAVY
# modules that were loaded into the file argv[1], however the command exited.
PROBE = """
import json, sys
out, args = sys.argv[1], sys.argv[2:]
sys.argv = ["mrictl", *args]
try:
    from mrictl.cli.main import main
    main()
finally:
    with open(out, "w") as handle:
        json.dump(sorted(name for name in sys.modules if name.split(".")[0] in HEAVY), handle)
"""


def run_probed(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`mrictl ARGS` in a fresh interpreter; its outcome and the heavy modules it loaded."""
    report = tmp_path / "loaded.json"
    completed = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}", str(report), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    return completed, {name.split(".")[0] for name in json.loads(report.read_text())}


@pytest.fixture
def uploaded(tmp_path: Path) -> tuple[Path, str, str]:
    """A local home holding one uploaded (not yet preprocessed) scan: (home, scan id, job id)."""
    home = tmp_path / "home"
    scan_file = write_tiny_scan(tmp_path / "in" / "brain.h5", undersampled=True)
    sent = upload(LocalBackend(home), [scan_file], method="zerofill")
    return home, sent.scan_id, sent.job_id


def test_importing_the_cli_loads_no_science():
    names = ", ".join(repr(name) for name in HEAVY)
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, mrictl.cli.main\nprint([n for n in ({names},) if n in sys.modules])",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_importing_the_cli_is_quick():
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import mrictl.cli.main"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    # "import time: SELF | CUMULATIVE | NAME" in microseconds: the self times add up to it all.
    self_times = re.findall(r"^import time:\s+(\d+) \|", completed.stderr, re.MULTILINE)
    assert 0 < sum(map(int, self_times)) / 1e6 < IMPORT_SECONDS_BOUND


@pytest.mark.parametrize("args", [("--version",), ("--help",)])
def test_version_and_help_load_no_science(tmp_path, args):
    completed, loaded = run_probed(tmp_path, *args)
    assert completed.returncode == 0, completed.stderr
    assert loaded == set()


def test_queue_commands_do_not_load_torch(tmp_path, uploaded):
    home, scan_id, job_id = uploaded
    where = ("--home", str(home), "--json")
    commands = [
        ("recon", "status", *where),
        ("recon", "submit", scan_id, "--method", "zerofill", *where),
        ("recon", "submit", scan_id, *where),  # the default method, the configured device
        ("recon", "logs", job_id, *where),
        ("recon", "cancel", job_id, "--yes", *where),
    ]
    for args in commands:
        completed, loaded = run_probed(tmp_path, *args)
        assert completed.returncode == 0, (args, completed.stderr)
        json.loads(completed.stdout)
        assert "torch" not in loaded, args


def test_upload_to_a_share_does_not_load_torch(tmp_path):
    scan_file = write_tiny_scan(tmp_path / "in" / "brain.h5", undersampled=True)
    share = tmp_path / "share"
    share.mkdir()
    completed, loaded = run_probed(tmp_path, "upload", str(scan_file), "--to", str(share), "--json")
    assert completed.returncode == 0, completed.stderr
    assert (share / f"{json.loads(completed.stdout)['scan_id']}.tar").is_file()
    assert "torch" not in loaded


def test_preprocess_worker_does_not_load_torch(tmp_path, uploaded):
    home, _, job_id = uploaded
    where = ("--home", str(home), "--json")
    completed, loaded = run_probed(
        tmp_path, "worker", "run", "--stage", "preprocess", "--once", *where
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["jobs_done"] == 1
    assert loaded.isdisjoint(NOT_IN_PREPROCESS), loaded
    record, _ = run_probed(tmp_path, "recon", "status", job_id, *where)
    assert json.loads(record.stdout)["jobs"][0]["state"] == "succeeded"
