"""Diffusion tensors: reorientation, frames, the render-then-fit round trip, gradient tables."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bids_synth import errors
from bids_synth.bids.gradients import (
    GradientScheme, dataset_scheme, read_scheme, resolve_scheme, standard_scheme,
)
from bids_synth.bids.modalities import MODALITIES, TENSOR_CHANNELS
from bids_synth.preprocessing import tensor as T
from bids_synth.preprocessing.conform import Transform, reorient_tensors
from bids_synth.preprocessing.derived import dwi_maps
from bids_synth.preprocessing.outputs import dwi_tensor, output_images, render_dwi

ROT = Rotation.from_euler('xyz', [25, -15, 40], degrees=True).as_matrix()


def _prolate(direction, par=1.7, perp=0.3):
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    return T.to_elements(perp * np.eye(3) + (par - perp) * np.outer(d, d))


def test_finite_strain_keeps_rotation_drops_scale_and_shear():
    shear = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.1], [0.0, 0.0, 1.0]])
    a = ROT @ np.diag([1.2, 0.9, 1.1])  # rotation after scaling: R is ROT
    assert np.allclose(T.finite_strain(a), ROT)
    r = T.finite_strain(a @ shear)
    assert np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) == pytest.approx(1)
    with pytest.raises(ValueError, match='singular'):
        T.finite_strain(np.zeros((3, 3)))


def test_rotated_tensor_is_reoriented():
    """A fibre along x, seen through an affine with rotation ROT, points along ROT x; the
    log-tensor channels rotate the same way (logm commutes with rotation)."""
    d = _prolate([1, 0, 0])
    moved = T.rotate(d, ROT)
    w, v = np.linalg.eigh(T.to_matrix(moved))
    assert abs(v[:, -1] @ ROT[:, 0]) == pytest.approx(1, abs=1e-6)
    assert np.allclose(w[::-1], [1.7, 0.3, 0.3])  # same eigenvalues: FA/MD unchanged
    assert np.allclose(T.exp_tensor(T.rotate(T.log_tensor(d), ROT)), moved, atol=1e-6)
    # through the representation and an ANTs transform file, as conform does
    names = MODALITIES['dwi'].channels
    arr = np.zeros((len(names), 2, 2, 2), np.float32)
    idx = [names.index(c) for c in TENSOR_CHANNELS]
    arr[idx] = T.log_tensor(d)[:, None, None, None]
    out = reorient_tensors(arr, 'dwi', ROT)
    assert np.allclose(T.exp_tensor(out[idx, 1, 1, 1]), moved, atol=1e-5)
    t1 = arr[:1]
    assert reorient_tensors(t1, 'T1w', ROT) is t1  # no tensor channels: untouched


def test_transform_rotation_from_ants_file(tmp_path):
    """``Transform.rotation`` turns the ITK (LPS, template -> native) matrix into the native ->
    template rotation in RAS axes."""
    import ants

    native_to_template = ROT @ np.diag([1.1, 0.95, 1.05])
    flip = np.diag([-1.0, -1.0, 1.0])
    itk = flip @ np.linalg.inv(native_to_template) @ flip  # template -> native, LPS
    tx = ants.create_ants_transform(transform_type='AffineTransform', dimension=3,
                                    matrix=itk, translation=[3.0, -2.0, 5.0])
    ants.write_transform(tx, str(tmp_path / 'x.mat'))
    t = Transform(path=str(tmp_path / 'x.mat'), template='MNI', res=4, modality='dwi',
                  fixed='')
    assert np.allclose(t.linear_ras(), native_to_template, atol=1e-6)
    assert np.allclose(t.rotation(), ROT, atol=1e-6)


def test_fsl_bvecs_frames():
    """FSL b-vectors are along the voxel axes, x negated for a positive determinant."""
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    g = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert np.allclose(T.fsl_to_world(g, ras), [[-1, 0, 0], [0, 1, 0]])
    assert np.allclose(T.fsl_to_world(g, las), [[-1, 0, 0], [0, 1, 0]])  # voxel x points left
    obl = np.eye(4)
    obl[:3, :3] = ROT * 2.0
    dirs = np.random.default_rng(0).normal(size=(5, 3))
    assert np.allclose(T.world_to_fsl(T.fsl_to_world(dirs, obl), obl), dirs)


def test_dwi_maps_tensor_in_world_axes():
    """An oblique LAS image: the fitted log-tensor's fibre is in world axes, whatever the voxel
    axes and FSL's x flip."""
    from bids_synth.phantom.dwi import fsl_bvecs

    affine = np.eye(4)
    affine[:3, :3] = ROT @ np.diag([-2.0, 2.0, 2.0])
    scheme = standard_scheme()
    world_dirs = T.fsl_to_world(scheme.bvecs, np.diag([1.0, 1, 1, 1]))  # any unit directions
    fibre = np.array([0.3, 0.8, -0.5])
    d = _prolate(fibre) * 1e-3
    s0 = np.zeros((6, 6, 6))
    s0[1:5, 1:5, 1:5] = 100.0  # background for dipy's Otsu mask
    sig = T.render(s0, np.broadcast_to(d, (6, 6, 6, 6)), scheme.bvals,
                   world_dirs)
    img = nib.Nifti1Image(sig, affine)
    maps = dwi_maps(img, scheme.bvals, fsl_bvecs(world_dirs, affine)).get_fdata()
    names = MODALITIES['dwi'].channels
    logd = maps[3, 3, 3, [names.index(c) for c in TENSOR_CHANNELS]]
    w, v = np.linalg.eigh(T.to_matrix(T.exp_tensor(logd)))
    assert abs(v[:, -1] @ fibre / np.linalg.norm(fibre)) == pytest.approx(1, abs=1e-4)
    assert np.allclose(w[::-1], [1.7, 0.3, 0.3], atol=1e-3)
    assert maps[3, 3, 3, names.index('fa')] == pytest.approx(0.799, abs=2e-3)


@pytest.mark.parametrize('axcodes', ['RAS', 'LPS'])
def test_render_then_fit_round_trip(axcodes):
    """dipy's tensor fit of the rendered series returns the synthesized FA/MD, and the
    written tensor map, to tolerance (int16 storage included)."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    rng = np.random.default_rng(4)
    names = MODALITIES['dwi'].channels
    shape = (8, 8, 8)
    rep = np.zeros(shape + (len(names),), np.float32)
    rep[..., 0] = rng.uniform(0.5, 1.0, shape)  # S0 (b0 channel)
    dirs = rng.normal(size=shape + (3,))
    evals = np.stack([rng.uniform(1.0, 2.0, shape), rng.uniform(0.2, 0.6, shape),
                      rng.uniform(0.2, 0.6, shape)], -1)
    for ijk in np.ndindex(shape):
        q, _ = np.linalg.qr(np.c_[dirs[ijk], rng.normal(size=(3, 2))])
        d = T.to_elements(q @ np.diag(evals[ijk]) @ q.T)
        rep[ijk + (slice(7, 13),)] = T.log_tensor(d)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if axcodes == 'RAS' else np.diag([-2.0, -2.0, 2, 1])
    img = nib.Nifti1Image(rep, affine)
    scheme = standard_scheme()
    pieces = {p.key: p for p in output_images('dwi', img, 'synth', scheme)}
    series = nib.Nifti1Image.from_bytes(pieces['main'].image.to_bytes())  # as stored (int16)
    assert series.get_data_dtype() == np.int16 and series.shape == shape + (32,)
    assert pieces['main'].texts['.bval'] == scheme.bval_text()
    assert pieces['main'].texts['.bvec'] == scheme.bvec_text()
    world = T.fsl_to_world(scheme.bvecs, affine)
    fit = TensorModel(gradient_table(scheme.bvals, bvecs=world)).fit(series.get_fdata())
    truth = T.scalar_maps(T.exp_tensor(rep[..., 7:13]) * 1e-3)
    assert np.abs(fit.fa - truth['fa']).max() < 0.01
    assert np.abs(fit.md / truth['md'] - 1).max() < 0.01
    written = pieces['tensor'].image.get_fdata()
    assert np.allclose(T.to_elements(fit.quadratic_form), written, atol=2e-5)
    for name in ('fa', 'md', 'ad', 'rd'):
        assert np.allclose(pieces[name].image.get_fdata(), truth[name], atol=1e-5)
    tensor, mask = dwi_tensor(rep)
    assert mask.all() and np.allclose(tensor, written)


def test_render_dwi_is_zero_outside_the_mask():
    s0 = np.zeros((3, 3, 3), np.float32)
    s0[1, 1, 1] = 1.0
    t = np.zeros((3, 3, 3, 6), np.float32)
    t[..., [0, 3, 5]] = 1e-3
    out = render_dwi(s0, t, np.eye(4), np.array([0.0, 1000.0]), np.array([[0, 0, 0], [1.0, 0, 0]]))
    assert out[1, 1, 1].tolist() == pytest.approx([1.0, np.exp(-1)], rel=1e-6)
    assert not out[0].any()


# ---------------------------------------------------------------------- gradient tables
def _pair(folder, stem='scheme', n_dirs=12, bvalue=2000):
    s = standard_scheme(1, n_dirs, bvalue)
    (folder / f'{stem}.bval').write_text(s.bval_text())
    (folder / f'{stem}.bvec').write_text(s.bvec_text())
    return folder / stem, s


@pytest.mark.parametrize('name', ['{}', '{}.bval', '{}.bvec', '{}.nii.gz'])
def test_read_scheme_names(tmp_path, name):
    stem, s = _pair(tmp_path)
    got = read_scheme(name.format(stem))
    assert got.source == 'file' and np.allclose(got.bvals, s.bvals)
    assert np.allclose(got.bvecs, s.bvecs, atol=1e-6)
    assert got.describe()['Shells'] == {'0': 1, '2000': 12}
    assert GradientScheme.from_dict(got.to_dict()).bvec_text() == got.bvec_text()


def test_read_scheme_errors(tmp_path):
    with pytest.raises(errors.NoInputError, match=r'nope\.bvec: no such file') as info:
        (tmp_path / 'nope.bval').write_text('0 1000\n')
        read_scheme(tmp_path / 'nope')
    assert info.value.exit_code == 66
    stem, _ = _pair(tmp_path)
    (tmp_path / 'scheme.bvec').write_text('1 0\n0 1\n')
    with pytest.raises(errors.UsageError, match=r'scheme\.bvec: b-vectors of shape') as info:
        read_scheme(stem)
    assert info.value.exit_code == 64 and '\n' not in str(info.value)
    (tmp_path / 'scheme.bval').write_text('0 x\n')
    with pytest.raises(errors.UsageError, match=r'scheme\.bval: not a \.bval file'):
        read_scheme(stem)
    stem, _ = _pair(tmp_path, 'few', n_dirs=4)
    with pytest.raises(errors.UsageError, match='at least 6 diffusion-weighted'):
        read_scheme(stem)


def test_dataset_scheme_most_common(tmp_path):
    from bids.layout import BIDSLayout

    (tmp_path / 'dataset_description.json').write_text(
        '{"Name": "x", "BIDSVersion": "1.10.0"}')
    for sub, n in (('01', 12), ('02', 20), ('03', 20)):
        folder = tmp_path / f'sub-{sub}' / 'dwi'
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, n + 1), np.float32), np.eye(4)),
                 folder / f'sub-{sub}_dwi.nii.gz')
        _pair(folder, f'sub-{sub}_dwi', n_dirs=n)
    layout = BIDSLayout(tmp_path, validate=False)
    s = dataset_scheme(layout)
    assert s.source == 'dataset' and len(s.bvals) == 21 and (s.count, s.total) == (2, 3)
    assert s.origin.startswith('bids:raw:sub-02/dwi/sub-02_dwi.nii.gz')
    assert resolve_scheme(None, None).source == 'standard'
    assert resolve_scheme(str(tmp_path / 'sub-01/dwi/sub-01_dwi.bval'), layout).source == 'file'
