"""Training of the latent-diffusion imputer (``bids_synth /data /out group``).

Stages, each resumable from ``<out_dir>/.train_state`` (saved every ``checkpoint_every`` steps):

1. ``ae``: the shared channel-wise ``AutoencoderKL`` on random patches (L1 + SSIM + KL);
   then the latent scale factor (1 / std of the training latents).
2. ``ssl``: self-supervised pretraining of the fusion encoder (cosine similarity between the
   fused embedding of a randomly masked input set and that of all present inputs).
3. ``dm``: end-to-end training of fusion, clinical encoder and denoiser (autoencoder frozen):
   random subsets of the present modalities are the inputs, the loss is the x0 error on every
   present modality (adaptive reconstruction) plus the biomarker consistency loss on one hidden
   modality of one sample per step; clinical values are dropped at random.

Then validation on held-out subjects and the model directory (``model.safetensors`` +
``model_card.json``) in ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..bids.modalities import MODALITIES, resolve_modalities
from ..errors import DataError, ModelError
from ..models.checkpoint import sha256_file
from ..models.conditioning import validate_schema
from ..models.config import ModelSpec
from ..models.consistency import BiomarkerLoss
from ..models.fusion import masked_consistency_loss
from ..models.imputer import SessionArrays
from ..models.sampler import SAMPLERS, rflow_train_pair
from ..models.synthesis import DiffusionImputer, SynthesisNet
from ..preprocessing.templates import TEMPLATE, model_grid
from .config import TrainConfig, get_config
from .data import Cohort, build_cohort, channel_scales, random_inputs, random_patches
from .splits import split_subjects
from .state import clear_state, load_state, restore, save_state
from .validation import autoencoder_psnr, validate

__all__ = ['train_diffusion', 'DEFAULT_RES']

#: Model-grid resolution (mm) of the default recipe: 48x56x48, trainable on 2 CPU cores.
DEFAULT_RES = 4

LOG = logging.getLogger('bids_synth.training.diffusion')
STAGES = ('ae', 'ssl', 'dm')
#: consecutive non-finite training steps that stop a run
MAX_BAD_STEPS = 10


def _load_base(init_from: str | Path, spec: ModelSpec) -> DiffusionImputer:
    base = DiffusionImputer.load(init_from)
    if base.modalities != spec.modalities or base.spec.res != spec.res:
        raise ModelError(f'{init_from}: cannot fine-tune a model of {list(base.modalities)} at '
                         f'res {base.spec.res} for {list(spec.modalities)} at res {spec.res}')
    return base


@torch.no_grad()
def _encode_cohort(net: SynthesisNet, cohort: Cohort,
                   device: str) -> tuple[torch.Tensor, torch.Tensor]:
    lat, freq = [], []
    for i in range(len(cohort)):
        x = cohort.images[i:i + 1].to(device)
        lat.append(net.encode(x).cpu())
        freq.append(net.frequency(x).cpu())
    return torch.cat(lat), torch.cat(freq)


def train_diffusion(
    sessions: list[SessionArrays], *, mask: np.ndarray, clinical_schema: dict | None,
    out_dir: str | Path, modalities: tuple[str, ...] | list[str], res: int = DEFAULT_RES,
    config: TrainConfig | dict | str | None = None, resume: bool = True, progress: bool = True,
    seed: int = 0, init_from: str | Path | None = None, device: str | None = None,
) -> Path:
    """Train (or fine-tune) a diffusion imputer; return the model directory (``out_dir``).

    Parameters
    ----------
    sessions : list of SessionArrays
        Images (C, X, Y, Z) on ``model_grid(res)``; missing modalities absent.
    mask : numpy.ndarray, shape (X, Y, Z), bool
        Brain mask of the grid (patches, biomarker regions, metrics).
    clinical_schema : dict or None
        Per column ``{'type': 'continuous', 'mean', 'std'}``, ``{'type': 'categorical',
        'levels'}`` or ``{'type': 'text'}``.
    out_dir : path
        Receives the model (and ``.train_state`` while training).
    modalities : sequence of str
    res : int
        Model grid resolution (mm).
    config : TrainConfig, preset name ('default', 'tiny') or dict of overrides
    resume : bool
        Continue from the state in ``out_dir`` if it was made with the same setup.
    progress : bool
        tqdm progress bar (shown only when stderr is a terminal).
    seed : int
        Seeds the split, batches, masks and noise (``torch.Generator``).
    init_from : path, optional
        A model to fine-tune (its architecture and autoencoder are kept; stages ``ae`` and
        ``ssl`` are skipped).
    device : str, optional
        ``'cpu'``, ``'cuda'``; ``None`` or ``'auto'``: CUDA when available, else CPU.
    """
    cfg = get_config(config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device in (None, 'auto'):
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mods = resolve_modalities(modalities)
    affine, shape = model_grid(res)
    spec = ModelSpec(modalities=mods, channels=tuple(MODALITIES[m].n_channels for m in mods),
                     res=res, shape=shape, **cfg.model)
    schema = validate_schema(clinical_schema or {})
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(shape):
        raise DataError(f'brain mask has shape {mask.shape}, the res-{res} grid is {shape}')
    if not sessions:
        raise DataError('no sessions to train on')
    train_subj, val_subj = split_subjects([s.subject for s in sessions], cfg.val_fraction, seed)
    train = [s for s in sessions if s.subject in set(train_subj)]
    val_all = [s for s in sessions if s.subject in set(val_subj)
               and sum(m in s.images for m in mods) >= 2]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(val_all), generator=torch.Generator().manual_seed(seed + 1))
    val = [val_all[i] for i in sorted(pick[:cfg.val_max_sessions].tolist())]

    steps = dict(zip(STAGES, (cfg.ae_steps, cfg.ssl_steps, cfg.dm_steps)))
    base = None
    if init_from is not None:
        base = _load_base(init_from, spec)
        spec = base.spec
        steps['ae'] = steps['ssl'] = 0
    torch.manual_seed(seed)  # network initialization
    net = SynthesisNet(spec, schema).to(device)
    if base is not None:
        own = net.state_dict()
        net.load_state_dict({k: v for k, v in base.net.state_dict().items()
                             if k in own and own[k].shape == v.shape}, strict=False)
    fingerprint = json.loads(json.dumps({
        'config': cfg.to_dict(), 'modalities': mods, 'res': res, 'seed': seed,
        'sessions': [f'{s.subject}/{s.session}' for s in sessions], 'schema': schema,
        'init_from': sha256_file(Path(init_from) / 'model.safetensors') if init_from else None,
    }, default=str))
    meta: dict = {'stage': STAGES[0], 'step': 0, 'losses': {}, 'seconds': {},
                  'scale_factor': spec.scale_factor, 'fingerprint': fingerprint}
    card_file = out / 'model_card.json'
    record = out / '.train_state' / 'state.json'
    if resume and card_file.is_file() and record.is_file():
        old = json.loads(record.read_text())
        if old.get('stage') == 'done' and old.get('fingerprint') == fingerprint:
            LOG.info('%s: training already finished with this setup', out)
            return out
    state = load_state(out) if resume else None
    if state is not None and state[0].get('fingerprint') == fingerprint:
        meta, tensors = state
        net.spec = spec = spec.with_(scale_factor=meta['scale_factor'])
        LOG.info('resuming training at stage %s step %d', meta['stage'], meta['step'])
    elif state is not None:
        LOG.warning('%s: ignoring a training state made with another setup', out)
        state = None
    cohort = build_cohort(train, spec, schema)
    if not len(cohort):
        raise DataError('no training sessions after the subject split')
    if base is None:  # a fine-tuned model keeps its base's intensity scales
        net.spec = spec = spec.with_(channel_scale=channel_scales(cohort, spec, mask))
    bio = BiomarkerLoss(affine, shape, mask).to(device)

    done = sum(steps[s] for s in STAGES[:STAGES.index(meta['stage'])] if meta['stage'] in STAGES)
    bar = tqdm(total=sum(steps.values()), initial=done + meta['step'], unit='step',
               disable=not (progress and sys.stderr.isatty()), desc='train')

    bad: dict[str, int] = {}

    def run(stage: str, params: list, lr: float, step_fn: Callable[[], torch.Tensor]) -> None:
        nonlocal state
        if STAGES.index(meta['stage']) > STAGES.index(stage):
            return
        opt = torch.optim.Adam(params, lr=lr)
        start = 0
        if state is not None:
            restore(net, opt if meta['stage'] == stage else None, gen, meta, state[1])
            start = meta['step'] if meta['stage'] == stage else 0
            state = None
        bar.set_description(stage)
        losses = meta['losses'].setdefault(stage, [])
        t0 = time.perf_counter()
        for step in range(start, steps[stage]):
            for group in opt.param_groups:  # cosine decay to lr/10, a function of the step
                group['lr'] = lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps[stage])))
            net.train()
            loss = step_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # gradient-norm clipping, and no update from a non-finite loss or gradient: a
            # diverging step is skipped; MAX_BAD_STEPS in a row stop the run with a clear error
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if not (torch.isfinite(loss.detach()) and torch.isfinite(norm)):
                bad[stage] = bad.get(stage, 0) + 1
                skipped = meta.setdefault('skipped', {})
                skipped[stage] = skipped.get(stage, 0) + 1
                LOG.warning('training %s step %d: non-finite loss or gradient, step skipped',
                            stage, step)
                if bad[stage] >= MAX_BAD_STEPS:
                    raise ModelError(f'training diverged: {MAX_BAD_STEPS} non-finite steps in a '
                                     f'row in stage {stage!r} (step {step}); lower the '
                                     'learning rate or check the input images')
            else:
                bad[stage] = 0
                opt.step()
                losses.append(round(float(loss.detach()), 6))
            bar.update(1)
            if losses:
                bar.set_postfix(loss=f'{losses[-1]:.4f}')
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps[stage]:
                meta['seconds'][stage] = meta['seconds'].get(stage, 0.0) + time.perf_counter() - t0
                t0 = time.perf_counter()
                meta.update(stage=stage, step=step + 1)
                save_state(out, net, opt, gen, meta)
        nxt = STAGES.index(stage) + 1
        meta.update(stage=STAGES[nxt] if nxt < len(STAGES) else 'done', step=0)

    # 1. autoencoder ------------------------------------------------------------------------
    from ..models.autoencoder import autoencoder_loss

    ae_images = cohort.images / torch.tensor(spec.channel_scales())[None, :, None, None, None]

    def ae_step() -> torch.Tensor:
        p = random_patches(ae_images, cohort.present, spec, cfg.ae_batch,
                           min(cfg.ae_patch, *shape), gen, mask)
        return autoencoder_loss(net.autoencoder, p.to(device))[0]

    run('ae', list(net.autoencoder.parameters()), cfg.ae_lr, ae_step)
    net.autoencoder.requires_grad_(False).eval()
    if state is not None:  # resumed after the ae stage: weights come from the state
        restore(net, None, gen, meta, state[1])
    if base is None and meta.get('scale_fixed') is not True:
        lat, _ = _encode_cohort(net, cohort, device)
        chan = torch.repeat_interleave(cohort.present.float(), torch.tensor(
            [c * spec.ae_latent_channels for c in spec.channels]), dim=1).bool()
        vals = lat.permute(1, 0, 2, 3, 4)[chan.T].flatten() / spec.scale_factor
        scale = float(1.0 / vals.std().clamp(min=1e-6))
        net.spec = spec = spec.with_(scale_factor=scale)
        meta.update(scale_factor=scale, scale_fixed=True)
    lat, freq = _encode_cohort(net, cohort, device)
    n = len(cohort)

    def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(n, (cfg.batch_size,), generator=gen)
        present = cohort.present[idx]
        return idx, present, random_inputs(present, gen)

    # 2. self-supervised fusion pretraining -------------------------------------------------
    def ssl_step() -> torch.Tensor:
        idx, present, keep = batch()
        ctx = net.clinical(cohort.clinical.index(idx).to(device), cfg.clinical_drop, gen)
        return masked_consistency_loss(net.fusion, lat[idx].to(device), freq[idx].to(device),
                                       present.to(device), keep.to(device), ctx)

    run('ssl', list(net.fusion.parameters()) + list(net.clinical.parameters()), cfg.lr, ssl_step)

    # 3. diffusion, end to end --------------------------------------------------------------
    reps = torch.tensor([c * spec.ae_latent_channels for c in spec.channels])
    lsl, csl = spec.latent_slices(), spec.channel_slices()

    counter = {'dm': 0}

    def dm_step() -> torch.Tensor:
        idx, present, keep = batch()
        z0 = lat[idx].to(device)
        t = (torch.rand((len(idx),), generator=gen) * spec.num_train_timesteps).clamp(min=1.0)
        noise = torch.randn(z0.shape, generator=gen).to(device)
        x_t = rflow_train_pair(z0, noise, t.to(device), spec.num_train_timesteps)
        cond, ctx, _ = net.conditioning(z0, freq[idx].to(device), keep.to(device),
                                        cohort.clinical.index(idx).to(device),
                                        cfg.clinical_drop, gen)
        x0 = net.denoiser(x_t, t.to(device), cond, ctx)
        w = torch.repeat_interleave(present.float(), reps, dim=1).to(device)[..., None, None, None]
        loss = (F.mse_loss(x0, z0, reduction='none') * w).sum() / (w.sum() * x0[0, 0].numel())
        hidden = present & ~keep
        counter['dm'] += 1
        if (cfg.consistency_weight > 0 and bool(hidden.any())
                and counter['dm'] % max(cfg.consistency_every, 1) == 0):
            i, j = (int(v) for v in hidden.nonzero()[int(torch.randint(int(hidden.sum()), (1,),
                                                                   generator=gen))])
            m = spec.modalities[j]
            pred = net.decode(x0[i:i + 1, lsl[m]], csl[m])
            real = cohort.images[idx[i]:idx[i] + 1, csl[m]].to(device)
            loss = loss + cfg.consistency_weight * bio(pred, real)
        return loss

    run('dm', [p for n_, p in net.named_parameters() if not n_.startswith('autoencoder.')],
        cfg.lr, dm_step)
    bar.close()

    # 4. validation and the model directory -------------------------------------------------
    net.eval()
    model = DiffusionImputer(net)
    t0 = time.perf_counter()
    metrics = validate(model, val, mask, seed=seed)
    metrics['autoencoder_psnr'] = autoencoder_psnr(model, val or train[:1], mask)
    metrics['seconds'] = round(time.perf_counter() - t0, 1)
    counts = {m: sum(m in s.images for s in sessions) for m in mods}
    losses = {k: {'first10': float(np.mean(v[:10])), 'last10': float(np.mean(v[-10:])),
                  'steps': len(v)} for k, v in meta['losses'].items() if v}
    card = {
        'name': out.name,
        'description': ('latent diffusion imputer (shared channel-wise AutoencoderKL, '
                        'DiffusionModelUNet over all modality latents, adaptive fusion, '
                        'Fourier features, clinical cross-attention)'),
        'template': {'name': TEMPLATE, 'res': res, 'shape': list(shape),
                     'affine': affine.tolist()},
        'sampler': {'default': spec.sampler, 'steps': spec.steps, 'available': list(SAMPLERS)},
        'training': {
            'n_sessions': len(sessions), 'n_subjects': len(set(train_subj) | set(val_subj)),
            'sessions_per_modality': counts,
            'split': {'by': 'subject', 'val_fraction': cfg.val_fraction,
                      'train_subjects': train_subj, 'val_subjects': val_subj,
                      'val_sessions_scored': [f'{s.subject}/{s.session}' for s in val]},
            'config': cfg.to_dict(), 'seed': seed, 'losses': losses,
            'skipped_steps': meta.get('skipped', {}),
            'seconds': {k: round(v, 1) for k, v in meta['seconds'].items()},
            'device': device if device != 'cpu' else f'cpu ({torch.get_num_threads()} threads)',
            'host': platform.machine(), 'torch': torch.__version__,
            'init_from': str(init_from) if init_from else None,
        },
        'validation': metrics,
    }
    path = model.save(out, card)
    meta.update(stage='done', step=0)
    save_state(out, net, None, gen, meta)
    clear_state(out)
    return path
