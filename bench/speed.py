"""Seconds per synthesized modality at the default grid: ours vs MONAI's LatentDiffusionInferer.

The model is a trained diffusion model (``--model DIR``) or, by default, the default recipe's
architecture (``training.config.PRESETS['default']``, res 4, 48x56x48) with untrained weights
and a ridge fitted on a toy cohort: timing does not depend on the weights. Per target modality,
one prediction from all the other modalities is timed end to end (ridge base, wavelet transform,
Fourier features, fusion, mean network, residual flow, inverse transform):

- ``mean``: the mean network alone (``num_samples=0``); goal <= 1 s on 2 CPU cores;
- ``K<k>-<sampler>-<steps>``: ``DiffusionImputer.predict`` with K residual samples; the card's
  default K and steps are the headline figure (goal <= 10 s on 2 CPU cores);
- ``reference_ddim50``: MONAI's ``LatentDiffusionInferer.sample`` with a 50-step
  ``DDIMScheduler`` driving the same residual flow for one sample, the Haar wavelet transform in
  the autoencoder's place (adapters only reshape and add the mean network's output).

Medians of ``--runs`` runs; JSON to ``bench/results/speed.json``. GPU figures are recorded only
when a GPU is present (``--device cuda``).

    python bench/speed.py --model DIR --threads 2 --runs 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import LatentDiffusionInferer
from monai.networks.schedulers import DDIMScheduler

from bids_synth.bids.modalities import DEFAULT_TARGETS, MODALITIES
from bids_synth.models.baseline import RegressionImputer
from bids_synth.models.conditioning import clinical_batch
from bids_synth.models.config import ModelSpec
from bids_synth.models.imputer import SessionArrays
from bids_synth.models.synthesis import DiffusionImputer, SynthesisNet, stack_images
from bids_synth.training.config import PRESETS
from bids_synth.training.toy import TOY_SCHEMA, model_grid, toy_cohort


class _Flow(nn.Module):
    """``diffusion_model(x, timesteps, context)`` for the inferer: the residual flow, which
    predicts x0 in rectified-flow time, driven from a DDPM state (see ``models.sampler``)."""

    def __init__(self, net: SynthesisNet, cond: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        self.net, self.cond, self.abar = net, cond, abar

    def forward(self, x, timesteps, context=None, **_):
        t = int(timesteps.reshape(-1)[0])
        a, c = self.abar[t].sqrt(), (1 - self.abar[t]).sqrt()
        s = c / (a + c) * self.net.spec.num_train_timesteps
        return self.net.flow(x / (a + c), torch.full((x.shape[0],), float(s)), self.cond)


class _Wavelet(nn.Module):
    """The inferer's autoencoder: ``decode_stage_2_outputs`` adds the mean network's output to
    the sampled residual and inverts the Haar transform."""

    def __init__(self, net: SynthesisNet, mean: torch.Tensor) -> None:
        super().__init__()
        self.net, self.mean = net, mean

    def encode_stage_2_inputs(self, x):
        return self.net.to_coefs(x)

    def decode_stage_2_outputs(self, z):
        return self.net.to_images(self.mean + z * self.net.residual_scale(z))


@torch.no_grad()
def reference(model: DiffusionImputer, session: SessionArrays, target: str, seed: int) -> None:
    """One sample with ``LatentDiffusionInferer`` + DDIM-50 on the same networks."""
    net, spec = model.net, model.spec
    inputs = {m: a for m, a in session.images.items() if m != target}
    stacked, present = stack_images(inputs, spec)
    images, avail = torch.from_numpy(stacked)[None], torch.from_numpy(present)[None]
    base = torch.from_numpy(model.base(inputs, session.clinical))[None]
    coefs = net.to_coefs(images)
    mean, _ = net.mean(coefs, net.to_coefs(base), net.frequency(images), avail,
                       clinical_batch([session.clinical], net.schema))
    cond = net.flow.condition(mean, coefs, avail)
    sched = DDIMScheduler(num_train_timesteps=spec.num_train_timesteps,
                          schedule='scaled_linear_beta', prediction_type='sample',
                          clip_sample=False)
    sched.set_timesteps(50)
    inferer = LatentDiffusionInferer(sched, scale_factor=1.0)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    out = inferer.sample(noise, _Wavelet(net, mean), _Flow(net, cond, sched.alphas_cumprod),
                         verbose=False)
    out = out[:, spec.channel_slices()[target]].numpy() * model.mask
    assert np.isfinite(out).all()


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


def _untrained_default() -> DiffusionImputer:
    mods = tuple(DEFAULT_TARGETS)
    spec = ModelSpec(modalities=mods, channels=tuple(MODALITIES[m].n_channels for m in mods),
                     res=4, shape=(48, 56, 48), **PRESETS['default'].model)
    sessions, mask = toy_cohort(4, 4, mods, seed=0)
    affine, _ = model_grid(4)
    ridge = RegressionImputer.fit(sessions, mask=mask, affine=affine, clinical_schema=TOY_SCHEMA,
                                  modalities=mods)
    torch.manual_seed(0)
    return DiffusionImputer(SynthesisNet(spec, TOY_SCHEMA), ridge)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', help='a trained diffusion model directory (default: the default '
                   'architecture, untrained)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--targets', nargs='*', default=['T1w', 'FDG', 'bold', 'dwi'])
    p.add_argument('--samples', nargs='*', type=int, default=None,
                   help='K values to time (default: 1 and the card\'s K)')
    p.add_argument('--no-reference', action='store_true')
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'speed.json'))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = DiffusionImputer.load(a.model) if a.model else _untrained_default()
    spec = model.spec
    ks = a.samples or sorted({1, spec.num_samples})
    sessions, _ = toy_cohort(spec.res, 1, model.modalities, seed=1)
    session = sessions[0]
    session = SessionArrays(session.subject, session.session, session.images,
                            {k: None for k in model.net.schema})
    dev = a.device
    result: dict = {
        'grid': list(spec.shape), 'res': spec.res, 'coefficient_grid': list(spec.coef_shape),
        'modalities': list(model.modalities), 'device': dev, 'threads': a.threads,
        'runs': a.runs, 'cpu': platform.processor() or platform.machine(),
        'cores': __import__('os').cpu_count(), 'torch': torch.__version__,
        'model': a.model or 'untrained default architecture',
        'default_num_samples': spec.num_samples, 'default_steps': spec.steps,
        'default_sampler': spec.sampler, 'seconds': {}, 'reference_ddim50': {},
    }
    for t in a.targets:
        model.predict(session, (t,), num_samples=1, steps=1, device=dev)  # warm-up
        result['seconds'].setdefault('mean', {})[t] = _median_time(
            lambda: model.predict(session, (t,), num_samples=0, device=dev), a.runs)
        for k in ks:
            name = f'K{k}-{spec.sampler}-{spec.steps}'
            result['seconds'].setdefault(name, {})[t] = _median_time(
                lambda: model.predict(session, (t,), num_samples=k, device=dev), a.runs)
        if not a.no_reference:
            result['reference_ddim50'][t] = _median_time(
                lambda: reference(model, session, t, 0), a.runs)
    summary = {name: round(statistics.median(v.values()), 3)
               for name, v in result['seconds'].items()}
    if result['reference_ddim50']:
        summary['reference_ddim50_K1'] = round(
            statistics.median(result['reference_ddim50'].values()), 3)
    result['median_seconds_per_modality'] = summary
    default = f'K{spec.num_samples}-{spec.sampler}-{spec.steps}'
    result['goals'] = {
        'default_K_cpu_s': 10.0, 'mean_cpu_s': 1.0,
        'default_K_met': dev == 'cpu' and summary.get(default, 1e9) <= 10.0,
        'mean_met': dev == 'cpu' and summary['mean'] <= 1.0,
    }
    result['gpu'] = (torch.cuda.get_device_name() if dev.startswith('cuda')
                     else 'not measured (no GPU in this run)')
    result['date'] = time.strftime('%Y-%m-%d')
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    return result


if __name__ == '__main__':
    main()
