"""Validation of a diffusion model: metrics per target modality and per missing pattern.

For each validation session and each target modality present in it, the target is predicted
(a) from all the session's other modalities ("leave-one-out") and (b) from a single structural
input (the first of T1w, T2w, FLAIR that is present and is not the target). Metrics
(:func:`bids_synth.metrics.score`, inside the brain mask) are averaged per target and per
pattern; a pattern is named by its inputs joined with ``+``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..metrics import score
from ..models.imputer import SessionArrays
from ..models.synthesis import DiffusionImputer

__all__ = ['validate', 'autoencoder_psnr']

_SINGLE = ('T1w', 'T2w', 'FLAIR')


def _mean(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out['n'] = len(rows)
    return out


def validate(model: DiffusionImputer, sessions: list[SessionArrays], mask: np.ndarray, *,
             seed: int = 0) -> dict:
    """Validation metrics.

    Returns
    -------
    dict
        ``{'per_target': {t: {psnr, ssim, mae, n}}, 'per_pattern': {t: {pattern: {...}}},
        'sessions': n}`` (empty dicts without validation sessions).
    """
    per_t: dict[str, list] = defaultdict(list)
    per_p: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for s in sessions:
        have = [m for m in model.modalities if m in s.images]
        if len(have) < 2:
            continue
        jobs: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
            (tuple(x for x in have if x != t), (t,)) for t in have]
        single = next((m for m in _SINGLE if m in have), None)
        if single is not None and len(have) > 2:
            jobs.append(((single,), tuple(x for x in have if x != single)))
        for inputs, targets in jobs:
            sess = SessionArrays(s.subject, s.session, {m: s.images[m] for m in inputs},
                                 s.clinical)
            preds = model.predict(sess, targets, seed=seed, num_samples=1)
            pattern = '+'.join(inputs)
            for t in targets:
                sc = score(preds[t].mean, s.images[t], mask)
                per_t[t].append(sc)
                per_p[t][pattern].append(sc)
    return {
        'per_target': {t: _mean(v) for t, v in per_t.items()},
        'per_pattern': {t: {p: _mean(v) for p, v in d.items()} for t, d in per_p.items()},
        'sessions': len(sessions),
    }


@torch.no_grad()
def autoencoder_psnr(model: DiffusionImputer, sessions: list[SessionArrays],
                     mask: np.ndarray) -> dict[str, float]:
    """Reconstruction PSNR (dB, in mask) of the autoencoder per modality on ``sessions``."""
    net, spec = model.net, model.spec
    out: dict[str, list[float]] = defaultdict(list)
    for s in sessions:
        for m in spec.modalities:
            if m not in s.images:
                continue
            x = torch.from_numpy(np.asarray(s.images[m], np.float32))[None]
            sl = spec.channel_slices()[m]
            rec = net.decode(net.encode(x, sl), sl)[0].numpy()
            out[m].append(score(rec, s.images[m], mask)['psnr'])
    return {m: float(np.mean(v)) for m, v in out.items()}
