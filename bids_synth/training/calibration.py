"""Calibration of a trained diffusion imputer on its validation subjects.

After the networks are trained, three per-modality numbers of the model spec are chosen on the
validation subjects (never on the training subjects, whose residuals the networks have seen;
the benchmark's held-out cohort is a third set):

- :func:`choose_gates`: the fraction of the mean network's correction of the ridge that is kept
  (``ModelSpec.gate``). CorrDiff's structure promises a correction that is never worse than the
  base where the base is right; on 2 CPU cores the contrast-randomized mean network is not quite
  that on standard contrasts. Each modality is predicted from all the others, once as acquired
  and once through another scanner's contrast (:func:`~.augment.augment_inputs`); the gate is
  the one of ``GATES`` that scores best on the shifted inputs among those whose standard PSNR is
  at most ``margin`` dB below the ridge's (the gate 0).
- :func:`calibrate_std`: split conformal calibration of the residual samples' spread
  (``ModelSpec.std_scale``): mean +/- 1.645 std covers 90% of the validation voxels.
- :func:`typicality_reference`: the mean input-typicality score of the validation images
  (``ModelSpec.typicality``), the reference of the std inflation for atypical inputs.

And :func:`input_statistics`: the training cohort's voxelwise low-pass mean and std that the
typicality score is measured against.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import psnr
from ..models.imputer import SessionArrays
from ..models.synthesis import stack_images
from ..models.uncertainty import COVERAGE_Z, coarse, conformal_scale
from .augment import augment_inputs

__all__ = ['GATES', 'input_statistics', 'choose_gates', 'calibrate_std', 'typicality_reference',
           'leave_one_out']

#: candidate gates, from the ridge alone (0) to the full correction (1)
GATES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: voxels per session and modality kept for the conformal quantile
_CALIB_VOXELS = 20000


def leave_one_out(sessions: list[SessionArrays],
                  modalities) -> list[tuple[SessionArrays, str, np.ndarray]]:
    """(session with every other known modality as input, target, the target's image) for each
    present target."""
    jobs = []
    for s in sessions:
        have = [m for m in modalities if m in s.images]
        if len(have) < 2:
            continue
        for t in have:
            inputs = SessionArrays(s.subject, s.session,
                                   {m: s.images[m] for m in have if m != t}, s.clinical)
            jobs.append((inputs, t, s.images[t]))
    return jobs


@torch.no_grad()
def input_statistics(net, images: torch.Tensor, present: torch.Tensor) -> None:
    """Set ``net.input_mean`` / ``net.input_std`` from a cohort (N, C_total, X, Y, Z) with its
    presence (N, M): voxelwise over the sessions where each modality is present, on the coarse
    grid of the low-pass coefficients. The std is floored at a tenth of its median so that a
    voxel that never varies does not dominate the score."""
    spec = net.spec
    device = net.input_mean.device
    low = torch.cat([coarse(net.to_coefs(images[i:i + 1].to(device))[:, ::spec.subbands])
                     for i in range(images.shape[0])])  # (N, C_total, a, b, c)
    for j, sl in enumerate(spec.channel_slices().values()):
        rows = present[:, j].to(device)
        if int(rows.sum()) < 2:
            continue
        stack = low[rows][:, sl]
        sd = stack.std(dim=0)
        floor = (sd.flatten(1).median(dim=1).values * 0.1).clamp(min=1e-6)
        net.input_mean[sl] = stack.mean(dim=0)
        net.input_std[sl] = torch.maximum(sd, floor[:, None, None, None])


def choose_gates(model, sessions: list[SessionArrays], mask: np.ndarray, *, seed: int = 0,
                 margin: float = 0.05) -> tuple[tuple[float, ...], dict]:
    """Per modality gate and the scores behind the choice (see the module docstring).

    Modalities without a validation target keep the gate 1.
    """
    rng = np.random.default_rng([seed, 4242])
    mods = model.modalities
    csl = model.spec.channel_slices()
    scores: dict[str, dict[str, list]] = {m: {'standard': [], 'shifted': []} for m in mods}
    for sess, t, ref in leave_one_out(sessions, mods):
        for kind, inputs in (('standard', sess.images),
                             ('shifted', augment_inputs(sess.images, mask, rng, 1.0))):
            parts = model.components(inputs, sess.clinical or {})
            row = []
            for g in GATES:
                gates = tuple(g if m == t else 1.0 for m in mods)
                img = model.net.to_images(model.gated(parts['base'], parts['network'], gates))
                pred = img[0, csl[t]].float().cpu().numpy() * model.mask[None]
                row.append(float(np.mean([psnr(pred[c], ref[c], model.mask)
                                          for c in range(ref.shape[0])])))
            scores[t][kind].append(row)
    gates, report = [], {}
    for m in mods:
        std, shf = (np.asarray(scores[m][k]) for k in ('standard', 'shifted'))
        if std.size == 0:
            gates.append(1.0)
            continue
        std_mean, shf_mean = std.mean(0), shf.mean(0)
        ok = std_mean >= std_mean[0] - margin
        best = int(np.argmax(np.where(ok, shf_mean, -np.inf)))
        gates.append(GATES[best])
        report[m] = {'gate': GATES[best], 'n': int(std.shape[0]),
                     'psnr_standard': [round(float(v), 3) for v in std_mean],
                     'psnr_shifted': [round(float(v), 3) for v in shf_mean]}
    return tuple(gates), {'gates': list(GATES), 'margin_db': margin, 'per_modality': report}


def calibrate_std(model, sessions: list[SessionArrays], *, seed: int = 0,
                  num_samples: int | None = None) -> tuple[tuple[float, ...], dict]:
    """Per modality std scale (split conformal) and the coverage before it.

    The model is used as it is (its ``std_scale`` should be empty: ones). Modalities without a
    validation target keep 1.
    """
    rng = np.random.default_rng([seed, 99])
    mods = model.modalities
    ratios: dict[str, list] = {m: [] for m in mods}
    for sess, t, truth in leave_one_out(sessions, mods):
        pred = model.predict(sess, (t,), seed=seed, num_samples=num_samples)[t]
        if pred.std is None:
            continue
        m3 = np.broadcast_to(model.mask, truth.shape)
        r = np.abs(truth - pred.mean)[m3] / np.maximum(pred.std[m3], 1e-12)
        if r.size > _CALIB_VOXELS:
            r = rng.choice(r, _CALIB_VOXELS, replace=False)
        ratios[t].append(r)
    scales, report = [], {}
    for m in mods:
        if not ratios[m]:
            scales.append(1.0)
            continue
        r = np.concatenate(ratios[m])
        c = conformal_scale(r)
        scales.append(c)
        report[m] = {'std_scale': round(c, 4), 'coverage_before': round(float(
            (r <= COVERAGE_Z).mean()), 4), 'n_voxels': int(r.size)}
    return tuple(scales), report


@torch.no_grad()
def typicality_reference(model, sessions: list[SessionArrays],
                         fallback: float = 1.5) -> tuple[float, ...]:
    """Mean typicality score per modality over the sessions' images (``fallback`` for a
    modality they lack)."""
    net = model.net
    vals: dict[str, list] = {m: [] for m in model.modalities}
    for s in sessions:
        known = {m: a for m, a in s.images.items() if m in model.modalities}
        stacked, present = stack_images(known, model.spec)
        coefs = net.to_coefs(torch.from_numpy(stacked)[None].to(net.input_mean.device))
        for m, v in model.input_typicality(coefs, present).items():
            vals[m].append(v)
    return tuple(float(np.mean(vals[m])) if vals[m] else fallback for m in model.modalities)
