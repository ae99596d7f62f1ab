"""Zero-shot SSDU (`--method ssdu`): trained on the scan's own lines, acquired lines kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raki.errors import InvalidScanError
from raki.fft import rss_image
from raki.methods import METHODS, reconstruct
from raki.metrics import nmse
from raki.phantom import simulate_scan
from raki.sense_operator import SenseOperator
from raki.unrolled import UnrolledSense
from raki.zero_shot import ZeroShotConfig, reconstruct_zero_shot, split_samples

# Tiny: two unrolls of an 8-feature CNN, two splits, two epochs, a short cs start.
TINY = ZeroShotConfig(
    unrolls=2,
    features=8,
    blocks=1,
    cg_iterations=3,
    splits=2,
    max_epochs=2,
    patience=2,
    start_iterations=15,
    split_unit="points",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy 2-core host the hand-offs
    made these tests 3-4x slower (measured while developing them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom():
    return simulate_scan((64, 64), num_coils=6, snr=30, seed=2)


@pytest.fixture(scope="module")
def scan(phantom):
    return phantom.undersampled(3, 16)


@pytest.fixture(scope="module")
def reconstruction(scan):
    return reconstruct_zero_shot(scan, TINY)


@pytest.mark.parametrize("unit", ["lines", "points"])
def test_the_splits_are_disjoint_and_cover_the_acquired_samples(scan, unit):
    acquired = np.broadcast_to(scan.sampled[None, :], scan.matrix)
    config = ZeroShotConfig(splits=4, split_unit=unit)
    split = split_samples(acquired, config, np.random.default_rng(0))
    assert split.validation.any() and not (split.validation & ~acquired).any()
    for consistency, loss in zip(split.consistency, split.loss, strict=True):
        assert loss.any()
        assert not (consistency & loss).any()
        assert not (consistency & split.validation).any()
        assert not (loss & split.validation).any()
        assert np.array_equal(consistency | loss | split.validation, acquired)
        # The k-space centre always stays with the data the network sees.
        assert consistency[32, 32]
    if unit == "lines":
        # Whole lines move: every ky line is in one set along the whole readout.
        for mask in (split.validation, *split.loss):
            assert np.array_equal(mask.any(axis=0), mask.all(axis=0))
    assert split.validation.sum() == pytest.approx(0.2 * acquired.sum(), rel=0.2)
    loss_share = split.loss[0].sum() / split.training.sum()
    assert loss_share == pytest.approx(0.4, rel=0.2)


def test_acquired_lines_are_kept_exactly(scan, reconstruction):
    kept = reconstruction.kspace[:, :, :, scan.sampled]
    assert np.array_equal(kept, scan.kspace[:, :, :, scan.sampled])
    assert np.abs(reconstruction.kspace[:, :, :, ~scan.sampled]).max() > 0


def test_it_beats_zero_fill_by_far(phantom, scan, reconstruction):
    reference = rss_image(phantom.kspace)
    zero_filled = nmse(reference, rss_image(scan.kspace))
    ours = nmse(reference, rss_image(reconstruction.kspace))
    assert ours < 0.1 * zero_filled
    assert reconstruction.slices[0].epochs >= 1
    assert len(reconstruction.slices[0].validation_losses) == reconstruction.slices[0].epochs + 1


def test_a_seed_gives_the_same_image_twice(scan, reconstruction):
    again = reconstruct_zero_shot(scan, TINY)
    assert np.array_equal(again.kspace, reconstruction.kspace)


def test_the_untrained_network_is_least_squares_sense_from_its_start():
    """Its CNN starts at zero: with the full mask and mu, one unroll solves the normal equations."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(1, 4, 12, 10, dtype=torch.complex64, generator=generator)
    maps = maps / torch.linalg.vector_norm(maps, dim=1, keepdim=True)
    operator = SenseOperator(maps, torch.ones(12, 10, dtype=torch.bool))
    image = torch.randn(1, 12, 10, dtype=torch.complex64, generator=generator)
    network = UnrolledSense(1, unrolls=1, cg_iterations=20, mu=0.5)
    with torch.no_grad():
        found = network(operator, operator.forward(image), torch.zeros_like(image))
    # (A^H A + mu) x = A^H A x_true + mu * 0 with A^H A = I: x = x_true / (1 + mu).
    assert torch.allclose(found, image / 1.5, atol=1e-4)


def test_it_is_a_method_and_says_how_it_trained():
    assert "ssdu" in METHODS
    scan = simulate_scan((32, 32), num_coils=4, snr=30, seed=2).undersampled(2, 12)
    result = reconstruct(scan, "ssdu", device="cpu", iterations=1)
    assert result.method == "ssdu"
    assert result.details["epochs"] == [1]
    assert {"maps_s", "train_s", "total_s"} <= set(result.timings)


def test_a_scan_without_enough_acs_is_refused(phantom):
    scan = phantom.undersampled(3, 4)
    with pytest.raises(InvalidScanError, match="ACS block of at least"):
        reconstruct_zero_shot(scan, TINY)


def test_bad_settings_are_refused():
    with pytest.raises(InvalidScanError, match="start"):
        ZeroShotConfig(start="grappa")
    with pytest.raises(InvalidScanError, match="fractions"):
        ZeroShotConfig(loss_fraction=1.0)
