"""Diffusion-model parts: spec, autoencoder, frequency, fusion, clinical, consistency, sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_synth.models.autoencoder import build_autoencoder, decode_channels, encode_channels
from bids_synth.models.conditioning import ClinicalEncoder, clinical_batch, validate_schema
from bids_synth.models.config import ModelSpec
from bids_synth.models.consistency import BiomarkerLoss
from bids_synth.models.denoiser import Denoiser
from bids_synth.models.frequency import highpass_features, latent_frequency_features
from bids_synth.models.fusion import AdaptiveFusion, masked_consistency_loss
from bids_synth.models.sampler import sample
from bids_synth.preprocessing.templates import model_grid
from bids_synth.training.toy import TOY_SCHEMA

TINY = dict(ae_channels=(4, 4, 4), ae_latent_channels=1, unet_channels=(8, 8),
            unet_attention=(False, True), num_head_channels=8, context_dim=8, fusion_dim=4,
            norm_num_groups=4)


def spec(**kw) -> ModelSpec:
    base = dict(modalities=('T1w', 'FDG', 'bold'), channels=(1, 1, 6), res=8, shape=(24, 28, 24))
    return ModelSpec(**{**base, **TINY, **kw})


def test_spec_checks_and_round_trip():
    s = spec()
    assert ModelSpec.from_dict(s.to_dict()) == s
    assert s.latent_slices()['bold'] == slice(2, 8)
    with pytest.raises(ValueError, match='divisible'):
        spec(shape=(25, 28, 24))
    with pytest.raises(ValueError, match='sampler'):
        spec(sampler='euler')
    with pytest.raises(ValueError, match='channel_scale'):
        spec(channel_scale=(1.0, 2.0))  # 8 channels
    with pytest.raises(ValueError, match='channel_scale'):
        spec(channel_scale=(1.0,) * 7 + (0.0,))
    assert spec().channel_scales() == (1.0,) * 8


def test_channel_scale_brings_every_channel_to_the_autoencoder_on_one_scale():
    from bids_synth.models.synthesis import SynthesisNet

    scales = (1.0, 2.0, 0.5, 0.01, 0.02, 0.03, 0.04, 3.0)
    torch.manual_seed(0)
    plain = SynthesisNet(spec(), {}).eval()
    scaled = SynthesisNet(spec(channel_scale=scales), {}).eval()
    scaled.load_state_dict(plain.state_dict())
    s = torch.tensor(scales)[None, :, None, None, None]
    x = torch.rand(1, 8, 24, 28, 24)
    with torch.no_grad():
        # the scaled net sees x * scale exactly as the plain net sees x
        assert torch.allclose(scaled.encode(x * s), plain.encode(x), atol=1e-6)
        z = plain.encode(x)
        assert torch.allclose(scaled.decode(z), plain.decode(z) * s, atol=1e-6)
        # one modality's channels: its own scales (bold is channels 2..7)
        bold = slice(2, 8)
        zb = plain.encode(x[:, bold], bold)
        assert torch.allclose(scaled.encode(x[:, bold] * s[:, bold], bold), zb, atol=1e-6)
        assert torch.allclose(scaled.decode(zb, bold), plain.decode(zb, bold) * s[:, bold],
                              atol=1e-6)


def test_autoencoder_channelwise_shapes():
    s = spec()
    ae = build_autoencoder(s)
    x = torch.rand(2, 8, 24, 28, 24)
    with torch.no_grad():
        z = encode_channels(ae, x)
        y = decode_channels(ae, z, s.ae_latent_channels)
    assert z.shape == (2, 8, 6, 7, 6) and y.shape == x.shape


def test_highpass_features_keep_fine_detail_and_equalize():
    x = torch.zeros(1, 1, 16, 16, 16)
    i = torch.arange(16)
    checker = ((i[:, None, None] + i[None, :, None] + i[None, None, :]) % 2).float()
    smooth = torch.cos(2 * torch.pi * i / 16)[:, None, None].expand(16, 16, 16)
    x[0, 0] = smooth
    x[0, 0, :, :, 8:] += checker[:, :, 8:]
    f = highpass_features(x, 0.25)
    assert 0 <= float(f.min()) and float(f.max()) <= 1
    assert float(f.mean()) == pytest.approx(0.5, abs=1e-3)  # equalized: uniform ranks
    # the fine checkerboard half ranks above the smooth half, whose low frequency is removed
    assert float(f[..., 9:15].mean()) > 0.7 > 0.3 > float(f[..., 1:7].mean())
    assert latent_frequency_features(x, 4).shape == (1, 1, 4, 4, 4)


def test_fusion_weights_follow_availability():
    torch.manual_seed(0)
    s = spec()
    fusion = AdaptiveFusion(s)
    lat = torch.randn(3, s.latent_channels_total, 6, 7, 6)
    freq = torch.rand(3, s.total_channels, 6, 7, 6)
    avail = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    out = fusion(lat, freq, avail)
    w = out['weights']
    assert w.shape == (3, 4)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    w = w.detach()
    assert float(w[0, 1]) == 0 and bool((w[1, :3] == 0).all()) and float(w[1, 3]) == 1
    assert out['fused'].shape == (3, s.fusion_dim, 6, 7, 6)
    # the missing modality's data cannot leak into the output
    lat2 = lat.clone()
    lat2[0, s.latent_slices()['FDG']] += 100
    torch.testing.assert_close(fusion(lat2, freq, avail)['fused'][0], out['fused'][0])
    loss = masked_consistency_loss(fusion, lat, freq, avail | True, avail)
    loss.backward()
    assert loss.item() >= 0 and fusion.query.grad is not None


def test_clinical_tokens_missing_and_dropout():
    schema = validate_schema({**TOY_SCHEMA})
    enc = ClinicalEncoder(schema, 8)
    rows = [{'age': 80, 'sex': 'M', 'mmse': None}, {'age': 'n/a', 'sex': 'X'}]
    b = clinical_batch(rows, schema)
    cols = list(schema)
    assert b.missing[0].tolist() == [False, True, False] == [c == 'mmse' for c in cols]
    assert b.missing[1].all()
    assert b.values[0, cols.index('age')] == pytest.approx(10 / 8)
    tok = enc(b)
    assert tok.shape == (2, 4, 8)
    g = torch.Generator().manual_seed(0)
    dropped = enc(b, drop_prob=1.0, generator=g)
    torch.testing.assert_close(dropped[0], enc(clinical_batch([{}], schema))[0])
    with pytest.raises(ValueError, match='unknown type'):
        validate_schema({'x': {'type': 'date'}})


def test_biomarker_loss():
    affine, shape = model_grid(8)
    loss = BiomarkerLoss(affine, shape)
    x = torch.rand(2, 3, *shape)
    assert loss(x, x).item() == 0
    y = x.clone()
    y[:, 1] += 0.5
    assert loss(y, x).item() == pytest.approx(0.5 / 3, rel=1e-4)
    mask = torch.tensor([[True, False, True]] * 2)
    assert loss(y, x, mask).item() == 0
    assert loss.biomarkers(x).shape == (2, 3, 3)


def test_denoiser_shapes_with_padding():
    s = spec()
    den = Denoiser(s)
    z = torch.randn(2, s.latent_channels_total, 6, 7, 6)
    cond = den.condition(z, torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 4, 6, 7, 6))
    out = den(z, torch.tensor([10.0, 900.0]), cond, torch.randn(2, 5, 8))
    assert out.shape == z.shape


@pytest.mark.parametrize('sampler', ['rflow', 'ddim'])
def test_samplers_deterministic_and_exact_for_oracle(sampler):
    target = torch.randn(1, 2, 4, 4, 4)
    noise = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = sample(lambda x, t: target.expand_as(x), noise, sampler=sampler, steps=4)
    torch.testing.assert_close(out, target, atol=1e-4, rtol=1e-4)
    calls = []
    sample(lambda x, t: calls.append(float(t[0])) or x, noise, sampler=sampler, steps=3)
    assert len(calls) == 3 and calls == sorted(calls, reverse=True)
    assert 0 < calls[-1] < calls[0] <= 1000
    with pytest.raises(ValueError):
        sample(lambda x, t: x, noise, sampler='euler', steps=3)
