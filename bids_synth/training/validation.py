"""Validation of a model on held-out sessions: metrics per target modality and missing pattern.

:func:`validate` is the diffusion trainer's report; :func:`validate_imputer` the regression's
(and the penalty selection's, with ``psnr_only``).

In :func:`validate`, for each validation session and each target modality present in it, the target is predicted
(a) from all the session's other modalities ("leave-one-out") and (b) from a single structural
input (the first of T1w, T2w, FLAIR that is present and is not the target). Metrics
(:func:`bids_synth.metrics.score`, inside the brain mask) are averaged per target and per
pattern; a pattern is named by its inputs joined with ``+``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..metrics import score
from ..models.imputer import Imputer, SessionArrays

__all__ = ['validate', 'validate_imputer', 'validation_patterns']

_SINGLE = ('T1w', 'T2w', 'FLAIR')


def _mean(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out['n'] = len(rows)
    return out


def validate(model: Imputer, sessions: list[SessionArrays], mask: np.ndarray, *,
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
            preds = model.predict(sess, targets, seed=seed)
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


def validation_patterns(target: str, available: Sequence[str]) -> list[tuple[str, ...]]:
    """Input patterns to score a target with: all other modalities, each one alone, none."""
    others = tuple(m for m in available if m != target)
    patterns = [others] + [(m,) for m in others if len(others) > 1] + [()]
    return list(dict.fromkeys(patterns))


def validate_imputer(imputer, sessions: Sequence[SessionArrays], mask: np.ndarray,
                     modalities: Sequence[str], *, psnr_only: bool = False,
                     **predict_kwargs) -> dict:
    """Mask each target of each held-out session, predict it, score inside the brain mask.

    Returns ``{'per_target': {t: metrics}, 'per_pattern': {'t <- a+b': metrics}}`` where the
    per-target figure uses every other modality as input.
    """
    from ..metrics import psnr, score

    per_pattern: dict[str, list[dict]] = {}
    per_target: dict[str, list[dict]] = {}
    for sess in sessions:
        for target in modalities:
            if target not in sess.images:
                continue
            patterns = validation_patterns(target, [m for m in modalities
                                                    if m in sess.images])
            for pattern in patterns:
                masked = SessionArrays(sess.subject, sess.session,
                                       {m: sess.images[m] for m in pattern}, sess.clinical)
                pred = imputer.predict(masked, (target,), **predict_kwargs)[target].mean
                ref = sess.images[target]
                scores = [{'psnr': psnr(pred[c], ref[c], mask)} if psnr_only
                          else score(pred[c], ref[c], mask) for c in range(ref.shape[0])]
                merged = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
                key = f'{target} <- {"+".join(pattern) or "(none)"}'
                per_pattern.setdefault(key, []).append(merged)
                if pattern == patterns[0]:  # every other modality as input
                    per_target.setdefault(target, []).append(merged)

    def _mean(rows):
        return {**{k: float(np.mean([r[k] for r in rows])) for k in rows[0]}, 'n': len(rows)}

    return {'per_target': {k: _mean(v) for k, v in per_target.items()},
            'per_pattern': {k: _mean(v) for k, v in per_pattern.items()}}
