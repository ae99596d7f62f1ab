"""Every object key in the project, built in this one module.

A key is made only of content-derived scan ids (`scan-` + 16 hex digits of the files' SHA-256s),
backend-made job ids (`job-` + 16 hex digits) and names this code chooses, so no patient
identifier (a name in a file name, an MRN, a study UID) can reach a key, a bucket listing or an
S3 event. The same keys serve the local folder and S3: the first component is the area, which
the AWS backend maps onto its buckets (raw, preprocessed, reconstructed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

UPLOADS = "uploads"  # raw scan packages as the workstation sent them (tar + manifest)
PREPROCESSED = "preprocessed"  # the canonical fastMRI HDF5 of each scan
RECONSTRUCTED = "reconstructed"  # a recon job's outputs (image, DICOM, NIfTI, PNG, report)
WEIGHTS = "weights"  # a train job's outputs (the networks and their result.json)
AREAS = (UPLOADS, PREPROCESSED, RECONSTRUCTED, WEIGHTS)

SCAN_ID = re.compile(r"^scan-[0-9a-f]{16}$")
JOB_ID = re.compile(r"^job-[0-9a-f]{16}$")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UPLOAD_KEY = re.compile(rf"^{UPLOADS}/(scan-[0-9a-f]{{16}})\.tar$")


class InvalidKeyPart(ValueError):
    """An id or name that cannot be part of a key."""


def is_scan_id(text: object) -> bool:
    return isinstance(text, str) and bool(SCAN_ID.fullmatch(text))


def is_job_id(text: object) -> bool:
    return isinstance(text, str) and bool(JOB_ID.fullmatch(text))


def _scan(scan_id: str) -> str:
    if not is_scan_id(scan_id):
        raise InvalidKeyPart(f"not a scan id: {scan_id!r}")
    return scan_id


def _job(job_id: str) -> str:
    if not is_job_id(job_id):
        raise InvalidKeyPart(f"not a job id: {job_id!r}")
    return job_id


def upload(scan_id: str) -> str:
    """The raw package of a scan: `uploads/<scan_id>.tar`."""
    return f"{UPLOADS}/{_scan(scan_id)}.tar"


def scan_id_of_upload(key: str) -> str | None:
    """The scan id of an upload key (as an S3 event names it), or None for any other key."""
    match = _UPLOAD_KEY.fullmatch(key)
    return match.group(1) if match else None


def preprocessed(scan_id: str) -> str:
    """The canonical HDF5 of a scan: `preprocessed/<scan_id>.h5`."""
    return f"{PREPROCESSED}/{_scan(scan_id)}.h5"


def outputs_prefix(area: str, job_id: str) -> str:
    """Where one job's outputs live: `<area>/<job_id>/` (reconstructed or weights)."""
    if area not in (RECONSTRUCTED, WEIGHTS):
        raise InvalidKeyPart(f"no job outputs in area {area!r}")
    return f"{area}/{_job(job_id)}/"


def output(area: str, job_id: str, relative_name: str) -> str:
    """One output file of a job; `relative_name` is a name this code chose (`dicom/0001.dcm`)."""
    parts = relative_name.split("/")
    if not all(_NAME_PART.fullmatch(part) for part in parts):
        raise InvalidKeyPart(f"not a safe output name: {relative_name!r}")
    return outputs_prefix(area, job_id) + relative_name


SHARDS_NAME = "shards"  # the folder of a split recon job's slice ranges, inside its outputs


def shards_prefix(job_id: str) -> str:
    """Where the array children of a split recon job leave their slice ranges for its
    assembler: `reconstructed/<job_id>/shards/` (inside the job's outputs, so a cancel removes
    them with the rest; the assembler deletes them once the assembled outputs are stored)."""
    return outputs_prefix(RECONSTRUCTED, job_id) + SHARDS_NAME + "/"


def shard(job_id: str, index: int) -> str:
    """One array child's slice range: `reconstructed/<job_id>/shards/0003.npz`."""
    return shards_prefix(job_id) + f"{_index(index):04d}.npz"


def shard_failure(job_id: str, index: int) -> str:
    """Why an array child could not reconstruct its slice range, for the assembler to report:
    `reconstructed/<job_id>/shards/0003.failed.json`."""
    return shards_prefix(job_id) + f"{_index(index):04d}.failed.json"


def _index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 10000:
        raise InvalidKeyPart(f"not an array index: {index!r}")  # AWS Batch: at most 10000
    return index


SHARDS_PAYLOAD = "shards"  # a split recon job's plan in its payload (ShardPlan.as_payload)


@dataclass(frozen=True)
class ShardPlan:
    """What each shard key of a split recon job holds: child `index` of its array job
    reconstructs slices [index * per_shard, min(slices, (index + 1) * per_shard)). The aws
    backend writes it into the job's payload before it submits the array job; the children
    and the assembler read it from there."""

    slices: int
    per_shard: int

    def __post_init__(self) -> None:
        if min(self.slices, self.per_shard) < 1:
            raise InvalidKeyPart(f"not a shard plan: {self.slices} slices, {self.per_shard} each")

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ShardPlan | None:
        """The payload's plan; None for a job that is not split."""
        plan = payload.get(SHARDS_PAYLOAD)
        if plan is None:
            return None
        try:
            return cls(int(plan["slices"]), int(plan["per_shard"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidKeyPart(f"not a shard plan: {plan!r}") from None

    def as_payload(self) -> dict[str, int]:
        return {"slices": self.slices, "per_shard": self.per_shard}

    @property
    def count(self) -> int:
        return -(-self.slices // self.per_shard)

    def range_of(self, index: int) -> tuple[int, int]:
        """Slices [start, stop) of child `index`."""
        if not 0 <= _index(index) < self.count:
            raise InvalidKeyPart(f"array index {index} is outside the {self.count} shards")
        start = index * self.per_shard
        return start, min(self.slices, start + self.per_shard)

    def describe(self, index: int) -> str:
        start, stop = self.range_of(index)
        return f"shard {index} (slices {start}-{stop - 1} of {self.slices})"

    def slices_done_at_least(self, shards_done: int) -> int:
        """Slices reconstructed once `shards_done` children succeeded (the last, short child
        counted as one of them: AWS Batch's summary says how many, not which)."""
        if shards_done >= self.count:
            return self.slices
        last = self.slices - (self.count - 1) * self.per_shard
        return max(0, shards_done * self.per_shard - (self.per_shard - last))


# The preprocessed object's metadata entry naming its slice count: what the aws backend reads
# before it submits a recon job, to split a large volume over an array job.
SLICES_METADATA = "slices"


def preprocessed_metadata(scan_id: str, slices: int) -> dict[str, str]:
    """The metadata the preprocess stage stores with `preprocessed/<scan_id>.h5`."""
    return {"scan-id": _scan(scan_id), "format": "fastmri", SLICES_METADATA: str(int(slices))}


WEIGHTS_NAME = "weights.pt"


def weights(job_id: str) -> str:
    """The networks a train job fitted: `weights/<job_id>/weights.pt`."""
    return output(WEIGHTS, job_id, WEIGHTS_NAME)


DEPLOY = "deploy"  # build artifacts the stacks deploy (the scaling Lambda's zip): no data


def deploy_artifact(name: str) -> str:
    """A build artifact the provisioner uploads for a stack: `deploy/<name>` (mrictl provision
    puts it in the reconstructed bucket, which exists before the compute stack that reads it)."""
    if not _NAME_PART.fullmatch(name):
        raise InvalidKeyPart(f"not a safe artifact name: {name!r}")
    return f"{DEPLOY}/{name}"


def uploads_prefix() -> str:
    """The upload area, `uploads/`: what a Storage Gateway file share maps (`mrictl provision
    gateway`), so that a tar written to the share lands where `upload` puts it."""
    return f"{UPLOADS}/"


def results_prefix() -> str:
    """The results area, `reconstructed/`: what the read-only results share maps (`mrictl
    provision gateway --results`), so a job's outputs appear in its folder `/<job_id>/`."""
    return f"{RECONSTRUCTED}/"


def idempotency_of_upload(scan_id: str) -> str:
    """The one preprocess job of an upload, whether the CLI or an S3 event queues it."""
    return f"{UPLOADS}/{_scan(scan_id)}"


def names_under(prefix: str, keys: Iterable[str]) -> list[str]:
    """The relative names of `keys` below `prefix` (the files of one job's outputs)."""
    return [key.removeprefix(prefix) for key in keys if key.startswith(prefix)]
