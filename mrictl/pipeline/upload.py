"""Sending a scan: package it and put it in the store (and queue its preprocess job), or drop
the package into a mounted share folder (an AWS Storage Gateway file share).

Uploading is idempotent: the package is named by the content-derived scan id, the preprocess
job by an idempotency key of the upload (`mrictl.keys.idempotency_of_upload`), so the CLI and
an S3 event of the same upload make one job, and uploading again replaces only a stored
package whose bytes no longer match their checksum.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrictl import keys
from mrictl.backends.base import Backend, JobState
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline.package import (
    Manifest,
    describe,
    file_sha256,
    read_options_of,
    scan_id_of,
    write_package,
)
from mrictl.pipeline.requests import enqueue_preprocess, recon_request


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


def _quiet(_: str) -> None:
    """The default phase listener: says nothing."""


def _checked_inputs(paths: Sequence[Path]) -> list[Path]:
    if not paths:
        raise MrictlError("no scan files given", ExitCode.USAGE)
    paths = [Path(path) for path in paths]
    for path in paths:
        name = path.name or path.resolve().name or str(path)
        if path.is_dir():
            message = f"{name}: is a folder; give the scan's files"
            raise MrictlError(message, ExitCode.USAGE)
        if not path.is_file():
            raise MrictlError(f"{name}: no such file", ExitCode.NOT_FOUND)
    return paths


def _manifest_of(
    inputs: Sequence[Path], hashes: Sequence[tuple[int, str]], read_options: dict[str, str]
) -> Manifest:
    """Read the scan (the first file) for its summary and every file's format."""
    from raki.io import detect_format, read_scan

    formats = [detect_format(path) for path in inputs]
    scan = read_scan(inputs[0], **read_options)
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
) -> tuple[str, bool]:
    """Put a scan's package in the store (no job): its scan id and whether it was already there.

    A stored package whose bytes fail their checksum is not "already there": it is replaced.
    `phase` hears "checksums", "packaging", "sending" as each long step starts.
    """
    phase = phase or _quiet
    inputs = _checked_inputs(paths)
    phase("checksums")
    hashes = [file_sha256(path) for path in inputs]
    scan_id = scan_id_of(sha256 for _, sha256 in hashes)
    key = keys.upload(scan_id)
    if backend.store.exists(key) and backend.store.verify(key):
        return scan_id, True
    phase("packaging")
    manifest = _manifest_of(inputs, hashes, read_options_of(axis_order, variable))
    with tempfile.TemporaryDirectory(prefix="package-", dir=backend.scratch_dir) as staging:
        tar_path = write_package(manifest, inputs, Path(staging))
        phase("sending")
        backend.store.put_file(key, tar_path, metadata={"scan-id": scan_id, "format": "package"})
    return scan_id, False


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
        backend, paths, axis_order=axis_order, variable=variable, phase=phase
    )
    job_id = enqueue_preprocess(
        backend, scan_id, request, idempotency_key=keys.idempotency_of_upload(scan_id)
    )
    if not already and backend.queue.get(job_id).state in (JobState.FAILED, JobState.CANCELLED):
        backend.queue.retry(job_id)  # the package was replaced (it was corrupt): run it again
    return UploadResult(scan_id, already, keys.upload(scan_id), job_id)
