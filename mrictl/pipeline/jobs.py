"""Job service functions behind `mrictl submit/status/cancel/retry/logs/wait/fetch`.

A submission is a chain of stage jobs: preprocess (unpack, verify, convert) then recon. Each
stage job has its own record; a preprocess record names its recon job in `next_job_id`, and
`wait`, `cancel`, `retry` and `fetch` follow that chain, so the id `submit` returns is all a user
needs. Records are plain dicts with the stable schema of docs/jobs-schema.md.
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

from mrictl.backends.base import (
    PREPROCESSED,
    RECONSTRUCTED,
    Backend,
    ConflictError,
    Job,
    JobState,
    NotFoundError,
)
from mrictl.errors import ExitCode, MrictlError

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
)

# Options a recon job accepts, with their types; anything else is refused at submit.
RECON_OPTIONS: dict[str, type] = {
    "acceleration": int,
    "acs_lines": int,
    "device": str,
    "iterations": int,
    "compare": list,  # methods scored beside the main one when a reference is known
    "training": dict,  # TrainingConfig fields to change (mrictl.reconstruction.training_config)
}

# fetch --format NAME -> which output files it selects (by file name under the job's folder).
OUTPUT_FORMATS = ("h5", "json", "dicom", "nifti", "png", "report")


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
    }


def preprocessed_key(scan_id: str) -> str:
    return f"{PREPROCESSED}/{scan_id}.h5"


def output_prefix(job_id: str) -> str:
    return f"{RECONSTRUCTED}/{job_id}/"


def recon_request(method: str | None, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a method and its options before anything is queued; returns the payload part."""
    from raki.recon import DEFAULT_METHOD, METHODS

    if (method or DEFAULT_METHOD) not in METHODS:
        raise MrictlError(
            f"unknown method {method!r}; choose one of {', '.join(METHODS)}", ExitCode.USAGE
        )
    clean: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if value is None:
            continue
        kind = RECON_OPTIONS.get(name)
        if kind is None:
            raise MrictlError(
                f"unknown option {name!r}; known: {', '.join(RECON_OPTIONS)}", ExitCode.USAGE
            )
        if not isinstance(value, kind) or isinstance(value, bool):
            raise MrictlError(f"option {name!r} must be a {kind.__name__}", ExitCode.USAGE)
        if kind is list:
            unknown = [m for m in value if m not in METHODS]
            if unknown:
                raise MrictlError(
                    f"cannot compare with unknown method {unknown[0]!r}", ExitCode.USAGE
                )
            clean[name] = list(value)
            continue
        if kind is dict:
            from mrictl.reconstruction import training_config

            training_config(value)  # unknown fields are refused now, not at the worker
            clean[name] = dict(value)
            continue
        if name == "device":
            from mrictl.reconstruction import check_method_and_device

            check_method_and_device(None, value)  # a typo fails now, not after a queue wait
        if kind is int and value < (0 if name == "acs_lines" else 1):
            raise MrictlError(f"option {name!r} is out of range: {value}", ExitCode.USAGE)
        clean[name] = value
    request: dict[str, Any] = {"method": method or DEFAULT_METHOD, "options": clean}
    if method is None:
        # Not chosen: the worker may fall back from the default (raki.recon.default_method_for).
        request["default_method"] = True
    return request


def enqueue_preprocess(
    backend: Backend,
    scan_id: str,
    *,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> str:
    """Queue the preprocess of an uploaded scan, carrying the recon request on to its recon job."""
    return backend.queue.enqueue(
        "preprocess", {"scan_id": scan_id, **recon_request(method, options)}
    )


def enqueue_recon(
    backend: Backend,
    scan_id: str,
    *,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> str:
    return backend.queue.enqueue("recon", {"scan_id": scan_id, **recon_request(method, options)})


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
    preprocessed goes straight to a recon job; otherwise a preprocess job runs first.
    """
    from mrictl.pipeline.packaging import is_scan_id, store_scan, upload_key

    request = recon_request(method, options)
    if isinstance(source, str) and is_scan_id(source) and not Path(source).exists():
        scan_id = source
        if not backend.store.exists(upload_key(scan_id)):
            raise NotFoundError(f"{scan_id}: no such uploaded scan")
    else:
        paths = [Path(source)] if isinstance(source, str | Path) else [Path(p) for p in source]
        scan_id, _ = store_scan(backend, paths, axis_order=axis_order, variable=variable)
    stage = "recon" if backend.store.exists(preprocessed_key(scan_id)) else "preprocess"
    job_id = backend.queue.enqueue(stage, {"scan_id": scan_id, **request})
    return job_record(backend.queue.get(job_id))


def get_record(backend: Backend, job_id: str) -> dict[str, Any]:
    return job_record(backend.queue.get(job_id))


def status(
    backend: Backend,
    job_id: str | None = None,
    *,
    state: str | None = None,
    stage: str | None = None,
) -> list[dict[str, Any]]:
    """Records, oldest first: the one job (a list of one), or all, optionally filtered."""
    if job_id is not None:
        return [get_record(backend, job_id)]
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
    for state in (JobState.QUEUED, JobState.RUNNING):
        for child in backend.queue.list(state=state):
            if child.parent_id == cancelled.job_id:
                with contextlib.suppress(ConflictError):  # it finished meanwhile
                    backend.queue.cancel(child.job_id)
    return job_record(cancelled)


def retry(backend: Backend, job_id: str) -> dict[str, Any]:
    """Queue the failed or cancelled job of a chain again, with a fresh set of attempts."""
    job = final_job(backend, job_id)
    return job_record(backend.queue.retry(job.job_id))


def logs(backend: Backend, job_id: str, *, follow_chain: bool = True) -> list[dict[str, Any]]:
    """Log lines of a job (and of the jobs it led to), oldest first."""
    job_ids = [job_id]
    if follow_chain:
        job = backend.queue.get(job_id)
        while job.result.get("next_job_id"):
            job = backend.queue.get(job.result["next_job_id"])
            job_ids.append(job.job_id)
    return [
        {
            "job_id": entry.job_id,
            "at": iso_utc(entry.at),
            "attempt": entry.attempt,
            "worker_id": entry.worker_id,
            "message": entry.message,
        }
        for each in job_ids
        for entry in backend.queue.logs(each)
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
    """Copy a finished job's outputs into `out_dir`, checksums verified, all or nothing.

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
    if job.state is not JobState.SUCCEEDED or job.stage != "recon":
        raise ConflictError(f"{job.job_id} is {job.state.value} ({job.stage}): no outputs yet")
    _check_not_another_jobs(out_dir, job.job_id)
    prefix = output_prefix(job.job_id)
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
