"""Metrics against values worked out by hand, and against scikit-image when it is installed."""

import numpy as np
import pytest

from raki.metrics import evaluate, nmse, psnr, ssim


def test_nmse_by_hand():
    reference = np.array([[[3.0, 4.0]]])
    prediction = np.array([[[3.0, 2.0]]])
    assert nmse(reference, prediction) == pytest.approx(4.0 / 25.0)


def test_psnr_uses_the_reference_maximum():
    reference = np.array([[[0.0, 10.0], [10.0, 0.0]]])
    prediction = reference + np.array([[[1.0, -1.0], [1.0, -1.0]]])
    assert psnr(reference, prediction) == pytest.approx(10 * np.log10(100.0 / 1.0))


def test_ssim_of_identical_images_is_one_and_of_offset_constant_by_hand():
    reference = np.full((2, 16, 16), 4.0)
    assert ssim(reference, reference) == pytest.approx(1.0)
    # Constant images: variances vanish, SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1).
    prediction = np.full((2, 16, 16), 3.0)
    c1 = (0.01 * 4.0) ** 2
    expected = (2 * 4.0 * 3.0 + c1) / (16.0 + 9.0 + c1)
    assert ssim(reference, prediction) == pytest.approx(expected, rel=1e-9)


def test_ssim_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    reference = rng.random((3, 20, 24))
    prediction = reference + 0.1 * rng.standard_normal(reference.shape)
    expected = np.mean(
        [
            skimage_metrics.structural_similarity(r, p, data_range=reference.max())
            for r, p in zip(reference, prediction, strict=True)
        ]
    )
    assert ssim(reference, prediction) == pytest.approx(expected, rel=1e-9)


def test_evaluate_reports_all_three_and_rejects_mismatched_shapes():
    reference = np.ones((1, 8, 8))
    assert set(evaluate(reference, reference)) == {"nmse", "psnr", "ssim"}
    with pytest.raises(ValueError, match="shapes differ"):
        nmse(reference, np.ones((1, 8, 9)))
