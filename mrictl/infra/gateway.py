"""An NFS or SMB file share on an activated S3 File Gateway, mapping the raw bucket's `uploads/`
area (or, read-only, the reconstructed bucket's `reconstructed/`: the results share), made
through the Storage Gateway API and recorded beside the stacks.

CloudFormation cannot create a gateway, and its file-share resources exist in few regions'
schemas, so `mrictl provision gateway` makes the share here. It is idempotent: a live share on
the same location is found and returned, never duplicated, and a share there that differs in
what matters (role, key, clients, authentication) is a conflict, never silently reused. The
functions receive their client (mrictl.backends.AwsClients makes it); the record goes into the
stack prefix's settings file (mrictl/infra/stack_settings.py) under "gateway" (the results
share under "gateway_results", where the aws backend finds it to refresh), beside the
provisioner's "stacks", whose storage outputs name the bucket and the key.

Exit codes: a bad flag, or a region without Storage Gateway, is a usage error (2); a gateway
that is not a running S3 File Gateway, an SMB gateway not ready for the authentication asked
for, or another share already on the location, is a conflict (6: the request does not fit the
gateway's state); an unknown gateway is not found (4); any other API failure is a backend error
(7). Nothing here handles patient data: messages name ARNs, regions and CIDRs only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mrictl import keys
from mrictl.errors import ExitCode, MrictlError
from mrictl.infra.stack_settings import (
    read_settings,
    save_gateway,
    saved_outputs,
    write_settings,
)
from mrictl.infra.stacks import StackPrefix

SERVICE = "storagegateway"
PROTOCOLS = ("nfs", "smb")
AUTHENTICATIONS = ("ActiveDirectory", "GuestAccess")
FILE_GATEWAY_TYPE = "FILE_S3"  # an S3 File Gateway; FSx, volume and tape gateways hold no S3 shares
RUNNING = "RUNNING"
GONE = ("DELETING", "FORCE_DELETING")  # a share on its way out no longer holds the location
# SMB 3 encryption between the workstation and the gateway: PHI crosses the hospital's LAN there.
ENCRYPTED_SMB = ("MandatoryEncryption", "MandatoryEncryptionNoAes128")
KMS_ENCRYPTION = ("SseKms", "DsseKms")
DEFAULT_SETTLING_SECONDS = 60
DESCRIBE_AT_MOST = 10  # DescribeNFSFileShares and DescribeSMBFileShares take 1 to 10 ARNs
# The upload area: tars the workstation writes land as uploads/<scan_id>.tar, which is what the
# raw bucket's event filter (prefix uploads/, suffix .tar) sends to the preprocess queue.
SHARE_PREFIX = keys.uploads_prefix()
# The results share: a job's outputs, reconstructed/<job_id>/..., seen read-only by the hospital.
RESULTS_PREFIX = keys.results_prefix()
GATEWAY_RESULTS = "gateway_results"  # the results share's record in the settings file

_GATEWAY_ARN = re.compile(
    r"^arn:(aws[a-z-]*):storagegateway:([a-z0-9-]+):(\d{12}):gateway/sgw-[0-9A-Za-z]{8,26}$"
)
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHARE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")  # SMB share names: 80 at most


def _usage(message: str) -> MrictlError:
    return MrictlError(message, ExitCode.USAGE)


def _conflict(message: str) -> MrictlError:
    return MrictlError(message, ExitCode.CONFLICT)


def _client_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise _usage(f"--client {text!r} is not an IP address or CIDR block") from None


@dataclass(frozen=True)
class ShareRequest:
    """What `mrictl provision gateway` asks for; checked when made (a usage error otherwise)."""

    gateway_arn: str
    protocol: str
    role_arn: str  # the role the gateway assumes to write the bucket (its policy: docs/aws.md)
    bucket: str  # the storage stack's raw bucket
    kms_key_arn: str  # the storage stack's DataKeyArn
    share_name: str
    client_cidrs: tuple[str, ...] = ()  # NFS: who may mount; never 0.0.0.0/0 by accident
    allow_any_client: bool = False
    authentication: str = "ActiveDirectory"  # SMB only
    valid_users: tuple[str, ...] = ()  # SMB with Active Directory: users and @groups
    admin_users: tuple[str, ...] = ()
    allow_unencrypted_smb: bool = False
    settling_seconds: int = DEFAULT_SETTLING_SECONDS
    tags: dict[str, str] = field(default_factory=dict)
    results: bool = False  # the read-only results share on the reconstructed bucket

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise _usage(f"unknown protocol {self.protocol!r}; choose nfs or smb")
        if not _GATEWAY_ARN.fullmatch(self.gateway_arn):
            raise _usage(
                f"--gateway-arn {self.gateway_arn!r} is not a gateway ARN "
                "(arn:aws:storagegateway:REGION:ACCOUNT:gateway/sgw-...)"
            )
        if not _ROLE_ARN.fullmatch(self.role_arn):
            raise _usage(f"--role-arn {self.role_arn!r} is not an IAM role ARN")
        if not _KMS_KEY_ARN.fullmatch(self.kms_key_arn):
            raise _usage(
                f"--kms-key-arn {self.kms_key_arn!r} is not a KMS key ARN (the storage stack's "
                "DataKeyArn)"
            )
        if not _BUCKET.fullmatch(self.bucket):
            raise _usage(f"--bucket {self.bucket!r} is not an S3 bucket name")
        if not _SHARE_NAME.fullmatch(self.share_name):
            raise _usage(
                f"--share-name {self.share_name!r}: use 1-80 letters, digits, '.', '_' or '-'"
            )
        if not 1 <= self.settling_seconds <= 2_592_000:
            raise _usage("--settling-seconds must be between 1 and 2592000 (30 days)")
        if self.protocol == "nfs":
            self._check_nfs()
        else:
            self._check_smb()

    def _check_nfs(self) -> None:
        if self.valid_users or self.admin_users:
            raise _usage("--valid-user and --admin-user apply to SMB shares")
        networks = [_client_network(text) for text in self.client_cidrs]
        if any(network.prefixlen == 0 for network in networks) and not self.allow_any_client:
            raise _usage(
                "--client 0.0.0.0/0 lets any host mount the share: name the workstations' "
                "addresses, or pass --allow-any-client"
            )
        if not networks and not self.allow_any_client:
            raise _usage(
                "an NFS share needs --client CIDR (the workstations that may mount it), or "
                "--allow-any-client"
            )

    def _check_smb(self) -> None:
        if self.client_cidrs:
            raise _usage("--client applies to NFS shares; an SMB share admits users (--valid-user)")
        if self.authentication not in AUTHENTICATIONS:
            raise _usage(
                f"unknown authentication {self.authentication!r}; choose one of "
                f"{', '.join(AUTHENTICATIONS)}"
            )
        if self.authentication == "GuestAccess" and (self.valid_users or self.admin_users):
            raise _usage("--valid-user and --admin-user need Active Directory authentication")
        for user in (*self.valid_users, *self.admin_users):
            if not 1 <= len(user) <= 64:
                raise _usage(f"user or group name {user!r} must be 1-64 characters")

    @property
    def region(self) -> str:
        return _GATEWAY_ARN.fullmatch(self.gateway_arn).group(2)

    @property
    def partition(self) -> str:
        return _GATEWAY_ARN.fullmatch(self.gateway_arn).group(1)

    @property
    def prefix(self) -> str:
        return RESULTS_PREFIX if self.results else SHARE_PREFIX

    @property
    def location_arn(self) -> str:
        """The raw bucket's upload area, `arn:aws:s3:::<raw bucket>/uploads/`, or the results
        area, `arn:aws:s3:::<reconstructed bucket>/reconstructed/`."""
        return f"arn:{self.partition}:s3:::{self.bucket}/{self.prefix}"

    @property
    def client_list(self) -> list[str]:
        """The NFS clients as the API takes them; `0.0.0.0/0` only when any client is allowed."""
        if not self.client_cidrs:
            return ["0.0.0.0/0"]
        return [str(_client_network(text)) for text in self.client_cidrs]


@dataclass(frozen=True)
class ShareOutcome:
    """The share's record (saved under "gateway"), whether this run created it, and where a
    workstation mounts it."""

    record: dict[str, Any]
    created: bool
    mount: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.record, "created": self.created, "mount": self.mount}


def stack_tags(prefix: StackPrefix) -> dict[str, str]:
    """The stacks' two tags, `project` and `environment`, for the share too."""
    return {tag["Key"]: tag["Value"] for tag in prefix.tags()}


# --- Regions ----------------------------------------------------------------------------------


def storage_gateway_regions() -> frozenset[str]:
    """The regions that offer Storage Gateway in every partition, from botocore's endpoint data."""
    import boto3

    session = boto3.session.Session()
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions(SERVICE, partition_name=partition)
    )


def check_region(region: str | None, offered: Collection[str] | None = None) -> None:
    """A usage error for a region without Storage Gateway, before any call is made there."""
    if not region:
        raise _usage("no AWS region: pass --region or set MRICTL_AWS_REGION")
    if region not in (storage_gateway_regions() if offered is None else offered):
        import botocore

        raise _usage(
            f"Storage Gateway is not offered in {region} (botocore {botocore.__version__}'s "
            "endpoint data): choose a region that offers it, with the gateway activated there"
        )


# --- API calls --------------------------------------------------------------------------------


def _call(client: Any, operation: str, **parameters: Any) -> dict[str, Any]:
    """One Storage Gateway call; its failures become one-line errors with exit codes."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return getattr(client, operation)(**parameters)
    except ClientError as error:
        raise _api_error(error) from None
    except BotoCoreError as error:
        raise MrictlError(f"Storage Gateway: {error}", ExitCode.BACKEND) from None


def _api_error(error: Any) -> MrictlError:
    response = error.response
    detail = response.get("error") or {}
    reason = detail.get("errorCode") if isinstance(detail, dict) else None
    code = response.get("Error", {}).get("Code", "error")
    message = " ".join(str(response.get("Error", {}).get("Message", "")).split())
    text = f"Storage Gateway {error.operation_name}: {reason or code}: {message}".rstrip(": ")
    if reason == "GatewayNotFound":
        return MrictlError(text, ExitCode.NOT_FOUND)
    if reason == "GatewayNotConnected":
        return MrictlError(text, ExitCode.CONFLICT)
    return MrictlError(text, ExitCode.BACKEND)


def storage_gateway_client(clients: Any) -> Any:
    """The Storage Gateway client of a client factory (mrictl.backends.AwsClients); a missing
    region is a usage error, not a traceback."""
    from botocore.exceptions import BotoCoreError, NoRegionError

    try:
        return clients.client(SERVICE)
    except NoRegionError:
        raise _usage("no AWS region: pass --region or set MRICTL_AWS_REGION") from None
    except BotoCoreError as error:
        raise MrictlError(f"AWS: {error}", ExitCode.BACKEND) from None


def check_gateway(client: Any, gateway_arn: str) -> dict[str, Any]:
    """The gateway's description, if it is a running S3 File Gateway; a conflict otherwise."""
    described = _call(client, "describe_gateway_information", GatewayARN=gateway_arn)
    kind = described.get("GatewayType")
    if kind != FILE_GATEWAY_TYPE:
        raise _conflict(
            f"gateway {gateway_arn} is a {kind or 'gateway of unknown type'}, not an S3 File "
            f"Gateway ({FILE_GATEWAY_TYPE}): only an S3 File Gateway holds shares on a bucket"
        )
    state = described.get("GatewayState")
    if state != RUNNING:
        raise _conflict(
            f"gateway {gateway_arn} is {state or 'in an unknown state'}, not {RUNNING}: start its "
            "virtual machine or instance, and run this again"
        )
    return described


def check_smb_settings(client: Any, request: ShareRequest) -> dict[str, Any]:
    """A conflict when the gateway cannot serve the SMB share asked for: not joined to the
    domain, no guest password, or SMB without mandatory encryption (unless allowed)."""
    settings = _call(client, "describe_smb_settings", GatewayARN=request.gateway_arn)
    if request.authentication == "ActiveDirectory":
        status = settings.get("ActiveDirectoryStatus")
        if status != "JOINED":
            raise _conflict(
                f"gateway {request.gateway_arn} is not joined to an Active Directory domain "
                f"({status or 'no status'}): join it (JoinDomain), or use --authentication "
                "GuestAccess"
            )
    elif not settings.get("SMBGuestPasswordSet"):
        raise _conflict(
            f"gateway {request.gateway_arn} has no SMB guest password: set one "
            "(SetSMBGuestPassword) before a GuestAccess share"
        )
    strategy = settings.get("SMBSecurityStrategy")
    if strategy not in ENCRYPTED_SMB and not request.allow_unencrypted_smb:
        raise _conflict(
            f"gateway {request.gateway_arn} does not require SMB encryption ({strategy}): set "
            "its SMB security strategy to MandatoryEncryption (UpdateSMBSecurityStrategy), or "
            "pass --allow-unencrypted-smb for clients that cannot encrypt (SMB 2.1 and older)"
        )
    return settings


def _listed_shares(client: Any, gateway_arn: str) -> list[dict[str, Any]]:
    shares: list[dict[str, Any]] = []
    marker: str | None = None
    while True:
        paging = {"Marker": marker} if marker else {}
        page = _call(client, "list_file_shares", GatewayARN=gateway_arn, **paging)
        shares += page.get("FileShareInfoList", [])
        marker = page.get("NextMarker")
        if not marker:
            return [share for share in shares if share.get("FileShareStatus") not in GONE]


_DESCRIBE = {
    "nfs": ("describe_nfs_file_shares", "NFSFileShareInfoList"),
    "smb": ("describe_smb_file_shares", "SMBFileShareInfoList"),
}


def _described(client: Any, protocol: str, arns: list[str]) -> Iterable[dict[str, Any]]:
    operation, answer = _DESCRIBE[protocol]
    for start in range(0, len(arns), DESCRIBE_AT_MOST):
        chunk = arns[start : start + DESCRIBE_AT_MOST]
        yield from _call(client, operation, FileShareARNList=chunk).get(answer, [])


def _same_location(one: str | None, other: str) -> bool:
    return bool(one) and one.rstrip("/") == other.rstrip("/")


def find_share(
    client: Any, gateway_arn: str, location_arn: str, listed: list[dict[str, Any]] | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The live share of the gateway on that location, as (protocol, its description)."""
    listed = _listed_shares(client, gateway_arn) if listed is None else listed
    for protocol in PROTOCOLS:
        arns = [
            share["FileShareARN"]
            for share in listed
            if str(share.get("FileShareType", "")).lower() == protocol
        ]
        for described in _described(client, protocol, arns):
            live = described.get("FileShareStatus") not in GONE
            if live and _same_location(described.get("LocationARN"), location_arn):
                return protocol, described
    return None


def _client_token(request: ShareRequest, existing: list[str]) -> str:
    """The same request against the same gateway state gets the same token, so a retried create
    makes one share; a share deleted since cannot hand its old token back (the listing differs)."""
    basis = [
        request.gateway_arn,
        request.location_arn,
        request.protocol,
        request.share_name,
        sorted(existing),
    ]
    return "mrictl-" + hashlib.sha256(json.dumps(basis).encode()).hexdigest()[:40]


def _common_parameters(request: ShareRequest, token: str) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "ClientToken": token,
        "GatewayARN": request.gateway_arn,
        "Role": request.role_arn,
        "LocationARN": request.location_arn,
        # SSE-KMS with the stacks' key. EncryptionType is the current field, KMSEncrypted the
        # one older gateways know; both are sent, and they agree.
        "EncryptionType": "SseKms",
        "KMSEncrypted": True,
        "KMSKey": request.kms_key_arn,
        # Raw uploads start in S3 Standard; the bucket's lifecycle archives them after 30 days.
        "DefaultStorageClass": "S3_STANDARD",
        # The buckets enforce bucket ownership (no ACLs): this is the one ACL they accept.
        "ObjectACL": "bucket-owner-full-control",
        # The results share is read-only: the hospital reads outputs, only jobs write them.
        "ReadOnly": request.results,
        "GuessMIMETypeEnabled": False,
        "RequesterPays": False,
        "FileShareName": request.share_name,
    }
    if not request.results:
        # An upload notification (EventBridge) once a file has had no writes for this long.
        parameters["NotificationPolicy"] = json.dumps(
            {"Upload": {"SettlingTimeInSeconds": request.settling_seconds}}
        )
    if request.tags:
        parameters["Tags"] = [{"Key": key, "Value": value} for key, value in request.tags.items()]
    return parameters


def nfs_share_parameters(request: ShareRequest, token: str) -> dict[str, Any]:
    """The CreateNFSFileShare request: the named clients only, root squashed."""
    return {
        **_common_parameters(request, token),
        "ClientList": request.client_list,
        "Squash": "RootSquash",
    }


def smb_share_parameters(request: ShareRequest, token: str) -> dict[str, Any]:
    """The CreateSMBFileShare request: Windows ACLs and access-based enumeration with Active
    Directory, so users see only the folders they may open."""
    directory = request.authentication == "ActiveDirectory"
    parameters = {
        **_common_parameters(request, token),
        "Authentication": request.authentication,
        "SMBACLEnabled": directory,
        "AccessBasedEnumeration": directory,
        "CaseSensitivity": "ClientSpecified",
    }
    if request.valid_users:
        parameters["ValidUserList"] = list(request.valid_users)
    if request.admin_users:
        parameters["AdminUserList"] = list(request.admin_users)
    return parameters


def _differences(request: ShareRequest, protocol: str, described: dict[str, Any]) -> list[str]:
    """What an existing share on the location does differently from this request."""
    found: list[str] = []
    if described.get("Role") != request.role_arn:
        found.append("role")
    encrypted = described.get("EncryptionType") in KMS_ENCRYPTION or (
        "EncryptionType" not in described and described.get("KMSEncrypted")
    )
    if not encrypted or described.get("KMSKey") != request.kms_key_arn:
        found.append("KMS key")
    if bool(described.get("ReadOnly")) != request.results:
        found.append("read-only" if described.get("ReadOnly") else "writable")
    if protocol == "nfs":
        if sorted(described.get("ClientList") or []) != sorted(request.client_list):
            found.append("client list")
        if described.get("Squash") != "RootSquash":
            found.append("root squash")
    elif described.get("Authentication") != request.authentication:
        found.append("authentication")
    return found


def _record(request: ShareRequest, share_arn: str, share_name: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "share_arn": share_arn,
        "protocol": request.protocol,
        "gateway_arn": request.gateway_arn,
        "region": request.region,
        "location": request.location_arn,
        "bucket": request.bucket,
        "kms_key_arn": request.kms_key_arn,
        "role_arn": request.role_arn,
        "share_name": share_name,
        "read_only": request.results,
    }
    if request.protocol == "nfs":
        record["client_list"] = request.client_list
    else:
        record["authentication"] = request.authentication
        record["valid_users"] = list(request.valid_users)
        record["admin_users"] = list(request.admin_users)
    return record


def _mount(protocol: str, gateway: dict[str, Any], share_name: str) -> str | None:
    """Where a workstation mounts the share: `IP:/name` (NFS) or `\\\\IP\\name` (SMB)."""
    addresses = [
        interface.get("Ipv4Address")
        for interface in gateway.get("GatewayNetworkInterfaces") or []
        if interface.get("Ipv4Address")
    ]
    if not addresses:
        return None
    if protocol == "nfs":
        return f"{addresses[0]}:/{share_name}"
    return f"\\\\{addresses[0]}\\{share_name}"


def create_file_share(
    client: Any, request: ShareRequest, *, offered_regions: Collection[str] | None = None
) -> ShareOutcome:
    """Create the share, or find the one already on the location: the region first (no call
    where the service is not offered), then the gateway, then the gateway's shares."""
    region = client.meta.region_name
    check_region(region, offered_regions)
    if request.region != region:
        raise _usage(
            f"the gateway is in {request.region} but the region is {region}: pass "
            f"--region {request.region}"
        )
    gateway = check_gateway(client, request.gateway_arn)
    if request.protocol == "smb":
        check_smb_settings(client, request)
    listed = _listed_shares(client, request.gateway_arn)
    found = find_share(client, request.gateway_arn, request.location_arn, listed)
    if found is not None:
        protocol, described = found
        share_arn = described["FileShareARN"]
        if protocol != request.protocol:
            raise _conflict(
                f"an {protocol.upper()} share ({share_arn}) already maps {request.location_arn} "
                f"on this gateway: remove it, or ask for --protocol {protocol}"
            )
        differences = _differences(request, protocol, described)
        if differences:
            raise _conflict(
                f"the {protocol.upper()} share {share_arn} on {request.location_arn} differs "
                f"from this request in: {', '.join(differences)}; change or remove it in "
                "Storage Gateway, then run this again"
            )
        share_name = described.get("FileShareName") or request.share_name
        record = _record(request, share_arn, share_name)
        return ShareOutcome(record, False, _mount(protocol, gateway, share_name))
    token = _client_token(request, [share["FileShareARN"] for share in listed])
    if request.protocol == "nfs":
        answer = _call(client, "create_nfs_file_share", **nfs_share_parameters(request, token))
    else:
        answer = _call(client, "create_smb_file_share", **smb_share_parameters(request, token))
    record = _record(request, answer["FileShareARN"], request.share_name)
    return ShareOutcome(record, True, _mount(request.protocol, gateway, request.share_name))


# --- Where the share points ------------------------------------------------------------------


def share_location(
    document: Mapping[str, Any],
    bucket: str | None,
    kms_key_arn: str | None,
    path_name: str,
    *,
    results: bool = False,
) -> tuple[str, str]:
    """The raw (or, for the results share, reconstructed) bucket and the data key: from the
    flags, else from the saved storage outputs."""
    outputs = saved_outputs(document, "storage")
    bucket = bucket or outputs.get("ReconstructedBucketName" if results else "RawBucketName")
    kms_key_arn = kms_key_arn or outputs.get("DataKeyArn")
    missing = [
        flag for flag, value in (("--bucket", bucket), ("--kms-key-arn", kms_key_arn)) if not value
    ]
    if missing:
        raise _usage(
            f"{path_name} holds no storage stack outputs: run `mrictl provision` first, or pass "
            f"{' and '.join(missing)}"
        )
    return bucket, kms_key_arn


def save_share(path: Any, record: Mapping[str, Any]) -> None:
    """Record the share in the settings file: under "gateway" (uploads) or "gateway_results"
    (the read-only results share), keeping every other key."""
    if not record.get("read_only"):
        save_gateway(path, record)
        return
    document = read_settings(path)
    document[GATEWAY_RESULTS] = dict(record)
    write_settings(path, document)
