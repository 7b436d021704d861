"""DiffusionImputer: every input subset, shapes, determinism, checkpoint round trip, refusals."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from bids_synth.bids.modalities import MODALITIES
from bids_synth.errors import ModelError
from bids_synth.models.imputer import Imputer, SessionArrays
from bids_synth.models.loading import load_imputer
from bids_synth.models.synthesis import DiffusionImputer
from bids_synth.training.config import PRESETS
from bids_synth.training.diffusion import train_diffusion
from bids_synth.training.toy import TOY_SCHEMA, toy_cohort

MODS = ('T1w', 'FDG', 'bold')
SUBSETS = [c for r in range(len(MODS) + 1) for c in itertools.combinations(MODS, r)]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    sessions, mask = toy_cohort(8, 4, MODS, seed=0)
    out = tmp_path_factory.mktemp('model') / 'tiny'
    path = train_diffusion(sessions, mask=mask, clinical_schema=TOY_SCHEMA, out_dir=out,
                           modalities=MODS, res=8, config='tiny', progress=False)
    return path, sessions, mask


def test_protocol_and_card(trained):
    path, _, _ = trained
    model = load_imputer(path)
    assert isinstance(model, DiffusionImputer) and isinstance(model, Imputer)
    card = model.card()
    assert card['method'] == 'diffusion' and card['modalities'] == list(MODS)
    assert card['channels'] == {'T1w': 1, 'FDG': 1, 'bold': MODALITIES['bold'].n_channels}
    assert card['template']['res'] == 8 and card['template']['shape'] == [24, 28, 24]
    assert card['clinical_schema']['sex']['levels'] == ['F', 'M']
    assert card['training']['split']['by'] == 'subject'
    assert not set(card['training']['split']['train_subjects']) & set(
        card['training']['split']['val_subjects'])
    assert set(card['validation']['per_target']) <= set(MODS)
    for target, patterns in card['validation']['per_pattern'].items():
        for pattern, m in patterns.items():
            assert target not in pattern.split('+')
            assert {'psnr', 'ssim', 'mae', 'n'} <= set(m)
    assert set(card['validation']['ridge']['per_target']) == set(card['validation']['per_target'])
    assert card['sampler']['default'] in ('rflow', 'ddim') and card['sampler']['num_samples'] == 2
    assert card['ridge']['method'] == 'regression' and card['ridge']['modalities'] == list(MODS)


@pytest.mark.parametrize('available', SUBSETS, ids=lambda s: '+'.join(s) or 'none')
def test_every_subset_predicts_the_rest(trained, available):
    path, sessions, _ = trained
    model = DiffusionImputer.load(path)
    s = sessions[0]
    session = SessionArrays(s.subject, s.session, {m: s.images[m] for m in available},
                            {'age': 70.0, 'sex': None})
    targets = tuple(m for m in MODS if m not in available) or ('T1w',)
    preds = model.predict(session, targets, seed=3, num_samples=2)
    assert set(preds) == set(targets)
    for t, p in preds.items():
        want = s.images[t].shape
        assert p.mean.shape == want and p.mean.dtype == np.float32
        assert p.std is not None and p.std.shape == want and (p.std >= 0).all()
        assert np.isfinite(p.mean).all()
        inputs = [m for m in available if m != t]
        assert sorted(p.extra['fusion_weights']) == sorted(inputs)
        total = sum(p.extra['fusion_weights'].values()) + p.extra['null_weight']
        assert total == pytest.approx(1.0, abs=1e-5)
        assert p.extra['steps'] >= 1 and p.extra['sampler'] in ('rflow', 'ddim')


def test_same_seed_same_image(trained):
    path, sessions, _ = trained
    a, b = DiffusionImputer.load(path), DiffusionImputer.load(path)
    s = SessionArrays('x', None, {'T1w': sessions[1].images['T1w']}, {})
    for sampler in ('rflow', 'ddim'):
        kw = dict(sampler=sampler, num_samples=1, return_samples=True)
        p1 = a.predict(s, ('FDG',), seed=7, **kw)['FDG']
        p2 = b.predict(s, ('FDG',), seed=7, **kw)['FDG']
        p3 = a.predict(s, ('FDG',), seed=8, **kw)['FDG']
        np.testing.assert_array_equal(p1.samples, p2.samples)
        assert p1.std is None
        assert not np.array_equal(p1.samples, p3.samples)
        np.testing.assert_array_equal(p1.mean, p3.mean)  # the mean network: no noise


def test_samples_mean_and_the_mean_network_alone(trained):
    path, sessions, mask = trained
    model = DiffusionImputer.load(path)
    s = SessionArrays('x', None, {'T1w': sessions[1].images['T1w']}, {})
    p = model.predict(s, ('FDG', 'bold'), seed=1, num_samples=3, return_samples=True)
    for t in ('FDG', 'bold'):
        assert p[t].samples.shape == (3, *sessions[1].images[t].shape)
        # the std is the samples' spread times the calibrated scale and the widening
        factor = model.spec.std_scales()[model.modalities.index(t)] * p[t].extra['std_inflation']
        np.testing.assert_allclose(p[t].samples.std(0) * factor, p[t].std, atol=1e-4, rtol=1e-2)
        # desc-synth is the mean network's output, whatever K: the samples spread around it
        alone = model.predict(s, (t,), num_samples=0)[t].mean
        np.testing.assert_allclose(p[t].mean, alone, atol=1e-6)
        assert float(np.abs(p[t].samples - alone[None]).max()) > 0
        assert float(np.abs(p[t].samples[:, :, ~mask]).max()) == 0  # nothing outside the brain
    only = model.predict(s, ('FDG',), num_samples=0)['FDG']
    assert only.std is None and only.samples is None and only.extra['num_samples'] == 0
    np.testing.assert_array_equal(only.mean, model.predict(s, ('FDG',), num_samples=0,
                                                            seed=99)['FDG'].mean)


def test_clinical_values_and_notes_change_the_prediction(tmp_path):
    schema = {**TOY_SCHEMA, 'notes': {'type': 'text'}}
    sessions, mask = toy_cohort(8, 4, MODS, seed=1)
    for i, s in enumerate(sessions):
        s.clinical['notes'] = ['memory complaints', 'no complaints'][i % 2]
    # no calibration: its gates could shut the (barely trained) network out of the prediction
    cfg = replace(PRESETS['tiny'], calib_max_sessions=0)
    path = train_diffusion(sessions, mask=mask, clinical_schema=schema, out_dir=tmp_path / 'n',
                           modalities=MODS, res=8, config=cfg, progress=False)
    model = DiffusionImputer.load(path)
    assert model.spec.gates() == (1.0,) * len(model.modalities)
    s = sessions[0]

    def fdg(**clinical):
        sess = SessionArrays('x', None, {'T1w': s.images['T1w']}, {**s.clinical, **clinical})
        return model.predict(sess, ('FDG',), num_samples=0)['FDG'].mean

    ref = fdg()
    # the ridge ignores notes: any difference comes through the networks' notes token
    assert not np.array_equal(ref, fdg(notes='severe progressive memory loss, lost in town'))
    assert not np.array_equal(ref, fdg(age=s.clinical['age'] + 10))
    np.testing.assert_array_equal(ref, fdg())


def test_checkpoint_round_trip(trained, tmp_path):
    path, sessions, _ = trained
    model = DiffusionImputer.load(path)
    copy = model.save(tmp_path / 'copy')
    again = DiffusionImputer.load(copy)
    for (k, v), (k2, v2) in zip(model.net.state_dict().items(), again.net.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert again.spec == model.spec
    s = sessions[2]
    p1 = model.predict(s, ('bold',), seed=1)['bold'].mean
    p2 = again.predict(s, ('bold',), seed=1)['bold'].mean
    np.testing.assert_array_equal(p1, p2)


def test_pickle_is_refused(trained, tmp_path):
    path, _, _ = trained
    model = DiffusionImputer.load(path)
    pkl = tmp_path / 'model.pt'
    torch.save(model.net.state_dict(), pkl)
    with pytest.raises(ModelError, match='pickle'):
        DiffusionImputer.load(pkl)
    # a pickle disguised as the weights of a model directory
    d = model.save(tmp_path / 'disguised')
    (d / 'model.safetensors').write_bytes(pkl.read_bytes())
    with pytest.raises(ModelError, match='pickle'):
        DiffusionImputer.load(d)


def test_tampered_weights_and_card_are_refused(trained, tmp_path):
    path, _, _ = trained
    d = DiffusionImputer.load(path).save(tmp_path / 'tampered')
    raw = bytearray((d / 'model.safetensors').read_bytes())
    raw[-1] ^= 0xFF
    (d / 'model.safetensors').write_bytes(bytes(raw))
    with pytest.raises(ModelError, match='sha256'):
        DiffusionImputer.load(d)
    d2 = DiffusionImputer.load(path).save(tmp_path / 'badcard')
    card = json.loads((d2 / 'model_card.json').read_text())
    card['architecture']['mean_channels'] = [16, 16]
    (d2 / 'model_card.json').write_text(json.dumps(card))
    with pytest.raises(ModelError, match='do not match'):
        DiffusionImputer.load(d2)
    card['method'] = 'regression'
    (d2 / 'model_card.json').write_text(json.dumps(card))
    with pytest.raises(ModelError, match='not diffusion'):
        DiffusionImputer.load(d2)


def test_non_finite_output_is_a_clear_error(trained, monkeypatch):
    path, sessions, _ = trained
    model = load_imputer(path)
    monkeypatch.setattr(model.net, 'to_images', lambda c: torch.full(
        (c.shape[0], model.spec.total_channels, *model.spec.shape), float('nan')))
    with pytest.raises(ModelError, match='non-finite'):
        model.predict(sessions[0], ('FDG',), seed=0)


def test_bad_inputs_are_clear_errors(trained):
    path, sessions, _ = trained
    model = DiffusionImputer.load(path)
    with pytest.raises(ModelError, match='cannot synthesize'):
        model.predict(sessions[0], ('dwi',))
    bad = SessionArrays('01', None, {'T1w': np.zeros((1, 10, 10, 10), np.float32)})
    with pytest.raises(ValueError, match='model expects'):
        model.predict(bad, ('FDG',))


def test_calibration_and_atypical_inputs_widen_the_std(trained):
    path, sessions, mask = trained
    model = DiffusionImputer.load(path)
    card = model.card()
    spec = model.spec
    # chosen on the validation subjects: a gate per modality, a positive std scale, a reference
    assert set(card['calibration']['sessions']) <= {
        f'{s.subject}/{s.session}' for s in sessions
        if s.subject in card['training']['split']['val_subjects']}
    assert len(spec.gate) == len(MODS) and all(g in (0, 0.25, 0.5, 0.75, 1) for g in spec.gate)
    assert len(spec.std_scale) == len(MODS) and min(spec.std_scale) > 0
    assert len(spec.typicality) == len(MODS) and min(spec.typicality) > 0
    s = sessions[0]
    inputs = {m: s.images[m] for m in ('T1w', 'bold')}
    plain = model.predict(SessionArrays('a', None, inputs, s.clinical), ('FDG',), num_samples=2)
    # another scanner's T1w: the same anatomy through a random intensity curve, rescaled
    odd = dict(inputs, T1w=np.sqrt(np.clip(1.2 - inputs['T1w'], 0, None)) * mask)
    shifted = model.predict(SessionArrays('a', None, odd, s.clinical), ('FDG',), num_samples=2)
    assert shifted['FDG'].extra['input_typicality']['T1w'] > \
        2 * plain['FDG'].extra['input_typicality']['T1w']
    assert shifted['FDG'].extra['std_inflation'] > plain['FDG'].extra['std_inflation'] >= 1.0
    assert shifted['FDG'].std[:, mask].mean() > plain['FDG'].std[:, mask].mean()
    # the gate: 0 gives the ridge exactly, 1 the network
    parts = model.components(inputs, s.clinical)
    ridge = model.net.to_images(model.gated(parts['base'], parts['network'], (0.0,) * 3))
    base = model.net.to_images(parts['base'])
    torch.testing.assert_close(ridge, base)
