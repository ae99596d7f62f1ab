"""The preprocess stage: an uploaded package becomes the scan's canonical fastMRI HDF5.

Unpacks the upload into the job's fresh work folder with every check of `extract_package`,
verifies checksums and formats, reads the scan, writes `preprocessed/<scan_id>.h5` and queues the
recon (or train) job that was asked for. Idempotent: a scan already preprocessed is not
converted again. Never imports torch: the Fargate service that runs it starts small and fast.

Arrival: a scan has arrived when `uploads/<scan_id>.tar` holds its whole package, the manifest
and every file it lists with matching SHA-256s, which `extract_package` checks here before
anything is converted. That key never names part of a package: S3 objects appear whole (a
single put, or a multipart upload once completed), `mrictl upload --to DIR` writes a hidden
`.<name>.partial` file in the share and renames it when closed, and the Storage Gateway
uploads a file only once it is closed (the rename reaches S3 as an object under the final
key). Other names never match the raw bucket's event filter (`uploads/`, `.tar`) nor
`keys.scan_id_of_upload`. A package truncated or altered anyway fails those checks: bad
input, failed at once, never retried.

Identifiers: the canonical file keeps the scan's patient and study identifiers (in its
`ismrmrd_header`), because the DICOM output must be filed under the right patient and study.
They stay inside that file in the store; keys, logs, job records, the manifest and result.json
never carry them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrictl import keys
from mrictl.pipeline.package import ExtractLimits, Manifest, PackageError, extract_package
from mrictl.pipeline.upload import unsendable_reason

if TYPE_CHECKING:
    from mrictl.pipeline.context import StageContext

NEXT_STAGES = ("recon", "train")

EXTRACT_LIMITS = ExtractLimits()


def without_file_names(message: str, manifest: Manifest) -> str:
    """`message` with the package's file names replaced by their position ("file 2 (.h5)"):
    an operator's file name may carry a patient's name, and this message goes into the job
    record and its log."""
    for position, entry in enumerate(manifest.files, start=1):
        suffix = Path(entry.name).suffix
        message = message.replace(entry.name, f"file {position}" + (f" ({suffix})" * bool(suffix)))
    return message


def check_formats(manifest: Manifest, folder: Path) -> None:
    """Every file must be in a format raki reads, the one the manifest recorded."""
    from raki.errors import FileFormatError
    from raki.io import FORMATS, detect_format

    for entry in manifest.files:
        try:
            found = detect_format(folder / entry.name)
        except FileFormatError as error:
            raise PackageError(without_file_names(str(error), manifest)) from None
        if found not in FORMATS:
            reason = f"{entry.name}: unknown format {found!r}"
            raise PackageError(without_file_names(reason, manifest))
        if found != entry.format:
            reason = f"{entry.name}: is {found}, but the manifest says {entry.format}"
            raise PackageError(without_file_names(reason, manifest))


def convert(manifest: Manifest, folder: Path, canonical: Path) -> dict[str, Any]:
    """Read the package's scan and write it as canonical fastMRI HDF5; returns its summary."""
    from raki.errors import FileFormatError, InvalidScanError
    from raki.io import read_scan
    from raki.io.fastmri import write_fastmri

    try:
        scan = read_scan(folder / manifest.scan_file, **manifest.read_options)
    except (FileFormatError, InvalidScanError) as error:
        raise PackageError(without_file_names(str(error), manifest)) from None
    reason = unsendable_reason(scan)  # a package that did not come through `mrictl upload`
    if reason is not None:
        raise PackageError(f"the scan cannot be reconstructed and filed: {reason}")
    write_fastmri(scan, canonical)
    return scan.summary()


def run_preprocess(context: StageContext) -> dict[str, Any]:
    """Stage entry point (see the module docstring); returns the job's result."""
    scan_id = context.payload.get("scan_id")
    if not keys.is_scan_id(scan_id):
        raise PackageError(f"job payload has no valid scan id ({scan_id!r})")
    next_stage = context.payload.get("next_stage") or "recon"
    if next_stage not in NEXT_STAGES:
        raise PackageError(f"job payload names no stage to follow ({next_stage!r})")
    output_key = keys.preprocessed(scan_id)
    summary = None
    if context.backend.store.exists(output_key):
        context.log(f"{scan_id} already preprocessed: reusing it")
    else:
        upload = context.work_dir / f"{scan_id}.tar"
        context.backend.store.get_file(keys.upload(scan_id), upload)
        manifest = extract_package(upload, context.work_dir / "unpacked", limits=EXTRACT_LIMITS)
        upload.unlink()
        if manifest.scan_id != scan_id:
            raise PackageError(f"{upload.name}: holds scan {manifest.scan_id}, not {scan_id}")
        check_formats(manifest, context.work_dir / "unpacked")
        context.log(f"unpacked {len(manifest.files)} file(s); checksums and formats verified")
        canonical = context.work_dir / "canonical.h5"
        summary = convert(manifest, context.work_dir / "unpacked", canonical)
        context.publish(
            canonical, output_key, metadata=keys.preprocessed_metadata(scan_id, summary["slices"])
        )
        context.log(f"wrote {output_key}")
    next_job_id = context.enqueue_next(
        next_stage,
        {
            "scan_id": scan_id,
            "method": context.payload.get("method"),
            "options": context.payload.get("options") or {},
            **({"default_method": True} if context.payload.get("default_method") else {}),
        },
    )
    context.log(f"queued {next_stage} job {next_job_id}")
    return {
        "scan_id": scan_id,
        "outputs": [output_key],
        "next_job_id": next_job_id,
        "summary": summary,
    }
