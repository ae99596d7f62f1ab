"""Readout-oversampling removal: exact inside the recon FOV, acquired samples kept, weights fit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from raki.errors import InvalidScanError
from raki.fft import rss_image
from raki.methods import reconstruct
from raki.metrics import nmse
from raki.oversampling import (
    crop_kspace,
    crop_readout,
    cropped_readout,
    pad_kspace,
    resolve_oversampling,
    restore_readout,
)
from raki.phantom import simulate_scan
from raki.train import TrainingConfig, train_scan
from raki.weights import RakiWeights


def oversampled_phantom(snr: float = 40.0):
    """A 2x readout-oversampled phantom: the head fills only the central half along x."""
    full = simulate_scan((96, 40), num_coils=6, snr=snr, seed=3)
    return replace(full, geometry=replace(full.geometry, readout_oversampling=2.0))


def test_crop_then_pad_is_exact_for_an_image_inside_the_kept_fov():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 64, 10), dtype=np.complex128)
    image[:, 16:48] = rng.standard_normal((2, 32, 10)) + 1j * rng.standard_normal((2, 32, 10))
    shifted = np.fft.ifftshift(image, axes=1)
    kspace = np.fft.fftshift(np.fft.fft(shifted, axis=1, norm="ortho"), axes=1)
    cropped = crop_kspace(kspace, 32)
    assert cropped.shape == (2, 32, 10)
    np.testing.assert_allclose(pad_kspace(cropped, 64), kspace, atol=1e-5)


def test_cropping_keeps_the_sampling_and_zero_lines():
    scan = oversampled_phantom().undersampled(3, 12)
    cropped = crop_readout(scan, resolve_oversampling(scan, None))
    assert cropped.matrix == (48, scan.matrix[1])
    assert cropped.acceleration == scan.acceleration and cropped.acs == scan.acs
    np.testing.assert_array_equal(cropped.sampled, scan.sampled)
    assert not np.any(cropped.kspace[..., ~scan.sampled])
    assert crop_readout(scan, 1.0) is scan
    assert cropped_readout(96, 2.0) == 48
    with pytest.raises(InvalidScanError, match="oversampling"):
        cropped_readout(96, 0.5)


def test_restore_keeps_every_acquired_sample_as_measured():
    scan = oversampled_phantom().undersampled(3, 12)
    cropped = crop_readout(scan, 2.0)
    restored = restore_readout(scan, cropped.kspace)
    np.testing.assert_array_equal(restored[..., scan.sampled], scan.kspace[..., scan.sampled])


def test_raki_on_the_cropped_readout_keeps_the_image_and_weights_round_trip(tmp_path):
    full = oversampled_phantom()
    scan = full.undersampled(3, 12)
    reference = rss_image(full.kspace)
    config = TrainingConfig(iterations=80, grappa_share=0.0, readout_oversampling=2.0)
    kept = reconstruct(
        scan, "raki", device="cpu", config=replace(config, iterations=2, readout_oversampling=1.0)
    )
    assert kept.details["hyperparameters"]["trained_readout"] == 96
    weights = train_scan(scan, "raki", device="cpu", config=config)
    assert weights.hyperparameters["readout_oversampling"] == 2.0
    assert weights.hyperparameters["trained_readout"] == 48
    assert weights.matrix == scan.matrix
    cropped = reconstruct(scan, "raki", device="cpu", weights=weights)
    assert cropped.image.shape == kept.image.shape
    np.testing.assert_array_equal(cropped.kspace[..., scan.sampled], scan.kspace[..., scan.sampled])
    zerofilled = nmse(reference, rss_image(scan.kspace))
    assert nmse(reference, cropped.image) < 0.5 * zerofilled
    loaded = RakiWeights.load(weights.save(tmp_path / "w.pt"))
    again = reconstruct(scan, "raki", device="cpu", weights=loaded)
    np.testing.assert_allclose(again.kspace, cropped.kspace, rtol=1e-5, atol=1e-6)


def test_by_default_rraki_removes_the_declared_oversampling_and_raki_does_not():
    from raki.train import readout_factor

    scan = oversampled_phantom().undersampled(3, 12)
    assert readout_factor(scan, "rraki", None) == 2.0
    assert readout_factor(scan, "raki", None) == 1.0
    assert readout_factor(scan, "raki", 2.0) == 2.0
    assert readout_factor(scan, "rraki", 1.0) == 1.0
    plain = simulate_scan((48, 40), num_coils=4, seed=1).undersampled(3, 12)
    assert readout_factor(plain, "rraki", None) == 1.0
    weights = train_scan(scan, "rraki", device="cpu", config=TrainingConfig(iterations=3))
    assert weights.hyperparameters["trained_readout"] == 48
    assert TrainingConfig.faithful().readout_oversampling == 1.0


def test_default_rraki_reconstructs_an_oversampled_scan_and_reuses_its_weights(tmp_path):
    """rraki's GRAPPA half is fitted on the cropped readout: weights must still apply."""
    full = oversampled_phantom()
    scan = full.undersampled(3, 12)
    weights = train_scan(scan, "rraki", device="cpu", config=TrainingConfig(iterations=20))
    assert weights.grappa is not None and weights.grappa.matrix == (48, scan.matrix[1])
    done = reconstruct(scan, "rraki", device="cpu", weights=weights)
    assert done.image.shape == (1, *scan.matrix)
    np.testing.assert_array_equal(done.kspace[..., scan.sampled], scan.kspace[..., scan.sampled])
    assert nmse(rss_image(full.kspace), done.image) < 0.5 * nmse(
        rss_image(full.kspace), rss_image(scan.kspace)
    )
    loaded = RakiWeights.load(weights.save(tmp_path / "rraki.pt"))
    again = reconstruct(scan, "rraki", device="cpu", weights=loaded)
    np.testing.assert_allclose(again.kspace, done.kspace, rtol=1e-5, atol=1e-6)


def test_a_factor_of_one_keeps_every_readout_point():
    for readout in (9, 13, 49, 64, 641):
        assert cropped_readout(readout, 1.0) == readout


def test_the_default_method_runs_on_a_readout_as_narrow_as_grappas_kernel():
    scan = simulate_scan((9, 40), num_coils=4).undersampled(3, 8)
    result = reconstruct(scan, "rraki", iterations=2)
    assert result.image.shape == (1, 9, 40)


def test_the_declared_oversampling_stays_where_anatomy_reaches_the_outer_band():
    """rraki removes what the header declares only where the outer readout band is empty."""
    from raki.oversampling import OUTER_SIGNAL_RATIO, outer_band_signal_ratio
    from raki.train import readout_factor

    def declared(matrix, snr):
        scan = simulate_scan(matrix, num_coils=4, snr=snr, seed=0).undersampled(4, 24)
        return replace(scan, geometry=replace(scan.geometry, readout_oversampling=2.0))

    empty, noisy, reaching = (
        declared((128, 64), 30),
        declared((128, 64), 5),
        declared((128, 80), 30),
    )
    assert outer_band_signal_ratio(empty, 2.0) < OUTER_SIGNAL_RATIO
    assert outer_band_signal_ratio(noisy, 2.0) < OUTER_SIGNAL_RATIO  # noise alone is no anatomy
    assert outer_band_signal_ratio(reaching, 2.0) > OUTER_SIGNAL_RATIO
    assert readout_factor(empty, "rraki", None) == 2.0
    assert readout_factor(reaching, "rraki", None) == 1.0
    assert readout_factor(reaching, "rraki", 2.0) == 2.0  # an explicit request is obeyed
