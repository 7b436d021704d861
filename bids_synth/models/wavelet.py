"""One level of the orthonormal 3D Haar wavelet transform: the models' image representation.

WDM (Friedrich et al. 2024) and cWDM (BraSyn 2024) run diffusion on wavelet coefficients
instead of on a learned autoencoder's latent: each image channel of ``N^3`` voxels becomes 8
sub-band channels of ``(N/2)^3`` (LLL, LLH, ..., HHH), exactly invertible and with nothing to
train, so there is no reconstruction ceiling under the predictions. A network on the
coefficients of a 2 mm image costs what it costs on a 4 mm image in voxel space.

The transform is a fixed-weight strided convolution (kernel 2, stride 2, one group per channel);
its filters are orthonormal, so the inverse is the transposed convolution with the same weights
and the round trip is exact to float precision.

>>> x = torch.randn(2, 3, 4, 6, 8, dtype=torch.float64)
>>> w = dwt3(x)
>>> tuple(w.shape)
(2, 24, 2, 3, 4)
>>> float((idwt3(w) - x).abs().max()) < 1e-12
True
>>> bool(torch.isclose((w ** 2).sum(), (x ** 2).sum()))  # orthonormal: energy is kept
True
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

__all__ = ['SUBBANDS', 'SUBBAND_NAMES', 'haar_filters', 'dwt3', 'idwt3']

#: coefficients per image channel
SUBBANDS = 8
#: sub-band of each coefficient channel of one image channel ('L' low-pass, 'H' high-pass,
#: in x, y, z order); the first is the approximation (LLL)
SUBBAND_NAMES = tuple(''.join(p) for p in itertools.product('LH', repeat=3))


def haar_filters(dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The 8 orthonormal 3D Haar filters, shape (8, 1, 2, 2, 2), in :data:`SUBBAND_NAMES` order."""
    lo = torch.tensor([1.0, 1.0], dtype=torch.float64) / 2 ** 0.5
    hi = torch.tensor([1.0, -1.0], dtype=torch.float64) / 2 ** 0.5
    bank = {'L': lo, 'H': hi}
    filt = [torch.einsum('i,j,k->ijk', bank[a], bank[b], bank[c]) for a, b, c in SUBBAND_NAMES]
    return torch.stack(filt)[:, None].to(dtype=dtype, device=device)


def _weights(x: torch.Tensor, channels: int) -> torch.Tensor:
    return haar_filters(x.dtype, x.device).repeat(channels, 1, 1, 1, 1)


def dwt3(x: torch.Tensor) -> torch.Tensor:
    """Forward transform.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, X, Y, Z)
        X, Y and Z even.

    Returns
    -------
    torch.Tensor, shape (B, 8 C, X/2, Y/2, Z/2)
        Channel ``8 c + k`` is sub-band ``SUBBAND_NAMES[k]`` of image channel ``c``.
    """
    if x.ndim != 5 or any(s % 2 for s in x.shape[2:]):
        raise ValueError(f'dwt3 needs (B, C, X, Y, Z) with even X, Y, Z; got {tuple(x.shape)}')
    c = x.shape[1]
    return F.conv3d(x, _weights(x, c), stride=2, groups=c)


def idwt3(w: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dwt3`: (B, 8 C, x, y, z) -> (B, C, 2x, 2y, 2z)."""
    if w.ndim != 5 or w.shape[1] % SUBBANDS:
        raise ValueError(f'idwt3 needs (B, 8 C, x, y, z); got {tuple(w.shape)}')
    c = w.shape[1] // SUBBANDS
    return F.conv_transpose3d(w, _weights(w, c), stride=2, groups=c)
