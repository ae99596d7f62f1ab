"""The results share refreshed after a recon job's outputs land: one RefreshCache per debounce
window, never more than 2 in flight, "too many" retried, and a failed refresh only a line in the
job's log. Storage Gateway through botocore's Stubber (moto implements none of it, NOTES.md).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import stub

from mrictl.backends.aws import AwsBackend
from mrictl.backends.aws.refresh import CacheRefresher, recorded_results_share
from mrictl.backends.base import BackendError, JobState
from mrictl.pipeline import jobs
from mrictl.worker import run_worker
from tests.mrictl.backends.conftest import make_aws
from tests.mrictl.jobs_helpers import RETROSPECTIVE, write_tiny_scan

SHARE_ARN = "arn:aws:storagegateway:us-east-1:111122223333:share/share-5E5E5E5E"


@pytest.fixture
def sgw() -> Iterator[tuple[Any, stub.Stubber]]:
    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("storagegateway")
    with stub.Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def expect_refresh(stubber: stub.Stubber, folders: list[str], notification: str = "n-1") -> None:
    stubber.add_response(
        "refresh_cache",
        {"FileShareARN": SHARE_ARN, "NotificationId": notification},
        {"FileShareARN": SHARE_ARN, "FolderList": folders, "Recursive": True},
    )


def too_many(stubber: stub.Stubber) -> None:
    stubber.add_client_error(
        "refresh_cache",
        service_error_code="InvalidGatewayRequestException",
        service_message="There are too many RefreshCache operations in progress",
        http_status_code=400,
    )


def test_a_refresh_names_the_jobs_folder_and_is_waited_on(sgw):
    client, stubber = sgw
    slept: list[float] = []
    refresher = CacheRefresher(client, SHARE_ARN, debounce_s=2, settle_s=30, sleep=slept.append)
    expect_refresh(stubber, ["/job-0123456789abcdef/"])
    assert refresher.refresh("/job-0123456789abcdef/") == "n-1"
    assert slept == [2, 30]  # the debounce window, then the bounded wait for the refresh


def test_too_many_refreshes_in_flight_is_retried_with_backoff(sgw):
    client, stubber = sgw
    slept: list[float] = []
    refresher = CacheRefresher(client, SHARE_ARN, debounce_s=0, settle_s=5, sleep=slept.append)
    too_many(stubber)
    too_many(stubber)
    expect_refresh(stubber, ["/job-a/"])
    assert refresher.refresh("/job-a/") == "n-1"
    assert slept == [0, 1.0, 2.0, 5]


def test_another_error_is_one_line_and_not_retried(sgw):
    client, stubber = sgw
    refresher = CacheRefresher(client, SHARE_ARN, debounce_s=0, settle_s=0, sleep=lambda _: None)
    stubber.add_client_error("refresh_cache", service_error_code="AccessDeniedException")
    with pytest.raises(BackendError) as raised:
        refresher.refresh("/job-a/")
    assert str(raised.value) == "RefreshCache of /job-a/: AccessDeniedException"


def test_requests_within_the_debounce_window_are_one_refresh(sgw):
    client, stubber = sgw
    refresher = CacheRefresher(client, SHARE_ARN, debounce_s=0.3, settle_s=0)
    expect_refresh(stubber, ["/job-a/", "/job-b/"])
    answers: dict[str, str] = {}

    def ask(folder: str) -> None:
        answers[folder] = refresher.refresh(folder)

    first = threading.Thread(target=ask, args=("/job-b/",))
    first.start()
    time.sleep(0.05)
    ask("/job-a/")
    first.join()
    assert answers == {"/job-a/": "n-1", "/job-b/": "n-1"}


class CountingGateway:
    """RefreshCache that answers at once; the refresher's wait (its `sleep`) is when a refresh
    runs, so the peak of concurrent waits is the peak in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.calls: list[list[str]] = []

    def refresh_cache(self, **request: Any) -> dict[str, str]:
        with self.lock:
            self.calls.append(request["FolderList"])
        return {"NotificationId": f"n-{len(self.calls)}"}

    def sleep(self, seconds: float) -> None:
        if not seconds:
            return  # the debounce window (0 here)
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1


def test_never_more_than_two_refreshes_in_flight_and_a_third_waits():
    gateway = CountingGateway()
    refresher = CacheRefresher(gateway, SHARE_ARN, debounce_s=0, settle_s=0.2, sleep=gateway.sleep)
    folders = [f"/job-{n}/" for n in range(5)]
    threads = [threading.Thread(target=refresher.refresh, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
        time.sleep(0.01)  # each its own window
    for thread in threads:
        thread.join()
    assert sorted(folder for call in gateway.calls for folder in call) == folders
    assert len(gateway.calls) >= 3
    assert gateway.peak == 2


def test_the_results_share_comes_from_the_settings_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert recorded_results_share("mrictl-test") is None
    path = tmp_path / "mrictl" / "aws" / "mrictl-test.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"gateway_results": {"share_arn": SHARE_ARN}}))
    assert recorded_results_share("mrictl-test") == SHARE_ARN


@pytest.fixture
def aws(tmp_path: Path) -> Iterator[AwsBackend]:
    with make_aws(tmp_path) as backend:
        yield backend


def reconstructed(aws: AwsBackend, tmp_path: Path) -> str:
    scan = write_tiny_scan(tmp_path / "scan.h5", seed=4)
    first = jobs.submit(aws, [scan], "zerofill", RETROSPECTIVE)["job_id"]
    run_worker(aws, stages=["preprocess"], once=True, worker_id="w1")
    run_worker(aws, stages=["recon"], once=True, worker_id="w2")
    job = jobs.final_job(aws, first)
    assert job.stage == "recon" and job.state is JobState.SUCCEEDED, job.error
    return job.job_id


def test_a_recon_job_refreshes_its_folder_on_the_results_share(aws, tmp_path, sgw):
    client, stubber = sgw
    aws.refresher = CacheRefresher(client, SHARE_ARN, debounce_s=0, settle_s=0)
    stubber.add_response(
        "refresh_cache",
        {"FileShareARN": SHARE_ARN, "NotificationId": "n-7"},
        {"FileShareARN": SHARE_ARN, "FolderList": stub.ANY, "Recursive": True},
    )
    job_id = reconstructed(aws, tmp_path)
    lines = [entry.message for entry in aws.queue.logs(job_id)]
    assert f"results share refreshed: /{job_id}/ (notification n-7)" in lines


def test_a_failed_refresh_is_one_line_in_the_log_and_the_job_succeeds(aws, tmp_path, sgw):
    client, stubber = sgw
    aws.refresher = CacheRefresher(client, SHARE_ARN, debounce_s=0, settle_s=0)
    stubber.add_client_error("refresh_cache", service_error_code="GatewayNotConnected")
    job_id = reconstructed(aws, tmp_path)
    lines = [entry.message for entry in aws.queue.logs(job_id)]
    failed = [line for line in lines if line.startswith("results share not refreshed")]
    assert failed == [
        f"results share not refreshed: RefreshCache of /{job_id}/: GatewayNotConnected"
    ]


def test_without_a_results_share_nothing_is_refreshed(aws):
    assert aws.refresher is None
    assert aws.after_outputs_published("reconstructed/job-0123456789abcdef/") is None
