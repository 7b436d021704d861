"""Training recipes: a frozen :class:`TrainConfig` and the named presets.

``'default'`` is the recipe of the embedded default model (res-4 grid, small networks; sized to
finish in about 20 minutes on 2 CPU cores, see docs/model.md for the measured step times);
``'tiny'`` is for tests (16-voxel patches, a handful of steps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ['TrainConfig', 'PRESETS', 'get_config']


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`~bids_synth.training.diffusion.train_diffusion`.

    Attributes
    ----------
    model : dict
        Overrides of :class:`~bids_synth.models.config.ModelSpec` fields (architecture,
        sampler defaults), e.g. ``{'ae_channels': (8, 16, 16)}``.
    ae_steps, ae_batch, ae_patch, ae_lr : autoencoder stage (random cubic patches).
    ssl_steps : self-supervised fusion pretraining steps.
    dm_steps, batch_size, lr : diffusion stage.
    clinical_drop : probability of dropping each clinical value during training.
    consistency_weight : weight of the biomarker loss (0 disables it).
    consistency_every : apply it every this many diffusion steps (decoding costs CPU time).
    val_fraction : fraction of subjects held out.
    val_max_sessions : at most this many validation sessions are sampled for the report.
    checkpoint_every : steps between resumable training-state checkpoints.
    grad_clip : maximum gradient norm (``clip_grad_norm_``) in every stage.
    threads : torch threads on CPU (0: leave torch's default).
    """

    model: dict = field(default_factory=lambda: {
        'ae_channels': (8, 16), 'ae_latent_channels': 4, 'unet_channels': (32, 64),
        'unet_attention': (False, True), 'norm_num_groups': 8})
    ae_steps: int = 2000
    ae_batch: int = 4
    ae_patch: int = 24
    ae_lr: float = 2e-3
    ssl_steps: int = 50
    dm_steps: int = 600
    batch_size: int = 2
    lr: float = 5e-4
    clinical_drop: float = 0.3
    consistency_weight: float = 0.1
    consistency_every: int = 4
    val_fraction: float = 0.2
    val_max_sessions: int = 2
    checkpoint_every: int = 50
    grad_clip: float = 1.0
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        bad = set(d) - names
        if bad:
            raise ValueError(f'TrainConfig: unknown fields {sorted(bad)}')
        return cls(**d)


PRESETS: dict[str, TrainConfig] = {
    'default': TrainConfig(),
    'tiny': TrainConfig(
        model={'ae_channels': (4, 4, 4), 'ae_latent_channels': 1, 'unet_channels': (8, 8),
               'unet_attention': (False, True), 'num_head_channels': 8, 'context_dim': 8,
               'fusion_dim': 4, 'norm_num_groups': 4, 'steps': 2},
        ae_steps=3, ae_batch=2, ae_patch=16, ssl_steps=2, dm_steps=6, batch_size=2,
        val_max_sessions=1, checkpoint_every=2, threads=1, consistency_every=1,
    ),
}


def get_config(config: TrainConfig | dict | str | None) -> TrainConfig:
    """A config from a preset name, a dict of overrides of ``'default'``, or a config.

    In a dict, ``'steps'`` (the CLI's ``--train-steps``) is an alias of ``dm_steps``.

    >>> get_config({'steps': 10}).dm_steps
    10
    """
    if config is None:
        return PRESETS['default']
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, str):
        try:
            return PRESETS[config]
        except KeyError:
            msg = f'unknown training preset {config!r}; known: {list(PRESETS)}'
            raise ValueError(msg) from None
    config = dict(config)
    if 'steps' in config:
        config['dm_steps'] = int(config.pop('steps'))
    return TrainConfig.from_dict({**PRESETS['default'].to_dict(), **config})
