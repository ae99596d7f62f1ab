"""What only the local backend does: files under its home, SQLite, processes sharing one queue.

The behaviours every backend shares are in tests/mrictl/backends/test_contract.py.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from mrictl.backends.base import BackendError, ConflictError, JobState
from mrictl.backends.local import DATABASE_NAME, LocalBackend


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "home")


def test_home_holds_objects_the_database_and_scratch_space(backend):
    assert (backend.home / DATABASE_NAME).is_file()
    assert backend.store.root == backend.home / "objects"
    assert backend.scratch_dir == backend.home / "work"
    assert backend.scratch_dir.is_dir()


def test_a_file_in_the_way_of_the_home_is_a_backend_error(tmp_path):
    (tmp_path / "home").write_text("not a folder")
    with pytest.raises(BackendError, match="cannot be the local backend's home"):
        LocalBackend(tmp_path / "home")


def test_objects_are_files_under_their_key(backend, tmp_path):
    source = tmp_path / "data.bin"
    source.write_bytes(b"k-space" * 1000)
    backend.store.put_file("uploads/scan-0123456789abcdef.tar", source)
    path = backend.store.path_of("uploads/scan-0123456789abcdef.tar")
    assert path == backend.home / "objects" / "uploads" / "scan-0123456789abcdef.tar"
    assert path.read_bytes() == source.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_hidden_temporaries_are_never_listed_and_emptied_folders_go(backend, tmp_path):
    source = tmp_path / "x"
    source.write_bytes(b"x")
    for key in ("reconstructed/job-1/a.h5", "reconstructed/job-1/dicom/IM0001.dcm"):
        backend.store.put_file(key, source)
    # A writer's temporary file, as a killed put leaves it.
    (backend.store.root / "reconstructed" / ".b.h5.abc.partial").write_bytes(b"half")
    assert backend.store.list() == [
        "reconstructed/job-1/a.h5",
        "reconstructed/job-1/dicom/IM0001.dcm",
    ]
    backend.store.delete("reconstructed/job-1/dicom/IM0001.dcm")
    backend.store.delete("reconstructed/job-1/a.h5")
    assert not (backend.store.root / "reconstructed" / "job-1").exists()
    assert (backend.store.root / "reconstructed").is_dir()  # the area stays


def test_a_file_written_but_not_recorded_is_recorded_when_read(backend, tmp_path):
    # A put killed between its rename and its database record leaves this behind.
    path = backend.store.path_of("preprocessed/scan-0123456789abcdef.h5")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"canonical")
    info = backend.store.head("preprocessed/scan-0123456789abcdef.h5")
    assert (info.size, info.metadata) == (9, {})
    assert backend.store.verify("preprocessed/scan-0123456789abcdef.h5")
    copy = backend.store.get_file("preprocessed/scan-0123456789abcdef.h5", tmp_path / "c.h5")
    assert copy.sha256 == info.sha256 and (tmp_path / "c.h5").read_bytes() == b"canonical"


def test_a_home_from_before_object_metadata_gains_the_column(tmp_path):
    home = tmp_path / "home"
    (home / "objects" / "uploads").mkdir(parents=True)
    (home / "objects" / "uploads" / "s.tar").write_bytes(b"old")
    with sqlite3.connect(home / DATABASE_NAME) as connection:
        connection.execute(
            "CREATE TABLE objects (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL, "
            "size INTEGER NOT NULL, stored_at REAL NOT NULL)"
        )
        connection.execute(
            "INSERT INTO objects VALUES ('uploads/s.tar', ?, 3, 0.0)",
            ("0" * 64,),  # a recorded checksum that head must return as it is
        )
    connection.close()
    backend = LocalBackend(home)
    assert backend.store.head("uploads/s.tar").metadata == {}
    assert backend.store.head("uploads/s.tar").sha256 == "0" * 64
    source = tmp_path / "new"
    source.write_bytes(b"new")
    backend.store.put_file("uploads/t.tar", source, metadata={"format": "tar"})
    assert LocalBackend(home).store.head("uploads/t.tar").metadata == {"format": "tar"}
    with sqlite3.connect(home / DATABASE_NAME) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(objects)")]
    connection.close()
    assert columns.count("metadata") == 1


def _claim_all(home: str, worker_id: str, results) -> None:
    backend = LocalBackend(Path(home))
    mine = []
    while (job := backend.queue.claim("recon", worker_id, 60)) is not None:
        mine.append(job.job_id)
        backend.queue.complete(job, {})
    results.put(mine)


def test_two_processes_never_claim_the_same_job(backend):
    ids = [backend.queue.enqueue("recon", {"i": i}) for i in range(200)]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_claim_all, args=(str(backend.home), f"p{n}", results))
        for n in range(2)
    ]
    for worker in workers:
        worker.start()
    claimed = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(claimed[0] + claimed[1]) == sorted(ids)
    assert not set(claimed[0]) & set(claimed[1])
    counts = Counter(claim.job_id for claim in backend.queue.claims())
    assert set(counts.values()) == {1} and len(counts) == 200
    assert {job.state for job in backend.queue.list()} == {JobState.SUCCEEDED}


def _race_for(home: str, job_id: str, worker_id: str, start, results) -> None:
    """Wait for the start signal, then try to take `job_id`: pull by stage, then push by id."""
    backend = LocalBackend(Path(home))
    start.wait(timeout=60)
    pulled = backend.queue.claim("recon", worker_id, 60)
    try:
        pushed = backend.queue.claim_job(job_id, worker_id, 60).worker_id
    except ConflictError:
        pushed = None
    results.put((worker_id, pulled.job_id if pulled else None, pushed))


def test_processes_racing_for_one_job_one_wins(backend):
    # The first job is pulled by stage; the second, of another stage, is pushed by id.
    pulled_id = backend.queue.enqueue("recon", {})
    pushed_id = backend.queue.enqueue("train", {})
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    racers = [
        context.Process(
            target=_race_for, args=(str(backend.home), pushed_id, f"p{n}", start, results)
        )
        for n in range(3)
    ]
    for racer in racers:
        racer.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
    assert Counter(pulled for _, pulled, _ in outcomes) == {pulled_id: 1, None: 2}
    pushers = [worker for worker, _, pushed in outcomes if pushed == worker]
    assert len(pushers) == 1 and [p for _, _, p in outcomes].count(None) == 2
    assert [c.worker_id for c in backend.queue.claims(pushed_id)] == pushers
    assert len(backend.queue.claims(pulled_id)) == 1
