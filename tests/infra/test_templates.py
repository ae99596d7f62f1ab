"""The CloudFormation templates: what the checkers say, what our rules catch, and the properties
moto ignores (lifecycle, notifications, retry strategies ...), read from the parsed YAML."""

from __future__ import annotations

import copy
import fnmatch
import json
import subprocess
import sys

import pytest

from mrictl import keys
from mrictl.errors import ExitCode
from mrictl.infra.validate import (
    REPOSITORY,
    cfn_lint_command,
    cfn_lint_findings,
    check_template,
    check_templates,
    checkov_command,
    checkov_environment,
    checkov_findings,
    find_cfn_lint,
    find_checkov,
    load_template,
    template_paths,
)
from tests.mrictl.cli_helpers import invoke

TEMPLATES = REPOSITORY / "infra_templates"
STACKS = ("network", "storage", "jobs", "compute", "fsx")


@pytest.fixture(scope="module")
def template():
    loaded = {name: load_template(TEMPLATES / f"{name}.yaml") for name in STACKS}
    return lambda name: copy.deepcopy(loaded[name])


def resources(document: dict, kind: str) -> dict[str, dict]:
    return {k: v for k, v in document["Resources"].items() if v["Type"] == kind}


def properties(document: dict, logical_id: str) -> dict:
    return document["Resources"][logical_id]["Properties"]


def run(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL
    )


# --- The checkers --------------------------------------------------------------------------


def test_the_folder_holds_one_template_per_stack():
    assert [path.stem for path in template_paths(TEMPLATES)] == sorted(STACKS)


@pytest.mark.slow
def test_every_template_passes_cfn_lint():
    cfn_lint = find_cfn_lint()
    if cfn_lint is None:
        pytest.skip("cfn-lint is not installed (pip install -e '.[test]')")
    completed = run(cfn_lint_command(cfn_lint, template_paths(TEMPLATES)))
    assert [finding.line() for finding in cfn_lint_findings(completed.stdout)] == []
    assert completed.returncode == 0, completed.stderr


@pytest.mark.slow
def test_every_template_passes_checkov_and_each_skip_says_why():
    checkov = find_checkov()
    if checkov is None:
        pytest.skip("checkov's own venv is absent (.ci/run makes .venv-checkov)")
    completed = run(checkov_command(checkov, template_paths(TEMPLATES)), checkov_environment())
    assert [finding.line() for finding in checkov_findings(completed.stdout)] == []
    assert completed.returncode == 0, completed.stderr
    assert '"skipped": 4' in completed.stdout  # the four skips README.md explains


def test_cfn_lint_reports_become_one_line_findings():
    match = {
        "Filename": "/x/storage.yaml",
        "Level": "Error",
        "Message": "'Enable' is not one of\n ['Enabled', 'Suspended']",
        "Rule": {"Id": "E3030"},
        "Location": {"Path": ["Resources", "RawBucket", "Properties"], "Start": {"LineNumber": 12}},
    }
    [finding] = cfn_lint_findings(json.dumps([match]))
    assert finding.line() == (
        "storage.yaml: RawBucket: line 12: 'Enable' is not one of ['Enabled', 'Suspended']"
        " (cfn-lint E3030)"
    )


def test_checkov_reports_failures_and_skips_without_a_reason():
    failed = {
        "check_id": "CKV_AWS_7",
        "check_name": "Ensure rotation for customer created CMKs is enabled",
        "file_abs_path": "/x/storage.yaml",
        "resource": "AWS::KMS::Key.DataKey",
    }
    skipped = {
        "check_id": "CKV_AWS_18",
        "check_name": "Ensure the S3 bucket has access logging enabled",
        "file_abs_path": "/x/storage.yaml",
        "resource": "AWS::S3::Bucket.AccessLogBucket",
        "check_result": {"result": "SKIPPED", "suppress_comment": "No comment provided"},
    }
    results = {"failed_checks": [failed], "skipped_checks": [skipped], "parsing_errors": []}
    report = json.dumps({"check_type": "cloudformation", "results": results})
    assert [finding.line() for finding in checkov_findings(report)] == [
        "storage.yaml: DataKey: Ensure rotation for customer created CMKs is enabled"
        " (checkov CKV_AWS_7)",
        "storage.yaml: AccessLogBucket: skipped without a written reason (checkov CKV_AWS_18)",
    ]


# --- Our rules -----------------------------------------------------------------------------


def test_our_rules_pass_on_every_template():
    assert [finding.line() for finding in check_templates(template_paths(TEMPLATES))] == []


def statement(document: dict, policy: str, sid: str) -> dict:
    statements = properties(document, policy)["PolicyDocument"]["Statement"]
    return next(s for s in statements if s.get("Sid") == sid)


def drop_statement(document: dict, policy: str, sid: str) -> None:
    policy_document = properties(document, policy)["PolicyDocument"]
    policy_document["Statement"] = [s for s in policy_document["Statement"] if s.get("Sid") != sid]


def problems(document: dict) -> set[tuple[str, str]]:
    return {(finding.resource, finding.rule) for finding in check_template("x.yaml", document)}


def test_a_bucket_without_the_tls_denials_is_caught(template):
    storage = template("storage")
    drop_statement(storage, "RawBucketPolicy", "DenyInsecureTransport")
    [finding] = check_template("storage.yaml", storage)
    assert finding.line() == (
        "storage.yaml: RawBucket: its policy does not deny s3:* on the bucket and its objects"
        " when aws:SecureTransport is false (mrictl bucket-tls)"
    )
    drop_statement(storage, "RawBucketPolicy", "DenyTlsBelow12")
    [finding] = check_template("storage.yaml", storage)
    assert finding.message == "no AWS::S3::BucketPolicy denies plain-HTTP and TLS < 1.2 access"
    del storage["Resources"]["RawBucketPolicy"]
    assert check_template("storage.yaml", storage) == [finding]


@pytest.mark.parametrize(
    "weaken",
    [
        # A deny that spares the objects, or lets TLS 1.1 through, or denies only some actions.
        lambda s: statement(s, "RawBucketPolicy", "DenyInsecureTransport").update(
            Resource=[{"Fn::GetAtt": ["RawBucket", "Arn"]}]
        ),
        lambda s: statement(s, "RawBucketPolicy", "DenyTlsBelow12")["Condition"].update(
            NumericLessThan={"s3:TlsVersion": "1.1"}
        ),
        lambda s: statement(s, "RawBucketPolicy", "DenyTlsBelow12").update(Action="s3:GetObject"),
        lambda s: statement(s, "RawBucketPolicy", "DenyInsecureTransport").update(
            Principal={"Service": "s3.amazonaws.com"}
        ),
    ],
    ids=["bucket-only", "tls-1.1", "one-action", "one-principal"],
)
def test_a_partial_tls_denial_is_caught(template, weaken):
    storage = template("storage")
    weaken(storage)
    assert problems(storage) == {("RawBucket", "bucket-tls")}


def test_a_queue_without_a_dead_letter_queue_is_caught(template):
    storage = template("storage")
    del properties(storage, "ReconQueue")["RedrivePolicy"]
    # The recon queue, and its former dead-letter queue, which nothing feeds any more.
    assert problems(storage) == {
        ("ReconQueue", "queue-dead-letter"),
        ("ReconDeadLetterQueue", "queue-dead-letter"),
    }


@pytest.mark.parametrize(
    ("weaken", "expected"),
    [
        (
            lambda s: properties(s, "RawBucket")["VersioningConfiguration"].update(
                Status="Suspended"
            ),
            ("RawBucket", "bucket-versioning"),
        ),
        (
            lambda s: properties(s, "PreprocessedBucket")["PublicAccessBlockConfiguration"].update(
                RestrictPublicBuckets=False
            ),
            ("PreprocessedBucket", "bucket-public-access"),
        ),
        (
            lambda s: properties(s, "ReconstructedBucket")["BucketEncryption"][
                "ServerSideEncryptionConfiguration"
            ][0].update(BucketKeyEnabled=False),
            ("ReconstructedBucket", "bucket-encryption"),
        ),
        (
            lambda s: properties(s, "AccessLogBucket").update(
                BucketEncryption=properties(s, "RawBucket")["BucketEncryption"]
            ),
            ("AccessLogBucket", "bucket-encryption"),
        ),
        (
            lambda s: properties(s, "RawBucket").pop("OwnershipControls"),
            ("RawBucket", "bucket-ownership"),
        ),
        (
            lambda s: properties(s, "PreprocessQueue").pop("KmsMasterKeyId"),
            ("PreprocessQueue", "queue-encryption"),
        ),
        (
            lambda s: properties(s, "PreprocessDeadLetterQueue").update(
                KmsMasterKeyId="alias/aws/sqs"
            ),
            ("PreprocessDeadLetterQueue", "queue-encryption"),
        ),
        (
            lambda s: s["Resources"]["AccessLogBucket"]["Metadata"]["checkov"]["skip"][0].pop(
                "comment"
            ),
            ("AccessLogBucket", "suppression-reason"),
        ),
        (
            lambda s: s["Resources"]["RawBucket"].update(
                Metadata={"cfn-lint": {"config": {"ignore_checks": ["W3045"]}}}
            ),
            ("RawBucket", "suppression-reason"),
        ),
    ],
    ids=[
        "unversioned",
        "public",
        "no-bucket-key",
        "kms-log-bucket",
        "acls",
        "plain-queue",
        "aws-managed-key",
        "checkov-skip",
        "cfn-lint-ignore",
    ],
)
def test_each_weakened_setting_is_caught(template, weaken, expected):
    storage = template("storage")
    weaken(storage)
    assert problems(storage) == {expected}


@pytest.mark.slow
def test_validate_names_each_finding_in_a_mutated_copy(tmp_path):
    if find_cfn_lint() is None or find_checkov() is None:
        pytest.skip("cfn-lint or checkov's own venv is absent")
    text = (TEMPLATES / "storage.yaml").read_text()
    mutated = text.replace("ReceiveMessageWaitTimeSeconds: 20\n      RedrivePolicy:", "RP:", 1)
    (tmp_path / "storage.yaml").write_text(mutated.replace("EnableKeyRotation: true", ""))
    outcome = invoke("infra", "validate", "--templates", str(tmp_path), "--json")
    assert outcome.exit_code == ExitCode.BAD_INPUT, outcome.stderr
    found = {(f["checker"], f["resource"], f["rule"]) for f in outcome.json()["findings"]}
    assert ("mrictl", "PreprocessQueue", "queue-dead-letter") in found
    assert ("checkov", "DataKey", "CKV_AWS_7") in found  # key rotation
    assert ("cfn-lint", "PreprocessQueue", "E3002") in found  # RP is no property
    lines = invoke("infra", "validate", "--templates", str(tmp_path)).stdout.splitlines()
    assert "storage.yaml: PreprocessQueue: no RedrivePolicy" in "\n".join(lines)
    assert lines[-1].endswith("findings in 1 templates")


@pytest.mark.slow
def test_validate_is_clean_on_the_templates():
    if find_cfn_lint() is None or find_checkov() is None:
        pytest.skip("cfn-lint or checkov's own venv is absent")
    outcome = invoke("infra", "validate", "--json")
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    assert outcome.json()["clean"] is True
    assert outcome.json()["templates"] == [f"{name}.yaml" for name in sorted(STACKS)]


def test_validate_without_checkov_says_how_to_install_it(monkeypatch, tmp_path):
    if find_cfn_lint() is None:
        pytest.skip("cfn-lint is not installed")
    monkeypatch.setenv("MRICTL_CHECKOV", str(tmp_path / "no-checkov"))
    outcome = invoke("infra", "validate", "--json")
    assert outcome.exit_code == ExitCode.USAGE
    assert "pip install checkov==3.3.30" in outcome.json()["error"]["message"]
    assert "MRICTL_CHECKOV" in outcome.json()["error"]["message"]


def test_the_infra_tooling_imports_neither_the_science_nor_torch():
    code = (
        "import sys, mrictl.cli.infra, mrictl.infra.validate; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'raki')))"
    )
    completed = run([sys.executable, "-c", code])
    assert completed.stdout.strip() == "[]", completed.stderr


# --- What moto ignores, read from the templates ----------------------------------------------


def test_raw_uploads_move_to_deep_archive_after_archive_days(template):
    [rule] = properties(template("storage"), "RawBucket")["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["Transitions"] == [
        {"StorageClass": "DEEP_ARCHIVE", "TransitionInDays": {"Ref": "ArchiveDays"}}
    ]


@pytest.mark.parametrize("bucket", ["PreprocessedBucket", "ReconstructedBucket"])
def test_results_move_to_intelligent_tiering(template, bucket):
    [rule] = properties(template("storage"), bucket)["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["Transitions"] == [
        {"StorageClass": "INTELLIGENT_TIERING", "TransitionInDays": {"Ref": "ResultsTieringDays"}}
    ]


def test_raw_uploads_notify_the_preprocess_queue(template):
    storage = template("storage")
    [notification] = properties(storage, "RawBucket")["NotificationConfiguration"][
        "QueueConfigurations"
    ]
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Queue"] == {"Fn::GetAtt": ["PreprocessQueue", "Arn"]}
    rules = {r["Name"]: r["Value"] for r in notification["Filter"]["S3Key"]["Rules"]}
    key = keys.upload("scan-0123456789abcdef")  # the key the workstation's upload writes
    assert key.startswith(rules["prefix"]) and key.endswith(rules["suffix"])
    assert rules == {"prefix": "uploads/", "suffix": ".tar"}
    # The queue lets exactly that bucket send (named by the same pattern as the bucket).
    allow = statement(storage, "PreprocessQueuePolicy", "RawUploadsNotify")
    source = allow["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    assert source.endswith(properties(storage, "RawBucket")["BucketName"]["Fn::Sub"])


def test_bucket_names_fit_63_characters_with_the_longest_parameters(template):
    storage = template("storage")
    longest = {
        "${ProjectName}": "a" * 12,
        "${Environment}": "b" * 8,
        "${AWS::AccountId}": "1" * 12,
        "${AWS::Region}": "ap-southeast-2",
    }
    for logical_id in resources(storage, "AWS::S3::Bucket"):
        name = properties(storage, logical_id)["BucketName"]["Fn::Sub"]
        for placeholder, value in longest.items():
            name = name.replace(placeholder, value)
        assert len(name) <= 63, name


def test_queues_are_encrypted_with_the_project_key_and_dead_lettered(template):
    storage = template("storage")
    for logical_id in ("PreprocessQueue", "ReconQueue"):
        queue = properties(storage, logical_id)
        assert queue["KmsMasterKeyId"] == {"Ref": "DataKey"}
        target = queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        assert target == logical_id.replace("Queue", "DeadLetterQueue")


def test_job_table_has_pitr_kms_ttl_and_indexes_by_parent_and_state(template):
    table = properties(template("jobs"), "JobTable")
    assert table["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": {"Ref": "DataKeyArn"},
    }
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert indexes["by-parent"]["KeySchema"][0] == {
        "AttributeName": "parent_job_id",
        "KeyType": "HASH",
    }
    assert indexes["by-state"]["KeySchema"][0] == {"AttributeName": "state", "KeyType": "HASH"}
    for index in indexes.values():
        assert index["KeySchema"][1] == {"AttributeName": "created_at", "KeyType": "RANGE"}
        assert index["Projection"] == {"ProjectionType": "ALL"}


def test_image_repository_scans_on_push_and_tags_are_immutable(template):
    repository = properties(template("compute"), "Repository")
    assert repository["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert repository["ImageTagMutability"] == "IMMUTABLE"
    assert repository["EncryptionConfiguration"]["EncryptionType"] == "KMS"


def test_the_preprocess_task_runs_the_cpu_image_and_the_batch_jobs_the_gpu_image(template):
    """ImageTag is the base tag `mrictl image push` names; each target's image adds its suffix
    (scripts/container/Dockerfile: cpu has no torch, gpu is the CUDA image)."""
    compute = template("compute")
    registry = "${AWS::AccountId}.dkr.ecr.${AWS::Region}.${AWS::URLSuffix}/${Repository}"
    [preprocess] = properties(compute, "PreprocessTaskDefinition")["ContainerDefinitions"]
    assert preprocess["Image"] == {"Fn::Sub": f"{registry}:${{ImageTag}}-cpu"}
    for job in ("ReconJobDefinition", "TrainJobDefinition"):
        image = properties(compute, job)["ContainerProperties"]["Image"]
        assert image == {"Fn::Sub": f"{registry}:${{ImageTag}}-gpu"}, job
    # The longest base tag the stack accepts still makes a Docker tag (128 characters).
    assert compute["Parameters"]["ImageTag"]["AllowedPattern"].endswith("{0,123}$")


def batch_action(rules: list[dict], status_reason: str, reason: str = "") -> str:
    """What Batch does after a failed attempt: the first rule whose patterns all match."""
    for rule in rules:
        if fnmatch.fnmatchcase(status_reason, rule.get("OnStatusReason", "*")) and (
            fnmatch.fnmatchcase(reason, rule.get("OnReason", "*"))
        ):
            return rule["Action"]
    return "RETRY"


@pytest.mark.parametrize(
    ("stage", "timeout"), [("Recon", "ReconTimeoutSeconds"), ("Train", "TrainTimeoutSeconds")]
)
def test_gpu_jobs_run_one_record_retry_host_failures_only_and_time_out(template, stage, timeout):
    compute = template("compute")
    definition = properties(compute, f"{stage}JobDefinition")
    container = definition["ContainerProperties"]
    assert container["Command"] == ["mrictl", "worker", "run", "--job", "Ref::job_id"]
    assert definition["Timeout"] == {"AttemptDurationSeconds": {"Ref": timeout}}
    rules = definition["RetryStrategy"]["EvaluateOnExit"]
    assert batch_action(rules, "Host EC2 (instance i-0a1b2c3d) terminated.") == "RETRY"
    assert batch_action(rules, "Essential container in task exited", "OutOfMemoryError") == "EXIT"
    assert batch_action(rules, "Cancelled by mrictl recon cancel") == "EXIT"
    assert batch_action(rules, "Job attempt duration exceeded timeout") == "EXIT"
    log_group = container["LogConfiguration"]["Options"]["awslogs-group"]["Ref"]
    assert properties(compute, log_group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert {"Type": "GPU", "Value": {"Ref": "JobGpus"}} in container["ResourceRequirements"]


def test_preprocess_service_runs_the_preprocess_stage_scaled_by_the_lambda(template):
    compute = template("compute")
    [container] = properties(compute, "PreprocessTaskDefinition")["ContainerDefinitions"]
    assert container["Command"] == ["mrictl", "worker", "run", "--stage", "preprocess"]
    service = properties(compute, "PreprocessService")
    assert service["TaskDefinition"] == {"Ref": "PreprocessTaskDefinition"}
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    log_group = container["LogConfiguration"]["Options"]["awslogs-group"]["Ref"]
    assert properties(compute, log_group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    function = properties(compute, "AutoscaleFunction")
    assert function["Handler"] == "mrictl.autoscale.handler"
    assert function["Code"] == {
        "S3Bucket": {"Ref": "AutoscaleCodeBucket"},
        "S3Key": {"Ref": "AutoscaleCodeKey"},
    }
    rule = properties(compute, "AutoscaleScheduleRule")
    assert rule["ScheduleExpression"] == {"Ref": "AutoscaleSchedule"}
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["AutoscaleFunction", "Arn"]}


def test_the_containers_commands_are_ones_mrictl_accepts():
    import typer

    from mrictl.cli.main import app

    worker_run = typer.main.get_command(app).commands["worker"].commands["run"]
    options = {option for parameter in worker_run.params for option in parameter.opts}
    assert {"--stage", "--job"} <= options


def test_every_log_group_has_retention_and_the_project_key(template):
    compute = template("compute")
    for logical_id in resources(compute, "AWS::Logs::LogGroup"):
        group = properties(compute, logical_id)
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert group["KmsKeyId"] == {"Ref": "DataKeyArn"}


def role_statements(document: dict):
    for logical_id, role in resources(document, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for item in policy["PolicyDocument"]["Statement"]:
                if "Fn::If" in item:  # a statement granted under a condition: its true branch
                    item = item["Fn::If"][1]
                yield logical_id, item


def test_roles_grant_named_actions_on_named_resources(template):
    compute = template("compute")
    for logical_id, item in role_statements(compute):
        actions = item["Action"] if isinstance(item["Action"], list) else [item["Action"]]
        assert item["Effect"] == "Allow"
        assert not any("*" in action for action in actions), (logical_id, actions)
        if item["Resource"] == "*":  # only the action that has no resource type
            assert actions == ["ecr:GetAuthorizationToken"], logical_id
    roles = resources(compute, "AWS::IAM::Role")
    # One role per component, each under the path the storage stack's key policy trusts.
    assert set(roles) == {
        "PreprocessExecutionRole",
        "PreprocessTaskRole",
        "AutoscaleRole",
        "BatchServiceRole",
        "BatchInstanceRole",
        "BatchJobRole",
    }
    for role in roles.values():
        assert role["Properties"]["Path"] == {"Fn::Sub": "/${ProjectName}/${Environment}/"}
    key_policy = properties(template("storage"), "DataKey")["KeyPolicy"]
    trusted = next(s for s in key_policy["Statement"] if s["Sid"] == "ProjectRolesUseTheKey")
    pattern = trusted["Condition"]["ArnLike"]["aws:PrincipalArn"]["Fn::Sub"]
    assert pattern.endswith(":role/${ProjectName}/${Environment}/*")


def test_the_scaling_lambda_may_touch_only_its_queue_and_service(template):
    grants = {
        item["Sid"]: (item["Action"], item["Resource"])
        for logical_id, item in role_statements(template("compute"))
        if logical_id == "AutoscaleRole"
    }
    assert grants["ReadQueueDepth"] == ("sqs:GetQueueAttributes", {"Ref": "PreprocessQueueArn"})
    assert grants["SetTaskCount"] == (
        ["ecs:DescribeServices", "ecs:UpdateService"],
        {"Ref": "PreprocessService"},
    )


def test_resources_carry_project_and_environment_tags_only(template):
    for name in STACKS:
        for logical_id, resource in template(name)["Resources"].items():
            tags = resource.get("Properties", {}).get("Tags")
            if tags is None:
                continue
            names = set(tags) if isinstance(tags, dict) else {tag["Key"] for tag in tags}
            # Name is the console's label, made of the same two values.
            assert {"project", "environment"} <= names <= {"project", "environment", "Name"}, (
                name,
                logical_id,
            )


def test_spot_is_optional_and_tried_before_on_demand(template):
    compute = template("compute")
    spot = compute["Resources"]["SpotComputeEnvironment"]
    assert spot["Condition"] == "WantSpot"
    assert spot["Properties"]["ComputeResources"]["Type"] == "SPOT"
    assert properties(compute, "OnDemandComputeEnvironment")["ComputeResources"]["Type"] == "EC2"
    with_spot, without = properties(compute, "JobQueue")["ComputeEnvironmentOrder"]["Fn::If"][1:]
    assert [e["ComputeEnvironment"]["Ref"] for e in with_spot] == [
        "SpotComputeEnvironment",
        "OnDemandComputeEnvironment",
    ]
    assert [e["ComputeEnvironment"]["Ref"] for e in without] == ["OnDemandComputeEnvironment"]


def test_lustre_imports_the_preprocessed_area_read_only(template):
    association = properties(template("fsx"), "PreprocessedAssociation")
    assert association["DataRepositoryPath"] == {
        "Fn::Sub": f"s3://${{PreprocessedBucketName}}/{keys.PREPROCESSED}/"
    }
    assert association["S3"] == {"AutoImportPolicy": {"Events": ["NEW", "CHANGED", "DELETED"]}}


def test_restores_and_cache_refreshes_are_granted_where_the_data_plane_needs_them(template):
    """Reprocessing an archived raw scan starts its restore (the preprocess task); a recon job
    refreshes the results share's cache, granted only when a share is given."""
    compute = template("compute")
    grants = {(role, item.get("Sid")): item for role, item in role_statements(compute)}
    restore = grants[("PreprocessTaskRole", "RestoreArchivedUploads")]
    assert restore["Action"] == "s3:RestoreObject"
    assert restore["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::${RawBucketName}/uploads/*"
    }
    refresh = grants[("BatchJobRole", "RefreshResultsShare")]
    assert refresh["Action"] == "storagegateway:RefreshCache"
    assert refresh["Resource"] == {"Ref": "ResultsShareArn"}
    policy = properties(compute, "BatchJobRole")["Policies"][0]["PolicyDocument"]["Statement"]
    conditional = next(item for item in policy if "Fn::If" in item)
    assert conditional["Fn::If"][0] == "HasResultsShare"
    assert compute["Parameters"]["ResultsShareArn"]["Default"] == ""
    environment = properties(compute, "ReconJobDefinition")["ContainerProperties"]["Environment"]
    # Empty when no share is given: the backend reads an empty variable as none.
    given = {"Name": "MRICTL_AWS_RESULTS_SHARE_ARN", "Value": {"Ref": "ResultsShareArn"}}
    assert given in environment


def test_provision_passes_the_recorded_results_share(template, tmp_path):
    import re

    from mrictl.cli.provision import _with_recorded_results_share
    from mrictl.infra.stacks import (
        STORAGE_WIRING,
        ProvisionOptions,
        parse_stack_prefix,
        stack_parameters,
    )

    path = tmp_path / "mrictl-test.json"
    assert _with_recorded_results_share(ProvisionOptions(), path).results_share_arn is None
    share = "arn:aws:storagegateway:us-east-1:123456789012:share/share-ABC12345"
    path.write_text(json.dumps({"gateway_results": {"share_arn": share}}))
    options = _with_recorded_results_share(ProvisionOptions(), path)
    outputs = {
        "network": {"SubnetIds": "subnet-1,subnet-2", "WorkloadSecurityGroupId": "sg-1"},
        "storage": {name: name for name in STORAGE_WIRING},
        "jobs": {"JobTableName": "jobs"},
    }
    sent = stack_parameters("compute", parse_stack_prefix("mrictl-test"), options, outputs)
    assert sent["ResultsShareArn"] == share
    pattern = template("compute")["Parameters"]["ResultsShareArn"]["AllowedPattern"]
    assert re.fullmatch(pattern, share) and re.fullmatch(pattern, "")


# --- The FSx for Lustre mount (compute's HasFsx) ---------------------------------------------

FSX_ENVIRONMENT = {"Name": "MRICTL_AWS_FSX_MOUNT", "Value": "/fsx"}
BATCH_JOBS = ("ReconJobDefinition", "TrainJobDefinition")


def resolved(node, conditions: dict[str, bool]):
    """The template as CloudFormation would deploy it with these conditions: each Fn::If
    replaced by its branch, AWS::NoValue dropped."""
    no_value = object()

    def walk(item):
        if isinstance(item, dict):
            if set(item) == {"Fn::If"}:
                name, when_true, when_false = item["Fn::If"]
                return walk(when_true if conditions[name] else when_false)
            if item == {"Ref": "AWS::NoValue"}:
                return no_value
            pairs = ((key, walk(value)) for key, value in item.items())
            return {key: value for key, value in pairs if value is not no_value}
        if isinstance(item, list):
            return [value for value in map(walk, item) if value is not no_value]
        return item

    return walk(node)


def conditions_of(fsx: bool) -> dict[str, bool]:
    return {"HasFsx": fsx, "WantSpot": False, "HasResultsShare": False}


def test_the_fsx_mount_is_off_unless_both_parameters_are_given(template):
    compute = template("compute")
    for name in ("FsxDnsName", "FsxMountName"):
        assert compute["Parameters"][name]["Default"] == ""
    both = compute["Conditions"]["HasFsx"]["Fn::And"]
    assert both == [
        {"Fn::Not": [{"Fn::Equals": [{"Ref": "FsxDnsName"}, ""]}]},
        {"Fn::Not": [{"Fn::Equals": [{"Ref": "FsxMountName"}, ""]}]},
    ]
    without = resolved(compute["Resources"], conditions_of(fsx=False))
    assert "UserData" not in without["BatchLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    for name in BATCH_JOBS:
        container = without[name]["Properties"]["ContainerProperties"]
        assert container["Volumes"] == [{"Name": "scratch"}], name
        assert container["MountPoints"] == [
            {"SourceVolume": "scratch", "ContainerPath": "/tmp", "ReadOnly": False}
        ], name
        # Empty, as ResultsShareArn's: the backend reads an empty variable as none (and moto
        # fails on an AWS::NoValue item in the list).
        assert {"Name": "MRICTL_AWS_FSX_MOUNT", "Value": ""} in container["Environment"], name
        assert "/fsx" not in json.dumps(container), name


def test_with_fsx_only_recon_and_train_see_the_mount_read_only(template):
    compute = template("compute")
    with_fsx = resolved(compute["Resources"], conditions_of(fsx=True))
    for name in BATCH_JOBS:
        container = with_fsx[name]["Properties"]["ContainerProperties"]
        volumes = {each["Name"]: each for each in container["Volumes"]}
        assert volumes["fsx"] == {"Name": "fsx", "Host": {"SourcePath": "/fsx"}}, name
        fsx_mounts = [each for each in container["MountPoints"] if each["SourceVolume"] == "fsx"]
        assert fsx_mounts == [{"SourceVolume": "fsx", "ContainerPath": "/fsx", "ReadOnly": True}]
        assert FSX_ENVIRONMENT in container["Environment"], name
        assert container["ReadonlyRootFilesystem"] is True and container["Privileged"] is False
    # Nothing else mounts or names it: not the preprocess task, not another resource.
    for logical_id, resource in with_fsx.items():
        if logical_id not in (*BATCH_JOBS, "BatchLaunchTemplate"):
            assert "/fsx" not in json.dumps(resource), logical_id
            assert "Fsx" not in json.dumps(resource), logical_id


def test_with_fsx_the_gpu_instances_mount_it_read_only_in_mime_user_data(template):
    compute = template("compute")
    data = resolved(compute["Resources"], conditions_of(fsx=True))
    launch = data["BatchLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    text = launch["UserData"]["Fn::Base64"]["Fn::Sub"]
    # Batch merges a launch template's user data with its own only in MIME multi-part form.
    header, _, body = text.partition("\n\n")
    assert header.splitlines()[0] == "MIME-Version: 1.0"
    boundary = header.split('boundary="')[1].split('"')[0]
    assert body.startswith(f"--{boundary}\n") and body.rstrip().endswith(f"--{boundary}--")
    assert 'Content-Type: text/x-shellscript; charset="us-ascii"' in body
    script = body.split("\n\n", 1)[1]
    assert script.startswith("#!/bin/bash\nset -euo pipefail\n")
    assert "dnf install -y lustre-client" in script  # AL2023, the default GpuImageType
    assert "amazon-linux-extras install -y lustre" in script  # AL2
    [mount] = [line.strip() for line in script.splitlines() if "mount -t lustre" in line]
    options = mount.split(" -o ")[1].split()[0].split(",")
    assert options[0] == "ro" and "rw" not in options
    assert mount.endswith('"${FsxDnsName}@tcp:/${FsxMountName}" /fsx; then')
    # Both compute environments use this launch template (so Spot instances mount it too).
    for name in ("OnDemandComputeEnvironment", "SpotComputeEnvironment"):
        resources_of = properties(compute, name)["ComputeResources"]
        assert resources_of["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "BatchLaunchTemplate"}
        assert resources_of["SecurityGroupIds"] == [{"Ref": "WorkloadSecurityGroupId"}]


def test_lustre_traffic_flows_only_between_the_workers_and_the_file_system(template):
    """Lustre's ports (988, 1018-1023), between the workers' group and the file system's group
    only: no address range, no other port."""
    fsx = template("fsx")
    lustre_ports = {(988, 988), (1018, 1023)}
    lustre_group = {"Fn::GetAtt": ["LustreSecurityGroup", "GroupId"]}
    workers = {"Ref": "WorkloadSecurityGroupId"}
    rules = [
        (rule, {"GroupId": lustre_group}, "ingress")
        for rule in properties(fsx, "LustreSecurityGroup")["SecurityGroupIngress"]
    ]
    for kind, direction in (
        ("AWS::EC2::SecurityGroupIngress", "ingress"),
        ("AWS::EC2::SecurityGroupEgress", "egress"),
    ):
        for resource in resources(fsx, kind).values():
            rules.append((resource["Properties"], resource["Properties"], direction))
    assert "SecurityGroupEgress" not in properties(fsx, "LustreSecurityGroup")
    seen = set()
    for rule, owner, direction in rules:
        assert rule["IpProtocol"] == "tcp"
        assert (rule["FromPort"], rule["ToPort"]) in lustre_ports
        assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(rule)
        peer = rule.get("SourceSecurityGroupId") or rule["DestinationSecurityGroupId"]
        assert {json.dumps(owner["GroupId"]), json.dumps(peer)} <= {
            json.dumps(lustre_group),
            json.dumps(workers),
        }
        seen.add((json.dumps(owner["GroupId"]), direction, json.dumps(peer), rule["FromPort"]))
    for port in (988, 1018):
        # The workers reach the file system, and it reaches them back (lock callbacks).
        assert (json.dumps(workers), "egress", json.dumps(lustre_group), port) in seen
        assert (json.dumps(workers), "ingress", json.dumps(lustre_group), port) in seen
        assert (json.dumps(lustre_group), "ingress", json.dumps(workers), port) in seen
