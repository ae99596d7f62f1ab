"""The phantom: deterministic, multi-coil, at the SNR asked for."""

import numpy as np
import pytest

from raki.fft import ifft2c, rss_image
from raki.phantom import coil_sensitivities, simulate_scan


def test_same_seed_same_scan_and_different_seed_different_noise():
    first = simulate_scan((32, 24), num_coils=4, seed=3)
    again = simulate_scan((32, 24), num_coils=4, seed=3)
    other = simulate_scan((32, 24), num_coils=4, seed=4)
    np.testing.assert_array_equal(first.kspace, again.kspace)
    assert not np.array_equal(first.kspace, other.kspace)


def test_shape_geometry_and_full_sampling():
    scan = simulate_scan((40, 32), num_coils=12, num_slices=3)
    assert scan.kspace.shape == (3, 12, 40, 32)
    assert scan.kspace.dtype == np.complex64
    assert scan.is_fully_sampled and scan.acceleration == 1
    assert scan.geometry.resolution_mm(scan.matrix) == (1.0, 1.0)
    assert len(scan.geometry.slice_positions_mm) == 3


def test_coil_maps_are_normalised_and_distinct():
    maps = coil_sensitivities(8, (32, 32))
    np.testing.assert_allclose(np.sqrt((np.abs(maps) ** 2).sum(0)), 1.0, rtol=1e-6)
    assert np.abs(maps[0] - maps[4]).max() > 0.1


def test_noise_level_follows_snr():
    noiseless = simulate_scan((64, 64), num_coils=8, snr=np.inf, seed=1)
    noisy = simulate_scan((64, 64), num_coils=8, snr=20.0, seed=1)
    noise = ifft2c(noisy.kspace - noiseless.kspace)
    image = rss_image(noiseless.kspace)[0]
    inside = image > 0.05 * image.max()
    measured = image[inside].mean() / np.sqrt((np.abs(noise) ** 2).sum(1).mean())
    assert 15.0 < measured < 25.0


def test_a_finer_phantom_is_a_window_of_a_finer_objects_spectrum():
    """finer = f: the k-space a scanner would measure of the object drawn f times finer (its
    spectrum's centre, not a period of the coarse image's DFT)."""
    coarse = simulate_scan((32, 24), num_coils=4, snr=np.inf, seed=2, finer=2)
    fine = simulate_scan((64, 48), num_coils=4, snr=np.inf, seed=2)
    window = fine.kspace[..., 16:48, 12:36] / 2
    np.testing.assert_allclose(coarse.kspace, window, rtol=0, atol=1e-4 * np.abs(window).max())
    assert coarse.geometry.fov_mm[:2] == simulate_scan((32, 24), num_coils=4).geometry.fov_mm[:2]
    noisy = simulate_scan((32, 24), num_coils=4, snr=10, seed=2, finer=2)
    noise = noisy.kspace - coarse.kspace
    assert 0 < np.std(noise) < 0.5 * np.std(coarse.kspace)
    with pytest.raises(ValueError, match="finer"):
        simulate_scan((32, 24), finer=0)
