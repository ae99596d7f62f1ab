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
    from raki.methods import reconstruct
    from raki.metrics import nmse
    from raki.phantom import simulate_scan
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
    from raki.methods import reconstruct
    from raki.metrics import nmse
    from raki.phantom import simulate_scan
    from raki.train import TrainingConfig

    full = simulate_scan((32, 30), num_coils=4, snr=40.0, seed=2)
    scan = full.undersampled(3, 12)
    reference = rss_image(full.kspace)
    config = TrainingConfig(iterations=40, grappa_share=0.0)
    fp32 = reconstruct(scan, "raki", device="cpu", config=config)
    bf16 = reconstruct(scan, "raki", device="cpu", config=replace(config, precision="bf16"))
    assert bf16.details["hyperparameters"]["precision"] == "bf16"
    assert nmse(reference, bf16.image) < 1.2 * nmse(reference, fp32.image)


def test_auto_precision_is_bf16_only_for_rraki_where_hardware_computes_it(monkeypatch, tmp_path):
    from raki import device, train
    from raki.phantom import simulate_scan

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nflags : fpu\n")
    assert {"avx2", "avx512_bf16"} <= device.cpu_flags(cpuinfo)
    assert device.cpu_flags(tmp_path / "absent") == frozenset()
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(train, "has_native_bf16", lambda _device, n=native: n)
        assert train.resolve_precision("auto", "rraki", cpu) == ("bf16" if native else "fp32")
        assert train.resolve_precision("auto", "raki", cpu) == "fp32"
        assert train.resolve_precision("fp32", "rraki", cpu) == "fp32"
        assert train.resolve_precision("bf16", "raki", cpu) == "bf16"
    monkeypatch.undo()
    # Weights record the precision that ran, never "auto".
    scan = simulate_scan((32, 30), num_coils=4, seed=2).undersampled(3, 12)
    weights = train.train_scan(scan, "rraki", device="cpu", iterations=2)
    assert weights.hyperparameters["precision"] == train.resolve_precision("auto", "rraki", cpu)


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


def test_readout_patches_cover_every_target_row_with_its_inputs():
    import torch

    from raki.model import build_networks
    from raki.train import network_error_norms, readout_patches, training_pair

    generator = torch.Generator().manual_seed(0)
    inputs, targets = training_pair(torch.randn(8, 45, 16, generator=generator), 3)
    patch_inputs, patch_targets = readout_patches(inputs, targets, rows=10)
    # 39 target rows: patches start at 0, 10, 20 and 29 (the last moved back to fit).
    assert patch_targets.shape[0] == 4 and patch_targets.shape[-2] == 10
    assert patch_inputs.shape[-2] == 16
    networks = build_networks("raki", 4, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = networks(inputs, 3)
        patched = networks(patch_inputs, 3)
        for index, start in enumerate((0, 10, 20, 29)):
            torch.testing.assert_close(patched[index], whole[0, :, start : start + 10])
        # Batched norms are per network over all patches, as for one long patch.
        error = patched - patch_targets
        joined = torch.cat(list(error), dim=-2)[None]
        torch.testing.assert_close(network_error_norms(error, 8), network_error_norms(joined, 8))
    assert whole.shape[-2] == 39


def test_minibatches_and_cosine_schedule_train_and_are_recorded():
    import pytest

    from raki.errors import InvalidScanError
    from raki.phantom import simulate_scan
    from raki.train import TrainingConfig, train_scan

    scan = simulate_scan((64, 30), num_coils=4, seed=2).undersampled(3, 12)
    config = TrainingConfig(iterations=60, lr_schedule="cosine", batch_fraction=0.5)
    weights = train_scan(scan, "raki", device="cpu", config=config)
    curve = weights.loss_curves[0]
    assert len(curve) == 60 and curve[-1] < 0.5 * curve[0]
    assert weights.hyperparameters["batch_fraction"] == 0.5
    assert weights.hyperparameters["lr_schedule"] == "cosine"
    again = train_scan(scan, "raki", device="cpu", config=config)
    assert again.loss_curves == weights.loss_curves  # the patch draws are seeded
    for bad in (TrainingConfig(lr_schedule="step"), TrainingConfig(batch_fraction=0.0)):
        with pytest.raises(InvalidScanError):
            train_scan(scan, "raki", device="cpu", config=bad)


def test_slices_trained_together_get_the_weights_of_slices_trained_alone():
    """In float64, where rounding cannot hide a coupling between the slices."""
    import torch

    from raki.model import build_networks, merge_slices, split_slices
    from raki.train import fit_networks, training_pair

    generator = torch.Generator().manual_seed(3)
    pairs = [
        training_pair(torch.randn(6, 20, 14, generator=generator, dtype=torch.float64), 3)
        for _ in range(3)
    ]
    for method in ("raki", "rraki"):
        alone = []
        for inputs, targets in pairs:
            networks = build_networks(method, 3, 3, generator=torch.Generator().manual_seed(0))
            networks = networks.double()
            fit_networks(networks, inputs, targets, 3, iterations=15)
            alone.append(networks.state_dict())
        starts = [
            build_networks(method, 3, 3, generator=torch.Generator().manual_seed(0)).double()
            for _ in pairs
        ]
        merged = merge_slices(starts).double()
        fit_networks(
            merged,
            torch.cat([inputs for inputs, _ in pairs], dim=1),
            torch.cat([targets for _, targets in pairs], dim=1),
            3,
            iterations=15,
        )
        for mine, theirs in zip(split_slices(merged), alone, strict=True):
            assert mine.keys() == theirs.keys()
            for name in mine:
                torch.testing.assert_close(mine[name], theirs[name], rtol=1e-9, atol=1e-11)


def test_train_scan_batches_slices_and_refuses_what_cannot_be_batched():
    import numpy as np
    import pytest

    from raki.errors import InvalidScanError
    from raki.phantom import simulate_scan
    from raki.train import TrainingConfig, train_scan

    scan = simulate_scan((40, 30), num_coils=3, num_slices=3, seed=5).undersampled(3, 12)
    alone = train_scan(scan, "rraki", device="cpu", config=TrainingConfig(iterations=20))
    together = train_scan(
        scan, "rraki", device="cpu", config=TrainingConfig(iterations=20, slices_per_batch=2)
    )
    assert alone.hyperparameters["slices_per_batch"] == 1
    assert together.hyperparameters["slices_per_batch"] == 2
    assert together.scales == alone.scales and together.num_slices == 3
    assert together.state_dicts[2].keys() == alone.state_dicts[2].keys()
    # Slice 2 trains alone in both runs (3 slices in batches of 2): the same float32 weights.
    for name, weight in together.state_dicts[2].items():
        assert torch_equal(weight, alone.state_dicts[2][name])
    # Each slice keeps its own loss curve when trained with another (not the pair's mean).
    # (The first iterations agree closely; float32 sums in another order then drift apart.)
    for merged_curve, own_curve in zip(together.loss_curves, alone.loss_curves, strict=True):
        assert len(merged_curve) == len(own_curve) == 20
        np.testing.assert_allclose(merged_curve[:5], own_curve[:5], rtol=1e-3)
    first, second = together.loss_curves[0][0], together.loss_curves[1][0]
    assert abs(first - second) > 1e-3 * max(first, second)
    with pytest.raises(InvalidScanError, match="together"):
        train_scan(
            scan,
            "raki",
            device="cpu",
            config=TrainingConfig(iterations=5, slices_per_batch=2, warm_start=True),
        )


def torch_equal(first, second) -> bool:
    import torch

    return bool(torch.equal(first, second))
