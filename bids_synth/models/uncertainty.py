"""What the spread of the residual samples is scaled by: where, how much and how unusual the inputs.

Three pieces, all in the coefficient space of :mod:`.wavelet` and stored with the model:

- the **residual map**: per image channel, the smoothed spatial pattern of the mean network's
  residual on the training cohort (larger at tissue borders and where the signal, and so the
  noise, is high). The flow works on residuals divided by it, so that its unit-variance output
  is already heteroscedastic: the std map says where the model is typically wrong.
- the **std scale** (``ModelSpec.std_scale``, per modality): split conformal calibration on the
  validation subjects, so that mean +/- 1.645 std covers 90% of their voxels
  (:func:`conformal_scale`).
- the **input typicality** (:func:`typicality`): how far each input's low-pass coefficients lie
  from the training cohort's voxelwise mean, in units of its voxelwise standard deviation, on a
  coarse grid (twice the coefficient voxel). An input from another scanner, another contrast or
  a failed conform scores far above the validation subjects' mean (``ModelSpec.typicality``),
  and the residual samples are widened by :func:`inflation` of that ratio: the model says it
  is less sure when its inputs are unlike what it learned from. The scores are written to the
  provenance of every synthesized image.

The maps live on the coarse grid ``stats_shape(coef_shape)`` (a few hundred kB for a full
model) and are brought to the coefficient grid by trilinear interpolation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['stats_shape', 'coarse', 'to_coef_grid', 'typicality', 'inflation', 'conformal_scale',
           'INFLATION_CAP', 'COVERAGE_Z']

#: the largest factor the std is widened by for atypical inputs
INFLATION_CAP = 5.0
#: mean +/- COVERAGE_Z std is the nominal 90% interval of a Gaussian
COVERAGE_Z = 1.645


def stats_shape(coef_shape) -> tuple[int, int, int]:
    """Coarse grid of the stored maps: half the coefficient grid, rounded up."""
    return tuple(int(math.ceil(s / 2)) for s in coef_shape)  # type: ignore[return-value]


def coarse(x: torch.Tensor) -> torch.Tensor:
    """(B, C, x, y, z) averaged onto :func:`stats_shape`."""
    return F.adaptive_avg_pool3d(x, stats_shape(x.shape[2:]))


def to_coef_grid(maps: torch.Tensor, coef_shape) -> torch.Tensor:
    """(C, a, b, c) coarse maps interpolated to (1, C, *coef_shape)."""
    return F.interpolate(maps[None], size=tuple(coef_shape), mode='trilinear',
                         align_corners=False)


def typicality(lowpass: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    """Mean squared z-score of each image channel inside ``mask`` on the coarse grid.

    Parameters
    ----------
    lowpass : torch.Tensor, shape (B, C, x, y, z)
        Low-pass (LLL) coefficients of the scaled images.
    mean, std : torch.Tensor, shape (C, a, b, c)
        The training cohort's voxelwise statistics on the coarse grid.
    mask : torch.Tensor, shape (a, b, c), bool

    Returns
    -------
    torch.Tensor, shape (B, C)
        About 1 for an image like the training cohort's.

    >>> m, s = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    >>> typicality(torch.full((1, 1, 4, 4, 4), 3.0), m, s, torch.ones(2, 2, 2, dtype=bool))
    tensor([[9.]])
    """
    z = (coarse(lowpass) - mean[None]) / std[None]
    return (z ** 2)[..., mask].mean(dim=-1)


def inflation(scores: dict[str, float], reference: dict[str, float],
              cap: float = INFLATION_CAP) -> float:
    """Factor of the residual spread: ``sqrt`` of the largest ratio of an input's typicality
    score to the validation subjects' mean, between 1 and ``cap``.

    >>> inflation({'T1w': 4.0, 'T2w': 16.0}, {'T1w': 1.0, 'T2w': 1.0})
    4.0
    >>> inflation({'T1w': 0.5}, {'T1w': 1.0}), inflation({}, {})
    (1.0, 1.0)
    """
    ratios = [scores[m] / reference[m] for m in scores if reference.get(m, 0) > 0]
    if not ratios:
        return 1.0
    return float(np.clip(math.sqrt(max(max(ratios), 0.0)), 1.0, cap))


def conformal_scale(ratios: np.ndarray, z: float = COVERAGE_Z, coverage: float = 0.9) -> float:
    """Factor ``c`` so that ``|error| <= z c std`` on a ``coverage`` fraction of the ratios
    ``|error| / std`` (split conformal prediction with the finite-sample quantile).

    >>> conformal_scale(np.array([0.5, 1.0, 1.5, 2.0, 3.29]), coverage=0.8)
    2.0
    """
    r = np.sort(np.asarray(ratios, np.float64).ravel())
    r = r[np.isfinite(r)]
    if r.size == 0:
        return 1.0
    k = min(r.size - 1, int(math.ceil((r.size + 1) * coverage)) - 1)
    return float(max(r[k] / z, 1e-6))
