"""The recon stage: the canonical HDF5 of a scan in, `reconstructed/<job_id>/` out.

Runs the same reconstruction as `mrictl recon run` (mrictl.recon_service: retrospective
undersampling of a fully sampled scan, which then is its own reference for the metrics; a
train job's stored weights when the request names one), writes every output into the job's
work folder, and only then publishes them, `result.json` last, each object atomically and
fenced by the lease: a cancelled or lost attempt never leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrictl import __version__, keys
from mrictl.backends.base import BackendError, PublishedOutputsHook
from mrictl.pipeline.package import PackageError
from raki.scan import Scan

if TYPE_CHECKING:
    from mrictl.pipeline.context import StageContext

RESULT_NAME = "result.json"
RECONSTRUCTION_NAME = "reconstruction.h5"


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
    written += write_previews(image, out_dir / "preview")
    written.append(write_contact_sheet(image, out_dir / "preview" / "contact_sheet.png"))
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


def run_recon(context: StageContext) -> dict[str, Any]:
    """Stage entry point (see the module docstring); returns the job's result."""
    from mrictl.recon_service import run_reconstruction
    from raki.io.fastmri import read_fastmri
    from raki.io.image_hdf5 import write_reconstruction

    scan_id = context.payload.get("scan_id")
    if not keys.is_scan_id(scan_id):
        raise PackageError(f"job payload has no valid scan id ({scan_id!r})")
    started = time.perf_counter()
    weights = None
    weights_job = (context.payload.get("options") or {}).get("weights_job")
    if weights_job is not None:
        weights = context.work_dir / keys.WEIGHTS_NAME
        context.backend.store.get_file(keys.weights(weights_job), weights)
        context.log(f"applying the weights of {weights_job}")
    options = _options(context.payload, weights)
    source = context.work_dir / "scan.h5"
    context.backend.store.get_file(keys.preprocessed(scan_id), source)
    scan = read_fastmri(source)
    read_s = time.perf_counter() - started
    context.log(f"reconstructing with {options.method or 'the default method'}")
    done = run_reconstruction(scan, options, progress=context.progress)
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
    }
