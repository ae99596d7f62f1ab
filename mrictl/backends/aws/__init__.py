"""The aws backend: objects in S3, job records in DynamoDB, work delivered by SQS and AWS Batch.

- `store.py`: `S3ObjectStore`, keys onto the raw, preprocessed and reconstructed buckets by
  area, each object with its SHA-256 in its metadata, checked in transit and on every read; a
  read of an archived (Glacier) object starts its restore and raises ObjectArchivedError.
- `multipart.py`: large files go up in parts recorded under <home>/upload-resume, so an
  interrupted upload of the same file resumes (`aws.resumable_upload_threshold`,
  `aws.upload_part_size`).
- `fsx.py`: with `aws.fsx_mount`, reads of the preprocessed bucket come from the FSx for Lustre
  file system linked to it when its file matches the object's recorded SHA-256.
- `queue.py`: `AwsJobQueue`, job records as DynamoDB items fenced by conditional writes,
  idempotency keys as items of the same table, SQS messages (and raw-upload S3 events) as
  deliveries to pulling workers, Batch jobs as deliveries of recon and train jobs where the
  stacks' Batch job queue and job definitions are known; `records.py` encodes the items.
- `batch.py`: `BatchService`, submitting, stopping and describing those Batch jobs (why one is
  still RUNNABLE) and reading their containers' CloudWatch logs.
- `refresh.py`: `CacheRefresher`, the results file share's RefreshCache after a recon job's
  outputs land (debounced, at most 2 in flight, waited on), through `after_outputs_published`.
- `resources.py`: `AwsResources`, the names of the stacks' buckets, queues, table and Batch
  resources, from what `mrictl provision` saved and the MRICTL_AWS_* variables a container is
  given.

Clients come from `mrictl.backends.AwsClients` (botocore's standard retry mode, so throttling is
retried there). Worker processes started on this machine pull from the same queues.

A recon job whose volume has more slices than `aws.slices_per_array_child` runs as a Batch
array job over slice ranges and an assembler that depends on it (`batch.py`, docs/aws.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mrictl import keys
from mrictl.backends.aws.batch import BatchService, slices_per_child_setting
from mrictl.backends.aws.fsx import FsxCopies
from mrictl.backends.aws.multipart import MIN_PART_SIZE
from mrictl.backends.aws.queue import RECEIVE_WAIT_SECONDS, UPLOAD_GRACE_SECONDS, AwsJobQueue
from mrictl.backends.aws.refresh import CacheRefresher, recorded_results_share
from mrictl.backends.aws.resources import AwsResources
from mrictl.backends.aws.store import PART_SIZE, RESUMABLE_THRESHOLD, S3ObjectStore
from mrictl.backends.base import DEFAULT_MAX_ATTEMPTS, BackendError
from mrictl.backends.processes import LocalWorkerProcesses
from mrictl.config import SECTION_ENVIRONMENT, AwsSettings
from mrictl.errors import ExitCode, MrictlError

if TYPE_CHECKING:
    from mrictl.backends import AwsClients

RESUME_FOLDER = "upload-resume"  # beside the scratch space: resume records of large uploads

__all__ = [
    "AwsBackend",
    "AwsJobQueue",
    "AwsResources",
    "BatchService",
    "CacheRefresher",
    "S3ObjectStore",
]


class AwsBackend:
    """Store, queue and this machine's scratch space for the stacks `resources` names."""

    name = "aws"

    def __init__(
        self,
        settings: AwsSettings,
        clients: AwsClients,
        *,
        resources: AwsResources,
        scratch_dir: Path,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        receive_wait_seconds: int = RECEIVE_WAIT_SECONDS,
        upload_grace_seconds: float = UPLOAD_GRACE_SECONDS,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.resources = resources
        self.scratch_dir = Path(scratch_dir)
        try:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BackendError(
                f"{self.scratch_dir.name}: cannot hold the aws backend's scratch space "
                f"({error.strerror or type(error).__name__})"
            ) from None
        self.store = S3ObjectStore(
            clients.client("s3"),
            resources,
            resumable_threshold=_bytes_setting(
                settings, "resumable_upload_threshold", RESUMABLE_THRESHOLD, least=0
            ),
            part_size=_bytes_setting(settings, "upload_part_size", PART_SIZE, least=MIN_PART_SIZE),
            resume_dir=self.scratch_dir.parent / RESUME_FOLDER,
            local_copies=(
                FsxCopies(Path(settings.fsx_mount), resources.preprocessed_bucket)
                if settings.fsx_mount
                else None
            ),
        )
        self.queue = AwsJobQueue(
            clients.client("dynamodb"),
            clients.client("sqs"),
            resources,
            max_attempts,
            receive_wait_seconds=receive_wait_seconds,
            upload_grace_seconds=upload_grace_seconds,
            batch=BatchService(
                clients.client,
                resources,
                slices_per_child=slices_per_child_setting(settings.slices_per_array_child),
            ),
        )
        share = resources.results_share_arn or recorded_results_share(settings.stack_prefix)
        self.refresher: CacheRefresher | None = None
        if share:
            self.refresher = CacheRefresher(_LazyClient(clients, "storagegateway"), share)

    def after_outputs_published(self, prefix: str) -> str | None:
        """`PublishedOutputsHook`: refresh the results share's folder of a recon job's outputs
        (`reconstructed/<job_id>/` is `/<job_id>/` on the share); None without a share."""
        results = keys.results_prefix()
        if self.refresher is None or not prefix.startswith(results):
            return None
        folder = "/" + prefix.removeprefix(results)
        notification = self.refresher.refresh(folder)
        return f"results share refreshed: {folder} (notification {notification})"

    def start_worker_processes(self, count: int, arguments: list[str]) -> LocalWorkerProcesses:
        """Workers on this machine pulling from the same queues (ECS and Batch start the
        cloud's own)."""
        environment = {
            "MRICTL_BACKEND": "aws",
            "MRICTL_HOME": str(self.scratch_dir.parent),
            **self.resources.environment(),
        }
        for (section, key), variable in SECTION_ENVIRONMENT.items():
            value = getattr(self.settings, key, None) if section == "aws" else None
            if value:
                environment[variable] = str(value)
        return LocalWorkerProcesses(count, arguments, environment)

    def __repr__(self) -> str:
        return f"AwsBackend(job_table={self.resources.job_table!r})"


def _bytes_setting(settings: AwsSettings, name: str, default: int, *, least: int) -> int:
    """A size setting in bytes (a whole number, at least `least`), or `default`."""
    given = getattr(settings, name)
    if not given:
        return default
    if not given.strip().isdigit() or int(given) < least:
        raise MrictlError(
            f"aws.{name} must be a whole number of bytes of at least {least}, not {given!r}",
            ExitCode.USAGE,
        )
    return int(given)


class _LazyClient:
    """A client made on its first call: a backend without work for it makes none."""

    def __init__(self, clients: AwsClients, service: str) -> None:
        self._clients = clients
        self._service = service

    def __getattr__(self, name: str) -> object:
        return getattr(self._clients.client(self._service), name)
