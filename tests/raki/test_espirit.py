"""ESPIRiT coil maps: the phantom's known sensitivities come back, a wrapped FOV gets two sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raki.errors import InvalidScanError
from raki.espirit import espirit_maps, scan_maps, voxel_eigh
from raki.fft import fft2c, ifft2c
from raki.io import read_scan
from raki.phantom import anatomy, coil_sensitivities, simulate_scan
from raki.sampling import centred_acs_block


def projection_error(coil_images: np.ndarray, maps: np.ndarray) -> float:
    """|x - S S^H x| / |x|: how much of the coil images the maps cannot express."""
    projected = np.einsum("scxy,sdxy,dxy->cxy", maps, maps.conj(), coil_images)
    return float(np.linalg.norm(coil_images - projected) / np.linalg.norm(coil_images))


def acs_of(kspace: np.ndarray, lines: int) -> np.ndarray:
    return kspace[..., centred_acs_block(kspace.shape[-1], lines).as_slice()]


def test_phantom_sensitivities_come_back_up_to_a_common_phase():
    full = simulate_scan((64, 48), num_coils=8, snr=np.inf, seed=3)
    kspace = full.kspace[0]
    found = espirit_maps(acs_of(kspace, 20), full.matrix)
    assert found.sets == 1
    true = coil_sensitivities(8, full.matrix)
    head = np.abs(ifft2c(kspace)).sum(axis=0) > 0.05 * np.abs(ifft2c(kspace)).sum(axis=0).max()
    # Per voxel the maps are one unit vector over the coils: the true one times a phase.
    agreement = np.abs(np.sum(true.conj() * found.maps[0], axis=0))
    assert agreement[head].min() > 0.99
    assert found.eigenvalues[0][head].min() > 0.95
    assert projection_error(ifft2c(kspace), found.maps) < 0.01


def test_a_wrapped_field_of_view_gets_a_second_map_set():
    # The head spans 42 of 64 ky pixels; every second ky line gives a 32-pixel FOV that it
    # overfills, so near both edges two head positions fold onto one voxel.
    matrix = (64, 64)
    whole = fft2c(coil_sensitivities(8, matrix) * anatomy(matrix))
    folded = whole[:, :, ::2]
    assert espirit_maps(acs_of(whole, 32), matrix).sets == 1
    wrapped = espirit_maps(acs_of(folded, 16), (64, 32))
    assert wrapped.sets == 2
    one_set = espirit_maps(acs_of(folded, 16), (64, 32), max_sets=1)
    assert projection_error(ifft2c(folded), wrapped.maps) < 0.2 * projection_error(
        ifft2c(folded), one_set.maps
    )


def test_noise_level_of_the_acs_is_the_added_noise():
    noisy = simulate_scan((64, 48), num_coils=8, snr=20, seed=2, noise_correlation=0.0)
    clean = simulate_scan((64, 48), num_coils=8, snr=np.inf, seed=2)
    sigma = float(np.sqrt(np.mean(np.abs(noisy.kspace - clean.kspace) ** 2)))
    found = espirit_maps(acs_of(noisy.kspace[0], 24), noisy.matrix)
    assert found.noise_level == pytest.approx(sigma, rel=0.2)
    # Without noise only what the signal subspace leaves out of the phantom's sharp edges.
    assert espirit_maps(acs_of(clean.kspace[0], 24), clean.matrix).noise_level < 0.5 * sigma


def test_every_slice_gets_its_maps_and_too_small_an_acs_is_refused():
    scan = simulate_scan((48, 40), num_coils=4, num_slices=2, snr=30, seed=1).undersampled(3, 12)
    maps = scan_maps(scan)
    assert [m.maps.shape for m in maps] == [(1, 4, 48, 40)] * 2
    assert np.allclose(np.sum(np.abs(maps[0].maps) ** 2, axis=1)[maps[0].eigenvalues > 0.8], 1)
    with pytest.raises(InvalidScanError, match="calibration block"):
        espirit_maps(scan.acs_kspace()[0][..., :4], scan.matrix)


def test_real_eight_coil_brain_wraps_and_gets_two_sets(shared_data):
    path = shared_data / "brain_8ch_320x168.h5"
    if not path.is_file():
        pytest.skip("brain_8ch_320x168.h5 is absent")
    scan = read_scan(path).undersampled(4, 32)
    found = espirit_maps(scan.acs_kspace()[0], scan.matrix)
    assert found.sets == 2


def test_maps_of_the_same_acs_are_calibrated_once():
    scan = simulate_scan((48, 40), num_coils=6, snr=30, seed=5).undersampled(3, 16)
    acs = scan.acs_kspace()[0]
    first = espirit_maps(acs, scan.matrix)
    assert espirit_maps(acs.copy(), scan.matrix) is first  # keyed by content, not identity
    assert espirit_maps(acs, (56, 48)) is not first  # another grid is another calibration
    assert not first.maps.flags.writeable  # shared: nobody may change them
    changed = acs.copy()
    changed[0, 0, 0] += 1
    assert espirit_maps(changed, scan.matrix) is not first


def test_the_voxel_eigendecomposition_on_threads_is_torchs():
    generator = torch.Generator().manual_seed(6)
    factors = torch.randn(500, 8, 3, dtype=torch.complex64, generator=generator)
    operators = factors @ factors.mH
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        values, vectors = voxel_eigh(operators)
    finally:
        torch.set_num_threads(threads)
    expected_values, expected_vectors = torch.linalg.eigh(operators)
    torch.testing.assert_close(values, expected_values)
    overlap = (expected_vectors[..., -1].conj() * vectors[..., -1]).sum(-1).abs()
    torch.testing.assert_close(overlap, torch.ones_like(overlap), atol=1e-4, rtol=0)
