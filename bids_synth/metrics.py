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

__all__ = ['psnr', 'ssim', 'mae', 'score']

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
