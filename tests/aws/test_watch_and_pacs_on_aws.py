"""`mrictl watch` and `mrictl fetch --to-pacs` with `--backend aws`, on the stacks `mrictl
provision` creates in a moto server: a scan dropped into the export folder is uploaded once
(one raw object, one job), a watcher stopped and restarted with the same state file uploads
nothing again and carries the scan on when the cloud has run its jobs (the preprocess worker
and the Batch job's own command, run here as in test_data_path.py: moto's Batch runs no
container), and the series arrives whole at a pynetdicom storage SCP on 127.0.0.1; a further
pass does nothing. On aws, watch starts no worker of its own (`--workers` defaults to 0): it
waits for the cloud's jobs, and `--once` returns when every scan it carries is done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from raki.io.fastmri import write_fastmri
from raki.phantom import simulate_scan
from tests.aws.conftest import Cloud
from tests.mrictl.dicom_nodes import SCP_AET, StorageScp

pytestmark = [pytest.mark.usefixtures("on_the_cloud"), pytest.mark.slow]

PATIENT = "Doe^Jane"  # in the exported file's name: it must reach no event and no log line
SLICES = 3  # one DICOM instance per slice
CALLING_AET = "MRICTL-WATCH"
RECON_FLAGS = ("--recon", "--method", "grappa", "--accel", "2", "--acs", "8")


class CallerRecordingScp(StorageScp):
    """The test suite's storage SCP, also noting the calling AE title of each C-STORE."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, require_called_aet=True)
        self.callers: set[str] = set()

    def _on_store(self, event) -> int:
        self.callers.add(str(event.assoc.requestor.ae_title).strip())
        return super()._on_store(event)


class WatchProcess:
    """`mrictl watch ... --json` as its own process (as an operator runs it), its event lines
    read as they come."""

    def __init__(self, arguments: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mrictl", "watch", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._lines = threading.Thread(target=self._read_events, daemon=True)
        self._errors = threading.Thread(target=self._read_stderr, daemon=True)
        self._lines.start()
        self._errors.start()

    def _read_events(self) -> None:
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def _read_stderr(self) -> None:
        self.stderr = self.process.stderr.read()

    def saw(self, event: str) -> bool:
        return any(found["event"] == event for found in self.events)

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._lines.join(timeout=10)
        self._errors.join(timeout=10)
        return code

    def kinds(self) -> list[str]:
        return [event["event"] for event in self.events]

    def stdout(self) -> str:
        return "\n".join(json.dumps(event) for event in self.events)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, watcher: WatchProcess
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if watcher.process.poll() is not None:
            watcher.finish(10)
            raise AssertionError(f"watch exited {watcher.process.returncode}: {watcher.stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {watcher.kinds()}")
        time.sleep(0.05)


def jobs_of(cloud: Cloud) -> list[dict[str, Any]]:
    listed = cloud.cli("recon", "status")
    assert listed.exit_code == 0, listed.stderr
    return listed.json()["jobs"]


def uploads_of(cloud: Cloud) -> list[str]:
    listed = cloud.client("s3").list_objects_v2(
        Bucket=cloud.outputs["RawBucketName"], Prefix="uploads/"
    )
    return [item["Key"] for item in listed.get("Contents", [])]


def assert_no_patient_data(watcher: WatchProcess, export: Path) -> None:
    said = watcher.stdout() + watcher.stderr
    assert "Doe" not in said and str(export) not in said


@dataclass(frozen=True)
class Watched:
    """What the module fixture did: the passes' processes and what each left behind."""

    export: Path
    state: Path
    fetch_to: Path
    pacs: Path  # where the SCP saved what it accepted
    scp: CallerRecordingScp
    first: WatchProcess  # uploaded, then stopped by SIGTERM while it waited for the job
    after_first: tuple[list[dict[str, Any]], list[str]]  # the jobs and raw objects then
    messages_after_first: int
    restarted: WatchProcess  # the same state file: carried the scan on to the SCP
    jobs_done: int  # by the one `worker run --stage preprocess --once`


@pytest.fixture(scope="module")
def watched(cloud: Cloud, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    root = tmp_path_factory.mktemp("watch")
    export = root / "export"
    export.mkdir()
    state = root / "state" / "watch.json"
    fetch_to = root / "fetched"
    scan = simulate_scan(matrix=(32, 24), num_coils=4, num_slices=SLICES, seed=3)
    written = write_fastmri(scan, export / f".{PATIENT}.h5.partial")  # as a scanner exports
    written.rename(export / f"{PATIENT}.h5")
    with CallerRecordingScp(root / "pacs") as scp:
        arguments = [
            str(export), *RECON_FLAGS, "--once", "--quiet-seconds", "0", "--interval", "0.2",
            "--state", str(state), "--fetch-to", str(fetch_to),
            "--to-pacs", scp.address, "--aet", CALLING_AET, "--called-aet", SCP_AET, "--json",
        ]  # fmt: skip
        first = WatchProcess(arguments)
        try:
            wait_for(lambda: first.saw("uploaded"), 60, "the upload", first)
            time.sleep(0.5)  # a few more polls of the queued job: nothing more may happen
        finally:
            first.process.send_signal(signal.SIGTERM)  # a clean stop, mid-wait
        assert first.finish(60) == 0, first.stderr
        after_first = (jobs_of(cloud), uploads_of(cloud))
        messages = cloud.messages("PreprocessQueueUrl")

        restarted = WatchProcess(arguments)
        try:
            wait_for(lambda: restarted.saw("started"), 30, "the restart", restarted)
            # What the cloud does meanwhile: the preprocess service takes the upload's job and
            # submits the recon job to Batch, whose container runs the job definition's command.
            pulled = cloud.cli("worker", "run", "--stage", "preprocess", "--once")
            assert pulled.exit_code == 0, pulled.stderr
            recon = [job for job in jobs_of(cloud) if job["stage"] == "recon"]
            assert len(recon) == 1 and recon[0]["batch_job_id"], recon
            assert restarted.process.poll() is None  # --once waits for the cloud's job
            container = cloud.run_container(recon[0]["batch_job_id"], root / "container")
            assert container.returncode == 0, container.stderr
            code = restarted.finish(120)  # --once: done when the scan is delivered
        finally:
            if restarted.process.poll() is None:
                restarted.process.kill()
                restarted.finish(30)
        assert code == 0, restarted.stderr
        yield Watched(
            export,
            state,
            fetch_to,
            root / "pacs",
            scp,
            first,
            after_first,
            messages,
            restarted,
            pulled.json()["jobs_done"],
        )


def test_a_dropped_scan_is_uploaded_once_and_a_restart_does_not_upload_it_again(cloud, watched):
    first, restarted = watched.first, watched.restarted
    assert first.kinds() == ["started", "uploaded", "stopped"], first.stderr
    uploaded = first.events[1]
    assert uploaded["scan_id"].startswith("scan-") and uploaded["job_id"].startswith("job-")
    assert uploaded["already_uploaded"] is False and uploaded["entry"].startswith("entry-")
    jobs, uploads = watched.after_first
    assert uploads == [f"uploads/{uploaded['scan_id']}.tar"]
    assert [(job["job_id"], job["stage"]) for job in jobs] == [(uploaded["job_id"], "preprocess")]
    # The CLI's message for the job, S3's event for the object (and S3's s3:TestEvent): one job.
    assert watched.messages_after_first == 3
    assert watched.jobs_done == 1

    # The restart, from the same state file: no second upload, the job followed to the end.
    kinds = restarted.kinds()
    assert kinds == ["started", "job-succeeded", "fetched", "delivered", "done", "stopped"]
    assert {e["scan_id"] for e in restarted.events if "scan_id" in e} == {uploaded["scan_id"]}
    assert uploads_of(cloud) == uploads
    after = jobs_of(cloud)
    assert sorted(job["stage"] for job in after) == ["preprocess", "recon"]
    assert all(job["state"] == "succeeded" for job in after), after
    for watcher in (first, restarted):
        assert_no_patient_data(watcher, watched.export)
    assert "Doe" not in watched.state.read_text() + json.dumps(after) + " ".join(uploads)


def test_every_instance_of_the_series_arrives_whole_at_the_scp(cloud, watched):
    [recon] = [job for job in jobs_of(cloud) if job["stage"] == "recon"]
    dicom_outputs = [key for key in recon["outputs"] if "/dicom/" in key and key.endswith(".dcm")]
    assert len(dicom_outputs) == SLICES
    delivered = next(e for e in watched.restarted.events if e["event"] == "delivered")
    assert (delivered["accepted"], delivered["already_accepted"]) == (SLICES, 0)
    assert delivered["refused"] == delivered["unsent"] == 0
    assert sorted(watched.scp.received.values()) == [1] * SLICES  # each instance once
    assert watched.scp.callers == {CALLING_AET}

    fetched = sorted((watched.fetch_to / delivered["scan_id"] / "dicom").glob("*.dcm"))
    arrived = sorted(watched.pacs.glob("*.dcm"))
    assert len(fetched) == len(arrived) == SLICES
    for path in fetched:
        sent = pydicom.dcmread(path)
        copy = pydicom.dcmread(watched.pacs / f"{sent.SOPInstanceUID}.dcm")
        assert copy.PixelData == sent.PixelData
        for name in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber"):
            assert copy[name].value == sent[name].value
        assert copy.Modality == "MR" and (copy.Rows, copy.Columns) == (sent.Rows, sent.Columns)
    assert len({pydicom.dcmread(path).SeriesInstanceUID for path in arrived}) == 1


def test_a_further_once_pass_does_nothing(cloud, watched):
    before = (jobs_of(cloud), uploads_of(cloud), dict(watched.scp.received))
    again = cloud.cli(
        "watch", str(watched.export), *RECON_FLAGS, "--once", "--quiet-seconds", "0",
        "--interval", "0.2", "--state", str(watched.state), "--fetch-to", str(watched.fetch_to),
        "--to-pacs", watched.scp.address, "--called-aet", SCP_AET,
    )  # fmt: skip
    assert again.exit_code == 0, again.stderr
    events = [json.loads(line) for line in again.stdout.splitlines()]
    assert [event["event"] for event in events] == ["started", "stopped"]
    assert (jobs_of(cloud), uploads_of(cloud), dict(watched.scp.received)) == before


def test_fetch_to_pacs_on_aws_sends_the_series_once_per_node(cloud, watched, tmp_path):
    upload_job = watched.first.events[1]["job_id"]
    with CallerRecordingScp(tmp_path / "other-pacs") as other:
        flags = ("--to-pacs", other.address, "--aet", "MRICTL-FETCH", "--called-aet", SCP_AET)
        sent = cloud.cli("fetch", upload_job, *flags)
        assert sent.exit_code == 0, sent.stderr
        report = sent.json()["pacs"]
        assert (report["instances"], report["accepted"], report["complete"]) == (
            SLICES,
            SLICES,
            True,
        )
        again = cloud.cli("fetch", upload_job, *flags)
        assert again.exit_code == 0, again.stderr
        assert again.json()["pacs"]["already_accepted"] == SLICES
    assert sorted(other.received.values()) == [1] * SLICES and other.callers == {"MRICTL-FETCH"}
    arrived = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "other-pacs").glob("*.dcm")}
    assert arrived == {pydicom.dcmread(p).SOPInstanceUID for p in watched.pacs.glob("*.dcm")}
    # The watcher's node, named again: its delivery state (the same home) says all is there.
    same = cloud.cli("fetch", upload_job, "--to-pacs", watched.scp.address,
                     "--called-aet", SCP_AET)  # fmt: skip
    assert same.exit_code == 0, same.stderr
    assert same.json()["pacs"]["already_accepted"] == SLICES
