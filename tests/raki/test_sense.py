"""Regularised SENSE (`--method cs`): the phantom's known image comes back, lines stay measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raki.errors import InvalidScanError
from raki.espirit import espirit_maps
from raki.fft import rss_image
from raki.io import read_scan
from raki.methods import reconstruct
from raki.metrics import nmse
from raki.phantom import coil_sensitivities, simulate_scan
from raki.sense import (
    L1_WEIGHT_SCALE,
    SOFT_WEIGHT_SCALE,
    automatic_weight,
    cg_sense,
    l1_wavelet_sense,
    p_shrink,
    reconstruct_sense,
    shifted_threshold,
    soft_threshold,
    weight_on_grid,
)
from raki.sense_operator import SenseOperator, coil_kspace, extended_size, fft2c
from raki.wavelet import DAUBECHIES, Wavelet2d, level_matrix, possible_levels


@pytest.fixture(scope="module")
def clean_phantom():
    return simulate_scan((64, 48), num_coils=8, snr=np.inf, seed=3)


@pytest.fixture(scope="module")
def noisy_phantom():
    return simulate_scan((64, 48), num_coils=8, snr=10, seed=3)


def test_operator_adjoint_is_the_adjoint():
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 4, 16, 12, dtype=torch.complex64, generator=generator)
    sampled = torch.arange(12) % 3 == 0
    operator = SenseOperator(maps, sampled)
    image = torch.randn(2, 16, 12, dtype=torch.complex64, generator=generator)
    kspace = torch.randn(4, 16, 12, dtype=torch.complex64, generator=generator)
    left = torch.vdot(operator.forward(image).flatten(), kspace.flatten())
    right = torch.vdot(image.flatten(), operator.adjoint(kspace).flatten())
    assert abs(complex(left) - complex(right)) < 1e-3 * abs(complex(left))


@pytest.mark.parametrize("shape", [(64, 48), (20, 12), (63, 64), (9, 7)])
@pytest.mark.parametrize("name", ["db1", "db2", "db4"])
def test_wavelet_is_orthogonal(shape, name):
    transform = Wavelet2d(shape, name)
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, *shape, dtype=torch.complex64, generator=generator)
    coefficients = transform.forward(image)
    assert torch.linalg.vector_norm(coefficients) == pytest.approx(
        float(torch.linalg.vector_norm(image)), rel=1e-5
    )
    assert torch.allclose(transform.inverse(coefficients), image, atol=1e-5)


@pytest.mark.parametrize("acceleration", [2, 3, 4])
def test_cg_sense_with_the_true_maps_gives_the_phantom_back(clean_phantom, acceleration):
    scan = clean_phantom.undersampled(acceleration, 16)
    maps = coil_sensitivities(8, scan.matrix)[None]
    operator = SenseOperator.build(maps, scan.sampled)
    measured = torch.from_numpy(scan.kspace[0])
    image, _ = cg_sense(operator, measured, 0.0, iterations=100, tolerance=1e-7)
    filled = coil_kspace(operator, image, measured).numpy()[None]
    assert nmse(rss_image(clean_phantom.kspace), rss_image(filled)) < 1e-6


@pytest.mark.parametrize("acceleration", [2, 3, 4])
def test_cg_sense_with_espirit_maps_recovers_the_phantom_and_keeps_acquired_lines(
    clean_phantom, acceleration
):
    scan = clean_phantom.undersampled(acceleration, 16)
    # The simulated phantom's k-space is one period of a discrete image's spectrum: the model
    # on the measured matrix is exact for it (the extended grid is for scanners' data, below).
    result = reconstruct_sense(scan, "tikhonov", weight=0.0, grid="measured")
    assert nmse(rss_image(clean_phantom.kspace), rss_image(result.kspace)) < 1e-3
    assert np.array_equal(result.kspace[..., scan.sampled], scan.kspace[..., scan.sampled])
    assert result.map_sets == [1] and result.weights == [0.0]


def nmse_of(scan, full, **options) -> float:
    return nmse(rss_image(full.kspace), rss_image(reconstruct_sense(scan, **options).kspace))


def test_l1_wavelet_with_the_automatic_weight_beats_zero_fill_and_plain_sense(noisy_phantom):
    scan = noisy_phantom.undersampled(4, 16)
    automatic = nmse_of(scan, noisy_phantom)
    plain = nmse_of(scan, noisy_phantom, regularizer="tikhonov", weight=0.0)
    zero_filled = nmse(rss_image(noisy_phantom.kspace), rss_image(scan.kspace))
    assert automatic < 0.3 * plain
    assert automatic < 0.1 * zero_filled
    tikhonov = nmse_of(scan, noisy_phantom, regularizer="tikhonov")
    assert tikhonov < plain


def test_automatic_weight_is_near_the_best_weight_by_reference(noisy_phantom):
    scan = noisy_phantom.undersampled(4, 16)
    automatic = reconstruct_sense(scan)
    chosen = automatic.weights[0]
    factors = 2.0 ** np.arange(-3, 4)
    scores = [nmse_of(scan, noisy_phantom, weight=chosen * f) for f in factors]
    best = factors[int(np.argmin(scores))]
    assert 1 / 3 <= best <= 3
    assert scores[3] <= 1.2 * min(scores)


def test_a_shifted_threshold_moves_the_grid_and_not_the_image():
    transform = Wavelet2d((32, 24), "db2")
    threshold = torch.where(transform.detail_mask(), 0.3, 0.0).float()
    image = torch.randn(
        1, 32, 24, dtype=torch.complex64, generator=torch.Generator().manual_seed(2)
    )
    unshifted = transform.inverse(soft_threshold(transform.forward(image), threshold))
    assert torch.allclose(shifted_threshold(transform, image, threshold, (0, 0)), unshifted)
    # A whole period of the coarsest level is the same grid; one pixel is a different one.
    period = 2**transform.levels
    same = shifted_threshold(transform, image, threshold, (period, 2 * period))
    assert torch.allclose(same, unshifted, atol=1e-5)
    assert not torch.allclose(shifted_threshold(transform, image, threshold, (1, 0)), unshifted)


def test_p_shrinkage_is_soft_thresholding_at_p_1_and_spares_large_coefficients_below():
    values = torch.tensor([0.5, -2.0, 3j, 10.0 + 0j, 0.0], dtype=torch.complex64)
    soft = torch.tensor([0.0, -1.0, 2j, 9.0, 0.0], dtype=torch.complex64)
    assert torch.allclose(p_shrink(values, 1.0, 1.0), soft)
    assert torch.allclose(soft_threshold(values, 1.0), soft)
    half = p_shrink(values, 1.0, 0.5)
    # |v| - T^1.5 |v|^-0.5: zero below the threshold, phase kept, large values nearly kept.
    expected = [0.0, -(2.0 - 2.0**-0.5), 1j * (3.0 - 3.0**-0.5), 10.0 - 10.0**-0.5, 0.0]
    assert torch.allclose(half, torch.tensor(expected, dtype=torch.complex64))
    assert torch.all(half.abs() >= soft.abs())
    with pytest.raises(ValueError, match="p-shrinkage takes p"):
        l1_wavelet_sense(
            SenseOperator(torch.ones(1, 1, 8, 8, dtype=torch.complex64), torch.ones(8, dtype=bool)),
            torch.zeros(1, 8, 8, dtype=torch.complex64),
            0.1,
            p=1.5,
        )


def test_two_grids_and_p_shrinkage_beat_one_grid_and_soft_thresholding(noisy_phantom):
    scan = noisy_phantom.undersampled(4, 16)
    acs = scan.acs_kspace()[0]
    maps = espirit_maps(acs, scan.matrix)
    operator = SenseOperator.build(maps.maps, scan.sampled)
    measured = torch.from_numpy(scan.kspace[0])
    lam = automatic_weight("wavelet", maps, acs)
    reference = rss_image(noisy_phantom.kspace)

    def error(weight: float = lam, **options) -> float:
        image, _ = l1_wavelet_sense(operator, measured, weight, **options)
        return nmse(reference, rss_image(coil_kspace(operator, image, measured).numpy()[None]))

    assert error(spins=2, p=1.0) < error(spins=1, p=1.0)
    # The default (two grids, p = 1/2 at its weight) against soft thresholding on one grid at
    # the weight it had (0.18 sigma instead of 0.6 sigma).
    soft_weight = lam * 0.18 / L1_WEIGHT_SCALE
    assert error() < 0.9 * error(soft_weight, spins=1, p=1.0)
    # Without shifts every grid is the same: spins change nothing.
    assert error(shifts=False, spins=3) == pytest.approx(error(shifts=False, spins=1), rel=1e-6)
    with pytest.raises(ValueError, match="at least one grid"):
        l1_wavelet_sense(operator, measured, lam, spins=0)


def test_cs_is_a_method_with_timings_and_details(noisy_phantom):
    scan = noisy_phantom.undersampled(3, 16)
    result = reconstruct(scan, "cs", device="cpu", iterations=20)
    assert result.method == "cs"
    assert result.image.shape == (1, 64, 48)
    assert {"maps_s", "solve_s", "total_s"} <= set(result.timings)
    assert result.details["regularizer"] == "wavelet"
    assert result.details["weight_rule"] == "automatic"
    assert result.details["iterations"] == [20]
    tikhonov = reconstruct(scan, "cs", device="cpu", regularizer="tikhonov")
    assert tikhonov.details["regularizer"] == "tikhonov"


def test_what_cs_cannot_do_is_refused(noisy_phantom):
    with pytest.raises(InvalidScanError, match="ACS block of at least 6"):
        reconstruct(noisy_phantom.undersampled(4, 4), "cs", device="cpu")
    with pytest.raises(InvalidScanError, match="unknown regulariser"):
        reconstruct(noisy_phantom.undersampled(4, 16), "cs", regularizer="tv")


@pytest.mark.parametrize(
    ("name", "acs_lines", "map_sets"),
    [("brain_16ch_64x64.h5", 20, [1]), ("brain_8ch_320x168.h5", 32, [2])],
)
def test_real_brains_at_r4_beat_grappa(shared_data, name, acs_lines, map_sets):
    path = shared_data / name
    if not path.is_file():
        pytest.skip(f"{name} is absent")
    full = read_scan(path)
    scan = full.undersampled(4, acs_lines)
    reference = rss_image(full.kspace)
    cs = reconstruct(scan, "cs", device="cpu")
    assert cs.details["map_sets"] == map_sets
    # Measured 0.4x and 0.35x GRAPPA's NMSE (docs/benchmarks.md).
    assert nmse(reference, cs.image) < 0.6 * nmse(reference, reconstruct(scan, "grappa").image)


def test_l1_wavelet_is_soft_thresholding_at_its_own_weight(noisy_phantom):
    """The classic L1 (BART's pics -R W) stays available beside the default p-shrinkage."""
    scan = noisy_phantom.undersampled(3, 16)
    acs = scan.acs_kspace()[0]
    maps = espirit_maps(acs, scan.matrix)
    wavelet, l1 = (automatic_weight(name, maps, acs) for name in ("wavelet", "l1-wavelet"))
    assert l1 / wavelet == pytest.approx(SOFT_WEIGHT_SCALE / L1_WEIGHT_SCALE)
    classic = reconstruct_sense(scan, "l1-wavelet", iterations=10, grid="measured")
    operator = SenseOperator.build(maps.maps, scan.sampled)
    measured = torch.from_numpy(scan.kspace[0])
    image, _ = l1_wavelet_sense(operator, measured, l1, iterations=10, p=1.0)
    expected = coil_kspace(operator, image, measured).numpy()
    np.testing.assert_allclose(classic.kspace[0], expected, atol=1e-5 * np.abs(expected).max())
    assert classic.regularizer == "l1-wavelet"


@pytest.mark.parametrize(
    ("size", "extended"), [(96, 120), (64, 72), (168, 192), (320, 360), (48, 64), (640, 720)]
)
def test_the_extended_grid_grows_each_axis_by_an_eighth_to_an_fft_friendly_size(size, extended):
    assert extended_size(size) == extended
    assert (extended - size) % 2 == 0 and extended % 8 == 0
    assert extended_size(size, 0.0) == size
    assert extended_size(45) % 2 == 1  # odd sizes stay odd: the same padding on both sides


def test_the_extended_operator_crops_to_the_measured_window_and_its_adjoint_pads():
    generator = torch.Generator().manual_seed(4)
    maps = torch.randn(1, 3, 20, 16, dtype=torch.complex64, generator=generator)
    operator = SenseOperator(maps, torch.arange(12) % 2 == 0, (14, 12))
    image = torch.randn(1, 20, 16, dtype=torch.complex64, generator=generator)
    kspace = torch.randn(3, 14, 12, dtype=torch.complex64, generator=generator)
    assert operator.forward(image).shape == (3, 14, 12)
    full = fft2c(operator.coil_images(image))
    torch.testing.assert_close(operator.predict(image), full[:, 3:17, 2:14])
    left = torch.vdot(operator.forward(image).flatten(), kspace.flatten())
    right = torch.vdot(image.flatten(), operator.adjoint(kspace).flatten())
    assert abs(complex(left) - complex(right)) < 1e-3 * abs(complex(left))


def test_a_given_weight_means_the_same_on_either_grid():
    assert weight_on_grid("wavelet", 2.0, (64, 48), (64, 48)) == 2.0
    assert weight_on_grid("wavelet", 2.0, (64, 48), (128, 96)) == pytest.approx(1.0)
    assert weight_on_grid("tikhonov", 2.0, (64, 48), (128, 96)) == 2.0


@pytest.mark.parametrize("finer", [1, 3])
def test_cs_is_best_on_the_grid_that_matches_how_the_k_space_was_made(finer):
    """A scanner measures a window of an object's spectrum (finer = 3 here): the periodic model
    wraps its edges and cs on the extended grid wins. k-space made by an FFT of an image
    (finer = 1) is exactly periodic: the measured grid wins."""
    full = simulate_scan((64, 48), num_coils=12, snr=np.inf, seed=3, finer=finer)
    scan = full.undersampled(3, 16)
    scores = {grid: nmse_of(scan, full, grid=grid) for grid in ("extended", "measured")}
    better, worse = ("extended", "measured") if finer > 1 else ("measured", "extended")
    assert scores[better] < 0.2 * scores[worse], scores
    result = reconstruct_sense(scan)
    assert result.grid == "extended" and result.grid_size == (72, 64)
    assert result.details()["grid_size"] == [72, 64]


def test_a_volume_is_its_slices_reconstructed_alone_and_its_facts_in_slice_order():
    """Slices are solved middle first (auto's test left that slice's maps in the cache): the
    order must change nothing."""
    scan = simulate_scan((40, 32), num_coils=6, num_slices=4, snr=20, seed=1).undersampled(3, 12)
    volume = reconstruct_sense(scan)
    for index in range(scan.num_slices):
        alone = reconstruct_sense(scan.replace(kspace=scan.kspace[index : index + 1]))
        np.testing.assert_array_equal(alone.kspace[0], volume.kspace[index])
        assert alone.weights[0] == volume.weights[index]
        assert alone.noise_levels[0] == volume.noise_levels[index]
    assert len(volume.iterations) == len(volume.map_sets) == scan.num_slices


@pytest.mark.parametrize("shape", [(64, 48), (20, 12), (63, 64)])
@pytest.mark.parametrize("name", ["db1", "db2", "db4"])
def test_the_polyphase_wavelet_is_the_level_matrices(shape, name):
    """Each level is computed as polyphase sums; the definition is `level_matrix`'s rows."""
    lowpass = DAUBECHIES[name]
    image = torch.randn(
        2, *shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(7)
    )
    expected = image.numpy().astype(np.complex128)
    axis_levels = [possible_levels(n, len(lowpass)) for n in shape]
    sizes = shape
    for level in range(max(axis_levels)):
        nx, ny = sizes
        block = expected[..., :nx, :ny]
        if level < axis_levels[0]:
            block = level_matrix(nx, lowpass) @ block
        if level < axis_levels[1]:
            block = block @ level_matrix(ny, lowpass).T
        expected[..., :nx, :ny] = block
        sizes = tuple(
            n // 2 if level < axes else n for n, axes in zip(sizes, axis_levels, strict=True)
        )
    np.testing.assert_allclose(Wavelet2d(shape, name).forward(image).numpy(), expected, atol=2e-6)
