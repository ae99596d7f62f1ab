"""`mrictl watch DIR`: pick up the scans a scanner exports into a folder, once each, and carry
them on: upload, reconstruction, delivery to a PACS and/or a folder.

The folder is polled (os.scandir, sizes and modification times), never watched through
inotify, which network shares do not support. Each top-level entry is one scan: a file, or a
folder of files (its top-level, non-hidden files, as `mrictl upload` would take them). Names
that are hidden (`.x`), temporary (`*.partial`, `*.tmp`, `*.part`, `*~`) or markers (`*.done`)
are not scans; a folder holding a temporary name is still being written. An entry is complete
when its marker `NAME.done` appears beside it, or when it has looked the same in two polls and
for `quiet_seconds` (by our clock, or by its newest modification time).

A small state file (JSON, written to a hidden temporary name and renamed) says, per entry,
what was seen (a hash of its names, sizes and times), the scan id it uploaded as, its job and
what was delivered, so that a restart neither repeats nor misses a scan. An upload is recorded
before it starts: a restart mid-upload uploads again, which the content-derived scan id and
the upload's idempotency key make a no-op (one package, one job). Entries are named in the
state file and the events by a hash of their name ("entry-..."), then by their scan id: an
export's file names may name a patient.

A job awaited for long says why: `job-waiting` events (after a minute, then on each change of
its state or waiting reason and every few minutes), and with a job timeout `job-timed-out`, which
leaves the scan awaited in the state file (a restart waits again; nothing is uploaded twice).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mrictl.backends.base import Backend, Job, JobState, NotFoundError, WorkerProcesses
from mrictl.errors import ExitCode, MrictlError
from mrictl.pacs import DEFAULT_BACKOFF_S, DEFAULT_RETRIES, PacsError, PacsNode
from mrictl.partial_files import partial_name, remove_stale_partials
from raki.errors import MissingFileError, RakiError

MARKER_SUFFIX = ".done"
TEMPORARY_SUFFIXES = (".partial", ".tmp", ".part", "~")
STATE_VERSION = 1

# What a record's `state` says (the steps of one scan, in order).
UPLOADING = "uploading"  # recorded before the upload starts
WAITING = "waiting"  # uploaded; its job is queued or running
DELIVERING = "delivering"  # the job succeeded; fetching and/or delivering its series
DONE = "done"  # everything asked for was done
FAILED = "failed"  # the scan cannot be read, or its job failed: not tried again until it changes
IN_FLIGHT = (WAITING, DELIVERING)

# How often the backend is asked why a job waits (on aws: AWS Batch's DescribeJobs and the
# queue's compute environments, which throttle), at most.
REASON_CHECK_SECONDS = 30.0

Event = dict[str, Any]


@dataclass(frozen=True)
class WatchOptions:
    """What to do with each complete scan, and how often to look."""

    quiet_seconds: float = 30.0
    interval: float = 5.0
    recon: bool = False  # queue its reconstruction (the upload's job) and follow it
    method: str | None = None
    recon_options: Mapping[str, Any] = field(default_factory=dict)
    pacs: PacsNode | None = None  # deliver the series here when the job succeeds
    pacs_retries: int = DEFAULT_RETRIES  # mrictl.pacs.send_series's, from the config
    pacs_backoff_s: float = DEFAULT_BACKOFF_S
    fetch_to: Path | None = None  # fetch the outputs into fetch_to/<scan_id>/
    workers: int = 0  # worker processes to start on this machine when a job is awaited
    worker_arguments: Sequence[str] = ()  # `mrictl worker run` flags for them
    once: bool = False  # one pass: carry every complete scan through, then return
    retry_seconds: float = 60.0  # before a delivery or upload that failed for now is retried
    job_timeout: float | None = None  # seconds this run waits for a scan's job; None: no limit
    # A job awaited this long is reported (job-waiting), then on change and at least this often.
    waiting_first_report_seconds: float = 60.0
    waiting_report_seconds: float = 300.0

    def __post_init__(self) -> None:
        if (self.pacs is not None or self.fetch_to is not None) and not self.recon:
            raise MrictlError(
                "--pacs, --to-pacs and --fetch-to deliver a reconstruction: add --recon",
                ExitCode.USAGE,
            )
        # --method and --device may come from MRICTL_METHOD/MRICTL_DEVICE: only the flags
        # that no variable sets are refused without --recon.
        given = [name for name, value in self.recon_options.items() if value is not None]
        if not self.recon and set(given) - {"device"}:
            raise MrictlError("--accel, --acs and --iterations go with --recon", ExitCode.USAGE)
        if self.job_timeout is not None and not self.recon:
            raise MrictlError("--job-timeout goes with --recon", ExitCode.USAGE)


@dataclass(frozen=True)
class EntryView:
    """One top-level entry of the folder as this poll saw it."""

    name: str
    files: tuple[Path, ...]
    signature: str  # a hash of the files' names, sizes and modification times
    newest_mtime: float
    writing: bool  # a folder holding a temporary name
    marked: bool  # NAME.done is there

    @property
    def key(self) -> str:
        return entry_key(self.name)


def entry_key(name: str) -> str:
    """How the state file and the events name an entry: its name hashed (it may name a patient)."""
    return "entry-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith((*TEMPORARY_SUFFIXES, MARKER_SUFFIX))


def _signature(files: Sequence[tuple[str, int, int]]) -> str:
    return hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest()[:32]


def _view_of(entry: os.DirEntry, names: set[str]) -> EntryView | None:
    """The entry as a scan, or None when it is no scan (yet): an empty folder, a vanished file."""
    try:
        if entry.is_file():
            info = entry.stat()
            listed = [(Path(entry.path), "", info)]
            writing = False
        elif entry.is_dir():
            listed, writing = [], False
            with os.scandir(entry.path) as inner:
                for item in inner:
                    if item.name.startswith("."):
                        continue
                    if item.name.endswith(TEMPORARY_SUFFIXES):
                        writing = True
                    elif item.is_file():
                        listed.append((Path(item.path), item.name, item.stat()))
        else:
            return None
    except FileNotFoundError:
        return None
    if not listed:
        return None
    listed.sort(key=lambda item: item[1])
    stamps = [(name, info.st_size, info.st_mtime_ns) for _, name, info in listed]
    return EntryView(
        entry.name,
        tuple(path for path, _, _ in listed),
        _signature(stamps),
        max(info.st_mtime for _, _, info in listed),
        writing,
        entry.name + MARKER_SUFFIX in names,
    )


def list_entries(folder: Path) -> dict[str, EntryView]:
    """The scans the folder holds now, by entry key (see the module docstring for the rules)."""
    with os.scandir(folder) as listing:
        entries = list(listing)
    names = {entry.name for entry in entries}
    views = {}
    for entry in entries:
        if _ignored(entry.name):
            continue
        view = _view_of(entry, names)
        if view is not None:
            views[view.key] = view
    return views


@dataclass
class ScanRecord:
    """What the watcher did with one entry (JSON in the state file)."""

    signature: str
    state: str
    scan_id: str | None = None
    job_id: str | None = None
    fetched: bool = False
    delivered: bool = False
    error: str | None = None
    updated_at: float = 0.0
    retry_at: float = 0.0  # POSIX seconds; a failure for now waits until then


@dataclass
class JobWait:
    """This run's wait for one scan's job: since when, and what it last reported of it."""

    since: float  # time.monotonic() when this run began waiting
    reason: str | None = None  # the job record's waiting_reason, as last asked
    asked_at: float | None = None
    reported: tuple[str, str, str | None] | None = None  # (final job id, its state, reason)
    reported_at: float | None = None
    timed_out: bool = False


class WatchState:
    """The state file: one ScanRecord per entry key, written whole and atomically."""

    def __init__(self, path: Path, records: dict[str, ScanRecord] | None = None) -> None:
        self.path = path
        self.records = records or {}

    @classmethod
    def load(cls, path: Path) -> WatchState:
        if not path.exists():
            return cls(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            records = {str(key): ScanRecord(**value) for key, value in document["scans"].items()}
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise MrictlError(
                f"watch state file {path.name} is damaged: remove it (every scan in the folder is "
                "then checked again; uploads and deliveries already done are not repeated)",
                ExitCode.USAGE,
            ) from None
        return cls(path, records)

    def put(self, key: str, record: ScanRecord) -> ScanRecord:
        self.records[key] = replace(record, updated_at=time.time())
        self.save()
        return self.records[key]

    def drop(self, key: str) -> None:
        if self.records.pop(key, None) is not None:
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.path)
        document = {
            "version": STATE_VERSION,
            "scans": {key: asdict(record) for key, record in self.records.items()},
        }
        temporary = partial_name(self.path)
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)


def default_state_path(home: Path, folder: Path) -> Path:
    """`<home>/watch/<hash of the folder's path>.json`: one state per watched folder."""
    digest = hashlib.sha256(str(folder.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return Path(home) / "watch" / f"{digest[:16]}.json"


@contextlib.contextmanager
def state_lock(path: Path) -> Iterator[None]:
    """Hold `<state>.lock` for the watcher's life: two watchers on one state would race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MrictlError(
                f"another mrictl watch uses the state file {path.name}", ExitCode.CONFLICT
            ) from None
        yield


def _scrubbed(message: str, view: EntryView | None) -> str:
    """An error message without the entry's name or its files' names."""
    if view is not None:
        names = sorted({view.name, *(path.name for path in view.files)}, key=len, reverse=True)
        for name in names:
            message = message.replace(name, "<file>")
    return message


def _exit_code_of(error: BaseException) -> ExitCode:
    if isinstance(error, MrictlError):
        return error.exit_code
    if isinstance(error, MissingFileError | FileNotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(error, RakiError):
        return ExitCode.BAD_INPUT
    return ExitCode.BACKEND  # an OSError of the store or the network: try again later


# Failures that another try cannot mend, until the scan's files change.
PERMANENT = (ExitCode.USAGE, ExitCode.BAD_INPUT, ExitCode.CONFLICT)


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Watcher:
    """Polls one folder and carries its scans through; `run` until `stop` is set (or one pass)."""

    def __init__(
        self,
        backend: Backend,
        folder: Path,
        options: WatchOptions,
        state: WatchState,
        *,
        home: Path,
        on_event: Callable[[Event], None],
        stop: threading.Event | None = None,
    ) -> None:
        self.backend = backend
        self.folder = Path(folder)
        self.options = options
        self.state = state
        self.home = Path(home)
        self.on_event = on_event
        self.stop = stop or threading.Event()
        self.workers: WorkerProcesses | None = None
        self.problem: ExitCode | None = None  # the first failure met (what --once exits with)
        self._seen: dict[str, tuple[str, float, int]] = {}  # key -> signature, since, polls
        self._views: dict[str, EntryView] = {}
        self._given_up: set[str] = set()  # --once: in-flight scans left for the next run
        self._waits: dict[str, JobWait] = {}  # key -> this run's wait for its job

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> ExitCode:
        """Poll until stopped (0: a signal stop is a clean stop); with `once`, one pass that
        carries every complete scan through, then the first problem met (0 if none)."""
        options = self.options
        self.emit("started", None, quiet_seconds=options.quiet_seconds, once=options.once)
        try:
            if options.once:
                self.observe()
                self.stop.wait(min(options.interval, options.quiet_seconds))
            while not self.stop.is_set():
                self.poll()
                if options.once and not self._awaiting():
                    break
                self.stop.wait(options.interval)
        finally:
            self.stop_workers()
            self.emit("stopped", None)
        return (self.problem or ExitCode.OK) if options.once else ExitCode.OK

    def poll(self) -> None:
        """One look at the folder: upload what became complete, then advance what is in flight."""
        if not self.observe():
            return
        for key, view in self._views.items():
            if self.stop.is_set():
                return
            record = self.state.records.get(key)
            if record is not None and record.signature == view.signature:
                if record.state == UPLOADING:  # a restart mid-upload: the upload is redone
                    self.upload(view)
                continue
            if self.complete(view):
                self.upload(view)
        for key in list(self.state.records):
            if self.stop.is_set():
                return
            self.advance(key)

    def observe(self) -> bool:
        """List the folder and note since when each entry has looked the same."""
        try:
            views = list_entries(self.folder)
        except OSError as error:  # a share that went away: say so, look again later
            self.emit("folder-unavailable", None, error=error.strerror or type(error).__name__)
            self._note_problem(ExitCode.NOT_FOUND)
            return False
        now = time.monotonic()
        for key, view in views.items():
            seen = self._seen.get(key)
            if seen is None or seen[0] != view.signature:
                self._seen[key] = (view.signature, now, 1)
            else:
                self._seen[key] = (seen[0], seen[1], seen[2] + 1)
        self._seen = {key: value for key, value in self._seen.items() if key in views}
        self._views = views
        return True

    def complete(self, view: EntryView) -> bool:
        """Marked done, or unchanged in two polls and for the quiet period (by our clock or
        by its newest modification time, which makes a restart pick up old scans at once)."""
        if view.marked:
            return True
        _, since, polls = self._seen[view.key]
        if view.writing or polls < 2:
            return False
        quiet = self.options.quiet_seconds
        return time.monotonic() - since >= quiet or time.time() - view.newest_mtime >= quiet

    def _awaiting(self) -> bool:
        return any(
            record.state in IN_FLIGHT and key not in self._given_up
            for key, record in self.state.records.items()
        )

    # -- one scan's steps ------------------------------------------------------------------

    def upload(self, view: EntryView) -> None:
        """Upload the entry's files (and, with recon, queue the upload's one job)."""
        from mrictl.pipeline.upload import store_scan, upload

        key = view.key
        previous = self.state.records.get(key)
        if previous is not None and previous.retry_at > time.time():
            return
        self.state.put(key, ScanRecord(view.signature, UPLOADING))
        options = self.options
        try:
            if options.recon:
                result = upload(
                    self.backend,
                    list(view.files),
                    method=options.method,
                    options=dict(options.recon_options),
                )
                scan_id, job_id, already = result.scan_id, result.job_id, result.already_uploaded
            else:
                scan_id, already = store_scan(self.backend, list(view.files))
                job_id = None
        except (MrictlError, RakiError, OSError) as error:  # a bug is not caught: it ends us
            self._upload_failed(view, error)
            return
        record = ScanRecord(view.signature, WAITING if options.recon else DONE, scan_id, job_id)
        record = self.state.put(key, record)
        self.emit("uploaded", key, already_uploaded=already)
        if record.state == DONE:
            self.emit("done", key)

    def _upload_failed(self, view: EntryView, error: Exception) -> None:
        code = _exit_code_of(error)
        message = _scrubbed(" ".join(str(error).split()) or type(error).__name__, view)
        permanent = code in PERMANENT
        record = ScanRecord(view.signature, FAILED if permanent else UPLOADING, error=message)
        if not permanent:
            record.retry_at = time.time() + self.options.retry_seconds
        self.state.put(view.key, record)
        self._note_problem(code)
        self.emit(
            "upload-failed", view.key, error=message, exit_code=int(code), retry=not permanent
        )

    def advance(self, key: str) -> None:
        """Move an uploaded scan on: its job's end, then fetch and delivery; forget finished
        entries that left the folder."""
        record = self.state.records[key]
        if key not in self._views and record.state in (DONE, FAILED, UPLOADING):
            self.state.drop(key)  # gone from the folder: nothing more to do for it
            return
        if record.state == WAITING and key in self._given_up:
            return  # --once timed out waiting for it: the next run resumes it
        if record.state == WAITING:
            self._follow_job(key, record)
        elif record.state == DELIVERING and record.retry_at <= time.time():
            self._deliver(key, record)

    def _follow_job(self, key: str, record: ScanRecord) -> None:
        from mrictl.pipeline import jobs

        try:
            job = jobs.final_job(self.backend, record.job_id)
        except NotFoundError:
            self._finish(key, record, FAILED, "its job is no longer on the backend")
            self._note_problem(ExitCode.JOB_FAILED)
            return
        if not job.state.is_final:
            self.start_workers()
            self._still_waiting(key, job)
            return
        self._waits.pop(key, None)
        if job.state is not JobState.SUCCEEDED:
            self._note_problem(ExitCode.JOB_FAILED)
            self._finish(key, record, FAILED, f"job {job.job_id} {job.state.value}")
            return
        self.emit("job-succeeded", key, final_job_id=job.job_id)
        if self.options.pacs is None and self.options.fetch_to is None:
            self._finish(key, record, DONE)
            return
        record = self.state.put(key, replace(record, state=DELIVERING))
        self._deliver(key, record)

    def _still_waiting(self, key: str, job: Job) -> None:
        """Say why a job waits, once it has waited a while; give up on it at the job timeout
        (the scan stays `waiting`: a later run or a later poll carries it on)."""
        options = self.options
        now = time.monotonic()
        wait = self._waits.setdefault(key, JobWait(since=now))
        waited = now - wait.since
        timing_out = (
            options.job_timeout is not None and waited >= options.job_timeout and not wait.timed_out
        )
        if waited < options.waiting_first_report_seconds and not timing_out:
            return
        check_every = min(REASON_CHECK_SECONDS, options.waiting_report_seconds)
        if timing_out or wait.asked_at is None or now - wait.asked_at >= check_every:
            wait.reason, wait.asked_at = self._waiting_reason(job), now
        said = (job.job_id, job.state.value, wait.reason)
        details = {
            "final_job_id": job.job_id,
            "job_state": job.state.value,
            "waited_s": round(waited, 1),
            "waiting_reason": wait.reason,
        }
        if timing_out:
            wait.timed_out, wait.reported, wait.reported_at = True, said, now
            self._note_problem(ExitCode.TIMEOUT)
            if options.once:
                self._given_up.add(key)
            self.emit("job-timed-out", key, job_timeout_s=options.job_timeout, **details)
            return
        stale = wait.reported_at is None or now - wait.reported_at >= options.waiting_report_seconds
        if said != wait.reported or stale:
            wait.reported, wait.reported_at = said, now
            self.emit("job-waiting", key, **details)

    def _waiting_reason(self, job: Job) -> str | None:
        """The job record's `waiting_reason` (`mrictl recon status JOB`): None where the backend
        has nothing to say (local), AWS Batch's word on aws."""
        from mrictl.pipeline import jobs

        try:
            return jobs.status(self.backend, job.job_id)[0]["waiting_reason"]
        except (MrictlError, OSError) as error:  # asked again at the next check
            return f"the backend could not be asked why: {' '.join(str(error).split())}"

    def _deliver(self, key: str, record: ScanRecord) -> None:
        from mrictl.pipeline import jobs
        from mrictl.pipeline.delivery import deliver_job

        options = self.options
        try:
            if options.fetch_to is not None and not record.fetched:
                files = jobs.fetch(self.backend, record.job_id, options.fetch_to / record.scan_id)
                record = self.state.put(key, replace(record, fetched=True))
                self.emit("fetched", key, files=len(files))
            if options.pacs is not None and not record.delivered:
                report = deliver_job(
                    self.backend,
                    record.job_id,
                    options.pacs,
                    home=self.home,
                    stop=self.stop,
                    retries=options.pacs_retries,
                    backoff_s=options.pacs_backoff_s,
                )
                counts = {name.replace("-", "_"): n for name, n in report.counts.items()}
                if not report.complete:
                    raise PacsError(
                        f"PACS {options.pacs} did not accept {report.missing} instance(s)"
                    )
                record = self.state.put(key, replace(record, delivered=True))
                self.emit("delivered", key, **counts)
        except (MrictlError, OSError) as error:  # recorded and reported; the watch goes on
            code = _exit_code_of(error)
            self._note_problem(code)
            message = " ".join(str(error).split())
            if code in PERMANENT or code is ExitCode.JOB_FAILED:
                self._finish(key, record, FAILED, message)
                return
            record = self.state.put(
                key, replace(record, error=message, retry_at=time.time() + options.retry_seconds)
            )
            if options.once:
                self._given_up.add(key)
            self.emit("delivery-failed", key, error=message, exit_code=int(code), retry=True)
            return
        self._finish(key, record, DONE)

    def _finish(self, key: str, record: ScanRecord, state: str, error: str | None = None) -> None:
        self.state.put(key, replace(record, state=state, error=error, retry_at=0.0))
        self.emit("done" if state == DONE else "failed", key, **({"error": error} if error else {}))

    def _note_problem(self, code: ExitCode) -> None:
        if self.problem is None and code is not ExitCode.OK:
            self.problem = code

    # -- workers and events ----------------------------------------------------------------

    def start_workers(self) -> None:
        """Start this machine's worker processes the first time a job is awaited."""
        if self.workers is None and self.options.workers > 0:
            arguments = list(self.options.worker_arguments)
            self.workers = self.backend.start_worker_processes(self.options.workers, arguments)

    def stop_workers(self) -> None:
        """Ask the workers to finish the job in hand and exit, and wait for them."""
        if self.workers is not None:
            self.workers.stop()
            self.workers.wait()
            self.workers = None

    def emit(self, event: str, key: str | None, **details: Any) -> None:
        record = self.state.records.get(key) if key is not None else None
        document: Event = {"at": _iso(time.time()), "event": event}
        if key is not None:
            document["entry"] = key
        if record is not None:
            document.update(scan_id=record.scan_id, job_id=record.job_id, state=record.state)
        document.update(details)
        self.on_event(document)


def watch_folder(
    backend: Backend,
    folder: Path,
    options: WatchOptions,
    *,
    state_path: Path,
    home: Path,
    on_event: Callable[[Event], None],
    stop: threading.Event | None = None,
) -> ExitCode:
    """`mrictl watch`: hold the state file's lock, load the state, run the watcher."""
    with state_lock(state_path):
        state = WatchState.load(state_path)
        watcher = Watcher(backend, folder, options, state, home=home, on_event=on_event, stop=stop)
        return watcher.run()
