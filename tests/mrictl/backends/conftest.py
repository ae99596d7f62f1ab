"""The backends the contract suite holds to mrictl.backends.base: one entry each.

A new backend is done when `pytest tests/mrictl/backends` passes with its entry added to
BACKEND_FACTORIES; nothing else in the suite changes. An entry says how to open a fresh, empty
backend, how to corrupt a stored object behind the store's back (the suite checks that reads
notice), and which `mrictl` flags point the CLI at the same backend.

`aws` runs on one moto server for the session (tests/servers.py), reset for each test, with the
stacks' resources made directly; the CLI reaches it through the MRICTL_AWS_* variables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from mrictl.backends import AwsClients
from mrictl.backends.aws import AwsBackend, AwsResources
from mrictl.backends.base import Backend
from mrictl.backends.local import LocalBackend
from mrictl.config import AwsSettings
from tests.servers import REGION, TEST_CREDENTIALS, create_aws_resources, moto_server, reset_moto


@dataclass(frozen=True)
class BackendFactory:
    open: Callable[[Path], AbstractContextManager[Backend]]  # a fresh backend in a tmp folder
    corrupt: Callable[[Backend, str], None]  # change an object's bytes, not its recorded SHA-256
    cli_options: Callable[[Backend], list[str]]  # `mrictl ... OPTIONS` that reach this backend


@contextmanager
def make_local(tmp_path: Path) -> Iterator[LocalBackend]:
    yield LocalBackend(tmp_path / "home")


def corrupt_local(backend: LocalBackend, key: str) -> None:
    path = backend.store.path_of(key)
    path.write_bytes(b"bit rot: " + path.read_bytes()[::-1])


def local_cli_options(backend: LocalBackend) -> list[str]:
    return ["--backend", "local", "--home", str(backend.home)]


class SessionMoto:
    """One moto server for the test session, started when an aws test first needs it, and the
    one client factory of the backends opened on it (making clients costs more than a test)."""

    stack = ExitStack()
    url: str | None = None
    clients: AwsClients | None = None

    @classmethod
    def endpoint(cls) -> str:
        if cls.url is None:
            cls.url = cls.stack.enter_context(moto_server())
        return cls.url

    @classmethod
    def settings(cls) -> AwsSettings:
        return AwsSettings(region=REGION, endpoint_url=cls.endpoint())

    @classmethod
    def shared_clients(cls) -> AwsClients:
        if cls.clients is None:
            cls.clients = AwsClients(cls.settings())
        return cls.clients


@contextmanager
def aws_environment(endpoint_url: str, resources: AwsResources) -> Iterator[None]:
    """What a process needs to reach these resources: test credentials, the endpoint and
    region, and the MRICTL_AWS_* variables a container gets (the CLI and child workers)."""
    with pytest.MonkeyPatch.context() as patch:
        variables = {
            **TEST_CREDENTIALS,
            "MRICTL_AWS_ENDPOINT_URL": endpoint_url,
            "MRICTL_AWS_REGION": REGION,
            **resources.environment(),
        }
        for name, value in variables.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "MRICTL_AWS_PROFILE"):
            patch.delenv(name, raising=False)
        yield


@contextmanager
def make_aws(tmp_path: Path, **options: float) -> Iterator[AwsBackend]:
    """A fresh, empty set of the stacks' resources on the session's moto server; pulls do not
    wait on empty queues and upload events do not wait for the CLI."""
    url = SessionMoto.endpoint()
    reset_moto(url)
    resources = AwsResources.from_sources(create_aws_resources(url), {})
    with aws_environment(url, resources):
        yield AwsBackend(
            SessionMoto.settings(),
            SessionMoto.shared_clients(),
            resources=resources,
            scratch_dir=tmp_path / "home" / "work",
            receive_wait_seconds=int(options.get("receive_wait_seconds", 0)),
            upload_grace_seconds=options.get("upload_grace_seconds", 0.0),
        )


def corrupt_aws(backend: AwsBackend, key: str) -> None:
    """New bytes under the key with the old metadata (its recorded SHA-256 included)."""
    s3 = backend.clients.client("s3")
    bucket = backend.resources.bucket_for(key)
    metadata = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=b"bit rot: " + data[::-1], Metadata=metadata)


def aws_cli_options(backend: AwsBackend) -> list[str]:
    # The endpoint and the resources reach the CLI as variables (aws_environment).
    return ["--backend", "aws", "--home", str(backend.scratch_dir.parent)]


BACKEND_FACTORIES: dict[str, BackendFactory] = {
    "local": BackendFactory(make_local, corrupt_local, local_cli_options),
    "aws": BackendFactory(make_aws, corrupt_aws, aws_cli_options),
}


@pytest.fixture(params=list(BACKEND_FACTORIES))
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backend_factory(backend_name: str) -> BackendFactory:
    return BACKEND_FACTORIES[backend_name]


@pytest.fixture
def backend(backend_factory: BackendFactory, tmp_path: Path) -> Iterator[Backend]:
    with backend_factory.open(tmp_path) as opened:
        yield opened


@pytest.fixture
def corrupt(backend: Backend, backend_factory: BackendFactory) -> Callable[[str], None]:
    """`corrupt(key)`: the object's bytes change behind the store's back."""
    return partial(backend_factory.corrupt, backend)


@pytest.fixture
def cli_options(backend: Backend, backend_factory: BackendFactory) -> list[str]:
    return backend_factory.cli_options(backend)
