"""Conform to the model grid and back (antspyx affine registration), on real MNI images."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nilearn import datasets

from bids_synth.errors import DataError
from bids_synth.preprocessing.conform import (
    ConformResult,
    Transform,
    apply_to_template,
    conform,
    load_conformed,
    save_conformed,
    to_native,
)
from bids_synth.preprocessing.templates import load_template


def _rotation(deg: float, shift) -> np.ndarray:
    a = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    b = a / 2
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    out = np.eye(4)
    out[:3, :3] = rx @ ry
    out[:3, 3] = shift
    return out


def _moved(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """The same voxels, stored LPS, with the world rotated 12 deg and shifted (oblique)."""
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    new_aff = _rotation(12, (8, -6, 10)) @ affine @ flip
    return nib.Nifti1Image(np.ascontiguousarray(data[::-1, ::-1]), new_aff)


def _corr(a, b, mask):
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


@pytest.fixture(scope='module')
def tpl():
    return load_template(4)


@pytest.fixture(scope='module')
def t1_case(tmp_path_factory, tpl):
    tmp = tmp_path_factory.mktemp('conform_t1')
    mni = datasets.load_mni152_template(resolution=1)
    moved = _moved(mni.get_fdata(dtype=np.float32) * 800, mni.affine)
    assert nib.aff2axcodes(moved.affine) == ('L', 'P', 'S')
    path = tmp / 'sub-01_T1w.nii'
    nib.save(moved, path)
    result = conform(path, 'T1w', tpl, tmp / 'work', omp_nthreads=2)
    return path, moved, result, tmp


def test_conform_t1_matches_template(t1_case, tpl):
    _, _, result, _ = t1_case
    assert isinstance(result, ConformResult)
    assert result.array.shape == (1,) + tpl.shape and result.array.dtype == np.float32
    assert _corr(result.array[0], tpl.t1, tpl.mask) > 0.9
    assert np.percentile(result.array[0][tpl.mask], 99) == pytest.approx(1.0, rel=1e-3)
    assert result.transform.seconds < 60


def test_to_native_round_trip(t1_case, tpl):
    _, moved, result, _ = t1_case
    back = to_native(result.array, tpl, result.transform, result.native_reference)
    assert back.shape == moved.shape and np.allclose(back.affine, moved.affine)
    orig = moved.get_fdata()
    inside = back.get_fdata() > 0
    assert inside.sum() > 0.5 * (orig > 0).sum()
    assert _corr(back.get_fdata(), orig, inside) > 0.9
    # several channels give a 4D image; a reloaded transform (file names only) gives the same
    two = to_native(np.concatenate([result.array, 2 * result.array]), tpl,
                    result.transform.path, nib.load(result.native_reference))
    assert two.shape == moved.shape + (2,)
    assert np.allclose(two.get_fdata()[..., 0], back.get_fdata(), atol=1e-5)


def test_apply_to_template_channels(t1_case, tpl):
    _, moved, result, _ = t1_case
    data = moved.get_fdata(dtype=np.float32)
    two = nib.Nifti1Image(np.stack([data, 2 * data], axis=-1), moved.affine)
    arr = apply_to_template(two, tpl, result.transform)
    assert arr.shape == (2,) + tpl.shape
    assert np.allclose(arr[1], 2 * arr[0], rtol=1e-4, atol=1e-3)
    assert _corr(arr[0], tpl.t1, tpl.mask) > 0.9


def test_transform_reloads_from_path(t1_case, tpl):
    _, _, result, _ = t1_case
    tx = Transform.from_path(result.transform.path)
    assert tx == result.transform
    assert json.loads(open(tx.path + '.json').read())['template'] == tpl.name
    # the recovered linear part undoes a 12 deg rotation: a rotation, not a scaling
    det = np.linalg.det(tx.matrix())
    assert det == pytest.approx(1.0, abs=0.1)
    with pytest.raises(DataError, match='missing'):
        Transform.from_path(str(tx.path) + '.nope')


def test_save_load_conformed(t1_case, tpl, tmp_path):
    _, _, result, _ = t1_case
    arr = np.concatenate([result.array, result.array * 0.5])
    path = save_conformed(arr, tmp_path / 'conf.nii.gz', tpl)
    img = nib.load(path)
    assert img.shape == tpl.shape + (2,) and np.allclose(img.affine, tpl.affine)
    assert np.array_equal(load_conformed(path, tpl), arr)
    assert np.array_equal(load_conformed(save_conformed(result, tmp_path / 'one.nii.gz', tpl)),
                          result.array)
    with pytest.raises(DataError, match='model grid'):
        load_conformed(path, load_template(2))


def test_conform_pet_cross_modal(tmp_path, tpl):
    """A smooth GM-weighted 'FDG' series, rotated: registers to the T1w template by MI."""
    from nilearn.image import smooth_img

    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    uptake = gm.get_fdata(dtype=np.float32) + 0.35 * wm.get_fdata(dtype=np.float32)
    uptake = smooth_img(nib.Nifti1Image(uptake, gm.affine), 6).get_fdata(dtype=np.float32)
    frames = np.stack([uptake * f for f in (0.2, 0.9, 1.0, 1.1)], axis=-1) * 1e4
    frames[frames < 0.05 * frames.max()] = 0
    path = tmp_path / 'sub-01_trc-FDG_pet.nii'
    nib.save(_moved(frames, gm.affine), path)
    meta = {'TracerName': 'FDG', 'FrameTimesStart': [0, 1800, 2400, 3000],
            'FrameDuration': [1800, 600, 600, 600]}
    result = conform(path, 'FDG', tpl, tmp_path / 'work', metadata=meta, omp_nthreads=2)
    from nilearn.image import resample_img

    truth = resample_img(nib.Nifti1Image(uptake, gm.affine), target_affine=tpl.affine,
                         target_shape=tpl.shape, interpolation='linear', force_resample=True,
                         copy_header=True).get_fdata()
    assert _corr(result.array[0], truth, tpl.mask) > 0.97
    from bids_synth.preprocessing.intensity import suvr_reference_mask

    assert result.array[0][suvr_reference_mask('FDG', tpl)].mean() == pytest.approx(1, rel=1e-3)


def test_registration_failure_names_file(tmp_path, tpl):
    path = tmp_path / 'sub-02_T2w.nii.gz'
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), path)
    with pytest.raises(DataError, match='sub-02_T2w.nii.gz'):
        conform(path, 'T2w', tpl, tmp_path / 'work')
