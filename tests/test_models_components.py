"""Diffusion-model parts: spec, wavelet, frequency, fusion, clinical, consistency, networks, sampler."""

from __future__ import annotations

import pytest
import torch

from bids_synth.models.conditioning import ClinicalEncoder, clinical_batch, validate_schema
from bids_synth.models.config import ModelSpec
from bids_synth.models.consistency import BiomarkerLoss
from bids_synth.models.frequency import (_equalize, highpass_features,
                                         pooled_frequency_features)
from bids_synth.models.fusion import AdaptiveFusion, masked_consistency_loss
from bids_synth.models.mean_network import MeanNetwork
from bids_synth.models.residual_flow import ResidualFlow
from bids_synth.models.sampler import sample
from bids_synth.models.wavelet import SUBBAND_NAMES, dwt3, idwt3
from bids_synth.preprocessing.templates import model_grid
from bids_synth.training.toy import TOY_SCHEMA

TINY = dict(mean_channels=(8, 8), mean_attention=(False, True), flow_channels=(8, 8),
            flow_attention=(False, False), num_head_channels=8, context_dim=8, fusion_dim=4,
            norm_num_groups=4)


def spec(**kw) -> ModelSpec:
    base = dict(modalities=('T1w', 'FDG', 'bold'), channels=(1, 1, 6), res=8, shape=(24, 28, 24))
    return ModelSpec(**{**base, **TINY, **kw})


def test_spec_checks_and_round_trip():
    s = spec()
    assert ModelSpec.from_dict(s.to_dict()) == s
    assert s.coef_slices()['bold'] == slice(16, 64) and s.coef_shape == (12, 14, 12)
    with pytest.raises(ValueError, match='even'):
        spec(shape=(25, 28, 24))
    with pytest.raises(ValueError, match='sampler'):
        spec(sampler='euler')
    with pytest.raises(ValueError, match='channel_scale'):
        spec(channel_scale=(1.0, 2.0))  # 8 channels
    with pytest.raises(ValueError, match='channel_scale'):
        spec(channel_scale=(1.0,) * 7 + (0.0,))
    with pytest.raises(ValueError, match='residual_scale'):
        spec(residual_scale=(1.0,) * 8)  # one per coefficient channel: 64
    assert spec().channel_scales() == (1.0,) * 8 and len(spec().residual_scales()) == 64


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_wavelet_round_trip_is_exact_and_subbands_mean_what_they_say(dtype):
    x = torch.randn(2, 3, 24, 28, 24, dtype=dtype, generator=torch.Generator().manual_seed(0))
    w = dwt3(x)
    assert w.shape == (2, 24, 12, 14, 12)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert float((idwt3(w) - x).abs().max()) < tol
    # a constant image has only an approximation (LLL) coefficient, 2^(3/2) times the value
    c = dwt3(torch.full((1, 1, 4, 4, 4), 2.0, dtype=dtype))
    assert SUBBAND_NAMES[0] == 'LLL'
    torch.testing.assert_close(c[0, 0], torch.full((2, 2, 2), 2.0 * 8 ** 0.5, dtype=dtype))
    assert float(c[0, 1:].abs().max()) < tol
    # a pattern alternating along z lives in the LLH band only
    z = torch.tensor([1.0, -1.0] * 2, dtype=dtype).expand(1, 1, 4, 4, 4)
    cz = dwt3(z.contiguous())
    assert float(cz[0, [k for k in range(8) if k != 1]].abs().max()) < tol
    with pytest.raises(ValueError, match='even'):
        dwt3(torch.zeros(1, 1, 3, 4, 4))


def test_channel_scale_divides_before_the_transform():
    from bids_synth.models.synthesis import SynthesisNet

    scales = (1.0, 2.0, 0.5, 0.01, 0.02, 0.03, 0.04, 3.0)
    plain = SynthesisNet(spec(), {})
    scaled = SynthesisNet(spec(channel_scale=scales), {})
    s = torch.tensor(scales)[None, :, None, None, None]
    x = torch.rand(1, 8, 24, 28, 24)
    torch.testing.assert_close(scaled.to_coefs(x * s), plain.to_coefs(x))
    torch.testing.assert_close(scaled.to_images(plain.to_coefs(x)), x * s)


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
    # each voxel gets its own rank: the values are exactly 0, 1/(n-1), ..., 1
    torch.testing.assert_close(f.flatten().sort().values, torch.linspace(0, 1, f.numel()))
    # per volume, in the order of the values (distinct values: the rank is unique)
    v = torch.rand(2, 3, 5, 6, 7)
    ranks = v.flatten(2).argsort(-1).argsort(-1).float() / (5 * 6 * 7 - 1)
    torch.testing.assert_close(_equalize(v), ranks.reshape(v.shape), rtol=0, atol=0)
    # the fine checkerboard half ranks above the smooth half, whose low frequency is removed
    assert float(f[..., 9:15].mean()) > 0.7 > 0.3 > float(f[..., 1:7].mean())
    assert pooled_frequency_features(x, 4).shape == (1, 1, 4, 4, 4)


def _fusion_inputs(n: int):
    """A seeded fusion module and random coefficient / frequency inputs for ``n`` sessions."""
    torch.manual_seed(0)
    s = spec()
    return (s, AdaptiveFusion(s), torch.randn(n, s.coef_channels_total, 6, 7, 6),
            torch.rand(n, s.total_channels, 6, 7, 6))


def test_fusion_weights_follow_availability():
    s, fusion, coefs, freq = _fusion_inputs(3)
    avail = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    out = fusion(coefs, freq, avail)
    w = out['weights']
    assert w.shape == (3, 4)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    w = w.detach()
    assert float(w[0, 1]) == 0 and bool((w[1, :3] == 0).all()) and float(w[1, 3]) == 1
    assert out['fused'].shape == (3, s.fusion_dim, 6, 7, 6)
    # the missing modality's data cannot leak into the output
    coefs2 = coefs.clone()
    coefs2[0, s.coef_slices()['FDG']] += 100
    torch.testing.assert_close(fusion(coefs2, freq, avail)['fused'][0], out['fused'][0])


def test_masked_pretraining_loss_is_zero_for_the_full_set_and_trainable():
    _, fusion, coefs, freq = _fusion_inputs(4)
    present = torch.ones(4, 3, dtype=torch.bool)
    masked = torch.tensor([[True, False, False], [False, True, False], [False, False, True],
                           [True, True, False]])
    assert masked_consistency_loss(fusion, coefs, freq, present, present).item() < 1e-6
    opt = torch.optim.Adam(fusion.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = masked_consistency_loss(fusion, coefs, freq, present, masked)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1e-3 and losses[-1] < 0.5 * losses[0]


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


def test_mean_network_starts_at_the_base_and_flow_shapes():
    torch.manual_seed(0)
    s = spec()
    net = MeanNetwork(s, TOY_SCHEMA)
    w = s.coef_channels_total
    coefs, base = torch.randn(2, w, 12, 14, 12), torch.randn(2, w, 12, 14, 12)
    avail = torch.tensor([[True, False, True], [True, True, False]])
    clin = clinical_batch([{'age': 70}, {}], TOY_SCHEMA)
    mean, fus = net(coefs, base, torch.rand(2, 8, 12, 14, 12), avail, clin)
    torch.testing.assert_close(mean, base)  # zero-initialized output: the ridge, exactly
    assert fus['weights'].shape == (2, 4)
    flow = ResidualFlow(s)
    cond = flow.condition(mean, coefs, avail)
    assert cond.shape == (2, 2 * w + 3, 12, 14, 12)
    out = flow(torch.randn(2, w, 12, 14, 12), torch.tensor([10.0, 900.0]), cond)
    assert out.shape == (2, w, 12, 14, 12)
    # padding: an odd coefficient grid (7) goes through the 2-level UNets and back
    odd = torch.randn(1, w, 6, 7, 6)
    assert net(odd, odd, torch.rand(1, 8, 6, 7, 6), avail[:1], clin.index(slice(0, 1)))[0].shape \
        == odd.shape


def test_preconditioned_flow_starts_as_the_gaussian_optimal_denoiser():
    # F = 0 at initialization, so x0_hat = c_skip r_s: the sampler maps unit-variance noise to
    # unit-variance residuals in 8 steps (the unconditioned x0 network of earlier versions
    # returns ~0 and its samples collapse onto the mean)
    from bids_synth.models.residual_flow import precondition

    s = spec(flow_precond=True)
    w = s.coef_channels_total
    flow = ResidualFlow(s).eval()
    cond = torch.randn(1, 2 * w + 3, 12, 14, 12)
    r_t = torch.randn(1, w, 12, 14, 12)
    t = torch.tensor([300.0])
    _, c_skip, _ = precondition(t / 1000)
    with torch.no_grad():
        torch.testing.assert_close(flow(r_t, t, cond), c_skip * r_t)
        noise = torch.randn(4, w, 12, 14, 12, generator=torch.Generator().manual_seed(0))
        stds = [float(sample(lambda x, tt: flow(x, tt, cond.expand(4, -1, -1, -1, -1)), noise,
                             steps=n).std()) for n in (8, 64)]
    # 8 Euler steps lose some spread (the std scale calibrated on validation subjects makes up
    # for it); many steps keep it
    assert 0.8 < stds[0] < stds[1] and 0.95 < stds[1] < 1.05
    # the training loss of a zero network is the unit variance of F's target
    r0 = torch.randn(2, w, 12, 14, 12)
    n = torch.randn(2, w, 12, 14, 12)
    tt = torch.tensor([50.0, 700.0])
    st = (tt / 1000)[:, None, None, None, None]
    loss = flow.loss(r0, (1 - st) * r0 + st * n, tt, cond.expand(2, -1, -1, -1, -1))
    assert 0.9 < float(loss.mean()) < 1.1


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
