"""Reads of the preprocessed bucket through an FSx for Lustre mount. To a Batch job the file
system is a POSIX folder, so a folder stands in for it here, laid out as fsx.yaml's data
repository association lays it out (<mount>/preprocessed/<scan_id>.h5); the bucket is on the
moto server. S3 GetObject calls are counted through botocore's events as the client sends them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mrictl import keys
from mrictl.backends import open_backend
from mrictl.backends.aws import AwsBackend, AwsResources
from mrictl.backends.aws.fsx import FsxCopies
from mrictl.config import load_settings
from tests.mrictl.backends.conftest import SessionMoto, aws_environment
from tests.servers import create_aws_resources, reset_moto

SCAN_ID = "scan-0123456789abcdef"
KEY = keys.preprocessed(SCAN_ID)
CANONICAL = b"canonical hdf5 bytes " * 4096


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    folder = tmp_path / "fsx"
    folder.mkdir()
    return folder


@pytest.fixture
def aws(tmp_path: Path, mount: Path) -> Iterator[AwsBackend]:
    """A backend on fresh resources whose settings name the mount (aws.fsx_mount)."""
    url = SessionMoto.endpoint()
    reset_moto(url)
    resources = AwsResources.from_sources(create_aws_resources(url), {})
    settings = dataclasses.replace(SessionMoto.settings(), fsx_mount=str(mount))
    with aws_environment(url, resources):
        yield AwsBackend(
            settings,
            SessionMoto.shared_clients(),
            resources=resources,
            scratch_dir=tmp_path / "home" / "work",
        )


@contextlib.contextmanager
def s3_gets(s3: Any) -> Iterator[list[str]]:
    """The GetObject calls the client sends while the block runs."""
    calls: list[str] = []
    handler_id = f"count-gets-{uuid.uuid4().hex}"

    def count(**_: Any) -> None:
        calls.append("GetObject")

    s3.meta.events.register("before-call.s3.GetObject", count, unique_id=handler_id)
    try:
        yield calls
    finally:
        s3.meta.events.unregister("before-call.s3.GetObject", unique_id=handler_id)


def stored(backend: AwsBackend, tmp_path: Path, key: str = KEY, data: bytes = CANONICAL) -> str:
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    return backend.store.put_file(key, source, metadata={"format": "h5"}).sha256


def on_fsx(mount: Path, key: str, data: bytes) -> Path:
    path = mount / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_matching_copy_on_fsx_is_read_without_an_s3_get(aws, mount, tmp_path):
    sha256 = stored(aws, tmp_path)
    on_fsx(mount, KEY, CANONICAL)
    with s3_gets(aws.store.s3) as gets:
        info = aws.store.get_file(KEY, tmp_path / "job" / "scan.h5")
    assert gets == []
    assert (tmp_path / "job" / "scan.h5").read_bytes() == CANONICAL
    assert (info.sha256, info.size, info.metadata) == (sha256, len(CANONICAL), {"format": "h5"})


@pytest.mark.parametrize(
    "fsx_bytes",
    [
        b"bit rot " + CANONICAL[8:],  # same size, other bytes
        CANONICAL[:-1],  # imported before the object was replaced
        None,  # not imported (yet)
    ],
    ids=["corrupt", "other-size", "missing"],
)
def test_a_copy_that_does_not_match_falls_back_to_s3_verified(
    aws, mount, tmp_path, caplog, fsx_bytes
):
    sha256 = stored(aws, tmp_path)
    if fsx_bytes is not None:
        on_fsx(mount, KEY, fsx_bytes)
    with caplog.at_level(logging.WARNING, "mrictl.backends.aws.fsx"), s3_gets(aws.store.s3) as gets:
        info = aws.store.get_file(KEY, tmp_path / "job" / "scan.h5")
    assert gets  # read from S3
    assert info.sha256 == sha256
    assert (tmp_path / "job" / "scan.h5").read_bytes() == CANONICAL
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"fsx: {KEY} ") and line.endswith("reading it from S3")
    assert str(mount) not in line and str(tmp_path) not in line
    assert [path.name for path in (tmp_path / "job").iterdir()] == ["scan.h5"]  # no leftovers


def test_only_the_preprocessed_bucket_is_read_from_fsx(aws, mount, tmp_path):
    key = keys.output(keys.RECONSTRUCTED, "job-0123456789abcdef", "recon.h5")
    stored(aws, tmp_path, key)
    on_fsx(mount, key, CANONICAL)
    with s3_gets(aws.store.s3) as gets:
        aws.store.get_file(key, tmp_path / "out.h5")
    assert gets


def test_a_key_never_reaches_outside_the_mount(aws, mount, tmp_path):
    outside = tmp_path / "outside.h5"
    outside.write_bytes(CANONICAL)
    copies = FsxCopies(mount, aws.resources.preprocessed_bucket)
    with pytest.raises(ValueError, match="invalid object key"):
        copies.path_of("preprocessed/../../outside.h5")
    with pytest.raises(ValueError, match="invalid object key"):
        aws.store.get_file("preprocessed/../../outside.h5", tmp_path / "out.h5")
    # A link inside the mount that resolves outside it is not followed: S3 is read instead.
    stored(aws, tmp_path)
    (mount / "preprocessed").mkdir()
    (mount / KEY).symlink_to(outside)
    assert copies.path_of(KEY) is None
    with s3_gets(aws.store.s3) as gets:
        info = aws.store.get_file(KEY, tmp_path / "job" / "scan.h5")
    assert gets and info.sha256 == hashlib.sha256(CANONICAL).hexdigest()


def test_the_fsx_mount_setting_reaches_the_store(aws, mount, tmp_path, monkeypatch):
    monkeypatch.setenv("MRICTL_AWS_FSX_MOUNT", str(mount))
    backend = open_backend(load_settings(backend="aws", home=tmp_path / "cli-home"))
    stored(backend, tmp_path)
    on_fsx(mount, KEY, CANONICAL)
    with s3_gets(backend.store.s3) as gets:
        backend.store.get_file(KEY, tmp_path / "job" / "scan.h5")
    assert gets == []
    monkeypatch.delenv("MRICTL_AWS_FSX_MOUNT")
    without = open_backend(load_settings(backend="aws", home=tmp_path / "cli-home"))
    assert without.store.local_copies is None
