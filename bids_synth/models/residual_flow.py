"""The residual generator: conditional rectified flow over ``target - mean`` in wavelet space.

CorrDiff's second stage (Mardani et al. 2025) and PMRF's flow (arXiv 2508.12640): the mean
network of :mod:`.mean_network` gives the posterior mean; this network learns the distribution
of what is left, so that samples have the texture and detail of real images and their spread
is an uncertainty. The residual of each image channel is divided by its training standard
deviation (``ModelSpec.residual_scale``) so that the flow starts from unit-variance noise.

A MONAI ``DiffusionModelUNet`` predicts the clean residual ``r_0`` from the rectified-flow state
``r_s = (1 - s) r_0 + s n`` (``s = t / T``), conditioned by concatenation on the mean
coefficients, the coefficients of the available inputs and one availability map per modality;
:func:`.sampler.sample` turns that into MONAI ``RFlowScheduler`` (or ``DDIMScheduler``) steps.
With ``spec.flow_precond`` the network is preconditioned as EDM (Karras et al. 2022) does,
written for the rectified-flow state with unit-variance data: ``d = sqrt((1 - s)^2 + s^2)``,
``x0_hat = c_skip r_s + c_out F(c_in r_s)`` with ``c_in = 1 / d``, ``c_skip = (1 - s) / d^2``,
``c_out = s / d``. ``c_skip r_s`` is the best linear estimate of a unit-variance ``r_0``, so an
untrained network (MONAI zero-initializes the UNet's output convolution) already draws residuals
with the training residuals' variance, and training is only asked for what departs from it: the
loss is on ``F``'s target ``(r_0 - c_skip r_s) / c_out``, of unit variance at every ``s``
(:meth:`ResidualFlow.loss`). Without preconditioning (models of earlier versions) the network
predicts ``r_0`` directly, which on 2 CPU cores never learnt to pass ``r_s`` through at low noise:
its samples collapsed onto the mean.

A handful of steps suffices (WFM, arXiv 2604.21146: wavelet flow matching from an informed prior
in 1-2 steps): the default is 8.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import DiffusionModelUNet

from .config import ModelSpec
from .mean_network import availability_channels, run_padded

__all__ = ['ResidualFlow', 'precondition']


def precondition(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM coefficients ``(c_in, c_skip, c_out)`` at rectified-flow time ``s`` in [0, 1].

    >>> c_in, c_skip, c_out = precondition(torch.tensor([0.0, 0.5, 1.0]))
    >>> c_skip.tolist(), c_out.tolist()
    ([1.0, 1.0, 0.0], [0.0, 0.7071067690849304, 1.0])
    """
    d2 = (1 - s) ** 2 + s ** 2
    d = d2.sqrt()
    return 1 / d, (1 - s) / d2, s / d


class ResidualFlow(nn.Module):
    """x0-predicting conditional UNet over scaled residual coefficients (preconditioned when
    ``spec.flow_precond``).

    Args:
        spec: architecture and grid.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        w, m = spec.coef_channels_total, len(spec.modalities)
        n = len(spec.flow_channels)
        c0 = spec.flow_channels[0]
        self.proj_in = nn.Conv3d(3 * w + m, c0, 1)  # 1x1x1 in and out, as the mean network
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=c0, out_channels=c0,
            num_res_blocks=(spec.res_blocks,) * n, channels=spec.flow_channels,
            attention_levels=spec.flow_attention, norm_num_groups=spec.norm_num_groups,
            num_head_channels=spec.num_head_channels, with_conditioning=False,
        )
        self.proj_out = nn.Conv3d(c0, w, 1)
        nn.init.zeros_(self.proj_out.bias)  # with the UNet's zero output convolution: F = 0

    def condition(self, mean: torch.Tensor, coefs: torch.Tensor,
                  available: torch.Tensor) -> torch.Tensor:
        """Spatial condition (B, 2 W + M, x, y, z) of mean and input coefficients (B, W, ...)."""
        coefs = coefs * availability_channels(self.spec, available)[:, :, None, None, None]
        avail = available.float()[:, :, None, None, None].expand(-1, -1, *mean.shape[2:])
        return torch.cat([mean, coefs, avail], dim=1)

    def network(self, r_in: torch.Tensor, t: torch.Tensor,
                condition: torch.Tensor) -> torch.Tensor:
        """The raw network output ``F`` (B, W, x, y, z)."""
        return self.proj_out(run_padded(self.unet, self.proj_in(torch.cat([r_in, condition], 1)),
                                        t))

    def _coefficients(self, r_t: torch.Tensor, t: torch.Tensor):
        s = (t.to(r_t.dtype) / self.spec.num_train_timesteps).clamp(0, 1)
        return (c[:, None, None, None, None] for c in precondition(s))

    def forward(self, r_t: torch.Tensor, t: torch.Tensor,
                condition: torch.Tensor) -> torch.Tensor:
        """Predicted clean scaled residual (B, W, x, y, z) of the state ``r_t`` at time ``t``."""
        if not self.spec.flow_precond:
            return self.network(r_t, t, condition)
        c_in, c_skip, c_out = self._coefficients(r_t, t)
        return c_skip * r_t + c_out * self.network(c_in * r_t, t, condition)

    def loss(self, r_0: torch.Tensor, r_t: torch.Tensor, t: torch.Tensor,
             condition: torch.Tensor) -> torch.Tensor:
        """Per-element training loss (B, W, x, y, z): squared error of ``x0_hat``, or with
        preconditioning that of ``F`` against its target (EDM's weight ``1 / c_out^2``)."""
        if not self.spec.flow_precond:
            return (self.network(r_t, t, condition) - r_0) ** 2
        c_in, c_skip, c_out = self._coefficients(r_t, t)
        target = (r_0 - c_skip * r_t) / c_out
        return (self.network(c_in * r_t, t, condition) - target) ** 2
