"""The latent-diffusion imputer: networks bundled, saved, loaded and sampled.

:class:`SynthesisNet` holds the four trained parts (shared channel-wise ``AutoencoderKL``,
:class:`~.fusion.AdaptiveFusion`, :class:`~.conditioning.ClinicalEncoder`,
:class:`~.denoiser.Denoiser`). :class:`DiffusionImputer` fulfils the ``models.imputer.Imputer``
protocol: ``DiffusionImputer.load(path).predict(session, targets, seed=0, num_samples=1)``.

Inputs of a prediction are the session's modalities that the model knows, minus the targets
(asking for a present modality predicts it from the others). Output ``mean`` is the mean of
``num_samples`` samples and ``std`` their voxelwise standard deviation (population, ``ddof=0``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import DataError, ModelError
from .autoencoder import build_autoencoder, decode_channels, encode_channels
from .checkpoint import load_model, save_model
from .conditioning import ClinicalBatch, ClinicalEncoder, clinical_batch
from .config import ModelSpec
from .denoiser import Denoiser
from .frequency import latent_frequency_features
from .fusion import AdaptiveFusion, FusionOutput
from .imputer import Prediction, SessionArrays
from .sampler import SAMPLERS, sample

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
    """All trained networks of a diffusion model.

    Args:
        spec: architecture and grid.
        schema: clinical schema (may be empty).
    """

    def __init__(self, spec: ModelSpec, schema: dict) -> None:
        super().__init__()
        self.spec = spec
        self.autoencoder = build_autoencoder(spec)
        self.fusion = AdaptiveFusion(spec)
        self.clinical = ClinicalEncoder(schema, spec.context_dim)
        self.denoiser = Denoiser(spec)

    def _scales(self, channels: slice | None, like: torch.Tensor) -> torch.Tensor:
        s = torch.tensor(self.spec.channel_scales(), dtype=like.dtype, device=like.device)
        return s[channels if channels is not None else slice(None)][None, :, None, None, None]

    def encode(self, images: torch.Tensor, channels: slice | None = None) -> torch.Tensor:
        """Scaled latents, shape (B, Z, x, y, z), of images (B, C_total, X, Y, Z).

        ``channels``: the image channels ``images`` holds (``spec.channel_slices()[m]`` for one
        modality); all channels by default.
        """
        images = images / self._scales(channels, images)
        return encode_channels(self.autoencoder, images) * self.spec.scale_factor

    def decode(self, latents: torch.Tensor, channels: slice | None = None) -> torch.Tensor:
        """Images (B, C, X, Y, Z) of scaled latents (B, C * L, x, y, z).

        ``channels``: the image channels the latents stand for (``spec.channel_slices()[m]``
        for one modality); all channels by default.
        """
        out = decode_channels(self.autoencoder, latents / self.spec.scale_factor,
                              self.spec.ae_latent_channels)
        return out * self._scales(channels, out)

    def frequency(self, images: torch.Tensor) -> torch.Tensor:
        """Frequency features (B, C_total, x, y, z) of images (B, C_total, X, Y, Z)."""
        return latent_frequency_features(images, self.spec.down_factor, self.spec.freq_cutoff)

    def conditioning(self, latents: torch.Tensor, freq: torch.Tensor, available: torch.Tensor,
                     clinical: ClinicalBatch, drop_prob: float = 0.0,
                     generator: torch.Generator | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, FusionOutput]:
        """Spatial condition, cross-attention context and fusion output of a batch.

        Returns
        -------
        condition : torch.Tensor, shape (B, Z + M + fusion_dim, x, y, z)
        context : torch.Tensor, shape (B, K + 1 + M, context_dim)
        fusion : FusionOutput
        """
        clin = self.clinical(clinical, drop_prob=drop_prob, generator=generator)
        fus = self.fusion(latents, freq, available, clin)
        cond = self.denoiser.condition(latents, available, fus['fused'])
        return cond, torch.cat([clin, fus['tokens']], dim=1), fus


class DiffusionImputer:
    """Latent-diffusion imputation model (the ``'diffusion'`` method).

    Attributes
    ----------
    method : str
        ``'diffusion'``.
    modalities : tuple of str
    spec : ModelSpec
    net : SynthesisNet
    """

    method = 'diffusion'

    def __init__(self, net: SynthesisNet, card: dict | None = None) -> None:
        self.net = net.eval()
        self.spec = net.spec
        self.modalities = tuple(self.spec.modalities)
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
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f'{path}: model card architecture is invalid ({exc})') from None
        state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[1:2] or ['']
            raise ModelError(f'{path}: weights do not match the card architecture '
                             f'({first[0].strip()})') from None
        if missing or unexpected:
            raise ModelError(f'{path}: weights do not match the card architecture '
                             f'(missing {missing[:3]}, unexpected {unexpected[:3]})')
        return cls(net, card)

    def save(self, path: str | Path, card: dict | None = None) -> Path:
        """Write weights and card (``method``, ``architecture``, ``clinical_schema`` filled in)."""
        full = dict(self._card, **(card or {}))
        full.update(method='diffusion', modalities=list(self.modalities),
                    channels=dict(zip(self.modalities, self.spec.channels)),
                    architecture=self.spec.to_dict(), clinical_schema=self.net.clinical.schema)
        full.setdefault('name', Path(path).name)
        full.setdefault('template', {'name': 'MNI152NLin2009aSym', 'res': self.spec.res,
                                     'shape': list(self.spec.shape)})
        tensors = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        out = save_model(path, tensors, full)
        self._card = full
        return out

    def card(self) -> dict:
        """The model card (JSON-serializable)."""
        return dict(self._card)

    # -- prediction ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, session: SessionArrays, targets: tuple[str, ...], *, seed: int = 0,
                num_samples: int = 1, device: str = 'cpu', sampler: str | None = None,
                steps: int | None = None) -> dict[str, Prediction]:
        """Synthesize ``targets`` from the session's other modalities and clinical values.

        Parameters
        ----------
        session : SessionArrays
            Images (C, X, Y, Z) on the model grid; unknown modalities are ignored.
        targets : tuple of str
        seed : int
            Seeds the initial noise (``torch.Generator``); same seed, same output on CPU.
        num_samples : int
            K samples; ``std`` is ``None`` when K == 1.
        device : str
        sampler, steps : optional
            Override the card's sampler defaults.

        Returns
        -------
        dict of str to Prediction
            ``mean`` (C, X, Y, Z) float32, ``std`` or None, ``extra`` with ``fusion_weights``
            per input modality, ``null_weight``, ``inputs``, ``sampler``, ``steps``, ``seed``.
        """
        spec = self.spec
        unknown = [t for t in targets if t not in self.modalities]
        if unknown:
            raise ModelError(f'model {self._card.get("name", "?")!r} cannot synthesize {unknown}; '
                             f'it knows {list(self.modalities)}')
        if num_samples < 1:
            raise ValueError(f'num_samples must be >= 1, got {num_samples}')
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
        stacked, present = stack_images(inputs, spec, where)
        net = self.net.to(device)
        images = torch.from_numpy(stacked)[None].to(device)
        avail = torch.from_numpy(present)[None].to(device)
        latents = torch.zeros((1, spec.latent_channels_total, *spec.latent_shape), device=device)
        for m, sl in spec.latent_slices().items():
            if m in inputs:
                csl = spec.channel_slices()[m]
                latents[:, sl] = net.encode(images[:, csl], csl)
        freq = net.frequency(images)
        clin = clinical_batch([session.clinical or {}], net.clinical.schema).to(device)
        cond, context, fus = net.conditioning(latents, freq, avail, clin)
        gen = torch.Generator(device='cpu').manual_seed(int(seed))
        noise = torch.randn((num_samples, spec.latent_channels_total, *spec.latent_shape),
                            generator=gen).to(device)
        cond_k = cond.expand(num_samples, *cond.shape[1:])
        ctx_k = context.expand(num_samples, *context.shape[1:])
        z0 = sample(lambda x, t: net.denoiser(x, t, cond_k, ctx_k), noise, sampler=sampler,
                    steps=steps, num_train_timesteps=spec.num_train_timesteps)
        weights = fus['weights'][0].cpu().numpy()
        extra_common = {
            'fusion_weights': {m: float(weights[i]) for i, m in enumerate(self.modalities)
                               if present[i]},
            'null_weight': float(weights[-1]),
            'inputs': [m for i, m in enumerate(self.modalities) if present[i]],
            'clinical_used': {k: v for k, v in (session.clinical or {}).items()
                              if k in net.clinical.schema and v is not None},
            'sampler': sampler, 'steps': steps, 'seed': int(seed), 'num_samples': num_samples,
        }
        out = {}
        lsl = spec.latent_slices()
        for t in targets:
            # (K, C, X, Y, Z)
            imgs = net.decode(z0[:, lsl[t]], spec.channel_slices()[t]).float().cpu().numpy()
            if not np.isfinite(imgs).all():
                raise ModelError(f'{where}: the model produced non-finite values for {t} '
                                 '(a diverged or corrupted model?)')
            mean = imgs.mean(axis=0).astype(np.float32)
            std = imgs.std(axis=0).astype(np.float32) if num_samples > 1 else None
            out[t] = Prediction(mean=mean, std=std, extra=dict(extra_common))
        return out
