"""The worker's lease loop: claim a job, keep its lease alive, run its stage, complete or fail it.

The same loop runs in `mrictl worker run` on a workstation, in the Fargate service (pulling by
stage) and in a Batch container (`--job ID`: that one job, then exit). An array child of a split
recon job (`--job ID --shard`) runs no loop: `run_shard` reconstructs its slice range. Delivery is
at-least-once: a worker that dies loses its lease and the job is claimed again after expiry, so
stages are idempotent and publish their outputs only at the end, each object atomically. Logs
(per job and Python logging) name jobs and stages, never patients.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mrictl.backends.base import (
    Backend,
    BackendError,
    ChecksumMismatchError,
    ConflictError,
    Job,
    JobCancelledError,
    JobState,
    LeaseLostError,
    ObjectArchivedError,
)
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline.context import Heartbeat, JobAborted, StageContext
from mrictl.pipeline.stages import STAGE_NAMES, STAGES, Stage, stage_named

log = logging.getLogger("mrictl.worker")

DEFAULT_LEASE_SECONDS = 600.0
DEFAULT_POLL_INTERVAL = 1.0
RETRY_DELAY_SECONDS = 2.0  # a pushed job's next attempt waits this times the attempts used
LEASE_RECHECK_SECONDS = 10.0  # a lease in the way is looked at again this often
TAKE_OVER_MARGIN_SECONDS = 0.5

# A directory path inside a message (it may name a patient): only its last part is kept.
_PATH = re.compile(r"(?<![^\s'\"(])(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"()]+)*[/\\]([^\s/\\'\"()]+)")


def is_permanent(error: BaseException) -> bool:
    """Bad input, a bad request or a corrupt stored object fails for good at once (reading the
    same bytes again gives the same answer), and so does an archived input (its restore takes
    hours: attempts spent now would all fail; `retry` after it); anything else (I/O, backend,
    bugs) is retried."""
    from raki.errors import RakiError

    if isinstance(error, ChecksumMismatchError | ObjectArchivedError):
        return True
    if isinstance(error, MrictlError):
        return error.exit_code in (ExitCode.BAD_INPUT, ExitCode.USAGE)
    return isinstance(error, RakiError)


def failure_reason(error: BaseException) -> str:
    """One line for the job record: no traceback, no directory paths.

    Our own errors (MrictlError, raki's errors) already name files by base name only; other
    messages may hold a path, which is cut to its last part.
    """
    if isinstance(error, MrictlError) or is_permanent(error):
        text = str(error)
    elif isinstance(error, OSError):
        name = os.path.basename(str(error.filename)) if error.filename else ""
        text = f"{type(error).__name__}: {error.strerror or error}" + (f" ({name})" if name else "")
    else:
        text = _PATH.sub(r"\1", f"internal error ({type(error).__name__}: {error})")
    return " ".join(text.split())[:500]


def _work_dir_of(backend: Backend, job: Job) -> Path:
    """This attempt's own folder (the token tells apart a lost attempt still running)."""
    token = (job.lease_token or uuid.uuid4().hex)[:8]
    return backend.scratch_dir / f"{job.job_id}-{job.attempts}-{token}"


def _prepare_work_dir(work_dir: Path, job_id: str) -> None:
    """Create the folder; leftovers of earlier attempts of the job (a killed worker's) go."""
    for stale in work_dir.parent.glob(f"{job_id}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work_dir.mkdir(parents=True)


def _remove_outputs(backend: Backend, prefix: str | None) -> None:
    if prefix is None:
        return
    for key in backend.store.list(prefix):
        backend.store.delete(key)


def process_job(backend: Backend, job: Job, *, worker_id: str, lease_seconds: float) -> JobState:
    """Run one claimed job to its end and record the outcome; never raises for a job's failure.

    Returns the state the job was left in (RUNNING when another worker took it over).
    """
    heartbeat = Heartbeat(backend, job, lease_seconds)
    heartbeat.start()
    work_dir = _work_dir_of(backend, job)
    stage: Stage | None = STAGES.get(job.stage)
    prefix = None if stage is None else stage.outputs_prefix(job.job_id)
    started = time.perf_counter()
    context = None
    try:
        if stage is None:  # a record written by another version: no retry will help
            raise MrictlError(f"this worker has no stage {job.stage!r}", ExitCode.USAGE)
        context = StageContext(backend, job, stage, worker_id, work_dir, heartbeat)
        context.log(f"attempt {job.attempts}/{job.max_attempts} started on {worker_id}")
        _prepare_work_dir(work_dir, job.job_id)
        result = stage.function()(context)
        context.check()
        heartbeat.stop()
        result.setdefault("timings", {})["stage_s"] = round(time.perf_counter() - started, 4)
        backend.queue.complete(job, result)
        context.log(f"succeeded in {time.perf_counter() - started:.2f} s")
        return JobState.SUCCEEDED
    except (JobAborted, LeaseLostError) as error:
        cause = error.cause if isinstance(error, JobAborted) else error
        if isinstance(cause, JobCancelledError):
            _remove_outputs(backend, prefix)
            _log(
                backend, job, worker_id, "stopped: the job was cancelled; its outputs were removed"
            )
            return JobState.CANCELLED
        # Another worker owns the job now; it publishes the same keys, so leave them alone.
        log.warning("%s %s: lease lost, abandoning this attempt", job.stage, job.job_id)
        return JobState.RUNNING
    except Exception as error:
        heartbeat.stop()
        if isinstance(error, ObjectArchivedError):
            error = error.but_then(f"then `mrictl recon retry {job.job_id}`")
        reason = failure_reason(error)
        if os.environ.get("MRICTL_DEBUG"):
            log.exception("%s %s failed", job.stage, job.job_id)
        try:
            state = backend.queue.fail(job, reason, retryable=not is_permanent(error))
        except JobCancelledError:
            _remove_outputs(backend, prefix)
            return JobState.CANCELLED
        except LeaseLostError:
            return JobState.RUNNING
        _log(backend, job, worker_id, f"attempt {job.attempts} failed: {reason}")
        if state is JobState.FAILED:
            why = "no attempts left"
            if isinstance(error, ObjectArchivedError):
                why = "input archived: waiting for its restore, not retried"
            elif is_permanent(error):
                why = "input refused"
            _log(backend, job, worker_id, f"dead-lettered ({why})")
        return state
    except KeyboardInterrupt:
        # Stopped at once (a second Ctrl-C; SIGTERM to a pushed job, as Batch stops a
        # container): give the job back now rather than at lease expiry.
        heartbeat.stop()
        try:
            state = backend.queue.fail(job, "interrupted: the worker was stopped", retryable=True)
            _log(backend, job, worker_id, f"handed back: the worker was stopped ({state.value})")
        except JobCancelledError:
            _remove_outputs(backend, prefix)  # stopped because it was cancelled
        except (LeaseLostError, BackendError):
            pass  # another worker has it, or the lease runs out and the next claim takes it
        raise
    finally:
        heartbeat.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


def _log(backend: Backend, job: Job, worker_id: str, message: str) -> None:
    """A line in the job's log when no stage context exists (or after it ended)."""
    log.info("%s %s: %s", job.stage, job.job_id, message)
    with contextlib.suppress(BackendError):
        backend.queue.append_log(job.job_id, message, worker_id=worker_id)


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event,
    on_stop: Callable[[], None] | None = None,
    *,
    interrupt: bool = False,
) -> Iterator[None]:
    """SIGTERM or a first Ctrl-C set `stop` (the worker finishes the job in hand, then exits)
    and call `on_stop`; a second Ctrl-C interrupts at once (the job is given back to the queue).
    With `interrupt` (a pushed job: Batch kills the container 30 s after SIGTERM, long before a
    reconstruction ends), the first signal interrupts at once and later ones are ignored, so
    the job is handed back whole.

    Only the main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        if interrupt:
            if not stop.is_set():
                stop.set()
                log.warning("stopping now: the job in hand is handed back")
                raise KeyboardInterrupt
            return
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        if not stop.is_set():
            log.warning("stopping after the job in hand (Ctrl-C again to stop at once)")
        stop.set()
        if on_stop is not None:
            on_stop()

    previous = {
        number: signal.signal(number, request_stop) for number in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def load_stages(names: Sequence[str]) -> list[Stage]:
    """The registered stages, their code imported now (torch too, for recon and train) rather
    than after the first claim, under a lease."""
    stages = [stage_named(name) for name in names]
    for stage in stages:
        stage.function()
    return stages


def run_worker(
    backend: Backend,
    *,
    stages: Sequence[str] = STAGE_NAMES,
    once: bool = False,
    worker_id: str | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    stop_event: threading.Event | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    max_jobs: int | None = None,
) -> int:
    """Pull jobs of `stages` and run them until stopped; with `once`, until none is available.

    Returns the number of jobs this worker finished (succeeded, failed or cancelled).
    """
    worker_id = worker_id or default_worker_id()
    stop_event = stop_event or threading.Event()
    load_stages(stages)
    done = 0
    log.info("worker %s started (stages %s)", worker_id, ", ".join(stages))
    while not stop_event.is_set() and (max_jobs is None or done < max_jobs):
        try:
            job = _claim_any(backend, stages, worker_id, lease_seconds)
            if job is not None:
                process_job(backend, job, worker_id=worker_id, lease_seconds=lease_seconds)
                done += 1
                continue
        except BackendError as error:
            # A busy or unreachable backend is not the job's fault: keep the worker alive; an
            # unrecorded outcome is redelivered when the lease expires.
            log.warning("worker %s: backend error: %s", worker_id, error)
        if once:
            break
        stop_event.wait(poll_interval)
    log.info("worker %s stopped after %d job(s)", worker_id, done)
    return done


def run_job(
    backend: Backend,
    job_id: str,
    *,
    worker_id: str | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    take_over_within: float = 0.0,
    retry_delay: float = RETRY_DELAY_SECONDS,
) -> Job:
    """Push: claim exactly this job and run it until it is final, then return its record (a
    Batch container started with its job id). ConflictError if it is not claimable.

    A retryable failure is tried again here, after `retry_delay` seconds, while attempts remain:
    the container owns its job, and nothing else would deliver it. `take_over_within` is how
    long to wait for another worker's live lease to run out: a Batch retry after a host failure
    finds the dead host's lease still live. A lease renewed meanwhile has a live worker:
    ConflictError.
    """
    worker_id = worker_id or default_worker_id()
    job = backend.queue.get(job_id)
    if job.stage in STAGES:  # an unknown one is failed for good by process_job
        load_stages([job.stage])
    while True:
        claimed = _claim_pushed(backend, job_id, worker_id, lease_seconds, take_over_within)
        state = process_job(backend, claimed, worker_id=worker_id, lease_seconds=lease_seconds)
        if state is not JobState.QUEUED:
            return backend.queue.get(job_id)
        log.info("%s %s: trying again here", claimed.stage, job_id)
        time.sleep(retry_delay * claimed.attempts)


def run_shard(backend: Backend, job_id: str, index: int, *, worker_id: str | None = None) -> str:
    """An array child of a split recon job (`worker run --job ID --shard`): reconstruct its
    slice range and store it for the assembler; returns what happened, in a word: `stored`,
    `failed` (why is stored for the assembler, which fails the job with it) or the state of a
    job that is already final (nothing is done). Holds no lease: the assembler claims the job.

    A failure is the assembler's to report, so it is recorded rather than raised: the array job
    then succeeds and its assembler runs. NotFoundError for an unknown job, MrictlError (usage)
    for a job that is not split or an index outside its array.
    """
    from mrictl.pipeline.recon_stage import plan_of, reconstruct_shard, record_shard_failure

    worker_id = worker_id or default_worker_id()
    job = backend.queue.get(job_id)
    if job.state.is_final:
        log.info("%s %s: shard %d: the job is %s, nothing to do", job.stage, job_id, index,
                 job.state.value)  # fmt: skip
        return job.state.value
    plan = plan_of(job.payload) if job.stage == "recon" else None
    if plan is None:
        raise MrictlError(f"{job_id} is not split over an array job", ExitCode.USAGE)
    if not 0 <= index < plan.count:
        raise MrictlError(
            f"array index {index} is outside {job_id}'s {plan.count} shards", ExitCode.USAGE
        )
    work_dir = backend.scratch_dir / f"{job_id}-shard{index}-{uuid.uuid4().hex[:8]}"
    load_stages([job.stage])
    try:
        reconstruct_shard(
            backend, job, index, work_dir, lambda line: _log(backend, job, worker_id, line)
        )
        return "stored"
    except Exception as error:
        reason = failure_reason(error)
        if os.environ.get("MRICTL_DEBUG"):
            log.exception("%s %s shard %d failed", job.stage, job_id, index)
        record_shard_failure(
            backend, job_id, index, reason, permanent=is_permanent(error), work_dir=work_dir
        )
        _log(backend, job, worker_id, f"{plan.describe(index)} failed: {reason}")
        return "failed"
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _claim_pushed(
    backend: Backend, job_id: str, worker_id: str, lease_seconds: float, take_over_within: float
) -> Job:
    """`claim_job`, waiting up to `take_over_within` s for a lease that is not renewed to end."""
    deadline = time.monotonic() + take_over_within
    seen: float | None = None
    while True:
        try:
            return backend.queue.claim_job(job_id, worker_id, lease_seconds)
        except ConflictError as error:
            job = backend.queue.get(job_id)
            expires = job.lease_expires_at
            if job.state is not JobState.RUNNING or expires is None:
                raise
            if seen is not None and expires > seen:
                raise ConflictError(
                    f"{job_id} is running on {job.worker_id}: its lease was renewed"
                ) from None
            seen = expires
            wait = max(0.05, expires - time.time() + TAKE_OVER_MARGIN_SECONDS)
            if time.monotonic() + min(wait, LEASE_RECHECK_SECONDS) > deadline:
                raise error from None
            log.info("%s: waiting for the lease of %s to end", job_id, job.worker_id)
            time.sleep(min(wait, LEASE_RECHECK_SECONDS))


def _claim_any(
    backend: Backend, stages: Sequence[str], worker_id: str, lease_seconds: float
) -> Job | None:
    for stage in stages:
        job = backend.queue.claim(stage, worker_id, lease_seconds)
        if job is not None:
            return job
    return None


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
