"""Job service functions behind `mrictl recon submit/status/cancel/retry/logs/watch`,
`mrictl train --submit` and `mrictl fetch`.

A submission is a chain of stage jobs: preprocess (unpack, verify, convert) then recon or train.
Each stage job has its own record; a preprocess record names its successor in `next_job_id`,
and `wait`, `cancel`, `retry` and `fetch` follow that chain, so the id `submit` returns is all a
user needs. Records are plain dicts with the stable schema of docs/jobs-schema.md.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mrictl import keys
from mrictl.backends.base import (
    ArchivedObjects,
    Backend,
    BatchDispatch,
    ConflictError,
    Job,
    JobState,
    NotFoundError,
    ObjectArchivedError,
)
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline.requests import recon_request, train_request
from mrictl.pipeline.stages import FETCHABLE, STAGES

RECORD_FIELDS = (
    "job_id",
    "scan_id",
    "stage",
    "state",
    "method",
    "options",
    "attempts",
    "max_attempts",
    "created_at",
    "updated_at",
    "error",
    "outputs",
    "metrics",
    "comparison",
    "timings",
    "parent_job_id",
    "next_job_id",
    "worker_id",
    "fallback",
    "selection",
    "batch_job_id",
    "waiting_reason",
)

# fetch --format NAME -> which output files it selects (by file name under the job's folder).
OUTPUT_FORMATS = ("h5", "json", "dicom", "nifti", "png", "report", "weights")


def iso_utc(seconds: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a Z, e.g. 2026-11-25T09:55:00.123Z."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def job_record(job: Job) -> dict[str, Any]:
    """The public record of a job (docs/jobs-schema.md): no lease token, no identifiers."""
    payload, result = job.payload, job.result
    return {
        "job_id": job.job_id,
        "scan_id": payload.get("scan_id"),
        "stage": job.stage,
        "state": job.state.value,
        "method": payload.get("method"),
        "options": dict(payload.get("options") or {}),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": iso_utc(job.created_at),
        "updated_at": iso_utc(job.updated_at),
        "error": job.error,
        "outputs": list(result.get("outputs") or []),
        "metrics": dict(result.get("metrics") or {}),
        "comparison": dict(result.get("comparison") or {}),
        "timings": dict(result.get("timings") or {}),
        "parent_job_id": job.parent_id,
        "next_job_id": result.get("next_job_id"),
        "worker_id": job.worker_id,
        "fallback": result.get("fallback"),
        "selection": result.get("selection"),
        "batch_job_id": job.batch_job_id,
        "waiting_reason": None,
    }


def _stored_scan_id(
    backend: Backend,
    source: str | Path | Sequence[Path],
    axis_order: str | None,
    variable: str | None,
) -> str:
    """The scan id of `source`: an uploaded scan's id as given, or files packaged and stored
    now (a no-op for a scan already there)."""
    from mrictl.pipeline.upload import store_scan

    if isinstance(source, str) and keys.is_scan_id(source) and not Path(source).exists():
        if not backend.store.exists(keys.upload(source)):
            raise NotFoundError(f"{source}: no such uploaded scan")
        return source
    paths = [Path(source)] if isinstance(source, str | Path) else [Path(p) for p in source]
    scan_id, _ = store_scan(backend, paths, axis_order=axis_order, variable=variable)
    return scan_id


def _enqueue_chain(backend: Backend, scan_id: str, stage: str, request: dict[str, Any]) -> str:
    """A preprocess job that queues `stage` next, or `stage` at once for a preprocessed scan.

    A raw package the store archived (Glacier) is restored first: the restore is started now and
    ObjectArchivedError says when to submit again, rather than queueing a job that cannot run.
    """
    from mrictl.pipeline.requests import enqueue_preprocess

    if backend.store.exists(keys.preprocessed(scan_id)):
        return backend.queue.enqueue(stage, {"scan_id": scan_id, **request})
    if isinstance(backend.store, ArchivedObjects):
        try:
            backend.store.ensure_readable(keys.upload(scan_id))
        except ObjectArchivedError as error:
            raise error.but_then(f"submit {scan_id} again then; nothing was queued") from None
    return enqueue_preprocess(backend, scan_id, request, next_stage=stage)


def submit(
    backend: Backend,
    source: str | Path | Sequence[Path],
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    axis_order: str | None = None,
    variable: str | None = None,
) -> dict[str, Any]:
    """Reconstruct a scan given as file(s) or as the id of an uploaded scan; returns the first job.

    Files are packaged and stored (a no-op for a scan already there). A scan that was already
    preprocessed goes straight to a recon job; otherwise a preprocess job runs first. Weights
    named by a train job's id (`options["weights_job"]`) must be stored already.
    """
    request = recon_request(method, options)
    weights_job = request["options"].get("weights_job")
    if weights_job is not None:
        trained = _check_weights_job(backend, weights_job)
        request["options"]["weights_job"] = trained.job_id
        request["method"] = method or trained.payload.get("method")
    scan_id = _stored_scan_id(backend, source, axis_order, variable)
    job_id = _enqueue_chain(backend, scan_id, "recon", request)
    return job_record(backend.queue.get(job_id))


def submit_training(
    backend: Backend,
    source: str | Path | Sequence[Path],
    method: str,
    options: Mapping[str, Any] | None = None,
    *,
    axis_order: str | None = None,
    variable: str | None = None,
) -> dict[str, Any]:
    """Queue the training of a scan's networks; the weights land in the store (`fetch` gets
    them, `submit(..., options={"weights_job": JOB})` applies them)."""
    request = train_request(method, options)
    scan_id = _stored_scan_id(backend, source, axis_order, variable)
    job_id = _enqueue_chain(backend, scan_id, "train", request)
    return job_record(backend.queue.get(job_id))


def _check_weights_job(backend: Backend, job_id: str) -> Job:
    """The train job that ends the chain of `job_id`, which must have succeeded (its weights
    stored)."""
    job = final_job(backend, job_id)
    if job.stage != "train" and job.state is JobState.SUCCEEDED:
        raise MrictlError(f"{job_id} is a {job.stage} job, not a train job", ExitCode.USAGE)
    if job.state is not JobState.SUCCEEDED:
        raise ConflictError(
            f"{job.job_id} is {job.state.value} ({job.stage}): its weights are not stored yet "
            "(wait for it: `mrictl recon status`)"
        )
    if not backend.store.exists(keys.weights(job.job_id)):
        raise NotFoundError(f"{job.job_id}: its weights are no longer in the store")
    return job


def get_record(backend: Backend, job_id: str) -> dict[str, Any]:
    return job_record(backend.queue.get(job_id))


def status(
    backend: Backend,
    job_id: str | None = None,
    *,
    state: str | None = None,
    stage: str | None = None,
) -> list[dict[str, Any]]:
    """Records, oldest first: the one job (a list of one), or all, optionally filtered.

    The one job's record says why it waits, where a batch service runs it and tells
    (`waiting_reason`: no capacity, no instance type that fits, a vCPU limit ...)."""
    if job_id is not None:
        job = backend.queue.get(job_id)
        record = job_record(job)
        if isinstance(backend.queue, BatchDispatch):
            record["waiting_reason"] = backend.queue.waiting_reason(job)
        return [record]
    if state is not None and state not in {s.value for s in JobState}:
        raise MrictlError(f"unknown state {state!r}", ExitCode.USAGE)
    return [job_record(job) for job in backend.queue.list(state=state, stage=stage)]


def final_job(backend: Backend, job_id: str) -> Job:
    """The last job of the chain that starts at `job_id` (itself when nothing followed)."""
    job = backend.queue.get(job_id)
    while job.state is JobState.SUCCEEDED and job.result.get("next_job_id"):
        job = backend.queue.get(job.result["next_job_id"])
    return job


def cancel(backend: Backend, job_id: str) -> dict[str, Any]:
    """Cancel the unfinished job of a chain; a running worker stops at its next heartbeat.

    A running stage may have queued its successor just before the cancel landed: that job is
    cancelled too, so that nothing of a cancelled chain runs.
    """
    job = final_job(backend, job_id)
    cancelled = backend.queue.cancel(job.job_id)
    for child in backend.queue.children(cancelled.job_id):
        if not child.state.is_final:
            with contextlib.suppress(ConflictError):  # it finished meanwhile
                backend.queue.cancel(child.job_id)
    return job_record(cancelled)


def retry(backend: Backend, job_id: str) -> dict[str, Any]:
    """Queue the failed or cancelled job of a chain again, with a fresh set of attempts."""
    job = final_job(backend, job_id)
    return job_record(backend.queue.retry(job.job_id))


def logs(backend: Backend, job_id: str, *, follow_chain: bool = True) -> list[dict[str, Any]]:
    """Log lines of a job (and of the jobs it led to), oldest first (`source` "record"); then,
    where a batch service ran them, the lines their containers wrote (`source` "batch",
    `worker_id` naming the log stream, `attempt` the container's attempt)."""
    chain = [backend.queue.get(job_id)]
    while follow_chain and chain[-1].result.get("next_job_id"):
        chain.append(backend.queue.get(chain[-1].result["next_job_id"]))
    entries = [(entry, "record") for job in chain for entry in backend.queue.logs(job.job_id)]
    if isinstance(backend.queue, BatchDispatch):
        entries += [(entry, "batch") for job in chain for entry in backend.queue.batch_logs(job)]
    return [
        {
            "job_id": entry.job_id,
            "at": iso_utc(entry.at),
            "attempt": entry.attempt,
            "worker_id": entry.worker_id,
            "message": entry.message,
            "source": source,
        }
        for entry, source in entries
    ]


def wait(
    backend: Backend, job_id: str, timeout: float | None = None, *, poll_interval: float = 0.25
) -> dict[str, Any]:
    """Block until the chain's last job is final and return its record; TIMEOUT error if not."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = final_job(backend, job_id)
        if job.state.is_final:
            return job_record(job)
        if deadline is not None and time.monotonic() >= deadline:
            raise MrictlError(
                f"{job_id}: still {job.state.value} ({job.stage}) after {timeout:g} s",
                ExitCode.TIMEOUT,
            )
        remaining = poll_interval if deadline is None else deadline - time.monotonic()
        time.sleep(max(0.0, min(poll_interval, remaining)))


def output_format(name: str) -> str | None:
    """Which fetch format an output file belongs to (by its name under the job's folder)."""
    if name == keys.WEIGHTS_NAME:
        return "weights"
    if name.startswith("dicom/"):
        return "dicom"
    if name == "result.json":
        return "json"
    if name.endswith(".h5"):
        return "h5"
    if name.endswith((".nii.gz", ".nii")):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    if name.startswith("report"):
        return "report"
    return None


def fetch(
    backend: Backend,
    job_id: str,
    out_dir: Path,
    formats: Sequence[str] | None = None,
) -> list[Path]:
    """Copy a finished recon or train job's outputs into `out_dir`, checksums verified, all or
    nothing.

    The files are gathered in a staging folder beside `out_dir` and moved in only when every
    one arrived whole, so a failure leaves `out_dir` as it was. Fetching the same job again
    replaces its files; a folder that holds another job's outputs is refused.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MrictlError(f"{out_dir.name}: is a file; --out names a folder", ExitCode.USAGE)
    unknown = sorted(set(formats or ()) - set(OUTPUT_FORMATS))
    if unknown:
        raise MrictlError(
            f"unknown format {unknown[0]!r}; choose from {', '.join(OUTPUT_FORMATS)}",
            ExitCode.USAGE,
        )
    job = final_job(backend, job_id)
    if job.state is JobState.FAILED or job.state is JobState.CANCELLED:
        raise MrictlError(f"{job.job_id} {job.state.value}: no outputs", ExitCode.JOB_FAILED)
    if job.state is not JobState.SUCCEEDED or job.stage not in FETCHABLE:
        raise ConflictError(f"{job.job_id} is {job.state.value} ({job.stage}): no outputs yet")
    _check_not_another_jobs(out_dir, job.job_id)
    prefix = STAGES[job.stage].outputs_prefix(job.job_id)
    names = [
        key.removeprefix(prefix)
        for key in job.result.get("outputs") or []
        if not formats or output_format(key.removeprefix(prefix)) in formats
    ]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name in names:
            backend.store.get_file(prefix + name, staging / name)
        out_dir.mkdir(exist_ok=True)
        for name in names:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in names]


def _check_not_another_jobs(out_dir: Path, job_id: str) -> None:
    """ConflictError when `out_dir` holds the result.json of a different job."""
    try:
        previous = json.loads((out_dir / "result.json").read_text()).get("job_id")
    except (OSError, ValueError, AttributeError):
        return  # no earlier fetch there (or not one of ours): nothing to mix up
    if previous and previous != job_id:
        raise ConflictError(
            f"{out_dir.name} holds the outputs of {previous}: fetch {job_id} into another folder"
        )
