"""GRAPPA on small phantoms: what a user gets back, and what is refused with which message."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from raki.errors import FileFormatError, IncompatibleWeightsError, InvalidScanError
from raki.fft import fft2c, rss_image
from raki.grappa import (
    GrappaKernel,
    apply_grappa,
    automatic_lambda,
    calibrate_grappa,
    closer_than_lattice,
    fit_grappa,
    reconstruct_grappa,
    source_patterns,
)
from raki.metrics import nmse
from raki.phantom import simulate_scan
from raki.sampling import (
    centred_acs_block,
    equispaced_mask,
    rounded_spacing_mask,
    undersample,
)
from raki.scan import Scan

MATRIX = (64, 48)


def accelerated(full: Scan, acceleration: int, acs_lines: int) -> Scan:
    """The fully sampled phantom, retrospectively undersampled on fastMRI's equispaced mask."""
    mask = equispaced_mask(full.matrix[1], acceleration, acs_lines)
    return Scan.from_kspace(undersample(full.kspace, mask), mask, protocol=full.protocol)


@pytest.fixture(scope="module")
def phantom() -> Scan:
    return simulate_scan(matrix=MATRIX, num_coils=8, snr=50.0, seed=0)


@pytest.mark.parametrize("acceleration", [2, 3, 4])
def test_grappa_error_is_far_below_zero_fill(phantom: Scan, acceleration: int) -> None:
    scan = accelerated(phantom, acceleration, 16)
    reference = rss_image(phantom.kspace)
    zero_filled = nmse(reference, rss_image(scan.kspace))
    filled = nmse(reference, rss_image(reconstruct_grappa(scan)))
    assert filled < 0.3 * zero_filled


@pytest.mark.parametrize("acs_lines", [15, 16])
def test_measured_lines_are_kept_and_every_line_is_filled(phantom: Scan, acs_lines: int) -> None:
    scan = accelerated(phantom, 4, acs_lines)
    filled = reconstruct_grappa(scan)
    assert filled.dtype == np.complex64 and filled.shape == scan.kspace.shape
    # Acquired lines, the ACS block included, come back exactly as measured.
    np.testing.assert_array_equal(filled[..., scan.sampled], scan.kspace[..., scan.sampled])
    # Every skipped line is filled, the outermost ones (edge kernels, one side only) too, and
    # closer to the truth than leaving them empty (these lines are mostly noise).
    line_energy = np.sum(np.abs(filled) ** 2, axis=(0, 1, 2))
    assert np.all(line_energy > 0)
    skipped = np.flatnonzero(~scan.sampled)
    assert skipped[0] <= 1 and skipped[-1] == MATRIX[1] - 1
    for edge in (skipped[0], skipped[-1]):
        truth = phantom.kspace[..., edge]
        assert np.linalg.norm(filled[..., edge] - truth) < 0.9 * np.linalg.norm(truth)


def linearly_predictable_kspace(num_coils: int = 8, lines: int = 6) -> np.ndarray:
    """Noiseless k-space [coil, kx, ky] whose every ky line is a linear map of any other.

    The object is a few horizontal lines (delta functions along y) seen by coils whose
    sensitivity varies along y only: across coils, k[:, kx, ky + d] = S diag(z^d) S^+ k[:, kx, ky].
    """
    rng = np.random.default_rng(3)
    nx, ny = MATRIX
    image = np.zeros((num_coils, nx, ny), dtype=np.complex128)
    rows = rng.choice(np.arange(4, ny - 4), size=lines, replace=False)
    for row in rows:
        profile = rng.standard_normal(nx) + 1j * rng.standard_normal(nx)
        sensitivity = rng.standard_normal(num_coils) + 1j * rng.standard_normal(num_coils)
        image[:, :, row] = sensitivity[:, None] * profile[None, :]
    return fft2c(image).astype(np.complex64)


@pytest.mark.parametrize("acceleration", [2, 3, 4])
def test_exactly_predictable_kspace_is_recovered(acceleration: int) -> None:
    truth = linearly_predictable_kspace()
    mask = equispaced_mask(MATRIX[1], acceleration, 12)
    acs = truth[..., centred_acs_block(MATRIX[1], 12).as_slice()]
    weights = calibrate_grappa(acs, acceleration, kernel_size=(3, 2), regularization=1e-9)
    filled = apply_grappa(truth * mask, mask, weights, acceleration, (3, 2))
    error = np.linalg.norm(filled - truth) / np.linalg.norm(truth)
    assert error < 1e-4


def test_each_slice_is_calibrated_on_its_own_acs() -> None:
    volume = accelerated(simulate_scan(matrix=MATRIX, num_coils=8, num_slices=2, seed=1), 3, 12)
    kernel = fit_grappa(volume)
    assert kernel.num_slices == 2
    assert not np.allclose(kernel.weights[0], kernel.weights[1])
    filled = reconstruct_grappa(volume)
    for index in range(2):
        alone = volume.replace(kspace=volume.kspace[index : index + 1])
        np.testing.assert_allclose(filled[index], reconstruct_grappa(alone)[0], rtol=0, atol=1e-3)


def test_noisier_data_gets_more_regularisation() -> None:
    noisy = accelerated(simulate_scan(matrix=MATRIX, num_coils=8, snr=5.0, seed=2), 3, 16)
    clean = accelerated(simulate_scan(matrix=MATRIX, num_coils=8, snr=200.0, seed=2), 3, 16)
    assert fit_grappa(noisy).regularization[0] > 5 * fit_grappa(clean).regularization[0]


def test_automatic_lambda_is_the_one_calibration_chooses() -> None:
    """rRAKI's linear branch damps with it, so it must be exactly GRAPPA's choice."""
    noisy = accelerated(simulate_scan(matrix=MATRIX, num_coils=8, snr=5.0, seed=2), 3, 16)
    acs = noisy.acs_kspace()[0]
    assert automatic_lambda(acs, 3) == fit_grappa(noisy).regularization[0]
    assert (
        automatic_lambda(acs, 3, kernel_size=(5, 2))
        == fit_grappa(noisy, kernel_size=(5, 2)).regularization[0]
    )


def test_saved_kernel_reproduces_the_reconstruction(phantom: Scan, tmp_path) -> None:
    scan = accelerated(phantom, 3, 16)
    kernel = fit_grappa(scan, kernel_size=(5, 4), regularization=1e-3)
    path = tmp_path / "weights.h5"
    kernel.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.h5"]  # no temporary left behind
    loaded = GrappaKernel.load(path)
    assert loaded.kernel_size == (5, 4) and loaded.regularization == (1e-3,)
    assert (loaded.acceleration, loaded.num_coils, loaded.matrix) == (3, 8, MATRIX)
    expected = reconstruct_grappa(scan, kernel_size=(5, 4), regularization=1e-3)
    np.testing.assert_array_equal(reconstruct_grappa(scan, kernel=loaded), expected)
    # The same protocol scanned again (other noise) reuses the weights.
    repeat = accelerated(simulate_scan(matrix=MATRIX, num_coils=8, snr=50.0, seed=5), 3, 16)
    reference = rss_image(simulate_scan(matrix=MATRIX, num_coils=8, snr=50.0, seed=5).kspace)
    reused = nmse(reference, rss_image(reconstruct_grappa(repeat, kernel=loaded)))
    assert reused < 0.3 * nmse(reference, rss_image(repeat.kspace))


def test_incompatible_kernel_is_refused_with_the_reason(phantom: Scan) -> None:
    kernel = fit_grappa(accelerated(phantom, 3, 16))
    four_coils = accelerated(simulate_scan(matrix=MATRIX, num_coils=4, seed=0), 3, 16)
    with pytest.raises(IncompatibleWeightsError, match="4 coils, kernel has 8"):
        reconstruct_grappa(four_coils, kernel=kernel)
    with pytest.raises(IncompatibleWeightsError, match="R=4, kernel has R=3"):
        reconstruct_grappa(accelerated(phantom, 4, 16), kernel=kernel)
    with pytest.raises(IncompatibleWeightsError, match="not the 5x4"):
        reconstruct_grappa(accelerated(phantom, 3, 16), kernel=kernel, kernel_size=(5, 4))
    with pytest.raises(IncompatibleWeightsError, match="takes a GrappaKernel, not dict"):
        reconstruct_grappa(accelerated(phantom, 3, 16), kernel={"weights": kernel.weights})
    with pytest.raises(IncompatibleWeightsError, match="do not fit"):
        apply_grappa(phantom.kspace[0], np.ones(MATRIX[1], bool), kernel.weights[0], 2, (9, 2))


def test_too_small_acs_is_refused_with_what_is_needed(phantom: Scan) -> None:
    scan = accelerated(phantom, 4, 8)
    with pytest.raises(
        InvalidScanError, match="too small for a 5x4 GRAPPA kernel at R=4: at least 13"
    ):
        fit_grappa(scan, kernel_size=(5, 4))
    with pytest.raises(InvalidScanError, match="at least 5 lines"):
        calibrate_grappa(phantom.kspace[0, :, :, :4], 4, kernel_size=(5, 2))


def test_irregular_gaps_are_filled_as_well_as_a_lattice(phantom: Scan) -> None:
    """Each skipped line uses the kernel of its own source pattern, so a mask whose gaps vary
    (fastMRI's) needs no lattice; RAKI, whose networks are dilated by R, refuses it."""
    full = simulate_scan(matrix=(64, 96), num_coils=8, snr=50.0, seed=0)
    mask = rounded_spacing_mask(96, 3, 12, offset=1)
    gaps = set(np.diff(np.flatnonzero(mask)).tolist())
    assert {3, 4} <= gaps
    scan = Scan.from_kspace(undersample(full.kspace, mask), mask)
    assert not scan.is_equispaced
    reference = rss_image(full.kspace)
    irregular = nmse(reference, rss_image(reconstruct_grappa(scan)))
    # Every 4th line, a little more than the irregular mask's gaps of 3 and 4 take away.
    regular = nmse(reference, rss_image(reconstruct_grappa(accelerated(full, 4, 12))))
    assert irregular < 0.3 * nmse(reference, rss_image(scan.kspace))
    assert irregular < regular
    filled = reconstruct_grappa(scan)
    np.testing.assert_array_equal(filled[..., mask], scan.kspace[..., mask])
    from raki.train import check_trainable

    with pytest.raises(InvalidScanError, match="equispaced"):
        check_trainable(scan)


def test_a_gap_wider_than_the_acs_can_calibrate_is_filled_from_what_fits(phantom: Scan) -> None:
    """Sources too far apart for the ACS are dropped farthest first; nothing is refused."""
    mask = equispaced_mask(MATRIX[1], 3, 8)
    mask[:8] = False  # one 9-line gap at the bottom edge: wider than the 8 ACS lines
    mask[0] = True
    scan = Scan.from_kspace(undersample(phantom.kspace, mask), mask)
    filled = reconstruct_grappa(scan)
    reference = rss_image(phantom.kspace)
    assert nmse(reference, rss_image(filled)) < nmse(reference, rss_image(scan.kspace))


def test_unreadable_kernel_file_names_the_file_only(tmp_path) -> None:
    path = tmp_path / "patient_smith" / "weights.h5"
    path.parent.mkdir()
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(FileFormatError) as caught:
        GrappaKernel.load(path)
    assert str(caught.value).startswith("weights.h5: ")
    assert "patient_smith" not in str(caught.value)


def test_source_patterns_are_the_nearest_acquired_lines() -> None:
    """Between lattice lines the lattice's; beside the ACS the closer ACS lines; one side at
    the ky ends."""
    mask = equispaced_mask(24, 4, 6)  # lattice 0, 4, ..., 20; ACS 9..14
    assert np.flatnonzero(mask).tolist() == [0, 4, 8, 9, 10, 11, 12, 13, 14, 16, 20]
    targets = np.array([1, 7, 15, 22])
    patterns = source_patterns(np.flatnonzero(mask), targets, 2)
    assert patterns.tolist() == [[-1, 3], [-3, 1], [-1, 1], [-2, 0]]
    assert closer_than_lattice(mask, 4, 2).nonzero()[0].tolist() == [15]
    # With 4 lines, two below and two above; beside the ACS the two nearest ACS lines.
    assert source_patterns(np.flatnonzero(mask), np.array([7]), 4).tolist() == [[-7, -3, 1, 2]]


def test_lines_beside_the_acs_read_the_closer_acs_lines(phantom: Scan) -> None:
    scan = accelerated(phantom, 4, 18)  # ACS edges off the lattice
    closer = np.flatnonzero(closer_than_lattice(scan.sampled, 4, 2))
    assert closer.size >= 2
    acs = scan.acs_kspace()[0]
    kernel = fit_grappa(scan)
    # The same lambda with the lattice's kernels only (what a kernel without these patterns
    # falls back to).
    lattice_only = apply_grappa(
        scan.kspace[0],
        scan.sampled,
        calibrate_grappa(acs, 4, regularization=kernel.regularization[0]),
        4,
    )
    patterned = reconstruct_grappa(scan, limit_power=False)[0]
    truth = phantom.kspace[0][..., closer]
    error = np.linalg.norm(patterned[..., closer] - truth)
    assert error < 0.7 * np.linalg.norm(lattice_only[..., closer] - truth)
    # Everywhere else the two are the same kernels.
    others = ~scan.sampled
    others[closer] = False
    np.testing.assert_allclose(patterned[..., others], lattice_only[..., others], atol=1e-4)


def test_a_kernel_serves_a_later_scan_whose_acs_sits_elsewhere(phantom: Scan) -> None:
    kernel = fit_grappa(accelerated(phantom, 4, 18))
    later = accelerated(simulate_scan(matrix=MATRIX, num_coils=8, snr=50.0, seed=5), 4, 20)
    reference = rss_image(simulate_scan(matrix=MATRIX, num_coils=8, snr=50.0, seed=5).kspace)
    reused = nmse(reference, rss_image(reconstruct_grappa(later, kernel=kernel)))
    assert reused < 0.3 * nmse(reference, rss_image(later.kspace))


def test_kernel_files_of_the_former_layout_are_refused(tmp_path) -> None:
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as file:
        file.attrs["format"] = "raki-grappa-kernel"
        file.attrs["version"] = 1
    with pytest.raises(FileFormatError, match="older release: fit again"):
        GrappaKernel.load(path)
