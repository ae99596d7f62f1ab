"""The worker loop: claim a job, keep its lease alive, run its stage, complete or fail it.

The same loop runs in a local process (`python -m mrictl.worker --home DIR`), in a container or
under a scheduler. Delivery is at-least-once: a worker that dies loses its lease and the job is
claimed again after expiry, so stages are idempotent and publish their outputs only at the end,
each object atomically. Logs (per job and Python logging) name jobs and stages, never patients.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mrictl.backends.base import (
    RECONSTRUCTED,
    STAGES,
    Backend,
    BackendError,
    Job,
    JobCancelledError,
    JobState,
    LeaseLostError,
    ObjectInfo,
)
from mrictl.errors import ExitCode, MrictlError

log = logging.getLogger("mrictl.worker")

DEFAULT_LEASE_SECONDS = 600.0
DEFAULT_POLL_INTERVAL = 1.0
# Test hook: seconds a stage sleeps (in short, cancellable steps) after computing its outputs
# and before publishing them, so tests can kill or cancel a worker mid-job. Never set in use.
DEBUG_SLEEP_ENV = "MRICTL_DEBUG_STAGE_SLEEP_S"

# A directory path inside a message (it may name a patient): only its last part is kept.
_PATH = re.compile(r"(?<![^\s'\"(])(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"()]+)*[/\\]([^\s/\\'\"()]+)")

Stage = Callable[["StageContext"], dict[str, Any]]


class JobAborted(Exception):
    """The worker must stop this job now: it was cancelled or its lease was lost."""

    def __init__(self, cause: LeaseLostError) -> None:
        super().__init__(str(cause))
        self.cause = cause

    @property
    def cancelled(self) -> bool:
        return isinstance(self.cause, JobCancelledError)


class _Heartbeat(threading.Thread):
    """Extends the lease every third of its length; records why it stopped if the job is lost."""

    def __init__(self, backend: Backend, job: Job, lease_seconds: float) -> None:
        super().__init__(name=f"heartbeat-{job.job_id}", daemon=True)
        self.backend = backend
        self.job = job
        self.lease_seconds = lease_seconds
        self.finished = threading.Event()
        self.lost: LeaseLostError | None = None

    def run(self) -> None:
        interval = max(self.lease_seconds / 3.0, 0.05)
        while not self.finished.wait(interval):
            try:
                self.job = self.backend.queue.heartbeat(self.job, self.lease_seconds)
            except LeaseLostError as error:
                self.lost = error
                return
            except BackendError as error:  # a busy or flaky backend: try again next beat
                log.warning("%s: heartbeat failed: %s", self.job.job_id, error)

    def stop(self) -> None:
        self.finished.set()
        self.join()


class StageContext:
    """What a stage may use: the job, a fresh work folder, logging, cancellation, publishing."""

    def __init__(
        self, backend: Backend, job: Job, worker_id: str, work_dir: Path, heartbeat: _Heartbeat
    ) -> None:
        self.backend = backend
        self.job = job
        self.worker_id = worker_id
        self.work_dir = work_dir
        self._heartbeat = heartbeat
        self.published: list[str] = []

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload

    @property
    def output_prefix(self) -> str:
        """Where this job's own outputs go; removed again if the job is cancelled."""
        return f"{RECONSTRUCTED}/{self.job.job_id}/"

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
        self.check()

    def pause_for_tests(self) -> None:
        """Sleep for $MRICTL_DEBUG_STAGE_SLEEP_S (tests only), checking for cancellation."""
        seconds = float(os.environ.get(DEBUG_SLEEP_ENV) or 0)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check()
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))

    def publish(self, path: Path, key: str) -> ObjectInfo:
        """Put one finished file in the store (atomically), unless the job was lost meanwhile."""
        self.check()
        info = self.backend.store.put_file(key, path)
        self.published.append(key)
        return info

    def check_now(self) -> None:
        """`check`, asking the queue now instead of waiting for the next heartbeat (which
        comes every third of the lease: minutes), for steps that must not follow a cancel."""
        self.check()
        try:
            self._heartbeat.job = self.backend.queue.heartbeat(
                self._heartbeat.job, self._heartbeat.lease_seconds
            )
        except LeaseLostError as error:
            raise JobAborted(error) from None

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


def stage_functions() -> dict[str, Stage]:
    """Stage name -> function; imported late so a worker starts fast and imports what it runs."""
    from mrictl.pipeline.preprocess import run_preprocess
    from mrictl.pipeline.reconstruct import run_recon

    return {"preprocess": run_preprocess, "recon": run_recon}


def is_permanent(error: BaseException) -> bool:
    """Bad input or a bad request fails for good at once; anything else (I/O, backend, bugs)
    is retried."""
    from raki.errors import RakiError

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


def _remove_outputs(backend: Backend, prefix: str) -> None:
    for key in backend.store.list(prefix):
        backend.store.delete(key)


def process_job(
    backend: Backend,
    job: Job,
    *,
    worker_id: str,
    lease_seconds: float,
    stages: Mapping[str, Stage] | None = None,
) -> JobState:
    """Run one claimed job to its end and record the outcome; never raises for a job's failure."""
    stages = stages or stage_functions()
    heartbeat = _Heartbeat(backend, job, lease_seconds)
    heartbeat.start()
    work_dir = _work_dir_of(backend, job)
    context = StageContext(backend, job, worker_id, work_dir, heartbeat)
    started = time.perf_counter()
    context.log(f"attempt {job.attempts}/{job.max_attempts} started on {worker_id}")
    try:
        _prepare_work_dir(work_dir, job.job_id)
        stage = stages.get(job.stage)
        if stage is None:
            raise MrictlError(f"this worker has no stage {job.stage!r}")
        result = stage(context)
        context.check()
        heartbeat.stop()
        result.setdefault("timings", {})["stage_s"] = round(time.perf_counter() - started, 4)
        backend.queue.complete(job, result)
        context.log(f"succeeded in {time.perf_counter() - started:.2f} s")
        return JobState.SUCCEEDED
    except (JobAborted, LeaseLostError) as error:
        cause = error.cause if isinstance(error, JobAborted) else error
        if isinstance(cause, JobCancelledError):
            _remove_outputs(backend, context.output_prefix)
            context.log("stopped: the job was cancelled; its outputs were removed")
            return JobState.CANCELLED
        # Another worker owns the job now; it publishes the same keys, so leave them alone.
        log.warning("%s %s: lease lost, abandoning this attempt", job.stage, job.job_id)
        return JobState.RUNNING
    except Exception as error:
        heartbeat.stop()
        reason = failure_reason(error)
        if os.environ.get("MRICTL_DEBUG"):
            log.exception("%s %s failed", job.stage, job.job_id)
        try:
            state = backend.queue.fail(job, reason, retryable=not is_permanent(error))
        except JobCancelledError:
            _remove_outputs(backend, context.output_prefix)
            return JobState.CANCELLED
        except LeaseLostError:
            return JobState.RUNNING
        context.log(f"attempt {job.attempts} failed: {reason}")
        if state is JobState.FAILED:
            why = "input refused" if is_permanent(error) else "no attempts left"
            context.log(f"dead-lettered ({why})")
        return state
    except KeyboardInterrupt:
        # Stopped hard (a second Ctrl-C): give the job back now rather than at lease expiry.
        heartbeat.stop()
        with contextlib.suppress(LeaseLostError, BackendError):
            backend.queue.fail(job, "interrupted: the worker was stopped", retryable=True)
        raise
    finally:
        heartbeat.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event, on_stop: Callable[[], None] | None = None
) -> Iterator[None]:
    """SIGTERM or a first Ctrl-C set `stop` (the worker finishes the job in hand, then exits)
    and call `on_stop`; a second Ctrl-C interrupts at once (the job is given back to the queue).

    Only the main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
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


def run_worker(
    backend: Backend,
    *,
    stages: Sequence[str] = STAGES,
    once: bool = False,
    worker_id: str | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    stop_event: threading.Event | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    max_jobs: int | None = None,
) -> int:
    """Claim and run jobs of `stages` until stopped; with `once`, until none is available.

    Returns the number of jobs this worker finished (succeeded, failed or cancelled).
    """
    worker_id = worker_id or default_worker_id()
    stop_event = stop_event or threading.Event()
    functions = stage_functions()
    unknown = [stage for stage in stages if stage not in functions]
    if unknown:
        raise MrictlError(f"unknown stage {unknown[0]!r}; choose from {', '.join(functions)}")
    done = 0
    log.info("worker %s started (stages %s)", worker_id, ", ".join(stages))
    while not stop_event.is_set() and (max_jobs is None or done < max_jobs):
        try:
            job = _claim_any(backend, stages, worker_id, lease_seconds)
            if job is not None:
                process_job(
                    backend, job, worker_id=worker_id, lease_seconds=lease_seconds, stages=functions
                )
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


def worker_command(
    home: Path,
    *,
    stages: Sequence[str] = STAGES,
    once: bool = False,
    lease_seconds: float | None = None,
    poll_interval: float | None = None,
    worker_id: str | None = None,
    report: Path | None = None,
) -> list[str]:
    """The command line of one local worker process."""
    command = [sys.executable, "-m", "mrictl.worker", "--home", str(home)]
    command += ["--stages", ",".join(stages)]
    if once:
        command.append("--once")
    if lease_seconds is not None:
        command += ["--lease-seconds", str(lease_seconds)]
    if poll_interval is not None:
        command += ["--poll-interval", str(poll_interval)]
    if worker_id is not None:
        command += ["--worker-id", worker_id]
    if report is not None:
        command += ["--report", str(report)]
    return command


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask in a container), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_environment(n: int, base: Mapping[str, str], cores: int | None = None) -> dict[str, str]:
    """`base` with the cores split between `n` worker processes: cores // n threads each.

    torch and BLAS start one thread per core in every process; n processes on the same cores
    then run n x cores threads that preempt each other. On a 2-core machine two such processes
    trained a 4-slice phantom volume 4.6-6.6x slower than one process alone (241 s against
    36 s), two with one thread each 1.1-1.2x faster (docs/benchmarks.md, "Slices in parallel
    across cores"). A thread count the caller set is kept.
    """
    threads = str(max(1, (cores or available_cores()) // max(1, n)))
    environment = dict(base)
    for variable in THREAD_VARIABLES:
        environment.setdefault(variable, threads)
    return environment


def spawn_workers(
    n: int,
    home: Path,
    *,
    stages: Sequence[str] = STAGES,
    once: bool = False,
    lease_seconds: float | None = None,
    poll_interval: float | None = None,
    env: Mapping[str, str] | None = None,
    report_dir: Path | None = None,
) -> list[subprocess.Popen[bytes]]:
    """Start `n` worker processes on `home`; the caller waits for or terminates them.

    With `report_dir`, each process writes `w<index>.json` ({"jobs_done": N}) there at exit.
    The processes share the cores (`worker_environment`).
    """
    environment = worker_environment(n, {**os.environ, **(env or {})})
    return [
        subprocess.Popen(
            worker_command(
                home,
                stages=stages,
                once=once,
                lease_seconds=lease_seconds,
                poll_interval=poll_interval,
                worker_id=f"{socket.gethostname()}-w{index}-{uuid.uuid4().hex[:6]}",
                report=None if report_dir is None else Path(report_dir) / f"w{index}.json",
            ),
            env=environment,
        )
        for index in range(n)
    ]


def reported_jobs(report_dir: Path) -> int | None:
    """Jobs done by the workers that wrote reports into `report_dir` (None if none did)."""
    reports = sorted(Path(report_dir).glob("w*.json"))
    counts = [json.loads(path.read_text())["jobs_done"] for path in reports]
    return sum(counts) if counts else None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mrictl.worker`: one worker on a local home; SIGTERM stops after the job."""
    parser = argparse.ArgumentParser(prog="python -m mrictl.worker", description=__doc__)
    parser.add_argument("--home", type=Path, default=os.environ.get("MRICTL_HOME"))
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--once", action="store_true", help="stop when no job is available")
    parser.add_argument("--lease-seconds", type=float, default=DEFAULT_LEASE_SECONDS)
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL)
    parser.add_argument("--worker-id")
    parser.add_argument("--report", type=Path, help='write {"jobs_done": N} here at exit')
    arguments = parser.parse_args(argv)
    if arguments.home is None:
        parser.error("give --home or set MRICTL_HOME")
    logging.basicConfig(
        level=os.environ.get("MRICTL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # Import the heavy libraries (torch, format readers) before the first claim, not under a lease.
    import mrictl.reconstruction  # noqa: F401
    import raki.io  # noqa: F401
    from mrictl.backends.local import LocalBackend

    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            done = run_worker(
                LocalBackend(arguments.home),
                stages=[stage for stage in arguments.stages.split(",") if stage],
                once=arguments.once,
                worker_id=arguments.worker_id,
                lease_seconds=arguments.lease_seconds,
                stop_event=stop,
                poll_interval=arguments.poll_interval,
            )
        if arguments.report is not None:
            partial = arguments.report.with_name(f".{arguments.report.name}.partial")
            partial.write_text(json.dumps({"jobs_done": done}))
            os.replace(partial, arguments.report)
    except MrictlError as error:
        sys.stderr.write(f"error: {error.message}\n")
        return int(error.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
