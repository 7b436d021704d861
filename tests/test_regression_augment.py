"""Contrast augmentation of the ridge (``--contrast-augmentation``): moments of inputs from
other scanners (training.augment's random contrast curves, bias fields, noise and blur) against
the sessions' own targets."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from bids_synth.models.baseline import RegressionImputer
from bids_synth.models.imputer import SessionArrays
from bids_synth.training.augment import augment_inputs
from bids_synth.training.ridge import contrast_augmenter

SHAPE = (12, 12, 12)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
MASK = np.ones(SHAPE, bool)


def _cohort(n, seed):
    """T1w and T2w linear in a smooth tissue fraction, with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = np.clip(gaussian_filter(rng.uniform(0, 1, SHAPE), 1.0) * 3 - 1, 0, 1)
        t1 = 1.0 - 0.5 * t + rng.normal(0, 0.03, SHAPE)
        t2 = 0.3 + 0.6 * t + rng.normal(0, 0.03, SHAPE)
        out.append(SessionArrays(f'{i:02d}', None, {'T1w': t1[None].astype(np.float32),
                                                    'T2w': t2[None].astype(np.float32)}))
    return out


def _fit(sessions, copies):
    return RegressionImputer.fit(
        sessions, mask=MASK, affine=AFFINE, clinical_schema={}, modalities=('T1w', 'T2w'),
        ridge=0.1, augment=contrast_augmenter(MASK, 0) if copies else None,
        augment_copies=copies)


def _rmse(model, sessions, new_scanner: bool):
    rng = np.random.default_rng(9)
    err = []
    for s in sessions:
        inputs = {'T1w': s.images['T1w']}
        if new_scanner:
            inputs = augment_inputs(inputs, MASK, rng, 1.0)
        pred = model.predict(SessionArrays(s.subject, None, inputs), ('T2w',))['T2w'].mean
        err.append(np.sqrt(np.mean((pred - s.images['T2w']) ** 2)))
    return float(np.mean(err))


def test_augmented_ridge_holds_under_another_contrast():
    train, test = _cohort(16, 0), _cohort(6, 1)
    plain, augmented = _fit(train, 0), _fit(train, 2)
    assert augmented.info['augment_copies'] == 2 and plain.info['augment_copies'] == 0
    assert augmented.card()['architecture']['contrast_augmentation'] == 2
    # another scanner's T1w: the plain ridge's error triples, the augmented one's does not
    assert _rmse(plain, test, True) > 2 * _rmse(plain, test, False)
    assert _rmse(augmented, test, True) < 0.8 * _rmse(plain, test, True)
    assert _rmse(augmented, test, True) < 1.25 * _rmse(augmented, test, False)


def test_no_copies_is_the_plain_fit():
    train = _cohort(6, 2)
    a = _fit(train, 0)
    b = RegressionImputer.fit(train, mask=MASK, affine=AFFINE, clinical_schema={},
                              modalities=('T1w', 'T2w'), ridge=0.1,
                              augment=lambda images, k: {m: 2 * v for m, v in images.items()},
                              augment_copies=0)
    np.testing.assert_array_equal(a.zz, b.zz)
    np.testing.assert_array_equal(a.zy, b.zy)
