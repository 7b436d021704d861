"""High-pass Fourier features of the available inputs (AMM-Diff, eq. 3).

For an image ``x`` the feature is ``HE(|IFFT(H * FFT(x))|)``: the spectrum is high-passed with a
spherical mask ``H`` (frequencies above ``cutoff`` times the Nyquist radius kept), transformed
back, its magnitude taken and histogram-equalized (rank transform to [0, 1] over the volume). The
result is an edge/texture map that is comparable across modalities and intensity scales; it is
average-pooled to the wavelet-coefficient grid and fused with the coefficients in :mod:`.fusion`.

>>> x = torch.zeros(1, 1, 8, 8, 8); x[..., 2:6, 2:6, 2:6] = 1
>>> f = highpass_features(x, cutoff=0.25)
>>> f.shape, float(f.min()) >= 0, float(f.max()) <= 1
(torch.Size([1, 1, 8, 8, 8]), True, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ['highpass_mask', 'highpass_features', 'pooled_frequency_features']


def highpass_mask(shape: tuple[int, int, int], cutoff: float, device=None) -> torch.Tensor:
    """Spherical high-pass mask in unshifted FFT layout, shape (X, Y, Z), float32."""
    axes = [torch.fft.fftfreq(n, device=device) * 2 for n in shape]  # in units of Nyquist
    gx, gy, gz = torch.meshgrid(*axes, indexing='ij')
    radius = torch.sqrt(gx**2 + gy**2 + gz**2)
    return (radius > cutoff).float()


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalization of each (B, C) volume: its empirical CDF, in [0, 1]."""
    flat = x.flatten(2)
    order = flat.argsort(dim=-1)
    # each element's rank is the inverse permutation of the sort: one scatter, not a second sort
    steps = torch.arange(flat.shape[-1], device=x.device, dtype=torch.float32)
    ranks = torch.empty_like(flat, dtype=torch.float32).scatter_(-1, order, steps.expand_as(order))
    return (ranks / max(flat.shape[-1] - 1, 1)).reshape(x.shape)


def highpass_features(x: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """AMM-Diff frequency features.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, X, Y, Z)
    cutoff : float
        Fraction of the Nyquist radius below which frequencies are removed.

    Returns
    -------
    torch.Tensor, shape (B, C, X, Y, Z), values in [0, 1]
    """
    spec = torch.fft.fftn(x.float(), dim=(-3, -2, -1))
    spec = spec * highpass_mask(tuple(x.shape[-3:]), cutoff, device=x.device)
    mag = torch.fft.ifftn(spec, dim=(-3, -2, -1)).abs()
    return _equalize(mag)


def pooled_frequency_features(x: torch.Tensor, factor: int, cutoff: float = 0.25) -> torch.Tensor:
    """Frequency features average-pooled to a coarser grid (the wavelet coefficients': 2).

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, X, Y, Z)
    factor : int
        Down-sampling factor.

    Returns
    -------
    torch.Tensor, shape (B, C, X/factor, Y/factor, Z/factor)
    """
    return F.avg_pool3d(highpass_features(x, cutoff), kernel_size=factor)
