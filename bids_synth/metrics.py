"""Image-quality metrics inside the brain mask only: PSNR, SSIM (MONAI) and MAE.

Conventions (documented because papers differ):

- Only voxels inside the brain mask count. The background is *not* zeroed first (ACADiff's
  public metric code zeroes it, which inflates PSNR/SSIM because the empty background then
  matches exactly).
- ``data_range`` defaults to ``max - min`` of the *reference* inside the mask (per channel).
- PSNR is ``10 log10(data_range^2 / MSE)`` over the mask voxels (MONAI ``PSNRMetric`` on the
  masked voxels); MAE is MONAI ``MAEMetric`` on the masked voxels.
- SSIM is MONAI's local SSIM map (``compute_ssim_and_cs``: Gaussian window 11, sigma 1.5,
  k1 0.01, k2 0.03) computed on the whole images, then averaged over the mask voxels whose
  window centre lies in the valid region.
- Multi-channel images (bold, dwi) are scored per channel and averaged.

>>> import numpy as np
>>> ref = np.random.default_rng(0).random((16, 16, 16)).astype('float32')
>>> mask = np.zeros_like(ref, bool); mask[3:13, 3:13, 3:13] = True
>>> s = score(ref + 0.01, ref, mask)
>>> round(s['mae'], 4), s['ssim'] > 0.99, s['psnr'] > 39
(0.01, True, True)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import MAEMetric, PSNRMetric
from monai.metrics.regression import compute_ssim_and_cs

__all__ = ['psnr', 'ssim', 'mae', 'score', 'gradient_magnitude', 'radial_power',
           'high_frequency_power', 'coverage', 'std_error_spearman']

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _prep(pred, ref, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float32)
    ref = np.asarray(ref, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if pred.ndim == 3:
        pred, ref = pred[None], ref[None]
    if pred.shape != ref.shape or pred.shape[1:] != mask.shape:
        raise ValueError(f'metrics: shapes differ: pred {pred.shape}, ref {ref.shape}, '
                         f'mask {mask.shape}')
    if not mask.any():
        raise ValueError('metrics: the mask is empty')
    return pred, ref, mask


def _range(ref_c: np.ndarray, mask: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    vals = ref_c[mask]
    return float(vals.max() - vals.min()) or 1.0


def psnr(pred, ref, mask, data_range: float | None = None) -> float:
    """PSNR (dB) inside the mask.

    Parameters
    ----------
    pred, ref : array, shape (X, Y, Z) or (C, X, Y, Z)
    mask : array, shape (X, Y, Z), bool
    data_range : float, optional
        Default: range of ``ref`` inside the mask (per channel).
    """
    pred, ref, mask = _prep(pred, ref, mask)
    out = []
    for p, r in zip(pred, ref):
        dr = _range(r, mask, data_range)
        m = PSNRMetric(max_val=dr, reduction='mean')
        v = m(torch.from_numpy(p[mask])[None, None], torch.from_numpy(r[mask])[None, None])
        v = float(v)  # identical images: +inf, reported as 100 dB; NaN input stays NaN
        out.append(v if math.isnan(v) else min(v, 100.0))
    return float(np.mean(out))


def mae(pred, ref, mask) -> float:
    """Mean absolute error inside the mask (units of the representation)."""
    pred, ref, mask = _prep(pred, ref, mask)
    m = MAEMetric(reduction='mean')
    vals = [float(m(torch.from_numpy(p[mask])[None, None], torch.from_numpy(r[mask])[None, None]))
            for p, r in zip(pred, ref)]
    return float(np.mean(vals))


def ssim(pred, ref, mask, data_range: float | None = None) -> float:
    """Mean local SSIM over the mask voxels (window 11, sigma 1.5)."""
    pred, ref, mask = _prep(pred, ref, mask)
    h = SSIM_WINDOW // 2
    inner = mask[h:-h, h:-h, h:-h]
    if not inner.any():
        raise ValueError('metrics: the mask lies entirely within the SSIM window margin')
    out = []
    for p, r in zip(pred, ref):
        dr = _range(r, mask, data_range)
        smap, _ = compute_ssim_and_cs(
            torch.from_numpy(p)[None, None], torch.from_numpy(r)[None, None], spatial_dims=3,
            kernel_size=[SSIM_WINDOW] * 3, kernel_sigma=[SSIM_SIGMA] * 3, data_range=dr)
        out.append(float(smap[0, 0].numpy()[inner].mean()))
    return float(np.mean(out))


def score(pred, ref, mask, data_range: float | None = None) -> dict[str, float]:
    """All three metrics: ``{'psnr': dB, 'ssim': [-1, 1], 'mae': units}``."""
    return {'psnr': psnr(pred, ref, mask, data_range), 'ssim': ssim(pred, ref, mask, data_range),
            'mae': mae(pred, ref, mask)}


# -- realism and uncertainty ------------------------------------------------------------------
def gradient_magnitude(img, mask) -> float:
    """Mean gradient magnitude (per voxel, ``numpy.gradient``) over the mask voxels.

    A blurred mean prediction has a lower value than an acquired image or a realistic sample.

    >>> x = np.zeros((8, 8, 8)); x[4:] = 1.0
    >>> gradient_magnitude(x, np.ones_like(x, bool)) > gradient_magnitude(x * 0.5, np.ones_like(x, bool))
    True
    """
    img = np.asarray(img, np.float64)
    mask = np.asarray(mask, bool)
    g = np.sqrt(sum(d ** 2 for d in np.gradient(img)))
    return float(g[mask].mean())


def radial_power(img, mask, n_bins: int = 16) -> np.ndarray:
    """Radially averaged power spectrum of the image inside the mask.

    The image is demeaned inside the mask and set to 0 outside, so the mask edge adds the same
    content to every image scored with one mask. Bins are equal widths of the normalized radial
    frequency from 0 to the Nyquist frequency (0.5 cycles per voxel); frequencies beyond it
    (the cube's corners) are dropped.

    Returns
    -------
    numpy.ndarray, shape (n_bins,)
    """
    img = np.asarray(img, np.float64)
    mask = np.asarray(mask, bool)
    x = np.where(mask, img - img[mask].mean(), 0.0)
    power = np.abs(np.fft.fftn(x)) ** 2
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in x.shape], indexing='ij')
    radius = np.sqrt(sum(f ** 2 for f in freqs))
    keep = radius <= 0.5
    idx = np.minimum((radius[keep] / 0.5 * n_bins).astype(int), n_bins - 1)
    total = np.bincount(idx, weights=power[keep], minlength=n_bins)
    count = np.bincount(idx, minlength=n_bins)
    return total / np.maximum(count, 1)


def high_frequency_power(img, mask, n_bins: int = 16) -> float:
    """Power in the upper half of the radial frequencies (above half the Nyquist frequency)."""
    return float(radial_power(img, mask, n_bins)[n_bins // 2:].sum())


def coverage(truth, mean, std, mask, z: float = 1.645) -> float:
    """Fraction of mask voxels with ``|truth - mean| <= z * std`` (0.90 for a calibrated
    Gaussian at the default z). Multi-channel arrays (C, X, Y, Z) count every channel."""
    truth, mean, std = (np.asarray(a, np.float64) for a in (truth, mean, std))
    mask = np.broadcast_to(np.asarray(mask, bool), truth.shape)
    return float((np.abs(truth - mean) <= z * std)[mask].mean())


def std_error_spearman(truth, mean, std, mask) -> float:
    """Spearman rank correlation, over the mask voxels, of the predicted std with the absolute
    error: does the model know where it is wrong?"""
    from scipy.stats import spearmanr

    truth, mean, std = (np.asarray(a, np.float64) for a in (truth, mean, std))
    mask = np.broadcast_to(np.asarray(mask, bool), truth.shape)
    rho = spearmanr(std[mask], np.abs(truth - mean)[mask]).statistic
    return float(rho) if np.isfinite(rho) else 0.0
