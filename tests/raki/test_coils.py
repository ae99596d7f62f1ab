"""SVD coil compression: fewer virtual coils that still carry the image, expanded back."""

from __future__ import annotations

import numpy as np
import pytest

from raki.coils import (
    compress_scan,
    fit_compression,
    virtual_coil_count,
)
from raki.errors import InvalidScanError
from raki.fft import rss_image
from raki.metrics import nmse
from raki.phantom import simulate_scan


@pytest.fixture(scope="module")
def scan():
    return simulate_scan((48, 40), num_coils=12, num_slices=2, snr=50.0, seed=3).undersampled(3, 12)


def test_count_follows_the_energy():
    values = np.sqrt(np.array([90.0, 9.0, 0.9, 0.1]))
    assert virtual_coil_count(values, 0.9) == 1
    assert virtual_coil_count(values, 0.99) == 2
    assert virtual_coil_count(values, 0.999) == 3
    assert virtual_coil_count(values, 1.0) == 4


def test_bases_are_orthonormal_and_keep_the_energy(scan):
    compression = fit_compression(scan.acs_kspace(), 0.995)
    assert compression.bases.shape[:2] == (2, 12)
    assert compression.num_virtual < 12
    for basis in compression.bases:
        gram = basis.conj().T @ basis
        np.testing.assert_allclose(gram, np.eye(compression.num_virtual), atol=1e-5)
    assert min(compression.energy_kept) >= 0.995 - 1e-6


def test_round_trip_keeps_the_image_and_the_coil_count(scan):
    compression = fit_compression(scan.acs_kspace(), 0.999)
    virtual = compress_scan(scan, compression)
    assert virtual.num_coils == compression.num_virtual
    assert virtual.acs == scan.acs and np.array_equal(virtual.sampled, scan.sampled)
    expanded = compression.expand(virtual.kspace)
    assert expanded.shape == scan.kspace.shape
    assert nmse(rss_image(scan.kspace), rss_image(expanded)) < 0.01


def test_refusals(scan):
    with pytest.raises(InvalidScanError):
        fit_compression(scan.acs_kspace(), 1.5)
    with pytest.raises(InvalidScanError):
        fit_compression(scan.acs_kspace(), num_virtual=13)
    other = fit_compression(scan.acs_kspace()[:1])
    with pytest.raises(InvalidScanError, match="slice"):
        compress_scan(scan, other)
