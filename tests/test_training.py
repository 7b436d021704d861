"""Training: loss goes down, input masking, subject split, resume after an interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bids_synth.errors import DataError, ModelError
from bids_synth.models.conditioning import clinical_batch
from bids_synth.models.config import ModelSpec
from bids_synth.models.sampler import rflow_train_pair
from bids_synth.models.synthesis import DiffusionImputer, SynthesisNet
from bids_synth.training import diffusion as trainer
from bids_synth.training.config import PRESETS
from bids_synth.training.data import (
    build_cohort, channel_scales, random_inputs, random_patches,
)
from bids_synth.training.splits import split_subjects
from bids_synth.training.toy import TOY_SCHEMA, toy_cohort

MODS = ('T1w', 'FDG', 'bold')
TINY = dict(PRESETS['tiny'].to_dict())


@pytest.fixture(scope='module')
def cohort():
    torch.set_num_threads(1)
    return toy_cohort(8, 4, MODS, seed=0)


def _spec() -> ModelSpec:
    return ModelSpec(modalities=MODS, channels=(1, 1, 6), res=8, shape=(24, 28, 24),
                     **PRESETS['tiny'].model)


def test_diffusion_steps_reduce_the_loss(cohort):
    sessions, mask = cohort
    spec = _spec()
    torch.manual_seed(0)
    net = SynthesisNet(spec, TOY_SCHEMA)
    data = build_cohort(sessions, spec, TOY_SCHEMA)
    with torch.no_grad():
        lat, freq = net.encode(data.images), net.frequency(data.images)
    g = torch.Generator().manual_seed(0)
    keep = random_inputs(data.present, g)
    t = torch.tensor([200.0, 500.0, 700.0, 900.0])
    noise = torch.randn(lat.shape, generator=g)
    x_t = rflow_train_pair(lat, noise, t)
    params = [p for n, p in net.named_parameters() if not n.startswith('autoencoder.')]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(30):
        cond, ctx, _ = net.conditioning(lat, freq, keep, data.clinical)
        loss = torch.nn.functional.mse_loss(net.denoiser(x_t, t, cond, ctx), lat)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_autoencoder_steps_reduce_the_loss(cohort, tmp_path):
    sessions, mask = cohort
    out = trainer.train_diffusion(
        sessions, mask=mask, clinical_schema=TOY_SCHEMA, out_dir=tmp_path / 'm', modalities=MODS,
        res=8, config={**TINY, 'ae_steps': 40, 'ae_lr': 3e-3, 'dm_steps': 2, 'ssl_steps': 1},
        progress=False)
    losses = json.loads((out / '.train_state' / 'state.json').read_text())['losses']['ae']
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    card = DiffusionImputer.load(out).card()
    assert card['training']['losses']['ae']['steps'] == 40
    assert not (out / '.train_state' / 'state.safetensors').exists()


def test_random_inputs_are_nonempty_strict_subsets():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(200, 5, generator=g) < 0.7
    keep = random_inputs(present, g, all_prob=0.0)
    assert not (keep & ~present).any()
    n = present.sum(1)
    assert (keep.sum(1)[n > 0] >= 1).all()
    assert (keep.sum(1)[n >= 2] < n[n >= 2]).all()
    assert len({tuple(k.tolist()) for k in keep}) > 10


def test_patches_come_from_present_channels(cohort):
    sessions, mask = cohort
    spec = _spec()
    data = build_cohort(sessions, spec, TOY_SCHEMA)
    data.images[:, spec.channel_slices()['FDG']] = 1e6
    data.present[:, 1] = False
    p = random_patches(data.images, data.present, spec, 16, 8, torch.Generator().manual_seed(0),
                       mask)
    assert p.shape == (16, 1, 8, 8, 8) and float(p.max()) < 1e3


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
    cfg = {**TINY, 'ae_steps': 4, 'ssl_steps': 2, 'dm_steps': 6, 'checkpoint_every': 2}
    kw = dict(mask=mask, clinical_schema=TOY_SCHEMA, modalities=MODS, res=8, config=cfg,
              progress=False)
    ref = DiffusionImputer.load(trainer.train_diffusion(sessions, out_dir=tmp_path / 'a', **kw))

    real_save = trainer.save_state
    calls = {'n': 0}

    def crash(out, net, opt, gen, meta):
        real_save(out, net, opt, gen, meta)
        calls['n'] += 1
        if meta['stage'] == 'dm' and meta['step'] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, 'save_state', crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_diffusion(sessions, out_dir=tmp_path / 'b', **kw)
    state = json.loads((tmp_path / 'b' / '.train_state' / 'state.json').read_text())
    assert (state['stage'], state['step']) == ('dm', 4)
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
    import bids_synth.models.autoencoder as ae_mod

    sessions, mask = cohort
    kw = dict(mask=mask, clinical_schema=TOY_SCHEMA, modalities=MODS, res=8, progress=False)
    real = ae_mod.autoencoder_loss
    calls = {'n': 0}

    def one_nan(*a, **k):  # the second autoencoder step diverges once
        calls['n'] += 1
        loss, parts = real(*a, **k)
        return (loss * float('nan') if calls['n'] == 2 else loss), parts

    monkeypatch.setattr(ae_mod, 'autoencoder_loss', one_nan)
    path = trainer.train_diffusion(sessions, out_dir=tmp_path / 'once',
                                   config={**TINY, 'ae_steps': 4}, **kw)
    card = DiffusionImputer.load(path).card()
    assert card['training']['skipped_steps'] == {'ae': 1}
    assert card['training']['losses']['ae']['steps'] == 3
    for v in DiffusionImputer.load(path).net.state_dict().values():
        assert torch.isfinite(v).all()

    monkeypatch.setattr(ae_mod, 'autoencoder_loss',
                        lambda *a, **k: (real(*a, **k)[0] * float('nan'), {}))
    with pytest.raises(ModelError, match='diverged'):
        trainer.train_diffusion(sessions, out_dir=tmp_path / 'always',
                                config={**TINY, 'ae_steps': 12}, **kw)


def test_fine_tune_keeps_the_autoencoder(cohort, tmp_path):
    sessions, mask = cohort
    kw = dict(mask=mask, clinical_schema=TOY_SCHEMA, modalities=MODS, res=8, progress=False)
    base_dir = trainer.train_diffusion(sessions, out_dir=tmp_path / 'base', config='tiny', **kw)
    tuned_dir = trainer.train_diffusion(sessions[:3], out_dir=tmp_path / 'tuned',
                                        config={**TINY, 'dm_steps': 3}, init_from=base_dir, **kw)
    base, tuned = DiffusionImputer.load(base_dir), DiffusionImputer.load(tuned_dir)
    assert tuned.card()['training']['init_from'] == str(base_dir)
    assert tuned.spec.scale_factor == base.spec.scale_factor
    for (k, v), v2 in zip(base.net.autoencoder.state_dict().items(),
                          tuned.net.autoencoder.state_dict().values()):
        torch.testing.assert_close(v, v2, msg=k)
    assert not torch.equal(next(base.net.denoiser.parameters()),
                           next(tuned.net.denoiser.parameters()))
    assert set(tuned.card()['training']['losses']) == {'dm'}
    with pytest.raises(ModelError, match='cannot fine-tune'):
        trainer.train_diffusion(sessions, out_dir=tmp_path / 'x', config='tiny',
                                init_from=base_dir, **{**kw, 'modalities': ('T1w', 'FDG')})
