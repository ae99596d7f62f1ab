"""`mrictl image build|push`: the worker images (scripts/container/Dockerfile); needs Docker.

Light at import: boto3 and mrictl.container load only when a command runs.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer

from mrictl.cli.common import EndpointOption, JsonFlag, ProfileOption, RegionOption

app = typer.Typer(
    help="Worker container images: build them, push them to ECR (needs Docker).",
    no_args_is_help=True,
)

TargetOption = Annotated[
    str, typer.Option("--target", help="cpu (preprocess, Fargate), gpu (Batch jobs) or all.")
]
TagOption = Annotated[
    str | None,
    typer.Option(
        "--tag",
        help=(
            "Base tag (default VERSION-REVISION[-dirty]): the images are TAG-cpu and TAG-gpu, "
            "and mrictl provision --image-tag TAG runs them."
        ),
    ),
]
DryRunFlag = Annotated[
    bool, typer.Option("--dry-run", help="Print the docker commands; run nothing.")
]
RepositoryOption = Annotated[
    str | None,
    typer.Option(
        "--repository",
        help="ECR repository URI (default: the RepositoryUri that mrictl provision saved).",
    ),
]
StackPrefixOption = Annotated[
    str | None,
    typer.Option(
        "--stack-prefix",
        envvar="MRICTL_AWS_STACK_PREFIX",
        help="Whose saved outputs name the repository (default mrictl-prod).",
    ),
]


def _to_stderr(line: str) -> None:
    """Docker's own output, as it comes: stdout stays for --json."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _render(plan_document: dict, dry_run: bool, verb: str):
    def render(console) -> None:
        if dry_run:
            for command in plan_document["commands"]:
                console.print(command["line"], markup=False, highlight=False, soft_wrap=True)
            return
        for target, image in plan_document["images"].items():
            console.print(f"{verb} {target}: {image}", markup=False, highlight=False)
        if verb == "pushed":
            line = f"run them with: mrictl provision --image-tag {plan_document['tag']}"
            console.print(line, markup=False, highlight=False)

    return render


@app.command("build")
def build(
    target: TargetOption = "all",
    tag: TagOption = None,
    dry_run: DryRunFlag = False,
    json: JsonFlag = False,
) -> None:
    """Build the images from this checkout (docker build --target cpu|gpu).

    Exit 2 without Docker (--dry-run needs none), 7 when docker build fails.
    """
    from mrictl.container import build_images, targets_named
    from mrictl.output import Output

    plan = build_images(targets_named(target), tag, dry_run=dry_run, echo=_to_stderr)
    document = plan.to_dict(dry_run=dry_run)
    Output(json).result(document, _render(document, dry_run, "built"))


@app.command("push")
def push(
    target: TargetOption = "all",
    tag: TagOption = None,
    repository: RepositoryOption = None,
    region: RegionOption = None,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
    stack_prefix: StackPrefixOption = None,
    dry_run: DryRunFlag = False,
    json: JsonFlag = False,
) -> None:
    """Log in to ECR (a token from boto3, the password on docker's stdin), tag the built images
    into the repository and push them. ECR tags are immutable: a pushed tag is never replaced.
    The base tag (without -cpu/-gpu) is what `mrictl provision --image-tag` takes.

    Exit 2 without Docker or a repository, 4 when an image is not built, 6 when the tag is
    already in the repository, 7 when ECR or docker fails.
    """
    from mrictl.config import load_settings
    from mrictl.container import push_images, targets_named
    from mrictl.output import Output

    aws = {
        "region": region,
        "profile": profile,
        "endpoint_url": endpoint_url,
        "stack_prefix": stack_prefix,
    }
    plan = push_images(
        targets_named(target),
        load_settings(aws=aws),
        repository=repository,
        tag=tag,
        dry_run=dry_run,
        echo=_to_stderr,
    )
    document = plan.to_dict(dry_run=dry_run)
    Output(json).result(document, _render(document, dry_run, "pushed"))
