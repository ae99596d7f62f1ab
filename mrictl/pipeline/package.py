"""The scan package format: a scan's files as one uncompressed tar, `manifest.json` first.

The package is what leaves the workstation: flat, its members named by role (`scan.h5`,
`file-2.dat`: never the operator's file name, which may carry a patient's name), checksummed
file by file, named by a content-derived scan id so that the same scan uploaded twice is
recognised, and written under a hidden temporary name, then renamed, so that a watcher never
sees half of it. Reading one back (`extract_package`) trusts nothing in it. Sending packages
somewhere is mrictl.pipeline.upload's business.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mrictl import __version__
from mrictl.errors import ExitCode, MrictlError
from mrictl.partial_files import partial_name, remove_stale_partials

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
CHUNK = 1 << 20
READ_OPTIONS = ("axis_order", "variable")  # the read_scan options a manifest may carry
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PackageError(MrictlError):
    """A package that is unsafe, broken or inconsistent: refused as a whole, never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.BAD_INPUT)


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what one package may unpack to, checked on the bytes actually read."""

    max_member_bytes: int = 32 << 30
    max_total_bytes: int = 64 << 30
    max_members: int = 1000
    max_manifest_bytes: int = 1 << 20


@dataclass(frozen=True)
class PackagedFile:
    name: str
    size: int
    sha256: str
    format: str


@dataclass(frozen=True)
class Manifest:
    """What a package holds; `summary` is `Scan.summary()`, which never carries identifiers."""

    scan_id: str
    files: tuple[PackagedFile, ...]
    scan_file: str
    summary: dict[str, Any]
    read_options: dict[str, Any] = field(default_factory=dict)
    tool: str = f"mrictl {__version__}"

    def to_json(self) -> bytes:
        document = {
            "manifest_version": MANIFEST_VERSION,
            "scan_id": self.scan_id,
            "scan_file": self.scan_file,
            "files": [vars(entry) for entry in self.files],
            "summary": self.summary,
            "read_options": self.read_options,
            "tool": self.tool,
        }
        return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and validate; ValueError says what is wrong."""
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"is not valid JSON ({error.msg})") from None
        if not isinstance(document, dict):
            raise ValueError("is not a JSON object")
        if document.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError(f"has manifest_version {document.get('manifest_version')!r}")
        entries = document.get("files")
        if not isinstance(entries, list) or not entries:
            raise ValueError("lists no files")
        files = []
        for position, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict):
                raise ValueError("has a file entry that is not an object")
            name, size = entry.get("name"), entry.get("size")
            sha256, file_format = entry.get("sha256"), entry.get("format")
            if not isinstance(name, str) or unsafe_name_reason(name) or name == MANIFEST_NAME:
                raise ValueError(f"lists an unsafe file name (file {position})")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"gives file {position} an invalid size")
            if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
                raise ValueError(f"gives file {position} an invalid sha256")
            if not isinstance(file_format, str):
                raise ValueError(f"gives file {position} no format")
            files.append(PackagedFile(name, size, sha256, file_format))
        names = [entry.name for entry in files]
        if len(set(names)) != len(names):
            raise ValueError("lists a file name twice")
        scan_file = document.get("scan_file")
        if scan_file not in names:
            raise ValueError("names a scan_file that it does not list")
        scan_id = scan_id_of(entry.sha256 for entry in files)
        if document.get("scan_id") != scan_id:
            raise ValueError("has a scan_id that does not match its files' checksums")
        summary = document.get("summary")
        read_options = document.get("read_options", {})
        if not isinstance(summary, dict) or not isinstance(read_options, dict):
            raise ValueError("has a malformed summary or read_options")
        if any(
            name not in READ_OPTIONS or not isinstance(value, str)
            for name, value in read_options.items()
        ):
            raise ValueError(f"has read_options other than {', '.join(READ_OPTIONS)}")
        return cls(
            scan_id=scan_id,
            files=tuple(files),
            scan_file=scan_file,
            summary=summary,
            read_options=read_options,
            tool=str(document.get("tool", "")),
        )


def scan_id_of(file_sha256s: Sequence[str] | Any) -> str:
    """The content-derived scan id: the same files, under any names, give the same id."""
    joined = "\n".join(sorted(file_sha256s)).encode()
    return f"scan-{hashlib.sha256(joined).hexdigest()[:16]}"


def unsafe_name_reason(name: str) -> str | None:
    """Why `name` cannot be a member of a flat package, or None when it can."""
    if not name:
        return "has an empty name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return "has an absolute path"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return "escapes the package ('..' in its path)"
    if len(parts) > 1:
        return "is inside a folder (packages are flat)"
    if name in (".", "..") or name.startswith("."):
        return "has a hidden name"
    if any(ord(char) < 32 or ord(char) == 127 for char in name) or len(name.encode()) > 255:
        return "has control characters or is too long"
    return None


def file_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def read_options_of(axis_order: str | None, variable: str | None) -> dict[str, str]:
    """How raki.io.read_scan must read an array file (.mat/.npy/.npz); kept in the manifest."""
    options = {"axis_order": axis_order, "variable": variable}
    return {name: value for name, value in options.items() if value}


# The suffix a member gets from its format (detected from the content, never the name).
SUFFIX_OF_FORMAT = {
    "fastmri": ".h5",
    "mrd": ".mrd",
    "twix": ".dat",
    "mat": ".mat",
    "npy": ".npy",
    "npz": ".npz",
}


def member_name(position: int, file_format: str) -> str:
    """A member's name by its role: `scan.<suffix>` for the first file, the scan itself, and
    `file-<n>.<suffix>` for what travels with it."""
    stem = "scan" if position == 1 else f"file-{position}"
    return stem + SUFFIX_OF_FORMAT.get(file_format, "")


def describe(
    paths: Sequence[Path],
    hashes: Sequence[tuple[int, str]],
    formats: Sequence[str],
    summary: dict[str, Any],
    read_options: dict[str, str],
) -> Manifest:
    """The manifest of a scan's files (the first one the scan), members named by role."""
    files = tuple(
        PackagedFile(member_name(position, file_format), size, sha256, file_format)
        for position, ((size, sha256), file_format) in enumerate(
            zip(hashes, formats, strict=True), start=1
        )
    )
    return Manifest(
        scan_id=scan_id_of(sha256 for _, sha256 in hashes),
        files=files,
        scan_file=files[0].name,
        summary=summary,
        read_options=read_options,
    )


class _HashingReader:
    """Hashes what tarfile reads, so a file changed after it was checksummed is caught."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.digest.update(chunk)
        return chunk


def _member(name: str, size: int) -> tarfile.TarInfo:
    """A regular file entry with no owner or time, so the same scan gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info


def write_package(manifest: Manifest, paths: Sequence[Path], dest_dir: Path) -> Path:
    """Write `<scan_id>.tar` into `dest_dir` via a hidden `.partial` name and a rename.

    `paths` are the files in the manifest's order. A killed writer's leftover partial of the
    same package is removed (mrictl.partial_files); a live writer's is left alone.
    """
    final = dest_dir / f"{manifest.scan_id}.tar"
    remove_stale_partials(final)
    # Unique, so two uploads of one scan into one share never write the same temporary file.
    partial = partial_name(final)
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
            manifest_bytes = manifest.to_json()
            archive.addfile(_member(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes))
            for entry, path in zip(manifest.files, paths, strict=True):
                with Path(path).open("rb") as stream:
                    reader = _HashingReader(stream)
                    archive.addfile(_member(entry.name, entry.size), reader)
                if reader.digest.hexdigest() != entry.sha256:
                    raise MrictlError(f"{Path(path).name}: changed while it was being packaged")
        with partial.open("rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(partial, final)
    except OSError as error:
        raise MrictlError(
            f"{final.name}: cannot write the package ({error.strerror or error})", ExitCode.BACKEND
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return final


def _read_limited(stream: BinaryIO, limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise PackageError(f"{what} is larger than {limit} bytes")
    return data


def _member_reason(member: tarfile.TarInfo, limits: ExtractLimits) -> str | None:
    """Why a member is refused before a byte of it is read, or None."""
    if member.issym():
        return "is a symbolic link"
    if member.islnk():
        return "is a hard link"
    if member.ischr() or member.isblk():
        return "is a device file"
    if member.isfifo():
        return "is a FIFO"
    if member.isdir():
        return "is a folder (packages are flat)"
    if member.issparse() or not member.isreg():
        return "is not a regular file"
    reason = unsafe_name_reason(member.name)
    if reason:
        return reason
    if member.size > limits.max_member_bytes:
        return f"is larger than the {limits.max_member_bytes}-byte limit"
    return None


def _extract_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path, limit: int, label: str
) -> tuple[int, str]:
    """Stream one member into a new file (never through a link), counting what is really read."""
    source = archive.extractfile(member)
    if source is None:
        raise PackageError(f"{label} has no data")
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(descriptor, "wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise PackageError(f"{label} is larger than allowed")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def _without_names(text: str, name: str) -> str:
    """`text` with the member's name (and any path in it) cut out."""
    return text.replace(name, "(name)").replace(os.path.basename(name) or name, "(name)")


def extract_package(
    tar_path: Path, dest_dir: Path, *, limits: ExtractLimits = ExtractLimits()
) -> Manifest:
    """Unpack a package into the new folder `dest_dir`, verifying every member against the manifest.

    Refuses (PackageError, one line naming the tar and the member) links, devices, FIFOs, folders,
    absolute or '..' names, members over the limits, a missing or invalid manifest, unlisted,
    duplicate, missing or corrupt members, and truncated or compressed archives. Reads the tar as
    a stream; tarfile's "data" filter is applied too. On refusal `dest_dir` is removed.
    """
    tar_name = tar_path.name
    dest_dir.mkdir(parents=False, exist_ok=False)
    try:
        return _extract_into(tar_path, dest_dir, limits)
    except PackageError as error:
        shutil.rmtree(dest_dir, ignore_errors=True)
        raise PackageError(f"{tar_name}: {error.message}") from None
    except (tarfile.TarError, EOFError) as error:
        shutil.rmtree(dest_dir, ignore_errors=True)
        raise PackageError(f"{tar_name}: truncated or not an uncompressed tar ({error})") from None
    except BaseException:
        shutil.rmtree(dest_dir, ignore_errors=True)
        raise


def _extract_into(tar_path: Path, dest_dir: Path, limits: ExtractLimits) -> Manifest:
    manifest: Manifest | None = None
    expected: dict[str, PackagedFile] = {}
    seen: set[str] = set()
    total = 0
    members = 0
    with tar_path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|") as archive:
        for member in archive:
            members += 1
            # Members are named by position: a file name may carry a patient's name, and this
            # message ends up in job records and logs.
            label = f"member {members}"
            if members > limits.max_members:
                raise PackageError(f"holds more than {limits.max_members} members")
            reason = _member_reason(member, limits)
            if reason:
                raise PackageError(f"{label} {reason}")
            try:
                tarfile.data_filter(member, str(dest_dir))
            except tarfile.FilterError as error:
                reason = _without_names(str(error), member.name)
                raise PackageError(f"{label} is refused ({reason})") from None
            if manifest is None:
                if member.name != MANIFEST_NAME:
                    raise PackageError(f"the first member is not {MANIFEST_NAME}")
                source = archive.extractfile(member)
                if source is None:
                    raise PackageError(f"{MANIFEST_NAME} has no data")
                data = _read_limited(source, limits.max_manifest_bytes, MANIFEST_NAME)
                try:
                    manifest = Manifest.from_json(data)
                except ValueError as error:
                    raise PackageError(f"{MANIFEST_NAME} {error}") from None
                expected = {entry.name: entry for entry in manifest.files}
                continue
            entry = expected.get(member.name)
            if entry is None:
                raise PackageError(f"{label} is not listed in {MANIFEST_NAME}")
            if member.name in seen:
                raise PackageError(f"{label} appears twice")
            if member.size != entry.size:
                raise PackageError(
                    f"{label} is {member.size} bytes, the manifest says {entry.size}"
                )
            if total + entry.size > limits.max_total_bytes:
                raise PackageError(f"unpacks to more than {limits.max_total_bytes} bytes")
            size, sha256 = _extract_member(
                archive,
                member,
                dest_dir / member.name,
                min(entry.size, limits.max_member_bytes),
                label,
            )
            total += size
            seen.add(member.name)
            if size != entry.size or sha256 != entry.sha256:
                raise PackageError(f"{label} does not match its manifest checksum")
    if manifest is None:
        raise PackageError(f"has no {MANIFEST_NAME}")
    missing = sorted(set(expected) - seen)
    if missing:
        raise PackageError(
            f"{MANIFEST_NAME} lists {len(missing)} file(s) that the tar does not hold"
        )
    return manifest
