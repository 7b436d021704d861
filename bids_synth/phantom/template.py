"""The template the phantom is built from, prepared once and cached.

nilearn's MNI152 2009a symmetric GM/WM maps and brain mask at 1 mm, cropped to the brain, with
2 mm block averages (true partial volumes), a fibre orientation field, the fields that open the
ventricles / shrink the medial temporal lobe, and smooth regional weight maps (regions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from bids_synth.preprocessing.regions import PATTERNS, pattern_mask, region_mask

__all__ = ['NETWORK_NODES', 'Template', 'load_template']

#: network nodes (DMN then task-positive, regions.py names) of ``Template.maps['net']``
NETWORK_NODES = PATTERNS['dmn'] + PATTERNS['task_positive']
#: bump when the prepared template changes (names the on-disk cache)
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Template:
    """Template tissue maps (cropped to the brain) at 1 mm and 2 mm.

    Attributes
    ----------
    affine, affine2 : ndarray
        Voxel-to-MNI affines of the 1 mm and 2 mm grids.
    gm, wm, csf : ndarray
        Tissue fractions at 1 mm (float32, sum to the brain mask).
    gm2, wm2, csf2 : ndarray
        The same, block-averaged to 2 mm (true partial volumes).
    dyad2 : ndarray
        (6, ...) mean fibre dyadic ``v v^T`` (xx, yy, zz, xy, xz, yz) at 2 mm.
    vent_pull, mt_push : ndarray
        (3, ...) unit-peak fields at 2 mm that open the lateral ventricles / shrink the medial
        temporal lobe when added to a velocity field.
    centre : ndarray
        Brain centroid (MNI mm).
    maps : dict
        Smooth regional weight maps at 2 mm (unit peak): ``periv`` (periventricular
        proximity), ``mt`` (medial temporal), ``fdg_ad``, ``amy`` (amyloid cortical summary),
        ``neocortex`` (1 outside the posterior fossa), ``net`` (R, ...) network nodes in the
        order of ``NETWORK_NODES``.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    affine2: np.ndarray
    gm2: np.ndarray
    wm2: np.ndarray
    csf2: np.ndarray
    dyad2: np.ndarray
    vent_pull: np.ndarray
    mt_push: np.ndarray
    centre: np.ndarray
    maps: dict


def _block2(a: np.ndarray) -> np.ndarray:
    s = a.shape
    return a.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5))


def _fibre_dyadics(wm2: np.ndarray) -> np.ndarray:
    """Fibre orientation from the structure tensor of the WM map (smallest eigenvector).

    Inside a WM bundle the WM probability varies least along the bundle, so the eigenvector of
    the smallest eigenvalue of the local structure tensor is a proxy for the fibre direction.
    A heuristic (no tractography), but it follows the shape of the WM.
    """
    w = ndi.gaussian_filter(wm2, 1.0)
    g = np.gradient(w)
    pairs = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
    st = np.stack([ndi.gaussian_filter(g[i] * g[j], 2.0) for i, j in pairs])
    sel = wm2 > 0.05
    t = np.zeros((int(sel.sum()), 3, 3), dtype=np.float64)
    for c, (i, j) in enumerate(pairs):
        t[:, i, j] = t[:, j, i] = st[c][sel]
    _, vecs = np.linalg.eigh(t + 1e-12 * np.eye(3))
    v = vecs[:, :, 0]
    dy = np.zeros((6,) + wm2.shape, dtype=np.float32)
    for c, (i, j) in enumerate(pairs):
        dy[c][sel] = v[:, i] * v[:, j]
    dy = np.stack([ndi.gaussian_filter(d, 0.7) for d in dy])
    tr = dy[0] + dy[1] + dy[2]
    ok = tr > 1e-3
    dy[:, ok] /= tr[ok]
    dy[:3, ~ok] = 1.0 / 3.0  # isotropic where undefined
    return dy


def _unit_grad(mask: np.ndarray, sigma: float) -> np.ndarray:
    s = ndi.gaussian_filter(mask.astype(np.float32), sigma)
    g = np.stack(np.gradient(s)).astype(np.float32)
    return g / max(float(np.sqrt((g**2).sum(0)).max()), 1e-6)


def _mni152_arrays():
    """T1, GM and WM of nilearn's MNI152 2009a sym (1 mm), each rescaled to a maximum of 1.

    Reads the files nilearn ships directly (importing ``nilearn.datasets`` costs seconds) and
    does what ``load_mni152_template`` / ``_gm_template`` / ``_wm_template`` do at
    resolution 1; falls back to those functions if the files are not where expected.
    """
    import importlib.util
    from pathlib import Path

    import nibabel as nib

    spec = importlib.util.find_spec('nilearn')
    names = ('t1', 'gm', 'wm')
    if spec and spec.submodule_search_locations:
        data = Path(list(spec.submodule_search_locations)[0]) / 'datasets' / 'data'
        paths = [data / f'mni_icbm152_{n}_tal_nlin_sym_09a_converted.nii.gz' for n in names]
        if all(p.is_file() for p in paths):
            imgs = [nib.load(p) for p in paths]
            arrs = [np.asarray(i.get_fdata(dtype=np.float32)) for i in imgs]
            return [a / a.max() for a in arrs], imgs[0].affine
    from nilearn import datasets  # pragma: no cover - unusual nilearn layout

    imgs = [datasets.load_mni152_template(resolution=1),
            datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1)]
    return [np.asarray(i.get_fdata(dtype=np.float32)) for i in imgs], imgs[0].affine


def _unit(m, sigma: float) -> np.ndarray:
    w = ndi.gaussian_filter(m.astype(np.float32), sigma)
    return w / max(float(w.max()), 1e-6)


def _derived_maps(aff: np.ndarray, shape, vent: np.ndarray) -> dict:
    """Smooth regional weights on the 2 mm grid (see ``Template.maps``)."""
    dist = ndi.distance_transform_edt(~vent) * 2.0  # mm
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x, y, z = (aff[:3, :3] @ ijk + aff[:3, 3:4]).reshape((3,) + tuple(shape))

    def sig(v):
        return 1 / (1 + np.exp(-v))

    # posterior fossa (cerebellum and brainstem): no amyloid deposition
    fossa = np.maximum(sig((-38 - y) / 3) * sig((-12 - z) / 3),
                       sig((-18 - z) / 3) * sig((12 - np.abs(x)) / 3) * sig((y + 45) / 3))
    fossa = np.maximum(fossa, _unit(region_mask('cerebellum', aff, shape), 2.0))
    return {
        'periv': np.exp(-dist / 6.0).astype(np.float32),
        'mt': _unit(pattern_mask('medial_temporal', aff, shape), 1.5),
        'fdg_ad': _unit(pattern_mask('fdg_ad', aff, shape), 2.0),
        'amy': _unit(pattern_mask('amyloid_cortex', aff, shape), 3.0),
        'neocortex': (1 - fossa).astype(np.float32),
        'net': np.stack([_unit(region_mask(n, aff, shape), 1.5) for n in NETWORK_NODES]),
    }


def _build_template() -> Template:
    """Load and prepare nilearn's MNI152 2009a symmetric tissue maps (offline, cached).

    The brain mask is the T1 above 0.2 of its maximum, as ``load_mni152_brain_mask``.
    """
    (t1, gm, wm), src_affine = _mni152_arrays()
    mask = (t1 > 0.2).astype(np.float32)
    gm = gm * mask
    wm = wm * mask
    tot = gm + wm
    over = tot > 1
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf = np.clip(mask - gm - wm, 0, 1)
    # crop to the brain plus a margin, with even sizes for 2 mm block averaging
    idx = np.argwhere(mask > 0)
    lo = np.maximum(idx.min(0) - 6, 0)
    hi = lo + 2 * np.ceil((idx.max(0) + 7 - lo) / 2).astype(int)
    pad = np.maximum(hi - np.array(mask.shape), 0)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = [np.pad(a, [(0, p) for p in pad])[sl] for a in (gm, wm, csf, mask)]
    gm, wm, csf, mask = crop
    affine = np.array(src_affine, dtype=float)
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    affine2 = affine.copy()
    affine2[:3, :3] *= 2
    affine2[:3, 3] += affine[:3, :3] @ [0.5, 0.5, 0.5]
    gm2, wm2, csf2 = (_block2(a) for a in (gm, wm, csf))
    xyz = affine[:3, :3] @ np.argwhere(mask > 0).T.astype(float) + affine[:3, 3:4]
    centre = xyz.mean(1)
    # ventricles: the CSF components of the lateral ventricles near their published-in-template
    # spheres; medial temporal lobe: hippocampus + entorhinal spheres (regions.py)
    vent_seed = region_mask('lateral_ventricles', affine2, gm2.shape)
    vent = (csf2 > 0.5) & ndi.binary_dilation(vent_seed, iterations=3)
    mt = pattern_mask('medial_temporal', affine2, gm2.shape)
    maps = _derived_maps(affine2, gm2.shape, vent)
    return Template(
        affine=affine, gm=gm, wm=wm, csf=csf,
        affine2=affine2, gm2=gm2, wm2=wm2, csf2=csf2,
        dyad2=_fibre_dyadics(wm2),
        vent_pull=_unit_grad(vent, 2.0),
        mt_push=-_unit_grad(mt, 2.0),
        centre=centre,
        maps=maps,
    )


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The prepared template (cached in memory, and on disk between processes).

    The disk cache lives in ``$BIDS_SYNTH_CACHE`` (default ``~/.cache/bids_synth``); it is
    skipped silently when that folder cannot be written.
    """
    import os
    import tempfile
    from pathlib import Path

    root = Path(os.environ.get('BIDS_SYNTH_CACHE') or Path.home() / '.cache' / 'bids_synth')
    path = root / f'phantom_template_v{_CACHE_VERSION}.npz'
    if path.is_file():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
            maps = {k[5:]: v for k, v in arrays.items() if k.startswith('maps_')}
            fields = {k: v for k, v in arrays.items() if not k.startswith('maps_')}
            return Template(**fields, maps=maps)
        except (OSError, ValueError, TypeError, KeyError):
            pass
    tpl = _build_template()
    try:
        root.mkdir(parents=True, exist_ok=True)
        fields = {k: getattr(tpl, k) for k in Template.__dataclass_fields__ if k != 'maps'}
        fields.update({f'maps_{k}': v for k, v in tpl.maps.items()})
        fd, tmp = tempfile.mkstemp(dir=root, suffix='.npz')
        with os.fdopen(fd, 'wb') as fh:
            np.savez(fh, **fields)
        os.replace(tmp, path)
    except OSError:
        pass
    return tpl


