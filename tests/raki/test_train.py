"""Training on the ACS: what the networks see, that fused training is separate training, limits."""

import numpy as np
import pytest
import torch

from raki.errors import InvalidScanError
from raki.model import build_networks
from raki.phantom import simulate_scan
from raki.sampling import centred_acs_block, equispaced_mask
from raki.scan import Scan
from raki.train import (
    TrainingConfig,
    check_trainable,
    fit_networks,
    minimum_acs_lines,
    train_scan,
    training_pair,
)
from tests.raki.test_model import single_network_from


def undersampled(full: Scan, acceleration: int, acs_lines: int) -> Scan:
    """Every R-th line plus exactly `acs_lines` centred ACS lines (a lattice line beside the
    block does not count as ACS)."""
    mask = equispaced_mask(full.matrix[1], acceleration, acs_lines)
    acs = centred_acs_block(full.matrix[1], acs_lines)
    return Scan.from_kspace(full.kspace * mask, mask, acs=acs, acceleration=acceleration)


def test_targets_are_the_lines_after_the_first_source_line():
    channels, kx, lines, acceleration = 4, 12, 11, 3
    acs = torch.arange(channels * kx * lines, dtype=torch.float32).reshape(channels, kx, lines)
    inputs, targets = training_pair(acs, acceleration)
    assert inputs.shape == (1, channels, kx, lines)
    assert targets.shape == (1, channels * 2, kx - 6, lines - 6)
    # Output channel 2 n + (j - 1) of position (x, y) is ACS channel n at (x + 3, y + j).
    for n, j, x, y in [(0, 1, 0, 0), (3, 2, 5, 4), (1, 1, 2, 3)]:
        assert targets[0, 2 * n + j - 1, x, y] == acs[n, x + 3, y + j]


def test_fused_training_gives_the_weights_of_separate_training():
    """One Adam over the fused module = one Adam per network: losses and Adam's state split."""
    coils, acceleration, iterations = 2, 3, 40
    generator = torch.Generator().manual_seed(1)
    acs = torch.randn(2 * coils, 16, 10, generator=generator, dtype=torch.float64)
    inputs, targets = training_pair(acs, acceleration)
    fused = build_networks("raki", coils, acceleration, generator=generator).double()
    singles = [single_network_from(fused, n).double() for n in range(2 * coils)]

    fit_networks(fused, inputs, targets, acceleration, iterations=iterations)
    outputs = acceleration - 1
    for n, single in enumerate(singles):
        own_targets = targets[:, n * outputs : (n + 1) * outputs]
        fit_networks(single, inputs, own_targets, acceleration, iterations=iterations)
        trained_alone = single_network_from(fused, n).double()
        for alone, together in zip(single.parameters(), trained_alone.parameters(), strict=True):
            torch.testing.assert_close(alone, together, rtol=1e-9, atol=1e-12)
    assert not torch.equal(singles[0].layer1.weight, single_network_from(fused, 1).layer1.weight)


def test_loss_falls_and_progress_is_reported_every_ten_iterations():
    generator = torch.Generator().manual_seed(2)
    acs = torch.randn(4, 16, 9, generator=generator)
    inputs, targets = training_pair(acs, 2)
    networks = build_networks("raki", 2, 2, generator=generator)
    reports = []
    curve = fit_networks(networks, inputs, targets, 2, iterations=25, progress=reports.append)
    assert len(curve) == 25 and curve[-1] < curve[0]
    assert [r["iteration"] for r in reports] == [10, 20, 25]
    assert reports[-1] == {"slice": 0, "iteration": 25, "iterations": 25, "loss": curve[-1]}


def test_train_scan_records_what_it_trained_on():
    full = simulate_scan((32, 24), num_coils=3, num_slices=2, seed=4)
    scan = undersampled(full, 2, 8)
    reports = []
    weights = train_scan(scan, "rraki", iterations=12, progress=reports.append)
    assert weights.method == "rraki" and weights.num_slices == 2
    assert (weights.acceleration, weights.num_coils, weights.acs_lines) == (2, 3, 8)
    assert weights.matrix == (32, 24)
    assert len(weights.input_sha256) == 64
    assert weights.hyperparameters["iterations"] == 12
    assert weights.hyperparameters["learning_rate"] == 3e-3
    assert [len(curve) for curve in weights.loss_curves] == [12, 12]
    assert {r["slice"] for r in reports} == {0, 1}
    assert all(scale > 0 for scale in weights.scales)


def test_same_seed_same_weights():
    scan = undersampled(simulate_scan((32, 24), num_coils=2, seed=5), 2, 8)
    first = train_scan(scan, "raki", iterations=5, config=TrainingConfig(seed=7))
    again = train_scan(scan, "raki", iterations=5, config=TrainingConfig(seed=7))
    for name, tensor in first.state_dicts[0].items():
        torch.testing.assert_close(tensor, again.state_dicts[0][name])


@pytest.mark.parametrize("acceleration", [2, 3, 4, 5])
def test_smallest_acs_is_2r_plus_1_lines(acceleration):
    assert minimum_acs_lines(acceleration) == 2 * acceleration + 1
    full = simulate_scan((24, 48), num_coils=2, seed=0)
    check_trainable(undersampled(full, acceleration, 2 * acceleration + 1))
    with pytest.raises(InvalidScanError, match=r"too small for RAKI at R=\d.*2R \+ 1"):
        check_trainable(undersampled(full, acceleration, 2 * acceleration))


def test_fully_sampled_scan_is_refused_with_a_hint():
    full = simulate_scan((24, 16), num_coils=2, seed=0)
    with pytest.raises(InvalidScanError, match=r"fully sampled.*undersample"):
        train_scan(full, "raki", iterations=1)


def test_irregular_sampling_and_unknown_method_are_refused():
    full = simulate_scan((24, 32), num_coils=2, seed=0)
    mask = equispaced_mask(32, 3, 10)
    mask[np.flatnonzero(mask)[1]] = False  # a gap inside the lattice (an edge line is padding)
    with pytest.raises(InvalidScanError, match="equispaced"):
        check_trainable(Scan.from_kspace(full.kspace * mask, mask, acceleration=3))
    with pytest.raises(InvalidScanError, match="no networks"):
        train_scan(undersampled(full, 3, 10), "grappa")


def test_the_grappa_start_begins_where_grappa_is_and_is_recorded():
    """Before training (one step at a negligible rate) RAKI started as GRAPPA fills as GRAPPA
    does, far better than the paper's random start; the weights say which start ran."""
    from dataclasses import replace

    from raki.fft import rss_image
    from raki.methods import reconstruct
    from raki.metrics import nmse

    full = simulate_scan((64, 48), num_coils=6, snr=40.0, seed=5)
    scan = full.undersampled(3, 16)
    reference = rss_image(full.kspace)
    config = TrainingConfig(network_start="grappa", iterations=1, learning_rate=1e-9)
    started = reconstruct(scan, "raki", config=config)
    random = reconstruct(scan, "raki", config=replace(config, network_start="random"))
    grappa = nmse(reference, reconstruct(scan, "grappa").image)
    assert nmse(reference, started.image) < 1.3 * grappa
    assert nmse(reference, started.image) < 0.2 * nmse(reference, random.image)
    assert started.details["hyperparameters"]["network_start"] == "grappa"
    with pytest.raises(InvalidScanError, match="network_start must be one of random, grappa"):
        TrainingConfig(network_start="zeros").validate()
