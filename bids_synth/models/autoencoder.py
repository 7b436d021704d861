"""Stage 1: a shared, channel-wise 3D ``AutoencoderKL`` (MONAI) and its training loss.

Every channel of every modality (T1w, one PET, the six bold maps...) is encoded on its own by the
same 1-channel autoencoder, so one small network serves all modalities and any channel count.
A modality of ``C`` channels becomes ``C * latent_channels`` latent channels on a grid
``down_factor`` times coarser. The autoencoder is trained on random patches (CPU friendly) with
L1 + SSIM + KL (no pretrained perceptual network: nothing downloads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from monai.networks.nets import AutoencoderKL

from .config import ModelSpec

__all__ = ['build_autoencoder', 'encode_channels', 'decode_channels', 'autoencoder_loss']


def build_autoencoder(spec: ModelSpec) -> AutoencoderKL:
    """The 1-channel ``AutoencoderKL`` of ``spec`` (no attention: cheap on CPU)."""
    n = len(spec.ae_channels)
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=spec.ae_channels,
        latent_channels=spec.ae_latent_channels,
        num_res_blocks=(spec.ae_res_blocks,) * n,
        attention_levels=(False,) * n,
        norm_num_groups=spec.norm_num_groups,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


def encode_channels(ae: AutoencoderKL, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Encode each channel separately; return the posterior means.

    Parameters
    ----------
    images : torch.Tensor, shape (B, C, X, Y, Z)

    Returns
    -------
    torch.Tensor, shape (B, C * L, X/f, Y/f, Z/f)
        Channel ``c``'s latent occupies channels ``c*L .. c*L+L-1``.
    """
    b, c = images.shape[:2]
    flat = images.reshape(b * c, 1, *images.shape[2:])
    mus = [ae.encode(part)[0] for part in torch.split(flat, chunk)]
    z = torch.cat(mus)
    return z.reshape(b, c * z.shape[1], *z.shape[2:])


def decode_channels(ae: AutoencoderKL, latents: torch.Tensor, latent_channels: int,
                    chunk: int = 8) -> torch.Tensor:
    """Inverse of :func:`encode_channels`.

    Parameters
    ----------
    latents : torch.Tensor, shape (B, C * L, x, y, z)

    Returns
    -------
    torch.Tensor, shape (B, C, x*f, y*f, z*f)
    """
    b, cl = latents.shape[:2]
    c = cl // latent_channels
    flat = latents.reshape(b * c, latent_channels, *latents.shape[2:])
    out = torch.cat([ae.decode(part) for part in torch.split(flat, chunk)])
    return out.reshape(b, c, *out.shape[2:])


_SSIM = SSIMLoss(spatial_dims=3, data_range=1.0, win_size=5, kernel_sigma=1.0)


def autoencoder_loss(ae: AutoencoderKL, patches: torch.Tensor, *, kl_weight: float = 1e-6,
                     ssim_weight: float = 0.2, sample_posterior: bool = False,
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + SSIM + KL loss of one batch of 1-channel patches.

    Parameters
    ----------
    patches : torch.Tensor, shape (B, 1, P, P, P)
        Intensities roughly in [0, 1.5] (the model representation).

    Returns
    -------
    loss : torch.Tensor, scalar
    parts : dict of str to float
        ``l1``, ``ssim`` (the loss, 1 - SSIM) and ``kl``.

    Notes
    -----
    By default the reconstruction is decoded from the posterior mean (``sample_posterior=False``)
    with the KL term as a latent regularizer: with a few hundred CPU steps, decoding a sample
    (initial posterior std ~1 against means ~0.1) left the decoder learning nothing (10 dB, worse
    than predicting the mean). The diffusion model uses the posterior means anyway.
    """
    mu, sigma = ae.encode(patches)
    recon = ae.decode(ae.sampling(mu, sigma) if sample_posterior else mu)
    l1 = F.l1_loss(recon, patches)
    ssim = _SSIM(recon, patches)
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-8) - 1)
    kl = kl.sum(dim=(1, 2, 3, 4)).mean()
    loss = l1 + ssim_weight * ssim + kl_weight * kl
    return loss, {'l1': l1.item(), 'ssim': ssim.item(), 'kl': kl.item()}
