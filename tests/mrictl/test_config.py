"""Settings come from flags, then MRICTL_* variables, then the XDG config file, then defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mrictl.config import load_settings
from mrictl.errors import ExitCode, MrictlError
from tests.mrictl.cli_helpers import invoke


def write_config(text: str) -> Path:
    import os

    path = Path(os.environ["XDG_CONFIG_HOME"]) / "mrictl" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_then_file_then_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("MRICTL_HOME")
    assert load_settings().home.name == "mrictl" and load_settings().method is None
    write_config(f'[mrictl]\nmethod = "grappa"\nhome = "{tmp_path / "h"}"\n')
    assert load_settings().method == "grappa" and load_settings().home == tmp_path / "h"
    assert load_settings(method="zerofill").method == "zerofill"


def test_a_bad_config_file_is_a_usage_error():
    write_config("method = [unterminated")
    with pytest.raises(MrictlError) as caught:
        load_settings()
    assert caught.value.exit_code == ExitCode.USAGE
    write_config('colour = "blue"\n')
    with pytest.raises(MrictlError, match="unknown keys: colour"):
        load_settings()


def test_recon_run_takes_the_method_from_file_then_env_then_flag(tmp_path, monkeypatch):
    full = tmp_path / "full.h5"
    invoke("scan", "simulate", "--out", str(full), "--matrix", "32x24", "--coils", "4")
    run = ("recon", "run", str(full), "--accel", "2", "--acs", "8", "--out", str(tmp_path / "o.h5"))
    write_config('method = "grappa"\n')
    assert invoke(*run, "--json").json()["method"] == "grappa"
    monkeypatch.setenv("MRICTL_METHOD", "zerofill")
    assert invoke(*run, "--json").json()["method"] == "zerofill"
    assert invoke(*run, "--method", "grappa", "--json").json()["method"] == "grappa"


@pytest.mark.parametrize(
    "line, problem",
    [
        ('max_attempts = "three"', "max_attempts must be a whole number >= 1"),
        ("max_attempts = 0", "max_attempts must be a whole number >= 1"),
        ("lease_seconds = -1", "lease_seconds must be a number >= 1"),
        ("home = 5", "home must be a string"),
    ],
)
def test_config_values_of_the_wrong_type_or_range_are_usage_errors(line, problem):
    write_config(line + "\n")
    with pytest.raises(MrictlError, match=problem) as caught:
        load_settings()
    assert caught.value.exit_code == ExitCode.USAGE


def test_worker_run_takes_its_lease_from_the_config_file(monkeypatch, tmp_path):
    import mrictl.worker

    write_config("lease_seconds = 7\n")
    seen = {}
    monkeypatch.setattr(mrictl.worker, "run_worker", lambda store, **kw: seen.update(kw) or 0)
    outcome = invoke("worker", "run", "--once", "--home", str(tmp_path / "h"), "--json")
    assert outcome.exit_code == 0, outcome.stderr
    assert seen["lease_seconds"] == 7
    assert invoke("worker", "run", "--stage", "bogus", "--json").exit_code == ExitCode.USAGE


def test_backend_sections_from_file_environment_and_flags(monkeypatch, tmp_path):
    monkeypatch.delenv("MRICTL_HOME")
    write_config(
        '[mrictl]\nbackend = "aws"\n[local]\n'
        f'home = "{tmp_path / "file-home"}"\n'
        '[aws]\nregion = "eu-west-1"\nstack_prefix = "mrictl-prod"\n'
    )
    settings = load_settings()
    assert settings.backend == "aws" and settings.home == tmp_path / "file-home"
    assert settings.aws.region == "eu-west-1" and settings.aws.stack_prefix == "mrictl-prod"
    assert settings.aws.endpoint_url is None and settings.aws.profile is None
    monkeypatch.setenv("MRICTL_AWS_REGION", "us-east-1")
    monkeypatch.setenv("MRICTL_AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    settings = load_settings(aws={"profile": "it"}, home=tmp_path / "flag-home")
    assert settings.aws.region == "us-east-1" and settings.aws.profile == "it"
    assert settings.aws.endpoint_url == "http://127.0.0.1:5000"
    assert settings.home == tmp_path / "flag-home"


@pytest.mark.parametrize(
    "text, problem",
    [
        ('[aws]\nbucket = "x"\n', "unknown keys: aws.bucket"),
        ("[aws]\nregion = 5\n", "aws.region must be a string"),
        ('aws = "eu-west-1"\n', "[aws] must be a table"),
    ],
)
def test_bad_backend_sections_are_usage_errors(text, problem):
    write_config(text)
    with pytest.raises(MrictlError, match=re.escape(problem)) as caught:
        load_settings()
    assert caught.value.exit_code == ExitCode.USAGE


def test_aws_clients_come_from_the_settings_alone(monkeypatch):
    """The factory passes the settings' endpoint and region; a stray AWS_* variable does not
    redirect a test's clients, and nothing is created before it is asked for."""
    from mrictl.backends import AwsClients
    from mrictl.config import AwsSettings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    clients = AwsClients(AwsSettings(region="eu-central-1", endpoint_url="http://127.0.0.1:5999"))
    assert clients._clients == {}
    s3 = clients.client("s3")
    assert s3.meta.endpoint_url == "http://127.0.0.1:5999"
    assert s3.meta.region_name == "eu-central-1"
    assert s3.meta.config.retries["mode"] == "standard"
    assert clients.client("s3") is s3


def test_the_aws_backend_without_provisioned_resources_says_what_to_run(tmp_path):
    outcome = invoke("recon", "status", "--backend", "aws", "--json")
    assert outcome.exit_code == ExitCode.BACKEND
    assert "mrictl provision" in outcome.json()["error"]["message"]


def test_a_damaged_outputs_file_stops_the_aws_backend_only(monkeypatch):
    from mrictl.config import outputs_path

    path = outputs_path("mrictl-prod")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert load_settings().aws.outputs == {}  # the local backend goes on
    with pytest.raises(MrictlError, match="is damaged") as caught:
        load_settings(backend="aws")
    assert caught.value.exit_code == ExitCode.USAGE
