"""Training of the diffusion imputer (``bids_synth /data /out group``).

0. The ridge base: fitted on the training subjects, its penalty chosen on an inner split
   (:func:`.ridge.fit_ridge`), plus cross-fitted copies (:func:`.ridge.cross_fit`) so that every
   training session gets a ridge prediction from a model that never saw its subject.

Then three stages, each resumable from ``<out_dir>/.train_state`` (saved every
``checkpoint_every`` steps):

1. ``ssl``: self-supervised pretraining of the fusion encoder (AMM-Diff: cosine similarity
   between the fused embedding of a randomly masked input set and that of all present inputs).
2. ``mean``: the mean network, end to end with fusion and clinical encoder: random non-empty
   subsets of the present modalities are the inputs, half the samples with random contrasts
   (:mod:`.augment`), the ridge base is computed from those inputs, and the loss is MSE + L1 of
   the wavelet coefficients of every present modality (hidden ones weigh 1, inputs
   ``recon_weight``) plus the biomarker consistency loss on the hidden ones.
   Then the residual map and scales (:mod:`bids_synth.models.uncertainty`: the spatial pattern
   and the root-mean-square per coefficient channel of the mean network's residual on training
   batches).
3. ``flow``: the residual flow (mean network frozen), preconditioned rectified-flow loss on the
   scaled residual of the same kind of batches.

Then calibration on validation subjects (:mod:`.calibration`: the gate of the mean network's
correction, the conformal std scale and the typicality reference), validation on held-out
subjects (the model and its own ridge on the same sessions) and the model directory
(``model.safetensors`` + ``model_card.json``) in ``out_dir``.
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
from tqdm.auto import tqdm

from ..bids.modalities import MODALITIES, resolve_modalities
from ..errors import DataError, ModelError
from ..models.checkpoint import sha256_file
from ..models.conditioning import validate_schema
from ..models.config import ModelSpec
from ..models.consistency import BiomarkerLoss
from ..models.fusion import masked_consistency_loss
from ..models.imputer import SessionArrays
from ..models.mean_network import availability_channels
from ..models.sampler import SAMPLERS, rflow_train_pair
from ..models.synthesis import DiffusionImputer, SynthesisNet, stack_images
from ..preprocessing.templates import TEMPLATE, model_grid
from ..models.uncertainty import coarse
from .augment import augment_inputs
from .calibration import calibrate_std, choose_gates, input_statistics, typicality_reference
from .config import TrainConfig, get_config
from .data import build_cohort, channel_scales, random_inputs
from .ridge import cross_fit, fit_ridge
from .splits import split_subjects
from .state import clear_state, load_state, restore, save_state
from .validation import validate

__all__ = ['train_diffusion', 'DEFAULT_RES']

#: Model-grid resolution (mm) of the default recipe: 48x56x48 (coefficients 24x28x24).
DEFAULT_RES = 4

LOG = logging.getLogger('bids_synth.training.diffusion')
STAGES = ('ssl', 'mean', 'flow')
#: consecutive non-finite training steps that stop a run
MAX_BAD_STEPS = 10


def _load_base(init_from: str | Path, mods: tuple[str, ...], res: int) -> DiffusionImputer:
    base = DiffusionImputer.load(init_from)
    if base.modalities != tuple(mods) or base.spec.res != res:
        raise ModelError(f'{init_from}: cannot fine-tune a model of {list(base.modalities)} at '
                         f'res {base.spec.res} for {list(mods)} at res {res}')
    return base


def _refit_ridge(ridge, sessions, train, mask, affine):
    """``ridge`` refitted on all ``sessions`` (same penalty); ``ridge`` itself when there are
    no other sessions or a modality could not be fitted."""
    from ..models.baseline import RegressionImputer

    if len(sessions) == len(train):
        return ridge
    try:
        full = RegressionImputer.fit(sessions, mask=mask, affine=affine,
                                     clinical_schema=ridge.schema, modalities=ridge.modalities,
                                     ridge=ridge.lam, template=ridge.info.get('template'))
    except DataError:
        return ridge
    if set(full.modalities) != set(ridge.modalities):
        return ridge
    full.info['ridge_selection'] = ridge.info.get('ridge_selection')
    full.info['refit'] = ('on every subject after validation; the penalty was chosen on the '
                          'training subjects')
    return full


def _set_spec(net, model, spec: ModelSpec) -> None:
    net.spec = net.mean.spec = net.flow.spec = model.spec = spec


@torch.no_grad()
def _residual_statistics(net, spec: ModelSpec, mask: np.ndarray, batch_of, mean_forward,
                         meta: dict, n_batches: int) -> None:
    """The residual map (``net.resid_map``) and the per coefficient channel scales
    (``meta['residual_scale']``) of the mean network's residual of hidden modalities.

    Two passes of ``n_batches // 2`` training batches: the first gives the map (per image
    channel on the coarse grid, the mean over its sub-bands of each one's energy relative to its
    mean square; mean square 1 in the brain, floored at a tenth of its median, and the median
    outside the brain so that the interpolation to the coefficient grid does not shrink it at
    the brain's edge), the second the root-mean-square of the residual divided by that map.
    """
    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    cmask = coarse(m)[0, 0] >= 0.5        # coefficient grid
    gmask = coarse(coarse(m))[0, 0] >= 0.5  # coarse grid
    w, sb = spec.coef_channels_total, spec.subbands
    sq, cnt = torch.zeros(w), torch.zeros(w)
    energy = torch.zeros(w, *gmask.shape)
    half = max(1, n_batches // 2)
    for k in range(half):
        b = batch_of(k)
        r2 = ((mean_forward(b, 0.0) - b['target']) ** 2).cpu()  # (B, W, x, y, z)
        hid = availability_channels(spec, b['hidden'].cpu())  # (B, W)
        sq += (r2[..., cmask].mean(-1) * hid).sum(0)
        energy += (coarse(r2) * hid[..., None, None, None]).sum(0)
        cnt += hid.sum(0)
    have = cnt > 0
    ms = torch.where(have, sq / cnt.clamp(min=1), torch.ones_like(sq))
    rel = energy / (cnt.clamp(min=1) * ms)[:, None, None, None]
    rel = rel.reshape(spec.total_channels, sb, *gmask.shape).mean(1)
    maps = torch.ones(spec.total_channels, *gmask.shape)
    for c in range(spec.total_channels):
        if not bool(have[c * sb:(c + 1) * sb].all()):
            continue
        mc = rel[c].sqrt()
        mc = mc / mc[gmask].pow(2).mean().sqrt().clamp(min=1e-8)
        med = float(mc[gmask].median())
        maps[c] = torch.where(gmask, mc.clamp(min=0.1 * med), torch.full_like(mc, med))
    net.resid_map.copy_(maps.to(net.resid_map.device))
    sq, cnt = torch.zeros(w), torch.zeros(w)
    for k in range(half, 2 * half):
        b = batch_of(k)
        r = mean_forward(b, 0.0) - b['target']
        r2 = (r / net.residual_map(r)).pow(2).cpu()
        hid = availability_channels(spec, b['hidden'].cpu())
        sq += (r2[..., cmask].mean(-1) * hid).sum(0)
        cnt += hid.sum(0)
    rms = torch.where(cnt > 0, (sq / cnt.clamp(min=1)).sqrt(), ms.sqrt())
    meta['residual_scale'] = [max(float(v), 1e-4) for v in rms]


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
        Brain mask of the grid (ridge, augmentation scales, biomarker regions, metrics).
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
        Seeds the split, batches, masks, augmentations and noise.
    init_from : path, optional
        A diffusion model to fine-tune: its architecture and intensity scales are kept, its
        networks are the starting point, the ridge base is refitted on ``sessions``, and the
        ``ssl`` stage is skipped.
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
    affine, shape = model_grid(res)
    schema = validate_schema(clinical_schema or {})
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(shape):
        raise DataError(f'brain mask has shape {mask.shape}, the res-{res} grid is {shape}')
    if not sessions:
        raise DataError('no sessions to train on')
    train_subj, val_subj = split_subjects([s.subject for s in sessions], cfg.val_fraction, seed)
    train = [s for s in sessions if s.subject in set(train_subj)]
    if not train:
        raise DataError('no training sessions after the subject split')

    # 0. the ridge base ------------------------------------------------------------------------
    t_ridge = time.perf_counter()
    tpl_info = {'name': TEMPLATE, 'res': res, 'shape': list(shape), 'affine': affine.tolist()}
    ridge = fit_ridge(train, mask=mask, affine=affine, clinical_schema=schema,
                      modalities=resolve_modalities(modalities), template=tpl_info, seed=seed)
    mods = tuple(ridge.modalities)  # those with at least two training sessions
    fold_ridges = cross_fit(train, ridge, mask=mask, affine=affine, folds=cfg.ridge_folds,
                            seed=seed)
    ridge_seconds = time.perf_counter() - t_ridge
    val_all = [s for s in sessions if s.subject in set(val_subj)
               and sum(m in s.images for m in mods) >= 2]
    pick = torch.randperm(len(val_all), generator=torch.Generator().manual_seed(seed + 1))
    val = [val_all[i] for i in sorted(pick[:cfg.val_max_sessions].tolist())]

    spec = ModelSpec(modalities=mods, channels=tuple(MODALITIES[m].n_channels for m in mods),
                     res=res, shape=shape, **cfg.model)
    steps = dict(zip(STAGES, (cfg.ssl_steps, cfg.mean_steps, cfg.flow_steps)))
    base = None
    if init_from is not None:
        base = _load_base(init_from, mods, res)
        spec = base.spec
        steps['ssl'] = 0
    cohort = build_cohort(train, spec, schema)
    if base is None:  # a fine-tuned model keeps its base's intensity scales
        spec = spec.with_(channel_scale=channel_scales(cohort, spec, mask))
    torch.manual_seed(seed)  # network initialization
    net = SynthesisNet(spec, schema).to(device)
    input_statistics(net, cohort.images, cohort.present)
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
                  'fingerprint': fingerprint}
    card_file = out / 'model_card.json'
    record = out / '.train_state' / 'state.json'
    if resume and card_file.is_file() and record.is_file():
        old = json.loads(record.read_text())
        if old.get('stage') == 'done' and old.get('fingerprint') == fingerprint:
            LOG.info('%s: training already finished with this setup', out)
            return out
    gen = torch.Generator().manual_seed(seed)
    state = load_state(out) if resume else None
    if state is not None and state[0].get('fingerprint') == fingerprint:
        meta, _ = state
        if meta.get('residual_scale'):
            net.spec = spec = spec.with_(residual_scale=tuple(meta['residual_scale']))
        LOG.info('resuming training at stage %s step %d', meta['stage'], meta['step'])
    elif state is not None:
        LOG.warning('%s: ignoring a training state made with another setup', out)
        state = None
    net.spec = net.mean.spec = net.flow.spec = spec
    model = DiffusionImputer(net, ridge)
    bio = BiomarkerLoss(affine, shape, mask).to(device)

    done = sum(steps[s] for s in STAGES[:STAGES.index(meta['stage'])] if meta['stage'] in STAGES)
    bar = tqdm(total=sum(steps.values()), initial=done + meta['step'], unit='step',
               disable=not (progress and sys.stderr.isatty()), desc='train')
    bad: dict[str, int] = {}

    def run(stage: str, params: list, lr: float, step_fn: Callable[[int], torch.Tensor]) -> None:
        nonlocal state
        if meta['stage'] == 'done' or STAGES.index(meta['stage']) > STAGES.index(stage):
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
            loss = step_fn(step)
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

    n = len(cohort)
    reps = torch.tensor([c * spec.subbands for c in spec.channels])

    def batch(stage: str, step: int) -> dict:
        """Random sessions, input subsets (contrast-randomized), ridge bases, as tensors."""
        idx = torch.randint(n, (cfg.batch_size,), generator=gen)
        present = cohort.present[idx]
        keep = random_inputs(present, gen)
        rng = np.random.default_rng([seed, (*STAGES, 'scale').index(stage), step])
        ins, bases = [], []
        for i, j in enumerate(idx.tolist()):
            s = train[j]
            inputs = {m: s.images[m] for k, m in enumerate(mods) if keep[i, k]}
            inputs = augment_inputs(inputs, mask, rng, cfg.augment_prob)
            bases.append(model.base(inputs, s.clinical or {}, ridge=fold_ridges[j]))
            ins.append(stack_images(inputs, spec)[0])
        images = torch.from_numpy(np.stack(ins)).to(device)
        with torch.no_grad():
            coefs = net.to_coefs(images)
            base_c = net.to_coefs(torch.from_numpy(np.stack(bases)).to(device))
            target_c = net.to_coefs(cohort.images[idx].to(device))
            freq = net.frequency(images)
        hidden = present & ~keep
        weight = hidden.float() + cfg.recon_weight * keep.float()  # (B, M)
        w = torch.repeat_interleave(weight, reps, dim=1).to(device)[..., None, None, None]
        return {'idx': idx, 'present': present, 'keep': keep.to(device), 'hidden': hidden,
                'coefs': coefs, 'base': base_c, 'target': target_c, 'freq': freq, 'w': w,
                'clinical': cohort.clinical.index(idx).to(device)}

    def weighted(err: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (err * w).sum() / (w.sum().clamp(min=1e-8) * err[0, 0].numel())

    # 1. self-supervised fusion pretraining -------------------------------------------------
    def ssl_step(step: int) -> torch.Tensor:
        idx = torch.randint(n, (cfg.batch_size,), generator=gen)
        present = cohort.present[idx]
        keep = random_inputs(present, gen)
        images = cohort.images[idx].to(device)
        ctx = net.mean.clinical(cohort.clinical.index(idx).to(device), cfg.clinical_drop, gen)
        return masked_consistency_loss(net.mean.fusion, net.to_coefs(images),
                                       net.frequency(images), present.to(device),
                                       keep.to(device), ctx)

    run('ssl', list(net.mean.fusion.parameters()) + list(net.mean.clinical.parameters()),
        cfg.mean_lr, ssl_step)

    # 2. the mean network ---------------------------------------------------------------------
    def mean_forward(b: dict, drop: float) -> torch.Tensor:
        return net.mean(b['coefs'], b['base'], b['freq'], b['keep'], b['clinical'], drop, gen)[0]

    def mean_step(step: int) -> torch.Tensor:
        b = batch('mean', step)
        pred = mean_forward(b, cfg.clinical_drop)
        err = pred - b['target']
        loss = weighted(err ** 2 + cfg.l1_weight * err.abs(), b['w'])
        if cfg.consistency_weight > 0 and bool(b['hidden'].any()):
            chan = torch.repeat_interleave(b['hidden'].float(),
                                           torch.tensor(spec.channels), dim=1).to(device)
            loss = loss + cfg.consistency_weight * bio(
                net.to_images(pred), cohort.images[b['idx']].to(device), chan > 0)
        return loss

    run('mean', list(net.mean.parameters()), cfg.mean_lr, mean_step)
    net.mean.requires_grad_(False).eval()
    if state is not None:  # resumed after the mean stage: weights come from the state
        restore(net, None, gen, meta, state[1])
        state_tensors = state[1]
    else:
        state_tensors = None
    if not meta.get('residual_scale'):
        _residual_statistics(net, spec, mask, lambda k: batch('scale', k), mean_forward, meta,
                             cfg.residual_batches)
    net.spec = net.mean.spec = net.flow.spec = spec = spec.with_(
        residual_scale=tuple(meta['residual_scale']))
    model.spec = spec
    if state_tensors is not None:
        state = (meta, state_tensors)

    # 3. the residual flow --------------------------------------------------------------------
    brain_c = (coarse(torch.from_numpy(mask.astype(np.float32))[None, None]) >= 0.5).float()
    brain_c = brain_c.to(device)
    def flow_step(step: int) -> torch.Tensor:
        b = batch('flow', step)
        with torch.no_grad():  # the mean as prediction computes it: every clinical value
            mean_c = mean_forward(b, 0.0)
            r0 = (b['target'] - mean_c) / net.residual_scale(mean_c)
        t = (torch.rand((r0.shape[0],), generator=gen) * spec.num_train_timesteps).clamp(min=1.0)
        noise = torch.randn(r0.shape, generator=gen).to(device)
        r_t = rflow_train_pair(r0, noise, t.to(device), spec.num_train_timesteps)
        err = net.flow.loss(r0, r_t, t.to(device),
                            net.flow.condition(mean_c, b['coefs'], b['keep']))
        wm = (b['w'] * brain_c).expand_as(err)  # inside the brain: samples are masked there
        return (err * wm).sum() / wm.sum().clamp(min=1e-8)

    run('flow', list(net.flow.parameters()), cfg.flow_lr, flow_step)
    bar.close()

    # 4. calibration, validation and the model directory --------------------------------------
    net.eval()
    t0 = time.perf_counter()
    calibration = {}
    calib = [val_all[i] for i in sorted(pick[:cfg.calib_max_sessions].tolist())]
    if calib:
        gates, calibration['gate'] = choose_gates(model, calib, mask, seed=seed,
                                                  margin=cfg.gate_margin)
        _set_spec(net, model, spec.with_(gate=gates))
        scales, calibration['std_scale'] = calibrate_std(model, calib, seed=seed)
        _set_spec(net, model, model.spec.with_(std_scale=scales))
        _set_spec(net, model, model.spec.with_(typicality=typicality_reference(model, calib)))
        calibration['sessions'] = [f'{s.subject}/{s.session}' for s in calib]
    calibration['seconds'] = round(time.perf_counter() - t0, 1)
    spec = model.spec
    t0 = time.perf_counter()
    metrics = validate(model, val, mask, seed=seed)
    metrics['ridge'] = validate(ridge, val, mask, seed=seed)
    metrics['seconds'] = round(time.perf_counter() - t0, 1)
    # the written model's ridge base is refitted on every subject (with the penalty chosen on
    # the training subjects), as the regression method's final fit is: the validation above
    # scored the training-only ridge, so it stays honest
    model.ridge = _refit_ridge(ridge, sessions, train, mask, affine)
    counts = {m: sum(m in s.images for s in sessions) for m in mods}
    losses = {k: {'first10': float(np.mean(v[:10])), 'last10': float(np.mean(v[-10:])),
                  'steps': len(v)} for k, v in meta['losses'].items() if v}
    seconds = {k: round(v, 1) for k, v in meta['seconds'].items()}
    seconds['ridge'] = round(ridge_seconds, 1)
    card = {
        'name': out.name,
        'description': ('diffusion imputer: ridge base, wavelet-space mean network '
                        '(DiffusionModelUNet correction with adaptive fusion, Fourier features, '
                        'clinical and notes cross-attention) and a residual rectified flow'),
        'template': tpl_info,
        'sampler': {'default': spec.sampler, 'steps': spec.steps,
                    'num_samples': spec.num_samples, 'available': list(SAMPLERS)},
        'training': {
            'n_sessions': len(sessions), 'n_subjects': len(set(train_subj) | set(val_subj)),
            'sessions_per_modality': counts,
            'split': {'by': 'subject', 'val_fraction': cfg.val_fraction,
                      'train_subjects': train_subj, 'val_subjects': val_subj,
                      'val_sessions_scored': [f'{s.subject}/{s.session}' for s in val]},
            'config': cfg.to_dict(), 'seed': seed, 'losses': losses,
            'skipped_steps': meta.get('skipped', {}), 'seconds': seconds,
            'device': device if device != 'cpu' else f'cpu ({torch.get_num_threads()} threads)',
            'host': platform.machine(), 'torch': torch.__version__,
            'init_from': str(init_from) if init_from else None,
        },
        'validation': metrics,
        'calibration': calibration,
    }
    path = model.save(out, card)
    meta.update(stage='done', step=0)
    save_state(out, net, None, gen, meta)
    clear_state(out)
    return path
