"""Scan packages: what package_scan writes, and what extract_package refuses."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from mrictl.backends.local import LocalBackend
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline.package import (
    MANIFEST_NAME,
    ExtractLimits,
    Manifest,
    PackageError,
    extract_package,
    scan_id_of,
)
from mrictl.pipeline.upload import package_scan, upload
from tests.mrictl.jobs_helpers import (
    manifest_for,
    regular,
    special,
    tar_with_manifest,
    tree,
    write_tar,
    write_tiny_scan,
)

SCAN_BYTES = {"scan.h5": b"\x89HDF not really" * 64}


@pytest.fixture
def scan_file(tmp_path: Path) -> Path:
    return write_tiny_scan(tmp_path / "input" / "knee.h5")


def test_package_is_a_flat_tar_with_the_manifest_first(scan_file, tmp_path):
    out = tmp_path / "share"
    out.mkdir()
    package = package_scan([scan_file], dest_dir=out)
    sha256 = hashlib.sha256(scan_file.read_bytes()).hexdigest()
    assert package.scan_id == scan_id_of([sha256]) and package.scan_id.startswith("scan-")
    assert package.path == out / f"{package.scan_id}.tar" and not package.already_present
    assert sorted(p.name for p in out.iterdir()) == [package.path.name]
    with tarfile.open(package.path) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [MANIFEST_NAME, "scan.h5"]  # by role
        manifest = json.loads(archive.extractfile(members[0]).read())
    assert manifest["files"] == [
        {"name": "scan.h5", "size": scan_file.stat().st_size, "sha256": sha256, "format": "fastmri"}
    ]
    assert manifest["scan_id"] == package.scan_id and manifest["scan_file"] == "scan.h5"
    assert "knee" not in package.path.read_bytes().decode("latin-1")  # the user's name is gone
    assert manifest["summary"]["coils"] == 4 and manifest["tool"].startswith("mrictl ")
    assert "identifiers" not in json.dumps(manifest) and "patient" not in json.dumps(manifest)
    assert str(tmp_path) not in json.dumps(manifest)


def test_same_scan_twice_is_a_no_op_and_the_package_is_reproducible(scan_file, tmp_path):
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first = package_scan([scan_file], dest_dir=first_dir)
    again = package_scan([scan_file], dest_dir=first_dir)
    assert again.already_present and again.path == first.path
    renamed = scan_file.with_name("renamed.h5")
    renamed.write_bytes(scan_file.read_bytes())
    other = package_scan([renamed], dest_dir=second_dir)
    assert other.scan_id == first.scan_id  # content decides the id, not the name


def test_share_drop_writes_only_complete_files(scan_file, tmp_path):
    share = tmp_path / "gateway-share"
    share.mkdir()
    result = upload(LocalBackend(tmp_path / "home"), [scan_file], to_dir=share)
    assert result.location == f"{result.scan_id}.tar" and not result.already_uploaded
    assert sorted(p.name for p in share.iterdir()) == [result.location]
    assert not any(".partial" in p for p in tree(share))
    assert upload(LocalBackend(tmp_path / "home"), [scan_file], to_dir=share).already_uploaded
    assert LocalBackend(tmp_path / "home").queue.list() == []


def test_upload_to_the_store_queues_preprocess_once(scan_file, tmp_path):
    backend = LocalBackend(tmp_path / "home")
    phases: list[str] = []
    first = upload(
        backend,
        [scan_file],
        method="zerofill",
        options={"acceleration": 2},
        phase=phases.append,
    )
    assert phases == ["checksums", "packaging", "sending"]  # what a progress display shows
    assert not first.already_uploaded and first.job_id
    assert backend.store.list() == [f"uploads/{first.scan_id}.tar"]
    second = upload(backend, [scan_file], method="zerofill")
    assert second.already_uploaded and second.job_id == first.job_id  # one job per upload
    jobs = backend.queue.list()
    assert [(j.stage, j.payload["scan_id"]) for j in jobs] == [("preprocess", first.scan_id)]
    other = write_tiny_scan(tmp_path / "input" / "other.h5", seed=5)
    with pytest.raises(MrictlError, match="unknown method"):
        upload(backend, [other], method="magic")
    assert backend.store.list() == [f"uploads/{first.scan_id}.tar"]
    assert jobs[0].payload["options"] == {"acceleration": 2}
    assert list(backend.scratch_dir.iterdir()) == []


def test_packaging_refuses_unreadable_inputs(tmp_path):
    not_a_scan = tmp_path / "notes.txt"
    not_a_scan.write_text("hello")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Exception, match=r"notes\.txt"):
        package_scan([not_a_scan], dest_dir=out)
    with pytest.raises(MrictlError) as missing:
        package_scan([tmp_path / "absent.h5"], dest_dir=out)
    assert missing.value.exit_code == ExitCode.NOT_FOUND
    assert list(out.iterdir()) == []


def test_extract_accepts_a_good_package(tmp_path):
    tar_path = tar_with_manifest(tmp_path / "good.tar", SCAN_BYTES)
    manifest = extract_package(tar_path, tmp_path / "out")
    assert isinstance(manifest, Manifest) and manifest.scan_file == "scan.h5"
    assert (tmp_path / "out" / "scan.h5").read_bytes() == SCAN_BYTES["scan.h5"]
    assert tree(tmp_path / "out") == {"scan.h5"}


def _truncated(path: Path) -> Path:
    tar_with_manifest(path, SCAN_BYTES)
    data = path.read_bytes()
    path.write_bytes(data[: 512 * 3 + 100])  # inside the scan member's data
    return path


def _checksum_mismatch(path: Path) -> Path:
    members = [regular(MANIFEST_NAME, manifest_for(SCAN_BYTES))]
    members.append(regular("scan.h5", b"X" * len(SCAN_BYTES["scan.h5"])))
    return write_tar(path, members)


def _not_a_tar(path: Path) -> Path:
    path.write_bytes(b"hello, not a tar at all" * 40)
    return path


BAD_PACKAGES = {
    "traversal": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, regular("../x", b"evil")),
        r"member 3 escapes the package",
    ),
    "nested traversal": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, regular("a/../../x", b"evil")),
        "escapes the package",
    ),
    "absolute": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, regular("/tmp/evil-abs", b"evil")),
        "has an absolute path",
    ),
    "symlink": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, special("link", tarfile.SYMTYPE, "/etc/passwd")),
        "is a symbolic link",
    ),
    "hard link": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, special("hard", tarfile.LNKTYPE, "scan.h5")),
        "is a hard link",
    ),
    "device": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, special("dev", tarfile.CHRTYPE)),
        "is a device file",
    ),
    "fifo": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, special("pipe", tarfile.FIFOTYPE)),
        "is a FIFO",
    ),
    "folder": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, special("sub", tarfile.DIRTYPE)),
        "is a folder",
    ),
    "truncated": (_truncated, "truncated or not an uncompressed tar"),
    "checksum mismatch": (_checksum_mismatch, "does not match its manifest checksum"),
    "missing manifest": (
        lambda p: write_tar(p, [regular("scan.h5", SCAN_BYTES["scan.h5"])]),
        "the first member is not manifest.json",
    ),
    "empty archive": (lambda p: write_tar(p, []), "has no manifest.json"),
    "manifest not json": (
        lambda p: write_tar(p, [regular(MANIFEST_NAME, b"{not json")]),
        "manifest.json is not valid JSON",
    ),
    "unlisted member": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, regular("extra.bin", b"x")),
        "member 3 is not listed",
    ),
    "duplicate member": (
        lambda p: tar_with_manifest(p, SCAN_BYTES, regular("scan.h5", SCAN_BYTES["scan.h5"])),
        "appears twice",
    ),
    "missing member": (
        lambda p: write_tar(p, [regular(MANIFEST_NAME, manifest_for(SCAN_BYTES))]),
        r"lists 1 file\(s\) that the tar does not hold",
    ),
    "not a tar": (_not_a_tar, "truncated or not"),
}


@pytest.mark.parametrize("case", sorted(BAD_PACKAGES))
def test_extract_refuses_bad_packages_and_writes_nothing_outside(case, tmp_path):
    build, message = BAD_PACKAGES[case]
    area = tmp_path / "area"
    area.mkdir()
    tar_path = area / "scan-0000000000000000.tar"
    build(tar_path)
    before = tree(tmp_path)
    with pytest.raises(PackageError, match=message) as refused:
        extract_package(tar_path, area / "unpacked")
    text = str(refused.value)
    assert text.startswith("scan-0000000000000000.tar: ") and "\n" not in text
    assert str(tmp_path) not in text
    assert "evil" not in text and "passwd" not in text  # member names may name patients
    assert refused.value.exit_code == ExitCode.BAD_INPUT
    assert tree(tmp_path) == before  # the half-made folder is gone, nothing else appeared
    assert not Path("/tmp/evil-abs").exists()


def test_extract_limits_are_checked_on_sizes(tmp_path):
    tar_path = tar_with_manifest(tmp_path / "big.tar", SCAN_BYTES)
    with pytest.raises(PackageError, match="larger than the 100-byte limit"):
        extract_package(tar_path, tmp_path / "a", limits=ExtractLimits(max_member_bytes=100))
    with pytest.raises(PackageError, match="unpacks to more than 100 bytes"):
        extract_package(tar_path, tmp_path / "b", limits=ExtractLimits(max_total_bytes=100))
    with pytest.raises(PackageError, match="more than 1 members"):
        extract_package(tar_path, tmp_path / "c", limits=ExtractLimits(max_members=1))
    assert tree(tmp_path) == {"big.tar"}


def test_extract_refuses_compressed_archives(tmp_path):
    plain = tar_with_manifest(tmp_path / "plain.tar", SCAN_BYTES)
    with tarfile.open(tmp_path / "packed.tar", "w:gz") as archive, tarfile.open(plain) as source:
        for member in source.getmembers():
            archive.addfile(member, source.extractfile(member))
    with pytest.raises(PackageError, match="not an uncompressed tar"):
        extract_package(tmp_path / "packed.tar", tmp_path / "out")
