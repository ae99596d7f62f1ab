"""`mrictl provision`, `provision status` and `provision destroy` against a real HTTP endpoint: a
moto server on 127.0.0.1 that boto3 reaches through the aws settings' endpoint.

Each scenario uses its own stack prefix on one server (moto keeps a deleted compute stack's
Batch compute environments, so a prefix is never provisioned twice). What moto ignores
(versioning, policies, notifications, lifecycle) is asserted from the templates in
test_templates.py; here: the stacks, their wiring, and what the commands say and keep.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mrictl.errors import ExitCode, MrictlError
from mrictl.infra import cloudformation, stack_settings
from mrictl.infra import provision as service
from mrictl.infra.cloudformation import wait_for_stack
from mrictl.infra.lambda_package import build_autoscale_package
from mrictl.infra.stacks import (
    INPUTS,
    LATER_INPUTS,
    LOG_RETENTION_DAYS,
    STACK_ORDER,
    ProvisionOptions,
    parse_stack_prefix,
    stack_parameters,
)
from mrictl.infra.validate import REPOSITORY, load_template
from tests.mrictl.cli_helpers import Outcome, invoke

REGION = "us-east-1"
PREFIX = "mrictl-test"
CORE_STACKS = ["network", "storage", "jobs", "compute"]
TEMPLATES = REPOSITORY / "infra_templates"


@dataclass
class Account:
    """The moto server: boto3 clients of it, and `mrictl ARGS` pointed at it."""

    endpoint: str
    config_home: Path  # XDG_CONFIG_HOME of the commands run by module fixtures

    def client(self, service_name: str):
        import boto3

        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        return session.client(service_name, endpoint_url=self.endpoint)

    def cli(self, *args: str, prefix: str = PREFIX) -> Outcome:
        where = ("--endpoint-url", self.endpoint, "--region", REGION, "--stack-prefix", prefix)
        return invoke(*args, *where)

    def stack(self, name: str) -> dict | None:
        found = [
            s
            for s in self.client("cloudformation").list_stacks()["StackSummaries"]
            if s["StackName"] == name and s["StackStatus"] != "DELETE_COMPLETE"
        ]
        return found[0] if found else None

    def outputs(self, prefix: str, stack: str) -> dict[str, str]:
        cloudformation = self.client("cloudformation")
        [found] = cloudformation.describe_stacks(StackName=f"{prefix}-{stack}")["Stacks"]
        return {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])}


def credentials(patch: pytest.MonkeyPatch, config_home: Path) -> None:
    """Dummy keys, and none of the developer's AWS files or profiles."""
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    patch.setenv("AWS_CONFIG_FILE", str(config_home / "no-aws-config"))
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(config_home / "no-aws-credentials"))
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "MRICTL_AWS_PROFILE"):
        patch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def account(tmp_path_factory):
    """A moto server (Batch without Docker) for this module; the keys for the commands."""
    pytest.importorskip("moto.server")
    from tests.servers import moto_server, reset_moto

    with moto_server() as endpoint:
        # moto's state is global to the process: start from none, whatever ran before.
        reset_moto(endpoint)
        yield from _account(endpoint, tmp_path_factory)


def _account(endpoint: str, tmp_path_factory):
    config_home = tmp_path_factory.mktemp("config")
    with pytest.MonkeyPatch.context() as patch:
        credentials(patch, config_home)
        patch.setenv("XDG_CONFIG_HOME", str(config_home))
        yield Account(endpoint, config_home)


@pytest.fixture(autouse=True)
def keys_for_each_test(monkeypatch, tmp_path):
    credentials(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def provisioned(account):
    """`mrictl provision --yes --json` on a fresh prefix: its outcome (and the time it took)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(account.config_home))
        started = time.monotonic()
        outcome = account.cli("provision", "--yes", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    return outcome, time.monotonic() - started


def stack_events(account: Account, prefix: str) -> dict[str, int]:
    cloudformation = account.client("cloudformation")
    return {
        stack: len(
            cloudformation.describe_stack_events(StackName=f"{prefix}-{stack}")["StackEvents"]
        )
        for stack in CORE_STACKS
    }


# --- Creating everything ---------------------------------------------------------------------


def test_dry_run_on_a_fresh_account_plans_every_stack_as_create_and_changes_nothing(account):
    outcome = account.cli("provision", "--dry-run", "--json", prefix="mrictl-dry")
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert document["dry_run"] is True and document["changed"] is True
    assert [(s["stack"], s["action"]) for s in document["plan"]] == [
        (stack, "create") for stack in CORE_STACKS
    ]
    assert document["results"] == []
    assert all(account.stack(f"mrictl-dry-{stack}") is None for stack in STACK_ORDER)
    buckets = account.client("s3").list_buckets()["Buckets"]
    assert not [b for b in buckets if b["Name"].startswith("mrictl-dry-")]
    assert not (account.config_home / "mrictl" / "aws" / "mrictl-dry.json").exists()
    human = account.cli("provision", "--dry-run", prefix="mrictl-dry")
    assert "network  create" in human.output and "dry run: nothing changed" in human.output


def test_provision_off_a_tty_without_yes_is_refused(account):
    outcome = account.cli("provision", prefix="mrictl-ask")
    assert outcome.exit_code == ExitCode.USAGE
    assert "refusing without --yes" in outcome.stderr
    assert account.stack("mrictl-ask-network") is None


def test_provision_creates_every_stack_in_order(account, provisioned):
    outcome, seconds = provisioned
    document = outcome.json()
    assert [(r["stack"], r["action"], r["status"]) for r in document["results"]] == [
        (stack, "created", "CREATE_COMPLETE") for stack in CORE_STACKS
    ]
    for stack in CORE_STACKS:
        assert account.stack(f"{PREFIX}-{stack}")["StackStatus"] == "CREATE_COMPLETE"
    assert (
        document["outputs"]["RawBucketName"] == account.outputs(PREFIX, "storage")["RawBucketName"]
    )
    # Progress came from the stack events, one line each, on stderr.
    assert f"network: {PREFIX}-network CREATE_COMPLETE" in outcome.stderr
    assert seconds < 30


def test_buckets_queues_and_their_redrive_are_wired(account, provisioned):
    storage = account.outputs(PREFIX, "storage")
    s3, sqs = account.client("s3"), account.client("sqs")
    names = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    for output in ("Raw", "Preprocessed", "Reconstructed", "AccessLog"):
        assert storage[f"{output}BucketName"] in names
    notifications = s3.get_bucket_notification_configuration(Bucket=storage["RawBucketName"])
    for target in notifications.get("QueueConfigurations", []):  # moto drops it from the stack
        assert target["QueueArn"] == storage["PreprocessQueueArn"]

    queue = storage["PreprocessQueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    dead_letters = storage["PreprocessDeadLetterQueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dead_letters, AttributeNames=["QueueArn"])
    assert redrive["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]
    assert attributes["KmsMasterKeyId"] == storage["DataKeyArn"].rsplit("/", 1)[1]
    # A message received more than maxReceiveCount times moves to the dead-letter queue.
    sqs.send_message(QueueUrl=queue, MessageBody="uploads/scan-0123456789abcdef.tar")
    receive = {"MaxNumberOfMessages": 1, "VisibilityTimeout": 0, "WaitTimeSeconds": 0}
    for _ in range(int(redrive["maxReceiveCount"])):
        assert sqs.receive_message(QueueUrl=queue, **receive).get("Messages")
    assert not sqs.receive_message(QueueUrl=queue, **receive).get("Messages")
    [moved] = sqs.receive_message(QueueUrl=dead_letters, **receive)["Messages"]
    assert moved["Body"] == "uploads/scan-0123456789abcdef.tar"


def test_the_job_table_has_its_indexes_and_the_key_is_enabled(account, provisioned):
    jobs, storage = account.outputs(PREFIX, "jobs"), account.outputs(PREFIX, "storage")
    table = account.client("dynamodb").describe_table(TableName=jobs["JobTableName"])["Table"]
    assert {index["IndexName"] for index in table["GlobalSecondaryIndexes"]} == {
        "by-parent",
        "by-state",
    }
    assert [key["AttributeName"] for key in table["KeySchema"]] == ["job_id"]
    assert table["DeletionProtectionEnabled"] is True
    # (moto's describe_key fails on a key made by CloudFormation: it keeps the policy unparsed.)
    kms, key_id = account.client("kms"), storage["DataKeyArn"].rsplit("/", 1)[1]
    assert key_id in {key["KeyId"] for key in kms.list_keys()["Keys"]}
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases[f"alias/{PREFIX}"] == key_id


def test_batch_ecs_the_lambda_and_the_roles_are_wired_to_each_other(account, provisioned):
    network, storage = account.outputs(PREFIX, "network"), account.outputs(PREFIX, "storage")
    compute = account.outputs(PREFIX, "compute")
    roles = {
        role["Arn"]
        for role in account.client("iam").list_roles(PathPrefix="/mrictl/test/")["Roles"]
    }
    assert len(roles) == 6  # preprocess execution and task, autoscale, Batch service, instance, job

    batch = account.client("batch")
    [queue] = batch.describe_job_queues(jobQueues=[compute["BatchJobQueueArn"]])["jobQueues"]
    environments = [entry["computeEnvironment"] for entry in queue["computeEnvironmentOrder"]]
    described = batch.describe_compute_environments(computeEnvironments=environments)
    for environment in described["computeEnvironments"]:
        resources = environment["computeResources"]
        assert sorted(resources["subnets"]) == sorted(network["SubnetIds"].split(","))
        assert resources["securityGroupIds"] == [network["WorkloadSecurityGroupId"]]
        assert environment["serviceRole"] in roles
    for output in ("ReconJobDefinitionArn", "TrainJobDefinitionArn"):
        [definition] = batch.describe_job_definitions(jobDefinitions=[compute[output]])[
            "jobDefinitions"
        ]
        container = definition["containerProperties"]
        assert container["command"] == ["mrictl", "worker", "run", "--job", "Ref::job_id"]
        assert container["jobRoleArn"] in roles
        assert container["image"] == f"{compute['RepositoryUri']}:0.1.0-gpu"  # ImageTag's default

    ecs = account.client("ecs")
    [cluster] = ecs.describe_clusters(clusters=[compute["EcsClusterName"]])["clusters"]
    [preprocess] = ecs.describe_services(
        cluster=cluster["clusterArn"], services=[compute["PreprocessServiceName"]]
    )["services"]
    assert preprocess["desiredCount"] == 0
    assert preprocess["serviceName"] == compute["PreprocessServiceName"]
    # (moto drops the service's launch type and network configuration: test_templates.py.)
    task = ecs.describe_task_definition(taskDefinition=preprocess["taskDefinition"])
    [container] = task["taskDefinition"]["containerDefinitions"]
    assert container["command"] == ["mrictl", "worker", "run", "--stage", "preprocess"]
    assert container["image"] == f"{compute['RepositoryUri']}:0.1.0-cpu"
    environment = {item["name"]: item["value"] for item in container["environment"]}
    assert environment["MRICTL_AWS_JOB_TABLE"] == account.outputs(PREFIX, "jobs")["JobTableName"]
    assert environment["MRICTL_AWS_PREPROCESS_QUEUE_URL"] == storage["PreprocessQueueUrl"]
    assert environment["MRICTL_AWS_RAW_BUCKET"] == storage["RawBucketName"]

    function = account.client("lambda").get_function(FunctionName=compute["AutoscaleFunctionName"])
    configuration = function["Configuration"]
    assert configuration["Handler"] == "mrictl.autoscale.handler"
    assert configuration["Role"] in roles
    variables = configuration["Environment"]["Variables"]
    assert variables["MRICTL_AUTOSCALE_QUEUE_URL"] == storage["PreprocessQueueUrl"]
    assert variables["MRICTL_AUTOSCALE_SERVICE"] == compute["PreprocessServiceName"]
    package = build_autoscale_package()
    stored = account.client("s3").get_object(
        Bucket=storage["ReconstructedBucketName"], Key=package.key
    )
    assert stored["Body"].read() == package.data


def test_the_outputs_are_saved_for_later_commands(account, provisioned, monkeypatch):
    from mrictl.config import load_settings

    monkeypatch.setenv("XDG_CONFIG_HOME", str(account.config_home))
    path = account.config_home / "mrictl" / "aws" / f"{PREFIX}.json"
    saved = json.loads(path.read_text())
    assert saved["region"] == REGION and saved["stack_prefix"] == PREFIX
    assert {name: stack["status"] for name, stack in saved["stacks"].items()} == {
        stack: "CREATE_COMPLETE" for stack in CORE_STACKS
    }
    outputs = load_settings(aws={"stack_prefix": PREFIX}).aws.outputs
    assert outputs["RawBucketName"] == account.outputs(PREFIX, "storage")["RawBucketName"]
    assert outputs["BatchJobQueueArn"] == account.outputs(PREFIX, "compute")["BatchJobQueueArn"]
    assert load_settings(aws={"stack_prefix": "mrictl-other"}).aws.outputs == {}


def test_a_second_run_changes_nothing_and_says_so(account, provisioned, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(account.config_home))
    before = stack_events(account, PREFIX)
    outcome = account.cli("provision", "--yes", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert document["changed"] is False and document["results"] == []
    assert {s["action"] for s in document["plan"]} == {"unchanged"}
    assert stack_events(account, PREFIX) == before  # no stack was touched
    for stack in CORE_STACKS:
        assert account.stack(f"{PREFIX}-{stack}")["StackStatus"] == "CREATE_COMPLETE"
    human = account.cli("provision")  # no --yes needed when there is nothing to do
    assert human.exit_code == 0
    assert "no changes: the 4 stacks are up to date" in human.output


def on_a_tty(monkeypatch) -> None:
    """The commands believe they talk to a person (CliRunner feeds the answers)."""
    import typer

    from mrictl.output import Output

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(Output, "interactive", property(lambda self: True))
    monkeypatch.setattr(typer, "get_text_stream", lambda name: Terminal())


def answered(account: Account, answers: str, *args: str, prefix: str = PREFIX) -> Outcome:
    from typer.testing import CliRunner

    from mrictl.cli.main import app

    where = ("--endpoint-url", account.endpoint, "--region", REGION, "--stack-prefix", prefix)
    result = CliRunner().invoke(app, [*args, *where], input=answers, env={"NO_COLOR": "1"})
    return Outcome(result.exit_code, result.stdout, result.stderr, result.output)


def test_on_a_tty_provision_asks_and_deleting_data_asks_again(account, provisioned, monkeypatch):
    on_a_tty(monkeypatch)
    declined = answered(account, "n\n", "provision", prefix="mrictl-tty")
    assert declined.exit_code == ExitCode.USAGE
    assert "apply to network, storage, jobs, compute?" in declined.stdout
    assert account.stack("mrictl-tty-network") is None

    mistyped = answered(account, "y\nmrictl-prod\n", "provision", "destroy", "--delete-data")
    assert mistyped.exit_code == ExitCode.USAGE
    assert f"type {PREFIX} to confirm" in mistyped.stdout
    assert "not confirmed: nothing deleted" in mistyped.stderr
    for stack in CORE_STACKS:
        assert account.stack(f"{PREFIX}-{stack}")["StackStatus"] == "CREATE_COMPLETE"


def test_status_reports_every_stack_and_its_outputs(account, provisioned):
    outcome = account.cli("provision", "status", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert document["stack_prefix"] == PREFIX and document["region"] == REGION
    assert {name: s["status"] for name, s in document["stacks"].items()} == {
        **{stack: "CREATE_COMPLETE" for stack in CORE_STACKS},
        "fsx": "absent",
    }
    storage = document["stacks"]["storage"]["outputs"]
    assert storage == account.outputs(PREFIX, "storage")


def test_a_replacement_of_a_data_resource_is_shown_loudly(account, provisioned, monkeypatch):
    replaced = service.ResourceChange("RawBucket", "AWS::S3::Bucket", "Modify", "True")
    monkeypatch.setattr(service, "_change_set", lambda *args, **kwargs: (replaced,))
    outcome = account.cli("provision", "--archive-days", "60", "--dry-run")
    assert outcome.exit_code == 0, outcome.stderr
    assert "storage  update; parameters: ArchiveDays" in outcome.output
    assert "WARNING: storage: replace RawBucket (AWS::S3::Bucket)  <- HOLDS DATA" in outcome.output
    document = account.cli("provision", "--archive-days", "60", "--dry-run", "--json").json()
    [storage] = [s for s in document["plan"] if s["stack"] == "storage"]
    assert storage["changes"][0]["loses_data"] is True
    assert document["data_at_risk"] == [f"storage: {replaced.line()}"]


def test_resource_changes_that_lose_data():
    def loses(kind: str, action: str, replacement: str = "") -> bool:
        return service.ResourceChange("X", kind, action, replacement).loses_data

    assert loses("AWS::DynamoDB::Table", "Modify", "Conditional")
    assert loses("AWS::KMS::Key", "Remove")
    assert not loses("AWS::S3::Bucket", "Modify", "False")
    assert not loses("AWS::Lambda::Function", "Modify", "True")


# --- Updating -------------------------------------------------------------------------------


def patched_templates(tmp_path: Path, **edits: tuple[str, str]) -> Path:
    """A copy of infra_templates/ with text replaced in some templates."""
    folder = tmp_path / "templates"
    shutil.copytree(TEMPLATES, folder)
    for stack, (old, new) in edits.items():
        path = folder / f"{stack}.yaml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
    return folder


@pytest.mark.slow
def test_a_flag_updates_its_stack_and_is_kept_by_later_runs(account, monkeypatch, tmp_path):
    prefix = "mrictl-upd"
    assert account.cli("provision", "--yes", "--json", prefix=prefix).exit_code == 0
    plan = account.cli("provision", "--max-vcpus", "128", "--dry-run", "--json", prefix=prefix)
    assert [(s["stack"], s["action"], s["changed_parameters"]) for s in plan.json()["plan"]] == [
        ("network", "unchanged", []),
        ("storage", "unchanged", []),
        ("jobs", "unchanged", []),
        ("compute", "update", ["MaxvCpus"]),
    ]
    outcome = account.cli("provision", "--max-vcpus", "128", "--yes", "--json", prefix=prefix)
    assert outcome.exit_code == 0, outcome.stderr
    assert [(r["stack"], r["action"]) for r in outcome.json()["results"]] == [
        ("network", "unchanged"),
        ("storage", "unchanged"),
        ("jobs", "unchanged"),
        ("compute", "updated"),
    ]
    assert account.stack(f"{prefix}-compute")["StackStatus"] == "UPDATE_COMPLETE"
    # Without the flag the deployed value stays: nothing to change.
    assert account.cli("provision", "--yes", "--json", prefix=prefix).json()["changed"] is False

    # A changed template is an update, with the resources its change set names.
    folder = patched_templates(tmp_path, compute=("MemorySize: 256", "MemorySize: 512"))
    monkeypatch.setattr(cloudformation, "default_templates_dir", lambda: folder)
    document = account.cli("provision", "--dry-run", "--json", prefix=prefix).json()
    [compute] = [s for s in document["plan"] if s["stack"] == "compute"]
    assert compute["action"] == "update" and compute["template_changed"] is True
    assert [(c["logical_id"], c["action"]) for c in compute["changes"]] == [
        ("AutoscaleFunction", "Modify")
    ]


# moto skips AWS::FSx::* and fails a GetAtt on it: the fsx stack's outputs, as literals.
FSX_DNS_NAME = "fs-0123456789abcdef0.fsx.us-east-1.amazonaws.com"
FSX_MOUNT_NAME = "abcdefgh"
LITERAL_FSX_OUTPUTS = f"""Outputs:
  FileSystemDnsName:
    Value: {FSX_DNS_NAME}
  FileSystemMountName:
    Value: {FSX_MOUNT_NAME}
  PreprocessedPath:
    Value: /preprocessed
"""


@pytest.mark.slow
def test_the_fsx_stack_reaches_compute_on_the_next_run(account, monkeypatch, tmp_path):
    """compute comes before fsx: the run that creates fsx leaves compute without the mount, the
    next one passes fsx's outputs and compute mounts it (instances and recon/train jobs)."""
    prefix = "mrictl-lus"
    text = (TEMPLATES / "fsx.yaml").read_text()
    folder = patched_templates(tmp_path, fsx=(text[text.index("Outputs:") :], LITERAL_FSX_OUTPUTS))
    monkeypatch.setattr(cloudformation, "default_templates_dir", lambda: folder)
    first = account.cli("provision", "--with-fsx", "--yes", "--json", prefix=prefix)
    assert first.exit_code == 0, first.stderr
    assert [r["stack"] for r in first.json()["results"]] == [*CORE_STACKS, "fsx"]
    assert deployed_parameters(account, prefix, "compute", "FsxDnsName", "FsxMountName") == ["", ""]

    plan = account.cli("provision", "--dry-run", "--json", prefix=prefix).json()["plan"]
    assert [(s["stack"], s["action"], s["changed_parameters"]) for s in plan] == [
        ("network", "unchanged", []),
        ("storage", "unchanged", []),
        ("jobs", "unchanged", []),
        ("compute", "update", ["FsxDnsName", "FsxMountName"]),
        ("fsx", "unchanged", []),
    ]
    second = account.cli("provision", "--yes", "--json", prefix=prefix)
    assert second.exit_code == 0, second.stderr
    assert [(r["stack"], r["action"]) for r in second.json()["results"]][3:] == [
        ("compute", "updated"),
        ("fsx", "unchanged"),
    ]
    assert deployed_parameters(account, prefix, "compute", "FsxDnsName", "FsxMountName") == [
        FSX_DNS_NAME,
        FSX_MOUNT_NAME,
    ]
    # moto's stack update leaves the launch template and the job definitions as they were
    # created: tests/infra/test_moto_stacks.py creates compute with these values and reads them.
    assert account.cli("provision", "--yes", "--json", prefix=prefix).json()["changed"] is False


def deployed_parameters(account: Account, prefix: str, stack: str, *names: str) -> list[str]:
    [found] = account.client("cloudformation").describe_stacks(StackName=f"{prefix}-{stack}")[
        "Stacks"
    ]
    values = {p["ParameterKey"]: p["ParameterValue"] for p in found["Parameters"]}
    return [values[name] for name in names]


def test_compute_mounts_the_fsx_stack_only_when_its_outputs_are_recorded():
    prefix = parse_stack_prefix("mrictl-test")
    outputs = {
        stack: {
            key: f"{stack}.{key}" for key in load_template(TEMPLATES / f"{stack}.yaml")["Outputs"]
        }
        for stack in STACK_ORDER
    }
    outputs["fsx"] |= {"FileSystemDnsName": FSX_DNS_NAME, "FileSystemMountName": FSX_MOUNT_NAME}
    assert LATER_INPUTS == {"compute": ("fsx",)}
    options = ProvisionOptions()
    with_fsx = stack_parameters("compute", prefix, options, outputs)
    assert (with_fsx["FsxDnsName"], with_fsx["FsxMountName"]) == (FSX_DNS_NAME, FSX_MOUNT_NAME)
    # No fsx stack, or one without its outputs yet: both empty, so compute drops the mount.
    for fsx in (None, {}, {"FileSystemDnsName": FSX_DNS_NAME}):
        given = {k: v for k, v in outputs.items() if k != "fsx"}
        if fsx is not None:
            given["fsx"] = fsx
        without = stack_parameters("compute", prefix, options, given)
        assert (without["FsxDnsName"], without["FsxMountName"]) == ("", ""), fsx
    # The provisioner gives compute the fsx stack as deployed when the run starts.
    deployed = {
        "fsx": {
            "StackStatus": "UPDATE_COMPLETE",
            "Outputs": [{"OutputKey": "FileSystemMountName", "OutputValue": FSX_MOUNT_NAME}],
        },
        "network": {"StackStatus": "CREATE_COMPLETE", "Outputs": []},
    }
    assert service._later_inputs(deployed) == {"fsx": {"FileSystemMountName": FSX_MOUNT_NAME}}
    deployed["fsx"]["StackStatus"] = "ROLLBACK_COMPLETE"
    assert service._later_inputs(deployed) == {}


# --- Failing -------------------------------------------------------------------------------


def test_a_failing_stack_is_one_line_naming_what_failed(account):
    # A table left behind under the jobs stack's name (it is retained on deletion).
    account.client("dynamodb").create_table(
        TableName="mrictl-fail-jobs",
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    outcome = account.cli("provision", "--yes", "--json", prefix="mrictl-fail")
    assert outcome.exit_code == ExitCode.BACKEND
    message = outcome.json()["error"]["message"]
    assert message.startswith("mrictl-fail-jobs create failed: ")
    assert "Table already exists: mrictl-fail-jobs" in message
    assert outcome.stderr.count("error:") == 1 and "Traceback" not in outcome.stderr
    # What was created before the failure is saved.
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "mrictl" / "aws" / "mrictl-fail.json"
    assert set(json.loads(path.read_text())["stacks"]) >= {"network", "storage"}


def test_a_rollback_names_the_first_failing_resource_and_its_reason():
    """Real CloudFormation fails a stack later, through its events (moto fails the call)."""
    import boto3
    from botocore.stub import Stubber

    cloudformation = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("cloudformation")
    stack_id = f"arn:aws:cloudformation:{REGION}:123456789012:stack/mrictl-x-jobs/1"
    moment = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def event(number: int, logical_id: str, kind: str, status: str, reason: str = "") -> dict:
        found = {
            "StackId": stack_id,
            "EventId": f"e{number}",
            "StackName": "mrictl-x-jobs",
            "LogicalResourceId": logical_id,
            "ResourceType": kind,
            "ResourceStatus": status,
            "Timestamp": moment + datetime.timedelta(seconds=number),
        }
        return {**found, "ResourceStatusReason": reason} if reason else found

    stack_kind, table, alarm = "AWS::CloudFormation::Stack", "AWS::DynamoDB::Table", "AWS::X::Y"
    first = [  # newest first, as CloudFormation lists them
        event(4, "mrictl-x-jobs", stack_kind, "ROLLBACK_IN_PROGRESS", "failed: [JobTable]"),
        event(3, "Other", alarm, "CREATE_FAILED", "Resource creation cancelled"),
        event(2, "JobTable", table, "CREATE_FAILED", "Table already exists: mrictl-x-jobs"),
        event(1, "JobTable", table, "CREATE_IN_PROGRESS"),
        event(0, "mrictl-x-jobs", stack_kind, "CREATE_IN_PROGRESS", "User Initiated"),
    ]
    later = [event(5, "mrictl-x-jobs", stack_kind, "ROLLBACK_COMPLETE"), *first]

    def stack(status: str) -> dict:
        return {
            "Stacks": [
                {
                    "StackId": stack_id,
                    "StackName": "mrictl-x-jobs",
                    "CreationTime": moment,
                    "StackStatus": status,
                }
            ]
        }

    seen, sleeps = [], []
    with Stubber(cloudformation) as stub:
        stub.add_response("describe_stacks", stack("ROLLBACK_IN_PROGRESS"))
        stub.add_response("describe_stack_events", {"StackEvents": first})
        stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"))
        stub.add_response("describe_stack_events", {"StackEvents": later})
        with pytest.raises(MrictlError) as caught:
            wait_for_stack(
                cloudformation,
                stack_id,
                "jobs",
                "mrictl-x-jobs",
                "create",
                after=None,
                on_event=seen.append,
                poll_s=5.0,
                sleep=sleeps.append,
            )
    assert caught.value.exit_code == ExitCode.BACKEND
    assert str(caught.value) == (
        "mrictl-x-jobs create failed (ROLLBACK_COMPLETE): JobTable (AWS::DynamoDB::Table) "
        "CREATE_FAILED: Table already exists: mrictl-x-jobs"
    )
    assert [e.status for e in seen] == [
        "CREATE_IN_PROGRESS",
        "CREATE_IN_PROGRESS",
        "CREATE_FAILED",
        "CREATE_FAILED",
        "ROLLBACK_IN_PROGRESS",
        "ROLLBACK_COMPLETE",
    ]
    assert sleeps == [5.0]


def test_usage_errors_are_refused_before_any_call(account):
    for prefix in ("mrictl", "a-prod", "a-very-long-project-prod", "mrictl-production"):
        outcome = account.cli("provision", "--dry-run", "--json", prefix=prefix)
        assert outcome.exit_code == ExitCode.USAGE, prefix
        assert "<project>-<environment>" in outcome.json()["error"]["message"]
    outcome = account.cli("provision", "--vpc-id", "vpc-0123", "--dry-run")
    assert outcome.exit_code == ExitCode.USAGE and "--subnet-ids" in outcome.stderr
    outcome = account.cli("provision", "--log-retention-days", "2", "--dry-run")
    assert outcome.exit_code == ExitCode.USAGE and "--log-retention-days" in outcome.stderr
    outcome = account.cli("provision", "--image-tag", "0.1.0-gpu", "--dry-run")
    assert outcome.exit_code == ExitCode.USAGE and "base tag" in outcome.stderr


def test_no_credentials_is_a_backend_error(account, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    outcome = account.cli("provision", "status", "--json")
    assert outcome.exit_code == ExitCode.BACKEND
    assert outcome.json()["error"]["message"].startswith("no AWS credentials")


# --- Destroying ------------------------------------------------------------------------------


@pytest.mark.slow
def test_destroy_keeps_the_data_unless_asked_to_delete_it(account, tmp_path, monkeypatch):
    prefix = "mrictl-keep"
    ec2 = account.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24")["Subnet"]["SubnetId"]
        for i in range(2)
    ]
    # moto skips AWS::FSx::*, and a GetAtt on a skipped resource fails: no such outputs here.
    text = (TEMPLATES / "fsx.yaml").read_text()
    fsx_outputs = text[text.index("Outputs:") :]
    folder = patched_templates(
        tmp_path, fsx=(fsx_outputs, "Outputs:\n  PreprocessedPath:\n    Value: /preprocessed\n")
    )
    monkeypatch.setattr(cloudformation, "default_templates_dir", lambda: folder)
    created = account.cli(
        "provision",
        *("--vpc-id", vpc, "--subnet-ids", ",".join(subnets), "--with-fsx"),
        *("--yes", "--json"),
        prefix=prefix,
    )
    assert created.exit_code == 0, created.stderr
    assert [r["stack"] for r in created.json()["results"]] == [*CORE_STACKS, "fsx"]
    storage, jobs = account.outputs(prefix, "storage"), account.outputs(prefix, "jobs")
    compute = account.outputs(prefix, "compute")
    s3 = account.client("s3")
    s3.put_object(
        Bucket=storage["RawBucketName"], Key="uploads/scan-0123456789abcdef.tar", Body=b"x"
    )

    assert account.cli("provision", "destroy", prefix=prefix).exit_code == ExitCode.USAGE
    outcome = account.cli("provision", "destroy", "--yes", "--json", prefix=prefix)
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert (document["delete"], document["keep"]) == (
        ["fsx", "compute", "network"],
        ["storage", "jobs"],
    )
    assert [(r["stack"], r["action"]) for r in document["results"]] == [
        ("fsx", "deleted"),
        ("compute", "deleted"),
        ("network", "deleted"),
        ("storage", "kept"),
        ("jobs", "kept"),
    ]
    for stack in ("fsx", "compute", "network"):
        assert account.stack(f"{prefix}-{stack}") is None
    functions = account.client("lambda").list_functions()["Functions"]
    assert compute["AutoscaleFunctionName"] not in {f["FunctionName"] for f in functions}
    assert not account.client("iam").list_roles(PathPrefix="/mrictl/keep/")["Roles"]
    kept = s3.get_object(Bucket=storage["RawBucketName"], Key="uploads/scan-0123456789abcdef.tar")
    assert kept["Body"].read() == b"x"
    assert account.client("dynamodb").describe_table(TableName=jobs["JobTableName"])
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "mrictl" / "aws" / f"{prefix}.json"
    assert set(json.loads(path.read_text())["stacks"]) == {"storage", "jobs"}

    outcome = account.cli("provision", "destroy", "--delete-data", "--json", prefix=prefix)
    assert outcome.exit_code == ExitCode.USAGE  # off a TTY, --delete-data needs --yes too
    outcome = account.cli("provision", "destroy", "--delete-data", "--yes", "--json", prefix=prefix)
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    assert document["delete"] == ["jobs", "storage"]
    assert f"table {jobs['JobTableName']}" in document["data"]
    for stack in ("storage", "jobs"):
        assert account.stack(f"{prefix}-{stack}") is None
    names = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    assert not {n for n in names if n.startswith(f"{prefix}-")}
    assert jobs["JobTableName"] not in account.client("dynamodb").list_tables()["TableNames"]
    assert key_state(storage["DataKeyArn"]) == "PendingDeletion"
    assert not path.exists()
    nothing = account.cli("provision", "destroy", "--yes", "--json", prefix=prefix)
    assert nothing.exit_code == 0 and nothing.json()["delete"] == []


def key_state(key_arn: str) -> str:
    """The key's state, read from the in-process server's backend: moto's describe_key fails
    on a key that CloudFormation made (it keeps the key policy as a dict, not JSON text)."""
    from moto.backends import get_backend

    account_id, key_id = key_arn.split(":")[4], key_arn.rsplit("/", 1)[1]
    return get_backend("kms")[account_id][REGION].keys[key_id].key_state


# --- Pure parts ------------------------------------------------------------------------------


def test_log_retention_days_are_the_ones_cloudwatch_accepts():
    declared = load_template(TEMPLATES / "compute.yaml")["Parameters"]["LogRetentionDays"]
    assert tuple(declared["AllowedValues"]) == LOG_RETENTION_DAYS


def test_the_stack_prefix_splits_on_its_last_dash():
    prefix = parse_stack_prefix("my-lab-prod")
    assert (prefix.project, prefix.environment) == ("my-lab", "prod")
    assert prefix.stack_name("jobs") == "my-lab-prod-jobs"
    with pytest.raises(MrictlError, match="2-12 lower-case") as caught:
        parse_stack_prefix("Mrictl-prod")
    assert caught.value.exit_code == ExitCode.USAGE


def test_each_stack_takes_only_its_inputs_outputs_and_the_templates_declare_them():
    prefix = parse_stack_prefix("mrictl-test")
    outputs = {
        stack: {
            key: f"{stack}.{key}" for key in load_template(TEMPLATES / f"{stack}.yaml")["Outputs"]
        }
        for stack in STACK_ORDER
    }
    outputs["network"]["SubnetIds"] = "subnet-a,subnet-b"
    options = ProvisionOptions(vpc_id="vpc-1", subnet_ids=("subnet-a", "subnet-b"), use_spot=True)
    for stack in STACK_ORDER:
        inputs = {name: outputs[name] for name in INPUTS[stack]}
        parameters = stack_parameters(stack, prefix, options, inputs, autoscale_code_key="k")
        declared = load_template(TEMPLATES / f"{stack}.yaml")["Parameters"]
        assert set(parameters) <= set(declared), stack
        for name in INPUTS[stack]:
            with pytest.raises(KeyError):
                stack_parameters(
                    stack, prefix, options, {k: v for k, v in inputs.items() if k != name}
                )
    compute = stack_parameters("compute", prefix, options, outputs, autoscale_code_key="k")
    assert compute["SubnetIds"] == "subnet-a,subnet-b" and compute["UseSpot"] == "true"
    assert compute["AutoscaleCodeBucket"] == "storage.ReconstructedBucketName"
    assert "MaxvCpus" not in compute  # not given: the deployed value or the default stays
    assert stack_parameters("fsx", prefix, options, outputs)["SubnetId"] == "subnet-a"
    every_output = [key for stack in STACK_ORDER for key in outputs[stack]]
    assert len(every_output) == len(set(every_output))  # flat outputs lose nothing


def test_the_settings_file_keeps_the_gateways_record(tmp_path):
    from mrictl.config import read_outputs

    path = Path(os.environ["XDG_CONFIG_HOME"]) / "mrictl" / "aws" / "mrictl-test.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"gateway": {"share": "arn:share"}}))
    assert read_outputs("mrictl-test") == {}
    prefix = parse_stack_prefix("mrictl-test")
    deployed = {
        "jobs": {
            "StackStatus": "CREATE_COMPLETE",
            "Outputs": [{"OutputKey": "JobTableName", "OutputValue": "t"}],
        }
    }
    stack_settings.save_stacks(path, prefix, REGION, deployed)
    document = json.loads(path.read_text())
    assert document["gateway"] == {"share": "arn:share"}
    assert read_outputs("mrictl-test") == {"JobTableName": "t"}
    stack_settings.save_stacks(path, prefix, REGION, {})
    assert json.loads(path.read_text())["gateway"] == {"share": "arn:share"}
    assert not list(path.parent.glob(".*partial"))
