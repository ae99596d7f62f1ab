"""rRAKI's linear branch start: GRAPPA's complex two-line kernel inside the networks' field."""

import numpy as np
import pytest
import torch
from torch.nn import functional

from raki.fft import rss_image
from raki.fit import fit_networks
from raki.grappa import reconstruct_grappa
from raki.linear_branch import (
    UNDERDETERMINED_RATE_SCALE,
    complex_channels,
    fit_linear_kernel,
    linear_rate_scale,
    real_kernel,
    tikhonov,
)
from raki.methods import blind_spots, fill_slice, lattice_offset
from raki.metrics import nmse
from raki.model import RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES, to_channels
from raki.phantom import simulate_scan
from raki.train import TrainingConfig, _start_networks, train_scan


def complex_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    parts = torch.randn(2, *shape, generator=generator, dtype=torch.float64)
    return torch.complex(parts[0], parts[1])


def test_the_real_convolution_computes_the_complex_product():
    """conv2d with `real_kernel(W)` on real/imaginary channels is W applied to complex data."""
    coils, acceleration = 3, 3
    acs = complex_noise((coils, 12, 9), seed=1)
    kernel = complex_noise(
        (coils * (acceleration - 1), coils, RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES), seed=2
    )
    channels = torch.cat([acs.real, acs.imag])[None]
    convolved = functional.conv2d(
        channels, real_kernel(kernel, acceleration), dilation=(1, acceleration)
    )
    expected = functional.conv2d(acs[None], kernel, dilation=(1, acceleration))
    torch.testing.assert_close(complex_channels(convolved[0]), expected[0])


def test_tikhonov_recovers_an_exact_relation_and_damping_shrinks_it():
    patches = complex_noise((12, 80), seed=3)
    truth = complex_noise((4, 12), seed=4)
    torch.testing.assert_close(tikhonov(patches, truth @ patches, 0.0), truth)
    norms = [float(tikhonov(patches, truth @ patches, lam).abs().norm()) for lam in (1e-3, 1, 100)]
    assert norms == sorted(norms, reverse=True) and norms[-1] < 0.1 * float(truth.abs().norm())


def test_the_start_reads_two_lines_and_fills_as_well_as_grappa_where_it_sees_data():
    """Before any training the branch alone matches GRAPPA, once the samples whose field
    reaches past the k-space (`blind_spots`) take GRAPPA's prediction as rraki does."""
    full = simulate_scan((64, 48), num_coils=6, snr=40.0, seed=5)
    scan = full.undersampled(3, 16)
    acs = scan.acs_kspace()[0]
    inputs = torch.from_numpy(to_channels(acs / np.abs(acs).max()))[None]
    kernel = fit_linear_kernel(inputs, 3, 1e-4)
    assert kernel.shape == (2 * 6 * 2, 2 * 6, RECEPTIVE_KX, RECEPTIVE_LATTICE_LINES)
    assert torch.count_nonzero(kernel[..., 2]) == 0 and torch.count_nonzero(kernel[..., :2]) > 0

    networks, scale, *_ = _start_networks(acs, 3, "rraki", TrainingConfig())
    with torch.no_grad():
        networks.cnn.layer3.weight.zero_()  # the branch alone
    kspace, offset = scan.kspace[0], lattice_offset(scan)
    predicted = fill_slice(networks, kspace, 3, offset, scale, torch.device("cpu"))
    grappa = reconstruct_grappa(scan)
    branch = np.where(blind_spots(scan.matrix, 3, offset), grappa[0], predicted)
    branch = np.where(scan.sampled, kspace, branch)[None]
    reference = rss_image(full.kspace)
    grappa_error = nmse(reference, rss_image(grappa))
    assert nmse(reference, rss_image(branch)) < 1.2 * grappa_error


def test_blind_spots_are_the_readout_margins_and_the_lines_past_the_last_full_lattice():
    blind = blind_spots((16, 12), 3, offset=1)  # acquired lines 1, 4, 7, 10
    assert blind[:3].all() and blind[-3:].all()
    inside = blind[3:-3]
    # Line 0's anchor is -2 (outside); lines 1..6 use 1, 4, 7 or 4, 7, 10; 7.. need 13.
    assert inside.all(axis=0).tolist() == [True] + [False] * 6 + [True] * 5


def test_the_branch_learns_slower_only_where_the_acs_underdetermines_it():
    """16 coils: 32 x 7 x 3 = 672 weights per output. 58 readout x 8 ky positions (464
    equations) underdetermine them; 90 x 16 (1440) do not."""
    assert linear_rate_scale(32, 58, 8) == UNDERDETERMINED_RATE_SCALE
    assert linear_rate_scale(32, 90, 16) == 1.0
    assert linear_rate_scale(32, 672, 1) == 1.0


def test_the_branch_rate_scale_reaches_adam_and_the_weights_record():
    """Adam's first step moves each weight by about its rate: the branch by a tenth of the
    CNN's when scaled; a small ACS resolves to the scale and the weights keep it."""
    full = simulate_scan((32, 48), num_coils=8, snr=40.0, seed=6)
    scan = full.undersampled(4, 12)  # 26 readout x 4 ky positions against 16 x 21 weights
    acs = scan.acs_kspace()[0]
    steps = {}
    for rate_scale in (1.0, 0.1):
        networks, _, inputs, targets = _start_networks(acs, 4, "rraki", TrainingConfig())
        before = networks.linear.weight.detach().clone()
        fit_networks(
            networks,
            inputs,
            targets,
            4,
            iterations=1,
            learning_rate=1e-3,
            linear_rate_scale=rate_scale,
        )
        steps[rate_scale] = float((networks.linear.weight.detach() - before).abs().max())
    assert steps[1.0] == pytest.approx(1e-3, rel=0.05)
    assert steps[0.1] == pytest.approx(1e-4, rel=0.05)

    weights = train_scan(scan, "rraki", iterations=2)
    assert weights.hyperparameters["linear_rate_scale"] == UNDERDETERMINED_RATE_SCALE
    assert train_scan(scan, "raki", iterations=2).hyperparameters["linear_rate_scale"] is None
