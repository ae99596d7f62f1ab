"""What a running stage may use: its job, a fresh work folder, the job log, cancellation, and
publishing fenced by the job's lease.

The heartbeat thread keeps the lease alive and learns when the job was cancelled or taken over;
the stage meets that at its next `check` (progress callbacks call it), and every write to the
store or the queue presents the lease first, so a worker that lost its job writes nothing more.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mrictl import keys
from mrictl.backends.base import Backend, BackendError, Job, LeaseLostError, ObjectInfo
from mrictl.pipeline.stages import Stage

log = logging.getLogger("mrictl.worker")
# A stage's progress updates, at DEBUG: off unless someone in this process listens (`mrictl demo`
# shows the slices of the worker it runs); the update is the record's `progress` attribute.
progress_log = logging.getLogger("mrictl.progress")


class JobAborted(Exception):
    """The worker must stop this job now: it was cancelled or its lease was lost."""

    def __init__(self, cause: LeaseLostError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Heartbeat(threading.Thread):
    """Extends the lease every third of its length; records why it stopped if the job is lost."""

    def __init__(self, backend: Backend, job: Job, lease_seconds: float) -> None:
        super().__init__(name=f"heartbeat-{job.job_id}", daemon=True)
        self.backend = backend
        self.job = job
        self.lease_seconds = lease_seconds
        self.finished = threading.Event()
        self.lost: LeaseLostError | None = None
        self._lock = threading.Lock()

    def run(self) -> None:
        interval = max(self.lease_seconds / 3.0, 0.05)
        while not self.finished.wait(interval):
            try:
                self.beat()
            except LeaseLostError:
                return
            except BackendError as error:  # a busy or flaky backend: try again next beat
                log.warning("%s: heartbeat failed: %s", self.job.job_id, error)

    def beat(self) -> None:
        """Renew the lease now; LeaseLostError (also kept in `lost`) if the job is not ours."""
        with self._lock:
            if self.lost is not None:
                raise self.lost
            try:
                self.job = self.backend.queue.heartbeat(self.job, self.lease_seconds)
            except LeaseLostError as error:
                self.lost = error
                raise

    def stop(self) -> None:
        self.finished.set()
        if self.is_alive():
            self.join()


class StageContext:
    """See the module docstring."""

    def __init__(
        self,
        backend: Backend,
        job: Job,
        stage: Stage,
        worker_id: str,
        work_dir: Path,
        heartbeat: Heartbeat,
    ) -> None:
        self.backend = backend
        self.job = job
        self.stage = stage
        self.worker_id = worker_id
        self.work_dir = work_dir
        self._heartbeat = heartbeat
        self.published: list[str] = []

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload

    def output_key(self, relative_name: str) -> str:
        """The key of one of this job's own outputs (removed again if the job is cancelled)."""
        if self.stage.area is None:
            raise ValueError(f"stage {self.stage.name} has no outputs area")
        return keys.output(self.stage.area, self.job.job_id, relative_name)

    def log(self, message: str) -> None:
        """One line to the job's log and to Python logging (never patient data)."""
        log.info("%s %s: %s", self.job.stage, self.job.job_id, message)
        try:
            self.backend.queue.append_log(self.job.job_id, message, worker_id=self.worker_id)
        except BackendError as error:
            log.warning("%s: could not append to the job log: %s", self.job.job_id, error)

    def check(self) -> None:
        """Raise JobAborted once the heartbeat learned that the job is no longer ours."""
        if self._heartbeat.lost is not None:
            raise JobAborted(self._heartbeat.lost)

    def progress(self, update: Mapping[str, float]) -> None:
        """A `progress=` callback for long computations: the point where cancellation lands."""
        if progress_log.isEnabledFor(logging.DEBUG):
            progress_log.debug(
                "%s %s", self.job.stage, self.job.job_id, extra={"progress": dict(update)}
            )
        self.check()

    def check_now(self) -> None:
        """`check`, asking the job record now instead of waiting for the next heartbeat (every
        third of the lease: minutes): the fence before any write."""
        self.check()
        try:
            self._heartbeat.beat()
        except LeaseLostError as error:
            raise JobAborted(error) from None

    def publish(
        self, path: Path, key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Put one finished file in the store (atomically), only while the lease is ours."""
        self.check_now()
        info = self.backend.store.put_file(key, path, metadata=metadata)
        self.published.append(key)
        return info

    def publish_outputs(self, out_dir: Path, files: list[Path]) -> list[str]:
        """Publish `files` (under `out_dir`, in this order: the record last) as the job's own
        outputs; returns their keys."""
        published = []
        for path in files:
            key = self.output_key(path.relative_to(out_dir).as_posix())
            self.publish(path, key)
            published.append(key)
        self.log(f"published {len(published)} output file(s)")
        return published

    def enqueue_next(self, stage: str, payload: Mapping[str, Any]) -> str:
        """Queue the next stage exactly once, however often this job is delivered, and never
        after the job was cancelled (`mrictl.pipeline.jobs.cancel` stops one queued in the
        instant between this check and the enqueue)."""
        self.check_now()
        return self.backend.queue.enqueue(
            stage,
            payload,
            parent_id=self.job.job_id,
            idempotency_key=f"{self.job.job_id}/{stage}",
        )
