"""Use fMRIPrep/sMRIPrep outputs (``--derivatives DIR``) instead of registering the T1w again.

What is read, per subject (and session, when the derivatives have one), in fMRIPrep's names
(``<dir>/sub-<label>[/ses-<label>]/anat/``):

| file | use |
| --- | --- |
| ``*_desc-preproc_T1w.nii.gz`` (no ``space-``) | bias-corrected T1w; its grid: native reference |
| ``*_desc-brain_mask.nii.gz`` (no ``space-``) | mask applied to it (no extraction of ours) |
| ``*_from-T1w_to-<tpl>_mode-image_xfm.h5`` | T1w -> template (ANTs composite; affine + warp) |
| ``*_from-<tpl>_to-T1w_mode-image_xfm.h5`` | template -> T1w (to write native outputs) |

``<tpl>`` is looked up as ``MNI152NLin2009aSym`` (the models' space: exact; fMRIPrep writes it
with ``--output-spaces MNI152NLin2009aSym``), else ``MNI152NLin2009cAsym`` (fMRIPrep's default).
The two are both ICBM 2009 nonlinear MNI templates in the same millimetre coordinates (the
asymmetric and the symmetric average; they differ by about a millimetre of anatomy, not by a
transform): a cAsym transform is applied as if it mapped to our aSym grid, and the sidecars say
so (``bids_synth.preprocessing.T1w.approximation``).

>>> find_precomputed([], '01', None) is None
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError

__all__ = ['SPACES', 'find_precomputed', 'conform_precomputed']

#: Template spaces looked for, best first (the models' own space, then fMRIPrep's default).
SPACES = ('MNI152NLin2009aSym', 'MNI152NLin2009cAsym')


def _pick(folder: Path, prefix: str, suffix: str) -> Path | None:
    hits = sorted(p for p in folder.glob(f'{prefix}*{suffix}')
                  if '_space-' not in p.name and not p.name.startswith('.'))
    exact = [p for p in hits if p.name == f'{prefix}{suffix}']
    return (exact or hits or [None])[0]


def find_precomputed(derivatives: Sequence[str | os.PathLike], subject: str,
                     session: str | None) -> dict | None:
    """fMRIPrep/sMRIPrep anatomical outputs of one subject/session, or None if there are none.

    Looks in each folder of ``derivatives`` (first that has a ``desc-preproc_T1w`` wins), at
    the session level first, then at the subject level (fMRIPrep's longitudinal anatomy).

    Returns
    -------
    dict or None
        ``preproc``, ``mask``, ``xfm``, ``xfm_inverse`` (paths), ``space``, ``dataset``.

    Raises
    ------
    DataError
        A ``desc-preproc_T1w`` was found but its mask or transforms are missing (the message
        names the folder and what is missing).
    """
    subject = subject[4:] if subject.startswith('sub-') else subject
    for root in derivatives:
        root = Path(root)
        places = []
        if session:
            places.append((root / f'sub-{subject}' / f'ses-{session}' / 'anat',
                           f'sub-{subject}_ses-{session}_'))
        places.append((root / f'sub-{subject}' / 'anat', f'sub-{subject}_'))
        for folder, prefix in places:
            if not folder.is_dir():
                continue
            preproc = _pick(folder, prefix, 'desc-preproc_T1w.nii.gz')
            if preproc is None:
                continue
            found = {'preproc': preproc, 'mask': _pick(folder, prefix, 'desc-brain_mask.nii.gz')}
            for space in SPACES:
                fwd = _pick(folder, prefix, f'from-T1w_to-{space}_mode-image_xfm.h5')
                inv = _pick(folder, prefix, f'from-{space}_to-T1w_mode-image_xfm.h5')
                if fwd is not None and inv is not None:
                    found.update(xfm=fwd, xfm_inverse=inv, space=space)
                    break
            missing = [k for k in ('mask', 'xfm') if found.get(k) is None]
            if missing:
                what = {'mask': 'desc-brain_mask.nii.gz',
                        'xfm': 'from-T1w_to-<MNI152NLin2009aSym|cAsym>_mode-image_xfm.h5 and '
                        'its from-<template>_to-T1w inverse'}
                raise DataError(f'{folder}: has {preproc.name} but no '
                                + ' nor '.join(what[k] for k in missing))
            out = {k: str(v) for k, v in found.items()}
            out['dataset'] = str(root)
            return out
    return None


def _link(src: str, dest: Path) -> str:
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.symlink_to(Path(src).absolute())
    return str(dest)


def conform_precomputed(pre: dict, modality: str, template, work_dir: str | os.PathLike, *,
                        fixed: str):
    """The brain-masked preprocessed T1w and a :class:`.conform.Transform` from its .h5 files.

    Returns
    -------
    image : Nifti1Image, shape (X, Y, Z), float32
        ``desc-preproc_T1w`` times ``desc-brain_mask`` (the native reference).
    transform : Transform
    info : dict
        JSON-plain record for the sidecars (files used, ``SkullStripped``, approximation).
    """
    from .conform import Transform

    if modality != 'T1w':
        raise ValueError(f'precomputed derivatives are used for the T1w only, not {modality}')
    work_dir = Path(work_dir)
    try:
        img = nib.load(pre['preproc'])
        data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))
        mask_img = nib.load(pre['mask'])
        mask = np.asarray(mask_img.dataobj) > 0
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types
        raise DataError(f'{pre["preproc"]}: cannot read the fMRIPrep T1w or its mask: {exc}'
                        ) from exc
    if data.ndim != 3 or mask.shape != data.shape:
        raise DataError(f'{pre["mask"]}: shape {mask.shape} does not match '
                        f'{pre["preproc"]} {data.shape}')
    if not np.allclose(mask_img.affine, img.affine, atol=1e-3):
        raise DataError(f'{pre["mask"]}: not on the grid of {pre["preproc"]}')
    out = nib.Nifti1Image(data * mask, img.affine)
    out.header.set_xyzt_units('mm')
    fwd = _link(pre['xfm'], work_dir / f'precomputed_from-T1w_to-{pre["space"]}_xfm.h5')
    inv = _link(pre['xfm_inverse'], work_dir / f'precomputed_from-{pre["space"]}_to-T1w_xfm.h5')
    tx = Transform(path=fwd, template=template.name, res=int(template.res), modality=modality,
                   fixed=fixed, inverse=inv, source=f'derivatives: {pre["dataset"]}')
    tx.save()
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    info = {
        'SkullStripped': None,  # the raw T1w was not examined: fMRIPrep's mask is used
        'precomputed': {k: pre[k] for k in ('preproc', 'mask', 'xfm', 'xfm_inverse', 'space')},
        'brain_extraction': 'precomputed desc-brain_mask',
        'mask_ml': round(float(mask.sum()) * voxel_ml, 1),
        'n4': 'precomputed (desc-preproc)',
    }
    if pre['space'] != template.name:
        info['approximation'] = (f'{pre["space"]} transform applied to the {template.name} '
                                 'model grid (same MNI coordinates, different template average)')
    return out, tx, info
