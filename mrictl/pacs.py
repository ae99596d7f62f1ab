"""Delivering a DICOM series to a DICOM node (a PACS): C-ECHO first, then C-STORE per instance.

A PACS keeps what it accepted, so a delivery that is retried (a refused instance, a dropped
connection, a crash of this process) must send again only what was not accepted: the SOP
Instance UIDs a node accepted are kept, hashed, in a small delivery state file written
atomically after each acceptance, and every later try skips them. Only the network and that
file live here; which files form a job's series, and where its state file lies, the callers
decide (mrictl.pipeline.delivery). Messages name the node (host, port, AE titles), never an
instance's UIDs or a patient.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from mrictl.config import PacsSettings
from mrictl.errors import ExitCode, MrictlError
from mrictl.partial_files import partial_name, remove_stale_partials

if TYPE_CHECKING:
    from pynetdicom.association import Association

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3  # tries after the first, for what was refused or not sent
DEFAULT_BACKOFF_S = 2.0  # doubled after each try: 2, 4, 8 s
# AE titles: up to 16 characters of the default repertoire, no backslash, not only spaces.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
STATE_VERSION = 1

# What became of one instance (InstanceResult.status).
ACCEPTED = "accepted"  # the node answered success or a warning: it stored the instance
ALREADY_ACCEPTED = "already-accepted"  # accepted by an earlier delivery: not sent again
REFUSED = "refused"  # the node answered a failure status (or took no context for its class)
UNSENT = "unsent"  # no answer: no association, it broke before this instance, or a timeout
STATUSES = (ACCEPTED, ALREADY_ACCEPTED, REFUSED, UNSENT)


class PacsError(MrictlError):
    """The DICOM node could not be reached, refused us, or did not accept every instance."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.DELIVERY)


class PacsUnreachableError(PacsError):
    """C-ECHO failed: no connection, the association refused or aborted, or a bad status."""


def check_ae_title(title: str, what: str) -> str:
    """`title` without its padding, or a usage error that says the rule."""
    stripped = title.strip()
    if not stripped or not _AE_TITLE.fullmatch(stripped):
        raise MrictlError(
            f"{what} {title!r} is not an AE title (1-16 printable ASCII characters, no backslash)",
            ExitCode.USAGE,
        )
    return stripped


@dataclass(frozen=True)
class PacsNode:
    """A DICOM node to deliver to: where it listens, its AE title, and ours."""

    host: str
    port: int
    called_aet: str
    calling_aet: str = "MRICTL"

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise MrictlError(f"PACS host {self.host!r} is not a host name", ExitCode.USAGE)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise MrictlError(f"PACS port {self.port!r} is not a number", ExitCode.USAGE)
        if not 0 < self.port < 65536:
            raise MrictlError(f"PACS port {self.port} is not 1-65535", ExitCode.USAGE)
        object.__setattr__(self, "called_aet", check_ae_title(self.called_aet, "called AE"))
        object.__setattr__(self, "calling_aet", check_ae_title(self.calling_aet, "calling AE"))

    def __str__(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 address in brackets: [::1]:104) as (host, port)."""
    host, separator, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not separator or not host or not port.isdigit():
        raise MrictlError(f"{text!r} is not HOST:PORT (e.g. pacs.example:104)", ExitCode.USAGE)
    return host, int(port)


def node_from_settings(
    settings: PacsSettings,
    *,
    address: str | None = None,
    calling_aet: str | None = None,
    called_aet: str | None = None,
) -> PacsNode:
    """The node the flags name (`address` HOST:PORT, the AE titles), over the [pacs] settings."""
    host, port = parse_address(address) if address else (settings.host, settings.port)
    if not host or port is None:
        raise MrictlError(
            "no PACS configured: give --to-pacs HOST:PORT, or set host and port in the config's "
            "[pacs] section (MRICTL_PACS_HOST, MRICTL_PACS_PORT)",
            ExitCode.USAGE,
        )
    called = called_aet or settings.called_aet
    if not called:
        raise MrictlError(
            "no AE title for the PACS: give --called-aet AE, or set called_aet in the config's "
            "[pacs] section (MRICTL_PACS_CALLED_AET)",
            ExitCode.USAGE,
        )
    return PacsNode(host, port, called, calling_aet or settings.calling_aet)


@contextlib.contextmanager
def _quiet_pynetdicom() -> Iterator[None]:
    """pynetdicom logs each refusal and abort at ERROR level; we report them in one line."""
    logger = logging.getLogger("pynetdicom")
    previous = logger.level
    if not logging.getLogger("mrictl").isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _application_entity(node: PacsNode, timeout: float) -> Any:
    from pynetdicom import AE

    entity = AE(ae_title=node.calling_aet)
    entity.connection_timeout = timeout
    entity.acse_timeout = timeout
    entity.dimse_timeout = timeout
    entity.network_timeout = timeout
    return entity


def _connect_problem(node: PacsNode, timeout: float) -> str | None:
    """Why a TCP connection to the node fails (refused, no answer, unknown host), or None:
    pynetdicom only says that it could not connect."""
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout):
            return None
    except socket.gaierror:
        return "unknown host"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as error:
        return error.strerror or type(error).__name__


def _associate(entity: Any, node: PacsNode) -> tuple[Association, str | None]:
    """An association (established or not) and, when the node refused it, its reason."""
    from pynetdicom import evt

    reasons: list[str] = []

    def heard(event: Any) -> None:
        primitive = event.primitive
        if getattr(primitive, "result", None) in (0x01, 0x02):
            reasons.append(str(primitive.reason_str))

    association = entity.associate(
        node.host,
        node.port,
        ae_title=node.called_aet,
        evt_handlers=[(evt.EVT_ACSE_RECV, heard)],
    )
    return association, (reasons[0] if reasons else None)


def echo(node: PacsNode, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """C-ECHO: returns when the node answers success; PacsUnreachableError (one line, with a
    hint) when it cannot be reached, refuses the association or answers a failure."""
    from pynetdicom.sop_class import Verification

    problem = _connect_problem(node, timeout)
    if problem is not None:
        raise PacsUnreachableError(
            f"PACS {node.host}:{node.port} did not answer: {problem}; check the host and port "
            "(--to-pacs or the config's [pacs] section) and that the PACS is running"
        )
    entity = _application_entity(node, timeout)
    entity.add_requested_context(Verification)
    with _quiet_pynetdicom():
        association, refusal = _associate(entity, node)
        if not association.is_established:
            _refused(node, association, refusal)
        try:
            status = association.send_c_echo()
        finally:
            association.release()
    code = status.get("Status") if status else None
    if code != 0x0000:
        answer = "no answer" if code is None else f"status 0x{code:04X}"
        raise PacsUnreachableError(f"PACS {node} answered C-ECHO with {answer}")


def _refused(node: PacsNode, association: Any, refusal: str | None) -> NoReturn:
    """Raise why an association was not established, with what to check."""
    if association.is_rejected:
        raise PacsUnreachableError(
            f"PACS {node} refused the association ({refusal or 'no reason given'}): check the "
            "called AE title (--called-aet) and that the PACS knows ours (--aet "
            f"{node.calling_aet}) and this host"
        )
    if association.is_aborted:
        raise PacsUnreachableError(
            f"PACS {node} aborted the association: it accepts none of the proposed SOP classes "
            "or transfer syntaxes"
        )
    raise PacsUnreachableError(
        f"PACS {node.host}:{node.port} did not answer the association request"
    )


@dataclass(frozen=True)
class InstanceResult:
    """What became of one instance of the series (by file name; never its UIDs)."""

    file: str
    status: str  # ACCEPTED, ALREADY_ACCEPTED, REFUSED or UNSENT
    code: int | None  # the node's last C-STORE status, None if it never answered
    sent: int  # how many times it was sent in this delivery


@dataclass(frozen=True)
class DeliveryReport:
    """The outcome of `send_series`: one result per instance, in the order given."""

    node: PacsNode
    results: tuple[InstanceResult, ...]
    associations: int  # associations opened for C-STORE (1 + those of the retries)

    @property
    def counts(self) -> dict[str, int]:
        statuses = [result.status for result in self.results]
        return {name: statuses.count(name) for name in STATUSES}

    @property
    def complete(self) -> bool:
        """Whether the node holds every instance (accepted now or earlier)."""
        return all(result.status in (ACCEPTED, ALREADY_ACCEPTED) for result in self.results)

    @property
    def missing(self) -> int:
        return sum(result.status not in (ACCEPTED, ALREADY_ACCEPTED) for result in self.results)

    def to_document(self) -> dict[str, Any]:
        return {
            "node": f"{self.node.host}:{self.node.port}",
            "called_aet": self.node.called_aet,
            "calling_aet": self.node.calling_aet,
            "instances": len(self.results),
            **{name.replace("-", "_"): count for name, count in self.counts.items()},
            "complete": self.complete,
            "associations": self.associations,
            "results": [
                {
                    "file": result.file,
                    "status": result.status,
                    "code": None if result.code is None else f"0x{result.code:04X}",
                    "sent": result.sent,
                }
                for result in self.results
            ],
        }


def _digest(uid: str) -> str:
    """An instance's UID, hashed: the state file says what was accepted without naming it."""
    return hashlib.sha256(uid.encode("ascii")).hexdigest()[:32]


@dataclass
class DeliveryState:
    """Which instances each node accepted (hashed SOP Instance UIDs), kept in `path` when given.

    Every change is written to a hidden temporary file, synced and renamed over `path`, so a
    crash leaves the last whole state (mrictl.partial_files clears the leftovers).
    """

    path: Path | None
    nodes: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> DeliveryState:
        if path is None or not path.exists():
            return cls(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            nodes = {
                str(key): [str(digest) for digest in value["accepted"]]
                for key, value in document["nodes"].items()
            }
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise MrictlError(
                f"delivery state file {path.name} is damaged: remove it to deliver the whole "
                "series again (the PACS keeps one copy of each instance)",
                ExitCode.USAGE,
            ) from None
        return cls(path, nodes)

    @staticmethod
    def key_of(node: PacsNode) -> str:
        return f"{node.host}:{node.port}/{node.called_aet}"

    def accepted(self, node: PacsNode, uid: str) -> bool:
        return _digest(uid) in self.nodes.get(self.key_of(node), ())

    def record(self, node: PacsNode, uid: str) -> None:
        digests = self.nodes.setdefault(self.key_of(node), [])
        if _digest(uid) not in digests:
            digests.append(_digest(uid))
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.path)
        document = {
            "version": STATE_VERSION,
            "nodes": {key: {"accepted": digests} for key, digests in self.nodes.items()},
        }
        temporary = partial_name(self.path)
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Instance:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str


def _read_header(path: Path) -> _Instance:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        header = dcmread(path, stop_before_pixels=True)
        return _Instance(
            path,
            str(header.SOPClassUID),
            str(header.SOPInstanceUID),
            str(header.file_meta.TransferSyntaxUID),
        )
    except (InvalidDicomError, AttributeError, OSError, ValueError):
        raise MrictlError(f"{path.name}: not a DICOM instance file", ExitCode.BAD_INPUT) from None


def _requested_contexts(instances: Sequence[_Instance]) -> list[tuple[str, list[str]]]:
    """One presentation context per SOP class of the series (MR Image Storage for ours), each
    offering the files' transfer syntaxes and the two uncompressed ones every node takes."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    syntaxes: dict[str, list[str]] = {}
    for instance in instances:
        offered = syntaxes.setdefault(instance.sop_class, [])
        for syntax in (instance.transfer_syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if syntax not in offered:
                offered.append(str(syntax))
    return list(syntaxes.items())


def _is_stored(code: int | None) -> bool:
    from pynetdicom.status import code_to_category

    return code is not None and code_to_category(code) in ("Success", "Warning")


@dataclass
class _Try:
    """One association's work: what was sent, and the status of what the node answered
    (None: refused without sending, the node took no context for the instance's class)."""

    sent: set[str] = field(default_factory=set)
    answered: dict[str, int | None] = field(default_factory=dict)


def _store_once(
    node: PacsNode,
    pending: Sequence[_Instance],
    timeout: float,
    on_accepted: Callable[[str], None],
) -> _Try:
    """One association: C-STORE each pending instance in turn, until the association ends."""
    from pydicom import dcmread

    entity = _application_entity(node, timeout)
    for sop_class, syntaxes in _requested_contexts(pending):
        entity.add_requested_context(sop_class, syntaxes)
    done = _Try()
    with _quiet_pynetdicom():
        association, _ = _associate(entity, node)
        if not association.is_established:
            return done
        try:
            for number, instance in enumerate(pending, start=1):
                if not association.is_established:
                    break  # aborted or dropped: the rest waits for the next try
                dataset = dcmread(instance.path)
                try:
                    status = association.send_c_store(dataset, msg_id=number % 65536)
                except ValueError:  # no accepted presentation context for this SOP class
                    done.answered[instance.sop_instance] = None
                    continue
                done.sent.add(instance.sop_instance)
                code = status.get("Status") if status else None
                if code is None:
                    continue  # no answer (a timeout, an abort): it counts as unsent
                done.answered[instance.sop_instance] = int(code)
                if _is_stored(int(code)):
                    on_accepted(instance.sop_instance)
        finally:
            if association.is_established:
                association.release()
    return done


def send_series(
    node: PacsNode,
    files: Sequence[Path],
    *,
    state: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    stop: threading.Event | None = None,
) -> DeliveryReport:
    """Send the instance files to `node`: C-ECHO first (PacsUnreachableError if it fails), then
    one association that C-STOREs each instance with its SOP class negotiated, then up to
    `retries` more associations, `backoff_s` x 1, 2, 4 ... apart, for the instances refused or
    not sent. An instance accepted now or by an earlier delivery recorded in `state` (a JSON
    file, written after each acceptance) is never sent again. `stop` set ends the retries early
    (what is left is reported unsent). The report says what became of each instance; a refusal
    is not an exception: the caller decides (`mrictl fetch` exits 9 unless `complete`).
    """
    instances = [_read_header(Path(path)) for path in files]
    if not instances:
        raise MrictlError("no DICOM instances to send", ExitCode.NOT_FOUND)
    delivery = DeliveryState.load(state)
    echo(node, timeout)
    codes: dict[str, int | None] = {}
    sent: dict[str, int] = {}
    earlier = {i.sop_instance for i in instances if delivery.accepted(node, i.sop_instance)}
    pending = [instance for instance in instances if instance.sop_instance not in earlier]
    associations = 0
    for attempt in range(retries + 1):
        if not pending:
            break
        if attempt and _stopped_during(backoff_s * 2 ** (attempt - 1), stop):
            break
        associations += 1
        done = _store_once(node, pending, timeout, lambda uid: delivery.record(node, uid))
        for uid in done.sent:
            sent[uid] = sent.get(uid, 0) + 1
        for instance in pending:  # a try that got no answer forgets an earlier refusal
            codes.pop(instance.sop_instance, None)
        codes.update(done.answered)
        pending = [i for i in pending if not _is_stored(codes.get(i.sop_instance))]
    results = []
    for instance in instances:
        uid = instance.sop_instance
        code = codes.get(uid)
        if uid in earlier:
            status = ALREADY_ACCEPTED
        elif _is_stored(code):
            status = ACCEPTED
        elif uid in codes:
            status = REFUSED
        else:
            status = UNSENT
        results.append(InstanceResult(instance.path.name, status, code, sent.get(uid, 0)))
    return DeliveryReport(node, tuple(results), associations)


def _stopped_during(seconds: float, stop: threading.Event | None) -> bool:
    """Wait `seconds`; True when `stop` was set meanwhile (a watcher asked to stop)."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)
