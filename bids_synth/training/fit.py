"""Group level: fit a model on conformed sessions (dispatch by method), with validation.

The regression baseline is validated here on held-out subjects (a split by subject), then
refitted on every subject; the diffusion trainer (``training.diffusion``) validates itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..bids.modalities import MODALITIES
from ..models.imputer import SessionArrays

__all__ = ['fit_model', 'sessions_from_files', 'split_by_subject', 'validate_imputer',
           'validation_patterns']

LOGGER = logging.getLogger('bids_synth.training')


def sessions_from_files(files, modalities, keys, clinical) -> list[SessionArrays]:
    """Group conformed files (one per modality and session) into :class:`SessionArrays`."""
    from ..preprocessing.conform import load_conformed

    by_key: dict[str, dict] = {}
    for path, mod, key in zip(files, modalities, keys):
        by_key.setdefault(key, {})[mod] = load_conformed(path)
    out = []
    for key in sorted(by_key):
        sub, _, ses = key.partition('/')
        out.append(SessionArrays(sub, ses or None, by_key[key], dict(clinical.get(key, {}))))
    return out


def split_by_subject(sessions: Sequence[SessionArrays], val_fraction: float = 0.2,
                     seed: int = 0) -> tuple[list[str], list[str]]:
    """Subjects for training and validation (at least one each when there are two or more).

    >>> s = [SessionArrays(str(i), None, {}) for i in range(10)]
    >>> tr, va = split_by_subject(s, 0.2, seed=1)
    >>> len(tr), len(va), set(tr) & set(va)
    (8, 2, set())
    """
    subjects = sorted({s.subject for s in sessions})
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(subjects))
    n_val = int(round(len(subjects) * val_fraction))
    n_val = min(max(n_val, 1 if len(subjects) >= 2 else 0), len(subjects) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


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


RIDGE_GRID = (1.0, 3.0, 10.0, 30.0)


def select_ridge(model, held_out, mask, modalities, grid=RIDGE_GRID) -> tuple[float, dict]:
    """The ridge penalty (correlation scale) with the best mean held-out PSNR.

    The model keeps sufficient statistics, so each value costs a prediction, not a refit.
    Returns the value and the validation report at that value (with the whole curve).
    """
    curve = {}
    for lam in grid:
        model.lam = lam
        rep = validate_imputer(model, held_out, mask, modalities, psnr_only=True)
        curve[lam] = float(np.mean([m['psnr'] for m in rep['per_target'].values()]))
    best = max(curve, key=curve.get)
    LOGGER.info('regression ridge: %s (held-out PSNR by ridge: %s)', best, curve)
    model.lam = best
    report = validate_imputer(model, held_out, mask, modalities)
    return best, dict(report, ridge_curve={str(k): v for k, v in curve.items()}, ridge=best)


def fit_model(sessions, *, method, modalities, clinical_schema, out_dir, res, seed=0,
              train_steps=0, init_from=None, device='auto') -> Path:
    """Fit ``method`` on ``sessions`` and save it to ``out_dir``; return the model folder."""
    from ..preprocessing.templates import load_template

    template = load_template(res)
    mask = template.mask.astype(bool)
    tpl_info = {'name': template.name, 'res': res, 'shape': list(template.shape),
                'affine': np.asarray(template.affine).tolist()}
    modalities = [m for m in modalities if any(m in s.images for s in sessions)]
    if method == 'regression':
        from ..models.baseline import RegressionImputer

        complete = [s for s in sessions if any(m in s.images for m in modalities)]
        train_sub, val_sub = split_by_subject(complete, seed=seed)
        kwargs = {'mask': mask, 'affine': np.asarray(template.affine),
                  'clinical_schema': clinical_schema, 'modalities': modalities,
                  'template': tpl_info}
        validation = {}
        if val_sub:
            model = RegressionImputer.fit([s for s in complete if s.subject in train_sub],
                                          **kwargs)
            held_out = [s for s in complete if s.subject in val_sub]
            kwargs['ridge'], validation = select_ridge(model, held_out, mask, modalities)
            validation['split'] = {'train_subjects': train_sub, 'validation_subjects': val_sub}
        model = RegressionImputer.fit(complete, **kwargs)
        model.info['validation'] = validation
        return model.save(out_dir)
    from .diffusion import train_diffusion

    config = {'dm_steps': train_steps} if train_steps else None
    return Path(train_diffusion(
        sessions, mask=mask, clinical_schema=clinical_schema, out_dir=out_dir,
        modalities=[m for m in modalities if m in MODALITIES], res=res, config=config,
        seed=seed, init_from=init_from, progress=True, device=device,
    ))
