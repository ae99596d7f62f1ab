"""The stacks `mrictl provision` creates, on a moto server started by the test on 127.0.0.1, and
`mrictl` pointed at them as an operator's workstation is (the saved outputs) or as a Batch
container is (its job definition's variables).

What moto does not do is done here, as AWS would: the raw bucket's notification to the
preprocess queue (moto's CloudFormation drops it, NOTES.md) is configured with boto3 as
infra_templates/storage.yaml declares it, and a Batch job's container (moto's Batch runs none:
its jobs are SUCCEEDED when submitted) is the job definition's own command, its `Ref::` parameters
substituted, run in a process with the definition's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mrictl.cli_helpers import Outcome, invoke
from tests.servers import REGION, TEST_CREDENTIALS, client, moto_server, reset_moto

REPOSITORY = Path(__file__).resolve().parents[2]
# Variables that would reach the commands from the developer's shell and change what they do.
LEAKING = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "MRICTL_AWS_PROFILE",
           "MRICTL_CONFIG", "MRICTL_METHOD", "MRICTL_DEVICE")  # fmt: skip


@dataclass
class Cloud:
    """The provisioned stacks: their outputs, boto3 clients of the server, `mrictl` on them."""

    endpoint: str
    prefix: str
    outputs: dict[str, str]
    home: Path  # the workstation's MRICTL_HOME
    config_home: Path  # its XDG_CONFIG_HOME, where provision saved the outputs

    def client(self, service: str) -> Any:
        return client(service, self.endpoint)

    def cli(self, *args: str) -> Outcome:
        """`mrictl ARGS --json` on the workstation (MRICTL_BACKEND=aws)."""
        return invoke(*args, "--json")

    def messages(self, queue_output: str) -> int:
        """Messages on a queue, visible or not."""
        counts = self.client("sqs").get_queue_attributes(
            QueueUrl=self.outputs[queue_output],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in counts.values())

    def batch_job(self, batch_job_id: str) -> dict[str, Any]:
        [found] = self.client("batch").describe_jobs(jobs=[batch_job_id])["jobs"]
        return found

    def run_container(self, batch_job_id: str, scratch: Path) -> subprocess.CompletedProcess:
        """What Batch runs for the job: its definition's command with the job's parameters, in
        a process given the definition's environment (plus the endpoint and test keys), its
        /tmp volume a fresh folder."""
        job = self.batch_job(batch_job_id)
        [definition] = self.client("batch").describe_job_definitions(
            jobDefinitions=[job["jobDefinition"]]
        )["jobDefinitions"]
        container = definition["containerProperties"]
        command = list(container["command"])
        for name, value in job["parameters"].items():
            command = [part.replace(f"Ref::{name}", value) for part in command]
        assert command[0] == "mrictl"
        scratch.mkdir(parents=True, exist_ok=True)
        # moto hands an empty parameter's value back as [] (AWS: ""): the backend reads "" as none.
        environment = {
            item["name"]: item["value"] if isinstance(item["value"], str) else ""
            for item in container["environment"]
        }
        assert environment["HOME"] == environment["TMPDIR"] == "/tmp"
        environment.update(HOME=str(scratch), TMPDIR=str(scratch))
        environment.update(
            {
                **TEST_CREDENTIALS,
                "MRICTL_AWS_ENDPOINT_URL": self.endpoint,
                "AWS_BATCH_JOB_ID": batch_job_id,
                "AWS_BATCH_JOB_ATTEMPT": "1",
                "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true",
                "PATH": os.environ["PATH"],
                "PYTHONPATH": str(REPOSITORY),
                "NO_COLOR": "1",
            }
        )
        return subprocess.run(
            [sys.executable, "-m", "mrictl", *command[1:]],
            capture_output=True,
            text=True,
            env=environment,
            cwd=scratch,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )


def notify_uploads(cloud: Cloud) -> None:
    """The raw bucket's event notification of storage.yaml: created .tar keys under uploads/
    to the preprocess queue."""
    cloud.client("s3").put_bucket_notification_configuration(
        Bucket=cloud.outputs["RawBucketName"],
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": cloud.outputs["PreprocessQueueArn"],
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {
                            "FilterRules": [
                                {"Name": "prefix", "Value": "uploads/"},
                                {"Name": "suffix", "Value": ".tar"},
                            ]
                        }
                    },
                }
            ]
        },
    )


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """`mrictl provision --yes` on a fresh moto server; then every `mrictl` of the module runs
    with MRICTL_BACKEND=aws and the prefix, reading the outputs provision saved."""
    prefix = "dp-test"
    config_home = tmp_path_factory.mktemp("config")
    home = tmp_path_factory.mktemp("home")
    with moto_server() as endpoint, pytest.MonkeyPatch.context() as patch:
        reset_moto(endpoint)  # moto's state is global to the process
        for name, value in TEST_CREDENTIALS.items():
            patch.setenv(name, value)
        patch.setenv("AWS_CONFIG_FILE", str(config_home / "no-aws-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(config_home / "no-aws-credentials"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("XDG_CONFIG_HOME", str(config_home))
        for name in (*LEAKING, *[n for n in os.environ if n.startswith("MRICTL_AWS_")]):
            patch.delenv(name, raising=False)
        where = ("--endpoint-url", endpoint, "--region", REGION, "--stack-prefix", prefix)
        provisioned = invoke("provision", "--yes", "--json", *where)
        assert provisioned.exit_code == 0, provisioned.stderr
        patch.setenv("MRICTL_BACKEND", "aws")
        patch.setenv("MRICTL_HOME", str(home))
        patch.setenv("MRICTL_AWS_ENDPOINT_URL", endpoint)
        patch.setenv("MRICTL_AWS_REGION", REGION)
        patch.setenv("MRICTL_AWS_STACK_PREFIX", prefix)
        made = Cloud(endpoint, prefix, provisioned.json()["outputs"], home, config_home)
        notify_uploads(made)
        yield made


@pytest.fixture
def on_the_cloud(cloud: Cloud, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    """Each test's commands on the module's stacks (after the suite's own isolated_home)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(cloud.config_home))
    monkeypatch.setenv("MRICTL_HOME", str(cloud.home))
    return cloud
