"""The preprocess stage, run by a real worker on real uploads, good and malicious."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mrictl.backends.local import LocalBackend
from mrictl.pipeline import jobs
from mrictl.pipeline.package import MANIFEST_NAME
from mrictl.pipeline.requests import enqueue_preprocess, recon_request
from mrictl.pipeline.upload import upload
from mrictl.worker import run_worker
from raki.io.fastmri import read_fastmri
from tests.mrictl.jobs_helpers import (
    manifest_for,
    regular,
    special,
    tar_with_manifest,
    tree,
    write_tar,
    write_tiny_scan,
)

PAYLOAD = {"scan.h5": b"\x89HDF\r\n\x1a\n but not really a scan" * 16}


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "home")


def test_upload_becomes_canonical_hdf5_and_a_recon_job(backend, tmp_path):
    scan_file = write_tiny_scan(tmp_path / "in" / "brain.h5", undersampled=True)
    sent = upload(backend, [scan_file], method="zerofill", options={"device": "cpu"})
    assert run_worker(backend, once=True, stages=("preprocess",), lease_seconds=30) == 1
    record = jobs.get_record(backend, sent.job_id)
    assert record["state"] == "succeeded", record["error"]
    key = f"preprocessed/{sent.scan_id}.h5"
    assert record["outputs"] == [key]
    canonical = read_fastmri(backend.store.path_of(key))
    original = read_fastmri(scan_file)
    np.testing.assert_array_equal(canonical.kspace, original.kspace)
    np.testing.assert_array_equal(canonical.sampled, original.sampled)
    recon = backend.queue.get(record["next_job_id"])
    assert recon.stage == "recon" and recon.parent_id == sent.job_id
    assert recon.payload == {
        "scan_id": sent.scan_id,
        "method": "zerofill",
        "options": {"device": "cpu"},
    }
    assert list(backend.scratch_dir.iterdir()) == []


def test_preprocess_of_a_known_scan_reuses_it(backend, tmp_path):
    scan_file = write_tiny_scan(tmp_path / "in" / "brain.h5", undersampled=True)
    first = upload(backend, [scan_file], method="zerofill")
    run_worker(backend, once=True, stages=("preprocess",), lease_seconds=30)
    stored = backend.store.path_of(f"preprocessed/{first.scan_id}.h5").stat().st_mtime_ns
    again = enqueue_preprocess(backend, first.scan_id, recon_request("zerofill", None))
    run_worker(backend, once=True, stages=("preprocess",), lease_seconds=30)
    assert jobs.get_record(backend, again)["state"] == "succeeded"
    assert backend.store.path_of(f"preprocessed/{first.scan_id}.h5").stat().st_mtime_ns == stored
    messages = [line["message"] for line in jobs.logs(backend, again, follow_chain=False)]
    assert any("already preprocessed" in message for message in messages)


def _unknown_format(path: Path) -> Path:
    return tar_with_manifest(path, {"notes.txt": b"just some text, not k-space\n" * 10})


def _wrong_scan_id(path: Path) -> Path:
    # A valid package, stored under another scan's id.
    return tar_with_manifest(path, PAYLOAD)


def _truncated(path: Path) -> Path:
    """Cut inside the scan member's data (manifest and headers come first)."""
    path.write_bytes(tar_with_manifest(path, PAYLOAD).read_bytes()[:1700])
    return path


MALICIOUS = {
    "path traversal": (
        lambda p: tar_with_manifest(p, PAYLOAD, regular("../escaped", b"evil")),
        "member 3 escapes the package",
    ),
    "absolute path": (
        lambda p: tar_with_manifest(p, PAYLOAD, regular("/tmp/mrictl-abs-escape", b"evil")),
        "has an absolute path",
    ),
    "symlink": (
        lambda p: tar_with_manifest(p, PAYLOAD, special("link", tarfile.SYMTYPE, "../../..")),
        "is a symbolic link",
    ),
    "hard link": (
        lambda p: tar_with_manifest(p, PAYLOAD, special("hard", tarfile.LNKTYPE, "/etc/passwd")),
        "is a hard link",
    ),
    "device": (
        lambda p: tar_with_manifest(p, PAYLOAD, special("dev", tarfile.BLKTYPE)),
        "is a device file",
    ),
    "fifo": (lambda p: tar_with_manifest(p, PAYLOAD, special("fifo", tarfile.FIFOTYPE)), "FIFO"),
    "truncated": (_truncated, "truncated or not an uncompressed tar"),
    "checksum mismatch": (
        lambda p: write_tar(
            p,
            [
                regular(MANIFEST_NAME, manifest_for(PAYLOAD)),
                regular("scan.h5", bytes(len(PAYLOAD["scan.h5"]))),
            ],
        ),
        "member 2 does not match its manifest checksum",
    ),
    "missing manifest": (
        lambda p: write_tar(p, [regular("scan.h5", PAYLOAD["scan.h5"])]),
        "the first member is not manifest.json",
    ),
    "unknown format": (_unknown_format, "file 1 (.txt): unknown format"),
    "wrong scan id": (_wrong_scan_id, "holds scan scan-"),
}


def claimed_scan_id(tar_path: Path) -> str:
    """The id the package's manifest claims, so that only the intended defect is exercised."""
    try:
        with tarfile.open(tar_path) as archive:
            return json.loads(archive.extractfile(MANIFEST_NAME).read())["scan_id"]
    except (tarfile.TarError, KeyError):
        return "scan-00000000000000bb"


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_bad_upload_fails_cleanly_and_writes_nothing_outside_its_area(case, backend, tmp_path):
    build, message = MALICIOUS[case]
    staging = tmp_path / "staging"
    staging.mkdir()
    tar_path = build(staging / "upload.tar")
    scan_id = "scan-00000000000000aa" if case == "wrong scan id" else claimed_scan_id(tar_path)
    backend.store.put_file(f"uploads/{scan_id}.tar", tar_path)
    job_id = enqueue_preprocess(backend, scan_id, recon_request("zerofill", None))
    before = tree(tmp_path) - {"home/mrictl.sqlite3-wal", "home/mrictl.sqlite3-shm"}
    assert run_worker(backend, once=True, lease_seconds=30) == 1
    record = jobs.get_record(backend, job_id)
    assert record["state"] == "failed" and record["attempts"] == 1  # refused, not retried
    assert message in record["error"] and "\n" not in record["error"]
    assert "notes" not in record["error"] and "escaped" not in record["error"]
    assert str(tmp_path) not in record["error"]
    assert record["next_job_id"] is None and backend.queue.list(stage="recon") == []
    after = tree(tmp_path) - {"home/mrictl.sqlite3-wal", "home/mrictl.sqlite3-shm"}
    assert after == before  # no output, no leftover work folder, nothing escaped
    assert not Path("/tmp/mrictl-abs-escape").exists()
    assert backend.store.list("preprocessed/") == []
