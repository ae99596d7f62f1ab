"""Backends behind one contract (base.py): `local` (folder + SQLite) and `aws` (S3, DynamoDB, SQS).

`open_backend` is the one place a backend is built, and `AwsClients` the one place boto3
clients are: tests pass an endpoint in the settings (or a factory of their own) and nothing
reads the environment behind their back. Neither imports a backend's package, boto3 or the
science until it is used, so commands that only talk to the queue start at once.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mrictl.config import AwsSettings, Settings
from mrictl.errors import ExitCode, MrictlError

if TYPE_CHECKING:
    from mrictl.backends.base import Backend

# botocore's retry mode for throttling (AWS's recommended default; `adaptive` also rate-limits).
RETRY_MODE = "standard"
MAX_RETRY_ATTEMPTS = 8


class AwsClients:
    """Makes boto3 clients for the settings' profile, region and endpoint, one per service."""

    def __init__(self, settings: AwsSettings) -> None:
        self.settings = settings
        self._clients: dict[str, Any] = {}
        self._session: Any = None

    def client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            if self._session is None:
                self._session = boto3.session.Session(
                    profile_name=self.settings.profile, region_name=self.settings.region
                )
            self._clients[service] = self._session.client(
                service,
                endpoint_url=self.settings.endpoint_url,
                config=Config(retries={"mode": RETRY_MODE, "max_attempts": MAX_RETRY_ATTEMPTS}),
            )
        return self._clients[service]


def open_backend(settings: Settings, *, clients: AwsClients | None = None) -> Backend:
    """The backend the settings name, ready to use; `clients` replaces the AWS client factory."""
    if settings.backend == "local":
        from mrictl.backends.local import LocalBackend

        return LocalBackend(settings.home, max_attempts=settings.max_attempts)
    if settings.backend == "aws":
        from mrictl.backends.aws import AwsBackend, AwsResources

        # Resources first: a workstation that never provisioned learns what to run before
        # any client is made.
        resources = AwsResources.from_sources(settings.aws.outputs, os.environ)
        return AwsBackend(
            settings.aws,
            clients or AwsClients(settings.aws),
            resources=resources,
            scratch_dir=settings.home / "work",
            max_attempts=settings.max_attempts,
        )
    raise MrictlError(
        f"the {settings.backend!r} backend is not available in this version",
        ExitCode.BACKEND,
    )
