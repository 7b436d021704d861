"""The frozen description of a latent-diffusion model: what the card stores and the nets need.

A :class:`ModelSpec` is everything needed to rebuild the networks before loading their weights
(architecture hyper-parameters, grid, modalities, latent scaling, sampler defaults). It is written
into the model card as a plain dict (``asdict``) and read back with :meth:`ModelSpec.from_dict`.

>>> spec = ModelSpec(modalities=('T1w', 'bold'), channels=(1, 6), res=4, shape=(48, 56, 48))
>>> spec.total_channels, spec.latent_channels_total, spec.latent_shape
(7, 14, (12, 14, 12))
>>> ModelSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

__all__ = ['ModelSpec']


@dataclass(frozen=True)
class ModelSpec:
    """Architecture, grid and sampler defaults of a :class:`~.synthesis.DiffusionImputer`.

    Attributes
    ----------
    modalities : tuple of str
        Modalities in channel order (registry keys of ``bids.modalities``).
    channels : tuple of int
        Channels of each modality's representation (1 for sMRI/PET, 6 bold, 7 dwi).
    res : int
        Voxel size (mm) of the model grid; ``shape`` is ``model_grid(res)[1]``.
    shape : tuple of int, (X, Y, Z)
    ae_channels : tuple of int
        ``AutoencoderKL`` channels per level; ``len - 1`` down-samplings by 2.
    ae_latent_channels : int
        Latent channels per image channel (the autoencoder is shared and channel-wise).
    ae_res_blocks : int
    unet_channels, unet_attention : tuple
        ``DiffusionModelUNet`` channels and attention levels.
    unet_res_blocks : int
    num_head_channels : int
    context_dim : int
        Width of the cross-attention tokens (clinical, notes, per-modality fusion tokens).
    fusion_dim : int
        Channels of the fused image-frequency feature map fed to the UNet.
    freq_cutoff : float
        High-pass cut-off of the Fourier features, as a fraction of the Nyquist radius.
    text_dim : int
        Size of a notes embedding (all-MiniLM-L6-v2: 384).
    num_train_timesteps : int
        Rectified-flow training time range ``[0, T]``; the network predicts the clean latent.
    scale_factor : float
        Latents are multiplied by this before diffusion (1 / std of the training latents).
    channel_scale : tuple of float
        Per image channel, the intensity the channel is divided by before encoding (and
        multiplied by after decoding): the 99th percentile of its absolute value in the brain
        mask of the training data, so that every channel (T1w near 1, ALFF near 0.004, MD near
        2) reaches the shared autoencoder on the same scale. Empty: 1 for every channel.
    sampler : str
        Default sampler, ``'rflow'`` or ``'ddim'``.
    steps : int
        Default number of sampling steps (chosen with ``bench/speed.py``).
    norm_num_groups : int
    """

    modalities: tuple[str, ...]
    channels: tuple[int, ...]
    res: int = 4
    shape: tuple[int, int, int] = (48, 56, 48)
    ae_channels: tuple[int, ...] = (8, 16, 32)
    ae_latent_channels: int = 2
    ae_res_blocks: int = 1
    unet_channels: tuple[int, ...] = (32, 64)
    unet_attention: tuple[bool, ...] = (False, True)
    unet_res_blocks: int = 1
    num_head_channels: int = 32
    context_dim: int = 64
    fusion_dim: int = 16
    freq_cutoff: float = 0.25
    text_dim: int = 384
    num_train_timesteps: int = 1000
    scale_factor: float = 1.0
    channel_scale: tuple[float, ...] = ()
    sampler: str = 'rflow'
    steps: int = 20
    norm_num_groups: int = 8

    def __post_init__(self) -> None:
        if len(self.modalities) != len(self.channels) or not self.modalities:
            raise ValueError('ModelSpec: modalities and channels must be non-empty and match')
        if len(self.unet_channels) != len(self.unet_attention):
            raise ValueError('ModelSpec: unet_channels and unet_attention differ in length')
        if self.sampler not in ('rflow', 'ddim'):
            raise ValueError(f'ModelSpec: sampler must be rflow or ddim, got {self.sampler!r}')
        if self.channel_scale and (len(self.channel_scale) != self.total_channels
                                   or min(self.channel_scale) <= 0):
            raise ValueError(f'ModelSpec: channel_scale needs {self.total_channels} positive '
                             f'values, got {len(self.channel_scale)}')
        f = self.down_factor
        if any(s % f for s in self.shape):
            raise ValueError(f'ModelSpec: grid {self.shape} is not divisible by the AE factor {f}')

    @property
    def down_factor(self) -> int:
        """Spatial down-sampling of the autoencoder."""
        return 2 ** (len(self.ae_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = self.down_factor
        return tuple(s // f for s in self.shape)  # type: ignore[return-value]

    @property
    def total_channels(self) -> int:
        return int(sum(self.channels))

    @property
    def latent_channels_total(self) -> int:
        return self.total_channels * self.ae_latent_channels

    def channel_scales(self) -> tuple[float, ...]:
        """``channel_scale``, or ones when it is empty."""
        return tuple(self.channel_scale) or (1.0,) * self.total_channels

    def channel_slices(self) -> dict[str, slice]:
        """Image-channel range of each modality in the stacked (C_total, X, Y, Z) array."""
        out, start = {}, 0
        for m, c in zip(self.modalities, self.channels):
            out[m] = slice(start, start + c)
            start += c
        return out

    def latent_slices(self) -> dict[str, slice]:
        """Latent-channel range of each modality in the stacked latent."""
        k = self.ae_latent_channels
        return {m: slice(s.start * k, s.stop * k) for m, s in self.channel_slices().items()}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f'ModelSpec: unknown fields {sorted(unknown)}')
        kw = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
              if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def with_(self, **changes) -> ModelSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)
