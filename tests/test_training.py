"""Training: losses go down, input masking, augmentation, ridge split, resume, fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bids_synth.bids.modalities import MODALITIES
from bids_synth.errors import DataError, ModelError
from bids_synth.models.conditioning import clinical_batch
from bids_synth.models.config import ModelSpec
from bids_synth.models.synthesis import DiffusionImputer
from bids_synth.training import diffusion as trainer
from bids_synth.training.config import PRESETS
from bids_synth.training.data import build_cohort, channel_scales, random_inputs
from bids_synth.training.ridge import cross_fit, fit_ridge
from bids_synth.training.splits import split_subjects
from bids_synth.training.toy import TOY_SCHEMA, toy_cohort

MODS = ('T1w', 'FDG', 'bold')
TINY = dict(PRESETS['tiny'].to_dict())


@pytest.fixture(scope='module')
def cohort():
    torch.set_num_threads(1)
    return toy_cohort(8, 4, MODS, seed=0)


def _spec() -> ModelSpec:
    return ModelSpec(modalities=MODS, channels=tuple(MODALITIES[m].n_channels for m in MODS),
                     res=8, shape=(24, 28, 24),
                     **PRESETS['tiny'].model)


def test_mean_and_flow_losses_go_down(cohort, tmp_path):
    sessions, mask = cohort
    out = trainer.train_diffusion(
        sessions, mask=mask, clinical_schema=TOY_SCHEMA, out_dir=tmp_path / 'm', modalities=MODS,
        res=8, config={**TINY, 'ssl_steps': 1, 'mean_steps': 30, 'flow_steps': 30,
                       'mean_lr': 3e-3, 'flow_lr': 3e-3, 'augment_prob': 0.0,
                       'checkpoint_every': 100}, progress=False)
    losses = json.loads((out / '.train_state' / 'state.json').read_text())['losses']
    assert np.mean(losses['mean'][-5:]) < 0.8 * np.mean(losses['mean'][:5])
    # the preconditioned flow starts near its Gaussian optimum (loss about 1): it must still
    # go down, and below that optimum
    assert np.mean(losses['flow'][-10:]) < min(1.0, np.mean(losses['flow'][:5]))
    model = DiffusionImputer.load(out)
    card = model.card()
    assert card['training']['losses']['mean']['steps'] == 30
    # validated with the training-subject ridge, written with one refitted on every subject
    assert card['training']['split']['val_subjects']
    assert model.ridge.info['n_subjects'] == len({s.subject for s in sessions})
    assert 'refit' in model.ridge.info and 'ridge_selection' in model.ridge.info
    assert set(card['validation']) >= {'per_target', 'per_pattern', 'ridge'}
    assert len(card['architecture']['residual_scale']) == 8 * sum(  # channels x 8 subbands
        MODALITIES[m].n_channels for m in MODS)
    assert not (out / '.train_state' / 'state.safetensors').exists()


def test_ridge_penalty_is_chosen_on_an_inner_split_and_cross_fit_excludes_the_subject(cohort):
    from bids_synth.preprocessing.templates import model_grid

    sessions, mask = cohort
    affine = model_grid(8)[0]
    ridge = fit_ridge(sessions, mask=mask, affine=affine, clinical_schema=TOY_SCHEMA,
                      modalities=MODS, seed=0)
    sel = ridge.info['ridge_selection']
    assert sel['penalty'] == ridge.lam and set(sel['psnr_by_penalty']) == {'1.0', '3.0', '10.0',
                                                                            '30.0'}
    assert not set(sel['inner_train_subjects']) & set(sel['inner_val_subjects'])
    folds = cross_fit(sessions, ridge, mask=mask, affine=affine, folds=2, seed=0)
    assert len(folds) == len(sessions) and len({id(f) for f in folds}) == 2
    for s, f in zip(sessions, folds):
        assert f.info['n_subjects'] < ridge.info['n_subjects']
        others = {o.subject for o, g in zip(sessions, folds) if g is not f}
        assert s.subject not in others  # the fold holds every session of its subjects


def test_cross_fit_falls_back_when_a_fold_lacks_a_modality(cohort):
    from bids_synth.preprocessing.templates import model_grid

    sessions, mask = cohort
    affine = model_grid(8)[0]
    # FDG in two sessions only: a fold without one of them cannot fit FDG
    sparse = [type(s)(s.subject, s.session,
                      {m: a for m, a in s.images.items() if m != 'FDG' or i < 2}, s.clinical)
              for i, s in enumerate(sessions)]
    ridge = fit_ridge(sparse, mask=mask, affine=affine, clinical_schema=TOY_SCHEMA,
                      modalities=MODS, seed=0)
    folds = cross_fit(sparse, ridge, mask=mask, affine=affine, folds=2, seed=0)
    for s, f in zip(sparse, folds):
        assert set(f.modalities) == set(ridge.modalities)
        f.predict(s, ('FDG',))  # every base can predict every modality


def test_augmentation_changes_inputs_not_targets(cohort):
    from bids_synth.training.augment import augment_inputs

    sessions, mask = cohort
    s = sessions[0]
    rng = np.random.default_rng(0)
    out = augment_inputs(dict(s.images), mask, rng, 1.0)
    assert not np.allclose(out['T1w'], s.images['T1w'])
    np.testing.assert_array_equal(out['bold'], s.images['bold'])  # derived maps are kept
    assert augment_inputs(dict(s.images), mask, rng, 0.0)['T1w'] is s.images['T1w']


def test_random_inputs_are_nonempty_strict_subsets():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(200, 5, generator=g) < 0.7
    keep = random_inputs(present, g, all_prob=0.0)
    assert not (keep & ~present).any()
    n = present.sum(1)
    assert (keep.sum(1)[n > 0] >= 1).all()
    assert (keep.sum(1)[n >= 2] < n[n >= 2]).all()
    assert len({tuple(k.tolist()) for k in keep}) > 10


def test_channel_scales_are_robust_maxima_of_present_data(cohort):
    sessions, mask = cohort
    spec = _spec()
    data = build_cohort(sessions, spec, TOY_SCHEMA)
    bold = spec.channel_slices()['bold']
    data.images[:, bold.start] *= 1e-3  # e.g. ALFF, three orders below the others
    data.present[:, 1] = False  # FDG missing everywhere: no scale can be measured
    data.images[:, spec.channel_slices()['FDG']] = 1e6
    scales = channel_scales(data, spec, mask)
    assert len(scales) == spec.total_channels and scales[1] == 1.0
    ref = float(np.quantile(np.abs(data.images[:, 0].numpy()[:, mask]), 0.99))
    assert scales[0] == pytest.approx(ref, rel=1e-3)
    assert scales[bold.start] == pytest.approx(1e-3 * scales[bold.start + 1], rel=0.5)


def test_split_is_by_subject():
    subs = [f'{i:02d}' for i in range(10)] * 3
    train, val = split_subjects(subs, 0.2, seed=1)
    assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == set(subs)
    assert split_subjects(subs, 0.2, seed=1) == (train, val)
    assert split_subjects(['01'], 0.5) == (['01'], [])


def test_resume_after_interruption_matches_an_uninterrupted_run(cohort, tmp_path, monkeypatch):
    sessions, mask = cohort
    cfg = {**TINY, 'ssl_steps': 2, 'mean_steps': 4, 'flow_steps': 6, 'checkpoint_every': 2}
    kw = dict(mask=mask, clinical_schema=TOY_SCHEMA, modalities=MODS, res=8, config=cfg,
              progress=False)
    ref = DiffusionImputer.load(trainer.train_diffusion(sessions, out_dir=tmp_path / 'a', **kw))

    real_save = trainer.save_state
    calls = {'n': 0}

    def crash(out, net, opt, gen, meta):
        real_save(out, net, opt, gen, meta)
        calls['n'] += 1
        if meta['stage'] == 'flow' and meta['step'] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, 'save_state', crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_diffusion(sessions, out_dir=tmp_path / 'b', **kw)
    state = json.loads((tmp_path / 'b' / '.train_state' / 'state.json').read_text())
    assert (state['stage'], state['step']) == ('flow', 4)
    monkeypatch.setattr(trainer, 'save_state', real_save)
    resumed = DiffusionImputer.load(
        trainer.train_diffusion(sessions, out_dir=tmp_path / 'b', **kw))
    for (k, v), v2 in zip(ref.net.state_dict().items(), resumed.net.state_dict().values()):
        torch.testing.assert_close(v, v2, msg=k)
    # a finished run is not redone
    before = (tmp_path / 'b' / 'model.safetensors').stat().st_mtime_ns
    trainer.train_diffusion(sessions, out_dir=tmp_path / 'b', **kw)
    assert (tmp_path / 'b' / 'model.safetensors').stat().st_mtime_ns == before


def test_bad_training_inputs(cohort, tmp_path):
    sessions, mask = cohort
    with pytest.raises(DataError, match='brain mask'):
        trainer.train_diffusion(sessions, mask=mask[:-1], clinical_schema={}, out_dir=tmp_path,
                                modalities=MODS, res=8, config='tiny')
    with pytest.raises(DataError, match='no sessions'):
        trainer.train_diffusion([], mask=mask, clinical_schema={}, out_dir=tmp_path,
                                modalities=MODS, res=8, config='tiny')
    assert clinical_batch([{}], {}).values.shape == (1, 0)


def test_non_finite_steps_are_skipped_and_divergence_stops_the_run(cohort, tmp_path,
                                                                   monkeypatch):
    import bids_synth.models.mean_network as mn

    sessions, mask = cohort
    kw = dict(mask=mask, clinical_schema=TOY_SCHEMA, modalities=MODS, res=8, progress=False)
    real = mn.MeanNetwork.forward
    calls = {'n': 0}

    def one_nan(self, *a, **k):  # the second training forward of the mean network diverges
        out, fus = real(self, *a, **k)
        if self.training:
            calls['n'] += 1
            if calls['n'] == 2:
                out = out * float('nan')
        return out, fus

    monkeypatch.setattr(mn.MeanNetwork, 'forward', one_nan)
    path = trainer.train_diffusion(sessions, out_dir=tmp_path / 'once',
                                   config={**TINY, 'mean_steps': 4, 'flow_steps': 1}, **kw)
    card = DiffusionImputer.load(path).card()
    assert card['training']['skipped_steps'] == {'mean': 1}
    assert card['training']['losses']['mean']['steps'] == 3
    for v in DiffusionImputer.load(path).net.state_dict().values():
        assert torch.isfinite(v).all()

    def always(self, *a, **k):
        out, fus = real(self, *a, **k)
        return out * float('nan'), fus

    monkeypatch.setattr(mn.MeanNetwork, 'forward', always)
    with pytest.raises(ModelError, match='diverged'):
        trainer.train_diffusion(sessions, out_dir=tmp_path / 'always',
                                config={**TINY, 'mean_steps': 12}, **kw)


def test_fine_tune_keeps_the_scales_and_starts_from_the_base(cohort, tmp_path):
    sessions, mask = cohort
    kw = dict(mask=mask, clinical_schema=TOY_SCHEMA, modalities=MODS, res=8, progress=False)
    base_dir = trainer.train_diffusion(sessions, out_dir=tmp_path / 'base', config='tiny', **kw)
    tuned_dir = trainer.train_diffusion(sessions[:6], out_dir=tmp_path / 'tuned',
                                        config={**TINY, 'mean_steps': 3, 'flow_steps': 2},
                                        init_from=base_dir, **kw)
    base, tuned = DiffusionImputer.load(base_dir), DiffusionImputer.load(tuned_dir)
    assert tuned.card()['training']['init_from'] == str(base_dir)
    assert tuned.spec.channel_scale == base.spec.channel_scale
    assert not torch.equal(next(base.net.mean.unet.parameters()),
                           next(tuned.net.mean.unet.parameters()))
    assert set(tuned.card()['training']['losses']) == {'mean', 'flow'}
    with pytest.raises(ModelError, match='cannot fine-tune'):
        trainer.train_diffusion(sessions, out_dir=tmp_path / 'x', config='tiny',
                                init_from=base_dir, **{**kw, 'modalities': ('T1w', 'FDG')})
