"""`mrictl provision gateway`: a file share on an activated S3 File Gateway, checked against
botocore's Stubber on a real storagegateway client (moto implements none of Storage Gateway), so
every request's parameters are the model's and are asserted exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mrictl.cli.gateway import gateway
from mrictl.cli.main import MrictlGroup
from mrictl.errors import ExitCode, MrictlError
from mrictl.infra.gateway import ShareRequest, create_file_share, share_location
from mrictl.infra.stack_settings import read_settings, save_gateway, settings_path
from mrictl.infra.stacks import parse_stack_prefix

boto3 = pytest.importorskip("boto3")
stub = pytest.importorskip("botocore.stub")

REGION = "us-east-1"
ACCOUNT = "111122223333"
GATEWAY_ARN = f"arn:aws:storagegateway:{REGION}:{ACCOUNT}:gateway/sgw-12A3456B"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/mrictl/test/gateway-uploads"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BUCKET = f"mrictl-test-{ACCOUNT}-{REGION}-raw"
LOCATION = f"arn:aws:s3:::{BUCKET}/uploads/"
RESULTS_BUCKET = f"mrictl-test-{ACCOUNT}-{REGION}-reconstructed"
RESULTS_LOCATION = f"arn:aws:s3:::{RESULTS_BUCKET}/reconstructed/"
RESULTS_SHARE_ARN = f"arn:aws:storagegateway:{REGION}:{ACCOUNT}:share/share-5E5E5E5E"
SHARE_ARN = f"arn:aws:storagegateway:{REGION}:{ACCOUNT}:share/share-1A2B3C4D"
OTHER_SHARE_ARN = f"arn:aws:storagegateway:{REGION}:{ACCOUNT}:share/share-9F8E7D6C"
WORKSTATIONS = "10.20.0.0/24"
SETTLING = '{"Upload": {"SettlingTimeInSeconds": 60}}'
TAGS = [{"Key": "project", "Value": "mrictl"}, {"Key": "environment", "Value": "test"}]


def storage_gateway_client(region: str = REGION):
    session = boto3.session.Session(
        region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    return session.client("storagegateway")


@pytest.fixture
def sgw():
    """A real client whose every call is answered by the Stubber, in the order queued; a call
    that was not queued fails the test, and so does a queued one never made."""
    client = storage_gateway_client()
    with stub.Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def sent(sgw):
    """The parameters of every create call the client made."""
    client, _ = sgw
    calls: list[dict] = []
    for operation in ("CreateNFSFileShare", "CreateSMBFileShare"):
        client.meta.events.register(
            f"provide-client-params.storagegateway.{operation}",
            lambda params, **_: calls.append(dict(params)),
        )
    return calls


def nfs_request(**changes) -> ShareRequest:
    fields = {
        "gateway_arn": GATEWAY_ARN,
        "protocol": "nfs",
        "role_arn": ROLE_ARN,
        "bucket": BUCKET,
        "kms_key_arn": KEY_ARN,
        "share_name": "mrictl-test-uploads",
        "client_cidrs": (WORKSTATIONS,),
        "tags": {"project": "mrictl", "environment": "test"},
    }
    return ShareRequest(**{**fields, **changes})


def smb_request(**changes) -> ShareRequest:
    fields = {"protocol": "smb", "client_cidrs": (), "valid_users": ("@MRI-Technologists",)}
    return nfs_request(**{**fields, **changes})


def gateway_described(state: str = "RUNNING", kind: str = "FILE_S3") -> dict:
    return {
        "GatewayARN": GATEWAY_ARN,
        "GatewayState": state,
        "GatewayType": kind,
        "GatewayNetworkInterfaces": [{"Ipv4Address": "10.20.0.5"}],
    }


def listed(*shares: tuple[str, str]) -> dict:
    return {
        "FileShareInfoList": [
            {
                "FileShareType": kind,
                "FileShareARN": arn,
                "FileShareId": arn.rsplit("/", 1)[-1],
                "FileShareStatus": "AVAILABLE",
                "GatewayARN": GATEWAY_ARN,
            }
            for kind, arn in shares
        ]
    }


def nfs_described(arn: str = SHARE_ARN, location: str = LOCATION, **changes) -> dict:
    return {
        "FileShareARN": arn,
        "FileShareId": arn.rsplit("/", 1)[-1],
        "FileShareStatus": "AVAILABLE",
        "GatewayARN": GATEWAY_ARN,
        "EncryptionType": "SseKms",
        "KMSEncrypted": True,
        "KMSKey": KEY_ARN,
        "Role": ROLE_ARN,
        "LocationARN": location,
        "ClientList": [WORKSTATIONS],
        "Squash": "RootSquash",
        "ReadOnly": False,
        "FileShareName": "mrictl-test-uploads",
        **changes,
    }


def expect_gateway(stubber, answer: dict | None = None) -> None:
    stubber.add_response(
        "describe_gateway_information",
        answer or gateway_described(),
        {"GatewayARN": GATEWAY_ARN},
    )


def expect_listing(stubber, answer: dict) -> None:
    stubber.add_response("list_file_shares", answer, {"GatewayARN": GATEWAY_ARN})


def refused(call) -> MrictlError:
    with pytest.raises(MrictlError) as caught:
        call()
    return caught.value


# --- NFS --------------------------------------------------------------------------------------


def test_an_nfs_share_maps_the_raw_uploads_area_with_the_data_key_and_named_clients(sgw, sent):
    client, stubber = sgw
    expect_gateway(stubber)
    expect_listing(stubber, listed())
    stubber.add_response(
        "create_nfs_file_share",
        {"FileShareARN": SHARE_ARN},
        {
            "ClientToken": stub.ANY,
            "GatewayARN": GATEWAY_ARN,
            "Role": ROLE_ARN,
            "LocationARN": LOCATION,
            "EncryptionType": "SseKms",
            "KMSEncrypted": True,
            "KMSKey": KEY_ARN,
            "DefaultStorageClass": "S3_STANDARD",
            "ObjectACL": "bucket-owner-full-control",
            "ClientList": [WORKSTATIONS],
            "Squash": "RootSquash",
            "ReadOnly": False,
            "GuessMIMETypeEnabled": False,
            "RequesterPays": False,
            "FileShareName": "mrictl-test-uploads",
            "NotificationPolicy": SETTLING,
            "Tags": TAGS,
        },
    )

    outcome = create_file_share(client, nfs_request())

    assert outcome.created
    assert outcome.record == {
        "share_arn": SHARE_ARN,
        "protocol": "nfs",
        "gateway_arn": GATEWAY_ARN,
        "region": REGION,
        "location": LOCATION,
        "bucket": BUCKET,
        "kms_key_arn": KEY_ARN,
        "role_arn": ROLE_ARN,
        "share_name": "mrictl-test-uploads",
        "read_only": False,
        "client_list": [WORKSTATIONS],
    }
    assert outcome.mount == "10.20.0.5:/mrictl-test-uploads"
    (token,) = [call["ClientToken"] for call in sent]
    assert token.startswith("mrictl-") and 5 <= len(token) <= 100


def test_the_client_token_is_the_same_for_the_same_request_and_gateway_state():
    tokens = []
    for shares in ((), (), (("NFS", OTHER_SHARE_ARN),)):
        client = storage_gateway_client()
        calls: list[dict] = []
        client.meta.events.register(
            "provide-client-params.storagegateway.CreateNFSFileShare",
            lambda params, calls=calls, **_: calls.append(dict(params)),
        )
        with stub.Stubber(client) as stubber:
            expect_gateway(stubber)
            expect_listing(stubber, listed(*shares))
            if shares:
                other = nfs_described(OTHER_SHARE_ARN, f"arn:aws:s3:::{BUCKET}/elsewhere/")
                stubber.add_response("describe_nfs_file_shares", {"NFSFileShareInfoList": [other]})
            stubber.add_response("create_nfs_file_share", {"FileShareARN": SHARE_ARN})
            create_file_share(client, nfs_request())
        tokens.append(calls[0]["ClientToken"])
    # a retry sends the same token; a share made or deleted since changes it
    assert tokens[0] == tokens[1] != tokens[2]


def test_running_it_again_finds_the_share_and_creates_nothing(sgw, sent):
    client, stubber = sgw
    expect_gateway(stubber)
    expect_listing(stubber, listed(("NFS", SHARE_ARN)))
    stubber.add_response(
        "describe_nfs_file_shares",
        {"NFSFileShareInfoList": [nfs_described()]},
        {"FileShareARNList": [SHARE_ARN]},
    )

    outcome = create_file_share(client, nfs_request())

    assert not outcome.created
    assert outcome.record["share_arn"] == SHARE_ARN
    assert outcome.record["location"] == LOCATION
    assert sent == []


def test_a_share_on_another_prefix_is_left_alone(sgw):
    client, stubber = sgw
    expect_gateway(stubber)
    expect_listing(stubber, listed(("NFS", OTHER_SHARE_ARN)))
    elsewhere = nfs_described(OTHER_SHARE_ARN, f"arn:aws:s3:::{BUCKET}/scratch/")
    stubber.add_response("describe_nfs_file_shares", {"NFSFileShareInfoList": [elsewhere]})
    stubber.add_response("create_nfs_file_share", {"FileShareARN": SHARE_ARN})

    assert create_file_share(client, nfs_request()).created


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"ClientList": ["0.0.0.0/0"]}, "client list"),
        ({"Role": f"arn:aws:iam::{ACCOUNT}:role/other"}, "role"),
        ({"EncryptionType": "SseS3", "KMSEncrypted": False, "KMSKey": None}, "KMS key"),
    ],
)
def test_a_share_on_the_location_that_differs_is_a_conflict_not_reused(sgw, changes, named):
    client, stubber = sgw
    expect_gateway(stubber)
    expect_listing(stubber, listed(("NFS", SHARE_ARN)))
    described = {key: value for key, value in nfs_described(**changes).items() if value is not None}
    stubber.add_response("describe_nfs_file_shares", {"NFSFileShareInfoList": [described]})

    error = refused(lambda: create_file_share(client, nfs_request()))

    assert error.exit_code == ExitCode.CONFLICT
    assert named in error.message and SHARE_ARN in error.message


def test_a_share_of_the_other_protocol_on_the_location_is_a_conflict(sgw):
    client, stubber = sgw
    expect_gateway(stubber)
    expect_listing(stubber, listed(("SMB", SHARE_ARN)))
    smb = {**nfs_described(), "Authentication": "ActiveDirectory"}
    for nfs_only in ("ClientList", "Squash"):
        smb.pop(nfs_only)
    stubber.add_response("describe_smb_file_shares", {"SMBFileShareInfoList": [smb]})

    error = refused(lambda: create_file_share(client, nfs_request()))

    assert error.exit_code == ExitCode.CONFLICT
    assert "SMB share" in error.message and "--protocol smb" in error.message


# --- SMB --------------------------------------------------------------------------------------


def smb_settings(status: str = "JOINED", strategy: str = "MandatoryEncryption", **more) -> dict:
    return {
        "GatewayARN": GATEWAY_ARN,
        "ActiveDirectoryStatus": status,
        "SMBSecurityStrategy": strategy,
        **more,
    }


def test_an_smb_share_admits_directory_users_with_windows_acls(sgw):
    client, stubber = sgw
    expect_gateway(stubber)
    stubber.add_response("describe_smb_settings", smb_settings(), {"GatewayARN": GATEWAY_ARN})
    expect_listing(stubber, listed())
    stubber.add_response(
        "create_smb_file_share",
        {"FileShareARN": SHARE_ARN},
        {
            "ClientToken": stub.ANY,
            "GatewayARN": GATEWAY_ARN,
            "Role": ROLE_ARN,
            "LocationARN": LOCATION,
            "EncryptionType": "SseKms",
            "KMSEncrypted": True,
            "KMSKey": KEY_ARN,
            "DefaultStorageClass": "S3_STANDARD",
            "ObjectACL": "bucket-owner-full-control",
            "ReadOnly": False,
            "GuessMIMETypeEnabled": False,
            "RequesterPays": False,
            "FileShareName": "mrictl-test-uploads",
            "NotificationPolicy": SETTLING,
            "Tags": TAGS,
            "Authentication": "ActiveDirectory",
            "SMBACLEnabled": True,
            "AccessBasedEnumeration": True,
            "CaseSensitivity": "ClientSpecified",
            "ValidUserList": ["@MRI-Technologists"],
            "AdminUserList": ["@MRI-Admins"],
        },
    )

    outcome = create_file_share(client, smb_request(admin_users=("@MRI-Admins",)))

    assert outcome.created
    assert outcome.record["authentication"] == "ActiveDirectory"
    assert outcome.record["valid_users"] == ["@MRI-Technologists"]
    assert "client_list" not in outcome.record
    assert outcome.mount == "\\\\10.20.0.5\\mrictl-test-uploads"


@pytest.mark.parametrize(
    ("settings", "changes", "named"),
    [
        (smb_settings(status="DETACHED"), {}, "not joined"),
        (smb_settings(strategy="ClientSpecified"), {}, "MandatoryEncryption"),
        (
            smb_settings(SMBGuestPasswordSet=False),
            {"authentication": "GuestAccess", "valid_users": ()},
            "guest password",
        ),
    ],
)
def test_an_smb_gateway_not_ready_for_the_share_is_a_conflict(sgw, settings, changes, named):
    client, stubber = sgw
    expect_gateway(stubber)
    stubber.add_response("describe_smb_settings", settings)

    error = refused(lambda: create_file_share(client, smb_request(**changes)))

    assert error.exit_code == ExitCode.CONFLICT
    assert named in error.message


def test_unencrypted_smb_is_accepted_only_when_asked(sgw):
    client, stubber = sgw
    expect_gateway(stubber)
    stubber.add_response("describe_smb_settings", smb_settings(strategy="ClientSpecified"))
    expect_listing(stubber, listed())
    stubber.add_response("create_smb_file_share", {"FileShareARN": SHARE_ARN})

    assert create_file_share(client, smb_request(allow_unencrypted_smb=True)).created


# --- The gateway and the region ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "kind", "named"),
    [("SHUTDOWN", "FILE_S3", "SHUTDOWN"), ("RUNNING", "CACHED", "CACHED")],
)
def test_a_gateway_not_running_or_not_a_file_gateway_is_refused(sgw, state, kind, named):
    client, stubber = sgw
    expect_gateway(stubber, gateway_described(state, kind))

    error = refused(lambda: create_file_share(client, nfs_request()))

    assert error.exit_code == ExitCode.CONFLICT
    assert named in error.message and GATEWAY_ARN in error.message


@pytest.mark.parametrize(
    ("reason", "code"),
    [("GatewayNotFound", ExitCode.NOT_FOUND), ("GatewayInternalError", ExitCode.BACKEND)],
)
def test_api_errors_are_one_line_with_their_exit_code(sgw, reason, code):
    client, stubber = sgw
    stubber.add_client_error(
        "describe_gateway_information",
        service_error_code="InvalidGatewayRequestException",
        service_message="The specified gateway was not found.",
        modeled_fields={"message": "not found", "error": {"errorCode": reason}},
    )

    error = refused(lambda: create_file_share(client, nfs_request()))

    assert error.exit_code == code
    assert "DescribeGatewayInformation" in error.message and reason in error.message


def test_a_region_without_storage_gateway_is_refused_before_any_call():
    region = "us-isof-south-1"  # botocore's endpoint data lists no Storage Gateway there
    client = storage_gateway_client(region)
    request = nfs_request(gateway_arn=GATEWAY_ARN.replace(REGION, region))
    with stub.Stubber(client):  # nothing queued: any call would fail differently
        error = refused(lambda: create_file_share(client, request))

    assert error.exit_code == ExitCode.USAGE
    assert region in error.message and "not offered" in error.message


def test_a_gateway_in_another_region_than_the_client_is_a_usage_error(sgw):
    client, _ = sgw
    request = nfs_request(gateway_arn=GATEWAY_ARN.replace(REGION, "eu-west-1"))

    error = refused(lambda: create_file_share(client, request))

    assert error.exit_code == ExitCode.USAGE
    assert "--region eu-west-1" in error.message


# --- The request --------------------------------------------------------------------------------


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0"])
def test_any_client_is_refused_unless_allowed(everyone):
    error = refused(lambda: nfs_request(client_cidrs=(WORKSTATIONS, everyone)))
    assert error.exit_code == ExitCode.USAGE
    assert "--allow-any-client" in error.message

    assert nfs_request(client_cidrs=(everyone,), allow_any_client=True).client_list == [everyone]
    assert nfs_request(client_cidrs=(), allow_any_client=True).client_list == ["0.0.0.0/0"]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"client_cidrs": ()}, "--client"),
        ({"client_cidrs": ("10.20.0.0/33",)}, "--client"),
        ({"gateway_arn": "sgw-12A3456B"}, "--gateway-arn"),
        ({"role_arn": "gateway-role"}, "--role-arn"),
        ({"kms_key_arn": "alias/mrictl-test"}, "--kms-key-arn"),
        ({"bucket": "Raw_Bucket"}, "--bucket"),
        ({"share_name": "uploads/of/a/patient"}, "--share-name"),
        ({"valid_users": ("@MRI",)}, "SMB"),
        ({"protocol": "ftp"}, "protocol"),
    ],
)
def test_bad_requests_are_usage_errors(changes, named):
    error = refused(lambda: nfs_request(**changes))
    assert error.exit_code == ExitCode.USAGE
    assert named in error.message


def test_a_single_address_is_a_host_network():
    assert nfs_request(client_cidrs=("10.20.0.7",)).client_list == ["10.20.0.7/32"]


# --- The record in the per-stack settings file ------------------------------------------------


def stacks_document() -> dict:
    return {
        "stacks": {
            "storage": {
                "name": "mrictl-test-storage",
                "outputs": {
                    "RawBucketName": BUCKET,
                    "ReconstructedBucketName": RESULTS_BUCKET,
                    "DataKeyArn": KEY_ARN,
                },
            }
        }
    }


def test_the_settings_file_is_named_by_stack_prefix_under_xdg_config_home():
    expected = Path(os.environ["XDG_CONFIG_HOME"]) / "mrictl" / "aws" / "mrictl-test.json"
    assert settings_path(parse_stack_prefix("mrictl-test")) == expected


def test_the_record_is_merged_beside_the_provisioners_stacks(tmp_path):
    path = tmp_path / "aws" / "mrictl-test.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**stacks_document(), "gateway": {"share_arn": "old"}}))

    save_gateway(path, {"share_arn": SHARE_ARN})

    assert json.loads(path.read_text()) == {
        **stacks_document(),
        "gateway": {"share_arn": SHARE_ARN},
    }
    assert sorted(entry.name for entry in path.parent.iterdir()) == ["mrictl-test.json"]


def test_without_a_settings_file_one_is_made_holding_only_the_gateway(tmp_path):
    path = tmp_path / "aws" / "mrictl-test.json"

    save_gateway(path, {"share_arn": SHARE_ARN})

    assert json.loads(path.read_text()) == {"gateway": {"share_arn": SHARE_ARN}}


def test_a_write_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "mrictl-test.json"
    before = json.dumps(stacks_document())
    path.write_text(before)

    def failing_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        save_gateway(path, {"share_arn": SHARE_ARN})

    assert path.read_text() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["mrictl-test.json"]


def test_bucket_and_key_come_from_the_saved_storage_outputs_or_the_flags():
    assert share_location(stacks_document(), None, None, "x.json") == (BUCKET, KEY_ARN)
    assert share_location({}, "other-bucket", KEY_ARN, "x.json") == ("other-bucket", KEY_ARN)

    error = refused(lambda: share_location({}, "other-bucket", None, "x.json"))
    assert error.exit_code == ExitCode.USAGE
    assert "mrictl provision" in error.message and "--kms-key-arn" in error.message


def test_a_settings_file_that_is_not_json_is_a_usage_error(tmp_path):
    path = tmp_path / "mrictl-test.json"
    path.write_text("{not json")
    assert refused(lambda: read_settings(path)).exit_code == ExitCode.USAGE


# --- The command ------------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    """`provision gateway` as the provisioner will register it, under mrictl's error handling."""
    root = typer.Typer(cls=MrictlGroup, pretty_exceptions_enable=False)
    provision = typer.Typer()
    provision.command("gateway")(gateway)
    root.add_typer(provision, name="provision")
    return root


def run_command(*args: str):
    arguments = [
        "provision",
        "gateway",
        "--gateway-arn",
        GATEWAY_ARN,
        "--role-arn",
        ROLE_ARN,
        "--stack-prefix",
        "mrictl-test",
        "--region",
        REGION,
        *args,
    ]
    env = {"COLUMNS": "120", "NO_COLOR": "1"}
    return CliRunner().invoke(cli_app(), arguments, env=env)


@pytest.fixture
def command_client(sgw, monkeypatch):
    """The command's AwsClients hands out the stubbed client."""
    from mrictl.backends import AwsClients

    client, stubber = sgw
    monkeypatch.setattr(AwsClients, "client", lambda self, service: client)
    return stubber


def test_the_command_creates_the_share_and_records_it_with_json(command_client):
    path = settings_path(parse_stack_prefix("mrictl-test"))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stacks_document()))
    expect_gateway(command_client)
    expect_listing(command_client, listed())
    command_client.add_response("create_nfs_file_share", {"FileShareARN": SHARE_ARN})

    result = run_command("--client", WORKSTATIONS, "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["share_arn"] == SHARE_ARN and document["created"] is True
    assert document["location"] == LOCATION and document["kms_key_arn"] == KEY_ARN
    assert document["settings_file"] == "mrictl-test.json"
    saved = json.loads(path.read_text())
    assert saved["stacks"] == stacks_document()["stacks"]
    assert saved["gateway"]["share_arn"] == SHARE_ARN
    assert saved["gateway"]["client_list"] == [WORKSTATIONS]


def test_the_command_refuses_any_client_with_a_json_error_and_exit_2(command_client):
    result = run_command(
        "--client", "0.0.0.0/0", "--bucket", BUCKET, "--kms-key-arn", KEY_ARN, "--json"
    )

    assert result.exit_code == ExitCode.USAGE
    assert json.loads(result.stdout)["error"]["code"] == ExitCode.USAGE
    assert not settings_path(parse_stack_prefix("mrictl-test")).exists()


@pytest.mark.parametrize("prefix", ["mrictl", "../x", "a-very-long-project-prod"])
def test_the_command_refuses_the_stack_prefixes_provision_refuses(command_client, prefix):
    result = run_command("--stack-prefix", prefix, "--client", WORKSTATIONS, "--json")

    assert result.exit_code == ExitCode.USAGE
    assert "<project>-<environment>" in json.loads(result.stdout)["error"]["message"]


def test_the_command_without_stacks_or_flags_says_what_to_do(command_client):
    result = run_command("--client", WORKSTATIONS)

    assert result.exit_code == ExitCode.USAGE
    assert "mrictl provision" in result.stderr and "--bucket" in result.stderr


def test_importing_the_command_loads_no_aws_sdk():
    probe = (
        "import sys, mrictl.cli.gateway; print(sorted({'boto3', 'botocore'} & set(sys.modules)))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_the_results_share_is_read_only_on_the_reconstructed_area_and_recorded_apart(
    command_client,
):
    path = settings_path(parse_stack_prefix("mrictl-test"))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**stacks_document(), "gateway": {"share_arn": SHARE_ARN}}))
    expect_gateway(command_client)
    expect_listing(command_client, listed(("NFS", SHARE_ARN)))
    command_client.add_response(
        "describe_nfs_file_shares", {"NFSFileShareInfoList": [nfs_described()]}
    )
    command_client.add_response(
        "create_nfs_file_share",
        {"FileShareARN": RESULTS_SHARE_ARN},
        {
            "ClientToken": stub.ANY,
            "GatewayARN": GATEWAY_ARN,
            "Role": ROLE_ARN,
            "LocationARN": RESULTS_LOCATION,
            "EncryptionType": "SseKms",
            "KMSEncrypted": True,
            "KMSKey": KEY_ARN,
            "DefaultStorageClass": "S3_STANDARD",
            "ObjectACL": "bucket-owner-full-control",
            "ClientList": [WORKSTATIONS],
            "Squash": "RootSquash",
            "ReadOnly": True,
            "GuessMIMETypeEnabled": False,
            "RequesterPays": False,
            "FileShareName": "mrictl-test-results",
            "Tags": TAGS,
        },
    )

    result = run_command("--results", "--client", WORKSTATIONS, "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["location"] == RESULTS_LOCATION and document["read_only"] is True
    saved = json.loads(path.read_text())
    assert saved["gateway"] == {"share_arn": SHARE_ARN}  # the uploads share's record kept
    assert saved["gateway_results"]["share_arn"] == RESULTS_SHARE_ARN
    assert saved["gateway_results"]["bucket"] == RESULTS_BUCKET


def test_a_writable_share_on_the_results_area_is_a_conflict_not_reused(sgw):
    client, stubber = sgw
    expect_gateway(stubber)
    expect_listing(stubber, listed(("NFS", SHARE_ARN)))
    writable = nfs_described(location=RESULTS_LOCATION)
    stubber.add_response("describe_nfs_file_shares", {"NFSFileShareInfoList": [writable]})
    request = nfs_request(bucket=RESULTS_BUCKET, results=True)

    error = refused(lambda: create_file_share(client, request))

    assert error.exit_code == ExitCode.CONFLICT and "writable" in str(error)
