"""The scaling Lambda's zip: exactly the modules its handler needs, built byte for byte the same
from the same sources, named by its SHA-256.

The handler `mrictl.autoscale.handler` needs `mrictl/__init__.py` (no imports) and
`mrictl/autoscale.py` (the standard library; boto3 from the Lambda runtime), nothing else. The
entries have a fixed time stamp, mode and order and are stored uncompressed (deflate's bytes
depend on the zlib build; the two files are a few kB), so the same sources give the same
SHA-256 on every machine. The key `deploy/autoscale-<sha12>.zip` (`keys.deploy_artifact`) is
therefore new exactly when the code changes: the compute stack's `AutoscaleCodeKey` parameter
changes with it, and an unchanged build changes nothing.

It lives in the reconstructed bucket, under `deploy/`: the storage stack creates that bucket
before the compute stack whose Lambda reads the zip, and no worker role may touch `deploy/`.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mrictl import keys

if TYPE_CHECKING:
    from mrictl.backends import AwsClients

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds mrictl/
MODULES = ("mrictl/__init__.py", "mrictl/autoscale.py")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
FILE_MODE = 0o644
UNIX = 3  # ZipInfo.create_system: the mode bits are read as Unix permissions


@dataclass(frozen=True)
class LambdaPackage:
    """A built zip and where it goes."""

    data: bytes
    sha256: str

    @property
    def name(self) -> str:
        return f"autoscale-{self.sha256[:12]}.zip"

    @property
    def key(self) -> str:
        return keys.deploy_artifact(self.name)


def build_autoscale_package(source_root: Path = SOURCE_ROOT) -> LambdaPackage:
    """The zip of MODULES read from `source_root`, deterministically."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in MODULES:
            entry = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            entry.create_system = UNIX
            entry.external_attr = (0o100000 | FILE_MODE) << 16  # a regular file, rw-r--r--
            entry.compress_type = zipfile.ZIP_STORED
            archive.writestr(entry, (source_root / name).read_bytes())
    data = buffer.getvalue()
    return LambdaPackage(data=data, sha256=hashlib.sha256(data).hexdigest())


def upload_package(clients: AwsClients, bucket: str, package: LambdaPackage) -> bool:
    """Put the zip at its key unless it is already there; whether it was uploaded.

    The key names the content, so an object already at that key is this zip (put by an earlier
    run) and a second run writes nothing (the bucket is versioned: each put is a version)."""
    s3 = clients.client("s3")
    try:
        s3.head_object(Bucket=bucket, Key=package.key)
        return False
    except s3.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.put_object(
        Bucket=bucket,
        Key=package.key,
        Body=package.data,
        ContentType="application/zip",
        ChecksumAlgorithm="SHA256",
    )
    return True
