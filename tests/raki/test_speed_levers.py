"""Process tuning for training: allocator thresholds and threads, safe to call twice."""

from __future__ import annotations

import torch

from raki.runtime import default_threads, raise_malloc_thresholds, tune_process


def test_tuning_is_idempotent_and_reports_what_it_did():
    first = tune_process()
    second = tune_process()
    assert first == second
    assert first.threads == torch.get_num_threads()
    assert set(first.as_dict()) == {"mallopt", "threads"}
    assert raise_malloc_thresholds() is first.mallopt


def test_threads_can_be_set_and_restored():
    before = torch.get_num_threads()
    try:
        assert tune_process(threads=1).threads == 1
    finally:
        torch.set_num_threads(before)
    assert default_threads() >= 1


def test_compressed_training_keeps_the_image_and_round_trips(tmp_path):
    from dataclasses import replace

    import numpy as np

    from raki.fft import rss_image
    from raki.metrics import nmse
    from raki.phantom import simulate_scan
    from raki.recon import reconstruct
    from raki.train import TrainingConfig, train_scan
    from raki.weights import RakiWeights

    full = simulate_scan((40, 36), num_coils=8, snr=40.0, seed=1)
    scan = full.undersampled(3, 12)
    reference = rss_image(full.kspace)
    config = TrainingConfig(iterations=60, grappa_share=0.0)
    plain = reconstruct(scan, "raki", device="cpu", config=config)
    weights = train_scan(scan, "raki", device="cpu", config=replace(config, coil_energy=0.999))
    assert weights.coil_bases is not None and weights.coil_bases.shape[1] == 8
    compressed = reconstruct(scan, "raki", device="cpu", weights=weights)
    assert compressed.kspace.shape == scan.kspace.shape
    np.testing.assert_array_equal(
        compressed.kspace[..., scan.sampled], scan.kspace[..., scan.sampled]
    )
    assert compressed.details["virtual_coils"] == weights.coil_bases.shape[2]
    assert nmse(reference, compressed.image) < 1.5 * nmse(reference, plain.image)
    loaded = RakiWeights.load(weights.save(tmp_path / "w.pt"))
    np.testing.assert_array_equal(loaded.coil_bases, weights.coil_bases)
    again = reconstruct(scan, "raki", device="cpu", weights=loaded)
    np.testing.assert_allclose(again.kspace, compressed.kspace, rtol=1e-5, atol=1e-6)


def test_bf16_training_stays_close_to_fp32():
    from dataclasses import replace

    from raki.fft import rss_image
    from raki.metrics import nmse
    from raki.phantom import simulate_scan
    from raki.recon import reconstruct
    from raki.train import TrainingConfig

    full = simulate_scan((32, 30), num_coils=4, snr=40.0, seed=2)
    scan = full.undersampled(3, 12)
    reference = rss_image(full.kspace)
    config = TrainingConfig(iterations=40, grappa_share=0.0)
    fp32 = reconstruct(scan, "raki", device="cpu", config=config)
    bf16 = reconstruct(scan, "raki", device="cpu", config=replace(config, precision="bf16"))
    assert bf16.details["hyperparameters"]["precision"] == "bf16"
    assert nmse(reference, bf16.image) < 1.2 * nmse(reference, fp32.image)


def test_faithful_is_the_paper_and_precision_is_checked():
    import pytest

    from raki.errors import InvalidScanError
    from raki.phantom import simulate_scan
    from raki.train import TrainingConfig, train_scan

    faithful = TrainingConfig.faithful()
    assert (faithful.iterations, faithful.precision, faithful.coil_energy) == (1000, "fp32", None)
    scan = simulate_scan((32, 30), num_coils=4, seed=2).undersampled(3, 12)
    with pytest.raises(InvalidScanError, match="precision"):
        train_scan(scan, "raki", device="cpu", config=TrainingConfig(precision="fp16"))


def test_early_stopping_stops_and_keeps_the_best_weights():
    import torch

    from raki.model import build_networks
    from raki.train import fit_networks, holdout_positions, training_pair

    generator = torch.Generator().manual_seed(0)
    channels = torch.randn(8, 24, 16, generator=generator)
    inputs, targets = training_pair(channels, 3)
    networks = build_networks("raki", 4, 3, generator=torch.Generator().manual_seed(1))
    # Random targets: the held-out error cannot keep falling, so training must stop early.
    curve = fit_networks(
        networks, inputs, targets, 3, iterations=2000, learning_rate=1e-2, early_stop_patience=3
    )
    assert 0 < len(curve) < 2000 and len(curve) % 10 == 0
    holdout = holdout_positions(targets.shape[-1], 0.15, inputs.device)
    assert 0 < int(holdout.sum()) < targets.shape[-1]
    with torch.no_grad():
        final = (networks(inputs, 3) - targets)[..., holdout].norm()
        start = build_networks("raki", 4, 3, generator=torch.Generator().manual_seed(1))
        initial = (start(inputs, 3) - targets)[..., holdout].norm()
    assert final <= initial


def test_warm_start_begins_from_the_neighbouring_slice():
    from raki.phantom import simulate_scan
    from raki.train import TrainingConfig, train_scan

    scan = simulate_scan((32, 30), num_coils=4, num_slices=2, seed=4).undersampled(3, 12)
    cold = train_scan(scan, "raki", device="cpu", config=TrainingConfig(iterations=60))
    warm = train_scan(
        scan, "raki", device="cpu", config=TrainingConfig(iterations=60, warm_start=True)
    )
    assert warm.hyperparameters["warm_start"] is True
    # Slice 0 is the same; slice 1 starts where slice 0 ended, far below a random start.
    assert warm.loss_curves[0] == cold.loss_curves[0]
    assert warm.loss_curves[1][0] < 0.5 * cold.loss_curves[1][0]
