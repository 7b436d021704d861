"""Metrics inside the brain mask only."""

from __future__ import annotations

import numpy as np
import pytest

from bids_synth.metrics import mae, psnr, score, ssim


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    ref = rng.random((24, 24, 24)).astype(np.float32) + 1
    mask = np.zeros(ref.shape, bool)
    mask[6:18, 6:18, 6:18] = True
    return ref, mask


def test_perfect_prediction(data):
    ref, mask = data
    s = score(ref, ref, mask)
    assert s['mae'] == 0 and s['ssim'] == pytest.approx(1.0) and s['psnr'] == 100.0


def test_nan_prediction_is_not_a_perfect_score(data):
    ref, mask = data
    pred = ref.copy()
    pred[mask] = np.nan
    assert np.isnan(psnr(pred, ref, mask)) and np.isnan(mae(pred, ref, mask))


def test_background_does_not_count(data):
    ref, mask = data
    pred = ref + 0.05 * mask
    a = score(pred, ref, mask)
    junk = pred.copy()
    junk[:1] = 123.0  # outside the mask and the SSIM windows (half-width 5) of mask voxels
    b = score(junk, ref, mask)
    assert a == pytest.approx(b)
    # zeroing the background (ACADiff) would change nothing either: we never use it
    assert mae(pred, ref, mask) == pytest.approx(0.05, abs=1e-6)


def test_psnr_uses_reference_range_in_mask(data):
    ref, mask = data
    pred = ref + 0.1
    dr = ref[mask].max() - ref[mask].min()
    want = 10 * np.log10(dr**2 / 0.01)
    assert psnr(pred, ref, mask) == pytest.approx(want, abs=1e-3)
    want2 = 10 * np.log10(4 / 0.01)
    assert psnr(pred, ref, mask, data_range=2.0) == pytest.approx(want2, abs=1e-3)


def test_worse_prediction_scores_worse(data):
    ref, mask = data
    rng = np.random.default_rng(1)
    good = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    bad = ref + 0.3 * rng.standard_normal(ref.shape).astype(np.float32)
    g, b = score(good, ref, mask), score(bad, ref, mask)
    assert g['psnr'] > b['psnr'] and g['ssim'] > b['ssim'] and g['mae'] < b['mae']


def test_multichannel_is_channel_mean(data):
    ref, mask = data
    two = np.stack([ref, ref])
    pred = np.stack([ref, ref + 0.1])
    assert mae(pred, two, mask) == pytest.approx(0.05, abs=1e-6)
    assert ssim(pred, two, mask) == pytest.approx((1 + ssim(ref + 0.1, ref, mask)) / 2)


def test_errors(data):
    ref, mask = data
    with pytest.raises(ValueError, match='shapes differ'):
        score(ref[:-1], ref, mask)
    with pytest.raises(ValueError, match='empty'):
        score(ref, ref, np.zeros_like(mask))


def test_realism_metrics_see_blur():
    from scipy.ndimage import gaussian_filter

    from bids_synth.metrics import gradient_magnitude, high_frequency_power

    rng = np.random.default_rng(0)
    sharp = rng.random((24, 24, 24))
    blurred = gaussian_filter(sharp, 1.5)
    mask = np.zeros(sharp.shape, bool)
    mask[4:20, 4:20, 4:20] = True
    assert gradient_magnitude(blurred, mask) < 0.5 * gradient_magnitude(sharp, mask)
    assert high_frequency_power(blurred, mask) < 0.1 * high_frequency_power(sharp, mask)


def test_coverage_and_spearman_of_a_calibrated_std():
    from bids_synth.metrics import coverage, std_error_spearman

    rng = np.random.default_rng(1)
    shape = (20, 20, 20)
    std = rng.uniform(0.1, 2.0, shape)
    truth = rng.normal(0.0, std)  # truth ~ N(mean=0, std)
    mask = np.ones(shape, bool)
    zero = np.zeros(shape)
    assert 0.88 < coverage(truth, zero, std, mask) < 0.92
    assert std_error_spearman(truth, zero, std, mask) > 0.3
    assert abs(std_error_spearman(truth, zero, rng.permutation(std.ravel()).reshape(shape),
                                  mask)) < 0.05
