"""PDS (fMRI <-> dMRI) on held-out phantom subjects: the ridge, its refinement, an ablation.

Models, fitted as the group level fits the regression (penalty on an inner subject split) on
the embedded default's recipe cohort (24 phantom subjects, seed 2026):

- ``ridge``: stage 1 only (the ridge of :mod:`bids_synth.models.baseline`);
- ``default``: stage 1 + PDS stage 2 as ``group`` fits it (:mod:`bids_synth.models.refinement`):
  tissue refinement (TR) with pattern-aware weights;
- ``with_mr``: also microstructure refinement (MR); ``no_tr``: MR alone; ``no_pattern``: TR
  without the pattern weights (the ablation).

Scored on the held-out cohort of ``bench/quality.py`` (seed 9090), against the same subjects
rendered without acquisition noise (clean): PSNR and SSIM inside the brain mask, averaged over
the channels of the representation, for dwi from bold (PDS's direction), bold from dwi, each
with a T1w too, and each from every other modality. dwi also: FA mean absolute error and MD
relative error in white matter (template WM probability > 0.6), from the tensor as the written
maps are.

Downstream (PDS's clinical test): CN/MCI/AD accuracy of a cross-validated multinomial logistic
regression on regional dwi features (FA and MD in the regions of
``preprocessing.regions``) of a separate cohort (seed 7171, T1w + bold + dwi), with all-real dwi
and with half of the subjects' dwi synthesized from their bold and T1w and the clinical values
without the diagnosis (which would leak the label); median over random halves.

    python bench/pds.py [--heldout-subjects 3] [--dx-subjects 36]
    python bench/pds.py --recipe-subjects 48 --out bench/results/pds_recipe48.json

(the second: the same recipe with twice the training subjects, to see what data alone buys)

Prints and writes ``bench/results/pds.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DX_SEED = 7171
VARIANTS = {
    'ridge': None,
    'default': {'tissue': True, 'microstructure': False, 'pattern': True},
    'with_mr': {'tissue': True, 'microstructure': True, 'pattern': True},
    'no_tr': {'tissue': False, 'microstructure': True, 'pattern': True},
    'no_pattern': {'tissue': True, 'microstructure': False, 'pattern': False},
}


def _settings(modalities):
    out = {}
    for target, source in (('dwi', 'bold'), ('bold', 'dwi')):
        out[f'{target}<-{source}'] = (target, [source])
        out[f'{target}<-{source}+T1w'] = (target, [source, 'T1w'])
        out[f'{target}<-all'] = (target, [m for m in modalities if m != target])
    return out


def _microstructure(pred, truth, wm):
    """(FA MAE, MD relative error) in ``wm`` of the tensors of two dwi representations."""
    from bids_synth.models.refinement import _eig, _fa_md

    fa_p, md_p = _fa_md(_eig(pred, wm)[0])
    fa_t, md_t = _fa_md(_eig(truth, wm)[0])
    return float(np.abs(fa_p - fa_t).mean()), float(np.abs(md_p / md_t - 1).mean())


def _score(model, held, clean, mask, wm, settings):
    from bids_synth.metrics import psnr, ssim
    from bids_synth.models.imputer import SessionArrays

    out = {}
    for name, (target, inputs) in settings.items():
        rows = []
        for s, c in zip(held, clean):
            if target not in s.images or not all(m in s.images for m in inputs):
                continue
            sess = SessionArrays(s.subject, s.session, {m: s.images[m] for m in inputs},
                                 s.clinical)
            pred = model.predict(sess, (target,))[target].mean
            ref = c.images[target]
            row = [np.mean([psnr(pred[k], ref[k], mask) for k in range(ref.shape[0])]),
                   np.mean([ssim(pred[k], ref[k], mask) for k in range(ref.shape[0])])]
            if target == 'dwi':
                row += list(_microstructure(pred, ref, wm))
            rows.append(row)
        m = np.mean(rows, 0)
        out[name] = {'psnr': round(float(m[0]), 3), 'ssim': round(float(m[1]), 4),
                     'n': len(rows)}
        if target == 'dwi':
            out[name].update(fa_mae_wm=round(float(m[2]), 4), md_rel_err_wm=round(float(m[3]), 4))
    return out


def _regional_dwi(dwi, affine, shape, mask):
    from bids_synth.models.refinement import _eig, _fa_md
    from bids_synth.preprocessing.regions import REGIONS, region_mask

    feats = []
    for name in REGIONS:
        reg = region_mask(name, affine, shape) & mask
        if reg.any():
            fa, md = _fa_md(_eig(dwi, reg)[0])
            feats += [float(fa.mean()), float(md.mean())]
    return np.array(feats)


def _accuracy(features, labels, seed=0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    pred = cross_val_predict(clf, features, labels, cv=folds)
    return float(np.mean(pred == labels))


def _downstream(cohort, models, tpl, mask, repeats=20):
    from bids_synth.models.imputer import SessionArrays

    cohort = [s for s in cohort if s.clinical.get('diagnosis') in ('CN', 'MCI', 'AD')
              and 'dwi' in s.images and 'bold' in s.images and 'T1w' in s.images]
    labels = np.array([s.clinical['diagnosis'] for s in cohort])
    affine, shape = tpl.affine, mask.shape
    real = np.stack([_regional_dwi(s.images['dwi'], affine, shape, mask) for s in cohort])
    out = {'seed': DX_SEED, 'subjects': len(cohort),
           'per_class': {k: int((labels == k).sum()) for k in ('CN', 'MCI', 'AD')},
           'fraction_synthesized': 0.5, 'repeats': repeats,
           'accuracy_all_real': round(np.mean([_accuracy(real, labels, r)
                                               for r in range(5)]), 3),
           'accuracy_all_real_per_fold_seed': [round(_accuracy(real, labels, r), 3)
                                               for r in range(5)]}
    rng = np.random.default_rng(0)
    draws = [rng.choice(len(cohort), len(cohort) // 2, replace=False) for _ in range(repeats)]
    for name, model in models.items():
        synth = []
        for s in cohort:
            clin = {k: v for k, v in s.clinical.items() if k != 'diagnosis'}
            sess = SessionArrays(s.subject, s.session,
                                 {m: s.images[m] for m in ('bold', 'T1w')}, clin)
            synth.append(_regional_dwi(model.predict(sess, ('dwi',))['dwi'].mean, affine,
                                       shape, mask))
        synth = np.stack(synth)
        accs = []
        for r, idx in enumerate(draws):
            mixed = real.copy()
            mixed[idx] = synth[idx]
            accs.append(_accuracy(mixed, labels, r))
        out[f'accuracy_half_{name}'] = round(float(np.median(accs)), 3)
        # spread over the random halves: one subject is 1/36 = 2.8 points
        out[f'accuracy_half_{name}_percentiles_5_95'] = [
            round(float(q), 3) for q in np.percentile(accs, [5, 95])]
        out[f'accuracy_all_{name}'] = round(float(np.mean([_accuracy(synth, labels, r)
                                                           for r in range(5)])), 3)
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    from quality import add_cohort_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cohort_arguments(ap)
    ap.add_argument('--heldout-subjects', type=int, default=3)
    ap.add_argument('--dx-subjects', type=int, default=36)
    ap.add_argument('--out', type=Path, default=HERE / 'results' / 'pds.json')
    args = ap.parse_args(argv)

    from quality import HELDOUT_SEED, _cohort, training_and_heldout

    from bids_synth.bids.clinical import load_clinical
    from bids_synth.models.refinement import fit_refinement
    from bids_synth.preprocessing.templates import ensure_templateflow_home, load_template
    from bids_synth.preprocessing.tissues import template_priors
    from bids_synth.training.default_model import RECIPE
    from bids_synth.training.ridge import fit_ridge

    ensure_templateflow_home()
    t0 = time.monotonic()
    res = RECIPE['res']
    tpl = load_template(res)
    mask = tpl.mask.astype(bool)
    wm = (np.asarray(tpl.wm) > 0.6) & mask
    data = training_and_heldout(args.work, args.train_conformed, args.heldout_subjects,
                                recipe_subjects=args.recipe_subjects)
    bids, train, held, clean = data['bids'], data['train'], data['held'], data['clean']
    schema = load_clinical(bids).schema()
    modalities = [m for m in ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45', 'bold', 'dwi')
                  if any(m in s.images for s in train)]
    settings = _settings(modalities)
    t = time.monotonic()
    ridge = fit_ridge(train, mask=mask, affine=np.asarray(tpl.affine), clinical_schema=schema,
                      modalities=modalities, seed=RECIPE['seed'])
    result = {'benchmark': 'PDS refinement (issue 10)',
              'training': {'n_subjects': len({s.subject for s in train}),
                           'n_sessions': len(train), 'seed': RECIPE['phantom']['seed'],
                           'penalty': ridge.lam, 'ridge_fit_seconds':
                               round(time.monotonic() - t, 1)},
              'heldout': {'n_subjects': len(held), 'seed': HELDOUT_SEED},
              'variants': {}}
    models = {}
    priors = template_priors(tpl)
    for vname, parts in VARIANTS.items():
        t = time.monotonic()
        ridge.refinement = None if parts is None else fit_refinement(
            ridge, train, priors=priors, seed=RECIPE['seed'], **parts)
        fit_s = round(time.monotonic() - t, 1)
        scores = _score(ridge, held, clean, mask, wm, settings)
        result['variants'][vname] = {'parts': parts, 'fit_seconds': fit_s, 'scores': scores}
        print(vname, json.dumps(scores), flush=True)
        if vname in ('ridge', 'default', 'with_mr'):
            models[vname] = copy.copy(ridge)  # keeps this variant's refinement
    base = result['variants']['ridge']['scores']
    result['gain_over_ridge_db'] = {
        v: {k: round(r['scores'][k]['psnr'] - base[k]['psnr'], 3) for k in base}
        for v, r in result['variants'].items() if v != 'ridge'}
    _, dx_cohort = _cohort(args.work, f'dx{args.dx_subjects}', res, n_subjects=args.dx_subjects,
                           seed=DX_SEED, resolution='low', modalities=('T1w', 'bold', 'dwi'))
    result['downstream'] = _downstream(dx_cohort, models, tpl, mask)
    print(json.dumps(result['gain_over_ridge_db'], indent=1))
    print(json.dumps(result['downstream'], indent=1))
    result['machine'] = {'cpus': os.cpu_count(), 'platform': platform.platform()}
    result['wall_seconds'] = round(time.monotonic() - t0, 1)
    result['date'] = time.strftime('%Y-%m-%d')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + '\n')
    print(f'written {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
