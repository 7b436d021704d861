"""Intensity normalization of the template-space representations (architecture.md).

| family | channels | normalization |
| --- | --- | --- |
| smri | intensity | / 99th percentile inside the brain mask |
| pet | SUVR | / mean inside the reference region (:data:`SUVR_REFERENCE`) |
| fmri | seg1..seg4, alff, falff, reho | seg and alff / p99 of seg1 in the mask; falff, reho as is (0-1) |
| dmri | b0, seg1..seg4, fa, md, logd.. | b0 and seg / p99 of b0 in the mask; fa as is; md in 1e-3 mm^2/s; log-tensor as is |

Everything outside the brain mask is set to 0. There is no ``denormalize``: synthesized images
are written in these normalized units (the sidecar's Description says which), because the raw
scale of a missing scan is unknowable.

SUVR reference: whole cerebellum (``regions.region_mask('cerebellum')``, the two cerebellar
hemisphere spheres, inside the brain mask) for both tracers. The florbetapir convention (Landau
et al., J Nucl Med 2013) is whole cerebellum; for FDG the pons is the usual choice, but its 6 mm
sphere is about 110 voxels at 2 mm and 14 at 4 mm, and a 12-parameter affine registration
misplaces it by a few mm, so the cerebellum is used for FDG too (as the registry's description
says: a pons-free reference).

>>> import numpy as np
>>> robust_max(np.arange(101.0), np.arange(101) > 0)
99.01
"""

from __future__ import annotations

import numpy as np

from ..bids.modalities import MODALITIES
from ..errors import DataError
from .regions import region_mask

__all__ = ['SUVR_REFERENCE', 'PERCENTILE', 'robust_max', 'suvr_reference_mask', 'normalize']

#: Reference region (a name in ``regions.REGIONS``) of each PET modality.
SUVR_REFERENCE: dict[str, str] = {'FDG': 'cerebellum', 'AV45': 'cerebellum'}
#: Percentile used as the robust maximum inside the brain mask.
PERCENTILE = 99.0


def robust_max(image: np.ndarray, mask: np.ndarray, q: float = PERCENTILE) -> float:
    """The ``q``-th percentile of ``image`` inside ``mask`` (both shape (X, Y, Z))."""
    vals = image[mask]
    if vals.size == 0:
        return 0.0
    return float(np.percentile(vals, q))


def suvr_reference_mask(modality: str, template) -> np.ndarray:
    """Boolean mask, shape (X, Y, Z), of the SUVR reference region on the template grid."""
    ref = region_mask(SUVR_REFERENCE[modality], template.affine, template.shape)
    return ref & template.mask


def _scale(array: np.ndarray, channels, value: float, what: str, modality: str) -> None:
    if not np.isfinite(value) or value <= 0:
        raise DataError(f'{modality}: cannot normalize, {what} is {value!r} (empty or '
                        f'misregistered image?)')
    array[list(channels)] /= value


def normalize(array: np.ndarray, modality: str, template) -> np.ndarray:
    """Normalize a conformed representation.

    Parameters
    ----------
    array : ndarray, shape (C, X, Y, Z)
        Channels of the modality (``MODALITIES[modality].channels``) on the template grid.
    modality : str
        Registry key.
    template : TemplateSpec
        Supplies the grid, the brain mask and (PET) the reference region.

    Returns
    -------
    ndarray, shape (C, X, Y, Z), float32
        Normalized copy, 0 outside the brain mask.

    Raises
    ------
    DataError
        If the normalizing value is not positive (an empty image or a failed registration).
    """
    mod = MODALITIES[modality]
    out = np.array(array, dtype=np.float32, copy=True)
    if out.ndim == 3:
        out = out[None]
    if out.shape[0] != mod.n_channels or out.shape[1:] != tuple(template.shape):
        raise ValueError(f'{modality}: expected shape {(mod.n_channels,) + tuple(template.shape)}'
                         f', got {out.shape}')
    out = np.nan_to_num(out)
    mask = template.mask
    names = mod.channels
    if mod.family == 'smri':
        _scale(out, [0], robust_max(out[0], mask), 'the 99th percentile in the mask', modality)
    elif mod.family == 'pet':
        ref = suvr_reference_mask(modality, template)
        value = float(out[0][ref].mean()) if ref.any() else 0.0
        _scale(out, [0], value, f'the mean in the {SUVR_REFERENCE[modality]}', modality)
    elif mod.family == 'fmri':
        idx = [i for i, n in enumerate(names) if n.startswith('seg') or n == 'alff']
        _scale(out, idx, robust_max(out[names.index('seg1')], mask), 'p99 of seg1', modality)
        for name in ('falff', 'reho'):
            out[names.index(name)] = np.clip(out[names.index(name)], 0, 1)
    elif mod.family == 'dmri':
        idx = [i for i, n in enumerate(names) if n.startswith('seg') or n == 'b0']
        _scale(out, idx, robust_max(out[names.index('b0')], mask), 'p99 of b0', modality)
        out[names.index('fa')] = np.clip(out[names.index('fa')], 0, 1)
        out[names.index('md')] = np.clip(out[names.index('md')], 0, None)
    else:
        raise ValueError(f'unknown modality family {mod.family!r}')
    out[:, ~mask] = 0.0
    return out
