"""`mrictl provision`: create or update the AWS stacks; `status`; `destroy` (mrictl.infra).

Light at import: boto3 and the library load only when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mrictl.cli.common import (
    EndpointOption,
    JsonFlag,
    ProfileOption,
    RegionOption,
    StackPrefixOption,
    confirm_or_refuse,
)
from mrictl.cli.gateway import gateway

app = typer.Typer(
    help=(
        "Create or update the AWS stacks (infra_templates/) in order, showing what changes; "
        "`status` and `destroy`."
    ),
    invoke_without_command=True,
    no_args_is_help=False,
)
app.command("gateway")(gateway)  # a file share on a Storage Gateway (mrictl.infra.gateway)

YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _with_recorded_results_share(options: Any, path: Path) -> Any:
    """The options with the results share `provision gateway --results` recorded, so recon jobs
    may refresh its cache (compute's ResultsShareArn)."""
    import dataclasses

    from mrictl.infra.stack_settings import read_settings

    record = read_settings(path).get("gateway_results") or {}
    share = record.get("share_arn") if isinstance(record, dict) else None
    return dataclasses.replace(options, results_share_arn=share) if share else options


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _connect(region, profile, endpoint_url, stack_prefix) -> tuple[Any, Any, Path]:
    """The AWS clients, the parsed stack prefix and its settings file, from flags > env > file."""
    from mrictl.backends import AwsClients
    from mrictl.config import load_settings
    from mrictl.infra.stack_settings import settings_path
    from mrictl.infra.stacks import parse_stack_prefix

    aws = {
        "region": region,
        "profile": profile,
        "endpoint_url": endpoint_url,
        "stack_prefix": stack_prefix,
    }
    settings = load_settings(aws=aws).aws
    prefix = parse_stack_prefix(settings.stack_prefix)
    return AwsClients(settings), prefix, settings_path(prefix)


def _progress(output):
    """Each stack event as one line on stderr, as it comes (its reason may hold brackets)."""

    def show(event) -> None:
        output.console.print(event.line(), markup=False, highlight=False, soft_wrap=True)

    return show


def _render_plan(console, plan) -> None:
    where = f"plan for {plan.prefix.text} ({plan.region or 'default region'}):"
    console.print(where, markup=False, highlight=False)
    for stack in plan.stacks:
        line = f"  {stack.stack:<8} {stack.action}"
        if stack.changed_parameters:
            line += f"; parameters: {', '.join(stack.changed_parameters)}"
        if stack.template_changed:
            line += "; template changed"
        if stack.note:
            line += f" ({stack.note})"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        for change in stack.changes:
            style = "bold red" if change.loses_data else None
            console.print(f"      {change.line()}", style=style, markup=False, soft_wrap=True)
    for stack, change in plan.data_at_risk():
        console.print(
            f"WARNING: {stack}: {change.line()}", style="bold red", markup=False, soft_wrap=True
        )


def _render_results(console, results, title: str) -> None:
    from mrictl.output import records_table

    rows = [result.to_dict() for result in results]
    console.print(records_table(rows, ["stack", "stack_name", "action", "status"], title=title))


@app.callback(invoke_without_command=True)
def provision(
    ctx: typer.Context,
    yes: YesFlag = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would change.")
    ] = False,
    with_fsx: Annotated[
        bool, typer.Option("--with-fsx", help="Also the FSx for Lustre stack (kept once made).")
    ] = False,
    vpc_id: Annotated[
        str | None, typer.Option("--vpc-id", help="Use this VPC instead of creating one.")
    ] = None,
    subnet_ids: Annotated[
        str | None,
        typer.Option("--subnet-ids", help="With --vpc-id: its private subnets, a,b (2 zones)."),
    ] = None,
    route_table_ids: Annotated[
        str | None,
        typer.Option(
            "--route-table-ids",
            help="With --vpc-id: route tables for the S3/DynamoDB endpoints, a,b (none: none).",
        ),
    ] = None,
    gpu_instance_types: Annotated[
        str | None,
        typer.Option("--gpu-instance-types", help="Batch GPU instance types, g5.xlarge,..."),
    ] = None,
    max_vcpus: Annotated[
        int | None, typer.Option("--max-vcpus", min=1, help="vCPU ceiling of each GPU pool.")
    ] = None,
    spot: Annotated[
        bool | None,
        typer.Option("--spot/--no-spot", help="Try a Spot GPU pool before on-demand."),
    ] = None,
    archive_days: Annotated[
        int | None,
        typer.Option("--archive-days", min=1, help="Days before raw uploads go to Deep Archive."),
    ] = None,
    log_retention_days: Annotated[
        int | None,
        typer.Option("--log-retention-days", min=1, help="Days the workers' logs are kept."),
    ] = None,
    image_tag: Annotated[
        str | None,
        typer.Option(
            "--image-tag",
            help=(
                "Base tag of the images that mrictl image push pushed (TAG, not TAG-cpu): the "
                "preprocess task runs TAG-cpu, the Batch jobs TAG-gpu."
            ),
        ),
    ] = None,
    region: RegionOption = None,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
    stack_prefix: StackPrefixOption = None,
    json: JsonFlag = False,
) -> None:
    """Create or update every stack in order: shows what changes (loudly a replacement of a
    resource that holds data), asks on a TTY (--yes otherwise), follows each stack's events and
    saves the outputs in the aws settings. A flag not given keeps the deployed value.

    Exit 0 when done or nothing changes, 2 for a bad flag or no --yes off a TTY, 6 when a stack
    is busy or stuck, 7 when AWS is unreachable or a stack fails (its first failing resource).
    """
    if ctx.invoked_subcommand is not None:
        return
    from mrictl.infra import provision as service
    from mrictl.infra.stacks import ProvisionOptions, flat_outputs
    from mrictl.output import Output

    output = Output(json)
    options = ProvisionOptions(
        with_fsx=with_fsx,
        vpc_id=vpc_id,
        subnet_ids=_split(subnet_ids),
        route_table_ids=_split(route_table_ids),
        gpu_instance_types=_split(gpu_instance_types),
        max_vcpus=max_vcpus,
        use_spot=spot,
        archive_days=archive_days,
        log_retention_days=log_retention_days,
        image_tag=image_tag,
    )
    options.check()
    clients, prefix, path = _connect(region, profile, endpoint_url, stack_prefix)
    options = _with_recorded_results_share(options, path)
    plan = service.plan(clients, prefix, options)
    planned = plan.to_dict()
    document: dict[str, Any] = {
        "stack_prefix": planned["stack_prefix"],
        "region": planned["region"],
        "dry_run": dry_run,
        "changed": planned["changed"],
        "plan": planned["stacks"],
        "data_at_risk": planned["data_at_risk"],
        "results": [],
    }
    if dry_run:  # the plan is the result

        def render(console) -> None:
            _render_plan(console, plan)
            console.print("dry run: nothing changed")

        output.result(document, render)
        return
    if not json:  # shown before the confirmation, beside the progress: not the result
        _render_plan(output.console, plan)
    if not plan.changed:
        outputs = service.save_outputs(clients, prefix, path)
        document |= {"outputs": outputs, "outputs_file": str(path)}
        output.result(document, f"no changes: the {len(plan.stacks)} stacks are up to date")
        return
    todo = [stack.stack for stack in plan.stacks if stack.action != "unchanged"]
    risk = f", replacing {len(plan.data_at_risk())} that hold data" if plan.data_at_risk() else ""
    confirm_or_refuse(output, yes, f"apply to {', '.join(todo)}{risk}?")
    results = service.provision(
        clients,
        prefix,
        options,
        on_event=_progress(output),
        save_to=path,
    )
    outputs = flat_outputs({result.stack: result.outputs for result in results})
    document |= {
        "results": [result.to_dict() for result in results],
        "outputs": outputs,
        "outputs_file": str(path),
    }
    output.result(
        document, lambda console: _render_results(console, results, f"provisioned {prefix.text}")
    )


@app.command("status")
def status(
    region: RegionOption = None,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
    stack_prefix: StackPrefixOption = None,
    json: JsonFlag = False,
) -> None:
    """Each stack's status, last change and outputs (absent stacks say so)."""
    from mrictl.infra import provision as service
    from mrictl.output import Output, records_table

    clients, prefix, _ = _connect(region, profile, endpoint_url, stack_prefix)
    document = service.status(clients, prefix)

    def render(console) -> None:
        rows = [{"stack": name, **info} for name, info in document["stacks"].items()]
        columns = ["stack", "stack_name", "status", "updated_at"]
        console.print(records_table(rows, columns, title=f"{prefix.text} ({document['region']})"))
        for name, info in document["stacks"].items():
            for key, value in info["outputs"].items():
                console.print(f"  {name}.{key} = {value}", markup=False, soft_wrap=True)

    Output(json).result(document, render)


@app.command("destroy")
def destroy(
    delete_data: Annotated[
        bool,
        typer.Option(
            "--delete-data",
            help="Also delete storage and jobs: every object, the job table, the key (in 7 days).",
        ),
    ] = False,
    yes: YesFlag = False,
    region: RegionOption = None,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
    stack_prefix: StackPrefixOption = None,
    json: JsonFlag = False,
) -> None:
    """Delete the stacks in reverse order. The buckets, the job table and the key (the storage
    and jobs stacks) are kept unless --delete-data, which a TTY asks to confirm twice.

    Exit 0 when done, 2 without --yes off a TTY, 7 when AWS is unreachable or a deletion fails.
    """
    from mrictl.errors import ExitCode, MrictlError
    from mrictl.infra import destroy as service
    from mrictl.output import Output

    output = Output(json)
    clients, prefix, path = _connect(region, profile, endpoint_url, stack_prefix)
    plan = service.plan_destroy(clients, prefix, delete_data=delete_data)
    document: dict[str, Any] = {**plan.to_dict(), "results": []}
    if not plan.delete:
        output.result(document, f"nothing to delete for {prefix.text}")
        return
    if not json:
        output.info(f"deletes {', '.join(plan.delete)} of {prefix.text}")
        if plan.keep:
            output.info(f"keeps {', '.join(plan.keep)} (their data; --delete-data deletes it)")
        for item in plan.data:
            output.console.print(f"  DELETES {item}", style="bold red", markup=False)
    confirm_or_refuse(output, yes, f"delete the stacks {', '.join(plan.delete)}?")
    if plan.data and not yes:  # confirm_or_refuse asked on a TTY: ask again, explicitly
        typed = typer.prompt(f"every object and job record goes: type {prefix.text} to confirm")
        if typed.strip() != prefix.text:
            raise MrictlError("not confirmed: nothing deleted", ExitCode.USAGE)
    results = service.destroy(clients, plan, on_event=_progress(output), save_to=path)
    document["results"] = [result.to_dict() for result in results]
    output.result(
        document, lambda console: _render_results(console, results, f"destroyed {prefix.text}")
    )
