"""Seconds per synthesized modality at the default grid: ours vs MONAI's LatentDiffusionInferer.

Both use the same networks (the default architecture of ``training.config.PRESETS['default']``
at res 4, 48x56x48, untrained weights: timing does not depend on them, or ``--model`` to time a
trained one). Per target modality one prediction from all the other modalities is timed, end to
end (encode inputs, Fourier features, fusion, sampling, decode the target):

- ours: ``DiffusionImputer.predict`` with each sampler and step count asked for;
- reference: ``LatentDiffusionInferer.sample`` with a 50-step ``DDIMScheduler`` (``verbose=False``)
  on the same conditioned denoiser and autoencoder (adapters only reshape).

Medians of ``--runs`` runs; JSON to ``bench/results/speed.json``. Goals: <= 15 s per modality on
2 CPU cores, <= 0.5 s on a GPU (recorded as not measured when no GPU is present).

    python bench/speed.py --threads 2 --runs 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from monai.inferers import LatentDiffusionInferer
from monai.networks.schedulers import DDIMScheduler

from bids_synth.bids.modalities import DEFAULT_TARGETS, MODALITIES
from bids_synth.models.config import ModelSpec
from bids_synth.models.conditioning import clinical_batch
from bids_synth.models.imputer import SessionArrays
from bids_synth.models.synthesis import DiffusionImputer, SynthesisNet, stack_images
from bids_synth.training.config import PRESETS
from bids_synth.training.toy import TOY_SCHEMA, toy_cohort


class _Unet(nn.Module):
    """``diffusion_model(x, timesteps, context)`` for the inferer (spatial condition bound)."""

    def __init__(self, net: SynthesisNet, cond: torch.Tensor) -> None:
        super().__init__()
        self.net, self.cond = net, cond

    def forward(self, x, timesteps, context=None, **_):
        return self.net.denoiser(x, timesteps.float().expand(x.shape[0]), self.cond, context)


class _Decoder(nn.Module):
    """``decode_stage_2_outputs`` of the target modality's latent channels only."""

    def __init__(self, net: SynthesisNet, target: str) -> None:
        super().__init__()
        self.net, self.sl = net, net.spec.latent_slices()[target]
        self.csl = net.spec.channel_slices()[target]

    def decode_stage_2_outputs(self, z):
        return self.net.decode(z[:, self.sl] * self.net.spec.scale_factor, self.csl)


@torch.no_grad()
def reference(model: DiffusionImputer, session: SessionArrays, target: str, seed: int) -> None:
    net, spec = model.net, model.spec
    inputs = {m: a for m, a in session.images.items() if m != target}
    stacked, present = stack_images(inputs, spec)
    images, avail = torch.from_numpy(stacked)[None], torch.from_numpy(present)[None]
    latents = net.encode(images)
    cond, ctx, _ = net.conditioning(latents, net.frequency(images), avail,
                                    clinical_batch([session.clinical], net.clinical.schema))
    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(50)
    inferer = LatentDiffusionInferer(sched, scale_factor=spec.scale_factor)
    noise = torch.randn((1, spec.latent_channels_total, *spec.latent_shape),
                        generator=torch.Generator().manual_seed(seed))
    inferer.sample(noise, _Decoder(net, target), _Unet(net, cond), conditioning=ctx,
                   mode='crossattn', verbose=False)


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', help='a trained model directory (default: untrained default arch)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--targets', nargs='*', default=['T1w', 'FDG', 'bold', 'dwi'])
    p.add_argument('--steps', nargs='*', type=int, default=[10, 20, 30])
    p.add_argument('--samplers', nargs='*', default=['rflow', 'ddim'])
    p.add_argument('--no-reference', action='store_true')
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'speed.json'))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.model:
        model = DiffusionImputer.load(a.model)
    else:
        spec = ModelSpec(modalities=DEFAULT_TARGETS,
                         channels=tuple(MODALITIES[m].n_channels for m in DEFAULT_TARGETS),
                         res=4, shape=(48, 56, 48), **PRESETS['default'].model)
        torch.manual_seed(0)
        model = DiffusionImputer(SynthesisNet(spec, TOY_SCHEMA))
    spec = model.spec
    sessions, _ = toy_cohort(spec.res, 1, model.modalities, seed=0)
    session = sessions[0]
    dev = a.device
    result: dict = {
        'grid': list(spec.shape), 'res': spec.res, 'latent': list(spec.latent_shape),
        'modalities': list(model.modalities), 'device': dev, 'threads': a.threads,
        'runs': a.runs, 'cpu': platform.processor() or platform.machine(),
        'torch': torch.__version__, 'model': a.model or 'untrained default architecture',
        'ours': {}, 'reference_ddim50': {},
    }
    for t in a.targets:
        model.predict(session, (t,), steps=1, device=dev)  # warm-up
        for sampler in a.samplers:
            for k in a.steps:
                s = _median_time(lambda: model.predict(session, (t,), sampler=sampler, steps=k,
                                                       device=dev), a.runs)
                result['ours'].setdefault(f'{sampler}-{k}', {})[t] = s
        if not a.no_reference:
            result['reference_ddim50'][t] = _median_time(lambda: reference(model, session, t, 0),
                                                         a.runs)
    summary = {name: round(statistics.median(v.values()), 3) for name, v in result['ours'].items()}
    if result['reference_ddim50']:
        ref = result['reference_ddim50'].values()
        summary['reference_ddim50'] = round(statistics.median(ref), 3)
    result['median_seconds_per_modality'] = summary
    result['goal_cpu_s'] = 15.0
    result['gpu'] = ('not measured (no GPU in this run)' if not torch.cuda.is_available()
                     else torch.cuda.get_device_name())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    return result


if __name__ == '__main__':
    main()
