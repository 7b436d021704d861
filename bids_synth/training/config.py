"""Training recipes: a frozen :class:`TrainConfig` and the named presets.

``'default'`` is the recipe of the embedded default model (res-4 grid; sized to train, conform
included, within 60 minutes on 2 CPU cores: docs/model.md has the measured step times);
``'tiny'`` is for tests (small networks, a handful of steps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

__all__ = ['TrainConfig', 'PRESETS', 'get_config']


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`~bids_synth.training.diffusion.train_diffusion`.

    Attributes
    ----------
    model : dict
        Overrides of :class:`~bids_synth.models.config.ModelSpec` fields (architecture,
        sampler defaults), e.g. ``{'mean_channels': (16, 32, 64)}``.
    ssl_steps : self-supervised fusion pretraining steps (AMM-Diff).
    mean_steps, mean_lr : the mean network (correction of the ridge).
    flow_steps, flow_lr : the residual flow.
    batch_size : sessions per step.
    ridge_folds : folds by subject of the cross-fitted ridge bases.
    augment_prob : probability that a sample's sMRI/PET inputs get random contrasts.
    recon_weight : loss weight of the available (input) modalities, against 1 for hidden ones.
    l1_weight : weight of the L1 term next to the MSE of the mean network.
    clinical_drop : probability of dropping each clinical value during training.
    consistency_weight : weight of the biomarker loss (0 disables it).
    val_fraction : fraction of subjects held out.
    val_max_sessions : at most this many validation sessions are scored for the card.
    calib_max_sessions : at most this many validation sessions calibrate the gates, the std
        scale and the typicality reference (:mod:`.calibration`); 0 skips the calibration.
    gate_margin : dB a gate may cost on standard-contrast validation inputs against the ridge.
    residual_batches : training batches that estimate the mean network's residual map (half)
        and the residual scales (the other half) before the flow stage.
    checkpoint_every : steps between resumable training-state checkpoints.
    grad_clip : maximum gradient norm (``clip_grad_norm_``) in every stage.
    threads : torch threads on CPU (0: leave torch's default).
    """

    model: dict = field(default_factory=lambda: {
        'mean_channels': (16, 32, 64), 'mean_attention': (False, False, True),
        'flow_channels': (16, 32), 'flow_attention': (False, False), 'num_head_channels': 16,
        'norm_num_groups': 8, 'flow_precond': True})
    ssl_steps: int = 50
    mean_steps: int = 800
    mean_lr: float = 1e-3
    flow_steps: int = 250
    flow_lr: float = 1e-3
    batch_size: int = 2
    ridge_folds: int = 4
    augment_prob: float = 0.5
    recon_weight: float = 0.25
    l1_weight: float = 0.5
    clinical_drop: float = 0.3
    consistency_weight: float = 0.1
    val_fraction: float = 0.2
    val_max_sessions: int = 2
    calib_max_sessions: int = 4
    gate_margin: float = 0.05
    residual_batches: int = 32
    checkpoint_every: int = 50
    grad_clip: float = 1.0
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    def with_steps(self, n: int) -> TrainConfig:
        """``--train-steps n``: the mean network gets n steps, the flow n // 2 and the fusion
        pretraining at most n."""
        return replace(self, mean_steps=int(n), flow_steps=max(1, int(n) // 2),
                       ssl_steps=min(self.ssl_steps, int(n)))

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
        model={'mean_channels': (8, 8), 'mean_attention': (False, True),
               'flow_channels': (8, 8), 'flow_attention': (False, False),
               'num_head_channels': 8, 'context_dim': 8, 'fusion_dim': 4, 'norm_num_groups': 4,
               'steps': 2, 'num_samples': 2, 'flow_precond': True},
        ssl_steps=2, mean_steps=6, flow_steps=4, batch_size=2, ridge_folds=2,
        val_max_sessions=1, calib_max_sessions=1, residual_batches=8, checkpoint_every=2,
        threads=1,
    ),
}


def get_config(config: TrainConfig | dict | str | None) -> TrainConfig:
    """A config from a preset name, a dict of overrides of ``'default'``, or a config.

    In a dict, ``'steps'`` (the CLI's ``--train-steps``) sets the mean-network steps; the flow
    gets half as many and the fusion pretraining at most as many.

    >>> c = get_config({'steps': 10})
    >>> c.mean_steps, c.flow_steps, c.ssl_steps
    (10, 5, 10)
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
    steps = config.pop('steps', None)
    base = PRESETS['default'].to_dict()
    if isinstance(config.get('model'), dict):  # model overrides merge into the recipe's
        config['model'] = {**base['model'], **config['model']}
    cfg = TrainConfig.from_dict({**base, **config})
    if steps is None:
        return cfg
    # explicit step counts in the dict win over those 'steps' implies
    implied = cfg.with_steps(int(steps))
    return replace(implied, **{k: config[k] for k in ('mean_steps', 'flow_steps', 'ssl_steps')
                               if k in config})
