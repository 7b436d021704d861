"""Fitting the ridge: penalty chosen on its own split, and cross-fitted copies.

The ridge (:mod:`bids_synth.models.baseline`) is both the ``regression`` method and the base
that the diffusion model's mean network corrects. Two things keep its figures honest:

- the penalty is chosen on an *inner* split of the training subjects (never on the subjects
  whose scores fill the validation report);
- :func:`cross_fit` gives, for each training session, a ridge fitted without that session's
  subject (K folds by subject), so the mean network learns to correct the ridge as it behaves
  on unseen subjects, not its in-sample fit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from ..models.baseline import RegressionImputer
from ..models.imputer import SessionArrays
from .splits import split_subjects
from .validation import validate_imputer

__all__ = ['contrast_augmenter', 'RIDGE_GRID', 'fit_ridge', 'select_ridge', 'cross_fit']

LOG = logging.getLogger('bids_synth.training.ridge')

#: candidate penalties (correlation scale)
RIDGE_GRID = (1.0, 3.0, 10.0, 30.0)


def select_ridge(model: RegressionImputer, held_out: Sequence[SessionArrays], mask: np.ndarray,
                 modalities: Sequence[str], grid: Sequence[float] = RIDGE_GRID,
                 ) -> tuple[float, dict[str, float]]:
    """The penalty with the best mean PSNR on ``held_out``, and the whole curve.

    The model keeps sufficient statistics, so each value costs a prediction, not a refit.
    """
    curve = {}
    for lam in grid:
        model.lam = lam
        rep = validate_imputer(model, held_out, mask, modalities, psnr_only=True)
        curve[str(lam)] = float(np.mean([m['psnr'] for m in rep['per_target'].values()]))
    best = float(max(curve, key=curve.get))
    model.lam = best
    LOG.info('ridge penalty %s (inner-split PSNR by penalty: %s)', best, curve)
    return best, curve


def contrast_augmenter(mask: np.ndarray, seed: int):
    """``augment`` of :meth:`RegressionImputer.fit`: each call gives another scanner's random
    contrasts to the sMRI/PET images (:func:`.augment.augment_inputs`), reproducibly for a
    given ``seed`` and call order."""
    from .augment import augment_inputs

    rng = np.random.default_rng([seed, 5381])
    return lambda images, copy: augment_inputs(images, mask, rng, 1.0)


def fit_ridge(sessions: Sequence[SessionArrays], *, mask: np.ndarray, affine: np.ndarray,
              clinical_schema: dict, modalities: Sequence[str], template: dict | None = None,
              seed: int = 0, augment_copies: int = 0) -> RegressionImputer:
    """Fit on ``sessions`` with the penalty chosen on an inner subject split of them.

    ``info['ridge_selection']`` records the inner split and the PSNR curve. With fewer than
    four subjects the default penalty is kept. ``augment_copies``: contrast-randomized copies
    of each session's inputs (:func:`contrast_augmenter`, ``--contrast-augmentation``).
    """
    kwargs = {'mask': mask, 'affine': affine, 'clinical_schema': clinical_schema,
              'modalities': modalities, 'template': template}
    if augment_copies:
        kwargs.update(augment=contrast_augmenter(mask, seed), augment_copies=augment_copies)
    subjects = sorted({s.subject for s in sessions})
    selection: dict = {'penalty': None}
    lam = None
    if len(subjects) >= 4:
        inner_train, inner_val = split_subjects(subjects, 0.25, seed + 7)
        inner = RegressionImputer.fit([s for s in sessions if s.subject in inner_train],
                                      **kwargs)
        held = [s for s in sessions if s.subject in inner_val]
        lam, curve = select_ridge(inner, held, mask, inner.modalities)
        selection = {'penalty': lam, 'inner_train_subjects': inner_train,
                     'inner_val_subjects': inner_val, 'psnr_by_penalty': curve}
    model = RegressionImputer.fit(sessions, **kwargs, **({'ridge': lam} if lam else {}))
    model.info['ridge_selection'] = selection
    return model


def cross_fit(sessions: Sequence[SessionArrays], model: RegressionImputer, *, mask: np.ndarray,
              affine: np.ndarray, folds: int = 4, seed: int = 0) -> list[RegressionImputer]:
    """Per session, a ridge fitted (with ``model``'s penalty and schema) without its subject.

    Subjects are dealt into ``folds`` groups; sessions of one group share a ridge fitted on
    the others. Returns one model per session, in order (the same object within a fold).
    """
    subjects = sorted({s.subject for s in sessions})
    folds = max(1, min(folds, len(subjects)))
    order = np.random.default_rng(seed).permutation(len(subjects))
    fold_of = {subjects[j]: i % folds for i, j in enumerate(order)}
    if folds == 1:
        return [model] * len(sessions)
    fitted = []
    for f in range(folds):
        train = [s for s in sessions if fold_of[s.subject] != f]
        try:
            fold = RegressionImputer.fit(
                train, mask=mask, affine=affine, clinical_schema=model.schema,
                modalities=model.modalities, ridge=model.lam,
                template=model.info.get('template'))
        except DataError:
            fold = None
        if fold is None or set(fold.modalities) != set(model.modalities):
            # too few sessions of some modality without this fold: the full model stands in
            LOG.warning('cross-fitted ridge: fold %d leaves too few sessions; using the '
                        'ridge of all training subjects for it', f)
            fold = model
        fitted.append(fold)
    return [fitted[fold_of[s.subject]] for s in sessions]
