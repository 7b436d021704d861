"""Render every modality of one phantom session and write its files (NIfTI, sidecars)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from . import bold as boldm
from . import dwi as dwim
from . import mri, pet
from .scanner import ContrastShift
from .anatomy import (
    load_template, make_deformation, make_grid, make_pose, sample, template_coords,
)
from .clinical import Subject
from .tissues import lesion_score, session_tissues

__all__ = ['RESOLUTIONS', 'render_session', 'relpath', 'MOD_CODES', 'GT_ONLY']

#: Prefix of a ``_render`` key written to the ground truth only (the rest of the key replaces
#: the suffix: ``'gt:_model-tensor_param-fa_dwimap.nii.gz'``).
GT_ONLY = 'gt:'

#: acquisition settings per resolution preset
RESOLUTIONS = {
    'default': {
        'anat': {'T1w': [(1.0, 1.0, 1.0), (1.0, 1.0, 1.2)], 'T2w': [(1.0, 1.0, 1.0)],
                 'FLAIR': [(1.0, 1.0, 1.2), (1.0, 1.0, 1.0)]},
        'pet': 2.0, 'bold': 3.0, 'dwi': 2.0, 'bold_vols': 120, 'dwi_b0': 2, 'dwi_dirs': 30,
        'pet_frames': {'FDG': 6, 'AV45': 4},
    },
    'low': {
        'anat': {'T1w': [(2.0, 2.0, 2.0)], 'T2w': [(2.0, 2.0, 2.0)], 'FLAIR': [(2.0, 2.0, 2.0)]},
        'pet': 3.0, 'bold': 4.0, 'dwi': 3.0, 'bold_vols': 60, 'dwi_b0': 1, 'dwi_dirs': 30,
        'pet_frames': {'FDG': 3, 'AV45': 2},
    },
}
#: field of view (mm) along L-R, A-P, S-I
FOV = {'anat': (176, 216, 184), 'pet': (200, 224, 184), 'bold': (192, 216, 150),
       'dwi': (176, 208, 150)}
AXCODES = {
    'anat': ('RAS', 'LAS', 'LPS', 'PIR', 'ASR'),
    'pet': ('LPS', 'RAS', 'LAS'),
    'bold': ('LAS', 'RAS', 'LPS', 'RPI'),
    'dwi': ('LAS', 'RAS', 'LPS', 'RPI'),
}
MOD_CODES = {'T1w': 1, 'T2w': 2, 'FLAIR': 3, 'FDG': 4, 'AV45': 5, 'bold': 6, 'dwi': 7}
_DATATYPE = {'T1w': 'anat', 'T2w': 'anat', 'FLAIR': 'anat', 'FDG': 'pet', 'AV45': 'pet',
             'bold': 'func', 'dwi': 'dwi'}


def relpath(modality: str, sub: str, ses: str | None, ext: str = '.nii.gz') -> str:
    """BIDS path of a modality's file relative to the dataset root."""
    base = f'sub-{sub}' + (f'_ses-{ses}' if ses else '')
    folder = f'sub-{sub}/' + (f'ses-{ses}/' if ses else '') + _DATATYPE[modality]
    name = {'FDG': f'{base}_trc-FDG_pet', 'AV45': f'{base}_trc-AV45_pet',
            'bold': f'{base}_task-rest_bold', 'dwi': f'{base}_dwi'}.get(modality,
                                                                        f'{base}_{modality}')
    return f'{folder}/{name}{ext}'


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, tr: float | None = None) -> bytes:
    """gzip-compressed single-file NIfTI-1 (gzip mtime 0: same data, same bytes).

    Data whose range fits are stored as plain int16 (rounded, as scanners do); others are
    scaled into int16 (scl_slope). The file is assembled from nibabel's header and the
    Fortran-ordered array (what ``to_bytes`` writes, without its chunked copies).
    """
    data = np.asarray(data, dtype=np.float32)
    lo, hi = float(data.min()), float(data.max())
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(np.int16)
    if -32000 < lo and hi < 32000:
        arr, slope = np.rint(data).astype(np.int16), None
    else:
        slope = max(abs(lo), abs(hi)) / 32000.0
        arr = np.rint(data / slope).astype(np.int16)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units('mm', 'sec')
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(0)))
    extra = tuple(1.0 for _ in data.shape[3:])
    if tr is not None and extra:
        extra = (float(tr),) + extra[1:]
    hdr.set_zooms(zooms + extra)
    if slope is not None:
        hdr.set_slope_inter(slope, 0.0)
    hdr['vox_offset'] = 352
    raw = hdr.binaryblock + b'\x00' * 4 + arr.tobytes(order='F')
    return gzip.compress(raw, compresslevel=1, mtime=0)


def _write(roots: list[Path], rel: str, payload: bytes | str) -> None:
    for root in roots:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            path.write_text(payload)


def _json(d: dict) -> str:
    return json.dumps(d, indent=2) + '\n'


def render_session(subj: Subject, k: int, *, seed: int, sub_index: int, modalities,
                   resolution: str, roots: dict[str, list[Path]], clean: bool = False,
                   shift_contrast: bool = False) -> dict:
    """Generate and write every modality of visit ``k`` of ``subj``.

    ``roots[modality]`` lists the dataset roots the modality is written to (the ground truth
    always, the BIDS dataset unless the modality is missing in this session). ``clean``
    renders the same session without the acquisition's bias field and noise (the random draws
    are made all the same, so everything else is identical). ``shift_contrast`` passes the
    sMRI and PET images through another scanner's contrast (:mod:`.scanner`, from a generator
    of its own, so every other draw is unchanged). Returns the
    session's truth: age, severity and, per modality, the affine from native voxels to
    template (MNI) mm without the non-linear warp (``template_from_voxel``).
    """
    res = RESOLUTIONS[resolution]
    visit = subj.visits[k]
    sub, ses = subj.label, visit.session
    tpl = load_template()
    vascular = float(np.exp(_rng(seed, sub_index, 1002).normal(0, 0.5)))
    score = lesion_score(_rng(seed, sub_index, 1001), tpl)
    anat_needed = any(m in modalities for m in ('T1w', 'T2w', 'FLAIR')) and resolution != 'low'
    tis = session_tissues(tpl, age=visit.age, severity=visit.severity, score=score,
                          vascular=vascular, with_1mm=anat_needed)
    # ventricle walls pushed out with age (volume roughly doubles from 60 to 85) and AD
    vent_mm = 0.12 * max(visit.age - 55, 0) + 3.0 * visit.severity
    deform = make_deformation(_rng(seed, sub_index, 1000), tpl, head_scale=subj.head_scale,
                              ventricle_mm=vent_mm, mt_mm=0.0)
    pose_rng = _rng(seed, sub_index, k, 2000)
    mri_pose = make_pose(pose_rng, tpl.centre)
    truth = {'age': visit.age, 'severity': visit.severity, 'mmse': visit.mmse,
             'wmh_ml': round(float(tis.wmh2.sum()) * 8 / 1000, 3), 'template_from_voxel': {}}
    for mod in modalities:
        rng = _rng(seed, sub_index, k, MOD_CODES[mod])
        fam = {'FDG': 'pet', 'AV45': 'pet', 'bold': 'bold', 'dwi': 'dwi'}.get(mod, 'anat')
        pose = make_pose(rng, tpl.centre) if fam == 'pet' else mri_pose.jitter(rng, 2.0, 2.0)
        codes = AXCODES[fam]
        axcodes = codes[int(rng.integers(len(codes)))]
        if fam == 'anat':
            opts = res['anat'][mod]
            zooms = opts[int(rng.integers(len(opts)))]
        else:
            zooms = (res[fam],) * 3
        centre = pose.translation + rng.uniform(-5, 5, 3)
        grid = make_grid(zooms, FOV[fam], axcodes, centre)
        t_aff = deform.linear() @ np.linalg.inv(pose.scanner_from_subject()) @ grid.affine
        truth['template_from_voxel'][mod] = t_aff.round(6).tolist()
        shift = (ContrastShift(_rng(seed, sub_index, k, MOD_CODES[mod], 3000))
                 if shift_contrast and fam in ('anat', 'pet') else None)
        files = _render(mod, fam, rng, grid, pose, deform, tpl, tis, subj, visit, res, clean,
                        shift)
        for rel_ext, payload in files.items():
            if rel_ext.startswith(GT_ONLY):  # ground truth only (roots[mod][0])
                name = rel_ext[len(GT_ONLY):]
                rel = relpath(mod, sub, ses, '')
                rel = rel[:-len(mod) - 1] + name if rel.endswith('_' + mod) else rel + name
                _write(roots[mod][:1], rel, payload)
            else:
                _write(roots[mod], relpath(mod, sub, ses, rel_ext), payload)
        if fam == 'dwi':
            truth['dwi_diffusivities'] = {k: round(v, 8) for k, v in dwim.diffusivities(
                visit.age, visit.severity).items()}
    return truth


def _render(mod, fam, rng, grid, pose, deform, tpl, tis, subj, visit, res, clean,
            shift=None) -> dict:
    zooms = np.sqrt((grid.affine[:3, :3] ** 2).sum(0))
    if fam == 'anat':
        one_mm = tis.gm is not None and zooms.min() < 1.5
        aff = tpl.affine if one_mm else tpl.affine2
        coords = template_coords(grid, pose, deform, aff)
        img = sample(mri.contrast_map(mod, tis, age=visit.age, rng=rng, res=1 if one_mm else 2),
                     coords)
        if not clean:  # the last draws of this modality: skipping them changes nothing else
            img *= mri.bias_field(rng, grid.shape)
            img = mri.rician(rng, img, 25.0)
        if shift is not None:
            img = shift(img)
        return {'.nii.gz': _nifti_bytes(img, grid.affine), '.json': _json(mri.anat_sidecar(mod))}
    coords = template_coords(grid, pose, deform, tpl.affine2)
    if fam == 'pet':
        up = sample(pet.uptake_map(mod, tis, tpl, severity=visit.severity, amyloid=subj.amyloid,
                                   apoe4=subj.apoe4, rng=rng), coords)
        n = res['pet_frames'][mod]
        dose = float(rng.uniform(0.9, 1.1))
        fwhm = float(rng.uniform(5.0, 7.0))
        frames = pet.pet_frames(up, mod, zooms=zooms, fwhm_mm=fwhm, dose_factor=dose,
                                n_frames=n, rng=rng, noise=not clean)
        if shift is not None:
            frames = shift(frames)
        tz = f'{int(rng.integers(8, 16)):02d}:{int(rng.integers(0, 60)):02d}:00'
        side = pet.pet_sidecar(mod, n_frames=n, dose_factor=dose, fwhm_mm=fwhm, time_zero=tz)
        return {'.nii.gz': _nifti_bytes(frames, grid.affine), '.json': _json(side)}
    frac = {'gm': sample(tis.gm2, coords), 'wm': sample(tis.wm2, coords),
            'csf': sample(tis.csf2, coords), 'wmh': sample(tis.wmh2, coords)}
    bias = mri.bias_field(rng, grid.shape, 0.15)
    if clean:
        bias[:] = 1.0
    if fam == 'bold':
        names, maps = boldm.network_maps(tpl)
        nodes = np.stack([sample(m, coords) for m in maps])
        seq = {'kind': 'se', 'TR': boldm.TR_S * 1000, 'TE': boldm.TE_S * 1000 * 1.6}
        base = sum(frac[t] * mri._tissue_signal(seq, *mri.TISSUE_PARAMS[t])
                   for t in ('gm', 'csf', 'wmh')) + (frac['wm'] - frac['wmh']) * \
            mri._tissue_signal(seq, *mri.TISSUE_PARAMS['wm'])
        base = (2500.0 * base * bias).astype(np.float32)  # GM ~1000, as scanners store
        data = boldm.bold_series(rng, baseline=base, gm=frac['gm'], nodes=nodes, names=names,
                                 severity=visit.severity, n_vols=res['bold_vols'], zooms=zooms,
                                 thermal_noise=not clean)
        return {'.nii.gz': _nifti_bytes(data, grid.affine, tr=boldm.TR_S),
                '.json': _json(boldm.bold_sidecar(grid.shape[2]))}
    dyad = np.stack([sample(c, coords) for c in tpl.dyad2])
    bvals, dirs = dwim.gradient_table(res['dwi_b0'], res['dwi_dirs'])
    d = dwim.diffusivities(visit.age, visit.severity)
    sig = dwim.dwi_signal(frac, dyad, pose.rotation, bvals, dirs, d)
    truth_maps = dwim.tensor_truth(sig, bvals, dirs, frac)  # the noise-free signal's tensor
    if not clean:  # the last draws of this modality
        sig *= bias[..., None]
        sig = mri.rician(rng, sig, 12.0)
    bvec = dwim.fsl_bvecs(dirs, grid.affine)
    bvec_txt = '\n'.join(' '.join(f'{v:.6f}' for v in row) for row in bvec) + '\n'
    bval_txt = ' '.join(str(int(b)) for b in bvals) + '\n'
    files = {'.nii.gz': _nifti_bytes(sig, grid.affine), '.json': _json(dwim.dwi_sidecar()),
             '.bval': bval_txt, '.bvec': bvec_txt}
    for name, vol in truth_maps.items():
        stem = f'{GT_ONLY}_model-tensor_param-{name}_dwimap'
        img = nib.Nifti1Image(vol.astype(np.float32), grid.affine)
        img.header.set_xyzt_units('mm')
        files[stem + '.nii.gz'] = gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)
        files[stem + '.json'] = _json(dwim.truth_sidecar(name))
    return files
