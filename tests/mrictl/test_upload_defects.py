"""Uploads and reconstructions that went wrong in use: what a user does, and what they now get.

A patient's name in a file name stays on the workstation; a scan whose study UID a PACS would
refuse, or whose k-space is all zeros, is refused before anything is sent; a corrupt stored
package is replaced by uploading again; a killed upload's temporary file is cleaned up; and a
folder, a device or a missing file given as a scan gets the same answer from every command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from mrictl import keys, partial_files
from mrictl.backends.base import JobState
from mrictl.backends.local import LocalBackend
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline import jobs
from mrictl.pipeline.package import MANIFEST_NAME, scan_id_of
from mrictl.pipeline.upload import package_scan, upload
from mrictl.recon_service import prepare_scan
from mrictl.worker import run_worker
from raki.errors import InvalidScanError
from raki.io.fastmri import read_fastmri, write_fastmri
from raki.phantom import simulate_scan
from raki.scan import Identifiers
from tests.mrictl.cli_helpers import invoke
from tests.mrictl.jobs_helpers import TINY, write_tiny_scan

PATIENT_FILE = "Doe_Jane_MRN12345.h5"
SECRETS = ("Doe", "MRN12345")
# Letters make it invalid; the patient's id in it shows whether it leaks anywhere.
BAD_STUDY_UID = "1.2.840.99999.MRN12345.Doe"


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "home")


def write_scan_of(
    path: Path,
    *,
    identifiers: Identifiers = Identifiers(),
    num_slices: int = 1,
    zero_slices: slice | None = None,
) -> Path:
    """A tiny undersampled phantom carrying `identifiers` in its header; `zero_slices` of its
    k-space set to zero."""
    settings = {**TINY, "num_slices": num_slices}
    scan = simulate_scan(**settings, seed=3).undersampled(2, 8).replace(identifiers=identifiers)
    if zero_slices is not None:
        kspace = scan.kspace.copy()
        kspace[zero_slices] = 0
        scan = scan.replace(kspace=kspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_fastmri(scan, path)


def patient_scan(folder: Path, study_uid: str | None = None) -> Path:
    identifiers = Identifiers(
        patient_name="Doe^Jane", patient_id="MRN12345", study_instance_uid=study_uid
    )
    return write_scan_of(folder / PATIENT_FILE, identifiers=identifiers)


def assert_no_secrets(text: str, what: str) -> None:
    for secret in (*SECRETS, PATIENT_FILE):
        assert secret not in text, f"{secret!r} appears in {what}: {text[:300]}"


def tar_names_and_manifest(tar_path: Path) -> tuple[list[str], str]:
    with tarfile.open(tar_path) as archive:
        names = archive.getnames()
        manifest = archive.extractfile(MANIFEST_NAME).read().decode()
    return names, manifest


# 1. A patient's name in the file name never leaves the workstation.


def test_a_patients_file_name_appears_nowhere_after_upload_and_preprocess(
    backend, tmp_path, caplog
):
    scan_file = patient_scan(tmp_path / "in")
    caplog.set_level(logging.DEBUG)
    sent = upload(backend, [scan_file], method="zerofill", options={"device": "cpu"})
    names, manifest = tar_names_and_manifest(backend.store.path_of(keys.upload(sent.scan_id)))
    assert names == [MANIFEST_NAME, "scan.h5"]
    assert_no_secrets(" ".join(names), "the tar's member names")
    assert_no_secrets(manifest, "manifest.json")
    assert json.loads(manifest)["scan_file"] == "scan.h5"
    assert run_worker(backend, once=True, stages=("preprocess",), lease_seconds=30) == 1
    record = jobs.get_record(backend, sent.job_id)
    assert record["state"] == "succeeded", record["error"]
    assert_no_secrets(" ".join(backend.store.list()), "the store's keys")
    assert_no_secrets(json.dumps(record), "the job record")
    log_lines = jobs.logs(backend, sent.job_id)
    assert log_lines, "the worker wrote no job log"
    assert_no_secrets(json.dumps(log_lines), "the job log")
    assert_no_secrets(caplog.text, "the worker's logging")


def test_a_patients_file_name_appears_nowhere_in_a_share_drop(backend, tmp_path):
    scan_file = patient_scan(tmp_path / "in")
    share = tmp_path / "share"
    share.mkdir()
    package = package_scan([scan_file], dest_dir=share)
    dropped = upload(backend, [scan_file], to_dir=share)
    assert dropped.already_uploaded and dropped.location == package.path.name
    assert [path.name for path in share.iterdir()] == [f"{package.scan_id}.tar"]
    names, manifest = tar_names_and_manifest(package.path)
    assert names == [MANIFEST_NAME, "scan.h5"]
    assert_no_secrets(" ".join(names), "the tar's member names")
    assert_no_secrets(manifest, "manifest.json")
    assert_no_secrets(dropped.location, "the share's file name")


# 2. An invalid Study Instance UID.


def test_an_invalid_study_uid_is_refused_at_upload_without_quoting_it(
    backend, tmp_path, caplog, capfd
):
    """Refused at upload rather than replaced: a replacement UID would file the series in a
    study of its own, apart from the patient's study in the PACS, and the person uploading is
    the one who can correct the header; finding out at upload beats a job that fails at its
    last stage. The UID (identifying data) is quoted nowhere: not in the error, not in a
    warning, not in a log line."""
    scan_file = write_scan_of(
        tmp_path / "in" / "knee.h5", identifiers=Identifiers(study_instance_uid=BAD_STUDY_UID)
    )
    share = tmp_path / "share"
    share.mkdir()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for destination in (None, share):
            with pytest.raises(MrictlError) as refused:
                upload(backend, [scan_file], to_dir=destination)
            message = str(refused.value)
            assert refused.value.exit_code == ExitCode.BAD_INPUT
            assert "Study Instance UID" in message and "\n" not in message
            assert "MRN12345" not in message and BAD_STUDY_UID not in message
    assert backend.store.list() == [] and list(share.iterdir()) == []
    leaked = [str(warning.message) for warning in caught] + [caplog.text, *capfd.readouterr()]
    assert not any("MRN12345" in text for text in leaked), leaked

    outcome = invoke("upload", str(scan_file))
    assert outcome.exit_code == ExitCode.BAD_INPUT
    assert outcome.stderr.count("\n") == 1 and "MRN12345" not in outcome.stderr


def test_recon_run_of_a_scan_with_an_invalid_study_uid_works_without_quoting_it(tmp_path):
    """`recon run` writes HDF5, which files nothing in a study: the UID does not matter there."""
    scan_file = write_scan_of(
        tmp_path / "knee.h5", identifiers=Identifiers(study_instance_uid=BAD_STUDY_UID)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = invoke(
            "recon", "run", str(scan_file), "--method", "zerofill", "--out", str(tmp_path / "o.h5")
        )
    assert outcome.exit_code == 0, outcome.stderr
    assert "MRN12345" not in outcome.stdout + outcome.stderr
    assert not any("MRN12345" in str(warning.message) for warning in caught)


def test_the_dicom_writer_refuses_an_invalid_study_uid_without_a_warning_quoting_it(
    tmp_path, caplog
):
    from raki.io.dicom import is_valid_uid, write_dicom_series

    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.4") and not is_valid_uid(BAD_STUDY_UID)
    assert not is_valid_uid("1.02.3") and not is_valid_uid("1." + "2" * 64)
    scan = read_fastmri(
        write_scan_of(
            tmp_path / "knee.h5", identifiers=Identifiers(study_instance_uid=BAD_STUDY_UID)
        )
    )
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InvalidScanError, match="not a valid DICOM UID") as refused:
            write_dicom_series(np.ones((1, 32, 24), np.float32), scan, tmp_path / "dicom")
    assert "MRN12345" not in str(refused.value) + caplog.text
    assert not any("MRN12345" in str(warning.message) for warning in caught)


# 3. A corrupt stored package.


def test_a_corrupt_stored_package_fails_its_job_once_and_uploading_again_repairs_it(
    backend, tmp_path
):
    scan_file = write_tiny_scan(tmp_path / "in" / "knee.h5", undersampled=True)
    first = upload(backend, [scan_file], method="zerofill")
    key = keys.upload(first.scan_id)
    stored = backend.store.path_of(key)
    corrupted = bytearray(stored.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    stored.write_bytes(bytes(corrupted))

    assert run_worker(backend, once=True, stages=("preprocess",), lease_seconds=30) == 1
    failed = backend.queue.get(first.job_id)
    assert failed.state is JobState.FAILED and failed.attempts == 1
    assert "corrupt" in failed.error

    again = upload(backend, [scan_file], method="zerofill")
    assert not again.already_uploaded and again.job_id == first.job_id
    assert backend.store.verify(key)
    assert backend.queue.get(first.job_id).state is JobState.QUEUED
    assert run_worker(backend, once=True, stages=("preprocess",), lease_seconds=30) == 1
    record = jobs.get_record(backend, first.job_id)
    assert record["state"] == "succeeded", record["error"]


# 4. A killed upload's temporary file.


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def partial_of(final: Path, pid: int, host: str | None = None) -> Path:
    """A temporary file named as process `pid` on `host` (default: this one) names its own."""
    host = host or partial_files._host_tag()
    partial = final.with_name(f".{final.name}.{host}-{pid}-0badf00d{partial_files.SUFFIX}")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"half a tar")
    return partial


def leftover_partials(final: Path) -> tuple[Path, Path, Path]:
    """A dead writer's, a live writer's, and another host's day-old temporary file of `final`."""
    dead = partial_of(final, dead_pid())
    live = partial_of(final, os.getppid())
    old = partial_of(final, 1, host="0thrhost")
    day_ago = old.stat().st_mtime - partial_files.STALE_AFTER_S - 60
    os.utime(old, (day_ago, day_ago))
    return dead, live, old


def scan_id_of_file(path: Path) -> str:
    return scan_id_of([hashlib.sha256(path.read_bytes()).hexdigest()])


def test_a_killed_uploads_partial_is_removed_when_the_store_put_succeeds(backend, tmp_path):
    scan_file = write_tiny_scan(tmp_path / "in" / "knee.h5", undersampled=True)
    final = backend.store.path_of(keys.upload(scan_id_of_file(scan_file)))
    dead, live, old = leftover_partials(final)
    sent = upload(backend, [scan_file])
    assert backend.store.path_of(sent.location) == final and final.is_file()
    assert not dead.exists() and not old.exists()
    assert live.exists()  # a live writer's file is never taken from under it


def test_a_killed_uploads_partial_is_removed_from_the_share_folder(backend, tmp_path):
    scan_file = write_tiny_scan(tmp_path / "in" / "knee.h5", undersampled=True)
    share = tmp_path / "share"
    final = share / f"{scan_id_of_file(scan_file)}.tar"
    dead, live, old = leftover_partials(final)
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        running = partial_of(final, sleeper.pid)
        try:
            upload(backend, [scan_file], to_dir=share)
            assert final.is_file() and not dead.exists() and not old.exists()
            assert live.exists() and running.exists()
        finally:
            sleeper.kill()


# 5. One rule for bad paths.

BAD_PATH_CASES = {
    "folder": (ExitCode.USAGE, "is a folder, not a file"),
    "device": (ExitCode.USAGE, "is not a regular file"),
    "fifo": (ExitCode.USAGE, "is not a regular file"),
    "missing": (ExitCode.NOT_FOUND, "no such file"),
}


def bad_path(kind: str, tmp_path: Path) -> Path:
    if kind == "folder":
        folder = tmp_path / "scans"
        folder.mkdir()
        return folder
    if kind == "device":
        return Path("/dev/zero")
    if kind == "fifo":
        fifo = tmp_path / "pipe.h5"
        os.mkfifo(fifo)  # opening it would block: the check must not open it
        return fifo
    return tmp_path / "absent.h5"


COMMANDS = {
    "scan info": lambda path, out: ("scan", "info", path),
    "upload": lambda path, out: ("upload", path),
    "recon run": lambda path, out: ("recon", "run", path, "--out", str(out / "o.h5")),
    "train": lambda path, out: ("train", path, "--out", str(out / "x.pt")),
}


@pytest.mark.parametrize("kind", BAD_PATH_CASES)
def test_every_command_gives_a_bad_path_the_same_code_and_message(kind, tmp_path):
    path = bad_path(kind, tmp_path)
    code, reason = BAD_PATH_CASES[kind]
    for command, args in COMMANDS.items():
        outcome = invoke(*args(str(path), tmp_path), "--json")
        assert outcome.exit_code == code, (command, outcome.stderr)
        assert outcome.json()["error"] == {"code": code, "message": f"{path.name}: {reason}"}
        assert outcome.stderr == f"error: {path.name}: {reason}\n", command


# 6. All-zero k-space.

ALL_ZEROS = "k-space is all zeros: nothing was measured"


def zero_scan(path: Path, *, zero_slices: slice = slice(None)) -> Path:
    return write_scan_of(path, num_slices=2, zero_slices=zero_slices)


def test_all_zero_kspace_is_refused_by_recon_run_and_train(tmp_path):
    zeros = zero_scan(tmp_path / "zeros.h5")
    for args in (
        ("recon", "run", str(zeros), "--method", "zerofill", "--out", str(tmp_path / "o.h5")),
        ("train", str(zeros), "--out", str(tmp_path / "w.pt")),
    ):
        outcome = invoke(*args, "--json")
        assert outcome.exit_code == ExitCode.BAD_INPUT, outcome.stderr
        assert outcome.json()["error"]["message"] == ALL_ZEROS
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "w.pt").exists()
    with pytest.raises(InvalidScanError, match=ALL_ZEROS):
        prepare_scan(read_fastmri(zeros), None, None)  # what the recon worker stage calls too


def test_a_fully_sampled_all_zero_scan_is_refused_before_it_is_undersampled(tmp_path):
    scan = simulate_scan(**TINY, seed=0)
    zeros = write_fastmri(scan.replace(kspace=np.zeros_like(scan.kspace)), tmp_path / "z.h5")
    outcome = invoke(
        "recon", "run", str(zeros), "--accel", "2", "--acs", "8", "--out", str(tmp_path / "o.h5")
    )
    assert outcome.exit_code == ExitCode.BAD_INPUT and ALL_ZEROS in outcome.stderr


def test_a_scan_with_one_empty_slice_still_reconstructs(tmp_path):
    partly = zero_scan(tmp_path / "partly.h5", zero_slices=slice(1, 2))
    out = tmp_path / "o.h5"
    outcome = invoke("recon", "run", str(partly), "--method", "zerofill", "--out", str(out))
    assert outcome.exit_code == 0, outcome.stderr
    assert out.is_file()


def test_all_zero_kspace_is_refused_at_upload_before_anything_is_sent(backend, tmp_path):
    zeros = zero_scan(tmp_path / "zeros.h5")
    share = tmp_path / "share"
    share.mkdir()
    for destination in (None, share):
        with pytest.raises(MrictlError, match=ALL_ZEROS) as refused:
            upload(backend, [zeros], to_dir=destination)
        assert refused.value.exit_code == ExitCode.BAD_INPUT
    assert backend.store.list() == [] and list(share.iterdir()) == []
    outcome = invoke("upload", str(zeros), "--json")
    assert outcome.exit_code == ExitCode.BAD_INPUT
    assert outcome.json()["error"]["message"] == f"zeros.h5: {ALL_ZEROS}"
    partly = zero_scan(tmp_path / "partly.h5", zero_slices=slice(0, 1))
    assert not upload(backend, [partly]).already_uploaded
