"""The latent denoiser: MONAI ``DiffusionModelUNet`` over the latents of all modalities.

Adaptive reconstruction (AMM-Diff): the network outputs the clean latent of *every* modality,
the present ones too. Its input is the noisy latent of all modalities concatenated with the
condition: the latents of the available modalities (missing ones zero), one availability map per
modality, and the fused image-frequency feature map of :mod:`.fusion`. Clinical tokens, the notes
token and the per-modality fusion tokens are the cross-attention context. The network is trained
in the rectified-flow parametrization (``x_t = (1 - t/T) x_0 + (t/T) noise``) and predicts
``x_0``; :mod:`.sampler` turns that into the velocity (rectified flow) or drives DDIM with it.

The latent grid is padded to a multiple of ``2 ** (levels - 1)`` for the UNet and cropped back
(what ``LatentDiffusionInferer``'s ``ldm_latent_shape`` does), e.g. 12x14x12 -> 12x14x12 with two
levels, 24x28x24 -> 24x28x24 with three.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet

from .config import ModelSpec

__all__ = ['Denoiser']


class Denoiser(nn.Module):
    """Conditioned x0-predicting latent UNet.

    Args:
        spec: the model spec.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        z, m = spec.latent_channels_total, len(spec.modalities)
        n = len(spec.unet_channels)
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=2 * z + m + spec.fusion_dim,
            out_channels=z,
            num_res_blocks=(spec.unet_res_blocks,) * n,
            channels=spec.unet_channels,
            attention_levels=spec.unet_attention,
            norm_num_groups=spec.norm_num_groups,
            num_head_channels=spec.num_head_channels,
            with_conditioning=True,
            cross_attention_dim=spec.context_dim,
        )
        self.multiple = 2 ** (n - 1)

    def condition(self, latents: torch.Tensor, available: torch.Tensor,
                  fused: torch.Tensor) -> torch.Tensor:
        """Concatenated spatial condition.

        Parameters
        ----------
        latents : torch.Tensor, shape (B, Z, x, y, z)
        available : torch.Tensor, shape (B, M), bool
        fused : torch.Tensor, shape (B, fusion_dim, x, y, z)

        Returns
        -------
        torch.Tensor, shape (B, Z + M + fusion_dim, x, y, z)
        """
        reps = torch.tensor([c * self.spec.ae_latent_channels for c in self.spec.channels],
                            device=available.device)
        chan = torch.repeat_interleave(available.float(), reps, dim=1)
        masked = latents * chan[:, :, None, None, None]
        avail = available.float()[:, :, None, None, None].expand(-1, -1, *latents.shape[2:])
        return torch.cat([masked, avail, fused], dim=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        """Predict the clean latents.

        Parameters
        ----------
        x_t : torch.Tensor, shape (B, Z, x, y, z)
        t : torch.Tensor, shape (B,)
            Rectified-flow time in ``[0, T]`` (``T`` = pure noise).
        condition : torch.Tensor, shape (B, Z + M + fusion_dim, x, y, z)
        context : torch.Tensor, shape (B, tokens, context_dim)

        Returns
        -------
        torch.Tensor, shape (B, Z, x, y, z)
        """
        size = x_t.shape[2:]
        k = self.multiple
        pad = []
        for s in reversed(size):
            pad += [0, (-s) % k]
        h = F.pad(torch.cat([x_t, condition], dim=1), pad)
        out = self.unet(h, timesteps=t, context=context)
        return out[..., :size[0], :size[1], :size[2]]
