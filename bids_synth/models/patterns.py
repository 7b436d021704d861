"""Pattern-aware voxel weights (PDS): where a fit should be most accurate.

PDS weights its loss on disease-related regions of the Dosenbach-160 atlas and on the
diagnosis-specific pattern of its training cohort. Here the weight of a voxel is

    w(v) = 1 + atlas(v) + 2 * pattern(v),   scaled to mean 1 inside the brain mask

- ``atlas``: 1 inside a sphere (6 mm) at any of the 160 Dosenbach et al. (Science 2010)
  coordinates, 2 inside the default-mode network's (the network Alzheimer's disease
  disconnects). nilearn ships the coordinates with the package: nothing is downloaded.
- ``pattern``: the training cohort's diagnosis effect on the target, per voxel the absolute
  difference between the mean of the patients (every level but the reference, the first level
  of participants.json) and the mean of the reference group, over the pooled standard
  deviation, smoothed, averaged over the target's channels and scaled to 0-1 (0 everywhere when
  the table has no diagnosis column or a group has fewer than two sessions).

Used by :mod:`.refinement` to weight its least-squares fits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ['atlas_weights', 'diagnosis_column', 'diagnosis_pattern', 'pattern_weights']

#: sphere radius (mm) around each Dosenbach coordinate
RADIUS_MM = 6.0
_DX_NAMES = re.compile(r'^(diagnosis|dx|group|clinical_group)$', re.IGNORECASE)


@lru_cache(maxsize=1)
def _dosenbach() -> tuple[np.ndarray, tuple[str, ...]]:
    from nilearn.datasets import fetch_coords_dosenbach_2010

    d = fetch_coords_dosenbach_2010()
    rois = d.rois
    xyz = np.asarray(rois[['x', 'y', 'z']] if hasattr(rois, 'columns')
                     else [tuple(r) for r in rois], float)
    return xyz, tuple(str(n) for n in d.networks)


def atlas_weights(affine: np.ndarray, shape: Sequence[int], radius: float = RADIUS_MM
                  ) -> np.ndarray:
    """1 inside a Dosenbach-160 sphere, 2 inside a default-network one, 0 elsewhere."""
    xyz, networks = _dosenbach()
    ijk = np.indices(shape).reshape(3, -1).T
    mm = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    out = np.zeros(int(np.prod(shape)), np.float32)
    for centre, net in zip(xyz, networks):
        inside = np.sum((mm - centre) ** 2, 1) <= radius ** 2
        out[inside] = np.maximum(out[inside], 2.0 if net == 'default' else 1.0)
    return out.reshape(tuple(shape))


def diagnosis_column(schema: dict) -> str | None:
    """The categorical column that holds the diagnosis (``diagnosis``, ``dx``, ``group``)."""
    for name, spec in schema.items():
        if spec.get('type') == 'categorical' and _DX_NAMES.match(name) and spec.get('levels'):
            return name
    return None


def diagnosis_pattern(arrays: Sequence[np.ndarray], labels: Sequence, reference, mask,
                      sigma_vox: float = 1.0) -> np.ndarray:
    """0-1 map of the diagnosis effect (module docstring) of images ``arrays`` (C, X, Y, Z).

    ``labels`` is each image's diagnosis (None when unknown), ``reference`` the reference
    level.

    >>> m = np.ones((4, 4, 4), bool); a = [np.zeros((1, 4, 4, 4)) for _ in range(4)]
    >>> a[2][0, 0] += 1; a[3][0, 0] += 1.2
    >>> p = diagnosis_pattern(a, ['CN', 'CN', 'AD', 'AD'], 'CN', m, sigma_vox=0)
    >>> float(p[0].min()) > float(p[3].max())
    True
    """
    from scipy.ndimage import gaussian_filter

    mask = np.asarray(mask, bool)
    ref = [a for a, lab in zip(arrays, labels) if lab is not None and str(lab) == str(reference)]
    pat = [a for a, lab in zip(arrays, labels) if lab is not None and str(lab) != str(reference)]
    if len(ref) < 2 or len(pat) < 2:
        return np.zeros(mask.shape, np.float32)
    ref, pat = np.stack(ref).astype(np.float64), np.stack(pat).astype(np.float64)
    var = (ref.var(0, ddof=1) * (len(ref) - 1) + pat.var(0, ddof=1) * (len(pat) - 1)) / (
        len(ref) + len(pat) - 2)
    d = np.abs(pat.mean(0) - ref.mean(0)) / np.sqrt(var + 1e-12 + 1e-6 * var[:, mask].mean())
    effect = d.mean(0) * mask
    if sigma_vox:
        effect = gaussian_filter(effect, sigma_vox) * mask
    top = float(np.percentile(effect[mask], 95)) if mask.any() else 0.0
    top = top if top > 0 else float(effect.max())  # a focal effect: under 5% of the brain
    return (np.clip(effect / top, 0, 1) if top > 0 else effect * 0).astype(np.float32)


def pattern_weights(mask, affine, arrays=(), labels=(), reference=None) -> np.ndarray:
    """Voxel weights (module docstring), mean 1 inside ``mask``, 0 outside."""
    mask = np.asarray(mask, bool)
    w = 1.0 + atlas_weights(affine, mask.shape)
    if reference is not None and len(arrays):
        w = w + 2.0 * diagnosis_pattern(arrays, labels, reference, mask)
    w = w * mask
    return (w / w[mask].mean()).astype(np.float32)
