"""The default method "auto": it picks, from the scan alone, the candidate that is truly better."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raki.errors import InvalidScanError
from raki.fft import fft2c, ifft2c, rss_image
from raki.method_names import CS_GRIDS, DEFAULT_METHOD
from raki.methods import reconstruct
from raki.metrics import nmse
from raki.phantom import simulate_scan
from raki.scan import Scan
from raki.selection import (
    CANDIDATES,
    RULE,
    SWITCH_MARGIN,
    CsSettings,
    choose,
    describe_selection,
    grid_preference,
    held_out_split,
    select_method,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small solves on a shared 2-core host: one thread is 5-7x faster than two when others
    run (measured 0.9 s against 6.1 s per 16-coil 64x48 cs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def true_errors(full: Scan, scan: Scan) -> dict[str, float]:
    """Each candidate's NMSE by the reference; cs's on the better of its two grids."""
    reference = rss_image(full.kspace)
    cs = min(nmse(reference, reconstruct(scan, "cs", cs_grid=grid).image) for grid in CS_GRIDS)
    return {"cs": cs, "grappa": nmse(reference, reconstruct(scan, "grappa").image)}


def fast_varying_coils(cycles: int = 6) -> Scan:
    """A noiseless 12-coil phantom whose coil sensitivities also vary `cycles` times along the
    readout, faster than ESPIRiT's 6 x 6 kernel can express, but within GRAPPA's 9 readout
    points: there SENSE's maps are wrong and GRAPPA wins."""
    full = simulate_scan((64, 48), num_coils=12, snr=np.inf, seed=3)
    x = np.arange(64)[:, None, None]
    phases = np.linspace(0, 2 * np.pi, 12, endpoint=False)[None, None, :]
    modulation = (1 + 0.8 * np.cos(2 * np.pi * cycles * x / 64 + phases)).transpose(2, 0, 1)
    kspace = fft2c(ifft2c(full.kspace) * modulation[None, :, :, None].squeeze(-1))
    return Scan.from_kspace(kspace.astype(np.complex64), np.ones(48, dtype=bool))


@pytest.mark.parametrize(
    ("label", "full", "acceleration", "winner"),
    [
        # measured: cs 5.8e-5 against GRAPPA 1.2e-3 (20x)
        ("clean, 16 coils", simulate_scan((64, 48), num_coils=16, snr=np.inf, seed=3), 3, "cs"),
        # measured: cs 0.026 against GRAPPA 0.045
        ("SNR 3, 8 coils", simulate_scan((64, 48), num_coils=8, snr=3, seed=3), 4, "cs"),
        # measured: cs 0.0026 against GRAPPA 0.0016
        ("maps SENSE cannot express", fast_varying_coils(), 3, "grappa"),
    ],
)
def test_the_rule_picks_the_candidate_with_the_lower_true_nmse(label, full, acceleration, winner):
    scan = full.undersampled(acceleration, 16)
    truth = true_errors(full, scan)
    loser = "grappa" if winner == "cs" else "cs"
    assert truth[winner] < 0.8 * truth[loser], f"{label}: the case no longer has a clear winner"
    selection = select_method(scan)
    assert selection.method == winner, (label, truth, selection.errors)
    assert selection.errors[winner] < selection.errors[loser]
    assert selection.rule == RULE and selection.reason is None
    assert selection.held_out_lines >= 4 and selection.seconds > 0


def test_auto_is_the_default_and_its_result_carries_the_choice():
    assert DEFAULT_METHOD == "auto"
    full = simulate_scan((40, 32), num_coils=6, num_slices=3, snr=20, seed=1)
    scan = full.undersampled(3, 16)
    result = reconstruct(scan)
    chosen = result.selection
    assert chosen is not None and result.method == chosen["method"] in ("cs", "grappa")
    assert set(chosen["candidates"]) == {"cs", "grappa"}
    assert chosen["rule"] == RULE and chosen["slices"] == [1]  # the central slice only
    assert result.timings["select_s"] == pytest.approx(chosen["seconds"], abs=1e-3)
    assert result.timings["total_s"] >= result.timings["select_s"]
    # The image is exactly what the chosen method gives, every slice of it.
    alone = reconstruct(scan, chosen["method"], cs_grid=chosen["cs_grid"]["grid"])
    np.testing.assert_array_equal(result.kspace, alone.kspace)
    line = describe_selection(chosen)
    assert line.startswith(f"auto -> {chosen['method']} (held-out error {chosen['method']} ")


def test_the_cs_settings_reach_the_test_and_the_reconstruction():
    full = simulate_scan((48, 40), num_coils=6, snr=20, seed=1)
    scan = full.undersampled(3, 16)
    plain = select_method(scan)
    heavy = select_method(scan, cs=CsSettings("tikhonov", weight=1e6))
    assert heavy.errors["cs"] > 5 * plain.errors["cs"]  # shrunk to nearly nothing
    assert heavy.method == "grappa" and heavy.errors["grappa"] == plain.errors["grappa"]
    result = reconstruct(scan, "auto", regularizer="tikhonov", cs_weight=1e6)
    assert result.method == "grappa"


def test_where_the_test_cannot_be_made_the_preferred_candidate_runs_and_says_why():
    full = simulate_scan((48, 40), num_coils=6, snr=20, seed=1)
    # ACS 6 at R = 6: GRAPPA needs 7 lines, cs 6.
    only_cs = select_method(full.undersampled(6, 6))
    assert only_cs.method == "cs" and only_cs.errors == {}
    assert "grappa at R=6 needs 7 ACS lines (6 here)" in only_cs.reason
    # ACS 6 at R = 2: both can run, but the outer half of the ACS holds 1 line off the lattice.
    too_few = select_method(full.undersampled(2, 6))
    assert too_few.method == "cs" and "no held-out test" in too_few.reason
    assert "cs by preference" in too_few.reason
    described = describe_selection(too_few.as_dict())
    assert described.startswith("auto -> cs (no held-out test")
    with pytest.raises(InvalidScanError, match="no method can reconstruct this scan"):
        select_method(full.undersampled(4, 4))


def test_held_out_lines_are_acs_lines_off_the_lattice_outside_its_inner_half():
    scan = simulate_scan((32, 64), num_coils=4, seed=2).undersampled(4, 24)
    split = held_out_split(scan)
    acs = scan.acs
    held = split.held_out
    assert np.all((held >= acs.start) & (held < acs.stop))
    assert not np.any((held >= split.core.start) & (held < split.core.stop))
    assert split.core.lines == 12
    lattice = np.flatnonzero(scan.sampled)[0] % 4
    assert np.all((held - lattice) % 4 != 0)
    assert held.size == 9  # 12 band lines, 3 of them on the lattice
    assert not split.sampled[held].any()
    # And the two outermost acquired lines on each side (cs's grid test).
    outside = np.flatnonzero(scan.sampled & ~np.isin(np.arange(64), np.arange(acs.start, acs.stop)))
    assert np.array_equal(split.edges, [*outside[:2], *outside[-2:]])
    kept = np.flatnonzero(scan.sampled & ~np.isin(np.arange(64), [*held, *split.edges]))
    assert np.array_equal(np.flatnonzero(split.sampled), kept)


def test_cs_with_no_regularisation_gives_a_noiseless_phantom_back():
    """The answer is known: a noiseless piecewise-constant phantom at R = 2 is in the range of
    SENSE with its ESPIRiT maps, so plain CG-SENSE (`--method cs --cs-regularizer tikhonov
    --cs-weight 0`) brings it back up to the maps' own error; 1e-3 is the bound the maps meet
    at R = 2-4 (with the phantom's exact maps the same solve gives 1e-6, test_sense.py)."""
    full = simulate_scan((64, 48), num_coils=8, snr=np.inf, seed=3)
    scan = full.undersampled(2, 16)
    result = reconstruct(scan, "cs", regularizer="tikhonov", cs_weight=0.0)
    assert nmse(rss_image(full.kspace), result.image) < 1e-3
    assert result.details["weights"] == [0.0] and result.details["weight_rule"] == "given"
    np.testing.assert_array_equal(result.kspace[..., scan.sampled], scan.kspace[..., scan.sampled])


def test_another_candidate_replaces_cs_only_when_clearly_better_held_out():
    """The held-out ACS lines under-weigh the noisy outer k-space, where cs is the safer
    candidate: GRAPPA must predict them with under SWITCH_MARGIN x cs's error."""
    assert SWITCH_MARGIN == 0.75
    assert choose({"cs": 0.010, "grappa": 0.0074}, CANDIDATES) == "grappa"
    assert choose({"cs": 0.010, "grappa": 0.0076}, CANDIDATES) == "cs"
    assert choose({"cs": 0.010, "grappa": 0.02}, CANDIDATES) == "cs"
    close = {"method": "cs", "candidates": {"cs": 0.0135, "grappa": 0.0128}, "margin": 0.75}
    assert describe_selection(close) == (
        "auto -> cs (held-out error grappa 0.0128, cs 0.0135: not under 0.75x cs's)"
    )


@pytest.mark.parametrize(
    ("label", "finer", "snr", "better"),
    [
        # k-space made by an FFT of an image: the periodic model of the measured grid is exact.
        ("periodic, noiseless", 1, np.inf, "measured"),
        ("periodic, SNR 50", 1, 50.0, "measured"),
        # A window of a finer object's spectrum, as a scanner measures: the extended grid.
        ("windowed, noiseless", 3, np.inf, "extended"),
        ("windowed, SNR 20", 3, 20.0, "extended"),
    ],
)
def test_cs_runs_on_the_grid_that_predicts_held_out_lines_better(label, finer, snr, better):
    full = simulate_scan((64, 48), num_coils=12, snr=snr, seed=3, finer=finer)
    scan = full.undersampled(3, 16)
    reference = rss_image(full.kspace)
    truth = {g: nmse(reference, reconstruct(scan, "cs", cs_grid=g).image) for g in CS_GRIDS}
    worse = next(g for g in CS_GRIDS if g != better)
    assert truth[better] < 0.9 * truth[worse], f"{label}: no clear winner {truth}"
    selection = select_method(scan)
    assert selection.cs_grid is not None and selection.cs_grid.grid == better, (label, truth)
    record = selection.as_dict()["cs_grid"]
    assert record["grid"] == better and set(record["acs_errors"]) == set(CS_GRIDS)
    assert set(record["edge_errors"]) == set(CS_GRIDS)
    result = reconstruct(scan)
    assert result.selection["cs_grid"]["grid"] == better
    if result.method == "cs":
        assert result.details["grid"] == better


def test_a_given_cs_grid_is_not_tested():
    scan = simulate_scan((48, 40), num_coils=6, snr=20, seed=1).undersampled(3, 16)
    selection = select_method(scan, cs=CsSettings(grid="measured"))
    assert selection.cs_grid.grid == "measured"
    assert set(selection.cs_grid.acs_errors) == {"measured"}


def test_the_grid_rule_weighs_the_acs_and_the_edge_lines_alike():
    assert grid_preference({"extended": 2.0, "measured": 1.0}, {}) == "measured"
    assert grid_preference({"extended": 1.0, "measured": 1.0}, {}) == "extended"  # a tie
    # ACS lines favour the measured grid 1.4x, the edges the extended one 1.5x: extended.
    both = grid_preference({"extended": 1.4, "measured": 1.0}, {"extended": 1.0, "measured": 1.5})
    assert both == "extended"
    assert (
        grid_preference({"extended": 1.4, "measured": 1.0}, {"extended": 0.9, "measured": 1.0})
        == "measured"
    )
