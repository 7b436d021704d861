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
A handful of steps suffices (WFM, arXiv 2604.21146: wavelet flow matching from an informed prior
in 1-2 steps): the default is 8.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import DiffusionModelUNet

from .config import ModelSpec
from .mean_network import availability_channels, run_padded

__all__ = ['ResidualFlow']


class ResidualFlow(nn.Module):
    """x0-predicting conditional UNet over scaled residual coefficients.

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

    def condition(self, mean: torch.Tensor, coefs: torch.Tensor,
                  available: torch.Tensor) -> torch.Tensor:
        """Spatial condition (B, 2 W + M, x, y, z) of mean and input coefficients (B, W, ...)."""
        coefs = coefs * availability_channels(self.spec, available)[:, :, None, None, None]
        avail = available.float()[:, :, None, None, None].expand(-1, -1, *mean.shape[2:])
        return torch.cat([mean, coefs, avail], dim=1)

    def forward(self, r_t: torch.Tensor, t: torch.Tensor,
                condition: torch.Tensor) -> torch.Tensor:
        """Predicted clean scaled residual (B, W, x, y, z) of the state ``r_t`` at time ``t``."""
        return self.proj_out(run_padded(self.unet, self.proj_in(torch.cat([r_t, condition], 1)), t))
