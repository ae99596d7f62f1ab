"""The worker images: the docker command lines that build them, and push them to ECR.

`scripts/container/Dockerfile` has two targets, `cpu` (the Fargate preprocess service) and
`gpu` (the Batch recon and train jobs). One build gives them one tag, by default the project's
version and git revision (`0.1.0-1a2b3c4`, with `-dirty` for uncommitted changes, because ECR
tags are immutable), and each target its own image tag: `TAG-cpu` and `TAG-gpu`. Images are
built under the local name `mrictl`; pushing tags them into the repository and pushes them.

The plans are plain data (`DockerCommand`s): `--dry-run` prints them, and running one only feeds
them to docker. The registry password goes to `docker login` on its stdin, never in argv, and
is never printed or logged.
"""

from __future__ import annotations

import base64
import binascii
import collections
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrictl import __version__
from mrictl.errors import ExitCode, MrictlError

if TYPE_CHECKING:
    from mrictl.config import Settings

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]  # a source checkout or editable install
DOCKERFILE = "scripts/container/Dockerfile"  # relative to the build context, the checkout
TARGETS = ("cpu", "gpu")
LOCAL_NAME = "mrictl"
# Fargate's task definition and the Batch GPU instances are x86_64, whatever builds the image.
PLATFORM = "linux/amd64"
ECR_USER = "AWS"
# Docker's tag grammar, short enough for the "-gpu" suffix to fit its 128 characters; the
# compute stack's ImageTag parameter allows the same.
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,123}$")
# <registry host>/<repository path>, lower case, no tag or digest (the outputs' RepositoryUri).
REPOSITORY_PATTERN = re.compile(r"^[a-z0-9.-]+(?::\d+)?/[a-z0-9]+(?:[._/-][a-z0-9]+)*$")
ECR_HOST = re.compile(r"^\d{12}\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
OUTPUT_TAIL_LINES = 20
NEEDS_DOCKER = (
    "docker is not installed or not on PATH: mrictl image build and push need Docker "
    "(use --dry-run to print the commands)"
)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Revision:
    """Where the checkout stands: HEAD's commit, and whether the work tree differs from it."""

    commit: str
    short: str
    dirty: bool

    @property
    def label(self) -> str:
        return f"{self.commit}-dirty" if self.dirty else self.commit

    @property
    def tag_part(self) -> str:
        return f"{self.short}-dirty" if self.dirty else self.short


@dataclass(frozen=True)
class DockerCommand:
    """One docker command line; `stdin` says what it is fed there (never the value itself)."""

    argv: tuple[str, ...]
    stdin: str | None = None

    def line(self) -> str:
        return shlex.join(self.argv)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"argv": list(self.argv), "line": self.line()}
        if self.stdin is not None:
            document["stdin"] = self.stdin
        return document


@dataclass(frozen=True)
class ImagePlan:
    """What one `mrictl image build` or `push` runs, and the images it names."""

    tag: str
    images: dict[str, str]  # target -> image reference
    commands: list[DockerCommand]
    revision: Revision | None = None
    repository: str | None = None

    def to_dict(self, *, dry_run: bool) -> dict[str, Any]:
        document: dict[str, Any] = {
            "tag": self.tag,
            "revision": self.revision.tag_part if self.revision else None,
            "images": self.images,
            "commands": [command.to_dict() for command in self.commands],
            "dry_run": dry_run,
        }
        if self.repository is not None:
            document["repository"] = self.repository
            document["registry"] = registry_of(self.repository)
        return document


# --- Names ------------------------------------------------------------------------------------


def targets_named(name: str) -> tuple[str, ...]:
    """`cpu`, `gpu`, or `all` of them."""
    if name == "all":
        return TARGETS
    if name not in TARGETS:
        raise MrictlError(f"unknown target {name!r}; choose cpu, gpu or all", ExitCode.USAGE)
    return (name,)


def git_revision(root: Path = REPOSITORY_ROOT) -> Revision | None:
    """HEAD of the checkout at `root`, dirty if anything differs (untracked files included: the
    wheel would hold them); None without git or outside a repository."""
    git = shutil.which("git")
    if git is None:
        return None

    def ask(*args: str) -> str | None:
        try:
            completed = subprocess.run(
                [git, "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return completed.stdout.strip() if completed.returncode == 0 else None

    commit = ask("rev-parse", "--verify", "HEAD")
    short = ask("rev-parse", "--short", "HEAD")
    status = ask("status", "--porcelain")
    if not commit or not short or status is None:
        return None
    return Revision(commit=commit, short=short, dirty=bool(status))


def default_tag(revision: Revision | None, version: str = __version__) -> str:
    """VERSION-REVISION[-dirty], or the version alone when there is no git revision."""
    return f"{version}-{revision.tag_part}" if revision else version


def check_tag(tag: str) -> str:
    if not TAG_PATTERN.fullmatch(tag):
        raise MrictlError(
            f"tag {tag!r} is not a valid image tag (letters, digits, '_', '.', '-'; "
            "at most 124 characters, not starting with '.' or '-')",
            ExitCode.USAGE,
        )
    return tag


def image_tag(tag: str, target: str) -> str:
    """The tag of one target's image: the stacks name `TAG-cpu` and `TAG-gpu`."""
    return f"{tag}-{target}"


def local_image(tag: str, target: str) -> str:
    return f"{LOCAL_NAME}:{image_tag(tag, target)}"


def check_repository(uri: str) -> str:
    """A repository URI (`123456789012.dkr.ecr.eu-west-1.amazonaws.com/mrictl-prod/mrictl`)."""
    uri = uri.strip().rstrip("/")
    if uri.startswith(("https://", "http://")):
        uri = uri.split("://", 1)[1]
    if not REPOSITORY_PATTERN.fullmatch(uri):
        raise MrictlError(
            f"repository {uri!r} is not REGISTRY/NAME without a tag "
            "(the compute stack's RepositoryUri output)",
            ExitCode.USAGE,
        )
    return uri


def registry_of(repository: str) -> str:
    return repository.split("/", 1)[0]


def region_of(registry: str) -> str | None:
    """The AWS region an ECR registry host names; None for any other registry."""
    match = ECR_HOST.fullmatch(registry)
    return match.group(1) if match else None


# --- Plans ------------------------------------------------------------------------------------


def dockerfile(root: Path = REPOSITORY_ROOT) -> Path:
    path = root / DOCKERFILE
    if not path.is_file():
        raise MrictlError(
            f"{DOCKERFILE} not found beside the mrictl package: build images from a source "
            "checkout (pip install -e .)",
            ExitCode.NOT_FOUND,
        )
    return path


def build_command(target: str, tag: str, revision: Revision | None) -> DockerCommand:
    """`docker build` of one target, run in the checkout (the build context)."""
    return DockerCommand(
        (
            "docker",
            "build",
            "--platform",
            PLATFORM,
            "--target",
            target,
            "-f",
            DOCKERFILE,
            "--build-arg",
            f"MRICTL_VERSION={__version__}",
            "--build-arg",
            f"GIT_REVISION={revision.label if revision else 'unknown'}",
            "-t",
            local_image(tag, target),
            ".",
        )
    )


def login_command(registry: str) -> DockerCommand:
    return DockerCommand(
        ("docker", "login", "--username", ECR_USER, "--password-stdin", registry),
        stdin="the password of an ECR authorization token (ecr:GetAuthorizationToken)",
    )


def plan_build(
    targets: Sequence[str], tag: str | None = None, *, root: Path = REPOSITORY_ROOT
) -> ImagePlan:
    """The builds of `targets`, under `tag` (default: version and git revision)."""
    dockerfile(root)
    revision = git_revision(root)
    tag = check_tag(tag if tag is not None else default_tag(revision))
    return ImagePlan(
        tag=tag,
        images={target: local_image(tag, target) for target in targets},
        commands=[build_command(target, tag, revision) for target in targets],
        revision=revision,
    )


def plan_push(
    targets: Sequence[str],
    repository: str,
    tag: str | None = None,
    *,
    root: Path = REPOSITORY_ROOT,
) -> ImagePlan:
    """Log in to the repository's registry, then tag each built image into it and push it."""
    repository = check_repository(repository)
    revision = git_revision(root)
    tag = check_tag(tag if tag is not None else default_tag(revision))
    commands = [login_command(registry_of(repository))]
    images = {}
    for target in targets:
        remote = f"{repository}:{image_tag(tag, target)}"
        images[target] = remote
        commands.append(DockerCommand(("docker", "tag", local_image(tag, target), remote)))
        commands.append(DockerCommand(("docker", "push", remote)))
    return ImagePlan(
        tag=tag, images=images, commands=commands, revision=revision, repository=repository
    )


def repository_for(settings: Settings, given: str | None) -> str:
    """--repository, else the RepositoryUri that `mrictl provision` saved."""
    if given:
        return given
    saved = getattr(settings.aws, "outputs", None) or {}
    if saved.get("RepositoryUri"):
        return saved["RepositoryUri"]
    raise MrictlError(
        "no repository: pass --repository URI, or run mrictl provision (it saves RepositoryUri)",
        ExitCode.USAGE,
    )


# --- Running ----------------------------------------------------------------------------------


def find_docker() -> str:
    docker = shutil.which("docker")
    if docker is None:
        raise MrictlError(NEEDS_DOCKER, ExitCode.USAGE)
    return docker


def ecr_password(ecr: Any) -> str:
    """The password of an ECR authorization token (its user is always AWS)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        data = ecr.get_authorization_token()["authorizationData"][0]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        raise MrictlError(f"ECR refused an authorization token: {code}", ExitCode.BACKEND) from None
    except BotoCoreError as error:
        raise MrictlError(f"ECR is unreachable: {type(error).__name__}", ExitCode.BACKEND) from None
    except (KeyError, IndexError):
        raise MrictlError("ECR returned no authorization data", ExitCode.BACKEND) from None
    try:
        user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    except (KeyError, binascii.Error, UnicodeDecodeError):
        user, password = "", ""
    if user != ECR_USER or not password:
        raise MrictlError("ECR returned an authorization token of another form", ExitCode.BACKEND)
    return password


def ecr_client_for(settings: Settings, repository: str) -> Any:
    """An ECR client of the repository's region (unless the settings name one)."""
    from mrictl.backends import AwsClients

    aws = settings.aws
    region = region_of(registry_of(repository))
    if aws.region is None and region is not None:
        aws = replace(aws, region=region)
    return AwsClients(aws).client("ecr")


def _run(
    argv: Sequence[str], *, cwd: Path, stdin: str | None, echo: Echo | None
) -> tuple[int, list[str]]:
    """Run one command; its output goes to `echo` line by line; returns its code and last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
    with subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        if stdin is not None:
            assert process.stdin is not None
            process.stdin.write(stdin)
            process.stdin.close()
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if echo is not None:
                echo(line)
        return process.wait(), list(tail)


def _failure(command: DockerCommand, code: int, tail: list[str]) -> MrictlError:
    """One line for a docker command that failed, with the exit code the failure deserves."""
    what = " ".join(command.argv[:2])
    said = " ".join(next((line for line in reversed(tail) if line.strip()), "").split())
    text = " ".join(tail).lower()
    if command.argv[1] == "push" and "already exists" in text:
        return MrictlError(
            f"{command.argv[-1]} already exists and ECR tags are immutable: "
            "build and push with a new --tag (or commit, for a new revision)",
            ExitCode.CONFLICT,
        )
    if command.argv[1] == "tag" and "no such image" in text:
        return MrictlError(
            f"image {command.argv[2]} is not built here: run mrictl image build first "
            "(with the same --tag)",
            ExitCode.NOT_FOUND,
        )
    return MrictlError(f"{what} failed (exit {code}): {said or 'no output'}", ExitCode.BACKEND)


def run_plan(
    plan: ImagePlan,
    *,
    docker: str,
    password: Callable[[], str] | None = None,
    root: Path = REPOSITORY_ROOT,
    echo: Echo | None = None,
) -> None:
    """Run the plan's commands in order with this docker; stop at the first that fails.

    The login's password comes from `password()` when the login runs, and goes to its stdin;
    the login's own output is not echoed.
    """
    for command in plan.commands:
        stdin = None
        if command.stdin is not None:
            if password is None:
                raise MrictlError("a registry login needs a password source", ExitCode.INTERNAL)
            stdin = password()
        quiet = command.argv[1] == "login"
        code, tail = _run(
            (docker, *command.argv[1:]), cwd=root, stdin=stdin, echo=None if quiet else echo
        )
        if code != 0:
            raise _failure(command, code, tail)


# --- The two services of `mrictl image` -------------------------------------------------------


def build_images(
    targets: Sequence[str],
    tag: str | None = None,
    *,
    dry_run: bool = False,
    echo: Echo | None = None,
    root: Path = REPOSITORY_ROOT,
) -> ImagePlan:
    """Build the targets' images (or only plan them, with `dry_run`)."""
    plan = plan_build(targets, tag, root=root)
    if not dry_run:
        run_plan(plan, docker=find_docker(), root=root, echo=echo)
    return plan


def push_images(
    targets: Sequence[str],
    settings: Settings,
    *,
    repository: str | None = None,
    tag: str | None = None,
    dry_run: bool = False,
    echo: Echo | None = None,
    root: Path = REPOSITORY_ROOT,
) -> ImagePlan:
    """Push the targets' built images to the repository (or only plan it, with `dry_run`)."""
    plan = plan_push(targets, repository_for(settings, repository), tag, root=root)
    if not dry_run:
        docker = find_docker()  # before any AWS call: without docker there is nothing to do
        assert plan.repository is not None
        ecr = ecr_client_for(settings, plan.repository)
        run_plan(plan, docker=docker, password=lambda: ecr_password(ecr), root=root, echo=echo)
    return plan
