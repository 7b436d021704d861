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

__all__ = ['RADIUS_MM', 'EPS', 'METHODS', 'radius_voxels', 'guided_refine', 'tissue_anchors',
           'local_anchors', 'tissue_transfer', 'to_reference_grid', 'refine_native']

#: Native refinement methods (``--native-refine``): ``transfer`` (:func:`tissue_transfer`) and
#: ``guided`` (:func:`guided_refine`).
METHODS = ('transfer', 'guided')
#: Spacing (mm) of the grid on which the guide is segmented for :func:`tissue_transfer`'s
#: anchors (tissue means need no more detail; Atropos at 1 mm takes about a minute).
SEGMENT_MM = 2.0
#: Gaussian sigma (mm) of the guide's local tissue means (:func:`local_anchors`).
LOCAL_MM = 12.0
#: Blur of the model-grid output, as a FWHM in model-grid voxels, for the fit of its tissue
#: levels (linear interpolation of the grid and the resampling back to it).
BLUR_FWHM = 1.5
#: A voxel counts for a tissue's mean when its posterior is at least this.
CONFIDENT = 0.9

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


def tissue_anchors(image: np.ndarray, maps: np.ndarray, mask: np.ndarray, *,
                   within: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``image`` in each tissue of ``maps`` (3, X, Y, Z): over the voxels of ``mask``
    whose posterior is at least :data:`CONFIDENT` (and ``within[k]`` where given) when there
    are 8 or more, else posterior-weighted over the mask. Shape (3,), NaN for a tissue with
    no voxel.

    >>> maps = np.zeros((3, 4, 1, 1)); maps[0, 0] = maps[1, 1] = maps[2, 2:] = 1
    >>> tissue_anchors(np.array([1.0, 2.0, 3.0, 5.0])[:, None, None], maps,
    ...                np.ones((4, 1, 1), bool)).tolist()
    [1.0, 2.0, 4.0]
    """
    out = np.full(len(maps), np.nan)
    for k, pk in enumerate(maps):
        sure = mask & (pk >= CONFIDENT)
        if within is not None:
            sure &= np.asarray(within[k], bool)
        if sure.sum() >= 8:
            out[k] = float(image[sure].mean())
        elif (w := float(pk[mask].sum())) > 0:
            out[k] = float((image[mask] * pk[mask]).sum() / w)
    return out


def local_anchors(image: np.ndarray, maps: np.ndarray, mask: np.ndarray, sigma,
                  global_anchors: np.ndarray, prior: float = 0.01) -> np.ndarray:
    """Tissue means of ``image`` around each voxel, shape (3, X, Y, Z): Gaussian-weighted
    (``sigma`` voxels, per axis or for all) over the confident voxels of each tissue,
    shrunk towards ``global_anchors`` where a tissue has few voxels nearby (``prior``: the
    weight of the global mean, in units of the Gaussian's normalized mass). A smooth bias
    field of the guide (one the pipeline did not correct) moves them with it.

    >>> maps = np.zeros((3, 30, 1, 1)); maps[0, ::3] = maps[1, 1::3] = maps[2, 2::3] = 1
    >>> ramp = np.linspace(1.0, 2.0, 30)[:, None, None]          # a bias field
    >>> img = np.tensordot([1.0, 2.0, 3.0], maps, 1) * ramp
    >>> a = local_anchors(img, maps, np.ones(img.shape, bool), (2, 0, 0), np.array([1, 2, 3.]))
    >>> (a[:, 15, 0, 0] / ramp[15, 0, 0]).round(1).tolist()
    [1.0, 2.0, 3.0]
    """
    from scipy.ndimage import gaussian_filter

    out = np.empty((len(maps),) + image.shape, np.float32)
    for k, pk in enumerate(maps):
        w = (mask & (pk >= CONFIDENT)).astype(np.float32)
        num = gaussian_filter(image * w, sigma, mode='constant')
        den = gaussian_filter(w, sigma, mode='constant')
        out[k] = (num + prior * global_anchors[k]) / (den + prior)
    return out


def tissue_transfer(guide: np.ndarray, anchors: np.ndarray, levels: np.ndarray,
                    mask: np.ndarray) -> np.ndarray:
    """Map the guide's intensities into the target contrast through its tissue means.

    Each voxel is mapped by the piecewise-linear function through the points
    ``(anchors[k], levels[k])`` (CSF, GM, WM; constant beyond the outer ones), so a voxel at
    the guide's GM intensity gets the target's GM level and a GM/WM partial-volume voxel a
    mix of the two. Inside ``mask`` only (0 elsewhere).

    Parameters
    ----------
    guide : ndarray, shape (X, Y, Z)
    anchors : ndarray, shape (3,) or (3, X, Y, Z)
        The guide's CSF/GM/WM means (:func:`tissue_anchors`), or per voxel
        (:func:`local_anchors`); ordered as their averages over the mask (a voxel whose
        local means cross is held to that order). Their averages must differ.
    levels : ndarray, shape (3,)
        The target contrast's CSF/GM/WM levels.

    >>> g = np.array([0.2, 0.5, 0.65, 0.8, 1.0])[:, None, None]
    >>> tissue_transfer(g, np.array([0.2, 0.5, 0.8]), np.array([0.9, 0.6, 0.3]),
    ...                 np.ones(g.shape, bool)).ravel().astype(float).round(2).tolist()
    [0.9, 0.6, 0.45, 0.3, 0.3]
    """
    guide = np.asarray(guide, np.float32)
    anchors = np.asarray(anchors, np.float32 if np.ndim(anchors) == 4 else float)
    levels = np.asarray(levels, float)
    mask = np.asarray(mask, bool)
    if guide.ndim != 3 or anchors.shape[0] != len(levels) or anchors.ndim not in (1, 4) or (
            anchors.ndim == 4 and anchors.shape[1:] != guide.shape):
        raise ValueError(f'tissue_transfer: anchors of shape {anchors.shape} do not fit a '
                         f'guide of shape {guide.shape} and {len(levels)} levels')
    knots = (anchors[:, mask] if anchors.ndim == 4 else
             np.repeat(anchors[:, None], int(mask.sum()), axis=1).astype(np.float32))
    if not np.isfinite(knots).all():
        raise ValueError('tissue_transfer: the tissue means are not all finite')
    mean = knots.mean(1, dtype=np.float64)
    order = np.argsort(mean)
    gap = np.min(np.diff(mean[order]))
    if gap <= 1e-6 * max(float(np.abs(mean).max()), 1e-12):
        raise ValueError(f'tissue_transfer: tissue means {mean.tolist()} are not distinct')
    x = knots[order]
    for i in range(1, len(x)):  # keep each voxel's knots in order, at least a tenth gap apart
        x[i] = np.maximum(x[i], x[i - 1] + 0.1 * gap)
    y = levels[order]
    g = guide[mask]
    val = np.full(g.shape, y[0], np.float32)
    for i in range(len(x) - 1):
        t = np.clip((g - x[i]) / (x[i + 1] - x[i]), 0.0, 1.0)
        val = np.where(g > x[i], y[i] + t * (y[i + 1] - y[i]), val)
    out = np.zeros(guide.shape, np.float32)
    out[mask] = np.clip(val, 0.0, None)
    return out


def _separation(image: np.ndarray, maps: np.ndarray, mask: np.ndarray,
                anchors: np.ndarray) -> float:
    """How well ``image`` separates the tissues: the smallest difference between two tissue
    means over the pooled within-tissue standard deviation (confident voxels); NaN if a
    tissue has none."""
    var = []
    for k, pk in enumerate(maps):
        sure = mask & (pk >= CONFIDENT)
        if sure.sum() < 8 or not np.isfinite(anchors[k]):
            return float('nan')
        var.append(float(image[sure].var()))
    a = np.sort(np.asarray(anchors, float))
    return float(np.min(np.diff(a)) / max(np.sqrt(np.mean(var)), 1e-12))


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


def _resize(a: np.ndarray, shape) -> np.ndarray:
    """Linear resampling of a smooth coarse map onto a grid of ``shape`` (same field of view)."""
    out = ndi.zoom(a, [n / m for n, m in zip(shape, a.shape)], order=1, mode='nearest')
    pad = [(0, max(0, n - o)) for n, o in zip(shape, out.shape)]
    out = np.pad(out, pad, mode='edge')
    return out[tuple(slice(0, n) for n in shape)]


def _transfer(synth, guides, mask, zooms, template, transform, guide_file, levels_from='fit'):
    """:func:`refine_native`'s ``transfer``: the output and its record."""
    from .conform import to_native
    from .tissues import TISSUES, template_priors, tissue_maps

    priors = np.asarray(to_native(template_priors(template), template, transform,
                                  str(guide_file)).dataobj, dtype=np.float32)
    factor = [z / SEGMENT_MM for z in zooms]

    def coarse(x, order=1):
        return ndi.zoom(np.asarray(x, np.float32), factor, order=order)

    cmask = coarse(mask.astype(np.float32), 0) > 0.5
    cpri = np.stack([coarse(priors[..., k]) for k in range(len(TISSUES))])
    cpri = np.clip(cpri, 0, None) / np.maximum(cpri.sum(0), 1e-6)
    cguides = [coarse(g) for g in guides]
    csynth = coarse(synth)
    maps, source = tissue_maps(cguides[0], cpri, cmask)
    # the guide channel that separates the tissues best (its closest pair of tissue means over
    # the within-tissue spread): averaging in a channel of weak contrast (FLAIR's GM/WM) only
    # adds its noise
    anchors, separation = [], []
    for cg in cguides:
        anchors.append(tissue_anchors(cg, maps, cmask))
        separation.append(_separation(cg, maps, cmask, anchors[-1]))
    best = int(np.nanargmax(separation)) if np.isfinite(separation).any() else 0
    # the guide's tissue means around each voxel: immune to a smooth bias field
    local = local_anchors(cguides[best], maps, cmask, LOCAL_MM / SEGMENT_MM, anchors[best])
    local = np.stack([_resize(a, guides[best].shape) for a in local])
    # the synthesized image's levels where the subject's tissue and the template's agree
    agree = np.stack([cpri[k] > 0.6 for k in range(len(TISSUES))])
    levels = tissue_anchors(csynth, maps, cmask, within=agree)
    if levels_from == 'fit':
        # the synthesized image has the model grid's blur: regress it on the tissue maps
        # blurred alike (a partial-volume model), over the voxels where a tissue of the
        # subject is likely and the template agrees, so the levels are not pulled together
        sigma = float(template.res) / SEGMENT_MM * BLUR_FWHM / 2.355
        blurred = np.stack([ndi.gaussian_filter(m, sigma) for m in maps])
        sel = cmask & np.any((maps >= 0.5) & agree, axis=0)
        if sel.sum() >= 10 * len(TISSUES):
            fit, *_ = np.linalg.lstsq(blurred[:, sel].T.astype(np.float64),
                                      csynth[sel].astype(np.float64), rcond=None)
            if np.isfinite(fit).all():
                levels = fit
    # the whole brain of the guide: the template's mask (the guided filter's domain) misses
    # the cortical edge of a brain larger than the template's after the affine registration
    wide = ndi.binary_dilation(np.asarray(template.mask, bool), iterations=2)
    wide = to_native(wide.astype(np.float32), template, transform, str(guide_file))
    # ... and not the background: a guide that is not skull-stripped to exact zeros (noise
    # around the head) is darker there than a quarter of its darkest tissue's mean
    floor = 0.25 * float(np.nanmin(anchors[best]))
    inside = (np.asarray(wide.dataobj) > 0.5) & (guides[best] > max(floor, 0.0))
    out = synth.copy()
    out[inside] = tissue_transfer(guides[best], local, levels, inside)[inside]
    record = {'mask_voxels': int(inside.sum()), 'segment_mm': SEGMENT_MM,
              'local_means_sigma_mm': LOCAL_MM, 'levels_from': levels_from,
              'transfer_channel': best,
              'tissue_separation': [round(float(x), 3) for x in separation],
              'segmentation': 'Atropos of the guide' if source == 'T1w' else
                              'template priors (Atropos failed)',
              'tissues': list(TISSUES), 'guide_tissue_means': np.round(anchors, 6).tolist(),
              'target_tissue_levels': levels.round(6).tolist()}
    return out, record


def refine_native(synth_img, guide_file, transform, template, *, work_dir,
                  radius_mm: float = RADIUS_MM, eps: float = EPS, extra_guides=(),
                  method: str = 'guided', levels_from: str = 'fit'):
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
    method : {'guided', 'transfer'}
        ``guided``: :func:`guided_refine`. ``transfer``: :func:`tissue_transfer` of the guide
        channel that separates the tissues best, anchored on its tissue means (the reference
        segmented by Atropos on a :data:`SEGMENT_MM` grid, the template's tissue maps as
        priors; local means, :data:`LOCAL_MM`) and the synthesized image's tissue levels
        (``levels_from``); ``radius_mm`` and ``eps`` are unused.
    levels_from : {'fit', 'means'}
        How the transfer takes the synthesized image's tissue levels: ``fit``, least squares
        of the image on the subject's tissue maps blurred as by the model grid (voxels where a
        tissue is likely and the template agrees); ``means``, its mean over the confident
        voxels of each tissue (pulled together by the blur).

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

    if method not in METHODS:
        raise ValueError(f'refine: unknown method {method!r} (one of {", ".join(METHODS)})')
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

    guides, sources = [guide], [(guide, guide_img.affine, transform)]
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
        sources.append((data, other.affine, tx))
    brain = to_native(template.mask.astype(np.float32), template, transform, str(guide_file))
    mask = (np.asarray(brain.dataobj) > 0.5) & (guide > 0)
    zooms = tuple(float(z) for z in guide_img.header.get_zooms()[:3])
    synth = np.asarray(synth_img.dataobj, dtype=np.float32)
    info = {'method': method, 'guide_voxel_mm': [round(z, 3) for z in zooms],
            'mask_voxels': int(mask.sum()), 'guide_channels': len(guides),
            'extra_guides_used': used}
    if method == 'transfer':
        out, record = _transfer(synth, guides, mask, zooms, template, transform, guide_file,
                                levels_from)
        info.update(record)
    else:
        # the guided filter fits against the guides as the model saw them
        lows = [through_model_grid(*src) for src in sources]
        rad = radius_voxels(radius_mm, zooms)
        out = guided_refine(synth, np.stack(guides), mask, guide_low=np.stack(lows),
                            radius=rad, eps=eps)
        info.update(radius_mm=float(radius_mm), radius_voxels=list(rad), eps=float(eps))
    img = nib.Nifti1Image(out, synth_img.affine)
    img.header.set_xyzt_units('mm')
    return img, info
