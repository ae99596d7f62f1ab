"""The scaling Lambda: the count it asks for, the calls it makes (botocore's Stubber), and its zip,
which must import alone and be the same bytes from the same sources."""

from __future__ import annotations

import datetime
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mrictl import autoscale
from mrictl.autoscale import AutoscaleConfig, desired_count, scale
from mrictl.infra.lambda_package import MODULES, build_autoscale_package

COOLDOWN = 300.0
NOW = 10_000.0
LIMITS = {"min_tasks": 0, "max_tasks": 4, "messages_per_task": 5, "cooldown_s": COOLDOWN}


def count(visible: int, in_flight: int, current: int, changed_at: float | None = None) -> int:
    return desired_count(
        visible, in_flight, current, last_scale_in_at=changed_at, now=NOW, **LIMITS
    )


@pytest.mark.parametrize(
    "visible, in_flight, current, expected",
    [
        (0, 0, 0, 0),  # nothing to do, nothing running
        (1, 0, 0, 1),  # one message starts one task
        (5, 0, 0, 1),  # five per task
        (6, 0, 1, 2),
        (8, 2, 2, 2),  # ten messages, two tasks already on them
        (100, 0, 1, 4),  # never above max_tasks
        (3, 0, 4, 1),  # scale in when the service has been left alone
        (0, 0, 3, 0),  # to zero once the queue is empty
        (0, 3, 3, 3),  # three tasks each hold a message: none is stopped
        (2, 2, 4, 2),
    ],
)
def test_desired_count_asks_one_task_per_messages_per_task(visible, in_flight, current, expected):
    assert count(visible, in_flight, current, changed_at=NOW - COOLDOWN - 1) == expected


def test_scale_out_is_immediate_and_scale_in_waits_for_the_cooldown():
    just_changed = NOW - 10
    assert count(20, 0, 1, changed_at=just_changed) == 4
    assert count(0, 0, 4, changed_at=just_changed) == 4
    assert count(0, 0, 4, changed_at=NOW - COOLDOWN) == 0
    assert count(0, 0, 4, changed_at=None) == 0


def test_min_tasks_keeps_a_warm_worker():
    limits = {**LIMITS, "min_tasks": 1}
    assert desired_count(0, 0, 3, last_scale_in_at=None, now=NOW, **limits) == 1
    assert desired_count(0, 0, 0, last_scale_in_at=None, now=NOW, **limits) == 1


def test_desired_count_refuses_limits_that_cannot_hold():
    with pytest.raises(ValueError):
        desired_count(1, 0, 0, max_tasks=0, messages_per_task=5, **NO_HISTORY)
    with pytest.raises(ValueError):
        desired_count(1, 0, 0, max_tasks=2, messages_per_task=0, **NO_HISTORY)


NO_HISTORY = {"last_scale_in_at": None, "now": NOW, "cooldown_s": COOLDOWN}
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/mrictl-test-preprocess"
ENVIRONMENT = {
    "MRICTL_AUTOSCALE_QUEUE_URL": QUEUE_URL,
    "MRICTL_AUTOSCALE_CLUSTER": "mrictl-test",
    "MRICTL_AUTOSCALE_SERVICE": "mrictl-test-preprocess",
    "MRICTL_AUTOSCALE_MAX_TASKS": "4",
    "MRICTL_AUTOSCALE_MESSAGES_PER_TASK": "5",
}


def test_the_handler_reads_the_variables_compute_yaml_sets():
    from mrictl.infra.validate import REPOSITORY, load_template

    template = load_template(REPOSITORY / "infra_templates" / "compute.yaml")
    function = template["Resources"]["AutoscaleFunction"]["Properties"]
    assert set(function["Environment"]["Variables"]) == set(ENVIRONMENT)
    assert function["Handler"] == f"{autoscale.__name__}.{autoscale.handler.__name__}"
    config = AutoscaleConfig.from_environment(ENVIRONMENT)
    assert (config.max_tasks, config.messages_per_task, config.min_tasks) == (4, 5, 0)
    with pytest.raises(KeyError, match="MRICTL_AUTOSCALE_SERVICE"):
        AutoscaleConfig.from_environment({**ENVIRONMENT, "MRICTL_AUTOSCALE_SERVICE": ""})


def stubbed_clients(visible: int, in_flight: int, current: int, changed_at: float):
    """SQS and ECS clients that answer one run's calls (region and keys are dummies)."""
    import boto3
    from botocore.stub import Stubber

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    sqs, ecs = session.client("sqs"), session.client("ecs")
    sqs_stub, ecs_stub = Stubber(sqs), Stubber(ecs)
    sqs_stub.add_response(
        "get_queue_attributes",
        {
            "Attributes": {
                "ApproximateNumberOfMessages": str(visible),
                "ApproximateNumberOfMessagesNotVisible": str(in_flight),
            }
        },
        {"QueueUrl": QUEUE_URL, "AttributeNames": list(autoscale.QUEUE_ATTRIBUTES)},
    )
    updated = datetime.datetime.fromtimestamp(changed_at, tz=datetime.UTC)
    ecs_stub.add_response(
        "describe_services",
        {
            "services": [
                {
                    "serviceName": "mrictl-test-preprocess",
                    "desiredCount": current,
                    "deployments": [
                        {"status": "ACTIVE", "updatedAt": updated - datetime.timedelta(days=1)},
                        {"status": "PRIMARY", "updatedAt": updated},
                    ],
                }
            ],
            "failures": [],
        },
        {"cluster": "mrictl-test", "services": ["mrictl-test-preprocess"]},
    )
    return sqs, ecs, sqs_stub, ecs_stub


def test_a_run_sets_the_new_count_through_update_service():
    sqs, ecs, sqs_stub, ecs_stub = stubbed_clients(12, 0, 1, changed_at=NOW - 5)
    ecs_stub.add_response(
        "update_service",
        {"service": {"desiredCount": 3}},
        {"cluster": "mrictl-test", "service": "mrictl-test-preprocess", "desiredCount": 3},
    )
    with sqs_stub, ecs_stub:
        decision = scale(sqs, ecs, AutoscaleConfig.from_environment(ENVIRONMENT), now=NOW)
        sqs_stub.assert_no_pending_responses()
        ecs_stub.assert_no_pending_responses()
    assert decision == {"visible": 12, "in_flight": 0, "current": 1, "desired": 3, "changed": True}


def test_a_run_within_the_cooldown_leaves_the_service_alone():
    # Stubber fails on any call it was not told of: no update_service here.
    sqs, ecs, sqs_stub, ecs_stub = stubbed_clients(0, 0, 3, changed_at=NOW - 60)
    with sqs_stub, ecs_stub:
        decision = scale(sqs, ecs, AutoscaleConfig.from_environment(ENVIRONMENT), now=NOW)
    assert (decision["desired"], decision["changed"]) == (3, False)


def test_the_handler_runs_with_the_lambdas_environment(monkeypatch, capsys):
    sqs, ecs, sqs_stub, ecs_stub = stubbed_clients(0, 0, 2, changed_at=1.0)
    ecs_stub.add_response(
        "update_service",
        {"service": {"desiredCount": 0}},
        {"cluster": "mrictl-test", "service": "mrictl-test-preprocess", "desiredCount": 0},
    )
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(autoscale, "_clients", lambda: (sqs, ecs))
    with sqs_stub, ecs_stub:
        decision = autoscale.handler({"source": "aws.events"}, None)
        ecs_stub.assert_no_pending_responses()
    assert decision["desired"] == 0
    assert '"desired": 0' in capsys.readouterr().out  # one JSON line in the function's log


def test_a_missing_service_is_an_error_not_a_count():
    import boto3
    from botocore.stub import Stubber

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    sqs, ecs = session.client("sqs"), session.client("ecs")
    with Stubber(sqs) as sqs_stub, Stubber(ecs) as ecs_stub:
        sqs_stub.add_response("get_queue_attributes", {"Attributes": {}})
        ecs_stub.add_response(
            "describe_services", {"services": [], "failures": [{"reason": "MISSING"}]}
        )
        with pytest.raises(LookupError, match="MISSING"):
            scale(sqs, ecs, AutoscaleConfig.from_environment(ENVIRONMENT), now=NOW)


# --- The zip -----------------------------------------------------------------------------------


def test_the_zip_holds_exactly_the_handlers_modules_and_is_reproducible():
    package = build_autoscale_package()
    again = build_autoscale_package()
    assert package.data == again.data
    assert package.sha256 == hashlib.sha256(package.data).hexdigest()
    assert package.key == f"deploy/autoscale-{package.sha256[:12]}.zip"
    with zipfile.ZipFile(io.BytesIO(package.data)) as archive:
        assert archive.namelist() == list(MODULES)
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        source = Path(autoscale.__file__).read_bytes()
        assert archive.read("mrictl/autoscale.py") == source


def test_the_zip_changes_with_the_code(tmp_path):
    for name in MODULES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("# changed\n")
    assert build_autoscale_package(tmp_path).key != build_autoscale_package().key


def test_the_handler_imports_from_the_zip_alone(tmp_path):
    """The Lambda has the zip, the standard library and boto3; not mrictl's dependencies."""
    with zipfile.ZipFile(io.BytesIO(build_autoscale_package().data)) as archive:
        archive.extractall(tmp_path)
    probe = (
        "import sys, mrictl.autoscale as a; "
        "assert a.__file__.startswith(sys.argv[1]), a.__file__; "
        "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
        "('boto3', 'botocore', 'numpy', 'torch', 'raki', 'typer', 'rich')))"
    )
    # -S: no site-packages (neither the venv's mrictl nor its dependencies); -c runs in cwd.
    completed = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
