"""A finished job's DICOM series delivered to a DICOM node (a PACS), resumable per job.

`mrictl fetch --to-pacs` and `mrictl watch --pacs` both come here: the series is fetched (its
checksums verified) unless the caller fetched it already, then sent by mrictl.pacs with the
job's delivery state file, so that a second delivery of the same job, after a crash or a
refusal, sends only what the node has not accepted.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from mrictl import keys
from mrictl.backends.base import Backend, NotFoundError
from mrictl.pacs import (
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    DeliveryReport,
    PacsNode,
    send_series,
)
from mrictl.pipeline import jobs

DELIVERY_FOLDER = "delivery"  # under the home: one state file per delivered job


def delivery_state_path(home: Path, job_id: str) -> Path:
    """The state file of a job's deliveries: `<home>/delivery/<job_id>.json`."""
    if not keys.is_job_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return Path(home) / DELIVERY_FOLDER / f"{job_id}.json"


def series_files(files: Sequence[Path]) -> list[Path]:
    """The DICOM instances among a fetch's files (those of its dicom/ folder), in name order."""
    return sorted(
        (Path(f) for f in files if Path(f).parent.name == "dicom" and f.suffix == ".dcm"),
        key=lambda path: path.name,
    )


def deliver_job(
    backend: Backend,
    job_id: str,
    node: PacsNode,
    *,
    home: Path,
    fetched: Sequence[Path] | None = None,
    stop: threading.Event | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
) -> DeliveryReport:
    """Send the DICOM series of a finished job (the last of its chain) to `node`.

    `fetched`: the files a fetch of this job already wrote (their dicom/ part is sent);
    otherwise the series is fetched into the backend's scratch space and removed after.
    NotFoundError when the job has no DICOM series (a train job). `retries` and `backoff_s`
    as mrictl.pacs.send_series takes them (the config's pacs.retries, pacs.backoff_seconds).
    """
    final = jobs.final_job(backend, job_id)
    state = delivery_state_path(home, final.job_id)

    def send(files: Sequence[Path]) -> DeliveryReport:
        series = _series_of(job_id, files)
        return send_series(
            node, series, state=state, stop=stop, retries=retries, backoff_s=backoff_s
        )

    if fetched is not None:
        return send(fetched)
    backend.scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="delivery-", dir=backend.scratch_dir) as staging:
        return send(jobs.fetch(backend, job_id, Path(staging) / "outputs", ["dicom"]))


def _series_of(job_id: str, files: Sequence[Path]) -> list[Path]:
    series = series_files(files)
    if not series:
        raise NotFoundError(f"{job_id} has no DICOM series to deliver")
    return series
