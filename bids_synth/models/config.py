"""The frozen description of a diffusion imputer: what the card stores and the nets need.

A :class:`ModelSpec` is everything needed to rebuild the networks before loading their weights
(architecture hyper-parameters, grid, modalities, intensity and residual scales, sampler
defaults). It is written into the model card as a plain dict (``asdict``) and read back with
:meth:`ModelSpec.from_dict`.

>>> spec = ModelSpec(modalities=('T1w', 'bold'), channels=(1, 6), res=4, shape=(48, 56, 48))
>>> spec.total_channels, spec.coef_channels_total, spec.coef_shape
(7, 56, (24, 28, 24))
>>> spec.coef_slices()['bold']
slice(8, 56, None)
>>> ModelSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .wavelet import SUBBANDS

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
        Even sizes: the networks work on one Haar level, ``coef_shape = shape / 2``.
    mean_channels, mean_attention : tuple
        ``DiffusionModelUNet`` channels and attention levels of the mean network.
    flow_channels, flow_attention : tuple
        The same for the residual-flow network.
    res_blocks : int
        Residual blocks per level (both networks).
    num_head_channels : int
    context_dim : int
        Width of the cross-attention tokens (clinical, notes, per-modality fusion tokens).
    fusion_dim : int
        Channels of the fused image-frequency feature map fed to the mean network.
    freq_cutoff : float
        High-pass cut-off of the Fourier features, as a fraction of the Nyquist radius.
    num_train_timesteps : int
        Rectified-flow time range ``[0, T]``; the flow network predicts the clean residual.
    channel_scale : tuple of float
        Per image channel, the intensity the channel is divided by before the wavelet
        transform (the 99th percentile of its absolute value in the brain mask of the training
        data), so that every channel (T1w near 1, ALFF near 0.004, MD near 2) reaches the
        networks on one scale. Empty: 1 for every channel.
    residual_scale : tuple of float
        Per coefficient channel, the root-mean-square (in the scaled units) of the mean
        network's residual on the training data, after division by the spatial residual map
        (``SynthesisNet.resid_map``): the flow works on residuals divided by both.
    flow_precond : bool
        Precondition the flow network (EDM, Karras et al. 2022, in the rectified-flow
        parametrization): ``x0_hat = c_skip(s) r_s + c_out(s) F(c_in(s) r_s)``, so that an
        untrained network is already the best linear denoiser of unit-variance residuals and the
        network only learns what departs from it. ``False`` (models of earlier versions): the
        network predicts ``x0`` directly.
    gate : tuple of float
        Per modality, the fraction ``a`` of the mean network's correction kept:
        ``mean = base + a (network - base)``, chosen on the validation subjects (standard
        contrast never more than a margin below the ridge, the best score on contrast-shifted
        inputs otherwise; ``training/calibration.py``). Empty: 1 for every modality.
    std_scale : tuple of float
        Per modality, the factor of the samples' standard deviation that makes mean +/- 1.645
        std cover 90% of the validation voxels (split conformal calibration; the samples
        themselves keep the flow's scale). Empty: 1.
    typicality : tuple of float
        Per modality, the mean input-typicality score (``uncertainty.typicality``) of the
        validation sessions' images: the reference a prediction's inputs are compared with.
        Empty: no inflation of the std for atypical inputs.
    sampler : str
        Default sampler of the residual flow, ``'rflow'`` or ``'ddim'``.
    steps : int
        Default number of sampling steps (at most 8 in the default recipe).
    num_samples : int
        Default number of residual samples K averaged into the written image.
    norm_num_groups : int
    """

    modalities: tuple[str, ...]
    channels: tuple[int, ...]
    res: int = 4
    shape: tuple[int, int, int] = (48, 56, 48)
    mean_channels: tuple[int, ...] = (32, 64, 96)
    mean_attention: tuple[bool, ...] = (False, False, True)
    flow_channels: tuple[int, ...] = (32, 64)
    flow_attention: tuple[bool, ...] = (False, False)
    res_blocks: int = 1
    num_head_channels: int = 32
    context_dim: int = 64
    fusion_dim: int = 16
    freq_cutoff: float = 0.25
    num_train_timesteps: int = 1000
    channel_scale: tuple[float, ...] = ()
    residual_scale: tuple[float, ...] = ()
    flow_precond: bool = False
    gate: tuple[float, ...] = ()
    std_scale: tuple[float, ...] = ()
    typicality: tuple[float, ...] = ()
    sampler: str = 'rflow'
    steps: int = 8
    num_samples: int = 4
    norm_num_groups: int = 8

    def __post_init__(self) -> None:
        if len(self.modalities) != len(self.channels) or not self.modalities:
            raise ValueError('ModelSpec: modalities and channels must be non-empty and match')
        if len(self.mean_channels) != len(self.mean_attention):
            raise ValueError('ModelSpec: mean_channels and mean_attention differ in length')
        if len(self.flow_channels) != len(self.flow_attention):
            raise ValueError('ModelSpec: flow_channels and flow_attention differ in length')
        if self.sampler not in ('rflow', 'ddim'):
            raise ValueError(f'ModelSpec: sampler must be rflow or ddim, got {self.sampler!r}')
        m = len(self.modalities)
        for name, n in (('channel_scale', self.total_channels),
                        ('residual_scale', self.coef_channels_total),
                        ('std_scale', m), ('typicality', m)):
            v = getattr(self, name)
            if v and (len(v) != n or min(v) <= 0):
                raise ValueError(f'ModelSpec: {name} needs {n} positive values, got {len(v)}')
        if self.gate and (len(self.gate) != m or not all(0 <= g <= 1 for g in self.gate)):
            raise ValueError(f'ModelSpec: gate needs {m} values in [0, 1], got {self.gate}')
        if any(s % 2 for s in self.shape):
            raise ValueError(f'ModelSpec: grid {self.shape} must have even sizes (Haar level)')

    @property
    def subbands(self) -> int:
        """Wavelet coefficients per image channel."""
        return SUBBANDS

    @property
    def coef_shape(self) -> tuple[int, int, int]:
        """Grid of the wavelet coefficients (half the model grid)."""
        return tuple(s // 2 for s in self.shape)  # type: ignore[return-value]

    @property
    def total_channels(self) -> int:
        return int(sum(self.channels))

    @property
    def coef_channels_total(self) -> int:
        return self.total_channels * SUBBANDS

    def channel_scales(self) -> tuple[float, ...]:
        """``channel_scale``, or ones when it is empty."""
        return tuple(self.channel_scale) or (1.0,) * self.total_channels

    def residual_scales(self) -> tuple[float, ...]:
        """``residual_scale``, or ones when it is empty."""
        return tuple(self.residual_scale) or (1.0,) * self.coef_channels_total

    def gates(self) -> tuple[float, ...]:
        """``gate``, or ones when it is empty."""
        return tuple(self.gate) or (1.0,) * len(self.modalities)

    def std_scales(self) -> tuple[float, ...]:
        """``std_scale``, or ones when it is empty."""
        return tuple(self.std_scale) or (1.0,) * len(self.modalities)

    def channel_slices(self) -> dict[str, slice]:
        """Image-channel range of each modality in the stacked (C_total, X, Y, Z) array."""
        out, start = {}, 0
        for m, c in zip(self.modalities, self.channels):
            out[m] = slice(start, start + c)
            start += c
        return out

    def coef_slices(self) -> dict[str, slice]:
        """Coefficient-channel range of each modality in the stacked wavelet array."""
        return {m: slice(s.start * SUBBANDS, s.stop * SUBBANDS)
                for m, s in self.channel_slices().items()}

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
