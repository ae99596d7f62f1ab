"""`mrictl doctor`: a broken set-up gives a failing line with a hint and a failing exit code, a
sound one passes; the cloud checks against a moto server that `mrictl provision` filled, and
against endpoints that refuse or never answer; the DICOM node by C-ECHO to a real SCP.

Not writable: tests may run as root, whom permission bits do not stop, so the home that cannot
be made lies under a regular file (ENOTDIR for everyone); the read-only folder case runs only
for an ordinary user.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mrictl import __version__, doctor
from mrictl.errors import ExitCode
from mrictl.revision import git_revision
from tests.mrictl.cli_helpers import invoke
from tests.mrictl.test_startup import run_probed
from tests.servers import REGION, free_port, moto_server, reset_moto

QUICK = ("--skip", "torch")  # torch's import takes seconds; its check has its own test
SECRET = "doctor-test-secret-never-shown"
DEAD_ENDPOINT_BOUND_S = 15.0


def checks_of(outcome) -> dict[str, dict]:
    return {check["name"]: check for check in outcome.json()["checks"]}


def test_a_sound_local_setup_passes_and_leaves_nothing_behind(isolated_home):
    assert not isolated_home.exists()
    outcome = invoke("doctor", *QUICK, "--json")
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    document = outcome.json()
    assert document["ok"] is True
    found = checks_of(outcome)
    assert {"mrictl", "python", "packages", "config", "backend", "home", "disk"} <= set(found)
    assert found["home"]["status"] == "ok"
    assert "can be made" in found["home"]["detail"]
    assert found["backend"]["detail"].startswith("local;")
    assert "MRICTL_HOME" in found["config"]["detail"]  # the variable is named
    assert not isolated_home.exists()  # made for the test and removed again
    assert "torch" not in found
    revision = git_revision()
    if revision:  # a checkout, or a wheel whose build recorded it
        assert found["mrictl"]["detail"] == f"{__version__} (git {revision})"


def test_every_line_says_ok_warn_or_fail_then_the_check(isolated_home):
    isolated_home.mkdir(parents=True)
    outcome = invoke("doctor", *QUICK)
    assert outcome.exit_code == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert lines and all(line.split()[0] in doctor.STATUSES for line in lines)
    assert any(line.startswith("ok   home ") and "(writable)" in line for line in lines)
    assert not list(isolated_home.iterdir())  # the probe file is gone


def test_a_home_that_cannot_be_made_fails_with_a_hint(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    home = blocker / "mrictl"
    outcome = invoke("doctor", *QUICK, "--home", str(home), "--json")
    assert outcome.exit_code == ExitCode.CHECK_FAILED
    document = outcome.json()
    assert document["ok"] is False
    home_check = checks_of(outcome)["home"]
    assert home_check["status"] == "fail"
    assert "cannot be created" in home_check["detail"]
    assert "MRICTL_HOME" in home_check["hint"]
    assert "Traceback" not in outcome.stderr
    human = invoke("doctor", *QUICK, "--home", str(home))
    assert human.exit_code == ExitCode.CHECK_FAILED
    [line] = [line for line in human.stdout.splitlines() if line.startswith("fail home")]
    assert "(hint: " in line
    assert "1 fail" in human.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_home_fails(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    try:
        outcome = invoke("doctor", *QUICK, "--home", str(home), "--json")
    finally:
        home.chmod(0o755)
    assert outcome.exit_code == ExitCode.CHECK_FAILED
    assert "not writable" in checks_of(outcome)["home"]["detail"]


def test_a_home_that_is_a_file_fails(tmp_path):
    home = tmp_path / "home"
    home.write_text("")
    check = doctor.check_home_writable(home)
    assert (check.status, check.hint) == ("fail", doctor.HOME_HINT)
    assert "is not a folder" in check.detail


def test_little_free_space_is_a_warning_not_a_failure(isolated_home):
    outcome = invoke("doctor", *QUICK, "--min-free-gb", "1e9", "--json")
    assert outcome.exit_code == 0
    disk = checks_of(outcome)["disk"]
    assert disk["status"] == "warn"
    assert "below 1e+09 GiB" in disk["detail"] and disk["hint"]
    assert outcome.json()["ok"] is True


def test_a_damaged_config_file_is_a_failing_line_not_a_traceback(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text("backend = [unclosed\n")
    monkeypatch.setenv("MRICTL_CONFIG", str(config))
    outcome = invoke("doctor", *QUICK, "--json")
    assert outcome.exit_code == ExitCode.CHECK_FAILED
    found = checks_of(outcome)
    assert found["config"]["status"] == "fail"
    assert "not valid TOML" in found["config"]["detail"]
    assert found["config"]["hint"]
    assert "mrictl" in found  # the checks that need no settings still ran
    assert "Traceback" not in outcome.stdout + outcome.stderr


def test_a_check_that_raises_becomes_one_failing_line():
    def broken() -> doctor.Check:
        raise RuntimeError("the disk\nvanished")

    found = doctor.run_checks([("first", broken), ("second", doctor.check_versions)])
    assert found[0] == doctor.Check(
        "first", "fail", "RuntimeError: the disk vanished", "set MRICTL_DEBUG=1 for the traceback"
    )
    assert [check.name for check in found[1:]] == ["mrictl", "python", "packages"]
    assert not doctor.passed(found)


def test_doctor_without_the_torch_check_loads_neither_torch_nor_boto3(tmp_path):
    completed, loaded = run_probed(tmp_path, "doctor", *QUICK, "--json")
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["ok"] is True
    assert loaded.isdisjoint({"torch", "boto3", "botocore", "scipy", "h5py"}), loaded


def test_the_torch_check_reports_the_build_and_the_gpu():
    torch = pytest.importorskip("torch")
    found = {check.name: check for check in doctor.check_torch("auto")}
    assert found["torch"].status == "ok"
    assert found["torch"].detail.startswith(torch.__version__)
    if torch.cuda.is_available():
        assert found["gpu"].status == "ok" and "cuda:0" in found["gpu"].detail
    else:  # no GPU: a warning, unless the configured device is cuda
        assert found["gpu"].status == "warn" and found["gpu"].hint
        [_, gpu] = doctor.check_torch("cuda")
        assert gpu.status == "fail" and "device is cuda" in gpu.hint


def test_the_endpoint_is_shown_without_credentials():
    shown = doctor.shown_endpoint("https://user:pa55@s3.example:9000/base?token=x")
    assert shown == "https://s3.example:9000/base"


# --- the cloud ------------------------------------------------------------------------------


@pytest.fixture
def aws_environment(monkeypatch, tmp_path) -> None:
    """Test credentials (the secret distinctive, to prove it is never printed) and no AWS
    files or variables of the developer's."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "MRICTL_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    for name in [name for name in os.environ if name.startswith(("MRICTL_AWS_", "MRICTL_PACS_"))]:
        monkeypatch.delenv(name, raising=False)


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung endpoint or a firewall
    that lets the handshake through)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_an_endpoint_that_does_not_answer_fails_fast_with_a_hint(aws_environment, endpoint):
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(silent_server()) if endpoint == "silent" else closed_port()
        started = time.monotonic()
        outcome = invoke(
            "doctor", *QUICK, "--backend", "aws", "--region", REGION, "--timeout", "1",
            "--endpoint-url", f"http://127.0.0.1:{port}", "--stack-prefix", "doc-none", "--json",
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert elapsed < DEAD_ENDPOINT_BOUND_S
    assert outcome.exit_code == ExitCode.CHECK_FAILED
    identity = checks_of(outcome)["aws identity"]
    assert identity["status"] == "fail"
    assert f"no answer from http://127.0.0.1:{port}" in identity["detail"]
    assert "mrictl provision status" in identity["hint"]
    assert SECRET not in outcome.stdout + outcome.stderr


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`mrictl provision --yes` on a fresh moto server: (endpoint, XDG_CONFIG_HOME holding the
    outputs it saved)."""
    config_home = tmp_path_factory.mktemp("doctor-config")
    with moto_server() as endpoint, pytest.MonkeyPatch.context() as patch:
        reset_moto(endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        patch.setenv("AWS_CONFIG_FILE", str(config_home / "no-aws-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(config_home / "no-aws-credentials"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("XDG_CONFIG_HOME", str(config_home))
        for name in [name for name in os.environ if name.startswith("MRICTL_AWS_")]:
            patch.delenv(name)
        where = ("--endpoint-url", endpoint, "--region", REGION, "--stack-prefix", "doc-test")
        made = invoke("provision", "--yes", "--json", *where)
        assert made.exit_code == 0, made.stderr
        yield endpoint, config_home


@pytest.fixture
def on_the_cloud(provisioned, aws_environment, monkeypatch) -> str:
    endpoint, config_home = provisioned
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.setenv("MRICTL_BACKEND", "aws")
    monkeypatch.setenv("MRICTL_AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("MRICTL_AWS_REGION", REGION)
    monkeypatch.setenv("MRICTL_AWS_STACK_PREFIX", "doc-test")
    return endpoint


def test_the_aws_checks_pass_on_provisioned_stacks(on_the_cloud):
    outcome = invoke("doctor", *QUICK, "--json")
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    found = checks_of(outcome)
    for name in ("aws identity", "aws region", "aws stacks", "aws queues", "aws table"):
        assert found[name]["status"] == "ok", found[name]
    assert found["aws buckets"]["status"] == "ok", found["aws buckets"]
    assert "account 123456789012" in found["aws identity"]["detail"]
    assert found["aws region"]["detail"] == REGION
    for stack in ("network", "storage", "jobs", "compute"):
        assert f"{stack} CREATE_COMPLETE" in found["aws stacks"]["detail"]
    assert "preprocess (0 waiting)" in found["aws queues"]["detail"]
    assert found["aws table"]["detail"].endswith("ACTIVE")
    assert "raw" in found["aws buckets"]["detail"]
    assert "AWS_SECRET_ACCESS_KEY" in found["backend"]["detail"]  # named ...
    assert SECRET not in outcome.stdout + outcome.stderr  # ... never shown


def test_a_bucket_that_does_not_answer_fails_with_a_hint(on_the_cloud, monkeypatch):
    monkeypatch.setenv("MRICTL_AWS_RAW_BUCKET", "doc-test-no-such-bucket")
    outcome = invoke("doctor", *QUICK, "--json")
    assert outcome.exit_code == ExitCode.CHECK_FAILED
    found = checks_of(outcome)
    assert found["aws buckets"]["status"] == "fail"
    assert "mrictl provision" in found["aws buckets"]["hint"]
    assert found["aws table"]["status"] == "ok"


def test_a_prefix_never_provisioned_fails_naming_what_to_run(on_the_cloud, monkeypatch):
    monkeypatch.setenv("MRICTL_AWS_STACK_PREFIX", "doc-absent")
    outcome = invoke("doctor", *QUICK, "--json")
    assert outcome.exit_code == ExitCode.CHECK_FAILED
    found = checks_of(outcome)
    assert found["aws identity"]["status"] == "ok"
    assert found["aws stacks"]["status"] == "warn"
    assert found["aws resources"]["status"] == "fail"
    assert "mrictl provision" in found["aws resources"]["hint"]


# --- the DICOM node -------------------------------------------------------------------------


def needs_pacs_delivery() -> None:
    """Skip where this checkout has no DICOM delivery (mrictl.pacs) or no pynetdicom."""
    try:
        import pynetdicom  # noqa: F401

        import mrictl.pacs  # noqa: F401
    except ImportError as error:
        pytest.skip(f"no DICOM delivery here: {error}")


@pytest.fixture
def verification_scp() -> Iterator[int]:
    """pynetdicom's Verification SCP on 127.0.0.1; yields its port (AE title DOCTORSCP)."""
    needs_pacs_delivery()
    import pynetdicom
    from pynetdicom.sop_class import Verification

    entity = pynetdicom.AE(ae_title="DOCTORSCP")
    entity.add_supported_context(Verification)
    port = free_port()
    server = entity.start_server(("127.0.0.1", port), block=False)
    try:
        yield port
    finally:
        server.shutdown()


def test_the_dicom_node_answers_c_echo(verification_scp, monkeypatch):
    monkeypatch.setenv("MRICTL_PACS_HOST", "127.0.0.1")
    monkeypatch.setenv("MRICTL_PACS_PORT", str(verification_scp))
    monkeypatch.setenv("MRICTL_PACS_CALLED_AET", "DOCTORSCP")
    outcome = invoke("doctor", *QUICK, "--json")
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    pacs = checks_of(outcome)["pacs"]
    assert pacs["status"] == "ok"
    assert f"DOCTORSCP@127.0.0.1:{verification_scp}" in pacs["detail"]


def test_a_dicom_node_that_does_not_listen_fails_with_a_hint(monkeypatch):
    needs_pacs_delivery()
    monkeypatch.setenv("MRICTL_PACS_HOST", "127.0.0.1")
    monkeypatch.setenv("MRICTL_PACS_PORT", str(closed_port()))
    monkeypatch.setenv("MRICTL_PACS_CALLED_AET", "DOCTORSCP")
    started = time.monotonic()
    outcome = invoke("doctor", *QUICK, "--timeout", "2", "--json")
    assert time.monotonic() - started < DEAD_ENDPOINT_BOUND_S
    assert outcome.exit_code == ExitCode.CHECK_FAILED
    pacs = checks_of(outcome)["pacs"]
    assert pacs["status"] == "fail"
    assert "C-ECHO failed" in pacs["detail"] and "[pacs]" in pacs["hint"]


def test_no_dicom_node_configured_means_no_pacs_line(monkeypatch):
    for name in [name for name in os.environ if name.startswith("MRICTL_PACS_")]:
        monkeypatch.delenv(name)
    outcome = invoke("doctor", *QUICK, "--json")
    assert "pacs" not in checks_of(outcome)
