"""Samplers: rectified flow and DDIM (MONAI schedulers) over an x0-predicting denoiser.

The denoiser is trained in the rectified-flow parametrization ``x_s = (1 - s) x_0 + s n`` with
``s = t / T`` and predicts ``x_0``. Both samplers use it:

- ``'rflow'``: ``RFlowScheduler`` with velocity ``v = (x0_hat - x_s) / s``.
- ``'ddim'``: ``DDIMScheduler`` (``prediction_type='sample'``, eta 0). A DDPM state
  ``x = a x_0 + b n`` (``a = sqrt(alpha_bar)``, ``b = sqrt(1 - alpha_bar)``) is the rectified-flow
  state ``x / (a + b)`` at ``s = b / (a + b)``, so the same network serves it exactly.

Sampling is deterministic given the initial noise (drawn from a seeded ``torch.Generator``):
both schedulers step without extra randomness.

>>> x0 = torch.ones(1, 1, 2, 2, 2)
>>> oracle = lambda x, t: x0.expand_as(x)  # a perfect denoiser
>>> noise = torch.randn(1, 1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
>>> [round(float(sample(oracle, noise, sampler=s, steps=5).mean()), 4) for s in ('rflow', 'ddim')]
[1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler

__all__ = ['SAMPLERS', 'sample', 'make_scheduler', 'rflow_train_pair']

SAMPLERS = ('rflow', 'ddim')

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(sampler: str,
                   num_train_timesteps: int = 1000) -> DDIMScheduler | RFlowScheduler:
    """The MONAI scheduler of a sampler name."""
    if sampler == 'rflow':
        return RFlowScheduler(num_train_timesteps=num_train_timesteps,
                              use_discrete_timesteps=False)
    if sampler == 'ddim':
        return DDIMScheduler(num_train_timesteps=num_train_timesteps,
                             schedule='scaled_linear_beta', prediction_type='sample',
                             clip_sample=False)
    raise ValueError(f'unknown sampler {sampler!r}; choose one of {", ".join(SAMPLERS)}')


def rflow_train_pair(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     num_train_timesteps: int = 1000) -> torch.Tensor:
    """Noisy training input ``(1 - t/T) x0 + (t/T) noise`` (``RFlowScheduler.add_noise``).

    Parameters
    ----------
    x0, noise : torch.Tensor, shape (B, Z, x, y, z)
    t : torch.Tensor, shape (B,), float in [0, T]
    """
    sched = RFlowScheduler(num_train_timesteps=num_train_timesteps, use_discrete_timesteps=False)
    return sched.add_noise(x0, noise, t)


@torch.no_grad()
def sample(denoise: Denoise, noise: torch.Tensor, *, sampler: str = 'rflow', steps: int = 20,
           num_train_timesteps: int = 1000) -> torch.Tensor:
    """Run a sampler from ``noise`` to a clean latent.

    Parameters
    ----------
    denoise : callable ``(x_s, t) -> x0_hat``
        ``x_s`` shape (B, Z, x, y, z), ``t`` shape (B,) float rectified-flow time in [0, T].
    noise : torch.Tensor, shape (B, Z, x, y, z)
        Initial Gaussian noise (seeded by the caller).
    sampler : {'rflow', 'ddim'}
    steps : int
        Number of network evaluations.

    Returns
    -------
    torch.Tensor, shape (B, Z, x, y, z)
    """
    if steps < 1:
        raise ValueError(f'sampling steps must be >= 1, got {steps}')
    sched = make_scheduler(sampler, num_train_timesteps)
    b = noise.shape[0]
    x = noise
    T = float(num_train_timesteps)
    if sampler == 'rflow':
        sched.set_timesteps(steps, device=noise.device)
        ts = [float(t) for t in sched.timesteps]
        for i, t in enumerate(ts):
            s = t / T
            x0 = denoise(x, torch.full((b,), t, device=x.device))
            v = (x0 - x) / s
            nxt = ts[i + 1] if i + 1 < len(ts) else 0.0
            x, _ = sched.step(v, t, x, next_timestep=nxt)
        return x
    sched.set_timesteps(steps, device=noise.device)
    abar = sched.alphas_cumprod.to(noise.device)
    for t in sched.timesteps:
        a, c = abar[int(t)].sqrt(), (1 - abar[int(t)]).sqrt()
        s = c / (a + c)
        x0 = denoise(x / (a + c), torch.full((b,), float(s * T), device=x.device))
        x, _ = sched.step(x0, int(t), x)
    return x
