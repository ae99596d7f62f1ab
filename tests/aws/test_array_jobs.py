"""Large volumes on AWS Batch: a recon job whose volume has more slices than
`aws.slices_per_array_child` (default 4) runs as an array job over slice ranges and an assembler
that depends on it, on the stacks `mrictl provision` creates on a moto server.

moto's Batch runs no container (its jobs are SUCCEEDED when submitted) and keeps no live
summary of an array's children, so: each child's command, as Batch was given it, is run here
with AWS_BATCH_JOB_ARRAY_INDEX set as Batch sets it, then the assembler's (the job definition's
own command); how far a running array is comes from botocore's Stubber in the shape
DescribeJobs documents. What Batch was given (the array's size, the children's command, the
assembler's dependsOn) and what cancel did is read back from moto's DescribeJobs.

The preprocessed object's slice count (`keys.preprocessed_metadata`, which the preprocess stage
is to store) is put here; the rest is the product's own path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.stub import Stubber

from mrictl import keys
from mrictl.backends import open_backend
from mrictl.backends.aws import AwsResources, BatchService
from mrictl.backends.aws.batch import CANCEL_REASON, shard_command, slices_per_child_setting
from mrictl.backends.base import Backend, JobState
from mrictl.backends.local import LocalBackend
from mrictl.config import load_settings
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline.requests import enqueue_recon, recon_request
from mrictl.worker import run_job, run_shard
from raki.fft import rss_image
from raki.io.fastmri import read_fastmri, write_fastmri
from raki.io.image_hdf5 import read_reconstruction
from raki.metrics import nmse
from raki.phantom import simulate_scan
from tests.aws.conftest import Cloud
from tests.mrictl.cli_helpers import Outcome, invoke
from tests.mrictl.jobs_helpers import put_preprocessed

SLICES = 9  # with the default 4 slices per child: 3 children of 4, 4 and 1 slices
FLAGS = ("--method", "grappa", "--accel", "2", "--acs", "8")


@dataclass(frozen=True)
class Volume:
    """A 9-slice scan taken through upload and preprocess, and its job run whole."""

    path: Path
    scan_id: str
    whole_job: str
    whole_image: np.ndarray


def the_backend() -> Backend:
    """The aws backend as `mrictl` on the workstation opens it."""
    return open_backend(load_settings(backend="aws"))


def batch_ids(cloud: Cloud, job_id: str) -> tuple[str | None, str]:
    """(array job id, assembler's) as the job record keeps them."""
    item = cloud.client("dynamodb").get_item(
        TableName=cloud.outputs["JobTableName"], Key={"job_id": {"S": job_id}}
    )["Item"]
    array = item.get("batch_array_job_id", {}).get("S")
    return array, item["batch_job_id"]["S"]


def run_children(cloud: Cloud, array_id: str, indices: range | list[int]) -> list[str]:
    """Each child's command as Batch was given it, with the index Batch sets; their outcomes."""
    command = cloud.batch_job(array_id)["container"]["command"]
    assert command[0] == "mrictl"
    outcomes = []
    with pytest.MonkeyPatch.context() as patch:
        for index in indices:
            patch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", str(index))
            ran = invoke(*command[1:], "--json")
            assert ran.exit_code == 0, ran.output
            assert ran.json()["shard"] == index
            outcomes.append(ran.json()["outcome"])
    return outcomes


def run_definition_command(cloud: Cloud, batch_job_id: str) -> Outcome:
    """The job definition's own command with the Batch job's parameters (the assembler's: no
    override), run here (tests/aws/test_data_path.py runs it in a container's environment)."""
    job = cloud.batch_job(batch_job_id)
    assert "command" not in (job.get("containerOverrides") or {})
    [definition] = cloud.client("batch").describe_job_definitions(
        jobDefinitions=[job["jobDefinition"]]
    )["jobDefinitions"]
    command = list(definition["containerProperties"]["command"])
    for name, value in job["parameters"].items():
        command = [part.replace(f"Ref::{name}", value) for part in command]
    assert command[0] == "mrictl"
    return invoke(*command[1:], "--json")


def record(cloud: Cloud, job_id: str) -> dict[str, Any]:
    shown = cloud.cli("recon", "status", job_id)
    assert shown.exit_code == 0, shown.output
    [found] = shown.json()["jobs"]
    return found


def submit_split(cloud: Cloud, volume: Volume) -> str:
    sent = cloud.cli("recon", "submit", volume.scan_id, *FLAGS)
    assert sent.exit_code == 0, sent.output
    return str(sent.json()["job_id"])


def fetched_image(cloud: Cloud, job_id: str, out: Path) -> np.ndarray:
    fetched = cloud.cli("fetch", job_id, "--out", str(out))
    assert fetched.exit_code == 0, fetched.output
    image, _ = read_reconstruction(out / "reconstruction.h5")
    return image


@pytest.fixture(scope="module")
def volume(cloud: Cloud, tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """Upload and preprocess a 9-slice scan with splitting switched off for that submission
    (aws.slices_per_array_child 0: one Batch job), run its recon job for the whole image;
    the preprocessed object records its slice count (`keys.preprocessed_metadata`), so that
    the scan's next recon jobs, at the default setting, are split."""
    folder = tmp_path_factory.mktemp("volume")
    phantom = simulate_scan(matrix=(32, 24), num_coils=4, num_slices=SLICES, seed=3)
    path = write_fastmri(phantom, folder / "volume.h5")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MRICTL_AWS_SLICES_PER_ARRAY_CHILD", "0")
        sent = cloud.cli("recon", "submit", str(path), *FLAGS)
        assert sent.exit_code == 0, sent.output
        pulled = cloud.cli("worker", "run", "--stage", "preprocess", "--once")
        assert pulled.exit_code == 0, pulled.output
    preprocess = record(cloud, sent.json()["job_id"])
    whole = preprocess["next_job_id"]
    assert batch_ids(cloud, whole)[0] is None  # one Batch job
    ran = cloud.cli("worker", "run", "--job", whole)
    assert ran.exit_code == 0 and ran.json()["state"] == "succeeded", ran.output
    image = fetched_image(cloud, whole, folder / "whole")

    stored = the_backend().store.head(keys.preprocessed(preprocess["scan_id"]))
    assert stored.metadata == keys.preprocessed_metadata(preprocess["scan_id"], SLICES)
    return Volume(path, preprocess["scan_id"], whole, image)


pytestmark = pytest.mark.usefixtures("on_the_cloud")


def test_batch_gets_an_array_job_over_the_slices_and_an_assembler_that_depends_on_it(cloud, volume):
    job_id = submit_split(cloud, volume)
    array_id, assembler_id = batch_ids(cloud, job_id)
    assert array_id is not None
    array, assembler = cloud.batch_job(array_id), cloud.batch_job(assembler_id)
    assert array["arrayProperties"]["size"] == 3  # ceil(9 / 4)
    assert array["jobName"] == f"recon-{job_id}-shards"
    assert array["container"]["command"] == shard_command(job_id)
    assert array["container"]["command"][-2:] == [job_id, "--shard"]
    assert array["jobDefinition"] == assembler["jobDefinition"]
    assert array["jobDefinition"] == cloud.outputs["ReconJobDefinitionArn"]
    assert assembler["jobName"] == f"recon-{job_id}"
    assert assembler["dependsOn"] == [{"jobId": array_id}]
    assert assembler["parameters"] == {"job_id": job_id}
    shown = record(cloud, job_id)
    assert (shown["state"], shown["batch_job_id"]) == ("queued", assembler_id)
    # moto's array is SUCCEEDED at once: the record then says why the assembler waits.
    assert shown["waiting_reason"].startswith(f"all {SLICES} slices reconstructed; ")
    logged = [entry["message"] for entry in cloud.cli("recon", "logs", job_id).json()["logs"]]
    assert (
        f"submitted to AWS Batch as array job {array_id} (3 shards of at most 4 of {SLICES} "
        f"slices) and its assembler {assembler_id}"
    ) in logged


def test_the_children_and_the_assembler_give_the_image_of_the_job_run_whole(
    cloud, volume, tmp_path
):
    job_id = submit_split(cloud, volume)
    array_id, assembler_id = batch_ids(cloud, job_id)
    assert run_children(cloud, array_id, range(3)) == ["stored"] * 3
    shards = the_backend().store.list(keys.shards_prefix(job_id))
    assert shards == [keys.shard(job_id, index) for index in range(3)]
    assert record(cloud, job_id)["state"] == "queued"  # children hold no lease

    assembled = run_definition_command(cloud, assembler_id)
    assert assembled.exit_code == 0, assembled.output
    done = record(cloud, job_id)
    assert (done["state"], done["attempts"]) == ("succeeded", 1), done["error"]
    whole = record(cloud, volume.whole_job)
    assert sorted(Path(key).name for key in done["outputs"]) == sorted(
        Path(key).name for key in whole["outputs"]
    )
    assert done["metrics"] == pytest.approx(whole["metrics"], rel=1e-6)
    assert the_backend().store.list(keys.shards_prefix(job_id)) == []  # assembled: removed

    image = fetched_image(cloud, job_id, tmp_path / "split")
    assert image.shape == (SLICES, 32, 24)
    np.testing.assert_allclose(image, volume.whole_image, rtol=1e-5, atol=1e-5)
    reference = rss_image(read_fastmri(volume.path).kspace)
    assert nmse(reference, image) == pytest.approx(done["metrics"]["nmse"], rel=1e-6)
    assert nmse(reference, image) < 0.01  # GRAPPA at R=2, as the unsplit data-path test


def test_a_missing_shard_fails_the_assembler_naming_it_and_retry_runs_both_again(cloud, volume):
    job_id = submit_split(cloud, volume)
    array_id, assembler_id = batch_ids(cloud, job_id)
    assert run_children(cloud, array_id, [0, 2]) == ["stored", "stored"]

    failed = run_job(the_backend(), job_id, worker_id="assembler", retry_delay=0.0)
    assert failed.state is JobState.FAILED
    assert failed.error.startswith("shards missing: 1 of 3; `mrictl recon retry")
    assert "gave up after 3 attempts" in failed.error  # retryable: every attempt was tried
    assert the_backend().store.list(keys.shards_prefix(job_id)) == [
        keys.shard(job_id, 0),
        keys.shard(job_id, 2),
    ]

    retried = cloud.cli("recon", "retry", job_id)
    assert retried.exit_code == 0, retried.output
    new_array, new_assembler = batch_ids(cloud, job_id)
    assert new_array not in (None, array_id) and new_assembler != assembler_id
    assert cloud.batch_job(new_assembler)["dependsOn"] == [{"jobId": new_array}]
    # The ranges already stored are not reconstructed again.
    assert run_children(cloud, new_array, range(3)) == ["stored"] * 3
    logged = [entry["message"] for entry in cloud.cli("recon", "logs", job_id).json()["logs"]]
    assert "shard 0 (slices 0-3 of 9): already stored, not reconstructed again" in logged
    assert "shard 1 (slices 4-7 of 9): reconstructed with grappa" in " ".join(logged)
    done = run_job(the_backend(), job_id, worker_id="assembler")
    assert done.state is JobState.SUCCEEDED, done.error


def test_a_child_whose_input_is_refused_fails_the_job_at_once_with_its_reason(cloud, volume):
    # RAKI's networks need 2R + 1 = 5 ACS lines: 4 is bad input, which only reconstructing finds.
    sent = cloud.cli("recon", "submit", volume.scan_id, "--method", "raki", "--accel", "2",
                     "--acs", "4")  # fmt: skip
    assert sent.exit_code == 0, sent.output
    job_id = sent.json()["job_id"]
    array_id, _ = batch_ids(cloud, job_id)
    assert run_children(cloud, array_id, range(3)) == ["failed"] * 3
    failed = run_job(the_backend(), job_id, worker_id="assembler", retry_delay=0.0)
    assert (failed.state, failed.attempts) == (JobState.FAILED, 1)  # not retried
    assert failed.error.startswith("shard 0 (slices 0-3 of 9): ")
    assert "ACS" in failed.error


def test_cancel_stops_the_array_job_and_its_assembler(cloud, volume):
    job_id = submit_split(cloud, volume)
    array_id, assembler_id = batch_ids(cloud, job_id)
    cancelled = cloud.cli("recon", "cancel", job_id, "--yes")
    assert cancelled.exit_code == 0, cancelled.output
    for batch_job_id in (array_id, assembler_id):
        assert cloud.batch_job(batch_job_id).get("statusReason") == CANCEL_REASON
    logged = [entry["message"] for entry in cloud.cli("recon", "logs", job_id).json()["logs"]]
    assert f"stopped AWS Batch job {array_id}" in logged
    assert f"stopped AWS Batch job {assembler_id}" in logged
    # A child that starts anyway finds the job cancelled and does nothing.
    assert run_children(cloud, array_id, [0]) == ["cancelled"]
    assert the_backend().store.list(keys.shards_prefix(job_id)) == []


def test_recon_logs_show_each_childs_cloudwatch_lines_before_the_assemblers(cloud, volume):
    job_id = submit_split(cloud, volume)
    array_id, assembler_id = batch_ids(cloud, job_id)
    logs = cloud.client("logs")
    group = cloud.outputs["ReconLogGroupName"]
    # moto's Batch runs no container and so writes no log: write the streams the jobs name.
    for batch_job_id, line in ((f"{array_id}:1", "child 1 says"), (assembler_id, "assembling")):
        stream = cloud.batch_job(batch_job_id)["container"]["logStreamName"]
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        logs.put_log_events(
            logGroupName=group,
            logStreamName=stream,
            logEvents=[{"timestamp": int(time.time() * 1000), "message": line}],
        )
    shown = cloud.cli("recon", "logs", job_id)
    assert shown.exit_code == 0, shown.output
    lines = [entry["message"] for entry in shown.json()["logs"] if entry["source"] == "batch"]
    assert lines == ["child 1 says", "assembling"]


# How far a running array is: Batch's own summary (the Stubber, as DescribeJobs answers) -------

QUEUE = "arn:aws:batch:us-east-1:123456789012:job-queue/mrictl-prod-gpu"
ARRAY, ASSEMBLER = "5f1e0c1d-aaaa-4bbb-8ccc-000000000001", "5f1e0c1d-aaaa-4bbb-8ccc-000000000002"


@pytest.fixture
def stubbed() -> Iterator[tuple[BatchService, Stubber]]:
    client = boto3.client(
        "batch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    resources = AwsResources(job_table="jobs", batch_job_queue=QUEUE, recon_job_definition="d")
    with Stubber(client) as stubber:
        yield BatchService(lambda service: client, resources), stubber
        stubber.assert_no_pending_responses()


def array_described(status: str, summary: dict[str, int]) -> dict[str, Any]:
    return {
        "jobs": [
            {
                "jobName": "recon-job-0123456789abcdef-shards",
                "jobId": ARRAY,
                "jobQueue": QUEUE,
                "status": status,
                "startedAt": 0,
                "jobDefinition": "arn:aws:batch:us-east-1:123456789012:job-definition/d:1",
                "arrayProperties": {"statusSummary": summary, "size": sum(summary.values())},
            }
        ]
    }


def test_status_says_how_many_slices_the_running_array_has_done(stubbed):
    batch, stubber = stubbed
    plan = keys.ShardPlan(slices=16, per_shard=4)
    stubber.add_response(
        "describe_jobs",
        array_described("PENDING", {"SUCCEEDED": 2, "RUNNING": 1, "STARTING": 1}),
        {"jobs": [ARRAY]},
    )
    assert batch.array_waiting_reason(ARRAY, ASSEMBLER, plan) == (
        f"AWS Batch array job {ARRAY}: slices 8/16, 2 SUCCEEDED, 1 RUNNING, 1 STARTING "
        f"(shards of 4 slices); its assembler {ASSEMBLER} waits for it"
    )
    # 9 slices in shards of 4, 4 and 1: two done are at least 4 + 1 slices.
    two_done = array_described("PENDING", {"SUCCEEDED": 2, "RUNNING": 1})
    stubber.add_response("describe_jobs", two_done, {"jobs": [ARRAY]})
    reason = batch.array_waiting_reason(ARRAY, ASSEMBLER, keys.ShardPlan(9, 4))
    assert reason.startswith(f"AWS Batch array job {ARRAY}: slices 5/9, 2 SUCCEEDED, 1 RUNNING")
    stubber.add_response(
        "describe_jobs", array_described("FAILED", {"SUCCEEDED": 3, "FAILED": 1}), {"jobs": [ARRAY]}
    )
    assert batch.array_waiting_reason(ARRAY, ASSEMBLER, plan) == (
        f"AWS Batch array job {ARRAY} ended FAILED (1 of 4 shards failed): its assembler "
        f"{ASSEMBLER} will not run the job; `mrictl recon retry` submits both again"
    )


# The setting, and what a user never runs ---------------------------------------------------------


def test_the_setting_is_a_count_of_slices_and_zero_never_splits():
    assert slices_per_child_setting(None) == 4
    assert slices_per_child_setting("2") == 2
    assert slices_per_child_setting("0") == 0
    with pytest.raises(MrictlError, match=r"aws\.slices_per_array_child") as refused:
        slices_per_child_setting("four")
    assert refused.value.exit_code == ExitCode.USAGE


def test_the_shard_flag_is_the_containers_not_the_users(tmp_path, monkeypatch):
    helped = invoke("worker", "run", "--help")
    assert helped.exit_code == 0 and "--shard" not in helped.output
    monkeypatch.delenv("AWS_BATCH_JOB_ARRAY_INDEX", raising=False)
    home = str(tmp_path / "home")
    outside = invoke("worker", "run", "--job", "job-0123456789abcdef", "--shard", "--home", home)
    assert outside.exit_code == ExitCode.USAGE
    assert "AWS_BATCH_JOB_ARRAY_INDEX" in outside.output


def test_on_any_backend_the_assembled_ranges_are_the_job_run_whole(tmp_path):
    """The stage's split and assembly (no Batch: the plan put in the payload by hand), with a
    compared method, against the same request run whole."""
    backend = LocalBackend(tmp_path / "home")
    phantom = simulate_scan(matrix=(32, 24), num_coils=4, num_slices=5, seed=4)
    scan_id = put_preprocessed(backend, write_fastmri(phantom, tmp_path / "scan.h5"))
    options = {"acceleration": 2, "acs_lines": 8, "compare": ["zerofill"]}
    whole = run_job(backend, enqueue_recon(backend, scan_id, method="grappa", options=options))
    payload = {"scan_id": scan_id, **recon_request("grappa", options)}
    payload[keys.SHARDS_PAYLOAD] = keys.ShardPlan(5, 2).as_payload()
    split_id = backend.queue.enqueue("recon", payload)
    with pytest.raises(MrictlError, match="outside"):
        run_shard(backend, split_id, 3)
    assert [run_shard(backend, split_id, index) for index in range(3)] == ["stored"] * 3
    split = run_job(backend, split_id)
    assert (whole.state, split.state) == (JobState.SUCCEEDED, JobState.SUCCEEDED), split.error
    assert split.result["metrics"] == whole.result["metrics"]
    assert split.result["comparison"]["zerofill"]["nmse"] == pytest.approx(
        whole.result["comparison"]["zerofill"]["nmse"]
    )
    images = []
    for job in (whole, split):
        out = tmp_path / job.job_id
        backend.store.get_file(keys.output(keys.RECONSTRUCTED, job.job_id, "reconstruction.h5"),
                               out / "reconstruction.h5")  # fmt: skip
        images.append(read_reconstruction(out / "reconstruction.h5")[0])
    np.testing.assert_array_equal(images[0], images[1])


def test_the_shard_keys_sit_in_the_jobs_outputs_and_name_only_ids_and_indexes():
    job = "job-00112233445566ff"
    assert keys.shards_prefix(job) == f"reconstructed/{job}/shards/"
    assert keys.shard(job, 3) == f"reconstructed/{job}/shards/0003.npz"
    assert keys.shard_failure(job, 3) == f"reconstructed/{job}/shards/0003.failed.json"
    assert keys.shard(job, 0).startswith(keys.outputs_prefix(keys.RECONSTRUCTED, job))
    for index in (-1, 10000, True, "1"):
        with pytest.raises(keys.InvalidKeyPart):
            keys.shard(job, index)  # type: ignore[arg-type]
    plan = keys.ShardPlan(slices=9, per_shard=4)
    assert [plan.range_of(index) for index in range(plan.count)] == [(0, 4), (4, 8), (8, 9)]
    assert keys.ShardPlan.from_payload({"shards": plan.as_payload()}) == plan
    assert keys.ShardPlan.from_payload({}) is None
    assert keys.preprocessed_metadata("scan-0123456789abcdef", 9)["slices"] == "9"
