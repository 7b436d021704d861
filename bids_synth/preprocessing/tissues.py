"""Tissue probability maps (CSF, GM, WM) of a session on the model grid.

PDS's tissue refinement (:mod:`bids_synth.models.refinement`) conditions on the subject's
tissue maps: from its conformed T1w when the session has one, else the template's. The T1w is
segmented by ANTs Atropos (antspyx) with the template's tissue probability maps as spatial
priors, so the classes keep their meaning whatever the contrast scale of the input; at the
4 mm model grid this takes about a second.

>>> import numpy as np
>>> priors = np.zeros((3, 6, 6, 6), np.float32); priors[0, :2] = 1; priors[1, 2:4] = 1
>>> priors[2, 4:] = 1
>>> tissue_maps(None, priors, np.ones((6, 6, 6), bool))[1]
'template'
"""

from __future__ import annotations

import numpy as np

__all__ = ['TISSUES', 'template_priors', 'tissue_maps']

#: Order of the maps everywhere in bids_synth.
TISSUES = ('csf', 'gm', 'wm')


def template_priors(template) -> np.ndarray:
    """The template's tissue probability maps, shape (3, X, Y, Z), in :data:`TISSUES` order."""
    return np.stack([np.asarray(getattr(template, t), np.float32) for t in TISSUES])


def tissue_maps(t1w: np.ndarray | None, priors: np.ndarray, mask: np.ndarray,
                prior_weight: float = 0.25) -> tuple[np.ndarray, str]:
    """(maps, source): CSF/GM/WM probabilities (3, X, Y, Z) inside ``mask``, 0 outside.

    ``t1w`` is the session's conformed T1w (model grid) or None; ``priors`` the template's maps
    (:func:`template_priors`). ``source`` is ``'T1w'`` (Atropos, prior-weighted) or
    ``'template'`` (no T1w, a blank T1w, or a segmentation that failed).
    """
    mask = np.asarray(mask, bool)
    if t1w is None or not np.isfinite(t1w).all() or np.ptp(t1w[mask]) <= 0:
        return (priors * mask).astype(np.float32), 'template'
    import ants

    img = ants.from_numpy(np.ascontiguousarray(t1w, np.float32))
    msk = ants.from_numpy(mask.astype(np.float32))
    pri = [ants.from_numpy(np.ascontiguousarray(p, np.float32)) for p in priors]
    try:
        seg = ants.atropos(a=img, x=msk, i=pri, m='[0.1,1x1x1]', c='[5,0]',
                           priorweight=prior_weight, v=0, r=0)  # r=0: fixed seed, same maps
    except Exception:  # antspyx raises a bare Exception when Atropos fails
        return (priors * mask).astype(np.float32), 'template'
    maps = np.stack([p.numpy() for p in seg['probabilityimages']]).astype(np.float32)
    return maps * mask, 'T1w'
