"""`mrictl provision gateway`: a file share on an activated S3 File Gateway (mrictl.infra.gateway).

A command function, not a sub-app: `mrictl provision` registers it. Light at import: boto3 and
the library load only when the command runs.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from mrictl.cli.common import (
    EndpointOption,
    JsonFlag,
    ProfileOption,
    RegionOption,
    StackPrefixOption,
)


class Protocol(StrEnum):
    nfs = "nfs"
    smb = "smb"


class Authentication(StrEnum):
    ActiveDirectory = "ActiveDirectory"
    GuestAccess = "GuestAccess"


def gateway(
    gateway_arn: Annotated[
        str,
        typer.Option(
            "--gateway-arn", help="The activated S3 File Gateway (arn:aws:storagegateway:...)."
        ),
    ],
    role_arn: Annotated[
        str,
        typer.Option(
            "--role-arn",
            help="IAM role the gateway assumes to write the raw bucket, or to read the "
            "reconstructed bucket with --results (see docs/aws.md).",
        ),
    ],
    results: Annotated[
        bool,
        typer.Option(
            "--results",
            help="The read-only results share on the reconstructed bucket's reconstructed/ "
            "(each job's outputs in its folder), instead of the uploads share.",
        ),
    ] = False,
    protocol: Annotated[
        Protocol, typer.Option("--protocol", help="nfs (Linux/macOS) or smb (Windows).")
    ] = Protocol.nfs,
    client_cidrs: Annotated[
        list[str] | None,
        typer.Option(
            "--client",
            help="NFS: a workstation address or CIDR block allowed to mount (repeat it).",
        ),
    ] = None,
    allow_any_client: Annotated[
        bool,
        typer.Option("--allow-any-client", help="NFS: let any host mount the share (0.0.0.0/0)."),
    ] = False,
    authentication: Annotated[
        Authentication,
        typer.Option("--authentication", help="SMB: ActiveDirectory or GuestAccess."),
    ] = Authentication.ActiveDirectory,
    valid_users: Annotated[
        list[str] | None,
        typer.Option("--valid-user", help="SMB: a user or @group allowed in (repeat it)."),
    ] = None,
    admin_users: Annotated[
        list[str] | None,
        typer.Option("--admin-user", help="SMB: a user or @group with admin rights (repeat it)."),
    ] = None,
    allow_unencrypted_smb: Annotated[
        bool,
        typer.Option(
            "--allow-unencrypted-smb",
            help="SMB: accept a gateway that does not require SMB 3 encryption.",
        ),
    ] = False,
    share_name: Annotated[
        str | None,
        typer.Option(
            "--share-name", help="Share name (default: <stack prefix>-uploads, or -results)."
        ),
    ] = None,
    bucket: Annotated[
        str | None,
        typer.Option(
            "--bucket",
            help="Raw (--results: reconstructed) bucket (default: the storage stack's, as saved).",
        ),
    ] = None,
    kms_key_arn: Annotated[
        str | None,
        typer.Option(
            "--kms-key-arn", help="Data key ARN (default: the storage stack's, as saved)."
        ),
    ] = None,
    settling_seconds: Annotated[
        int,
        typer.Option(
            "--settling-seconds",
            min=1,
            help="Send the upload notification once a file had no writes for this long.",
        ),
    ] = 60,
    region: RegionOption = None,
    profile: ProfileOption = None,
    endpoint_url: EndpointOption = None,
    stack_prefix: StackPrefixOption = None,
    json: JsonFlag = False,
) -> None:
    """Create an NFS or SMB file share on an activated S3 File Gateway, mapping the raw
    bucket's uploads/ area (with --results: a read-only share on the reconstructed bucket's
    reconstructed/, where finished jobs' outputs appear), and record it in the stacks' settings
    file.

    Idempotent: a share already on that location is reported, not duplicated. Exit 2 for a bad
    flag (a stack prefix that provision refuses too) or a region without Storage Gateway, 4 for
    an unknown gateway, 6 when the gateway is not a running S3 File Gateway or another share
    holds the location, 7 for other AWS errors.
    """
    from mrictl.backends import AwsClients
    from mrictl.config import load_settings
    from mrictl.infra.gateway import (
        ShareRequest,
        create_file_share,
        save_share,
        share_location,
        stack_tags,
        storage_gateway_client,
    )
    from mrictl.infra.stack_settings import read_settings, settings_path
    from mrictl.infra.stacks import parse_stack_prefix
    from mrictl.output import Output, key_value_table

    output = Output(json)
    aws = {
        "region": region,
        "profile": profile,
        "endpoint_url": endpoint_url,
        "stack_prefix": stack_prefix,
    }
    settings = load_settings(aws=aws).aws
    prefix = parse_stack_prefix(settings.stack_prefix)  # the rule mrictl provision applies
    path = settings_path(prefix)
    share_bucket, data_key = share_location(
        read_settings(path), bucket, kms_key_arn, path.name, results=results
    )
    request = ShareRequest(
        gateway_arn=gateway_arn,
        protocol=protocol.value,
        role_arn=role_arn,
        bucket=share_bucket,
        kms_key_arn=data_key,
        share_name=share_name or f"{prefix.text}-{'results' if results else 'uploads'}",
        client_cidrs=tuple(client_cidrs or ()),
        allow_any_client=allow_any_client,
        authentication=authentication.value,
        valid_users=tuple(valid_users or ()),
        admin_users=tuple(admin_users or ()),
        allow_unencrypted_smb=allow_unencrypted_smb,
        settling_seconds=settling_seconds,
        tags=stack_tags(prefix),
        results=results,
    )
    client = storage_gateway_client(AwsClients(settings))
    outcome = create_file_share(client, request)
    save_share(path, outcome.record)

    def render(console) -> None:
        verb = "created" if outcome.created else "already there"
        console.print(f"{request.protocol.upper()} file share {verb}", markup=False)
        rows = {**outcome.record, "mount": outcome.mount}
        for name, value in rows.items():
            if isinstance(value, list):
                rows[name] = ", ".join(value) or None
        console.print(key_value_table(rows))
        console.print(f"recorded in {path.name}", markup=False)

    output.result({**outcome.to_dict(), "settings_file": path.name}, render)
