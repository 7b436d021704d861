"""The diffusion imputer: ridge base, mean network and residual flow, saved, loaded and sampled.

One prediction (DESIGN.md 2b):

1. the ridge of :mod:`.baseline` predicts every missing modality from the inputs;
2. images become Haar coefficients (:mod:`.wavelet`), each channel divided by its intensity
   scale;
3. the mean network (:mod:`.mean_network`) corrects the ridge: the posterior-mean estimate;
   the fraction of its correction kept per modality (``spec.gate``) was chosen on the
   validation subjects;
4. the residual flow (:mod:`.residual_flow`) draws K residuals (``num_samples``) with a few
   rectified-flow steps (:mod:`.sampler`), from antithetic noise pairs ``(n, -n)``, scaled back
   by the residual map and scales; the std of the K samples is then multiplied by the conformal
   std scale and the widening for atypical inputs (:mod:`.uncertainty`);
5. ``mean`` is the mean network's output (the posterior-mean estimate; adding the mean of K
   residuals only added the flow's bias and Monte Carlo noise: docs/model.md), ``std`` the
   calibrated standard deviation of the K samples ``mean + residual``, ``samples`` each one on
   request.
   ``num_samples=0`` skips the flow.

:class:`DiffusionImputer` fulfils the ``models.imputer.Imputer`` protocol. Inputs of a
prediction are the session's modalities that the model knows, minus the targets (asking for a
present modality predicts it from the others).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import DataError, ModelError
from .baseline import RegressionImputer
from .checkpoint import load_model, save_model
from .conditioning import clinical_batch
from .config import ModelSpec
from .frequency import pooled_frequency_features
from .imputer import Prediction, SessionArrays
from .mean_network import MeanNetwork
from .residual_flow import ResidualFlow
from .sampler import SAMPLERS, sample
from .uncertainty import coarse, inflation, stats_shape, to_coef_grid, typicality
from .wavelet import dwt3, idwt3

__all__ = ['SynthesisNet', 'DiffusionImputer', 'stack_images']

LOG = logging.getLogger('bids_synth.models.synthesis')


def stack_images(images: dict[str, np.ndarray], spec: ModelSpec,
                 where: str = 'session') -> tuple[np.ndarray, np.ndarray]:
    """Stack a session's modalities into the model's channel order.

    Returns
    -------
    stacked : numpy.ndarray, shape (C_total, X, Y, Z), float32
        Zeros for missing modalities.
    present : numpy.ndarray, shape (M,), bool
    """
    out = np.zeros((spec.total_channels, *spec.shape), np.float32)
    present = np.zeros(len(spec.modalities), bool)
    for i, (m, sl) in enumerate(spec.channel_slices().items()):
        if m not in images:
            continue
        a = np.asarray(images[m], dtype=np.float32)
        if a.ndim == 3:
            a = a[None]
        want = (sl.stop - sl.start, *spec.shape)
        if a.shape != want:
            raise DataError(f'{where}: {m} has shape {a.shape}, the model expects {want} '
                            f'(model grid res {spec.res} mm)')
        if not np.isfinite(a).all():
            raise DataError(f'{where}: {m} contains NaN or infinite values')
        out[sl] = a
        present[i] = True
    return out, present


class SynthesisNet(nn.Module):
    """The trained networks of a diffusion imputer and the representation around them.

    Args:
        spec: architecture, grid and scales.
        schema: clinical schema (may be empty).
    """

    def __init__(self, spec: ModelSpec, schema: dict) -> None:
        super().__init__()
        self.spec = spec
        self.mean = MeanNetwork(spec, schema)
        self.flow = ResidualFlow(spec)
        coarse_grid = (spec.total_channels, *stats_shape(spec.coef_shape))
        # uncertainty maps on a coarse grid (models/uncertainty.py), set by the trainer:
        # the residual's spatial pattern, the training cohort's low-pass mean and std
        self.register_buffer('resid_map', torch.ones(coarse_grid))
        self.register_buffer('input_mean', torch.zeros(coarse_grid))
        self.register_buffer('input_std', torch.ones(coarse_grid))

    @property
    def schema(self) -> dict:
        return self.mean.clinical.schema

    def _scales(self, like: torch.Tensor, per_coef: bool = False,
                residual: bool = False) -> torch.Tensor:
        vals = self.spec.residual_scales() if residual else self.spec.channel_scales()
        s = torch.tensor(vals, dtype=like.dtype, device=like.device)
        if per_coef and not residual:
            s = s.repeat_interleave(self.spec.subbands)
        return s[None, :, None, None, None]

    def to_coefs(self, images: torch.Tensor) -> torch.Tensor:
        """Coefficients (B, 8 C_total, x, y, z) of images (B, C_total, X, Y, Z)."""
        return dwt3(images / self._scales(images))

    def to_images(self, coefs: torch.Tensor) -> torch.Tensor:
        """Images (B, C_total, X, Y, Z) of coefficients (B, 8 C_total, x, y, z)."""
        out = idwt3(coefs)
        return out * self._scales(out)

    def frequency(self, images: torch.Tensor) -> torch.Tensor:
        """Fourier features (B, C_total, x, y, z) of images, on the coefficient grid."""
        return pooled_frequency_features(images / self._scales(images), 2, self.spec.freq_cutoff)

    def per_modality(self, values, like: torch.Tensor) -> torch.Tensor:
        """Per-modality values repeated over their coefficient channels: (1, 8 C_total, 1, 1, 1)."""
        reps = torch.tensor([c * self.spec.subbands for c in self.spec.channels])
        v = torch.repeat_interleave(torch.tensor(values, dtype=like.dtype), reps)
        return v.to(like.device)[None, :, None, None, None]

    def residual_map(self, like: torch.Tensor) -> torch.Tensor:
        """Spatial residual map on the coefficient grid, per coefficient channel:
        (1, 8 C_total, x, y, z)."""
        m = to_coef_grid(self.resid_map.to(like.dtype), like.shape[2:])
        return m.repeat_interleave(self.spec.subbands, dim=1)

    def residual_scale(self, like: torch.Tensor) -> torch.Tensor:
        """Scale of the residual the flow works on: the spatial map times the per coefficient
        channel scale, broadcastable to ``like`` (B, 8 C_total, x, y, z)."""
        return self.residual_map(like) * self._scales(like, residual=True)

    def typicality(self, coefs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per image channel typicality score (B, C_total) of coefficients (B, 8 C_total, ...)
        on the coarse-grid ``mask`` (:func:`.uncertainty.typicality`)."""
        return typicality(coefs[:, ::self.spec.subbands], self.input_mean, self.input_std, mask)


class DiffusionImputer:
    """Wavelet-space mean network plus residual flow on a ridge base (the ``'diffusion'`` method).

    Attributes
    ----------
    method : str
        ``'diffusion'``.
    modalities : tuple of str
    spec : ModelSpec
    net : SynthesisNet
    ridge : RegressionImputer
    """

    method = 'diffusion'

    def __init__(self, net: SynthesisNet, ridge: RegressionImputer,
                 card: dict | None = None) -> None:
        self.net = net.eval()
        self.spec = net.spec
        self.ridge = ridge
        self.modalities = tuple(self.spec.modalities)
        missing = set(self.modalities) - set(ridge.modalities)
        if missing:
            raise ModelError(f'the ridge base lacks {sorted(missing)}')
        self.mask = np.asarray(ridge.mask, bool)
        m = torch.from_numpy(self.mask.astype(np.float32))[None, None]
        self.coarse_mask = coarse(coarse(m))[0, 0] >= 0.5  # model grid -> coefficients -> coarse
        self._card = dict(card or {})

    # -- files ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> DiffusionImputer:
        """Load a model directory written by :meth:`save` (card validated, sha256 checked)."""
        tensors, card = load_model(path)
        if card.get('method') != 'diffusion':
            raise ModelError(f'{path}: model card method is {card.get("method")!r}, not diffusion')
        try:
            spec = ModelSpec.from_dict(card['architecture'])
            net = SynthesisNet(spec, card.get('clinical_schema') or {})
            ridge_card = card['ridge']
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f'{path}: model card architecture is invalid ({exc})') from None
        ridge = RegressionImputer.from_tensors(
            {k[6:]: v for k, v in tensors.items() if k.startswith('ridge.')}, ridge_card, path)
        state = {k[4:]: torch.from_numpy(np.array(v)) for k, v in tensors.items()
                 if k.startswith('net.')}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[1:2] or ['']
            raise ModelError(f'{path}: weights do not match the card architecture '
                             f'({first[0].strip()})') from None
        if missing or unexpected:
            raise ModelError(f'{path}: weights do not match the card architecture '
                             f'(missing {missing[:3]}, unexpected {unexpected[:3]})')
        return cls(net, ridge, card)

    def save(self, path: str | Path, card: dict | None = None) -> Path:
        """Write weights and card (``method``, ``architecture``, ``ridge`` filled in)."""
        full = dict(self._card, **(card or {}))
        ridge_card = self.ridge.card()
        ridge_card['info'] = self.ridge.info
        full.update(method='diffusion', modalities=list(self.modalities),
                    channels=dict(zip(self.modalities, self.spec.channels)),
                    architecture=self.spec.to_dict(), clinical_schema=self.net.schema,
                    ridge=ridge_card)
        full.setdefault('name', Path(path).name)
        full.setdefault('template', {'name': 'MNI152NLin2009aSym', 'res': self.spec.res,
                                     'shape': list(self.spec.shape)})
        tensors = {f'net.{k}': v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        tensors.update({f'ridge.{k}': np.asarray(v) for k, v in self.ridge.tensors().items()})
        out = save_model(path, tensors, full)
        self._card = full
        return out

    def card(self) -> dict:
        """The model card (JSON-serializable)."""
        return dict(self._card)

    # -- prediction ----------------------------------------------------------------------------
    def base(self, inputs: dict[str, np.ndarray], clinical: dict, ridge=None) -> np.ndarray:
        """Ridge base (C_total, X, Y, Z): the input where available, else the ridge's prediction.

        ``ridge``: another fitted ridge to use (the trainer's cross-fitted ones).
        """
        ridge = ridge or self.ridge
        stacked, present = stack_images(inputs, self.spec)
        todo = tuple(m for m, p in zip(self.modalities, present) if not p)
        if todo:
            sess = SessionArrays('base', None, inputs, clinical)
            preds = ridge.predict(sess, todo)
            sl = self.spec.channel_slices()
            for m in todo:
                stacked[sl[m]] = preds[m].mean
        return stacked

    @torch.no_grad()
    def components(self, inputs: dict[str, np.ndarray], clinical: dict, device: str = 'cpu',
                   where: str = 'session') -> dict:
        """The pieces of a prediction, in coefficients (B = 1): ``base`` (ridge), ``network``
        (the mean network's output, ungated), ``coefs`` of the inputs, ``avail``, ``present``,
        ``fusion`` and the ``net`` on ``device``."""
        stacked, present = stack_images(inputs, self.spec, where)
        base = self.base(inputs, clinical)
        net = self.net.to(device)
        images = torch.from_numpy(stacked)[None].to(device)
        avail = torch.from_numpy(present)[None].to(device)
        clin = clinical_batch([clinical], net.schema).to(device)
        coefs = net.to_coefs(images)
        base_c = net.to_coefs(torch.from_numpy(base)[None].to(device))
        network, fus = net.mean(coefs, base_c, net.frequency(images), avail, clin)
        return {'base': base_c, 'network': network, 'coefs': coefs, 'avail': avail,
                'present': present, 'fusion': fus, 'net': net}

    def gated(self, base: torch.Tensor, network: torch.Tensor,
              gates: tuple[float, ...] | None = None) -> torch.Tensor:
        """``base + gate (network - base)`` per modality (``spec.gate`` by default)."""
        g = self.net.per_modality(gates or self.spec.gates(), network)
        return base + g * (network - base)

    def input_typicality(self, coefs: torch.Tensor, present: np.ndarray) -> dict[str, float]:
        """Typicality score of each present input modality (mean over its channels)."""
        if not present.any():
            return {}
        per_channel = self.net.typicality(coefs, self.coarse_mask.to(coefs.device))[0]
        out = {}
        for i, (m, sl) in enumerate(self.spec.channel_slices().items()):
            if present[i]:
                out[m] = float(per_channel[sl].mean())
        return out

    @torch.no_grad()
    def predict(self, session: SessionArrays, targets: tuple[str, ...], *, seed: int = 0,
                num_samples: int | None = None, device: str = 'cpu', sampler: str | None = None,
                steps: int | None = None, return_samples: bool = False,
                ) -> dict[str, Prediction]:
        """Synthesize ``targets`` from the session's other modalities and clinical values.

        Parameters
        ----------
        session : SessionArrays
            Images (C, X, Y, Z) on the model grid; unknown modalities are ignored.
        targets : tuple of str
        seed : int
            Seeds the residual noise (``torch.Generator``); same seed, same output on CPU.
        num_samples : int, optional
            K residual samples (the card's default when ``None``): their spread, times the
            calibrated std scale and the widening for atypical inputs, is ``std`` (``None`` when
            K < 2) and each is ``mean + residual``. ``mean`` is the (gated) mean network's
            output whatever K (0: no sampling at all).
        device : str
        sampler, steps : optional
            Override the card's sampler defaults.
        return_samples : bool
            Also return each sample (``Prediction.samples``, shape (K, C, X, Y, Z)).

        Returns
        -------
        dict of str to Prediction
            ``mean`` (C, X, Y, Z) float32, ``std`` or None, ``extra`` with ``fusion_weights``
            per input modality, ``null_weight``, ``inputs``, ``input_typicality`` per input
            (relative to the validation subjects: about 1 when typical), ``std_inflation``
            (the factor the samples' spread was widened by for atypical inputs), ``gate``,
            ``sampler``, ``steps``, ``seed``, ``num_samples``.
        """
        spec = self.spec
        unknown = [t for t in targets if t not in self.modalities]
        if unknown:
            raise ModelError(f'model {self._card.get("name", "?")!r} cannot synthesize {unknown}; '
                             f'it knows {list(self.modalities)}')
        k = spec.num_samples if num_samples is None else int(num_samples)
        if k < 0:
            raise ValueError(f'num_samples must be >= 0, got {k}')
        sampler = sampler or spec.sampler
        steps = int(steps or spec.steps)
        if sampler not in SAMPLERS:
            raise ValueError(f'unknown sampler {sampler!r}; choose one of {", ".join(SAMPLERS)}')
        where = f'sub-{session.subject}' + (f'_ses-{session.session}' if session.session else '')
        inputs = {m: a for m, a in session.images.items()
                  if m in self.modalities and m not in targets}
        ignored = sorted(set(session.images) - set(self.modalities))
        if ignored:
            LOG.info('%s: model does not use %s', where, ', '.join(ignored))
        clinical = session.clinical or {}
        parts = self.components(inputs, clinical, device, where)
        net, present, coefs, avail = parts['net'], parts['present'], parts['coefs'], parts['avail']
        mean = self.gated(parts['base'], parts['network'])
        fus = parts['fusion']
        scores = self.input_typicality(coefs, present)
        ref = dict(zip(self.modalities, spec.typicality))
        widen = inflation(scores, ref)
        # the flow runs only when its draws are used: a std (K > 1) or the samples themselves
        draw = k > 1 or (k > 0 and return_samples)
        if draw:
            cond = net.flow.condition(mean, coefs, avail).expand(k, -1, -1, -1, -1)
            gen = torch.Generator(device='cpu').manual_seed(int(seed))
            half = torch.randn(((k + 1) // 2, *mean.shape[1:]), generator=gen)
            # antithetic pairs (n, -n): each sample is still a draw of its own, but the mean of
            # the K residuals keeps the flow's estimate of their mean and loses most of the
            # sampling noise that would otherwise cost 10 log10(1 + 1/K) dB of PSNR
            noise = torch.cat([half, -half])[:k].to(device)
            resid = sample(lambda r, t: net.flow(r, t, cond), noise, sampler=sampler,
                           steps=steps, num_train_timesteps=spec.num_train_timesteps)
            # the samples keep the residual's own scale (their texture is what the flow
            # learnt); the calibration and the widening act on the reported std only
            samples = (net.to_images(mean + resid * net.residual_scale(resid)).float()
                       .cpu().numpy() * self.mask[None, None])  # (K, C_total, X, Y, Z)
        else:
            samples = None
        # desc-synth is the mean network's output, the estimate of the posterior mean: the mean
        # of K flow residuals has expectation 0 when the flow is calibrated, so adding it only
        # adds Monte Carlo noise and the flow's bias (measured: 0.1-1.2 dB worse, docs/model.md)
        imgs = net.to_images(mean).float().cpu().numpy() * self.mask[None, None]  # (1, C, ...)
        if not np.isfinite(imgs).all() or (samples is not None
                                           and not np.isfinite(samples).all()):
            raise ModelError(f'{where}: the model produced non-finite values '
                             '(a diverged or corrupted model?)')
        weights = fus['weights'][0].cpu().numpy()
        extra_common = {
            'fusion_weights': {m: float(weights[i]) for i, m in enumerate(self.modalities)
                               if present[i]},
            'null_weight': float(weights[-1]),
            'inputs': [m for i, m in enumerate(self.modalities) if present[i]],
            'clinical_used': {c: v for c, v in clinical.items()
                              if c in net.schema and v is not None},
            'input_typicality': {m: round(v / ref[m], 3) if ref.get(m) else round(v, 3)
                                 for m, v in scores.items()},
            'std_inflation': round(widen, 3),
            'gate': {t: g for t, g in zip(self.modalities, spec.gates()) if t in targets},
            'sampler': sampler if draw else None, 'steps': steps if draw else 0,
            'seed': int(seed),
            'num_samples': k,
        }
        out = {}
        csl = spec.channel_slices()
        calib = dict(zip(self.modalities, spec.std_scales()))
        for t in targets:
            per = None if samples is None else samples[:, csl[t]]
            out[t] = Prediction(
                mean=imgs[0, csl[t]].astype(np.float32),
                std=(per.std(axis=0) * calib[t] * widen).astype(np.float32) if k > 1 else None,
                extra=dict(extra_common),
                samples=per.astype(np.float32) if return_samples and draw else None)
        return out
