"""The run report: report.json for machines and report.md for people, never a patient identifier.

The markdown puts RAKI beside GRAPPA and zero-filling (NMSE, PSNR, SSIM and time, fastMRI's
definitions from raki.metrics) and embeds the comparison strip by a path relative to the report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mrictl import __version__
from mrictl.errors import ExitCode, MrictlError
from raki.method_names import CS_GRIDS
from raki.scan import Identifiers

REPORT_SCHEMA = "mrictl.report/1"
JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"
METHOD_ORDER = ("zerofill", "grappa", "raki")
METHOD_NAMES = {"zerofill": "Zero-filled", "grappa": "GRAPPA", "raki": "RAKI"}
# (key, heading, format, whether larger is better)
METRIC_COLUMNS = (
    ("nmse", "NMSE", "{:.3e}", False),
    ("psnr", "PSNR (dB)", "{:.2f}", True),
    ("ssim", "SSIM", "{:.4f}", True),
    ("time_s", "Time (s)", "{:.2f}", False),
)
IDENTIFIER_KEYS = frozenset(field.name for field in dataclasses.fields(Identifiers))


def _plain(value: object) -> object:
    """JSON-ready: numpy scalars and arrays unwrapped, paths as text, inf/NaN as null."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [
            _plain(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)
        ]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return value.as_posix()
    return value


def _check_no_identifiers(scan_summary: Mapping[str, object]) -> None:
    """Refuse a summary that carries identifier fields: a report is shared freely."""
    leaked = sorted(IDENTIFIER_KEYS.intersection(scan_summary))
    if leaked:
        raise ValueError(f"scan summary carries identifiers: {', '.join(leaked)}")


def _method_rows(
    method: str,
    metrics: Mapping[str, float] | None,
    comparison: Mapping[str, Mapping[str, float]] | None,
    timings: Mapping[str, float],
) -> dict[str, dict[str, float]]:
    """Methods in the order zero-filled, GRAPPA, RAKI, then any other; `time` read as time_s.

    The run's own method is a row whenever it has metrics, beside the compared ones.
    """
    rows = {name: dict(values) for name, values in (comparison or {}).items()}
    if metrics:
        rows[method] = {**rows.get(method, {}), **metrics}
        if "total_s" in timings:
            rows[method].setdefault("time_s", timings["total_s"])
    if not rows:
        return {}
    for values in rows.values():
        if "time" in values:
            values.setdefault("time_s", values.pop("time"))
    known = [name for name in METHOD_ORDER if name in rows]
    return {name: rows[name] for name in known + [n for n in rows if n not in known]}


def _cell(value: object, template: str) -> str:
    if value is None:
        return "-"
    number = float(value)  # type: ignore[arg-type]
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    if math.isnan(number):
        return "-"
    return template.format(number)


def _escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _comparison_table(rows: Mapping[str, Mapping[str, float]], method: str) -> list[str]:
    """A markdown table; the best value of each column in bold."""
    best: dict[str, float] = {}
    for key, _, _, larger_is_better in METRIC_COLUMNS:
        values = [
            float(row[key])
            for row in rows.values()
            if row.get(key) is not None and not math.isnan(float(row[key]))
        ]
        if len(values) > 1:
            best[key] = max(values) if larger_is_better else min(values)
    lines = [
        "| Method | " + " | ".join(heading for _, heading, _, _ in METRIC_COLUMNS) + " |",
        "|---|" + "---:|" * len(METRIC_COLUMNS),
    ]
    for name, row in rows.items():
        label = _escape(METHOD_NAMES.get(name, name))
        if name == method:
            label += " (this run)"
        cells = []
        for key, _, template, _ in METRIC_COLUMNS:
            text = _cell(row.get(key), template)
            if key in best and row.get(key) is not None and float(row[key]) == best[key]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _joined(values: object, template: str) -> str:
    return " x ".join(template.format(value) for value in values)  # type: ignore[attr-defined]


def _scan_lines(scan: Mapping[str, object]) -> list[str]:
    """What was reconstructed, in a few bullet points (Scan.summary()'s keys, when present)."""
    lines = []
    if scan.get("matrix"):
        lines.append(f"- Matrix: {_joined(scan['matrix'], '{}')} (readout x phase)")
    for key, label in (("slices", "Slices"), ("coils", "Coils")):
        if scan.get(key) is not None:
            lines.append(f"- {label}: {scan[key]}")
    if scan.get("sampled_lines") is not None:
        lines.append(f"- Sampled lines: {scan['sampled_lines']} of {scan.get('total_lines')}")
    if scan.get("fov_mm"):
        lines.append(f"- FOV: {_joined(scan['fov_mm'], '{:g}')} mm")
    if scan.get("resolution_mm"):
        lines.append(f"- Resolution: {_joined(scan['resolution_mm'], '{:.3g}')} mm")
    if scan.get("protocol"):
        lines.append(f"- Protocol: {_escape(scan['protocol'])}")
    return lines


def _selection_lines(selection: object) -> list[str]:
    """How "auto" chose the method: the candidates' held-out errors, the rule, its time."""
    if not isinstance(selection, Mapping):
        return []
    from raki.selection import describe_selection

    seconds = _cell(selection.get("seconds"), "{:.2f}")
    return [
        f"- Chosen by: {_escape(describe_selection(dict(selection)))}",
        f"- Rule: {_escape(selection.get('rule'))}, {seconds} s",
        *_cs_grid_lines(selection.get("cs_grid")),
    ]


def _cs_grid_lines(test: object) -> list[str]:
    """cs's grid and the held-out errors behind it (`raki.selection.GridTest.as_dict`), so a
    reader sees why auto's cs ran on that grid; the parts the test did not make are left out."""
    if not isinstance(test, Mapping) or not test.get("grid"):
        return []
    acs, edge = (test.get(key) or {} for key in ("acs_errors", "edge_errors"))
    acs_grids = [grid for grid in CS_GRIDS if grid in acs]
    edge_grids = [grid for grid in CS_GRIDS if grid in edge]
    parts = []
    if acs_grids:
        listed = " / ".join(f"{grid} {_cell(acs[grid], '{:.3g}')}" for grid in acs_grids)
        parts.append(f"{listed} on the ACS lines")
    if edge_grids:
        # The grids are named once, unless the edge test scored others than the ACS test.
        named = edge_grids != acs_grids
        listed = " / ".join(
            f"{grid} {_cell(edge[grid], '{:.3g}')}" if named else _cell(edge[grid], "{:.3g}")
            for grid in edge_grids
        )
        parts.append(f"{listed} on the edge lines")
    errors = f" (held-out error {', '.join(parts)})" if parts else ""
    return [f"- cs grid: {_escape(test['grid'])}{errors}"]


def _markdown(
    report: Mapping[str, object],
    scan: Mapping[str, object],
    timings: Mapping[str, float],
    rows: Mapping[str, Mapping[str, float]],
) -> str:
    method = str(report["method"])
    lines = [
        "# mrictl reconstruction report",
        "",
        f"- Method: {_escape(METHOD_NAMES.get(method, method))}",
        *_selection_lines(report.get("selection")),
        f"- Acceleration: R = {report['acceleration']}",
        f"- ACS lines: {report['acs_lines']}",
        *_scan_lines(scan),
        f"- Written: {report['created']} by mrictl {__version__}",
        "",
    ]
    if rows:
        lines += [
            "## Image quality",
            "",
            "NMSE, PSNR and SSIM against the fully sampled reference, as fastMRI defines them.",
            "",
            *_comparison_table(rows, method),
            "",
        ]
    if report.get("strip"):
        target = urllib.parse.quote(str(report["strip"]))
        lines += ["## Images", "", f"![Reconstructions side by side]({target})", ""]
    if timings:
        lines += ["## Timings", "", "| Stage | Seconds |", "|---|---:|"]
        lines += [
            f"| {_escape(stage)} | {_cell(seconds, '{:.2f}')} |"
            for stage, seconds in timings.items()
        ]
        lines.append("")
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    """Write under a temporary name beside `path`, then rename into place."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _strip_in(out_dir: Path, strip_png: Path) -> str:
    """The strip's path relative to the report, copied in first when it lives elsewhere.

    Copying keeps the report self-contained and keeps outside folder names (which may name a
    patient) out of it.
    """
    if not strip_png.is_file():
        raise MrictlError(f"{strip_png.name}: no such image for the report", ExitCode.NOT_FOUND)
    resolved, folder = strip_png.resolve(), out_dir.resolve()
    if resolved.is_relative_to(folder):
        return resolved.relative_to(folder).as_posix()
    handle, temporary = tempfile.mkstemp(prefix=f".{strip_png.name}.", dir=out_dir)
    os.close(handle)
    try:
        shutil.copyfile(strip_png, temporary)
        os.replace(temporary, out_dir / strip_png.name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return strip_png.name


def write_report(
    out_dir: str | Path,
    *,
    method: str,
    acceleration: int,
    acs_lines: int,
    timings: Mapping[str, float],
    metrics: Mapping[str, float] | None,
    comparison: Mapping[str, Mapping[str, float]] | None,
    strip_png: str | Path | None,
    scan_summary: Mapping[str, object],
    selection: Mapping[str, object] | None = None,
) -> tuple[Path, Path]:
    """Write report.json and report.md into `out_dir`; returns their paths.

    `scan_summary` is `Scan.summary()` (which holds no identifier; one that does is refused).
    `comparison` maps method names (zerofill, grappa, raki, ...) to their metrics and time_s
    (or time); without it, `metrics` describes this run's method alone. `selection` is what
    the default method "auto" chose and why (`raki.selection.MethodSelection.as_dict`).
    """
    _check_no_identifiers(scan_summary)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _method_rows(method, metrics, comparison, timings)
    report = {
        "schema": REPORT_SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "software": {"mrictl": __version__},
        "method": method,
        "acceleration": int(acceleration),
        "acs_lines": int(acs_lines),
        "timings": _plain(dict(timings)),
        "metrics": _plain(dict(metrics)) if metrics is not None else None,
        "comparison": _plain(rows) if comparison else None,
        "strip": _strip_in(out_dir, Path(strip_png)) if strip_png is not None else None,
        "scan": _plain(dict(scan_summary)),
        "selection": _plain(dict(selection)) if selection is not None else None,
    }
    json_path, md_path = out_dir / JSON_NAME, out_dir / MARKDOWN_NAME
    _write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    _write_text(md_path, _markdown(report, scan_summary, timings, rows))
    return json_path, md_path
