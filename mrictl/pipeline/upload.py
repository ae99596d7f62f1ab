"""Sending a scan: package it and put it in the store (and queue its preprocess job), or drop
the package into a mounted share folder (an AWS Storage Gateway file share).

The package is staged in the backend's scratch space under its scan id and removed once
stored: an upload that was cut off leaves it there, so uploading the same scan again sends the
same file (its bytes and modification time), and a store that resumes interrupted uploads (the
aws store, for large packages) sends only what it does not hold yet.

Uploading is idempotent: the package is named by the content-derived scan id, the preprocess
job by an idempotency key of the upload (`mrictl.keys.idempotency_of_upload`), so the CLI and
an S3 event of the same upload make one job, and uploading again replaces only a stored
package whose bytes no longer match their checksum. A scan that could only fail in the cloud
(all-zero k-space, a Study Instance UID a PACS refuses) is refused before anything is sent.
"""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrictl import keys
from mrictl.backends.base import Backend, JobState, ObjectArchivedError
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline.package import (
    MANIFEST_NAME,
    ExtractLimits,
    Manifest,
    describe,
    file_sha256,
    read_options_of,
    scan_id_of,
    write_package,
)
from mrictl.pipeline.requests import enqueue_preprocess, recon_request

if TYPE_CHECKING:
    from raki.scan import Scan


@dataclass(frozen=True)
class Package:
    """A package on disk; `already_present` when an identical one was there and was kept."""

    scan_id: str
    path: Path
    manifest: Manifest | None
    already_present: bool = False


@dataclass(frozen=True)
class UploadResult:
    """Where a scan went; `job_id` is the queued preprocess job (None for a no-op or a share)."""

    scan_id: str
    already_uploaded: bool
    location: str  # a store key, or the file name written in the share folder
    job_id: str | None = None


PhaseCallback = Callable[[str], None]
STAGING_FOLDER = "outgoing"  # in the scratch space: packages being sent


@dataclass(frozen=True)
class SendListener:
    """Hears the package's transfer, from stores that report it (`reports_progress`)."""

    started: Callable[[int, int], None]  # (package bytes, bytes an interrupted upload left)
    sent: Callable[[int], None]  # bytes sent since the last call (the resumed ones first)


def _quiet(_: str) -> None:
    """The default phase listener: says nothing."""


def _checked_inputs(paths: Sequence[Path]) -> list[Path]:
    """The paths, each a readable regular file, by the one rule every reader follows
    (`raki.io.check_input_file`), with the exit codes the CLI gives raki's errors."""
    from raki.errors import FileFormatError, MissingFileError, NotAFileError
    from raki.io.paths import check_input_file

    if not paths:
        raise MrictlError("no scan files given", ExitCode.USAGE)
    checked = []
    for path in paths:
        try:
            checked.append(check_input_file(path))
        except MissingFileError as error:
            raise MrictlError(str(error), ExitCode.NOT_FOUND) from None
        except NotAFileError as error:
            raise MrictlError(str(error), ExitCode.USAGE) from None
        except FileFormatError as error:
            raise MrictlError(str(error), ExitCode.BAD_INPUT) from None
    return checked


def unsendable_reason(scan: Scan) -> str | None:
    """Why a scan could only fail later in the cloud, or None: checked at upload, before
    anything is sent, and again by preprocess for packages that arrive another way.

    All-zero k-space would reconstruct as a blank image. An invalid Study Instance UID would
    fail the last stage (a PACS refuses the series): it is refused rather than replaced,
    because a made-up study would file the series apart from the patient's own study. The
    reason never quotes the UID (identifiers stay out of errors and logs).
    """
    from raki.errors import InvalidScanError
    from raki.io.dicom import is_valid_uid
    from raki.scan import check_measured

    try:
        check_measured(scan)
    except InvalidScanError as error:
        return str(error)
    study_uid = scan.identifiers.study_instance_uid
    if study_uid is not None and not is_valid_uid(study_uid):
        return (
            "the Study Instance UID in the scan's header is not a valid DICOM UID "
            "(a PACS would refuse the series): correct or remove it, then upload again"
        )
    return None


def _check_sendable(scan: Scan, name: str) -> None:
    reason = unsendable_reason(scan)
    if reason is not None:
        raise MrictlError(f"{name}: {reason}", ExitCode.BAD_INPUT)


def _manifest_of(
    inputs: Sequence[Path], hashes: Sequence[tuple[int, str]], read_options: dict[str, str]
) -> Manifest:
    """Read the scan (the first file) for its summary and every file's format; refuse a scan
    that cannot be reconstructed and filed (`_check_sendable`)."""
    from raki.io import detect_format, read_scan

    formats = [detect_format(path) for path in inputs]
    scan = read_scan(inputs[0], **read_options)
    _check_sendable(scan, inputs[0].name)
    return describe(inputs, hashes, formats, scan.summary(), read_options)


def package_scan(
    paths: Sequence[Path],
    *,
    dest_dir: Path,
    axis_order: str | None = None,
    variable: str | None = None,
    phase: PhaseCallback | None = None,
) -> Package:
    """Package a scan's files into `dest_dir/<scan_id>.tar`; an identical package is kept as is.

    `phase` hears "checksums", "packaging" as each long step starts (for a progress display).
    """
    phase = phase or _quiet
    inputs = _checked_inputs(paths)
    if not Path(dest_dir).is_dir():
        raise MrictlError(f"{Path(dest_dir).name}: no such folder", ExitCode.NOT_FOUND)
    phase("checksums")
    hashes = [file_sha256(path) for path in inputs]
    scan_id = scan_id_of(sha256 for _, sha256 in hashes)
    final = Path(dest_dir) / f"{scan_id}.tar"
    if final.is_file():
        return Package(scan_id, final, None, already_present=True)
    phase("packaging")
    manifest = _manifest_of(inputs, hashes, read_options_of(axis_order, variable))
    return Package(scan_id, write_package(manifest, inputs, Path(dest_dir)), manifest)


def store_scan(
    backend: Backend,
    paths: Sequence[Path],
    *,
    axis_order: str | None = None,
    variable: str | None = None,
    phase: PhaseCallback | None = None,
    listener: SendListener | None = None,
) -> tuple[str, bool]:
    """Put a scan's package in the store (no job): its scan id and whether it was already there.

    A stored package whose bytes fail their checksum is not "already there": it is replaced.
    `phase` hears "checksums", "packaging", "sending" as each long step starts; `listener`
    the transfer itself.
    """
    phase = phase or _quiet
    inputs = _checked_inputs(paths)
    phase("checksums")
    hashes = [file_sha256(path) for path in inputs]
    scan_id = scan_id_of(sha256 for _, sha256 in hashes)
    key = keys.upload(scan_id)
    if backend.store.exists(key) and _stored_whole(backend, key):
        return scan_id, True
    phase("packaging")
    manifest = _manifest_of(inputs, hashes, read_options_of(axis_order, variable))
    tar_path = _staged_package(manifest, inputs, backend.scratch_dir / STAGING_FOLDER)
    phase("sending")
    listening: dict[str, Any] = {}
    if listener is not None and getattr(backend.store, "reports_progress", False):
        listening = {"progress": listener.sent, "started": listener.started}
    metadata = {"scan-id": scan_id, "format": "package"}
    backend.store.put_file(key, tar_path, metadata=metadata, **listening)
    tar_path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # another upload may still be staging there
        tar_path.parent.rmdir()
    return scan_id, False


def _staged_package(manifest: Manifest, inputs: Sequence[Path], staging: Path) -> Path:
    """`staging/<scan_id>.tar`: the one an interrupted upload left when it holds this manifest
    (the same scan read the same way: the same bytes, written whole by `write_package`, whose
    unchanged modification time lets the store resume), else written anew."""
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / f"{manifest.scan_id}.tar"
    if staged.is_file() and _manifest_bytes(staged) == manifest.to_json():
        return staged
    return write_package(manifest, inputs, staging)


def _manifest_bytes(tar_path: Path) -> bytes | None:
    """The manifest a staged package starts with; None if it cannot be read."""
    try:
        with tarfile.open(tar_path, "r:") as archive:
            first = archive.next()
            if first is None or first.name != MANIFEST_NAME or not first.isfile():
                return None
            if first.size > ExtractLimits().max_manifest_bytes:
                return None
            stream = archive.extractfile(first)
            return None if stream is None else stream.read()
    except (OSError, tarfile.TarError):
        return None


def _stored_whole(backend: Backend, key: str) -> bool:
    """Whether the stored package verifies; an archived one (Glacier) is put again from the
    files in hand, sooner than its restore would end."""
    try:
        return backend.store.verify(key)
    except ObjectArchivedError:
        return False


def upload(
    backend: Backend,
    paths: Sequence[Path],
    *,
    to_dir: Path | None = None,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    axis_order: str | None = None,
    variable: str | None = None,
    phase: PhaseCallback | None = None,
    listener: SendListener | None = None,
) -> UploadResult:
    """Send a scan: into a mounted share folder (`to_dir`), or into the store + a preprocess job.

    A share folder is how an AWS Storage Gateway file share looks from the workstation: the
    complete tar appears there under its final name and the cloud side takes it from there.
    Uploading the same scan again sends nothing and says so (`already_uploaded`); its job is
    the upload's one preprocess job (queued now if an earlier upload stopped before queueing).
    """
    if to_dir is not None:
        package = package_scan(
            paths, dest_dir=Path(to_dir), axis_order=axis_order, variable=variable, phase=phase
        )
        return UploadResult(package.scan_id, package.already_present, package.path.name)
    request = recon_request(method, options)  # a bad request fails before anything is sent
    scan_id, already = store_scan(
        backend, paths, axis_order=axis_order, variable=variable, phase=phase, listener=listener
    )
    job_id = enqueue_preprocess(
        backend, scan_id, request, idempotency_key=keys.idempotency_of_upload(scan_id)
    )
    if not already and backend.queue.get(job_id).state in (JobState.FAILED, JobState.CANCELLED):
        backend.queue.retry(job_id)  # the package was replaced (it was corrupt): run it again
    return UploadResult(scan_id, already, keys.upload(scan_id), job_id)
