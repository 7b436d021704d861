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

__all__ = ['fit_model', 'fit_clinical_head', 'sessions_from_files', 'split_by_subject']

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


def recipe(train_config='', train_steps=0):
    """The diffusion training config: a preset name or a JSON file of overrides of the default
    recipe (``train_config``), with ``train_steps`` (``--train-steps``) on top."""
    import json

    from .config import PRESETS, get_config

    if train_config in PRESETS or not train_config:
        cfg = get_config(train_config or None)
    else:
        cfg = get_config(json.loads(Path(train_config).read_text()))
    return cfg.with_steps(train_steps) if train_steps else cfg


def fit_model(sessions, *, method, modalities, clinical_schema, out_dir, res, seed=0,
              train_steps=0, train_config='', init_from=None, device='auto',
              contrast_augmentation=0, pds_refinement=True) -> Path:
    """Fit ``method`` on ``sessions`` and save it to ``out_dir``; return the model folder.

    ``contrast_augmentation`` (regression): contrast-randomized copies of each session's
    sMRI/PET inputs in the ridge's moments (:func:`.ridge.contrast_augmenter`).
    ``pds_refinement`` (regression): fit PDS's second stage for bold/dwi targets
    (:func:`bids_synth.models.refinement.fit_refinement`), for the validated model too, so the
    validation scores what is shipped.
    """
    from ..preprocessing.templates import load_template

    template = load_template(res)
    mask = template.mask.astype(bool)
    tpl_info = {'name': template.name, 'res': res, 'shape': list(template.shape),
                'affine': np.asarray(template.affine).tolist()}
    modalities = [m for m in modalities if any(m in s.images for s in sessions)]
    if method == 'regression':
        from ..models.baseline import RegressionImputer
        from .ridge import contrast_augmenter, fit_ridge
        from .validation import validate_imputer

        complete = [s for s in sessions if any(m in s.images for m in modalities)]
        train_sub, val_sub = split_by_subject(complete, seed=seed)
        kwargs = {'mask': mask, 'affine': np.asarray(template.affine),
                  'clinical_schema': clinical_schema, 'modalities': modalities,
                  'template': tpl_info}
        validation: dict = {}
        if val_sub:
            # penalty chosen on an inner split of the training subjects; the validation
            # subjects only score the result
            train = [s for s in complete if s.subject in train_sub]
            model = fit_ridge(train, seed=seed, augment_copies=contrast_augmentation, **kwargs)
            if pds_refinement:
                model.refinement = _refinement(model, train, template, seed)
            held_out = [s for s in complete if s.subject in val_sub]
            validation = validate_imputer(model, held_out, mask, model.modalities)
            validation.update(ridge=model.lam, ridge_selection=model.info['ridge_selection'],
                              split={'train_subjects': train_sub,
                                     'validation_subjects': val_sub})
            kwargs['ridge'] = model.lam
        if contrast_augmentation:
            kwargs.update(augment=contrast_augmenter(mask, seed),
                          augment_copies=contrast_augmentation)
        model = RegressionImputer.fit(complete, **kwargs)
        model.info['validation'] = validation
        if pds_refinement:
            model.refinement = _refinement(model, complete, template, seed)
        path = model.save(out_dir)
        fit_clinical_head(model, sessions, clinical_schema, path, res=res, seed=seed)
        return path
    from .diffusion import train_diffusion

    if contrast_augmentation:
        LOGGER.warning('--contrast-augmentation applies to the regression; the diffusion recipe '
                    'randomizes its network inputs itself (augment_prob in --train-config)')
    config = recipe(train_config, train_steps)
    path = Path(train_diffusion(
        sessions, mask=mask, clinical_schema=clinical_schema, out_dir=out_dir,
        modalities=[m for m in modalities if m in MODALITIES], res=res, config=config,
        seed=seed, init_from=init_from, progress=True, device=device,
    ))
    from ..models.loading import load_imputer

    fit_clinical_head(load_imputer(path), sessions, clinical_schema, path, res=res, seed=seed)
    return path


def _refinement(model, sessions, template, seed):
    """PDS stage 2 of a fitted ridge (None without bold/dwi or with too few sessions)."""
    from ..models.refinement import PDS_TARGETS, fit_refinement
    from ..preprocessing.tissues import template_priors

    if not any(t in model.modalities for t in PDS_TARGETS):
        return None
    LOGGER.info('fitting PDS stage 2 (tissue refinement, pattern weights) for %s',
                ', '.join(t for t in PDS_TARGETS if t in model.modalities))
    return fit_refinement(model, sessions, priors=template_priors(template), seed=seed)


def fit_clinical_head(imputer, sessions, clinical_schema, model_dir, *, res, seed=0):
    """Fit the tabular part (clinical imputation head, row generator) of a fitted model and
    store it in its folder (``models.tabular``)."""
    from ..models.tabular import fit_tabular

    tab = fit_tabular(imputer, sessions, clinical_schema, res, seed=seed, progress=True)
    tab.save(model_dir)
    return tab
