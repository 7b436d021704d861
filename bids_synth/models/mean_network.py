"""The mean network: a correction to the ridge, in wavelet space (CorrDiff's regression stage).

It estimates the posterior mean of every modality from any subset of inputs (adaptive
reconstruction, AMM-Diff), on top of the voxelwise ridge of :mod:`.baseline` (CorrDiff, Mardani
et al. 2025: a regression UNet gives the mean, a diffusion model the residual; PMRF, arXiv
2508.12640). Its output is ``base + correction`` where ``base`` is the ridge's prediction for a
missing modality and the input itself for an available one. MONAI's ``DiffusionModelUNet``
initializes its output convolution at zero, so an untrained network *is* the ridge, and training
only moves away from it where that lowers the error on the training cohort. 1x1x1 projections
map the many coefficient channels to the UNet's width and back.

Everything is in the Haar coefficients of :mod:`.wavelet` (8 channels per image channel on half
the grid). The UNet's input is the coefficients of the available inputs (missing ones zero), the
base coefficients, one availability map per modality and the fused image-frequency feature map
of :mod:`.fusion`; clinical and notes tokens (:mod:`.conditioning`) and the per-modality fusion
tokens are its cross-attention context. It is run at a fixed time step (0): it is a regression
network, not a denoiser.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet

from .conditioning import ClinicalBatch, ClinicalEncoder
from .config import ModelSpec
from .fusion import AdaptiveFusion, FusionOutput

__all__ = ['MeanNetwork', 'availability_channels', 'run_padded']


def run_padded(unet: DiffusionModelUNet, x: torch.Tensor, t: torch.Tensor,
               context: torch.Tensor | None = None) -> torch.Tensor:
    """Run a UNet on ``x`` padded to a multiple of its down-sampling, cropped back.

    What ``LatentDiffusionInferer``'s ``ldm_latent_shape`` does: e.g. a 24x28x24 grid through
    three levels (multiple of 4) is unchanged, 12x14x12 becomes 12x16x12 and back.
    """
    size = x.shape[2:]
    k = 2 ** (len(unet.block_out_channels) - 1)
    pad: list[int] = []
    for s in reversed(size):
        pad += [0, (-s) % k]
    out = unet(F.pad(x, pad), timesteps=t, context=context)
    return out[..., :size[0], :size[1], :size[2]]


def availability_channels(spec: ModelSpec, available: torch.Tensor) -> torch.Tensor:
    """Per coefficient channel, 1 where its modality is available: shape (B, 8 C_total)."""
    reps = torch.tensor([c * spec.subbands for c in spec.channels], device=available.device)
    return torch.repeat_interleave(available.float(), reps, dim=1)


class MeanNetwork(nn.Module):
    """Conditional 3D UNet that corrects the ridge (see module docstring).

    Args:
        spec: architecture and grid.
        schema: clinical schema (may be empty).
    """

    def __init__(self, spec: ModelSpec, schema: dict) -> None:
        super().__init__()
        self.spec = spec
        w, m = spec.coef_channels_total, len(spec.modalities)
        n = len(spec.mean_channels)
        self.clinical = ClinicalEncoder(schema, spec.context_dim)
        self.fusion = AdaptiveFusion(spec)
        c0 = spec.mean_channels[0]
        # 1x1x1 projections in and out: the coefficients are many channels (8 per image channel),
        # and a 3x3x3 convolution from and to all of them would cost more than the whole UNet
        self.proj_in = nn.Conv3d(2 * w + m + spec.fusion_dim, c0, 1)
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=c0, out_channels=c0,
            num_res_blocks=(spec.res_blocks,) * n, channels=spec.mean_channels,
            attention_levels=spec.mean_attention, norm_num_groups=spec.norm_num_groups,
            num_head_channels=spec.num_head_channels, with_conditioning=True,
            cross_attention_dim=spec.context_dim,
        )
        self.proj_out = nn.Conv3d(c0, w, 1)
        nn.init.zeros_(self.proj_out.bias)  # the UNet's last convolution starts at zero

    def forward(self, coefs: torch.Tensor, base: torch.Tensor, freq: torch.Tensor,
                available: torch.Tensor, clinical: ClinicalBatch, drop_prob: float = 0.0,
                generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, FusionOutput]:
        """Mean coefficients of every modality.

        Parameters
        ----------
        coefs : torch.Tensor, shape (B, 8 C_total, x, y, z)
            Coefficients of the inputs; channels of unavailable modalities are ignored.
        base : torch.Tensor, shape (B, 8 C_total, x, y, z)
            Ridge prediction (missing modalities) or the input (available ones).
        freq : torch.Tensor, shape (B, C_total, x, y, z)
            Fourier features of the inputs on the coefficient grid.
        available : torch.Tensor, shape (B, M), bool
        clinical : ClinicalBatch
        drop_prob : float
            Training only: probability of dropping each clinical value.

        Returns
        -------
        mean : torch.Tensor, shape (B, 8 C_total, x, y, z)
        fusion : FusionOutput
            With the per-input attention ``weights`` (B, M + 1).
        """
        chan = availability_channels(self.spec, available)[:, :, None, None, None]
        coefs = coefs * chan
        clin = self.clinical(clinical, drop_prob=drop_prob, generator=generator)
        fus = self.fusion(coefs, freq, available, clin)
        avail = available.float()[:, :, None, None, None].expand(-1, -1, *coefs.shape[2:])
        x = torch.cat([coefs, base, avail, fus['fused']], dim=1)
        t = torch.zeros(x.shape[0], device=x.device)
        context = torch.cat([clin, fus['tokens']], dim=1)
        return base + self.proj_out(run_padded(self.unet, self.proj_in(x), t, context)), fus
