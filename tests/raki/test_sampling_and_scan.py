"""Masks, inference of R and ACS, and the Scan's validation."""

import numpy as np
import pytest

from raki.errors import InvalidScanError
from raki.sampling import (
    AcsBlock,
    centred_acs_block,
    describe_sampling,
    equispaced_mask,
    undersample,
)
from raki.scan import Identifiers, Scan


@pytest.mark.parametrize("lines, accel, acs", [(168, 4, 32), (96, 3, 24), (64, 5, 17), (40, 2, 10)])
def test_equispaced_mask_is_inferred_back(lines, accel, acs):
    mask = equispaced_mask(lines, accel, acs)
    assert mask[lines // 2]
    block = centred_acs_block(lines, acs)
    assert mask[block.as_slice()].all()
    pattern = describe_sampling(mask)
    assert pattern.acceleration == accel
    assert pattern.equispaced
    assert block.start >= pattern.acs.start and block.stop <= pattern.acs.stop


def test_a_block_with_nothing_around_it_is_not_accelerated():
    mask = np.zeros(256, bool)
    mask[44:212] = True
    pattern = describe_sampling(mask)
    assert pattern.acceleration == 1 and pattern.sampled_lines == 168


def test_undersample_zeroes_skipped_lines():
    kspace = np.ones((1, 2, 4, 8), np.complex64)
    mask = equispaced_mask(8, 2, 2)
    out = undersample(kspace, mask)
    assert (out[..., ~mask] == 0).all() and (out[..., mask] == 1).all()


def _kspace(shape=(1, 2, 8, 16)):
    return np.ones(shape, np.complex64)


def test_scan_from_zero_lines_infers_sampling():
    mask = equispaced_mask(16, 2, 6)
    scan = Scan.from_kspace(_kspace() * mask)
    assert scan.acceleration == 2 and scan.acs is not None and scan.sampled.sum() == mask.sum()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kspace": np.ones((2, 8, 16), np.complex64)}, "4 axes"),
        ({"kspace": np.ones((1, 2, 8, 16), np.float32)}, "complex"),
        ({"kspace": np.full((1, 2, 8, 16), np.nan, np.complex64)}, "NaN"),
        ({"sampled": np.zeros(16, bool)}, "empty"),
        ({"sampled": np.ones(15, bool)}, "ky axis"),
        ({"acs": AcsBlock(10, 20)}, "outside"),
    ],
)
def test_scan_validation_errors(kwargs, message):
    fields = {"kspace": _kspace(), "sampled": np.ones(16, bool), "acs": None, "acceleration": 1}
    fields.update(kwargs)
    with pytest.raises(InvalidScanError, match=message):
        Scan(**fields)


def test_an_acs_too_small_to_calibrate_on_is_still_a_scan_that_methods_refuse():
    """fastMRI's R = 8 masks on a small matrix keep a few ACS lines: the file is readable and
    can be zero-filled; GRAPPA and RAKI each say what they need."""
    from raki.grappa import reconstruct_grappa
    from raki.methods import reconstruct

    mask = equispaced_mask(16, 4, 2)
    scan = Scan.from_kspace(_kspace() * mask, mask, acs=AcsBlock(7, 9), acceleration=4)
    assert scan.summary()["acs_lines"] == 2
    np.testing.assert_array_equal(reconstruct(scan, "zerofill").kspace, scan.kspace)
    with pytest.raises(InvalidScanError, match="ACS of 2 lines is too small for a 9x2 GRAPPA"):
        reconstruct_grappa(scan)
    with pytest.raises(InvalidScanError, match="too small for RAKI"):
        reconstruct(scan, "rraki")


def test_mask_that_skips_acs_lines_is_inconsistent():
    mask = np.ones(16, bool)
    mask[7] = False
    with pytest.raises(InvalidScanError, match="inside the ACS"):
        Scan(kspace=_kspace(), sampled=mask, acs=AcsBlock(4, 12), acceleration=2)


def test_identifiers_are_kept_apart_and_stripped():
    scan = Scan.from_kspace(_kspace(), identifiers=Identifiers(patient_name="DOE^JANE"))
    assert "DOE" not in repr(scan.summary())
    assert scan.deidentified().identifiers.is_empty


def test_fastmri_spacing_keeps_one_in_r_lines_with_the_acs_counted():
    full = Scan.from_kspace(np.ones((1, 2, 8, 368), np.complex64))
    scan = full.undersampled(4, 30, spacing="fastmri")
    assert abs(scan.sampled.mean() - 0.25) < 0.01
    assert scan.acs.lines == 30 and scan.acceleration in (5, 6) and not scan.is_equispaced
    with pytest.raises(InvalidScanError, match="unknown spacing 'random'"):
        full.undersampled(4, 30, spacing="random")


def test_summary_says_the_declared_readout_oversampling():
    from raki.phantom import simulate_scan
    from raki.scan import Geometry

    scan = simulate_scan((32, 24), num_coils=2)
    assert scan.summary()["readout_oversampling"] is None
    oversampled = scan.replace(geometry=Geometry(readout_oversampling=2.0))
    assert oversampled.summary()["readout_oversampling"] == 2.0


def test_a_zero_padded_scan_is_fully_sampled_where_it_was_acquired():
    """fastMRI's knee files (and any reduced phase resolution or partial Fourier) hold zero
    lines either side of the acquired block: undersampling them must still work."""
    from raki.phantom import simulate_scan

    full = simulate_scan((32, 40), num_coils=2)
    kspace = full.kspace.copy()
    kspace[..., :5] = 0
    kspace[..., -3:] = 0
    padded = Scan.from_kspace(kspace)
    assert padded.is_zero_padded and not padded.is_fully_sampled
    completed = padded.padding_as_measured()
    assert completed.is_fully_sampled and np.array_equal(completed.kspace, padded.kspace)
    under = padded.undersampled(4, 8)
    assert under.acceleration == 4 and under.is_equispaced
    assert not under.is_zero_padded and not full.undersampled(4, 8).is_zero_padded


def test_a_lattice_inside_zero_padding_is_equispaced_but_a_gap_in_it_is_not():
    from raki.sampling import equispaced_mask, find_acs, is_equispaced

    mask = equispaced_mask(64, 4, 12)
    mask[:6] = False  # padding either side, as in partial Fourier or fastMRI's knee files
    mask[-5:] = False
    acs = find_acs(mask)
    assert is_equispaced(mask, acs, 4)
    holed = mask.copy()
    holed[np.flatnonzero(holed)[2]] = False
    assert not is_equispaced(holed, acs, 4)
    one_sided = mask.copy()
    one_sided[acs.stop :] = False  # nothing beyond the ACS on one side: not a lattice at all
    assert not is_equispaced(one_sided, find_acs(one_sided), 4)
