"""PDS stage 2 (models.refinement): tissue maps, pattern weights, TR/MR fit, storage, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from bids_synth.bids.modalities import MODALITIES, TENSOR_CHANNELS
from bids_synth.models.baseline import RegressionImputer
from bids_synth.models.imputer import SessionArrays
from bids_synth.models.patterns import atlas_weights, diagnosis_column, pattern_weights
from bids_synth.models.refinement import (
    _eig, _fa_md, context, fit_refinement, set_microstructure,
)
from bids_synth.preprocessing.templates import model_grid
from bids_synth.preprocessing.tissues import tissue_maps
from bids_synth.training.toy import toy_tissues

RES = 8
SCHEMA = {'age': {'type': 'continuous', 'mean': 70.0, 'std': 8.0},
          'diagnosis': {'type': 'categorical', 'levels': ['CN', 'AD']}}


def _priors():
    tissues, mask = toy_tissues(RES, use_template=True)  # gm, wm, csf
    return np.stack([tissues[2], tissues[0], tissues[1]]), mask  # csf, gm, wm


def _cohort(n, seed):
    """Sessions whose WM varies smoothly per subject; the dwi b0 channel is a *nonlinear*
    function of the WM fraction (what a ridge on the T1w cannot express), the tensor an
    axially symmetric one with an FA that grows with it."""
    priors, mask = _priors()
    csf, gm, wm = priors
    rng = np.random.default_rng(seed)
    names = MODALITIES['dwi'].channels
    out = []
    for s in range(n):
        ad = s % 2 == 1
        grow = gaussian_filter(rng.standard_normal(mask.shape), 1.5) * 6
        w = np.clip(wm + grow * wm * (1 - wm) + 0.05 * rng.standard_normal(mask.shape), 0, 1)
        g = np.clip(gm + wm - w, 0, 1)
        noise = lambda: 0.02 * rng.standard_normal(mask.shape)  # noqa: E731
        t1 = (0.6 * g + w + 0.15 * csf + noise()) * mask
        bold = np.stack([(0.8 * g + 0.5 * w + 0.3 * csf + noise()) * mask for _ in range(7)])
        fa = 0.8 * w ** 4 * (0.8 if ad else 1.0)
        md = 0.7 + 0.3 * csf * 2
        dwi = np.zeros((len(names),) + mask.shape, np.float32)
        dwi[names.index('b0')] = 0.5 + 0.5 * csf + 0.8 * w ** 4
        for k in range(1, 5):
            dwi[names.index(f'seg{k}')] = dwi[names.index('b0')] * np.exp(-md)
        dwi[names.index('fa')], dwi[names.index('md')] = fa, md
        # axially symmetric tensor along x with this FA and MD (eigenvalues in 1e-3 mm^2/s)
        f = np.clip(fa, 0, 0.9)
        k = f / np.sqrt(3 - 2 * f ** 2)
        lam1, lam2 = md * (1 + 2 * k), md * (1 - k)
        dwi[names.index(TENSOR_CHANNELS[0])] = np.log(lam1)
        dwi[names.index(TENSOR_CHANNELS[3])] = np.log(lam2)
        dwi[names.index(TENSOR_CHANNELS[5])] = np.log(lam2)
        dwi = (dwi + noise()) * mask
        out.append(SessionArrays(f'{s:02d}', None,
                                 {'T1w': t1[None].astype(np.float32),
                                  'bold': bold.astype(np.float32), 'dwi': dwi.astype(np.float32)},
                                 {'age': float(rng.normal(70, 8)),
                                  'diagnosis': 'AD' if ad else 'CN'}))
    return out, mask, priors


@pytest.fixture(scope='module')
def fitted():
    train, mask, priors = _cohort(12, seed=0)
    affine, _ = model_grid(RES)
    ridge = RegressionImputer.fit(train, mask=mask, affine=affine, clinical_schema=SCHEMA,
                                  modalities=['T1w', 'bold', 'dwi'], ridge=3.0)
    refined = RegressionImputer.fit(train, mask=mask, affine=affine, clinical_schema=SCHEMA,
                                    modalities=['T1w', 'bold', 'dwi'], ridge=3.0)
    refined.refinement = fit_refinement(refined, train, priors=priors, folds=3,
                                        microstructure=True)
    return ridge, refined, mask


def test_too_few_sessions_fit_no_refinement(fitted):
    ridge, _, mask = fitted
    train, _, priors = _cohort(6, seed=3)
    assert fit_refinement(ridge, train, priors=priors) is None  # nothing cross-fitted either


def test_tissue_maps_segment_the_t1w_deterministically():
    priors, mask = _priors()
    csf, gm, wm = priors
    t1 = (0.6 * gm + wm + 0.15 * csf) * mask
    maps, source = tissue_maps(t1, priors, mask)
    assert source == 'T1w' and maps.shape == (3,) + mask.shape
    assert np.corrcoef(maps[2][mask], wm[mask])[0, 1] > 0.8
    np.testing.assert_array_equal(maps, tissue_maps(t1, priors, mask)[0])
    assert tissue_maps(None, priors, mask)[1] == 'template'
    assert tissue_maps(np.zeros_like(t1), priors, mask)[1] == 'template'


def test_pattern_weights():
    affine, shape = model_grid(4)
    mask = np.ones(shape, bool)
    atlas = atlas_weights(affine, shape)
    assert set(np.unique(atlas)) == {0.0, 1.0, 2.0}  # default network spheres weigh 2
    arrays = [np.zeros((1,) + shape, np.float32) for _ in range(6)]
    for a in arrays[3:]:
        a[0, 10:14, 10:14, 10:14] = 1.0 + 0.1 * np.random.default_rng(len(a)).random()
    labels = ['CN'] * 3 + ['AD'] * 3
    w = pattern_weights(mask, affine, arrays, labels, 'CN')
    assert w.mean() == pytest.approx(1.0, abs=1e-5)
    assert w[10:14, 10:14, 10:14].mean() > 2 * w[30:, 30:, 30:].mean()
    assert diagnosis_column(SCHEMA) == 'diagnosis' and diagnosis_column({}) is None


def test_set_microstructure_keeps_the_eigenvectors():
    names = MODALITIES['dwi'].channels
    mask = np.ones((2, 1, 1), bool)
    pred = np.zeros((len(names), 2, 1, 1), np.float32)
    rot = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])  # principal axis along y
    from bids_synth.preprocessing.tensor import to_elements
    log_el = to_elements(rot @ np.diag(np.log([1.5, 0.4, 0.3])) @ rot.T)
    for k, c in enumerate(TENSOR_CHANNELS):
        pred[names.index(c)] = log_el[k]
    out = set_microstructure(pred, mask, np.array([0.3, 0.7]), np.array([0.9, 0.6]))
    lam, vec = _eig(out, mask)
    fa, md = _fa_md(lam)
    np.testing.assert_allclose(fa, [0.3, 0.7], atol=1e-6)
    np.testing.assert_allclose(md, [0.9, 0.6], atol=1e-6)
    assert np.all(np.abs(vec[:, 1, -1]) > 0.999)  # largest eigenvalue still along y
    np.testing.assert_allclose(out[names.index('fa')].ravel(), [0.3, 0.7], atol=1e-6)


def test_refinement_beats_the_ridge_on_a_nonlinear_tissue_effect(fitted):
    ridge, refined, mask = fitted
    names = MODALITIES['dwi'].channels
    held, _, _ = _cohort(6, seed=1)
    err = {'ridge': [], 'refined': []}
    for s in held:
        inputs = SessionArrays(s.subject, None, {m: s.images[m] for m in ('bold', 'T1w')},
                               s.clinical)
        truth = s.images['dwi'][names.index('b0')][mask]
        for name, model in (('ridge', ridge), ('refined', refined)):
            pred = model.predict(inputs, ('dwi',))['dwi']
            err[name].append(np.mean((pred.mean[names.index('b0')][mask] - truth) ** 2))
            if name == 'refined':
                rec = pred.extra['refinement']
                assert rec['applied'] and rec['context'] == 'src1_t1w1'
                assert rec['tissue_maps'] == 'T1w' and rec['microstructure_refinement']
                # MR: the FA channel is the tensor's FA
                fa_t, _ = _fa_md(_eig(pred.mean, mask)[0])
                np.testing.assert_allclose(pred.mean[names.index('fa')][mask], fa_t,
                                           atol=1e-4)
    assert np.mean(err['refined']) < 0.9 * np.mean(err['ridge'])
    # bold (no nonlinear effect): refinement must not make it worse by more than noise
    s = held[0]
    inputs = SessionArrays(s.subject, None, {'dwi': s.images['dwi']}, s.clinical)
    e = [np.mean((m.predict(inputs, ('bold',))['bold'].mean[:, mask]
                  - s.images['bold'][:, mask]) ** 2) for m in (ridge, refined)]
    assert e[1] < 1.1 * e[0]


def test_refinement_is_stored_with_the_model(fitted, tmp_path):
    _, refined, mask = fitted
    card = refined.card()['refinement']
    assert card['tissue_refinement'] and card['pattern_weighting']
    assert 'dwi/src1_t1w1' in card['tr'] and 'src1_t1w1/fa' in card['mr']
    loaded = RegressionImputer.load(refined.save(tmp_path / 'm'))
    s, _, _ = _cohort(1, seed=2)
    inputs = SessionArrays('x', None, {'bold': s[0].images['bold']}, s[0].clinical)
    assert context(list(inputs.images), 'dwi') == 'src1_t1w0'
    a = refined.predict(inputs, ('dwi', 'T1w'))
    b = loaded.predict(inputs, ('dwi', 'T1w'))
    np.testing.assert_array_equal(a['dwi'].mean, b['dwi'].mean)
    assert a['dwi'].extra['refinement']['tissue_maps'] == 'template'
    assert 'refinement' not in a['T1w'].extra  # sMRI targets are not refined


def test_no_pds_refinement_option(tmp_path):
    from bids_synth.cli.parser import parse_args
    from bids_synth.config import Config

    base = [str(tmp_path), str(tmp_path / 'out'), 'group']
    on, off = parse_args(base), parse_args(base + ['--no-pds-refinement'])
    assert Config.from_options(on).workflow.pds_refinement is True
    assert Config.from_options(off).workflow.pds_refinement is False
