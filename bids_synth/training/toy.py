"""A toy cohort on the model grid, for tests, benchmarks and development before real data.

Each fake subject's channels are different mixtures of the same tissue maps (grey/white matter,
CSF) times a smooth subject-specific field, plus a "disease" effect in the AD regions scaled by
a clinical score, so the modalities share structure and the clinical values matter. Tissue maps
come from the MNI template (``use_template=True``) or from nested ellipsoids (no files needed).

This is not the project's phantom (``bids_synth.phantom``), which simulates real acquisitions.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy.ndimage import gaussian_filter

from ..bids.modalities import MODALITIES
from ..models.imputer import SessionArrays
from ..preprocessing.regions import pattern_mask
from ..preprocessing.templates import model_grid

__all__ = ['toy_tissues', 'toy_cohort', 'TOY_SCHEMA']

TOY_SCHEMA = {
    'age': {'type': 'continuous', 'mean': 70.0, 'std': 8.0},
    'sex': {'type': 'categorical', 'levels': ['F', 'M']},
    'mmse': {'type': 'continuous', 'mean': 26.0, 'std': 3.0},
}


def toy_tissues(res: int, use_template: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Tissue maps (3, X, Y, Z) (GM, WM, CSF) and brain mask (X, Y, Z) on ``model_grid(res)``."""
    affine, shape = model_grid(res)
    if use_template:
        from ..preprocessing.templates import load_template

        t = load_template(res)
        return np.stack([t.gm, t.wm, t.csf]).astype(np.float32), np.asarray(t.mask, bool)
    ijk = np.indices(shape, dtype=np.float32)
    xyz = np.einsum('ij,j...->i...', affine[:3, :3], ijk) + affine[:3, 3].reshape(3, 1, 1, 1)
    r = np.sqrt((xyz[0] / 68) ** 2 + ((xyz[1] + 18) / 86) ** 2 + ((xyz[2] - 10) / 62) ** 2)
    mask = r < 1.0
    wm = np.clip(1.6 - 2.2 * r, 0, 1) * mask
    csf = np.clip(1 - np.abs(r - 0.15) * 12, 0, 1) * mask
    gm = np.clip(mask - wm - csf, 0, 1)
    return np.stack([gm, wm, csf]).astype(np.float32), mask


# per-channel mixing weights of (GM, WM, CSF)
_MIX = {'T1w': (0.6, 1.0, 0.15), 'T2w': (0.7, 0.45, 1.0), 'FLAIR': (0.8, 0.6, 0.1),
        'T1wCE': (0.6, 1.0, 0.2), 'FDG': (1.6, 0.6, 0.1), 'AV45': (0.9, 1.3, 0.1)}


def toy_cohort(res: int, n_subjects: int, modalities: tuple[str, ...], *, seed: int = 0,
               use_template: bool = False, sessions_per_subject: int = 1
               ) -> tuple[list[SessionArrays], np.ndarray]:
    """Fake sessions (all modalities present) and the brain mask.

    Returns
    -------
    sessions : list of SessionArrays
    mask : numpy.ndarray, shape (X, Y, Z), bool
    """
    rng = np.random.default_rng(seed)
    affine, shape = model_grid(res)
    tissues, mask = toy_tissues(res, use_template)
    ad = pattern_mask('fdg_ad', affine, shape).astype(np.float32)
    mtl = pattern_mask('medial_temporal', affine, shape).astype(np.float32)
    sigma = 24.0 / res
    out = []
    for s in range(n_subjects):
        age = float(rng.normal(70, 8))
        mmse = float(np.clip(rng.normal(26, 3), 10, 30))
        severity = (30 - mmse) / 20
        for k in range(sessions_per_subject):
            field = 1 + 0.15 * gaussian_filter(rng.standard_normal(shape), sigma) * sigma
            atrophy = 1 - 0.3 * severity * mtl
            images = {}
            for m in modalities:
                nch = MODALITIES[m].n_channels
                chans = []
                for c in range(nch):
                    rng_w = np.random.default_rng(zlib.crc32(f'{m}{c}'.encode()))
                    w = _MIX.get(m) or rng_w.random(3)
                    img = np.tensordot(np.asarray(w, np.float32), tissues, axes=1) * atrophy
                    if m in ('FDG',):
                        img = img * (1 - 0.35 * severity * ad)
                    if m in ('AV45',):
                        img = img * (1 + 0.5 * severity * ad)
                    chans.append((img * field * mask).astype(np.float32))
                images[m] = np.stack(chans)
            out.append(SessionArrays(
                subject=f'{s + 1:02d}', session=str(k + 1) if sessions_per_subject > 1 else None,
                images=images,
                clinical={'age': age, 'sex': 'F' if rng.random() < 0.5 else 'M', 'mmse': mmse}))
    return out, mask
