"""Conform an input to the model's template grid, and bring model outputs back to native space.

``conform``: native representation (:mod:`.derived`) -> affine registration of its reference
image to the template (antspyx: centre-of-mass initialization, rigid then affine, Mattes mutual
information) -> the same transform applied to every channel (linear) -> normalization
(:mod:`.intensity`). ``to_native`` applies the inverse transform onto the native reference grid.

Raw sMRI inputs are first N4-corrected and brain-extracted when they still have their skull
(:mod:`.brain`, ``skull_strip``); an input preprocessed by fMRIPrep/sMRIPrep
(:mod:`.precomputed`) comes with its own transform and is not registered again.

Registration works in the files' physical space: ANTs reads the NIfTI affines (oblique, LPS or
RAS alike), so no reorientation step is needed. Transforms are ANTs ``.mat`` files with a JSON
sidecar, so Nipype nodes pass file names (:meth:`Transform.from_path`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.modalities import MODALITIES
from ..errors import DataError, RegistrationQCError
from .derived import representation_native
from .intensity import normalize
from .qc import ORIENTATION_CANDIDATES, RegistrationQC, candidate_transform, threshold_for
from .qc import similarity as _similarity

__all__ = [
    'Transform',
    'ConformResult',
    'fixed_image',
    'register_to_template',
    'apply_to_template',
    'conform',
    'to_native',
    'save_conformed',
    'load_conformed',
    'reorient_tensors',
    'has_tensors',
]

LOGGER = logging.getLogger('bids_synth.preprocessing.conform')

#: ants ``type_of_transform`` per stage (rigid, then affine initialized by the rigid result).
STAGES = ('Rigid', 'Affine')
_AFF_KW = {
    'aff_metric': 'mattes',
    'aff_sampling': 32,
    'aff_random_sampling_rate': 0.1,
    'smoothing_in_mm': False,
}


def _pyramid(res: int, rigid: bool) -> dict:
    """Multi-resolution schedule from about 8 mm down to ``res`` (rigid: down to 2 * res)."""
    levels = max(1, int(np.log2(8 / res)) + 1)
    shrink = tuple(2 ** i for i in reversed(range(levels)))
    sigmas = tuple(float(s) for s in reversed(range(levels)))
    iters = (500, 200, 80, 20)[-levels:]
    if rigid and levels > 1:
        shrink, sigmas, iters = shrink[:-1], sigmas[:-1], iters[:-1]
    return {'aff_shrink_factors': shrink, 'aff_smoothing_sigmas': sigmas,
            'aff_iterations': iters}


@dataclass(frozen=True)
class Transform:
    """An affine native -> template transform stored as an ANTs ``.mat`` file.

    ``path`` maps points of the template to the native image (ANTs convention); ANTs resamples
    a native image onto the template with it (``forward``) and a template image onto the
    native grid with its inverse.

    Attributes
    ----------
    path : str
        The ANTs ``.mat`` file (a JSON sidecar ``<path>.json`` holds the rest).
    template : str
    res : int
    modality : str
    fixed : str
        The fixed (template) image the registration used, on the model grid.
    seconds : float
        Registration wall time.
    """

    path: str
    template: str
    res: int
    modality: str
    fixed: str
    seconds: float = 0.0
    qc: dict | None = None
    inverse: str = ''
    """A separate template -> native transform (e.g. fMRIPrep's ``from-MNI..._to-T1w`` .h5);
    empty: invert ``path`` (affine)."""
    source: str = 'bids_synth'
    """Who computed it: ``bids_synth`` (antspyx registration) or the derivatives it came from."""

    def save(self) -> str:
        """Write the JSON sidecar; return the ``.mat`` path (what Nipype nodes pass on)."""
        Path(self.path + '.json').write_text(json.dumps(asdict(self), indent=2))
        return self.path

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> Transform:
        """Reload a transform from its ``.mat`` path."""
        path = str(path)
        side = Path(path + '.json')
        if not Path(path).is_file() or not side.is_file():
            raise DataError(f'{path}: transform file or its JSON sidecar is missing')
        info = json.loads(side.read_text())
        info['path'] = path
        return cls(**info)

    def matrix(self) -> np.ndarray:
        """The 3x3 linear part (ANTs/ITK LPS convention), shape (3, 3)."""
        import ants

        tx = ants.read_transform(self.path)
        return np.asarray(tx.parameters[:9], dtype=float).reshape(3, 3)

    def linear_ras(self) -> np.ndarray:
        """The linear part (3, 3) of the native -> template map, in RAS+ world axes.

        An affine ``.mat`` is read directly; a composite (e.g. fMRIPrep's ``.h5`` with a
        non-linear part) is summarized by the least-squares linear map of 7x7x7 points of the
        template brain (its local rotations are not represented).
        """
        flip = np.diag([-1.0, -1.0, 1.0])  # ITK LPS <-> RAS
        try:
            to_native = flip @ self.matrix() @ flip  # ITK: maps template points to native
        except Exception:  # noqa: BLE001 - not an affine ANTs can read as one matrix
            import ants
            import pandas as pd

            axis = np.linspace(-60.0, 60.0, 7)
            pts = np.stack(np.meshgrid(axis, axis, axis, indexing='ij'), -1).reshape(-1, 3)
            lps = pts @ flip
            moved = ants.apply_transforms_to_points(
                3, pd.DataFrame(lps, columns=['x', 'y', 'z']), [self.path],
                whichtoinvert=[False])[['x', 'y', 'z']].to_numpy() @ flip
            design = np.c_[pts, np.ones(len(pts))]
            coef, *_ = np.linalg.lstsq(design, moved, rcond=None)
            to_native = coef[:3].T
        return np.linalg.inv(to_native)

    def rotation(self) -> np.ndarray:
        """Finite-strain rotation (3, 3) of the native -> template map, RAS+ axes: what
        reorients tensors (:func:`.tensor.finite_strain`)."""
        from .tensor import finite_strain

        return finite_strain(self.linear_ras())

    def ants_to_template(self) -> tuple[list[str], list[bool]]:
        """``(transformlist, whichtoinvert)`` of ``ants.apply_transforms`` native -> template."""
        return [self.path], [False]

    def ants_to_native(self) -> tuple[list[str], list[bool]]:
        """``(transformlist, whichtoinvert)`` of ``ants.apply_transforms`` template -> native."""
        if self.inverse:
            return [self.inverse], [False]
        return [self.path], [True]


@dataclass
class ConformResult:
    """What ``conform`` returns.

    Attributes
    ----------
    array : ndarray, shape (C, X, Y, Z), float32
        Normalized representation on the model grid.
    transform : Transform
    native_reference : str
        The saved 3D native reference image (the grid ``to_native`` writes onto).
    """

    array: np.ndarray
    transform: Transform
    native_reference: str
    brain: dict | None = None
    """What :func:`.brain.prepare_brain` did (sMRI), or the precomputed inputs used."""


def _threads(omp_nthreads: int) -> None:
    os.environ['ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'] = str(max(1, int(omp_nthreads)))


#: Registration target per modality: ``'t1'`` (the T1w template) or tissue weights
#: (GM, WM, CSF) of a pseudo-contrast built from the template's probability maps. Measured on
#: 5 mm-smoothed tissue-mixture images, 12 deg rotated, shifted and stored LPS (correlation with
#: the truth inside the brain mask, res 4 / res 2): FDG-like (GM + 0.35 WM) 0.993 / 0.9967
#: with the T1w target vs 0.996 / 0.9969 with its pseudo-contrast; EPI-like (CSF bright)
#: 0.949 / 0.982 vs 0.998 / 0.999; AV45-like (WM > GM) 0.9994 (T1w) vs 0.9984 (pseudo) at res
#: 2, so AV45 keeps the T1w target.
FIXED_CONTRAST: dict[str, str | tuple[float, float, float]] = {
    'T1w': 't1',
    'T1wCE': 't1',
    'T2w': (0.6, 0.4, 1.0),  # CSF > GM > WM
    'FLAIR': (1.0, 0.7, 0.1),  # GM > WM, CSF suppressed
    'FDG': (1.0, 0.35, 0.0),  # grey-matter glucose uptake
    'AV45': 't1',  # white matter > grey matter, like the T1w (measured: T1w target is better)
    'bold': (0.6, 0.4, 1.0),  # T2*-weighted EPI
    'dwi': (0.6, 0.4, 1.0),  # b=0: T2-weighted EPI
}
_FAMILY_DEFAULT = {'smri': 'T1w', 'pet': 'FDG', 'fmri': 'bold', 'dmri': 'dwi'}


def _contrast_key(modality: str | None, family: str | None) -> str:
    if modality in FIXED_CONTRAST:
        return modality
    if family is None and modality in MODALITIES:
        family = MODALITIES[modality].family
    if family in _FAMILY_DEFAULT:
        return _FAMILY_DEFAULT[family]
    raise ValueError(f'no registration target for modality {modality!r} / family {family!r}')


def fixed_image(template, modality: str) -> np.ndarray:
    """The registration target of a modality on the model grid, shape (X, Y, Z), float32.

    The T1w template (nilearn's MNI152 2009a T1w, already brain-extracted) for T1-weighted
    inputs; for the other contrasts a pseudo-image ``w_gm * GM + w_wm * WM + w_csf * CSF``
    (:data:`FIXED_CONTRAST`), which mutual information aligns more reliably than the T1w.
    """
    spec = FIXED_CONTRAST[_contrast_key(modality, None)]
    if spec == 't1':
        return np.asarray(template.t1, dtype=np.float32)
    w_gm, w_wm, w_csf = spec
    out = w_gm * template.gm + w_wm * template.wm + w_csf * template.csf
    return (out * template.mask).astype(np.float32)


def _write(img: nib.Nifti1Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.tmp-{os.getpid()}-' + path.name)  # pid: resume cleans it
    nib.save(img, tmp)
    os.replace(tmp, path)
    return str(path)


def _fixed_file(template, key: str, work_dir: Path) -> str:
    path = work_dir / f'fixed_{template.name}_res-{template.res}_{key}.nii.gz'
    if not path.is_file():
        _write(template.img(fixed_image(template, key)), path)
    return str(path)


def _register(fixed, moving, prefix: str, res, initial: str | None) -> str:
    """Rigid then affine antsRegistration; the affine ``.mat`` (initial transform composed)."""
    import ants

    rigid = ants.registration(fixed, moving, type_of_transform=STAGES[0],
                              initial_transform=initial, outprefix=prefix + 'rigid_',
                              **_AFF_KW, **_pyramid(int(res), True))
    affine = ants.registration(fixed, moving, type_of_transform=STAGES[1],
                               initial_transform=rigid['fwdtransforms'][0],
                               outprefix=prefix + 'affine_',
                               **_AFF_KW, **_pyramid(int(res), False))
    if len(affine['fwdtransforms']) != 1:
        raise RuntimeError(f'expected one affine transform, got {affine["fwdtransforms"]}')
    return affine['fwdtransforms'][-1]


def register_to_template(reference_img: nib.Nifti1Image | str | os.PathLike, template, *,
                         modality: str | None = None, modality_family: str | None = None,
                         omp_nthreads: int = 1, work_dir: str | os.PathLike,
                         name: str = 'reference', seed: int | None = 20240, qc: bool = True,
                         force: bool = False) -> Transform:
    """Affine registration of a 3D native image to the template (antspyx).

    Parameters
    ----------
    reference_img : Nifti1Image or path, shape (X, Y, Z)
        The native reference (any orientation; the affine is honoured).
    template : TemplateSpec
    modality : str, optional
        Registry key: selects the fixed image (:func:`fixed_image`); recorded.
    modality_family : str, optional
        Used when ``modality`` is None: the family's default target (smri: T1w, pet: FDG-like,
        fmri/dmri: EPI-like).
    omp_nthreads : int
        ITK threads.
    work_dir : path-like
        Where the transform (``<name>_to-<template>_affine.mat`` + JSON) is written.
    seed : int or None
        Seed of the metric's random sampling (``antsRegistration --random-seed``), so re-runs
        give the same transform up to multi-threaded summation order; None: unseeded.
    qc : bool
        Registration QC (:mod:`.qc`): measure the similarity to the target, try the
        orientation candidates when it is below the threshold, keep the best; recorded in
        ``Transform.qc``.
    force : bool
        Keep a registration that fails the QC (flagged ``forced`` in ``Transform.qc``).

    Returns
    -------
    Transform

    Raises
    ------
    DataError
        If ANTs fails or returns a degenerate transform; the message names the input.
    RegistrationQCError
        No orientation candidate passes the QC (and not ``force``).
    """
    import ants

    _threads(omp_nthreads)
    ants.config._random_seed = seed  # read by ants.registration; no public setter without
    # set_ants_deterministic, which would also force one thread
    key = _contrast_key(modality, modality_family)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(reference_img, nib.Nifti1Image | nib.Nifti2Image):
        src = _write(reference_img, work_dir / f'{name}_native.nii.gz')
        label = reference_img.get_filename() or src
    else:
        src = label = str(reference_img)
    fixed_path = _fixed_file(template, key, work_dir)
    out = work_dir / f'{name}_to-{template.name}_res-{template.res}_affine.mat'
    prefix = str(work_dir / f'{name}_ants_')
    threshold = threshold_for(modality or key)
    tried: dict[str, float] = {}
    best: tuple[str, str, float] | None = None
    t0 = time.perf_counter()
    try:
        fixed = ants.image_read(fixed_path)
        moving = ants.image_read(src).clone('float')
        if min(moving.spacing) < 0.9 * template.res:
            # registration works in physical space: a grid near the template's is enough
            moving = ants.resample_image(moving, (float(template.res),) * 3, use_voxels=False,
                                         interp_type=0)
        for cand in ORIENTATION_CANDIDATES if qc else ('identity',):
            init = None
            if cand != 'identity':
                init = candidate_transform(cand, fixed, moving, f'{prefix}{cand}_init.mat')
            mat = _register(fixed, moving, f'{prefix}{cand}_', template.res, init)
            sim = _similarity(src, mat, fixed_path, template) if qc else float('nan')
            tried[cand] = sim
            if best is None or sim > best[2]:
                best = (cand, mat, sim)
            if not qc or sim >= threshold:
                break  # the careful path: only a failing registration tries the others
        cand, mat, sim = best
        os.replace(mat, out)
    except DataError:
        raise
    except Exception as exc:  # ANTs raises RuntimeError/ValueError with C++ messages
        raise DataError(f'{label}: registration to {template.name} failed: {exc}') from exc
    report = None
    if qc:
        report = RegistrationQC(similarity=sim, threshold=threshold, orientation=cand,
                                tried=tried)
        if not report.passed:
            if not force:
                raise RegistrationQCError(
                    f'{label}: registration QC failed: similarity to {template.name} '
                    f'{sim:.2f} < {threshold} (orientations tried: '
                    + ', '.join(f'{k} {v:.2f}' for k, v in tried.items())
                    + '); treated as unreadable (--force keeps it, flagged)'
                )
            report.forced = True
        if cand != 'identity':
            LOGGER.warning('%s: registered only from a 180-degree turned start (%s, similarity '
                           '%.2f, %.2f as given): check the orientation of its header', label,
                           cand, sim, tried['identity'])
    tx = Transform(path=str(out), template=template.name, res=int(template.res),
                   modality=modality or key, fixed=fixed_path, seconds=time.perf_counter() - t0,
                   qc=report.to_dict() if report else None)
    det = float(np.linalg.det(tx.matrix()))
    if not np.isfinite(det) or not 0.2 < abs(det) < 5.0:
        raise DataError(f'{label}: registration to {template.name} failed: degenerate affine '
                        f'(determinant {det:.3g})')
    tx.save()
    return tx


def apply_to_template(img: nib.Nifti1Image, template, transform: Transform, *,
                      interpolator: str = 'linear') -> np.ndarray:
    """Resample a native image (3D or 4D, channels last) onto the model grid.

    Returns
    -------
    ndarray, shape (C, X, Y, Z), float32
    """
    import ants

    fixed = ants.image_read(transform.fixed)
    data = np.asarray(img.dataobj, dtype=np.float32)
    chans = data[..., None] if data.ndim == 3 else data
    ref_hdr = nib.Nifti1Image(np.zeros(chans.shape[:3], np.float32), img.affine)
    ref_file = Path(transform.path).with_suffix('.grid.nii.gz')
    moving_ref = ants.image_read(_write(ref_hdr, ref_file))
    out = []
    for c in range(chans.shape[3]):
        moving = moving_ref.new_image_like(np.ascontiguousarray(chans[..., c]))
        tlist, inv = transform.ants_to_template()
        warped = ants.apply_transforms(fixed, moving, tlist, whichtoinvert=inv,
                                       interpolator=interpolator)
        out.append(warped.numpy().astype(np.float32))
    return np.stack(out)


def has_tensors(modality: str) -> bool:
    """Whether a modality's representation has tensor channels (dwi)."""
    from ..bids.modalities import TENSOR_CHANNELS

    return set(TENSOR_CHANNELS) <= set(MODALITIES[modality].channels)


def reorient_tensors(array: np.ndarray, modality: str, rotation: np.ndarray) -> np.ndarray:
    """Rotate the tensor channels of a representation (C, ...) by ``rotation``: ``R L R^T``
    for each voxel's log-tensor (:data:`~bids_synth.bids.modalities.TENSOR_CHANNELS`);
    a modality without them is returned unchanged."""
    from ..bids.modalities import TENSOR_CHANNELS
    from .tensor import rotate

    names = MODALITIES[modality].channels
    if not has_tensors(modality):
        return array
    idx = [names.index(c) for c in TENSOR_CHANNELS]
    out = np.array(array, dtype=np.float32, copy=True)
    out[idx] = np.moveaxis(rotate(np.moveaxis(out[idx], 0, -1), rotation), -1, 0)
    return out


def conform(in_file: str | os.PathLike, modality: str, template, work_dir: str | os.PathLike,
            metadata: dict | None = None, omp_nthreads: int = 1, force: bool = False, *,
            skull_strip: str = 'auto', precomputed: dict | None = None) -> ConformResult:
    """Native image -> normalized model representation on the template grid.

    Parameters
    ----------
    in_file : path-like
        Raw BIDS image.
    modality : str
        Registry key.
    template : TemplateSpec
    work_dir : path-like
        Receives the native reference, the transform and intermediate files.
    metadata : dict, optional
        BIDS sidecar (``bval``/``bvec`` gradient file paths for dwi).
    omp_nthreads : int
    force : bool
        Keep a registration that fails the QC (flagged in ``transform.qc``).
    skull_strip : {'auto', 'force', 'skip'}
        sMRI inputs: N4 and deepbet brain extraction of skull-on inputs
        (:func:`.brain.prepare_brain`).
    precomputed : dict, optional
        fMRIPrep/sMRIPrep outputs of this T1w (:func:`.precomputed.find_precomputed`): their
        preprocessed, brain-masked T1w and transforms are used, nothing is registered.

    Returns
    -------
    ConformResult
        ``array`` of shape (C, X, Y, Z) with C = ``MODALITIES[modality].n_channels``.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if precomputed:
        from .precomputed import conform_precomputed

        fixed = _fixed_file(template, _contrast_key(modality, None), work_dir)
        reference, transform, brain = conform_precomputed(precomputed, modality, template,
                                                          work_dir, fixed=fixed)
        channels = reference
        ref_path = _write(reference, work_dir / 'native_reference.nii.gz')
    else:
        channels, reference = representation_native(in_file, modality, metadata)
        brain = None
        if MODALITIES[modality].family == 'smri':
            from .brain import prepare_brain

            reference, report = prepare_brain(reference, mode=skull_strip, label=str(in_file),
                                              threads=omp_nthreads)
            channels, brain = reference, report.as_dict()
        ref_path = _write(reference, work_dir / 'native_reference.nii.gz')
        try:
            transform = register_to_template(ref_path, template, modality=modality,
                                             omp_nthreads=omp_nthreads, work_dir=work_dir,
                                             force=force)
        except DataError as exc:  # name the raw file, not the work copy
            raise type(exc)(str(exc).replace(ref_path, str(in_file))) from exc
    array = apply_to_template(channels, template, transform)
    if has_tensors(modality):  # into template axes: the registration's finite-strain rotation
        array = reorient_tensors(array, modality, transform.rotation())
    try:
        array = normalize(array, modality, template)
    except DataError as exc:
        raise DataError(f'{in_file}: {exc}') from exc
    return ConformResult(array=array, transform=transform, native_reference=ref_path,
                         brain=brain)


def to_native(array: np.ndarray, template, transform: Transform,
              native_reference_img: nib.Nifti1Image | str | os.PathLike, *,
              interpolator: str = 'linear', modality: str | None = None) -> nib.Nifti1Image:
    """Resample a model-grid array onto the native reference grid (inverse transform).

    With ``modality``, its tensor channels are turned back into the native world axes (the
    transpose of the registration's finite-strain rotation).

    Parameters
    ----------
    array : ndarray, shape (C, X, Y, Z) or (X, Y, Z)
    template : TemplateSpec
    transform : Transform or path
    native_reference_img : Nifti1Image or path, shape (x, y, z)

    Returns
    -------
    Nifti1Image, shape (x, y, z) if C == 1 else (x, y, z, C), float32, native affine.
    """
    import ants

    if not isinstance(transform, Transform):
        transform = Transform.from_path(transform)
    if isinstance(native_reference_img, str | os.PathLike):
        ref_path = str(native_reference_img)
        ref_nib = nib.load(ref_path)
    else:
        ref_nib = native_reference_img
        ref_path = _write(nib.Nifti1Image(np.zeros(ref_nib.shape[:3], np.float32),
                                          ref_nib.affine),
                          Path(transform.path).with_suffix('.native.nii.gz'))
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.shape[1:] != tuple(template.shape):
        raise ValueError(f'array of shape {array.shape} is not on the {template.shape} grid')
    if modality is not None and has_tensors(modality):
        array = reorient_tensors(array, modality, transform.rotation().T)
    native = ants.image_read(ref_path)
    fixed = ants.image_read(transform.fixed)
    out = []
    for c in range(array.shape[0]):
        moving = fixed.new_image_like(np.ascontiguousarray(array[c]))
        tlist, inv = transform.ants_to_native()
        warped = ants.apply_transforms(native, moving, tlist, whichtoinvert=inv,
                                       interpolator=interpolator)
        out.append(warped.numpy().astype(np.float32))
    data = out[0] if len(out) == 1 else np.stack(out, axis=-1)
    img = nib.Nifti1Image(data, ref_nib.affine)
    img.header.set_xyzt_units('mm')
    return img


def save_conformed(result: ConformResult | np.ndarray, path: str | os.PathLike,
                   template) -> str:
    """Write a conformed array as a 4D NIfTI on the model grid (channels last)."""
    array = result.array if isinstance(result, ConformResult) else np.asarray(result)
    return _write(template.img(np.asarray(array, dtype=np.float32)), Path(path))


def load_conformed(path: str | os.PathLike, template=None) -> np.ndarray:
    """Read a file of :func:`save_conformed`; shape (C, X, Y, Z), float32."""
    img = nib.load(str(path))
    if template is not None and (img.shape[:3] != tuple(template.shape)
                                 or not np.allclose(img.affine, template.affine)):
        raise DataError(f'{path}: not on the {template.name} res-{template.res} model grid')
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
