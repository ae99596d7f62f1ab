"""Shared by the backend, packaging, preprocess, worker and jobs tests: tiny scans and raw tars."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from mrictl.backends.local import LocalBackend
from mrictl.pipeline.package import MANIFEST_NAME, scan_id_of
from raki.io.fastmri import write_fastmri
from raki.phantom import simulate_scan

TINY = {"matrix": (32, 24), "num_coils": 4, "num_slices": 1}
# A fully sampled scan needs these to be undersampled retrospectively (R=2, 8 ACS lines).
RETROSPECTIVE = {"acceleration": 2, "acs_lines": 8}


def write_tiny_scan(path: Path, *, seed: int = 0, undersampled: bool = False) -> Path:
    """A small, seeded phantom in fastMRI HDF5 (fully sampled unless `undersampled`)."""
    scan = simulate_scan(**TINY, seed=seed)
    if undersampled:
        scan = scan.undersampled(2, 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_fastmri(scan, path)


def put_preprocessed(backend: LocalBackend, scan_file: Path) -> str:
    """Place a canonical file in the store as preprocess would; returns its scan id."""
    scan_id = scan_id_of([hashlib.sha256(scan_file.read_bytes()).hexdigest()])
    backend.store.put_file(f"preprocessed/{scan_id}.h5", scan_file)
    return scan_id


def manifest_for(files: dict[str, bytes], *, file_format: str = "fastmri") -> bytes:
    """A valid manifest for `files` (as package_scan writes it)."""
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    document = {
        "manifest_version": 1,
        "scan_id": scan_id_of(hashes.values()),
        "scan_file": next(iter(files)),
        "files": [
            {"name": name, "size": len(data), "sha256": hashes[name], "format": file_format}
            for name, data in files.items()
        ],
        "summary": {},
        "read_options": {},
        "tool": "test",
    }
    return json.dumps(document).encode()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar with exactly these members, in order, whatever they are."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tar_with_manifest(path: Path, files: dict[str, bytes], *extra) -> Path:
    """manifest.json first, then `files`, then any `extra` (info, data) members."""
    members = [regular(MANIFEST_NAME, manifest_for(files))]
    members += [regular(name, data) for name, data in files.items()]
    members += list(extra)
    return write_tar(path, members)


def tree(root: Path) -> set[str]:
    """Every path under `root` (files, folders, links), relative, for before/after comparisons."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add((Path(folder) / name).relative_to(root).as_posix())
    return found
