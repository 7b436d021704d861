"""Guided refinement of a synthesized sMRI image on the native grid.

A synthesized image comes from the model grid (4 mm for the embedded model) and is resampled
onto the session's native reference grid (about 1 mm): it has the right contrast but 4 mm
detail. The acquired sMRI reference has the 1 mm detail, in another contrast. Within a small
window two tissues meet at most, so the target contrast is locally a linear function of the
guide's: ``out = a * guide + b`` (the guided filter of He, Sun and Tang, "Guided image
filtering", IEEE TPAMI 2013).

The coefficients are fitted between the synthesized image ``p`` and the guide *as the model
saw it*: the guide resampled through the model grid and back (``guide_low``, the same
degradation as ``p``), so the slope ``a`` is not shrunk by the blur of ``p`` (guided
upsampling). They are then applied to the full-resolution guide::

    a = cov_w(guide_low, p) / (var_w(guide_low) + eps)      b = mean_w(p) - a * mean_w(guide_low)
    out = mean_w(a) * guide + mean_w(b)

``mean_w`` is a box mean over a ``(2r + 1)`` voxel window (``scipy.ndimage.uniform_filter``)
restricted to the brain mask (normalized convolution), so nothing outside the brain enters the
fit. With several guide channels (several sMRI inputs) ``a`` is a vector and the variance a
covariance matrix (He et al.'s colour guided filter, a local multi-channel regression).
``eps`` is in squared guide units, each guide channel being divided by its 99th percentile in
the mask first; where the guide is flat (its variance well under ``eps``) ``a`` goes to 0 and
the output is the synthesized image's local mean. Voxels outside the mask are returned
unchanged, and the output keeps the units of ``p`` (``a`` and ``b`` map the guide onto ``p``).

>>> import numpy as np
>>> x = np.linspace(-1, 1, 24)
>>> guide = np.broadcast_to((x > 0).astype(float)[:, None, None], (24, 8, 8)).copy()
>>> from scipy.ndimage import uniform_filter1d
>>> blurred = uniform_filter1d(2.0 * guide + 1.0, 7, axis=0)
>>> mask = np.ones(guide.shape, bool)
>>> out = guided_refine(blurred, guide, mask, guide_low=uniform_filter1d(guide, 7, axis=0),
...                     radius=3, eps=1e-4)
>>> round(float(out[11, 4, 4]), 2), round(float(out[12, 4, 4]), 2)  # the step is back
(1.0, 3.0)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ['RADIUS_MM', 'EPS', 'radius_voxels', 'guided_refine', 'to_reference_grid',
           'refine_native']

#: Half-width of the fitting window (mm). Chosen on a phantom cohort (``bench/native.py
#: --sweep``, seed 31, 4 mm model grid, 1 mm guides) among 2, 3 and 4 mm: 2 mm scored the best
#: SSIM on T2w and FLAIR and the best PSNR on FLAIR (on T2w 3-4 mm gave 0.05 dB more).
RADIUS_MM = 2.0
#: Regularization of the slope, in squared units of the guide divided by its p99 in the mask
#: (chosen with the radius, among 1e-4 and 1e-3).
EPS = 1e-4


def radius_voxels(radius_mm: float, zooms) -> tuple[int, ...]:
    """Window half-width in voxels along each axis (at least 1).

    >>> radius_voxels(4.0, (1.0, 1.0, 1.2))
    (4, 4, 3)
    """
    return tuple(max(1, int(round(radius_mm / float(z)))) for z in zooms[:3])


def _bbox(mask: np.ndarray, margin) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(0, int(i.min()) - m), min(n, int(i.max()) + m + 1))
                 for i, m, n in zip(idx, margin, mask.shape))


def guided_refine(target: np.ndarray, guide: np.ndarray, mask: np.ndarray, *,
                  guide_low: np.ndarray | None = None, radius=3,
                  eps: float = EPS) -> np.ndarray:
    """Refine ``target`` with the detail of ``guide`` inside ``mask`` (guided filter).

    Parameters
    ----------
    target : ndarray, shape (X, Y, Z)
        The image to refine (the synthesized image resampled onto the native grid).
    guide : ndarray, shape (X, Y, Z) or (C, X, Y, Z)
        The acquired image(s) on the same grid, full resolution.
    mask : ndarray of bool, shape (X, Y, Z)
        Where to refine (the brain); the output equals ``target`` elsewhere.
    guide_low : ndarray, optional, shape of ``guide``
        The guide degraded as ``target`` was (resampled through the model grid); the
        coefficients are fitted on it. Default: ``guide`` (the plain guided filter).
    radius : int or tuple of int
        Window half-width in voxels, per axis or for all (:func:`radius_voxels`).
    eps : float
        Regularization (squared guide units after division by the guide's p99 in the mask).

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Non-negative inside the mask.
    """
    target = np.asarray(target, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    guide = np.asarray(guide, dtype=np.float32)
    if guide.ndim == 3:
        guide = guide[None]
    low = guide if guide_low is None else np.asarray(guide_low, dtype=np.float32)
    if low.ndim == 3:
        low = low[None]
    if guide.shape[1:] != target.shape or low.shape != guide.shape or mask.shape != target.shape:
        raise ValueError(f'guided_refine: shapes differ: target {target.shape}, guide '
                         f'{guide.shape}, guide_low {low.shape}, mask {mask.shape}')
    if eps <= 0:
        raise ValueError(f'guided_refine: eps must be positive, got {eps}')
    out = target.copy()
    if not mask.any():
        return out
    rad = (int(radius),) * 3 if np.isscalar(radius) else tuple(int(r) for r in radius)
    size = tuple(2 * r + 1 for r in rad)
    box = _bbox(mask, tuple(2 * r for r in rad))  # two box passes reach 2r from the mask
    m = mask[box].astype(np.float32)
    n_c = guide.shape[0]
    # each channel in units of its p99 in the mask, centred (float32 products stay accurate)
    scale = [float(np.percentile(guide[c][mask], 99)) or 1.0 for c in range(n_c)]
    centre = [float(guide[c][mask].mean()) / s for c, s in enumerate(scale)]
    g = np.stack([guide[c][box] / s - mu for c, (s, mu) in enumerate(zip(scale, centre))])
    gl = np.stack([low[c][box] / s - mu for c, (s, mu) in enumerate(zip(scale, centre))])
    p_mu = float(target[mask].mean())
    p = target[box] - p_mu
    weight = ndi.uniform_filter(m, size, mode='constant')
    valid = weight > 1e-6
    inv_w = np.where(valid, 1.0 / np.where(valid, weight, 1.0), 0.0).astype(np.float32)

    def mean(x):
        return ndi.uniform_filter(x * m, size, mode='constant') * inv_w

    mu_l = [mean(gl[c]) for c in range(n_c)]
    mu_p = mean(p)
    cov = np.stack([mean(gl[c] * p) - mu_l[c] * mu_p for c in range(n_c)], axis=-1)
    sigma = np.empty(p.shape + (n_c, n_c), np.float32)
    for i in range(n_c):
        for j in range(i, n_c):
            v = mean(gl[i] * gl[j]) - mu_l[i] * mu_l[j]
            sigma[..., i, j] = sigma[..., j, i] = v
    sigma += eps * np.eye(n_c, dtype=np.float32)
    if n_c == 1:
        a = cov / sigma[..., 0]
    else:
        a = np.linalg.solve(sigma, cov[..., None])[..., 0]
    b = mu_p - sum(a[..., c] * mu_l[c] for c in range(n_c))
    refined = mean(b) + sum(mean(a[..., c]) * g[c] for c in range(n_c)) + p_mu
    inside = mask[box]
    region = out[box]
    region[inside] = np.clip(refined[inside], 0.0, None)
    return out


def to_reference_grid(img_file, transform, ref_transform, ref_file) -> np.ndarray:
    """Resample a native 3D image onto the reference's native grid through the template.

    Composes the image's native -> template transform with the reference's template ->
    native one (both affine, one linear interpolation). Returns shape (x, y, z), float32.
    """
    import ants

    moving = ants.image_read(str(img_file)).clone('float')
    fixed = ants.image_read(str(ref_file))
    # ants.apply_transforms maps each output point through the list in order (checked: with
    # [A, B] the moving image is sampled at B(A(p))): reference native -> template -> image
    to_tpl, to_tpl_inv = ref_transform.ants_to_native()
    to_img, to_img_inv = transform.ants_to_template()
    tlist, inv = list(to_tpl) + list(to_img), list(to_tpl_inv) + list(to_img_inv)
    out = ants.apply_transforms(fixed, moving, tlist, whichtoinvert=inv, interpolator='linear')
    return out.numpy().astype(np.float32)


def refine_native(synth_img, guide_file, transform, template, *, work_dir,
                  radius_mm: float = RADIUS_MM, eps: float = EPS, extra_guides=()):
    """Refine a native-grid synthesized sMRI image with the acquired reference as guide.

    Parameters
    ----------
    synth_img : Nifti1Image, shape (x, y, z)
        The synthesized image resampled onto the native reference grid (``to_native``).
    guide_file : path
        The native reference as conformed (N4-corrected and brain-extracted when that ran):
        the grid of ``synth_img``.
    transform : Transform or path
        The reference's native -> template transform.
    template : TemplateSpec
        The model grid.
    work_dir : path
        Receives a copy of the transform (nothing is written beside the original).
    radius_mm, eps : float
        Window half-width and regularization (:func:`guided_refine`).
    extra_guides : sequence of (path, Transform or path)
        Other acquired sMRI images of the session (as conformed, on their own grids) with
        their transforms: more guide channels (:func:`to_reference_grid`), a local
        multi-channel regression. One whose largest voxel side is not under the model grid's
        spacing is left out (``info['extra_guides_used']``: indices of those used).

    Returns
    -------
    image : Nifti1Image, shape (x, y, z), float32
    info : dict
        JSON-plain parameters: radius in mm and voxels, eps, guide voxel size, mask voxels.
    """
    import dataclasses
    import shutil
    from pathlib import Path

    import nibabel as nib

    from .conform import Transform, apply_to_template, to_native

    def local(tx, name):  # apply_to_template writes beside the .mat: not in another node
        if not isinstance(tx, Transform):
            tx = Transform.from_path(tx)
        path = Path(work_dir) / f'refine_{name}_xfm.mat'
        shutil.copyfile(tx.path, path)
        return dataclasses.replace(tx, path=str(path))

    transform = local(transform, 'guide')
    guide_img = nib.load(str(guide_file))
    guide = np.asarray(guide_img.dataobj, dtype=np.float32)
    while guide.ndim > 3:
        guide = guide[..., 0]
    guide = np.nan_to_num(guide)
    if guide.shape != synth_img.shape[:3]:
        raise ValueError(f'refine: guide {guide.shape} and synthesized {synth_img.shape} grids '
                         'differ')
    def through_model_grid(data, affine, tx):  # what the model saw, on the guide's grid
        low = apply_to_template(nib.Nifti1Image(data, affine), template, tx)
        return np.asarray(to_native(low, template, transform, str(guide_file)).dataobj,
                          dtype=np.float32)

    guides, lows = [guide], [through_model_grid(guide, guide_img.affine, transform)]
    used = []
    for i, (path, tx) in enumerate(extra_guides, start=1):
        other = nib.load(str(path))
        if max(other.header.get_zooms()[:3]) >= float(template.res):
            continue  # no finer detail than the model saw (e.g. thick slices)
        used.append(i - 1)
        tx = local(tx, f'extra{i}')
        data = np.nan_to_num(np.asarray(other.dataobj, dtype=np.float32))
        while data.ndim > 3:
            data = data[..., 0]
        guides.append(to_reference_grid(path, tx, transform, guide_file))
        lows.append(through_model_grid(data, other.affine, tx))
    brain = to_native(template.mask.astype(np.float32), template, transform, str(guide_file))
    mask = (np.asarray(brain.dataobj) > 0.5) & (guide > 0)
    zooms = tuple(float(z) for z in guide_img.header.get_zooms()[:3])
    rad = radius_voxels(radius_mm, zooms)
    synth = np.asarray(synth_img.dataobj, dtype=np.float32)
    out = guided_refine(synth, np.stack(guides), mask, guide_low=np.stack(lows), radius=rad,
                        eps=eps)
    img = nib.Nifti1Image(out, synth_img.affine)
    img.header.set_xyzt_units('mm')
    info = {'radius_mm': float(radius_mm), 'radius_voxels': list(rad), 'eps': float(eps),
            'guide_voxel_mm': [round(z, 3) for z in zooms], 'mask_voxels': int(mask.sum()),
            'guide_channels': len(guides), 'extra_guides_used': used}
    return img, info
