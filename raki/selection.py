"""Choosing a reconstruction method for one scan from the scan alone, by held-out ACS lines.

The rule ("held-out ACS lines at R"), on the central slice: the outer half of the ACS block is
undersampled on the scan's own lattice, so the lines set aside there are predicted from
neighbours at the scan's real spacing R. Each candidate calibrates on the whole ACS (ESPIRiT
maps, GRAPPA kernels), exactly as its real reconstruction does, reconstructs the slice without
the set-aside lines, and is scored by its held-out error: sum |predicted - measured|^2 over
coils, readout and held-out lines, divided by sum |measured|^2. The measurement noise of those
lines adds the same amount to every candidate's error. The lines also took part in the
calibration, for every candidate alike. The first candidate (cs) is kept unless another
predicts the lines with under SWITCH_MARGIN x its error. On the quality grid the held-out
errors' ratio tracked the true NMSE ratio (0.33 against 0.34, 1.46 against 1.43, 1.55
against 1.55, ...); with the margin the rule picked the truly better candidate on all 24
cases (the margin was chosen there) and on 10 of 12 settings outside it (docs/benchmarks.md,
"The default: auto").

Two simpler designs were measured and rejected there: holding out every other acquired line
outside the ACS (the scan at 2R) ranked 5 of 23 wrong, since GRAPPA loses far more than SENSE
from R to 2R (the 16-coil 96x96 file, where GRAPPA wins at R = 3-4, looked 2-5x worse for it
at 2R); calibrating on the inner half of the ACS only ranked 9 wrong (maps from 10-12 lines are
much worse than the real ones).

cs is tested on both of its image grids (`raki.sense_operator.grid_matrix`): "extended" past the
measured k-space, right for a scanner's data (a window of the object's spectrum), and
"measured", the periodic model, right for k-space made by an FFT of an image (simulations).
The test's split also holds out the `EDGE_LINES` outermost acquired lines on each side, where
the two models differ most (the ACS lines alone told the windowed and the periodic 16-coil
320 x 320 phantoms apart by 1.20x against 1.22x); each grid's errors on the ACS lines and on
the edge lines give two ratios, and the measured grid runs only where their product favours it
(`grid_preference`). During development (docs/benchmarks.md, "cs on an extended grid") this
picked the better grid on all 30 cases tried, shared files, periodic and windowed phantoms.
cs's ACS error on the chosen grid is its error in the comparison with the other candidates.

The best candidate then reconstructs every slice, so the choice costs one slice's
reconstruction per candidate, shared across the volume. Where the test cannot be made (no
lattice outside the ACS, too few lines to hold out, a candidate that cannot calibrate), the
first candidate that can run is taken (`CANDIDATES` is in order of preference: cs beat GRAPPA
on 21 of 24 cases of docs/benchmarks.md) and the reason is kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from raki.errors import InvalidScanError, RakiError
from raki.espirit import DEFAULT_KERNEL_WIDTH
from raki.grappa import DEFAULT_KERNEL_SIZE, fit_grappa, reconstruct_grappa
from raki.method_names import AUTO_CANDIDATES, CS_GRIDS
from raki.sampling import AcsBlock, minimum_acs_lines
from raki.scan import Scan
from raki.sense import DEFAULT_REGULARIZER, sense_slice

RULE = "held-out ACS lines at R"
# In order of preference where the held-out test cannot be made. rRAKI is left out: at tens of
# seconds per slice on two cores it does not fit the default's time budget (issue 16).
CANDIDATES = AUTO_CANDIDATES
# Fewer held-out lines than this say too little about a candidate's error.
MIN_HELD_OUT_LINES = 4
# Acquired lines held out at each ky edge for cs's grid test (`score_cs_grids`).
EDGE_LINES = 2
# Another candidate replaces the first only with a held-out error below this fraction of the
# first's. The held-out lines are the ACS's, where the signal is strong: they under-weigh the
# outer k-space, where noise decides the image and GRAPPA amplifies it while cs suppresses it.
# On the grid of docs/benchmarks.md GRAPPA won by truth where its held-out error was 0.39-0.68x
# cs's and lost where it was 0.86x (16-coil 96x96, R = 5) and 0.95x (the 16-coil 320x320
# phantom at SNR 20, where cs's NMSE is 5x lower): 0.75 lies between, chosen on that grid.
SWITCH_MARGIN = 0.75


@dataclass(frozen=True)
class CsSettings:
    """How "cs" runs, in the test as in the reconstruction (`raki.sense.reconstruct_sense`)."""

    regularizer: str = DEFAULT_REGULARIZER
    weight: float | None = None  # None: the automatic weight
    iterations: int | None = None
    grid: str | None = None  # None: the test picks ("extended" or "measured")


@dataclass(frozen=True)
class MethodSelection:
    """The method chosen for a scan, each candidate's held-out error, and why."""

    method: str
    rule: str
    errors: dict[str, float]  # held-out error of each candidate that was scored
    seconds: float
    slices: tuple[int, ...] = ()
    held_out_lines: int = 0
    reason: str | None = None  # why the held-out test was not made
    candidate_seconds: dict[str, float] = field(default_factory=dict)
    margin: float = SWITCH_MARGIN
    cs_grid: GridTest | None = None  # cs's grid, where the test chose (or was given) one

    def as_dict(self) -> dict[str, object]:
        """JSON-ready facts for the result, the job record and the report."""
        return {
            "method": self.method,
            "rule": self.rule,
            "candidates": {name: float(error) for name, error in self.errors.items()},
            "candidate_seconds": {k: round(v, 4) for k, v in self.candidate_seconds.items()},
            "seconds": round(self.seconds, 4),
            "slices": list(self.slices),
            "held_out_lines": self.held_out_lines,
            "reason": self.reason,
            "margin": self.margin,
            "cs_grid": None if self.cs_grid is None else self.cs_grid.as_dict(),
        }


def describe_selection(selection: dict[str, object]) -> str:
    """One line for people: "auto -> cs (held-out error cs 0.012 < grappa 0.019)"."""
    method = selection["method"]
    errors: dict[str, float] = dict(selection.get("candidates") or {})  # type: ignore[arg-type]
    if len(errors) > 1:
        ranked = sorted(errors, key=lambda name: (errors[name], name != method))
        if ranked[0] != method:
            margin = float(selection.get("margin") or SWITCH_MARGIN)  # type: ignore[arg-type]
            listed = ", ".join(f"{name} {errors[name]:.3g}" for name in ranked)
            return f"auto -> {method} (held-out error {listed}: not under {margin:g}x {method}'s)"
        compared = " < ".join(f"{name} {errors[name]:.3g}" for name in ranked)
        grid = (selection.get("cs_grid") or {}).get("grid")  # type: ignore[union-attr]
        on = f", on the {grid} grid" if method == "cs" and grid else ""
        return f"auto -> {method} (held-out error {compared}{on})"
    return f"auto -> {method} ({selection.get('reason') or 'the only candidate'})"


def unmet_requirement(method: str, scan: Scan) -> str | None:
    """Why `method` cannot reconstruct `scan` (None: it can), without running it."""
    acs_lines = scan.acs.lines if scan.acs is not None else 0
    if method == "cs" and acs_lines < DEFAULT_KERNEL_WIDTH:
        return f"cs needs at least {DEFAULT_KERNEL_WIDTH} ACS lines ({acs_lines} here)"
    if method == "grappa":
        readout, kernel_lines = DEFAULT_KERNEL_SIZE
        needed = minimum_acs_lines(scan.acceleration, kernel_lines)
        if scan.acceleration < 2:
            return "grappa needs an accelerated scan (R >= 2)"
        if acs_lines < needed:
            return f"grappa at R={scan.acceleration} needs {needed} ACS lines ({acs_lines} here)"
        if scan.matrix[0] < readout:
            return f"grappa needs at least {readout} readout points"
    return None


@dataclass(frozen=True)
class HeldOutSplit:
    """The sampling the candidates see in the test, and the ACS lines they must predict."""

    sampled: np.ndarray  # bool [ky]: acquired lines but the held-out ones
    core: AcsBlock  # the inner half of the ACS, kept whole
    held_out: np.ndarray  # ky indices in the ACS
    edges: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # outermost lines


def held_out_split(scan: Scan) -> HeldOutSplit | str:
    """The outer half of the ACS undersampled on the scan's lattice; or why it cannot be."""
    if scan.acs is None:
        return "no ACS block"
    outside = scan.sampled.copy()
    outside[scan.acs.as_slice()] = False
    lines = np.flatnonzero(outside)
    if lines.size == 0 or scan.acceleration < 2:
        return "no undersampled lines outside the ACS to copy the spacing from"
    acs = scan.acs
    core_lines = max(1, acs.lines // 2)
    start = acs.start + (acs.lines - core_lines) // 2
    core = AcsBlock(start, start + core_lines)
    ky = np.arange(scan.sampled.size)
    band = (ky >= acs.start) & (ky < acs.stop) & ~((ky >= core.start) & (ky < core.stop))
    # The lattice of the lines outside the ACS (their most common residue, for masks whose
    # spacing varies by a line).
    residues, counts = np.unique(lines % scan.acceleration, return_counts=True)
    on_lattice = (ky - residues[np.argmax(counts)]) % scan.acceleration == 0
    held_out = np.flatnonzero(band & ~on_lattice)
    if held_out.size < MIN_HELD_OUT_LINES:
        return (
            f"{held_out.size} ACS lines to hold out at R={scan.acceleration} (at least "
            f"{MIN_HELD_OUT_LINES} needed)"
        )
    sampled = scan.sampled.copy()
    sampled[held_out] = False
    # The outermost acquired lines on each side, where cs's two grids differ most; only where
    # they are at most half of the lines outside the ACS.
    edges = np.zeros(0, dtype=int)
    if lines.size >= 2 * 2 * EDGE_LINES:
        edges = np.concatenate([lines[:EDGE_LINES], lines[-EDGE_LINES:]])
        sampled[edges] = False
    return HeldOutSplit(sampled, core, held_out, edges)


def held_out_error(predicted: np.ndarray, measured: np.ndarray, lines: np.ndarray) -> float:
    """sum |predicted - measured|^2 / sum |measured|^2 over the held-out ky `lines` (last axis)."""
    truth = measured[..., lines]
    energy = float(np.sum(np.abs(truth) ** 2))
    error = float(np.sum(np.abs(predicted[..., lines] - truth) ** 2))
    return error / energy if energy > 0 else float("inf")


def central_slices(scan: Scan, count: int = 1) -> tuple[int, ...]:
    """The `count` slices around the middle one (the anatomy's centre in a stack)."""
    count = max(1, min(count, scan.num_slices))
    first = (scan.num_slices - count) // 2
    return tuple(range(first, first + count))


def predict_cs(
    scan: Scan,
    split: HeldOutSplit,
    settings: CsSettings,
    device: torch.device | str,
    grid: str,
) -> np.ndarray:
    """cs's k-space [slice, coil, kx, ky] on `grid` without the held-out lines, maps from the
    whole ACS."""
    filled = np.empty_like(scan.kspace)
    for index, acs in enumerate(scan.acs_kspace()):
        filled[index] = (
            sense_slice(
                acs,
                scan.kspace[index] * split.sampled,
                split.sampled,
                settings.regularizer,
                weight=settings.weight,
                device=device,
                iterations=settings.iterations,
                grid=grid,
            )
            .kspace.cpu()
            .numpy()
        )
    return filled


@dataclass(frozen=True)
class GridTest:
    """cs's grid and the held-out errors behind the choice."""

    grid: str
    acs_errors: dict[str, float]  # each grid's error on the held-out ACS lines
    edge_errors: dict[str, float]  # each grid's error on the held-out edge lines

    @property
    def error(self) -> float:
        """The chosen grid's ACS error: cs's, in the comparison with the other candidates."""
        return self.acs_errors[self.grid]

    def as_dict(self) -> dict[str, object]:
        return {
            "grid": self.grid,
            "acs_errors": {name: float(value) for name, value in self.acs_errors.items()},
            "edge_errors": {name: float(value) for name, value in self.edge_errors.items()},
        }


def grid_preference(acs_errors: dict[str, float], edge_errors: dict[str, float]) -> str:
    """ "measured" where the product of the extended grid's error ratios over the measured
    grid's, on the ACS lines and on the edge lines, exceeds one; "extended" otherwise (a tie
    included, and where either test is missing the other decides alone)."""
    ratio = 1.0
    for errors in (acs_errors, edge_errors):
        if all(name in errors and errors[name] > 0 for name in CS_GRIDS):
            ratio *= errors["extended"] / errors["measured"]
    return "measured" if ratio > 1.0 else "extended"


def score_cs_grids(
    scan: Scan, split: HeldOutSplit, settings: CsSettings, device: torch.device | str
) -> GridTest:
    """cs's grid (the given one, or `grid_preference` of the two) from one held-out
    reconstruction per grid."""
    grids = CS_GRIDS if settings.grid is None else (settings.grid,)
    acs_errors: dict[str, float] = {}
    edge_errors: dict[str, float] = {}
    for grid in grids:
        predicted = predict_cs(scan, split, settings, device, grid)
        acs_errors[grid] = held_out_error(predicted, scan.kspace, split.held_out)
        if split.edges.size:
            edge_errors[grid] = held_out_error(predicted, scan.kspace, split.edges)
    chosen = grids[0] if len(grids) == 1 else grid_preference(acs_errors, edge_errors)
    return GridTest(chosen, acs_errors, edge_errors)


def predict_grappa(scan: Scan, split: HeldOutSplit) -> np.ndarray:
    """GRAPPA's k-space without the held-out ACS lines, its kernels fitted on the whole ACS.
    The edge lines (cs's grid test) stay: GRAPPA's kernels need the scan's own lattice."""
    kernel = fit_grappa(scan)
    sampled = split.sampled.copy()
    sampled[split.edges] = True
    reduced = scan.replace(
        kspace=(scan.kspace * sampled).astype(np.complex64),
        sampled=sampled,
        acs=split.core,
    )
    return reconstruct_grappa(reduced, kernel=kernel)


def choose(errors: dict[str, float], preference: Sequence[str]) -> str:
    """The first candidate, unless another's held-out error is under SWITCH_MARGIN x its own
    (then the lowest)."""
    first = preference[0]
    others = [name for name in preference[1:] if errors[name] < SWITCH_MARGIN * errors[first]]
    return min(others, key=lambda name: errors[name]) if others else first


def _fallback(able: list[str], reason: str, started: float) -> MethodSelection:
    return MethodSelection(able[0], RULE, {}, time.perf_counter() - started, reason=reason)


def select_method(
    scan: Scan,
    candidates: Sequence[str] = CANDIDATES,
    *,
    cs: CsSettings | None = None,
    device: torch.device | str = "cpu",
    slices: int = 1,
) -> MethodSelection:
    """The candidate whose prediction of held-out ACS lines is closest to them.

    Raises InvalidScanError when no candidate can reconstruct the scan at all.
    """
    started = time.perf_counter()
    unknown = [name for name in candidates if name not in CANDIDATES]
    if unknown:
        raise InvalidScanError(f"auto cannot score {unknown[0]!r}; it knows {CANDIDATES}")
    unmet = {name: unmet_requirement(name, scan) for name in candidates}
    able = [name for name in candidates if unmet[name] is None]
    if not able:
        raise InvalidScanError(
            "no method can reconstruct this scan: " + "; ".join(str(v) for v in unmet.values())
        )
    if len(able) == 1:
        others = "; ".join(str(unmet[name]) for name in candidates if name not in able)
        return _fallback(able, f"the only candidate that can run ({others})", started)
    split = held_out_split(scan)
    if isinstance(split, str):
        return _fallback(able, f"no held-out test: {split}; {able[0]} by preference", started)
    chosen = central_slices(scan, slices)
    test_scan = scan.replace(kspace=scan.kspace[list(chosen)])
    grid_tests: list[GridTest] = []

    def score_cs() -> float:
        grid_tests.append(score_cs_grids(test_scan, split, cs or CsSettings(), device))
        return grid_tests[0].error

    def score_grappa() -> float:
        predicted = predict_grappa(test_scan, split)
        return held_out_error(predicted, test_scan.kspace, split.held_out)

    scorers = {"cs": score_cs, "grappa": score_grappa}
    errors: dict[str, float] = {}
    seconds: dict[str, float] = {}
    unscored: dict[str, str] = {}
    for name in able:
        began = time.perf_counter()
        try:
            errors[name] = scorers[name]()
        except RakiError as error:
            # E.g. GRAPPA on a mask whose spacing varies (fastMRI's): its kernels, fitted for
            # the scan's own gaps, have no weights for the test's. Not scored, not chosen.
            unscored[name] = " ".join(str(error).split())
        seconds[name] = time.perf_counter() - began
    scored = [name for name in able if name in errors]
    reason = "; ".join(f"{name} not scored: {why}" for name, why in unscored.items()) or None
    if not scored:
        return _fallback(able, f"no held-out test: {reason}; {able[0]} by preference", started)
    best = choose(errors, scored)
    return MethodSelection(
        best,
        RULE,
        errors,
        time.perf_counter() - started,
        chosen,
        int(split.held_out.size),
        reason,
        seconds,
        cs_grid=grid_tests[0] if grid_tests else None,
    )
