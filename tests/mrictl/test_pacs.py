"""PACS delivery against real storage SCPs on 127.0.0.1: pynetdicom's own AE and dcmtk's
storescp. What arrives must be every instance, whole (pixel data and UIDs byte for byte) and
valid; what a node accepted is never sent again, in a retry or in a re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from mrictl.config import load_settings
from mrictl.errors import ExitCode, MrictlError
from mrictl.pacs import (
    ACCEPTED,
    ALREADY_ACCEPTED,
    REFUSED,
    PacsNode,
    PacsUnreachableError,
    echo,
    node_from_settings,
    send_series,
)
from tests.mrictl.cli_helpers import invoke
from tests.mrictl.dicom_nodes import (
    OUT_OF_RESOURCES,
    SCP_AET,
    SUCCESS,
    StorageScp,
    dciodvfy_errors,
    dcmtk_storescp,
    free_port,
    write_series,
)
from tests.mrictl.jobs_helpers import RETROSPECTIVE, write_tiny_scan


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    return write_series(tmp_path_factory.mktemp("series") / "dicom")


def assert_arrived_whole(sent: list[Path], received: list[Path]) -> None:
    """Every instance arrived once, with its pixel data and UIDs byte for byte, and valid."""
    by_uid = {str(pydicom.dcmread(path).SOPInstanceUID): path for path in received}
    assert len(by_uid) == len(received) == len(sent)
    for path in sent:
        original = pydicom.dcmread(path)
        copy = pydicom.dcmread(by_uid[str(original.SOPInstanceUID)])
        assert copy.PixelData == original.PixelData
        for name in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            assert copy[name].value == original[name].value
        assert copy.Modality == "MR" and copy.Rows == original.Rows
        errors = dciodvfy_errors(by_uid[str(original.SOPInstanceUID)])
        assert errors in (None, []), errors


def test_a_series_arrives_whole_and_valid_at_a_pynetdicom_scp(tmp_path, series):
    with StorageScp(tmp_path / "received") as scp:
        report = send_series(scp.node(), series, timeout=10)
    assert report.complete and report.associations == 1
    assert report.counts[ACCEPTED] == len(series)
    assert [result.file for result in report.results] == [path.name for path in series]
    assert all(result.code == SUCCESS and result.sent == 1 for result in report.results)
    assert_arrived_whole(series, sorted((tmp_path / "received").glob("*.dcm")))


def test_a_series_arrives_whole_and_valid_at_dcmtk_storescp(tmp_path, series):
    with dcmtk_storescp(tmp_path / "storescp") as node:
        report = send_series(node, series, timeout=10)
    assert report.complete
    received = sorted(path for path in (tmp_path / "storescp").iterdir() if path.is_file())
    assert_arrived_whole(series, received)


def test_echo_to_a_closed_port_is_one_line_with_a_hint():
    port = free_port()
    with pytest.raises(PacsUnreachableError) as caught:
        echo(PacsNode("127.0.0.1", port, "PACS"), timeout=2)
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.DELIVERY == 9
    assert "\n" not in message
    assert f"127.0.0.1:{port} did not answer: connection refused" in message
    assert "check the host and port" in message


def test_a_node_that_refuses_our_called_ae_title_says_which_titles_to_check(tmp_path):
    with StorageScp(tmp_path / "received", require_called_aet=True) as scp:
        echo(scp.node(), timeout=5)  # the right title answers
        with pytest.raises(PacsUnreachableError, match="refused the association") as caught:
            echo(PacsNode("127.0.0.1", scp.port, "NOT-THE-PACS"), timeout=5)
    assert "--called-aet" in str(caught.value) and "\n" not in str(caught.value)


def test_refused_instances_are_sent_again_and_accepted_ones_never(tmp_path, series):
    second = pydicom.dcmread(series[1]).SOPInstanceUID

    def refuse_the_second_once(uid: str, times: int) -> int:
        return OUT_OF_RESOURCES if uid == second and times == 1 else SUCCESS

    with StorageScp(tmp_path / "received", refuse_the_second_once) as scp:
        report = send_series(scp.node(), series, timeout=10, backoff_s=0.01)
    assert report.complete and report.associations == 2
    assert scp.received[second] == 2  # refused, then accepted on the retry
    assert all(count == 1 for uid, count in scp.received.items() if uid != second)
    assert [result.sent for result in report.results] == [1, 2, 1]
    assert_arrived_whole(series, sorted((tmp_path / "received").glob("*.dcm")))


def test_a_rerun_resumes_from_the_delivery_state_file(tmp_path, series):
    state = tmp_path / "delivery" / "job.json"
    last = pydicom.dcmread(series[-1]).SOPInstanceUID

    def refuse_the_last(uid: str, times: int) -> int:
        return OUT_OF_RESOURCES if uid == last else SUCCESS

    with StorageScp(tmp_path / "first", refuse_the_last) as scp:
        first = send_series(scp.node(), series, state=state, retries=1, backoff_s=0.01)
        assert not first.complete and first.missing == 1
        assert first.results[-1].status == REFUSED and first.results[-1].code == OUT_OF_RESOURCES
        assert scp.received[last] == 2  # the try and its one retry
        # The state file records what was accepted, hashed: no UID of the series in it.
        recorded = state.read_text()
        assert all(str(pydicom.dcmread(p).SOPInstanceUID) not in recorded for p in series)
        node_key = f"127.0.0.1:{scp.port}/{SCP_AET}"
        assert len(json.loads(recorded)["nodes"][node_key]["accepted"]) == 2
        scp.answer = lambda uid, times: SUCCESS  # the PACS has room again
        again = send_series(scp.node(), series, state=state, backoff_s=0.01)
    assert again.complete and again.associations == 1
    assert [r.status for r in again.results] == [ALREADY_ACCEPTED, ALREADY_ACCEPTED, ACCEPTED]
    assert scp.received[last] == 3
    assert all(count == 1 for uid, count in scp.received.items() if uid != last)
    assert not list(state.parent.glob(".*"))  # no temporary file left beside the state


def test_a_damaged_delivery_state_is_a_usage_error(tmp_path, series):
    state = tmp_path / "job.json"
    state.write_text("{not json")
    with StorageScp(tmp_path / "received") as scp, pytest.raises(MrictlError) as caught:
        send_series(scp.node(), series, state=state)
    assert caught.value.exit_code == ExitCode.USAGE and "damaged" in str(caught.value)
    assert not scp.received


def test_the_pacs_section_of_the_config_and_its_environment(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('[pacs]\nhost = "pacs.example"\nport = 104\ncalled_aet = "ARCHIVE"\n')
    monkeypatch.setenv("MRICTL_CONFIG", str(config))
    monkeypatch.setenv("MRICTL_PACS_CALLING_AET", "SCANNER1")
    node = node_from_settings(load_settings().pacs)
    assert node == PacsNode("pacs.example", 104, "ARCHIVE", "SCANNER1")
    flagged = node_from_settings(load_settings().pacs, address="[::1]:11112", called_aet="X")
    assert (flagged.host, flagged.port, flagged.called_aet) == ("::1", 11112, "X")
    monkeypatch.setenv("MRICTL_PACS_PORT", "http")
    with pytest.raises(MrictlError, match=r"pacs\.port") as caught:
        load_settings()
    assert caught.value.exit_code == ExitCode.USAGE
    with pytest.raises(MrictlError, match="AE title"):
        PacsNode("pacs.example", 104, "A" * 17)


@pytest.fixture
def finished_job(tmp_path, monkeypatch) -> str:
    """A tiny recon job (zerofill) on the local backend, run by one worker pass."""
    monkeypatch.setenv("MRICTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MRICTL_CONFIG", str(tmp_path / "no-config.toml"))
    scan = write_tiny_scan(tmp_path / "knee.h5")
    submitted = invoke(
        "recon", "submit", str(scan), "--method", "zerofill", "--accel",
        str(RETROSPECTIVE["acceleration"]), "--acs", str(RETROSPECTIVE["acs_lines"]), "--json",
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.stderr
    worked = invoke("worker", "run", "--once", "--json")
    assert worked.exit_code == 0, worked.stderr
    return submitted.json()["job_id"]


def test_fetch_to_pacs_delivers_the_jobs_series(tmp_path, finished_job):
    with StorageScp(tmp_path / "received") as scp:
        fetched = invoke(
            "fetch", finished_job, "--to-pacs", scp.address, "--called-aet", SCP_AET, "--json"
        )
        assert fetched.exit_code == 0, fetched.stderr
        pacs = fetched.json()["pacs"]
        assert pacs["complete"] and pacs["accepted"] == pacs["instances"] >= 1
        assert pacs["refused"] == pacs["unsent"] == 0
        assert fetched.json()["out"] is None and fetched.json()["files"] == []
        # Again, into a folder too: the PACS already holds the series, nothing is resent.
        again = invoke(
            "fetch", finished_job, "--out", str(tmp_path / "out"), "--to-pacs", scp.address,
            "--called-aet", SCP_AET, "--aet", "WORKSTATION", "--json",
        )  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert again.json()["pacs"]["already_accepted"] == pacs["instances"]
    assert again.json()["pacs"]["calling_aet"] == "WORKSTATION"
    assert set(scp.received.values()) == {1}
    sent = sorted((tmp_path / "out" / "dicom").glob("*.dcm"))
    assert len(sent) == pacs["instances"]
    assert_arrived_whole(sent, sorted((tmp_path / "received").glob("*.dcm")))


def test_fetch_to_the_configured_pacs_exits_9_when_instances_are_refused(
    tmp_path, finished_job, monkeypatch
):
    with StorageScp(tmp_path / "received", lambda uid, times: OUT_OF_RESOURCES) as scp:
        monkeypatch.setenv("MRICTL_PACS_HOST", "127.0.0.1")
        monkeypatch.setenv("MRICTL_PACS_PORT", str(scp.port))
        monkeypatch.setenv("MRICTL_PACS_CALLED_AET", SCP_AET)
        monkeypatch.setenv("MRICTL_PACS_RETRIES", "2")
        monkeypatch.setenv("MRICTL_PACS_BACKOFF_SECONDS", "0.01")
        refused = invoke("fetch", finished_job, "--pacs", "--json")
    assert refused.exit_code == ExitCode.DELIVERY, refused.stderr
    pacs = refused.json()["pacs"]
    assert not pacs["complete"] and pacs["refused"] == pacs["instances"]
    assert pacs["associations"] == 3 and set(scp.received.values()) == {3}
    assert pacs["results"][0]["code"] == "0xA700"
    assert "did not accept" in refused.stderr


def test_fetch_to_a_closed_port_is_one_line_and_exit_9(finished_job):
    closed = invoke("fetch", finished_job, "--to-pacs", f"127.0.0.1:{free_port()}",
                    "--called-aet", "PACS")  # fmt: skip
    assert closed.exit_code == ExitCode.DELIVERY
    assert closed.stderr.count("\n") == 1 and "connection refused" in closed.stderr
    usage = invoke("fetch", finished_job, "--pacs")
    assert usage.exit_code == ExitCode.USAGE and "no PACS configured" in usage.stderr
    neither = invoke("fetch", finished_job)
    assert neither.exit_code == ExitCode.USAGE and "--to-pacs" in neither.stderr
