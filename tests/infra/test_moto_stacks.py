"""The stacks created in order on a moto server, each with the previous stacks' outputs as its
parameters, as the provisioner will: proof of the wiring (moto drops many properties, see
test_templates.py for those)."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest

from mrictl.infra.validate import REPOSITORY, load_template

pytestmark = pytest.mark.slow

TEMPLATES = REPOSITORY / "infra_templates"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def aws():
    """boto3 clients of a fresh moto server (Batch without Docker), dummy credentials."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    from tests.servers import moto_server, reset_moto

    with moto_server() as endpoint:
        # moto's state is one per process: stacks other test modules made must not collide.
        reset_moto(endpoint)
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        yield lambda service: session.client(service, endpoint_url=endpoint)


def create_stack(aws, name: str, environment: str, parameters: dict[str, str], body=None):
    """Create one stack; its status and outputs (moto answers a failure with HTTP 500)."""
    cloudformation = aws("cloudformation")
    stack_name = f"mrictl-{environment}-{name}"
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=body or (TEMPLATES / f"{name}.yaml").read_text(),
        Parameters=[
            {"ParameterKey": key, "ParameterValue": value}
            for key, value in {
                "ProjectName": "mrictl",
                "Environment": environment,
                **parameters,
            }.items()
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    [stack] = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return stack["StackStatus"], outputs


def declared_outputs(name: str) -> set[str]:
    return set(load_template(TEMPLATES / f"{name}.yaml")["Outputs"])


def upload_autoscale_zip(aws, bucket: str) -> str:
    """The provisioner uploads the Lambda's zip; moto's Lambda reads it from S3."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("mrictl/autoscale.py", "def handler(event, context):\n    return None\n")
    key = "deploy/autoscale-test.zip"
    aws("s3").put_object(Bucket=bucket, Key=key, Body=archive.getvalue())
    return key


def test_stacks_create_in_order_with_each_others_outputs(aws):
    status, network = create_stack(aws, "network", "test", {})
    assert (status, set(network)) == ("CREATE_COMPLETE", declared_outputs("network"))
    assert len(network["SubnetIds"].split(",")) == 2

    status, storage = create_stack(aws, "storage", "test", {})
    assert (status, set(storage)) == ("CREATE_COMPLETE", declared_outputs("storage"))

    status, jobs = create_stack(aws, "jobs", "test", {"DataKeyArn": storage["DataKeyArn"]})
    assert (status, set(jobs)) == ("CREATE_COMPLETE", declared_outputs("jobs"))

    code_key = upload_autoscale_zip(aws, storage["ReconstructedBucketName"])
    from_storage = [
        "DataKeyArn",
        "RawBucketName",
        "PreprocessedBucketName",
        "ReconstructedBucketName",
        "PreprocessQueueUrl",
        "PreprocessQueueArn",
        "ReconQueueUrl",
        "ReconQueueArn",
    ]
    compute_parameters = {
        "SubnetIds": network["SubnetIds"],
        "WorkloadSecurityGroupId": network["WorkloadSecurityGroupId"],
        **{name: storage[name] for name in from_storage},
        "JobTableName": jobs["JobTableName"],
        "AutoscaleCodeBucket": storage["ReconstructedBucketName"],
        "AutoscaleCodeKey": code_key,
        # moto does not split a list parameter's default: pass every list explicitly.
        "GpuInstanceTypes": "g5.xlarge,g6.xlarge",
        "UseSpot": "true",
    }
    status, compute = create_stack(aws, "compute", "test", compute_parameters)
    assert (status, set(compute)) == ("CREATE_COMPLETE", declared_outputs("compute"))

    # What moto does keep: names, the queue's compute environments, the jobs' command.
    [queue] = aws("batch").describe_job_queues(jobQueues=[compute["BatchJobQueueArn"]])["jobQueues"]
    assert len(queue["computeEnvironmentOrder"]) == 2  # Spot, then on-demand
    [definition] = aws("batch").describe_job_definitions(
        jobDefinitions=[compute["ReconJobDefinitionArn"]]
    )["jobDefinitions"]
    assert definition["containerProperties"]["command"][-2:] == ["--job", "Ref::job_id"]
    table = aws("dynamodb").describe_table(TableName=jobs["JobTableName"])["Table"]
    assert {index["IndexName"] for index in table["GlobalSecondaryIndexes"]} == {
        "by-parent",
        "by-state",
    }
    attributes = aws("sqs").get_queue_attributes(
        QueueUrl=storage["PreprocessQueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    assert json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"].endswith(
        "mrictl-test-preprocess-dlq"
    )
    assert attributes["KmsMasterKeyId"] == storage["DataKeyArn"].rsplit("/", 1)[1]

    # fsx: moto skips every AWS::FSx resource, and a GetAtt on one fails the stack, so the
    # outputs that read the file system are left out here; its security groups are created.
    text = (TEMPLATES / "fsx.yaml").read_text()
    body = text.split("Outputs:")[0] + "Outputs:\n  PreprocessedPath:\n    Value: /preprocessed\n"
    status, _ = create_stack(
        aws,
        "fsx",
        "test",
        {
            "VpcId": network["VpcId"],
            "SubnetId": network["SubnetIds"].split(",")[0],
            "WorkloadSecurityGroupId": network["WorkloadSecurityGroupId"],
            "DataKeyArn": storage["DataKeyArn"],
            "PreprocessedBucketName": storage["PreprocessedBucketName"],
        },
        body=body,
    )
    assert status == "CREATE_COMPLETE"

    # Without the fsx stack's outputs, no mount; with them, the GPU instances mount it at /fsx
    # and the recon and train jobs see it read-only.
    assert "UserData" not in launch_template_data(aws, "mrictl-test-gpu")
    for output in ("ReconJobDefinitionArn", "TrainJobDefinitionArn"):
        container = job_container(aws, compute[output])
        assert [m["containerPath"] for m in container["mountPoints"]] == ["/tmp"]
        assert "/fsx" not in json.dumps(container)
    dns_name, mount_name = "fs-0123456789abcdef0.fsx.us-east-1.amazonaws.com", "abcdefgh"
    status, mounted = create_stack(
        aws,
        "compute",
        "lus",
        compute_parameters | {"FsxDnsName": dns_name, "FsxMountName": mount_name},
    )
    assert status == "CREATE_COMPLETE"
    user_data = base64.b64decode(launch_template_data(aws, "mrictl-lus-gpu")["UserData"]).decode()
    assert user_data.startswith("MIME-Version: 1.0\n")
    assert f'mount -t lustre -o ro,relatime,flock "{dns_name}@tcp:/{mount_name}" /fsx' in user_data
    for output in ("ReconJobDefinitionArn", "TrainJobDefinitionArn"):
        container = job_container(aws, mounted[output])
        assert {"sourceVolume": "fsx", "containerPath": "/fsx", "readOnly": True} in container[
            "mountPoints"
        ]
        assert {"name": "fsx", "host": {"sourcePath": "/fsx"}} in container["volumes"]
        assert {"name": "MRICTL_AWS_FSX_MOUNT", "value": "/fsx"} in container["environment"]


def launch_template_data(aws, name: str) -> dict:
    versions = aws("ec2").describe_launch_template_versions(LaunchTemplateName=name)
    latest = max(versions["LaunchTemplateVersions"], key=lambda v: v["VersionNumber"])
    return latest["LaunchTemplateData"]


def job_container(aws, definition_arn: str) -> dict:
    [definition] = aws("batch").describe_job_definitions(jobDefinitions=[definition_arn])[
        "jobDefinitions"
    ]
    return definition["containerProperties"]


def test_network_reuses_an_existing_vpc(aws):
    ec2 = aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24")["Subnet"]["SubnetId"]
        for i in range(2)
    ]
    route_table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    status, outputs = create_stack(
        aws,
        "network",
        "reuse",
        {
            "ExistingVpcId": vpc,
            "ExistingSubnetIds": ",".join(subnets),
            "ExistingRouteTableIds": route_table,
        },
    )
    assert status == "CREATE_COMPLETE"
    assert outputs["VpcId"] == vpc
    assert outputs["SubnetIds"] == ",".join(subnets)
    endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc]}])
    services = {e["ServiceName"].rsplit(".", 1)[1] for e in endpoints["VpcEndpoints"]}
    assert {"s3", "dynamodb", "sqs", "logs", "sts", "batch"} <= services
