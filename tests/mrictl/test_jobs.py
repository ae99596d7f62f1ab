"""What the CLI's job commands do: submit, status, wait, fetch, cancel, retry, logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mrictl.backends.local import LocalBackend
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline import jobs
from mrictl.pipeline.upload import upload
from mrictl.worker import run_worker
from raki.io.fastmri import write_fastmri
from raki.io.image_hdf5 import read_reconstruction
from raki.phantom import simulate_scan
from raki.scan import Identifiers
from tests.mrictl.jobs_helpers import RETROSPECTIVE, TINY, tree, write_tiny_scan

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "home")


@pytest.fixture
def patient_scan(tmp_path: Path) -> Path:
    """A fully sampled scan that carries identifiers, to prove they never leak."""
    scan = simulate_scan(**TINY, seed=3).replace(
        identifiers=Identifiers(patient_name="Doe^Jane", patient_id="PID-778899")
    )
    return write_fastmri(scan, tmp_path / "Doe_Jane_brain.h5")


def process(backend: LocalBackend) -> int:
    return run_worker(backend, once=True, worker_id="test-worker", lease_seconds=30)


def test_submit_wait_fetch_end_to_end(backend, patient_scan, tmp_path):
    submitted = jobs.submit(backend, patient_scan, "zerofill", RETROSPECTIVE)
    assert tuple(submitted) == jobs.RECORD_FIELDS
    assert submitted["stage"] == "preprocess" and submitted["state"] == "queued"
    assert submitted["method"] == "zerofill" and submitted["options"] == RETROSPECTIVE
    assert ISO_UTC.match(submitted["created_at"]) and ISO_UTC.match(submitted["updated_at"])
    assert process(backend) == 2
    final = jobs.wait(backend, submitted["job_id"], timeout=10)
    assert final["stage"] == "recon" and final["state"] == "succeeded", final["error"]
    assert final["parent_job_id"] == submitted["job_id"]
    assert final["attempts"] == 1 and final["error"] is None
    assert set(final["metrics"]) == {"nmse", "psnr", "ssim"}
    assert final["metrics"]["psnr"] > 10
    assert {"read_s", "write_s", "stage_s"} <= set(final["timings"])
    first = jobs.status(backend, submitted["job_id"])[0]
    assert first["state"] == "succeeded" and first["next_job_id"] == final["job_id"]

    fetched = jobs.fetch(backend, submitted["job_id"], tmp_path / "out", formats=["h5", "json"])
    assert sorted(p.name for p in fetched) == ["reconstruction.h5", "result.json"]
    image, attrs = read_reconstruction(tmp_path / "out" / "reconstruction.h5")
    assert image.shape == (1, 32, 24) and attrs["acceleration"] == 2 and attrs["acs_lines"] == 8
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["metrics"] == final["metrics"] and result["scan_id"] == final["scan_id"]
    reports = jobs.fetch(backend, submitted["job_id"], tmp_path / "report", formats=["report"])
    assert sorted(p.name for p in reports) == ["report.json", "report.md"]
    everything = jobs.fetch(backend, final["job_id"], tmp_path / "all")
    assert len(everything) == len(final["outputs"])
    assert not [name for name in tree(tmp_path / "all") if ".partial" in name]

    # Nothing identifying anywhere the system speaks: keys, records, logs, result.json.
    said = json.dumps(
        [
            jobs.status(backend),
            jobs.logs(backend, submitted["job_id"]),
            backend.store.list(),
            result,
            (tmp_path / "report" / "report.md").read_text(),
        ]
    )
    for secret in ("Doe", "Jane", "PID-778899", str(tmp_path)):
        assert secret not in said


def test_submitting_a_preprocessed_scan_goes_straight_to_recon(backend, tmp_path):
    scan_file = write_tiny_scan(tmp_path / "scan.h5")
    first = jobs.submit(backend, scan_file, "zerofill", RETROSPECTIVE)
    process(backend)
    again = jobs.submit(backend, first["scan_id"], "zerofill", {"acceleration": 3, "acs_lines": 6})
    assert again["stage"] == "recon" and again["scan_id"] == first["scan_id"]
    by_path = jobs.submit(backend, [scan_file], "zerofill", RETROSPECTIVE)
    assert by_path["stage"] == "recon"
    assert backend.store.list("uploads/") == [f"uploads/{first['scan_id']}.tar"]
    process(backend)
    assert jobs.wait(backend, again["job_id"], timeout=5)["metrics"]["nmse"] > 0


def test_submit_refuses_bad_requests(backend, tmp_path):
    scan_file = write_tiny_scan(tmp_path / "scan.h5")
    with pytest.raises(MrictlError, match="unknown method") as method:
        jobs.submit(backend, scan_file, "magic")
    assert method.value.exit_code == ExitCode.USAGE
    with pytest.raises(MrictlError, match="unknown option 'turbo'"):
        jobs.submit(backend, scan_file, "zerofill", {"turbo": True})
    with pytest.raises(MrictlError, match="must be a int"):
        jobs.submit(backend, scan_file, "zerofill", {"acceleration": "4"})
    for training, reason in (
        ({"turbo": 1}, "unknown training settings: turbo"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of"),
        ({"batch_fraction": 0}, "batch_fraction must lie in"),
        ({"learning_rate": "fast"}, "wrong type"),
    ):
        with pytest.raises(MrictlError, match=reason) as refused:
            jobs.submit(backend, scan_file, "rraki", {"training": training})
        assert refused.value.exit_code == ExitCode.USAGE
    with pytest.raises(MrictlError) as unknown:
        jobs.submit(backend, "scan-0123456789abcdef", "zerofill")
    assert unknown.value.exit_code == ExitCode.NOT_FOUND
    assert backend.queue.list() == []


def test_status_cancel_retry_and_logs(backend, tmp_path):
    upload(backend, [write_tiny_scan(tmp_path / "a.h5")], method="zerofill")
    second = jobs.submit(backend, write_tiny_scan(tmp_path / "b.h5", seed=1), "zerofill")
    assert [r["state"] for r in jobs.status(backend)] == ["queued", "queued"]
    cancelled = jobs.cancel(backend, second["job_id"])
    assert cancelled["state"] == "cancelled" and cancelled["error"] == "cancelled while queued"
    assert [r["job_id"] for r in jobs.status(backend, state="cancelled")] == [second["job_id"]]
    with pytest.raises(MrictlError) as twice:
        jobs.cancel(backend, second["job_id"])
    assert twice.value.exit_code == ExitCode.CONFLICT
    with pytest.raises(MrictlError) as early:
        jobs.fetch(backend, second["job_id"], tmp_path / "out")
    assert early.value.exit_code == ExitCode.JOB_FAILED
    assert jobs.retry(backend, second["job_id"])["state"] == "queued"
    messages = [line["message"] for line in jobs.logs(backend, second["job_id"])]
    assert messages == ["cancelled while queued", "queued again after cancelled"]
    with pytest.raises(MrictlError) as missing:
        jobs.status(backend, "job-nope")
    assert missing.value.exit_code == ExitCode.NOT_FOUND


def test_cancel_and_retry_follow_the_chain(backend, tmp_path):
    submitted = jobs.submit(backend, write_tiny_scan(tmp_path / "a.h5"), "zerofill")
    run_worker(backend, once=True, stages=("preprocess",), lease_seconds=30)
    cancelled = jobs.cancel(backend, submitted["job_id"])  # the queued recon job
    assert cancelled["stage"] == "recon" and cancelled["state"] == "cancelled"
    assert jobs.wait(backend, submitted["job_id"], timeout=1)["state"] == "cancelled"
    assert jobs.retry(backend, submitted["job_id"])["job_id"] == cancelled["job_id"]


def test_wait_times_out_and_fetch_needs_a_finished_job(backend, tmp_path):
    submitted = jobs.submit(backend, write_tiny_scan(tmp_path / "a.h5"), "zerofill")
    with pytest.raises(MrictlError, match="still queued") as late:
        jobs.wait(backend, submitted["job_id"], timeout=0.2, poll_interval=0.05)
    assert late.value.exit_code == ExitCode.TIMEOUT
    with pytest.raises(MrictlError) as unfinished:
        jobs.fetch(backend, submitted["job_id"], tmp_path / "out")
    assert unfinished.value.exit_code == ExitCode.CONFLICT
    with pytest.raises(MrictlError, match="unknown format 'gif'"):
        jobs.fetch(backend, submitted["job_id"], tmp_path / "out", formats=["gif"])
    assert not (tmp_path / "out").exists()


def test_failed_job_reports_its_reason(backend, tmp_path):
    submitted = jobs.submit(backend, write_tiny_scan(tmp_path / "a.h5"), "zerofill")  # no --accel
    process(backend)
    final = jobs.wait(backend, submitted["job_id"], timeout=5)
    assert final["state"] == "failed" and "fully sampled" in final["error"]
    with pytest.raises(MrictlError) as failed:
        jobs.fetch(backend, submitted["job_id"], tmp_path / "out")
    assert failed.value.exit_code == ExitCode.JOB_FAILED


def test_output_formats_select_files():
    assert jobs.output_format("reconstruction.h5") == "h5"
    assert jobs.output_format("result.json") == "json"
    assert jobs.output_format("dicom/IM0001.dcm") == "dicom"
    assert jobs.output_format("reconstruction.nii.gz") == "nifti"
    assert jobs.output_format("preview/slice_000.png") == "png"


def test_a_queued_default_request_runs_auto_where_the_networks_cannot(backend, tmp_path):
    """No method asked for, an ACS too small for the networks: the job runs the default (auto),
    whose choice is in its result.json, and succeeds; the same request naming rraki fails with
    the reason."""
    scan_file = write_tiny_scan(tmp_path / "scan.h5")
    options = {"acceleration": 4, "acs_lines": 6}
    submitted = jobs.submit(backend, scan_file, None, options)
    assert submitted["method"] == "auto" and submitted["fallback"] is None
    assert process(backend) == 2
    final = jobs.wait(backend, submitted["job_id"], timeout=10)
    assert final["state"] == "succeeded", final["error"]
    assert "select_s" in final["timings"]
    fetched = jobs.fetch(backend, final["job_id"], tmp_path / "got")
    result = json.loads(next(p for p in fetched if p.name == "result.json").read_text())
    assert result["method"] == result["selection"]["method"] == "cs"
    assert "no held-out test" in result["selection"]["reason"]
    named = jobs.submit(backend, scan_file, "rraki", options)
    process(backend)
    failed = jobs.status(backend, named["job_id"])[-1]
    assert failed["state"] in ("failed", "dead_letter") and "at least 9" in failed["error"]


def test_a_queued_job_records_the_choice_and_honours_the_cs_settings(backend, tmp_path):
    """The record shows what auto chose (as recon run --json does) and the payload's cs
    settings reach the worker: Tikhonov at weight 0 is plain CG-SENSE, a different image."""
    scan_file = write_tiny_scan(tmp_path / "scan.h5")
    options = {"acceleration": 2, "acs_lines": 12}
    auto = jobs.submit(backend, scan_file, "auto", options)
    tikhonov = jobs.submit(
        backend, scan_file, "cs", {**options, "cs_regularizer": "tikhonov", "cs_weight": 0.0}
    )
    l1 = jobs.submit(backend, scan_file, "cs", options)
    while process(backend):
        pass
    record = jobs.wait(backend, auto["job_id"], timeout=10)
    assert record["state"] == "succeeded", record["error"]
    assert record["method"] == "auto" and record["selection"]["method"] in ("cs", "grappa")
    assert record["selection"]["candidates"] or record["selection"]["reason"]
    images = {}
    for name, submitted in (("tikhonov", tikhonov), ("l1", l1)):
        final = jobs.wait(backend, submitted["job_id"], timeout=10)
        assert final["state"] == "succeeded", final["error"]
        assert final["selection"] is None
        fetched = jobs.fetch(backend, final["job_id"], tmp_path / name)
        result = json.loads(next(p for p in fetched if p.name == "result.json").read_text())
        assert result["cs"]["regularizer"] == ("tikhonov" if name == "tikhonov" else "wavelet")
        images[name] = read_reconstruction(next(p for p in fetched if p.suffix == ".h5"))[0]
    assert not (images["tikhonov"] == images["l1"]).all()


def test_a_queued_job_honours_the_cs_grid(backend, tmp_path):
    """The payload's cs_grid reaches the worker's cs (the default is the extended grid): the
    result says which grid, and the measured grid's image is another image."""
    scan_file = write_tiny_scan(tmp_path / "scan.h5")
    options = {"acceleration": 2, "acs_lines": 12}
    measured = jobs.submit(backend, scan_file, "cs", {**options, "cs_grid": "measured"})
    assert measured["options"]["cs_grid"] == "measured"
    default = jobs.submit(backend, scan_file, "cs", options)
    while process(backend):
        pass
    images = {}
    for grid, submitted in (("measured", measured), ("extended", default)):
        final = jobs.wait(backend, submitted["job_id"], timeout=10)
        assert final["state"] == "succeeded", final["error"]
        fetched = jobs.fetch(backend, final["job_id"], tmp_path / grid)
        result = json.loads(next(p for p in fetched if p.name == "result.json").read_text())
        assert result["cs"]["grid"] == grid
        images[grid] = read_reconstruction(next(p for p in fetched if p.suffix == ".h5"))[0]
    assert not (images["measured"] == images["extended"]).all()
    with pytest.raises(MrictlError, match="apply to cs and auto only") as refused:
        jobs.submit(backend, scan_file, "grappa", {**options, "cs_grid": "measured"})
    assert refused.value.exit_code == ExitCode.USAGE


def test_fetch_is_all_or_nothing_and_keeps_jobs_apart(backend, tmp_path):
    first = jobs.submit(backend, write_tiny_scan(tmp_path / "a.h5"), "zerofill", RETROSPECTIVE)
    second = jobs.submit(
        backend, write_tiny_scan(tmp_path / "b.h5", seed=4), "zerofill", RETROSPECTIVE
    )
    process(backend)
    out = tmp_path / "out"
    jobs.fetch(backend, first["job_id"], out)
    jobs.fetch(backend, first["job_id"], out)  # again: the same files, replaced
    with pytest.raises(MrictlError) as other:
        jobs.fetch(backend, second["job_id"], out)
    assert other.value.exit_code == ExitCode.CONFLICT
    a_file = tmp_path / "a.h5"
    with pytest.raises(MrictlError) as into_file:
        jobs.fetch(backend, second["job_id"], a_file)
    assert into_file.value.exit_code == ExitCode.USAGE
    final = jobs.wait(backend, second["job_id"], timeout=10)
    stored = backend.store.root / final["outputs"][-1]
    stored.write_bytes(stored.read_bytes() + b"corrupt")
    with pytest.raises(MrictlError):
        jobs.fetch(backend, second["job_id"], tmp_path / "partial")
    assert not (tmp_path / "partial").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_submit_refuses_an_unknown_device_before_queueing(backend, tmp_path):
    with pytest.raises(MrictlError, match="unknown device") as refused:
        jobs.submit(backend, write_tiny_scan(tmp_path / "a.h5"), "grappa", {"device": "quantum"})
    assert refused.value.exit_code == ExitCode.USAGE
    assert backend.queue.list() == []


def test_watch_with_a_timeout_waits_off_a_tty_and_exits_8_if_jobs_remain(backend, tmp_path):
    from tests.mrictl.cli_helpers import invoke

    jobs.submit(backend, write_tiny_scan(tmp_path / "a.h5"), "zerofill", RETROSPECTIVE)
    args = ("recon", "watch", "--home", str(backend.home), "--interval", "0.1", "--json")
    waited = invoke(*args, "--timeout", "0.3")
    assert waited.exit_code == ExitCode.TIMEOUT
    assert "still queued or running" in waited.json()["error"]["message"]
    assert invoke(*args).exit_code == 0  # no --timeout: one snapshot, as documented


def test_demo_refuses_to_run_other_peoples_queued_jobs(backend, tmp_path):
    from mrictl.demo import run_demo

    queued = jobs.submit(backend, write_tiny_scan(tmp_path / "a.h5"), "zerofill", RETROSPECTIVE)
    with pytest.raises(MrictlError, match="other job") as refused:
        run_demo(backend, tmp_path / "demo")
    assert refused.value.exit_code == ExitCode.CONFLICT
    assert jobs.get_record(backend, queued["job_id"])["state"] == "queued"


def test_job_command_requests_that_would_be_lost_are_refused(tmp_path):
    from tests.mrictl.cli_helpers import invoke

    scan = write_tiny_scan(tmp_path / "a.h5")
    share = tmp_path / "share"
    share.mkdir()
    lost = invoke("upload", str(scan), "--to", str(share), "--method", "grappa", "--json")
    assert lost.exit_code == ExitCode.USAGE and list(share.iterdir()) == []
    folder = invoke("upload", str(tmp_path), "--json")
    assert folder.exit_code == ExitCode.USAGE and "folder" in folder.json()["error"]["message"]
    alone = invoke("recon", "submit", str(scan), "--timeout", "5", "--json")
    assert alone.exit_code == ExitCode.USAGE and "--wait" in alone.json()["error"]["message"]
    not_a_home = tmp_path / "home-file"
    not_a_home.write_text("")
    refused = invoke("recon", "status", "--home", str(not_a_home), "--json")
    assert refused.exit_code == ExitCode.BACKEND


def test_human_output_into_a_pipe_is_not_cut_to_80_columns(monkeypatch):
    from mrictl.output import PIPE_WIDTH, Output

    monkeypatch.delenv("COLUMNS", raising=False)
    assert Output().console.width == PIPE_WIDTH  # pytest's stderr is no terminal


def test_series_of_one_anonymous_scan_share_a_study_and_are_told_apart(backend, tmp_path):
    import pydicom

    scan = write_tiny_scan(tmp_path / "a.h5")
    submitted = [
        jobs.submit(backend, scan, method, RETROSPECTIVE) for method in ("zerofill", "grappa")
    ]
    process(backend)
    first = []
    for index, record in enumerate(submitted):
        files = jobs.fetch(backend, record["job_id"], tmp_path / f"out{index}", formats=["dicom"])
        first.append(pydicom.dcmread(sorted(files)[0]))
    zerofill, grappa = first
    assert zerofill.StudyInstanceUID == grappa.StudyInstanceUID
    assert zerofill.FrameOfReferenceUID == grappa.FrameOfReferenceUID
    assert zerofill.SeriesNumber != grappa.SeriesNumber
    assert "GRAPPA" in grappa.SeriesDescription and "zero" in zerofill.SeriesDescription
