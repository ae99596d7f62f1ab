"""The train stage: a preprocessed scan's networks fitted on its ACS, stored as weights.

The same training as `mrictl train` (mrictl.training), run by a worker: the weights and a
`result.json` are written into the job's work folder and published last under
`weights/<job_id>/`, where `mrictl fetch JOB` finds them and `recon submit --weights JOB`
applies them to later scans of the protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mrictl import __version__, keys
from mrictl.pipeline.package import PackageError
from mrictl.pipeline.recon_stage import RESULT_NAME, write_json

if TYPE_CHECKING:
    from mrictl.pipeline.context import StageContext


def run_train(context: StageContext) -> dict[str, Any]:
    """Stage entry point (see the module docstring); returns the job's result."""
    from mrictl.training import train_file

    scan_id = context.payload.get("scan_id")
    if not keys.is_scan_id(scan_id):
        raise PackageError(f"job payload has no valid scan id ({scan_id!r})")
    options = context.payload.get("options") or {}
    method = context.payload.get("method") or "raki"
    source = context.work_dir / "scan.h5"
    context.backend.store.get_file(keys.preprocessed(scan_id), source)
    out_dir = context.work_dir / "outputs"
    out_dir.mkdir()
    context.log(f"training {method}")
    trained = train_file(
        source,
        out_dir / keys.WEIGHTS_NAME,
        method=method,
        acceleration=options.get("acceleration"),
        acs_lines=options.get("acs_lines"),
        device=options.get("device", "auto"),
        iterations=options.get("iterations"),
        progress=context.progress,
        training=options.get("training"),
    )
    context.check()
    trained = {key: value for key, value in trained.items() if key not in ("input", "weights")}
    summary = {"job_id": context.job.job_id, "scan_id": scan_id, **trained}
    write_json(out_dir / RESULT_NAME, {**summary, "tool": f"mrictl {__version__}"})
    files = [out_dir / keys.WEIGHTS_NAME, out_dir / RESULT_NAME]
    outputs = context.publish_outputs(out_dir, files)
    return {
        **summary,
        "outputs": outputs,
        "timings": {"train_s": trained.get("train_s")},
    }
