"""`mrictl doctor`: small checks of this machine's set-up, each one ok, warn or fail with a hint.

Every check is a function that returns `Check`s and may raise: `run_checks` turns an exception
into a failing check with its one-line message, so the doctor itself never ends in a traceback.
Checks that reach a network (AWS, the DICOM node) use short timeouts and few retries, so a dead
endpoint fails in seconds. Nothing here imports torch, boto3 or pynetdicom until the check that
needs it runs, and no check prints a secret: variables and credentials are named, never shown.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from mrictl import __version__
from mrictl.backends import AwsClients
from mrictl.config import AwsSettings, Settings, config_path, load_settings, outputs_path
from mrictl.errors import MrictlError
from mrictl.revision import git_revision

if TYPE_CHECKING:
    from mrictl.backends.aws.resources import AwsResources

OK, WARN, FAIL = "ok", "warn", "fail"
STATUSES = (OK, WARN, FAIL)
GIB = 1024**3
DEFAULT_MIN_FREE_GB = 10.0  # a raw multi-coil scan, its preprocessed copy and results: a few GB
DEFAULT_TIMEOUT_S = 3.0  # per network call: a dead endpoint must fail fast
QUICK_RETRY_ATTEMPTS = 2  # botocore's total attempts (one retry), against 8 for real work
# What the product needs at run time, and what it uses only for some features.
REQUIRED_PACKAGES = ("torch", "numpy", "scipy", "h5py", "pydicom", "boto3")
OPTIONAL_PACKAGES = ("pynetdicom",)
# Stack states in which the stack's resources are there and usable.
USABLE_STACK_STATES = frozenset(
    {
        "CREATE_COMPLETE",
        "UPDATE_COMPLETE",
        "UPDATE_ROLLBACK_COMPLETE",
        "IMPORT_COMPLETE",
        "IMPORT_ROLLBACK_COMPLETE",
    }
)
# The variables that tell boto3 where and who (their names are shown, never their values).
AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
ENDPOINT_HINT = "is the endpoint right? run `mrictl provision status`"
PROVISION_HINT = "run `mrictl provision status`; `mrictl provision` makes what is missing"
HOME_HINT = "set [local] home in the config file, MRICTL_HOME or --home to a writable folder"
# Check groups a caller may leave out (`--skip`): each costs time or needs a network.
SKIPPABLE = ("torch", "home", "aws", "pacs")


@dataclass(frozen=True)
class Check:
    """One finding: `status` is ok, warn (works, but look) or fail (does not work)."""

    name: str
    status: str
    detail: str
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report(checks: Iterable[Check]) -> dict[str, Any]:
    """The --json document: every check, and ok when none failed (warnings pass)."""
    found = list(checks)
    return {"checks": [check.to_dict() for check in found], "ok": passed(found)}


def passed(checks: Iterable[Check]) -> bool:
    return all(check.status != FAIL for check in checks)


def one_line(error: BaseException) -> str:
    """An exception as one short line: its message, or its type where it has none."""
    text = " ".join(str(error).split())
    if not isinstance(error, MrictlError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:300]


def run_checks(steps: Iterable[tuple[str, Callable[[], Check | list[Check]]]]) -> list[Check]:
    """Run each named step; one that raises becomes a failing check with its one-line message."""
    found: list[Check] = []
    for name, step in steps:
        try:
            result = step()
        except Exception as error:  # a broken check is a finding, never a traceback
            result = Check(name, FAIL, one_line(error), "set MRICTL_DEBUG=1 for the traceback")
            if os.environ.get("MRICTL_DEBUG"):
                raise
        found.extend(result if isinstance(result, list) else [result])
    return found


# --- versions -------------------------------------------------------------------------------


def check_versions() -> list[Check]:
    """mrictl (and its git revision), Python, and the packages it needs, read from their
    metadata so that nothing heavy is imported."""
    revision = git_revision()  # the checkout's HEAD, or what the wheel's build recorded
    mrictl = __version__ + (f" (git {revision})" if revision else "")
    python = f"{platform.python_version()} ({sys.executable})"
    found, missing = [], []
    for name in (*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            (missing if name in REQUIRED_PACKAGES else found).append(f"{name} not installed")
    packages = Check("packages", OK, ", ".join(found))
    if missing:
        names = " ".join(item.split()[0] for item in missing)
        detail = ", ".join(missing + found)
        packages = Check("packages", FAIL, detail, f"pip install {names}")
    return [Check("mrictl", OK, mrictl), Check("python", OK, python), packages]


# --- torch and the GPU ----------------------------------------------------------------------


def check_torch(device: str = "auto") -> list[Check]:
    """torch's build and the CUDA GPUs it sees. No GPU is a warning (everything runs on the
    CPU, slower), unless the configured device is cuda: then nothing reconstructs."""
    import warnings

    try:
        import torch
    except Exception as error:  # an ImportError, or a broken CUDA library raising OSError
        detail = f"cannot import torch: {one_line(error)}"
        return [Check("torch", FAIL, detail, "pip install torch")]
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    threads = torch.get_num_threads()
    checks = [Check("torch", OK, f"{torch.__version__}, {build}, {threads} threads")]
    with warnings.catch_warnings(record=True) as caught:  # a driver problem comes as a warning
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count:
        devices = []
        for index in range(count):
            properties = torch.cuda.get_device_properties(index)
            memory = properties.total_memory / GIB
            devices.append(f"cuda:{index} {properties.name} ({memory:.0f} GiB)")
        checks.append(Check("gpu", OK, ", ".join(devices)))
        return checks
    why = f" ({one_line(caught[0].message)})" if caught else ""
    detail = f"no CUDA GPU{why}: reconstruction and training run on the CPU, much slower"
    if device == "cuda":
        hint = 'the configured device is cuda: set device = "auto" or "cpu", or fix the GPU'
        checks.append(Check("gpu", FAIL, detail, f"{hint} (`nvidia-smi`)"))
    elif torch.version.cuda is None:
        checks.append(Check("gpu", WARN, detail, "on a GPU machine, install a CUDA build of torch"))
    else:
        checks.append(Check("gpu", WARN, detail, "check the GPU's driver: `nvidia-smi`"))
    return checks


# --- where the backend keeps data -----------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _write_probe(folder: Path) -> None:
    """Create, write, flush and remove a hidden file in `folder`: what a job's output needs
    (permission bits alone do not tell: root ignores them, a read-only mount does not)."""
    descriptor, name = tempfile.mkstemp(prefix=".mrictl-doctor-", dir=folder)
    try:
        os.write(descriptor, b"mrictl doctor\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
        os.unlink(name)


def check_home_writable(home: Path) -> Check:
    """The local backend's folder (every backend's scratch space) exists or can be made, and
    a file can be written in it. A missing one is made for the test and removed again."""
    if home.exists() and not home.is_dir():
        return Check("home", FAIL, f"{home} is not a folder", HOME_HINT)
    made: list[Path] = []
    try:
        if not home.exists():
            made = [folder for folder in (home, *home.parents) if not folder.exists()]
            home.mkdir(parents=True)
        _write_probe(home)
    except OSError as error:
        reason = error.strerror or one_line(error)
        what = "cannot be created" if made and not home.is_dir() else "is not writable"
        return Check("home", FAIL, f"{home} {what} ({reason})", HOME_HINT)
    finally:
        for folder in made:  # deepest first: only the folders made here, and only if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
    if made:
        return Check("home", OK, f"{home} (not there yet: it can be made, the first job does)")
    return Check("home", OK, f"{home} (writable)")


def check_free_space(home: Path, min_free_gb: float = DEFAULT_MIN_FREE_GB) -> Check:
    """Free space on the disk holding the home: a warning below `min_free_gb`."""
    usage = shutil.disk_usage(_nearest_existing(home))
    detail = f"{usage.free / GIB:.1f} GiB free of {usage.total / GIB:.1f} GiB"
    if usage.free < min_free_gb * GIB:
        hint = "free space on that disk, or move the home ([local] home, MRICTL_HOME) to another"
        return Check("disk", WARN, f"{detail}, below {min_free_gb:g} GiB", hint)
    return Check("disk", OK, detail)


# --- configuration --------------------------------------------------------------------------


def shown_endpoint(url: str | None) -> str | None:
    """An endpoint URL without any user or password in it."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_config(settings: Settings, environ: dict[str, str] | None = None) -> list[Check]:
    """Which config file, which variables override it (names only) and the settings in force,
    without any secret: keys and tokens are named, never shown."""
    environ = dict(os.environ if environ is None else environ)
    path = config_path()
    source = "read" if path.is_file() else "absent: defaults"
    variables = sorted(name for name in environ if name.startswith("MRICTL_") and environ[name])
    overrides = ", ".join(variables) if variables else "none"
    config = Check("config", OK, f"{path} ({source}); MRICTL_* variables set: {overrides}")
    method = settings.method or "the default"
    detail = f"{settings.backend}; home {settings.home}; method {method}; device {settings.device}"
    if settings.backend == "aws":
        aws = settings.aws
        detail += (
            f"; region {aws.region or 'from the profile'}; profile {aws.profile or 'default'}; "
            f"stack prefix {aws.stack_prefix}; {len(aws.outputs)} saved outputs"
        )
        if aws.endpoint_url:
            detail += f"; endpoint {shown_endpoint(aws.endpoint_url)}"
        named = [name for name in AWS_VARIABLES if environ.get(name)]
        if named:
            detail += f"; AWS variables set (values not shown): {', '.join(named)}"
    return [config, Check("backend", OK, detail)]


# --- AWS ------------------------------------------------------------------------------------


class QuickAwsClients(AwsClients):
    """The settings' AWS clients with short timeouts and one retry: a doctor must say "no
    answer" in seconds, not wait out botocore's 60 s timeouts and 8 attempts."""

    def __init__(self, settings: AwsSettings, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(settings)
        self.timeout_s = timeout_s

    def client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            if self._session is None:
                self._session = boto3.session.Session(
                    profile_name=self.settings.profile, region_name=self.settings.region
                )
            config = Config(
                connect_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                retries={"mode": "standard", "total_max_attempts": QUICK_RETRY_ATTEMPTS},
            )
            self._clients[service] = self._session.client(
                service, endpoint_url=self.settings.endpoint_url, config=config
            )
        return self._clients[service]


def _no_answer(error: BaseException) -> bool:
    """True for an endpoint that cannot be reached or does not answer in time."""
    from botocore.exceptions import ConnectionClosedError, ConnectionError, ReadTimeoutError

    return isinstance(error, ConnectionError | ReadTimeoutError | ConnectionClosedError)


def _aws_failure(name: str, error: BaseException, endpoint: str | None) -> Check:
    """A failed AWS call as a failing check whose hint says what to do about it."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    if _no_answer(error):
        where = shown_endpoint(endpoint) or "AWS"
        return Check(name, FAIL, f"no answer from {where} ({one_line(error)})", ENDPOINT_HINT)
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        hint = "set [aws] profile (or --profile, AWS_PROFILE) to a profile with credentials"
        return Check(name, FAIL, "no AWS credentials found", hint)
    if isinstance(error, ProfileNotFound):
        return Check(name, FAIL, one_line(error), "check [aws] profile against ~/.aws/config")
    if isinstance(error, NoRegionError):
        return Check(name, FAIL, "no region", "set [aws] region (or --region, AWS_REGION)")
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        detail = " ".join(f"{code}: {message}".split())[:300]
        if "AccessDenied" in code or "Unauthorized" in code or code == "403":
            hint = "the operator's IAM policy (docs/aws.md) must allow this call"
        else:
            hint = PROVISION_HINT
        return Check(name, FAIL, detail, hint)
    return Check(name, FAIL, one_line(error), ENDPOINT_HINT)


def check_identity(clients: AwsClients) -> Check:
    """Who AWS takes this process for: the account and the caller's ARN."""
    identity = clients.client("sts").get_caller_identity()
    return Check("aws identity", OK, f"account {identity['Account']}, {identity['Arn']}")


def check_region(clients: AwsClients) -> Check:
    region = clients.client("dynamodb").meta.region_name
    if not region:
        return Check("aws region", FAIL, "no region", "set [aws] region (or --region, AWS_REGION)")
    return Check("aws region", OK, region)


def recorded_stacks(stack_prefix: str) -> list[str]:
    """The stacks `mrictl provision` recorded for the prefix ([] where it recorded none)."""
    from mrictl.infra.stack_settings import STACKS, read_settings
    from mrictl.infra.stacks import STACK_ORDER

    recorded = read_settings(outputs_path(stack_prefix)).get(STACKS) or {}
    return [stack for stack in STACK_ORDER if stack in recorded]


def check_stacks(clients: AwsClients, stack_prefix: str) -> Check:
    """Each stack provision recorded is there and in a usable state."""
    stacks = recorded_stacks(stack_prefix)
    if not stacks:
        detail = f"no stacks recorded for {stack_prefix} (resources named by MRICTL_AWS_* only)"
        return Check("aws stacks", WARN, detail, PROVISION_HINT)
    from botocore.exceptions import ClientError

    cloudformation = clients.client("cloudformation")
    states = {}
    for stack in stacks:
        try:
            [found] = cloudformation.describe_stacks(StackName=f"{stack_prefix}-{stack}")["Stacks"]
            states[stack] = found["StackStatus"]
        except ClientError as error:
            if "does not exist" not in str(error):
                raise
            states[stack] = "absent"
    detail = ", ".join(f"{stack} {state}" for stack, state in states.items())
    broken = [stack for stack, state in states.items() if state not in USABLE_STACK_STATES]
    if not broken:
        return Check("aws stacks", OK, detail)
    if all(states[stack].endswith("_IN_PROGRESS") for stack in broken):
        return Check("aws stacks", WARN, detail, "a change is under way: wait for it to finish")
    return Check("aws stacks", FAIL, detail, PROVISION_HINT)


def check_queues(clients: AwsClients, resources: AwsResources) -> Check:
    """The job queues answer; how many messages wait on each."""
    queues = {"preprocess": resources.preprocess_queue_url, "recon": resources.recon_queue_url}
    known = {name: url for name, url in queues.items() if url}
    if not known:
        return Check("aws queues", WARN, "no queue is known here", PROVISION_HINT)
    sqs = clients.client("sqs")
    counts = []
    for name, url in known.items():
        attributes = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        counts.append(f"{name} ({attributes.get('ApproximateNumberOfMessages', '?')} waiting)")
    return Check("aws queues", OK, ", ".join(counts))


def check_table(clients: AwsClients, resources: AwsResources) -> Check:
    table = clients.client("dynamodb").describe_table(TableName=resources.job_table)["Table"]
    status = table.get("TableStatus", "?")
    detail = f"{resources.job_table} {status}"
    if status != "ACTIVE":
        return Check("aws table", WARN, detail, "the table is changing: try again in a minute")
    return Check("aws table", OK, detail)


def check_buckets(clients: AwsClients, resources: AwsResources) -> Check:
    buckets = {
        "raw": resources.raw_bucket,
        "preprocessed": resources.preprocessed_bucket,
        "reconstructed": resources.reconstructed_bucket,
    }
    known = {role: name for role, name in buckets.items() if name}
    if not known:
        return Check("aws buckets", WARN, "no bucket is known here", PROVISION_HINT)
    s3 = clients.client("s3")
    for name in known.values():
        s3.head_bucket(Bucket=name)
    return Check("aws buckets", OK, ", ".join(known.values()))


def check_aws(settings: AwsSettings, clients: AwsClients) -> list[Check]:
    """Identity, region, and whether the stacks, queues, table and buckets answer. When the
    endpoint does not answer at all, the later calls are not tried: one line says why."""
    endpoint = settings.endpoint_url

    def guarded(name: str, step: Callable[[], Check]) -> Check:
        try:
            return step()
        except Exception as error:
            if os.environ.get("MRICTL_DEBUG"):
                raise
            return _aws_failure(name, error, endpoint)

    checks = [guarded("aws identity", lambda: check_identity(clients))]
    if checks[0].status == FAIL:
        return checks  # no credentials or no answer: every later call would fail the same way
    checks.append(guarded("aws region", lambda: check_region(clients)))
    checks.append(guarded("aws stacks", lambda: check_stacks(clients, settings.stack_prefix)))
    try:
        from mrictl.backends.aws.resources import AwsResources

        resources = AwsResources.from_sources(settings.outputs, os.environ)
    except Exception as error:
        checks.append(Check("aws resources", FAIL, one_line(error), PROVISION_HINT))
        return checks
    checks.append(guarded("aws queues", lambda: check_queues(clients, resources)))
    checks.append(guarded("aws table", lambda: check_table(clients, resources)))
    checks.append(guarded("aws buckets", lambda: check_buckets(clients, resources)))
    return checks


# --- the DICOM node -------------------------------------------------------------------------


def configured_pacs(settings: Settings) -> Any | None:
    """The [pacs] settings where a node is configured (a host given); None otherwise."""
    pacs = getattr(settings, "pacs", None)
    return pacs if pacs is not None and getattr(pacs, "host", None) else None


def check_pacs(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Check]:
    """A C-ECHO to the configured DICOM node; nothing when none is configured."""
    pacs = configured_pacs(settings)
    if pacs is None:
        return []
    hint = (
        "check host, port and the AE titles in the config's [pacs] section (MRICTL_PACS_*), "
        "that the node is up, and that it knows our AE title and this host"
    )
    try:
        from mrictl.pacs import echo, node_from_settings

        node = node_from_settings(pacs)
        echo(node, timeout_s)
    except ImportError as error:  # no pynetdicom (or a version without mrictl.pacs)
        detail = f"{pacs.host}: cannot send C-ECHO ({one_line(error)})"
        return [Check("pacs", FAIL, detail, "pip install pynetdicom")]
    except Exception as error:
        if os.environ.get("MRICTL_DEBUG"):
            raise
        return [Check("pacs", FAIL, f"C-ECHO failed: {one_line(error)}", hint)]
    return [Check("pacs", OK, f"{node} answered C-ECHO (we are {node.calling_aet})")]


# --- all of it ------------------------------------------------------------------------------


def diagnose(
    *,
    home: Path | None = None,
    backend: str | None = None,
    aws: dict[str, str | None] | None = None,
    skip: Iterable[str] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    min_free_gb: float = DEFAULT_MIN_FREE_GB,
    clients: AwsClients | None = None,
) -> list[Check]:
    """Every check, in the order a person reads them: versions, torch and the GPU, the
    configuration, where data is kept, the cloud, the DICOM node. `skip` leaves groups out
    (SKIPPABLE); `clients` replaces the AWS client factory."""
    skipped = set(skip)
    checks = run_checks([("versions", check_versions)])
    settings: Settings | None = None
    try:
        settings = load_settings(home=home, backend=backend, aws=aws)
    except Exception as error:
        if os.environ.get("MRICTL_DEBUG"):
            raise
        hint = "fix the file (or MRICTL_CONFIG, the flags) and run mrictl doctor again"
        checks.append(Check("config", FAIL, one_line(error), hint))
    device = settings.device if settings else "auto"
    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = []
    if "torch" not in skipped:
        steps.append(("torch", lambda: check_torch(device)))
    if settings is not None:
        found = settings
        steps.append(("config", lambda: check_config(found)))
        if "home" not in skipped:
            steps.append(("home", lambda: check_home_writable(found.home)))
            steps.append(("disk", lambda: check_free_space(found.home, min_free_gb)))
        if found.backend == "aws" and "aws" not in skipped:
            made = clients or QuickAwsClients(found.aws, timeout_s)
            steps.append(("aws", lambda: check_aws(found.aws, made)))
        if "pacs" not in skipped:
            steps.append(("pacs", lambda: check_pacs(found, timeout_s)))
    return checks + run_checks(steps)
