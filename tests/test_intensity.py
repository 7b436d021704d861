"""Native representations (PET static, bold maps, dwi maps) and intensity normalization."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_synth.bids.modalities import MODALITIES
from bids_synth.errors import DataError
from bids_synth.preprocessing.derived import (
    bold_maps,
    dwi_maps,
    reho,
    pet_static,
    representation_native,
)
from bids_synth.preprocessing.intensity import SUVR_REFERENCE, normalize, suvr_reference_mask
from bids_synth.preprocessing.templates import load_template

AFF = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture(scope='module')
def tpl():
    return load_template(4)


def _frames(n=5):
    data = np.stack([np.full((4, 4, 4), float(i), np.float32) for i in range(n)], axis=-1)
    return nib.Nifti1Image(data, AFF)


PET_META = {'FrameTimesStart': [0, 600, 1800, 2400, 3000],
            'FrameDuration': [600, 1200, 600, 600, 600], 'InjectionStart': 0}


def test_pet_static_picks_late_window():
    img = _frames()
    fdg = pet_static(img, {**PET_META, 'TracerName': 'FDG'})
    assert fdg.shape == (4, 4, 4) and np.allclose(fdg.get_fdata(), 3.0)  # frames 2, 3, 4
    av45 = pet_static(img, PET_META, modality='AV45')  # 50-70 min: only the last frame
    assert np.allclose(av45.get_fdata(), 4.0)
    custom = pet_static(img, PET_META, window=(0, 1800))  # 600 s of frame 0, 1200 s of frame 1
    assert np.allclose(custom.get_fdata(), (0 * 600 + 1 * 1200) / 1800)
    late_inj = pet_static(img, {**PET_META, 'InjectionStart': 600}, modality='FDG')
    assert np.allclose(late_inj.get_fdata(), 3.5)  # window shifts by 600 s: frames 3, 4


def test_pet_static_fallback_and_3d():
    with pytest.warns(UserWarning, match='last 2 of 5'):
        out = pet_static(_frames(), {}, modality='FDG')
    assert np.allclose(out.get_fdata(), 3.5)
    img3 = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), AFF)
    assert np.allclose(pet_static(img3, {}).get_fdata(), 1.0)


def test_bold_alff_finds_planted_oscillation():
    rng = np.random.default_rng(0)
    n, tr = 200, 2.0
    t = np.arange(n) * tr
    data = 100 + rng.normal(0, 1, (8, 8, 8, n)).astype(np.float32)
    data += 0.02 * t  # a linear drift that detrending removes
    data[2:5, 2:5, 2:5] += 3 * np.sin(2 * np.pi * 0.05 * t)
    maps = bold_maps(nib.Nifti1Image(data, AFF), tr).get_fdata()
    assert maps.shape == (8, 8, 8, MODALITIES['bold'].n_channels)
    roi = np.zeros((8, 8, 8), bool)
    roi[2:5, 2:5, 2:5] = True
    alff, falff = maps[..., 4], maps[..., 5]
    # a 3-unit sine adds its amplitude to one of ~29 band bins: mean in-band amplitude rises
    assert alff[roi].min() > alff[~roi].max()
    assert alff[roi].mean() > 1.5 * alff[~roi].mean()
    assert falff[roi].min() > falff[~roi].max() and falff.max() <= 1
    assert np.allclose(maps[..., 0].mean(), 100 + 0.02 * t[:50].mean(), atol=0.1)
    assert maps[..., 3].mean() > maps[..., 0].mean()  # segments in time order


def test_reho_known_cases():
    """Kendall's W: 1 where all 27 neighbours share one series, about 1/K for independent
    noise (its expectation for K raters is 1/K plus a small-sample term), and the formula
    matches a direct computation on one neighbourhood."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    n = 60
    data = rng.normal(size=(9, 9, 9, n)).astype(np.float32)
    shared = rng.normal(size=n)
    data[0:5, 0:5, 0:5] = shared + 0.001 * rng.normal(size=(5, 5, 5, n))  # monotone copies
    w = reho(data)
    assert w.shape == (9, 9, 9) and w.dtype == np.float32
    assert w[2, 2, 2] == pytest.approx(1.0, abs=1e-3)
    assert 0.02 < np.median(w[6:8, 6:8, 6:8]) < 0.08  # independent noise: about 1 / 27
    ranks = rankdata(data[5:8, 5:8, 5:8].reshape(27, n), axis=1)
    r = ranks.sum(0)
    direct = 12 * ((r - 27 * (n + 1) / 2) ** 2).sum() / (27 ** 2 * (n ** 3 - n))
    assert w[6, 6, 6] == pytest.approx(direct, rel=1e-5)
    mask = np.ones((9, 9, 9), bool)
    mask[0] = False
    assert not reho(data, mask)[0].any()  # outside the mask: 0
    maps = bold_maps(nib.Nifti1Image(data, AFF), 2.0).get_fdata()
    assert np.allclose(maps[..., MODALITIES['bold'].channels.index('reho')], w)


def test_bold_rejects_short_runs():
    with pytest.raises(DataError, match='at least'):
        bold_maps(nib.Nifti1Image(np.zeros((2, 2, 2, 5), np.float32), AFF), 2.0)


def _dwi():
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import single_tensor

    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(30, 3))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    bvals = np.r_[0, 0, np.full(30, 1000.0)]
    bvecs = np.r_[np.zeros((2, 3)), vecs]
    gtab = gradient_table(bvals, bvecs=bvecs)
    aniso = single_tensor(gtab, 100, evals=np.array([1.7e-3, 0.3e-3, 0.3e-3]), evecs=np.eye(3))
    iso = single_tensor(gtab, 100, evals=np.full(3, 0.8e-3), evecs=np.eye(3))
    data = np.zeros((10, 10, 10, bvals.size), np.float32)
    data[2:8, 2:8, 2:8] = iso
    data[3:6, 3:6, 3:6] = aniso
    return nib.Nifti1Image(data, AFF), bvals, bvecs


def test_dwi_maps_fa_md():
    img, bvals, bvecs = _dwi()
    maps = dwi_maps(img, bvals, bvecs.T).get_fdata()  # (3, N) b-vectors as in .bvec files
    names = MODALITIES['dwi'].channels
    assert maps.shape[-1] == len(names)
    fa, md = maps[..., names.index('fa')], maps[..., names.index('md')]
    assert fa[4, 4, 4] > 0.7 and fa[7, 7, 7] < 0.05
    assert md[4, 4, 4] == pytest.approx(0.767, abs=0.02)  # (1.7 + 0.3 + 0.3) / 3
    assert md[7, 7, 7] == pytest.approx(0.8, abs=0.02)
    assert fa[0, 0, 0] == 0 and md[0, 0, 0] == 0
    assert maps[4, 4, 4, 0] == pytest.approx(100, rel=1e-3)  # b0
    assert maps[7, 7, 7, 1] == pytest.approx(100 * np.exp(-0.8), rel=1e-3)


def test_representation_native_dwi(tmp_path):
    img, bvals, bvecs = _dwi()
    nib.save(img, tmp_path / 'sub-01_dwi.nii.gz')
    np.savetxt(tmp_path / 'sub-01_dwi.bval', bvals[None], fmt='%g')
    np.savetxt(tmp_path / 'sub-01_dwi.bvec', bvecs.T, fmt='%.6f')
    maps, ref = representation_native(tmp_path / 'sub-01_dwi.nii.gz', 'dwi', {})
    assert maps.shape == (10, 10, 10, 13) and ref.shape == (10, 10, 10)
    assert np.allclose(ref.get_fdata(), maps.get_fdata()[..., 0])
    (tmp_path / 'sub-01_dwi.bval').unlink()
    with pytest.raises(DataError, match='sub-01_dwi.nii.gz'):
        representation_native(tmp_path / 'sub-01_dwi.nii.gz', 'dwi', {})


@pytest.mark.parametrize('modality', ['T1w', 'bold', 'dwi'])
def test_normalize_p99_is_one(tpl, modality):
    rng = np.random.default_rng(2)
    mod = MODALITIES[modality]
    arr = rng.gamma(2.0, 50.0, (mod.n_channels,) + tpl.shape).astype(np.float32)
    keep = [i for i, n in enumerate(mod.channels) if n in ('falff', 'fa', 'reho')]
    arr[keep] = rng.uniform(0, 1, (len(keep),) + tpl.shape)
    out = normalize(arr, modality, tpl)
    assert out.shape == arr.shape and out.dtype == np.float32
    assert np.percentile(out[0][tpl.mask], 99) == pytest.approx(1.0, rel=1e-4)
    assert not out[:, ~tpl.mask].any()
    for i in keep:
        assert np.allclose(out[i][tpl.mask], arr[i][tpl.mask])


def test_normalize_suvr(tpl):
    for modality in ('FDG', 'AV45'):
        assert SUVR_REFERENCE[modality] == 'cerebellum'
        arr = (5000 * tpl.gm + 1500 * tpl.wm)[None]
        out = normalize(arr, modality, tpl)
        ref = suvr_reference_mask(modality, tpl)
        assert ref.sum() > 50
        assert out[0][ref].mean() == pytest.approx(1.0, rel=1e-4)


def test_normalize_empty_image_is_data_error(tpl):
    with pytest.raises(DataError, match='T2w'):
        normalize(np.zeros((1,) + tpl.shape, np.float32), 'T2w', tpl)
