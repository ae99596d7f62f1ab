"""The recon stage: the canonical HDF5 of a scan in, `reconstructed/<job_id>/` out.

Runs the same reconstruction as `mrictl recon run` (mrictl.recon_service: retrospective
undersampling of a fully sampled scan, which then is its own reference for the metrics; a
train job's stored weights when the request names one), writes every output into the job's
work folder, and only then publishes them, `result.json` last, each object atomically and
fenced by the lease: a cancelled or lost attempt never leaves a half-written output.

**Split jobs.** A job whose payload holds a plan (`shards`: `{"slices": N, "per_shard": K}`,
written by a backend that spreads large volumes over an array job, mrictl/backends/aws/batch.py)
is reconstructed in slice ranges by array children (`reconstruct_shard`: slices [i*K, (i+1)*K)
of the same prepared scan, the same method and options; each range's image, compared images and
how it was made to `keys.shard`, or why it failed to `keys.shard_failure`). Children hold no
lease: a child rerun writes the same key again, and a child whose range is already stored and
matches skips it. The job itself (the assembler) assembles the ranges (`assemble_shards`; all
present and matching, else a retryable failure naming the missing ones, or a permanent one
where a child's input was refused), scores and writes the volume exactly as one job would, and
deletes the ranges once the outputs are stored. GRAPPA, cs and zerofill work slice by slice, so
the assembled volume is the one job's; RAKI and rRAKI make some choices per volume (coil
compression, the linear branch's rate, warm starts), which a split job makes per range.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrictl import __version__, keys
from mrictl.backends.base import (
    Backend,
    BackendError,
    ChecksumMismatchError,
    Job,
    NotFoundError,
    PublishedOutputsHook,
)
from mrictl.errors import ExitCode, MrictlError
from mrictl.pipeline.package import PackageError
from raki.scan import Scan

if TYPE_CHECKING:
    from mrictl.pipeline.context import StageContext
    from mrictl.recon_service import ReconOptions, Reconstruction

RESULT_NAME = "result.json"
RECONSTRUCTION_NAME = "reconstruction.h5"
COMPARED_PREFIX = "compared_"  # a shard's arrays of the compared methods' images


def write_outputs(
    image: np.ndarray,
    scan: Scan,
    out_dir: Path,
    *,
    attrs: Mapping[str, Any],
    reference: np.ndarray | None = None,
    compared_images: Mapping[str, np.ndarray] | None = None,
    scan_id: str | None = None,
) -> list[Path]:
    """The viewer-facing outputs beside reconstruction.h5: DICOM, NIfTI, PNGs, report.

    `attrs` is how the image was made (method, acceleration, acs_lines, timings, metrics,
    comparison). With a reference, the report gets a strip of the middle slice: reference,
    the compared methods, this method and its error map (x5).
    """
    from mrictl.pipeline.report import write_report
    from raki.io.dicom import study_uid_for, write_dicom_series
    from raki.io.nifti import write_nifti
    from raki.io.png import write_contact_sheet, write_image_strip, write_previews

    method = str(attrs["method"])
    # A source without a study: one study per scan, so its jobs' series (RAKI, GRAPPA) meet.
    study = None
    if scan.identifiers.study_instance_uid is None and scan_id is not None:
        study = study_uid_for(scan_id)
    written = write_dicom_series(image, scan, out_dir / "dicom", method=method, study_uid=study)
    written.append(write_nifti(image, scan, out_dir / "reconstruction.nii.gz"))
    spacing = scan.geometry.resolution_mm(scan.matrix)  # as the DICOM series' PixelSpacing
    written += write_previews(image, out_dir / "preview", pixel_spacing_mm=spacing)
    sheet = out_dir / "preview" / "contact_sheet.png"
    written.append(write_contact_sheet(image, sheet, pixel_spacing_mm=spacing))
    strip = None
    if reference is not None:
        middle = image.shape[0] // 2
        panels = {"reference": reference[middle]}
        for name, other in (compared_images or {}).items():
            panels[name] = other[middle]
        panels[method] = image[middle]
        panels[f"{method} error x5"] = 5.0 * np.abs(image[middle] - reference[middle])
        strip = write_image_strip(panels, out_dir / "preview" / "comparison_strip.png")
        written.append(strip)
    written += write_report(
        out_dir,
        method=method,
        acceleration=int(attrs["acceleration"]),
        acs_lines=int(attrs["acs_lines"]),
        timings=attrs.get("timings") or {},
        metrics=attrs.get("metrics"),
        comparison=attrs.get("comparison"),
        strip_png=strip,
        scan_summary=scan.summary(),
        selection=attrs.get("selection"),
    )
    return written


def write_json(path: Path, document: dict[str, Any]) -> Path:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def _options(payload: dict[str, Any], weights: Path | None = None) -> Any:
    from mrictl.recon_service import ReconOptions
    from raki.methods import DEFAULT_METHOD

    options = payload.get("options") or {}
    method = payload.get("method") or (None if weights is not None else DEFAULT_METHOD)
    return ReconOptions(
        # None lets run_reconstruction fall back from the default where it cannot run.
        method=None if payload.get("default_method") else method,
        weights=weights,
        acceleration=options.get("acceleration"),
        acs_lines=options.get("acs_lines"),
        device=options.get("device", "auto"),
        iterations=options.get("iterations"),
        compare=tuple(options.get("compare") or ()),
        training=dict(options.get("training") or {}),
        cs_regularizer=options.get("cs_regularizer"),
        cs_weight=options.get("cs_weight"),
        cs_grid=options.get("cs_grid"),
    )


def _after_outputs_published(context: StageContext) -> None:
    """The backend's hook once the outputs are stored (aws: the results share refreshed); its
    failure is one line in the job's log, never the job's failure."""
    if not isinstance(context.backend, PublishedOutputsHook):
        return
    prefix = keys.outputs_prefix(keys.RECONSTRUCTED, context.job.job_id)
    try:
        line = context.backend.after_outputs_published(prefix)
    except BackendError as error:
        line = f"results share not refreshed: {error}"
    if line:
        context.log(line)


def _scan_id_of(payload: Mapping[str, Any]) -> str:
    scan_id = payload.get("scan_id")
    if not keys.is_scan_id(scan_id):
        raise PackageError(f"job payload has no valid scan id ({scan_id!r})")
    return str(scan_id)


def _read_scan(backend: Backend, scan_id: str, work_dir: Path) -> Scan:
    from raki.io.fastmri import read_fastmri

    source = work_dir / "scan.h5"
    backend.store.get_file(keys.preprocessed(scan_id), source)
    return read_fastmri(source)


def run_recon(context: StageContext) -> dict[str, Any]:
    """Stage entry point (see the module docstring); returns the job's result."""
    from mrictl.recon_service import run_reconstruction
    from raki.io.image_hdf5 import write_reconstruction

    scan_id = _scan_id_of(context.payload)
    started = time.perf_counter()
    weights = None
    weights_job = (context.payload.get("options") or {}).get("weights_job")
    if weights_job is not None:
        weights = context.work_dir / keys.WEIGHTS_NAME
        context.backend.store.get_file(keys.weights(weights_job), weights)
        context.log(f"applying the weights of {weights_job}")
    options = _options(context.payload, weights)
    scan = _read_scan(context.backend, scan_id, context.work_dir)
    read_s = time.perf_counter() - started
    plan = plan_of(context.payload)
    if plan is None:
        context.log(f"reconstructing with {options.method or 'the default method'}")
        done = run_reconstruction(scan, options, progress=context.progress)
    else:
        context.log(f"assembling {plan.count} shards of {plan.slices} slices")
        done = assemble_shards(context.backend, context.job, plan, scan, options, context.work_dir)
    if done.fallback:
        context.log(f"default method not used: {done.fallback}")
    context.check()
    out_dir = context.work_dir / "outputs"
    out_dir.mkdir()
    attrs = done.attrs()
    timings = {"read_s": round(read_s, 4), **attrs.get("timings", {})}
    write_started = time.perf_counter()
    write_reconstruction(out_dir / RECONSTRUCTION_NAME, done.result.image, attrs)
    write_outputs(
        done.result.image,
        done.scan,
        out_dir,
        attrs=attrs,
        reference=done.reference,
        compared_images=done.compared_images,
        scan_id=scan_id,
    )
    timings["write_s"] = round(time.perf_counter() - write_started, 4)
    summary = {
        "job_id": context.job.job_id,
        "scan_id": scan_id,
        **attrs,
        "timings": timings,
        "tool": f"mrictl {__version__}",
    }
    write_json(out_dir / RESULT_NAME, summary)
    files = sorted(
        (path for path in out_dir.rglob("*") if path.is_file()),
        key=lambda path: (path.name == RESULT_NAME, path.as_posix()),
    )
    outputs = context.publish_outputs(out_dir, files)
    if plan is not None:
        # The assembled volume is stored: the ranges are redundant (and sit in the results
        # folder). Only while the lease is ours, like every write of the job.
        context.check_now()
        for key in context.backend.store.list(keys.shards_prefix(context.job.job_id)):
            context.backend.store.delete(key)
    _after_outputs_published(context)
    return {
        "scan_id": scan_id,
        "method": attrs.get("method"),
        "acceleration": attrs.get("acceleration"),
        "acs_lines": attrs.get("acs_lines"),
        "outputs": outputs,
        "metrics": attrs.get("metrics") or {},
        "comparison": attrs.get("comparison") or {},
        "timings": timings,
        "fallback": attrs.get("fallback"),
        "selection": attrs.get("selection"),
    }


# Split jobs ------------------------------------------------------------------------------------


def plan_of(payload: Mapping[str, Any]) -> keys.ShardPlan | None:
    """A split job's plan (see the module docstring); None for a job run whole."""
    try:
        return keys.ShardPlan.from_payload(payload)
    except keys.InvalidKeyPart:
        raise PackageError(f"job payload has a malformed {keys.SHARDS_PAYLOAD} plan") from None


def _checked_volume(scan: Scan, plan: keys.ShardPlan) -> None:
    if scan.num_slices != plan.slices:
        raise PackageError(
            f"the volume has {scan.num_slices} slices where the job's plan has {plan.slices}"
        )


def _shard_document(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A stored shard's description and arrays (`image`, `compared_<method>`)."""
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files if name != "attrs"}
        document = json.loads(str(stored["attrs"]))
    return document, arrays


def _matches(
    document: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    job_id: str,
    plan: keys.ShardPlan,
    index: int,
    matrix: tuple[int, int],
) -> bool:
    """Whether a stored shard is this job's range `index` of this plan."""
    start, stop = plan.range_of(index)
    image = arrays.get("image")
    return (
        document.get("job_id") == job_id
        and document.get("index") == index
        and [document.get("start"), document.get("stop")] == [start, stop]
        and document.get("slices") == plan.slices
        and image is not None
        and image.shape == (stop - start, *matrix)
    )


def _stored_shard(
    backend: Backend,
    job_id: str,
    plan: keys.ShardPlan,
    index: int,
    matrix: tuple[int, int],
    work_dir: Path,
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """This job's range `index` as stored (its SHA-256 verified) and matching the plan, or
    None when absent, corrupt or another plan's."""
    path = work_dir / f"shard-{index:04d}.npz"
    try:
        backend.store.get_file(keys.shard(job_id, index), path)
        document, arrays = _shard_document(path)
    except (NotFoundError, ChecksumMismatchError, OSError, ValueError, KeyError):
        return None
    finally:
        path.unlink(missing_ok=True)
    if not _matches(document, arrays, job_id, plan, index, matrix):
        return None
    return document, arrays


def reconstruct_shard(
    backend: Backend,
    job: Job,
    index: int,
    work_dir: Path,
    log: Callable[[str], None],
) -> str:
    """An array child: reconstruct range `index` of a split job and store it under
    `keys.shard` (a range already stored for this plan is left as it is); returns the key.

    The whole volume is prepared first (a fully sampled one undersampled retrospectively, its
    own reference) and then cut, so every range is cut from the same prepared scan.
    """
    from mrictl.recon_service import prepare_scan, run_reconstruction

    plan = plan_of(job.payload)
    if plan is None:
        raise MrictlError(f"{job.job_id} is not split over an array job", ExitCode.USAGE)
    start, stop = plan.range_of(index)
    key = keys.shard(job.job_id, index)
    work_dir.mkdir(parents=True, exist_ok=True)
    options = _options(job.payload)
    scan = _read_scan(backend, _scan_id_of(job.payload), work_dir)
    _checked_volume(scan, plan)
    if _stored_shard(backend, job.job_id, plan, index, scan.matrix, work_dir) is not None:
        log(f"{plan.describe(index)}: already stored, not reconstructed again")
        backend.store.delete(keys.shard_failure(job.job_id, index))
        return key
    prepared, reference = prepare_scan(scan, options.acceleration, options.acs_lines)
    part = _slices_of(prepared, start, stop)
    done = run_reconstruction(
        part,
        dataclasses.replace(options, acceleration=None, acs_lines=None),
        reference=None if reference is None else reference[start:stop],
    )
    document = {
        "job_id": job.job_id,
        "index": index,
        "start": start,
        "stop": stop,
        "slices": plan.slices,
        "method": done.result.method,
        "fallback": done.fallback,
        "timings": done.result.timings,
        "compared_seconds": {
            method: scores.get("time_s", 0.0) for method, scores in done.comparison.items()
        },
    }
    arrays = {"image": np.asarray(done.result.image, dtype=np.float32)}
    for method, image in done.compared_images.items():
        arrays[COMPARED_PREFIX + method] = np.asarray(image, dtype=np.float32)
    path = work_dir / f"shard-{index:04d}.npz"
    np.savez(path, attrs=np.array(json.dumps(document, sort_keys=True)), **arrays)
    backend.store.put_file(key, path)
    backend.store.delete(keys.shard_failure(job.job_id, index))  # an earlier run's, if any
    seconds = done.result.timings.get("total_s", 0.0)
    log(f"{plan.describe(index)}: reconstructed with {done.result.method} in {seconds:.2f} s")
    return key


def _slices_of(scan: Scan, start: int, stop: int) -> Scan:
    """Slices [start, stop) of a scan, with their positions where the geometry has them."""
    geometry = scan.geometry
    positions = geometry.slice_positions_mm
    if positions is not None and len(positions) == scan.num_slices:
        geometry = dataclasses.replace(geometry, slice_positions_mm=positions[start:stop])
    return scan.replace(kspace=scan.kspace[start:stop], geometry=geometry)


def record_shard_failure(
    backend: Backend, job_id: str, index: int, reason: str, *, permanent: bool, work_dir: Path
) -> None:
    """Leave why an array child failed (one line, no paths) for the assembler to report."""
    work_dir.mkdir(parents=True, exist_ok=True)
    document = {"job_id": job_id, "index": index, "reason": reason, "permanent": permanent}
    path = write_json(work_dir / f"shard-{index:04d}.failed.json", document)
    backend.store.put_file(keys.shard_failure(job_id, index), path)


def _failure_of(backend: Backend, job_id: str, index: int, work_dir: Path) -> dict[str, Any]:
    path = work_dir / f"shard-{index:04d}.failed.json"
    try:
        backend.store.get_file(keys.shard_failure(job_id, index), path)
        document = json.loads(path.read_text(encoding="utf-8"))
    except (NotFoundError, ChecksumMismatchError, OSError, ValueError):
        return {}
    return document if isinstance(document, dict) and document.get("job_id") == job_id else {}


def assemble_shards(
    backend: Backend,
    job: Job,
    plan: keys.ShardPlan,
    scan: Scan,
    options: ReconOptions,
    work_dir: Path,
) -> Reconstruction:
    """The volume of a split job from its stored ranges, scored as one job scores it.

    Every range must be stored, verified and this plan's; else a retryable failure naming the
    missing ranges (with why their children failed, where they said), or a permanent one when
    a child's input was refused.
    """
    from mrictl.recon_service import Reconstruction, prepare_scan
    from raki.methods import ReconResult
    from raki.metrics import evaluate

    _checked_volume(scan, plan)
    prepared, reference = prepare_scan(scan, options.acceleration, options.acs_lines)
    found = {}
    missing = []
    for index in range(plan.count):
        stored = _stored_shard(backend, job.job_id, plan, index, scan.matrix, work_dir)
        if stored is None:
            missing.append(index)
        else:
            found[index] = stored
    if missing:
        raise _missing_shards(backend, job.job_id, plan, missing, work_dir)
    documents = [found[index][0] for index in range(plan.count)]
    methods = {document["method"] for document in documents}
    if len(methods) != 1:
        raise MrictlError(
            f"the shards used different methods ({', '.join(sorted(methods))}): "
            f"`mrictl recon retry {job.job_id}` reconstructs them again",
            ExitCode.JOB_FAILED,
        )
    image = np.concatenate([found[index][1]["image"] for index in range(plan.count)])
    timings: dict[str, float] = {}
    for document in documents:
        for name, seconds in (document.get("timings") or {}).items():
            timings[name] = timings.get(name, 0.0) + float(seconds)
    result = ReconResult(
        # The ranges keep their images only: nothing after the reconstruction reads k-space.
        kspace=np.zeros((0,), dtype=np.complex64),
        image=image,
        method=methods.pop(),
        timings=timings,
        details={"shards": plan.count},
    )
    metrics = evaluate(reference, image) if reference is not None else None
    done = Reconstruction(prepared, result, reference, metrics, fallback=documents[0]["fallback"])
    if reference is not None:
        for method in options.compare:
            name = COMPARED_PREFIX + method
            if method == result.method or any(name not in found[i][1] for i in found):
                continue
            other = np.concatenate([found[index][1][name] for index in range(plan.count)])
            seconds = sum(d["compared_seconds"].get(method, 0.0) for d in documents)
            done.comparison[method] = {**evaluate(reference, other), "time_s": seconds}
            done.compared_images[method] = other
    return done


def _missing_shards(
    backend: Backend, job_id: str, plan: keys.ShardPlan, missing: list[int], work_dir: Path
) -> MrictlError:
    failures = {index: _failure_of(backend, job_id, index, work_dir) for index in missing}
    refused = [index for index in missing if failures[index].get("permanent")]
    if refused:
        index = refused[0]
        return MrictlError(
            f"{plan.describe(index)}: {failures[index].get('reason')}", ExitCode.BAD_INPUT
        )
    said = "; ".join(
        f"{plan.describe(index)}: {failures[index]['reason']}"
        for index in missing
        if failures[index].get("reason")
    )
    names = ", ".join(str(index) for index in missing)
    return MrictlError(
        f"shards missing: {names} of {plan.count}"
        + (f" ({said})" if said else "")
        + f"; `mrictl recon retry {job_id}` runs their array children again",
        ExitCode.JOB_FAILED,
    )
