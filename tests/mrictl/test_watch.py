"""`mrictl watch`: a scan dropped into the watched folder ends as a DICOM series in a storage
SCP with no other command; restarts neither repeat nor lose a scan; a file still being written
waits; SIGTERM stops it cleanly. The SCP is pynetdicom's, on 127.0.0.1; the backend is local."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from mrictl.backends.local import LocalBackend
from mrictl.cli.watch import log_line
from mrictl.errors import ExitCode
from mrictl.watch import (
    DONE,
    FAILED,
    UPLOADING,
    WAITING,
    Watcher,
    WatchOptions,
    WatchState,
    default_state_path,
    entry_key,
    list_entries,
    state_lock,
)
from tests.mrictl.cli_helpers import invoke
from tests.mrictl.dicom_nodes import SCP_AET, StorageScp
from tests.mrictl.jobs_helpers import RETROSPECTIVE, write_tiny_scan

PATIENT_NAME = "Doe^Jane"  # in the scan's file name: it must reach no log line and no event
RECON_FLAGS = [
    "--recon", "--method", "zerofill",
    "--accel", str(RETROSPECTIVE["acceleration"]), "--acs", str(RETROSPECTIVE["acs_lines"]),
]  # fmt: skip


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("MRICTL_HOME", str(home))
    monkeypatch.setenv("MRICTL_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.delenv("MRICTL_METHOD", raising=False)
    return home


@pytest.fixture
def export(tmp_path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    return folder


def drop_scan(export: Path, name: str = f"{PATIENT_NAME}.h5", seed: int = 0) -> Path:
    """As a scanner exports: written under a temporary name, then renamed."""
    written = write_tiny_scan(export / f".{name}.partial", seed=seed)
    return written.rename(export / name)


def watch_command(export: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "mrictl", "watch", str(export), *flags]


def run_watch(export: Path, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        watch_command(export, *flags),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )


def events_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def jobs_and_uploads(home: Path) -> tuple[list, list[str]]:
    backend = LocalBackend(home)
    return backend.queue.list(), backend.store.list("uploads/")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_dropped_scan_reaches_the_pacs_with_no_other_command(tmp_path, home, export):
    with StorageScp(tmp_path / "pacs") as scp:
        flags = [
            *RECON_FLAGS, "--to-pacs", scp.address, "--called-aet", SCP_AET,
            "--quiet-seconds", "0.5", "--interval", "0.2", "--json",
        ]  # fmt: skip
        watcher = subprocess.Popen(
            watch_command(export, *flags),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        try:
            drop_scan(export)
            wait_for(lambda: sum(scp.received.values()) >= 1, 90, "the series at the SCP")
            state = default_state_path(home, export)
            wait_for(lambda: '"state": "done"' in state.read_text(), 30, "the scan done")
        finally:
            watcher.send_signal(signal.SIGTERM)  # a clean stop: exit 0
            stdout, stderr = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, stderr
    events = events_of(stdout)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "started" and kinds[-1] == "stopped"
    for kind in ("uploaded", "job-succeeded", "delivered", "done"):
        assert kinds.count(kind) == 1, kinds
    delivered = next(event for event in events if event["event"] == "delivered")
    assert delivered["accepted"] == sum(scp.received.values()) >= 1
    assert delivered["scan_id"].startswith("scan-") and delivered["job_id"].startswith("job-")
    # Patient data stays out of the log and the events: scan and job ids only.
    assert "Doe" not in stdout + stderr and str(export) not in stdout + stderr
    # One log line per event (the worker processes it started log their own lines too).
    assert len(re.findall(r"^\d{4}-\d\d-\d\dT.*Z ", stderr, re.MULTILINE)) == len(events)
    jobs, uploads = jobs_and_uploads(home)
    assert sorted(job.stage for job in jobs) == ["preprocess", "recon"] and len(uploads) == 1
    assert set(scp.received.values()) == {1}
    # What arrived is the job's own series, whole.
    fetched = invoke("fetch", delivered["job_id"], "--out", str(tmp_path / "got"), "--json")
    series = sorted((tmp_path / "got" / "dicom").glob("*.dcm"))
    assert fetched.exit_code == 0 and len(series) == len(scp.received)
    for path in series:
        sent = pydicom.dcmread(path)
        arrived = pydicom.dcmread(tmp_path / "pacs" / f"{sent.SOPInstanceUID}.dcm")
        assert arrived.PixelData == sent.PixelData
        assert arrived.SeriesInstanceUID == sent.SeriesInstanceUID


HOOKED_WATCH = """
import sys, time
from pathlib import Path
import mrictl.pipeline.upload as upload

point, flag = sys.argv[1], Path(sys.argv[2])

def hang():
    flag.write_text(point)
    time.sleep(600)

if point == "packaging":  # killed before anything is stored
    def write_package(*args, **kwargs):
        hang()
    upload.write_package = write_package
else:  # killed after the package is stored and its job queued, before the state says so
    queue = upload.enqueue_preprocess
    def enqueue_preprocess(*args, **kwargs):
        job_id = queue(*args, **kwargs)
        hang()
        return job_id
    upload.enqueue_preprocess = enqueue_preprocess

from mrictl.cli.main import main
sys.argv = ["mrictl", *sys.argv[3:]]
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["packaging", "queued"])
def test_a_restart_mid_upload_neither_duplicates_nor_loses_the_scan(tmp_path, home, export, point):
    drop_scan(export)
    flag = tmp_path / "in-upload"
    arguments = [
        "watch",
        str(export),
        *RECON_FLAGS,
        "--once",
        "--quiet-seconds",
        "0",
        "--interval",
        "0.2",
    ]
    hooked = subprocess.Popen(
        [sys.executable, "-c", HOOKED_WATCH, point, str(flag), *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(flag.exists, 60, "the upload to start")
    finally:
        hooked.kill()  # as a power cut would: no chance to tidy up
        hooked.wait(timeout=30)
    state_path = default_state_path(home, export)
    record = WatchState.load(state_path).records[entry_key(f"{PATIENT_NAME}.h5")]
    assert record.state == UPLOADING  # recorded before the upload began
    jobs, uploads = jobs_and_uploads(home)
    assert len(jobs) == len(uploads) == (0 if point == "packaging" else 1)

    with StorageScp(tmp_path / "pacs") as scp:
        again = run_watch(
            export, *RECON_FLAGS, "--once", "--quiet-seconds", "0", "--interval", "0.2", "--json",
            "--to-pacs", scp.address, "--called-aet", SCP_AET,
        )  # fmt: skip
    assert again.returncode == 0, again.stderr
    uploaded = [e for e in events_of(again.stdout) if e["event"] == "uploaded"]
    assert len(uploaded) == 1 and uploaded[0]["already_uploaded"] == (point == "queued")
    jobs, uploads = jobs_and_uploads(home)
    assert sorted(job.stage for job in jobs) == ["preprocess", "recon"] and len(uploads) == 1
    assert scp.received and set(scp.received.values()) == {1}
    assert WatchState.load(state_path).records[record_key(export)].state == DONE
    # A third run finds nothing new to do.
    third = run_watch(
        export, *RECON_FLAGS, "--once", "--quiet-seconds", "0", "--interval", "0.2", "--json"
    )
    assert third.returncode == 0, third.stderr
    assert [e["event"] for e in events_of(third.stdout)] == ["started", "stopped"]
    assert len(jobs_and_uploads(home)[0]) == 2


def record_key(export: Path) -> str:
    (entry,) = list_entries(export)
    return entry


def test_a_file_still_growing_is_not_picked_up_until_quiet(tmp_path, home, export):
    source = write_tiny_scan(tmp_path / "whole.h5").read_bytes()
    quiet = 1.0
    events: list[dict] = []
    stop = threading.Event()
    watcher = Watcher(
        LocalBackend(home),
        export,
        WatchOptions(quiet_seconds=quiet, interval=0.1),
        WatchState(tmp_path / "state.json"),
        home=home,
        on_event=lambda event: events.append({**event, "seen_at": time.time()}),
        stop=stop,
    )
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        growing = export / "scan.h5"
        chunks = 6
        step = -(-len(source) // chunks)
        with open(growing, "wb") as handle:
            for start in range(0, len(source), step):
                handle.write(source[start : start + step])
                handle.flush()
                last_write = time.time()
                time.sleep(0.3)  # pauses shorter than the quiet period
        wait_for(lambda: any(e["event"] == "uploaded" for e in events), 20, "the upload")
    finally:
        stop.set()
        thread.join(timeout=30)
    uploaded = [e for e in events if e["event"] == "uploaded"]
    assert len(uploaded) == 1 and not [e for e in events if e["event"] == "upload-failed"]
    assert uploaded[0]["seen_at"] - last_write >= quiet - 0.05
    assert uploaded[0]["state"] == DONE and uploaded[0]["job_id"] is None  # no --recon


def test_which_entries_are_scans_and_when_they_are_complete(tmp_path, home, export):
    drop_scan(export, "a.h5")
    (export / ".hidden.h5").write_bytes(b"x")
    (export / "b.h5.partial").write_bytes(b"x")
    (export / "c.tmp").write_bytes(b"x")
    (export / "d~").write_bytes(b"x")
    (export / "empty").mkdir()
    exam = export / "exam"
    exam.mkdir()
    write_tiny_scan(exam / "scan.h5", seed=1)
    (exam / "raw.dat.part").write_bytes(b"x")  # still being written into the folder
    entries = list_entries(export)
    assert set(entries) == {entry_key("a.h5"), entry_key("exam")}
    assert entries[entry_key("exam")].writing and not entries[entry_key("exam")].marked
    (export / "exam.done").write_text("")  # the scanner says the folder is complete
    assert list_entries(export)[entry_key("exam")].marked
    events: list[dict] = []
    watcher = Watcher(
        LocalBackend(home),
        export,
        WatchOptions(quiet_seconds=3600, interval=0.1, once=True),
        WatchState(tmp_path / "state.json"),
        home=home,
        on_event=events.append,
    )
    assert watcher.run() == ExitCode.OK
    uploaded = [e for e in events if e["event"] == "uploaded"]
    assert [e["entry"] for e in uploaded] == [entry_key("exam")]  # a.h5 is not quiet yet


def test_a_scan_that_cannot_be_read_fails_once_without_its_name(tmp_path, home, export):
    (export / f"{PATIENT_NAME}.h5").write_text("not a scan")
    first = run_watch(export, "--once", "--quiet-seconds", "0", "--interval", "0.2", "--json")
    assert first.returncode == ExitCode.BAD_INPUT, first.stderr
    (failed,) = [e for e in events_of(first.stdout) if e["event"] == "upload-failed"]
    assert failed["retry"] is False and failed["exit_code"] == ExitCode.BAD_INPUT
    assert "<file>" in failed["error"] and "Doe" not in first.stdout + first.stderr
    records = WatchState.load(default_state_path(home, export)).records
    assert [record.state for record in records.values()] == [FAILED]
    second = run_watch(export, "--once", "--quiet-seconds", "0", "--interval", "0.2", "--json")
    assert second.returncode == 0  # not tried again until the file changes
    assert [e["event"] for e in events_of(second.stdout)] == ["started", "stopped"]


def test_watch_refuses_what_it_cannot_do(tmp_path, home, export):
    alone = invoke("watch", str(export), "--to-pacs", "127.0.0.1:104", "--called-aet", "P")
    assert alone.exit_code == ExitCode.USAGE and "--recon" in alone.stderr
    accel = invoke("watch", str(export), "--accel", "2", "--once")
    assert accel.exit_code == ExitCode.USAGE
    waiting = invoke("watch", str(export), "--job-timeout", "60", "--once")
    assert waiting.exit_code == ExitCode.USAGE
    assert "--job-timeout goes with --recon" in waiting.output
    missing = invoke("watch", str(tmp_path / "nowhere"), "--once")
    assert missing.exit_code == ExitCode.NOT_FOUND
    state = tmp_path / "state.json"
    with state_lock(state):
        busy = invoke("watch", str(export), "--state", str(state), "--once")
    assert busy.exit_code == ExitCode.CONFLICT and "another mrictl watch" in busy.stderr
    state.write_text("{half a state")
    damaged = invoke("watch", str(export), "--state", str(state), "--once")
    assert damaged.exit_code == ExitCode.USAGE and "damaged" in damaged.stderr


def test_a_killed_writer_of_the_state_leaves_the_last_whole_state(tmp_path, home, export):
    drop_scan(export, "a.h5")
    state_path = tmp_path / "state.json"
    first = run_watch(
        export, "--once", "--quiet-seconds", "0", "--interval", "0.2", "--state", str(state_path)
    )
    assert first.returncode == 0, first.stderr
    whole = state_path.read_text()
    # A writer killed mid-write leaves only its hidden temporary file, never a half state.
    leftover = state_path.with_name(f".{state_path.name}.0badc0de-99999999-0000aaaa.partial")
    leftover.write_text('{"version": 1, "scans": {"entry-')
    again = run_watch(
        export, "--once", "--quiet-seconds", "0", "--interval", "0.2", "--state", str(state_path)
    )
    assert again.returncode == 0, again.stderr
    assert state_path.read_text() == whole
    assert len(jobs_and_uploads(home)[1]) == 1
    shutil.rmtree(export)


def test_once_gives_up_on_a_job_past_job_timeout_and_a_restart_delivers_it_once(
    tmp_path, home, export
):
    drop_scan(export)
    quick = ["--once", "--quiet-seconds", "0", "--interval", "0.2", "--json"]
    started = time.monotonic()
    # No worker: the job stays queued, as on aws when its Batch job ended without running it.
    first = run_watch(export, *RECON_FLAGS, *quick, "--workers", "0", "--job-timeout", "1")
    elapsed = time.monotonic() - started
    assert first.returncode == ExitCode.TIMEOUT, first.stderr
    assert elapsed < 30  # the timeout plus start-up (about 1 + 3 s on a loaded 2-core host)
    events = events_of(first.stdout)
    (uploaded,) = [e for e in events if e["event"] == "uploaded"]
    (timed_out,) = [e for e in events if e["event"] == "job-timed-out"]
    assert timed_out["job_id"] == timed_out["final_job_id"] == uploaded["job_id"]
    assert timed_out["job_state"] == "queued" and timed_out["state"] == WAITING
    assert timed_out["waited_s"] >= 1 and timed_out["job_timeout_s"] == 1
    assert "waiting_reason" in timed_out  # None: the local backend has nothing to say
    assert "job-timed-out" in first.stderr and "Doe" not in first.stdout + first.stderr
    state_path = default_state_path(home, export)
    (record,) = WatchState.load(state_path).records.values()
    assert (record.state, record.job_id) == (WAITING, uploaded["job_id"])  # still awaited

    with StorageScp(tmp_path / "pacs") as scp:
        again = run_watch(
            export, *RECON_FLAGS, *quick, "--to-pacs", scp.address, "--called-aet", SCP_AET,
        )  # fmt: skip
    assert again.returncode == 0, again.stderr
    kinds = [e["event"] for e in events_of(again.stdout)]
    assert kinds == ["started", "job-succeeded", "delivered", "done", "stopped"], kinds
    assert scp.received and set(scp.received.values()) == {1}  # each instance once
    jobs, uploads = jobs_and_uploads(home)
    assert sorted(job.stage for job in jobs) == ["preprocess", "recon"] and len(uploads) == 1
    assert "Doe" not in again.stdout + again.stderr


def awaiting_watcher(tmp_path, home, export, events: list[dict], **options) -> Watcher:
    """A watcher with --recon and no worker, so that its jobs stay queued."""
    settings = dict(
        quiet_seconds=0,
        interval=0.05,
        recon=True,
        method="zerofill",
        recon_options=RETROSPECTIVE,
        workers=0,
        waiting_first_report_seconds=0.2,
        waiting_report_seconds=0.5,
    )
    return Watcher(
        LocalBackend(home),
        export,
        WatchOptions(**{**settings, **options}),
        WatchState(tmp_path / "state.json"),
        home=home,
        on_event=events.append,
    )


def test_a_job_awaited_a_while_is_reported_with_its_waiting_reason(tmp_path, home, export):
    drop_scan(export)
    events: list[dict] = []
    watcher = awaiting_watcher(tmp_path, home, export, events, once=True, job_timeout=1.2)
    assert watcher.run() == ExitCode.TIMEOUT
    kinds = [e["event"] for e in events]
    waiting = [e for e in events if e["event"] == "job-waiting"]
    # After the first report, only every waiting_report_seconds while nothing changes.
    assert 2 <= len(waiting) <= 3, kinds
    assert kinds[-2:] == ["job-timed-out", "stopped"]
    job_id = waiting[0]["job_id"]
    for event in waiting:
        assert (event["final_job_id"], event["job_state"]) == (job_id, "queued")
        assert event["waiting_reason"] is None and 0.2 <= event["waited_s"] < 1.2
    assert "waiting_reason" not in log_line(waiting[0])  # nothing to say: not said
    assert log_line(waiting[0]).split()[1:3] == [waiting[0]["scan_id"], "job-waiting"]


def test_the_foreground_loop_goes_on_with_other_scans_after_a_job_timeout(tmp_path, home, export):
    drop_scan(export, "a.h5")
    events: list[dict] = []
    watcher = awaiting_watcher(tmp_path, home, export, events, job_timeout=0.3)
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        wait_for(lambda: any(e["event"] == "job-timed-out" for e in events), 20, "the timeout")
        drop_scan(export, "b.h5", seed=1)
        wait_for(lambda: sum(e["event"] == "uploaded" for e in events) == 2, 20, "scan b")
        wait_for(lambda: sum(e["event"] == "job-waiting" for e in events) >= 2, 20, "reports")
    finally:
        watcher.stop.set()
        thread.join(timeout=30)
    timed_out = [e for e in events if e["event"] == "job-timed-out"]
    assert len({e["entry"] for e in timed_out}) == len(timed_out)  # once per scan and run
    assert {record.state for record in watcher.state.records.values()} == {WAITING}
