"""Imputation quality on held-out phantom cohorts: the diffusion model vs the ridge it must beat.

Models, all fitted on the recipe cohort of ``training.default_model.RECIPE`` (24 phantom subjects,
seed 2026): the ridge (``--method regression``) is the embedded default model; the diffusion
model is the same recipe run with ``--method diffusion`` (``--diffusion DIR``); ``--pair`` also
trains a dedicated single-pair diffusion model (T1w -> FDG) with the same budget.

What is measured (the goals of the generative-core issue):

- Standard contrasts: a complete held-out cohort (seed 9090, never used in training), each
  target predicted from every other modality (and from one input, and from none), scored with
  ``bids_synth.metrics`` inside the brain mask against the acquired images and against the same
  subjects rendered without acquisition noise and bias (``clean``). The clean rendering scored
  against the acquired images is the oracle: ``oracle - ridge`` is the gain possible at all.
  ``desc-synth`` is what the app writes: the ridge plus the gated correction of the mean network
  (the gate per modality was chosen on the model's validation subjects); ``ungated`` is the
  mean network's full correction (gate 1), to show what the gate changed.
- Shifted contrasts: the same held-out subjects acquired by "another scanner" (``generate_cohort(
  shift_contrast=True)``: random monotone or non-monotone intensity curves, bias fields, noise
  and blur on every sMRI/PET image), scored against the clean images.
- Realism of single samples: mean gradient magnitude and high-frequency power (upper half of the
  radially averaged spectrum) inside the brain, as ratios to the acquired image's.
- Uncertainty: coverage of the acquired image by mean +/- 1.645 std, Spearman correlation of the
  std with the absolute error, and the mean std on the standard vs the shifted cohort.
- Downstream (ACADiff's clinical test): AD vs CN AUC of a cross-validated logistic regression on
  regional FDG SUVR (``preprocessing.regions``) of a separate held-out cohort (seed 7070), with
  all-real FDG and with 80% of the subjects' FDG imputed (from T1w, T2w, FLAIR and AV45 and the
  clinical values without the diagnosis, which would leak the label).

JSON to bench/results/quality.json; ``--table`` prints the tables of docs/benchmarks.md.

    python -m bids_synth.training.default_model --method diffusion --out DIFF_DIR
    python bench/quality.py --diffusion DIFF_DIR [--heldout 3] [--auc-subjects 40] [--pair]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HELDOUT_SEED = 9090
AUC_SEED = 7070
AUC_MODALITIES = ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45')
#: the dedicated single-pair model of ``--pair``: (input, target)
PAIR = ('T1w', 'FDG')


def _evaluate(predict, sessions, mask, modalities, patterns_for, clean=None):
    """{target: {pattern: {psnr, ssim, mae, n}}} with ``predict(inputs, target) -> (C,X,Y,Z)``.

    ``clean``: the sessions rendered without acquisition noise (same order); each row then also
    has ``psnr_clean``, ``ssim_clean``, ``mae_clean`` (scored against the clean image).
    """
    from bids_synth.metrics import score
    from bids_synth.models.imputer import SessionArrays

    rows: dict = {}
    for i, sess in enumerate(sessions):
        for target in modalities:
            if target not in sess.images:
                continue
            for pattern in patterns_for(target):
                inputs = {m: sess.images[m] for m in pattern if m in sess.images}
                pred = predict(SessionArrays(sess.subject, sess.session, inputs, sess.clinical),
                               target)
                ref = sess.images[target]
                s = [score(pred[c], ref[c], mask) for c in range(ref.shape[0])]
                if clean is not None:
                    ref = clean[i].images[target]
                    for c in range(ref.shape[0]):
                        s[c].update({f'{k}_clean': v
                                     for k, v in score(pred[c], ref[c], mask).items()})
                key = '+'.join(pattern) or '(none)'
                rows.setdefault(target, {}).setdefault(key, []).append(
                    {k: float(np.mean([x[k] for x in s])) for k in s[0]})
    return {t: {p: {**{k: float(np.mean([r[k] for r in v])) for k in v[0]}, 'n': len(v)}
                for p, v in pats.items()} for t, pats in rows.items()}


def _cohort(work: Path, name: str, res: int, **kwargs):
    """Generate (once) and conform a phantom cohort under ``work/name`` (cached)."""
    from bids_synth.phantom import generate_cohort
    from bids_synth.training.conformed import conform_cohort, load_sessions

    bids = work / name / 'bids'
    if not (bids / 'dataset_description.json').is_file():
        kwargs.setdefault('missing', 0.0)
        generate_cohort(bids, ground_truth=work / name / 'gt', **kwargs)
    dest = work / name / 'conformed'
    conform_cohort(bids, dest, res=res, procs=os.cpu_count() or 1,
                   force=bool(kwargs.get('shift_contrast')))
    return bids, load_sessions(bids, dest)


def add_cohort_arguments(ap) -> None:
    """``--work`` and ``--train-conformed``, for the benchmarks that reuse this one's cohorts."""
    ap.add_argument('--work', type=Path, default=Path(os.environ.get('TMPDIR', '/tmp')) /
                    'bids_synth_bench_quality', help="bench/quality.py's work folder")
    ap.add_argument('--train-conformed', type=Path,
                    help='conformed recipe cohort (training.conformed layout) beside its bids/ '
                         '(default: generate and conform it under --work/recipe)')
    ap.add_argument('--recipe-subjects', type=int, default=None, metavar='N',
                    help="the recipe cohort with N subjects instead of the embedded default's "
                         '(same seed and settings; generated under --work/recipeN), to see '
                         'what more training data changes')


def training_and_heldout(work: Path, train_conformed: Path | None = None, n_heldout: int = 3,
                         shifted: bool = False, recipe_subjects: int | None = None) -> dict:
    """The embedded default's recipe cohort (``train_conformed``, a conformed copy beside its
    ``bids/``, or generated and conformed under ``work/recipe``; with ``recipe_subjects``, the
    same recipe with that many subjects under ``work/recipe<N>``) and this benchmark's held-out
    cohorts (seed 9090): ``bids``, ``train``, ``held``, ``clean``, and ``shifted`` if asked."""
    from bids_synth.training.conformed import load_sessions
    from bids_synth.training.default_model import RECIPE

    res = RECIPE['res']
    if recipe_subjects and train_conformed:
        raise SystemExit('--recipe-subjects and --train-conformed exclude each other')
    if recipe_subjects:
        bids, train = _cohort(work, f'recipe{recipe_subjects}', res,
                              **dict(RECIPE['phantom'], n_subjects=recipe_subjects))
    elif train_conformed:
        bids = Path(train_conformed).parent / 'bids'
        train = load_sessions(bids, train_conformed)
    else:
        bids, train = _cohort(work, 'recipe', res, **RECIPE['phantom'])
    name = 'heldout' if n_heldout == 3 else f'heldout{n_heldout}'
    common = dict(n_subjects=n_heldout, seed=HELDOUT_SEED,
                  resolution=RECIPE['phantom']['resolution'])
    out = {'bids': bids, 'train': train, 'held': _cohort(work, name, res, **common)[1],
           'clean': _cohort(work, name + '_clean', res, clean=True, **common)[1]}
    if shifted:
        out['shifted'] = _cohort(work, name + '_shifted', res, shift_contrast=True, **common)[1]
    return out


def _same_subjects(a, b, what):
    if [(s.subject, s.session) for s in a] != [(s.subject, s.session) for s in b]:
        raise SystemExit(f'the held-out cohorts differ ({what})')


def _realism_and_uncertainty(diffusion, regression, held, clean, shifted, mask, modalities):
    """Per target, from every other modality: single-sample realism (ratios to the acquired
    image), and the std's calibration on the standard and the shifted cohorts."""
    from bids_synth.metrics import (
        coverage, gradient_magnitude, high_frequency_power, std_error_spearman,
    )

    out = {}
    for t in modalities:
        rows = []
        for i, sess in enumerate(held):
            inputs = {m: a for m, a in sess.images.items() if m != t}
            s = type(sess)(sess.subject, sess.session, inputs, sess.clinical)
            pred = diffusion.predict(s, (t,), seed=0, return_samples=True)[t]
            ridge = regression.predict(s, (t,))[t].mean
            acq, cln = sess.images[t], clean[i].images[t]
            sh = shifted[i]
            s_sh = type(sh)(sh.subject, sh.session, {m: a for m, a in sh.images.items() if m != t},
                            sh.clinical)
            pred_sh = diffusion.predict(s_sh, (t,), seed=0)[t]
            row = {}
            for name, fn in (('gradient', gradient_magnitude), ('hf_power', high_frequency_power)):
                ref = np.mean([fn(acq[c], mask) for c in range(acq.shape[0])])
                for who, img in (('sample', pred.samples[0]), ('synth', pred.mean),
                                 ('ridge', ridge)):
                    val = np.mean([fn(img[c], mask) for c in range(img.shape[0])])
                    row[f'{name}_ratio_{who}'] = float(val / ref)
            if pred.std is not None:
                row.update(
                    coverage_acquired=coverage(acq, pred.mean, pred.std, mask),
                    coverage_clean=coverage(cln, pred.mean, pred.std, mask),
                    spearman_acquired=std_error_spearman(acq, pred.mean, pred.std, mask),
                    spearman_clean=std_error_spearman(cln, pred.mean, pred.std, mask),
                    std_standard=float(pred.std[:, mask].mean()),
                    std_shifted=float(pred_sh.std[:, mask].mean()),
                    coverage_shifted_clean=coverage(cln, pred_sh.mean, pred_sh.std, mask),
                    inflation_standard=float(pred.extra.get('std_inflation', 1.0)),
                    inflation_shifted=float(pred_sh.extra.get('std_inflation', 1.0)),
                )
            rows.append(row)
        out[t] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return out


def _regional_fdg(img: np.ndarray, affine, shape) -> np.ndarray:
    from bids_synth.preprocessing.regions import REGIONS, region_mask

    names = [n for n in REGIONS if n not in ('lateral_ventricles', 'cerebellum')]
    return np.array([float(img[0][region_mask(n, affine, shape)].mean()) for n in names])


def _auc(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """AUC of a 5-fold cross-validated, standardized logistic regression (AD = 1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    prob = cross_val_predict(clf, features, labels, cv=folds, method='predict_proba')[:, 1]
    return float(roc_auc_score(labels, prob))


def _downstream_auc(work, res, n_subjects, models, tpl, fraction=0.8, repeats=5):
    """Diagnosis AUC on regional FDG SUVR: all real, and with ``fraction`` of the FDG imputed.

    Two tasks on one cohort: AD vs CN (ACADiff's test; a strong effect on the phantom) and the
    weaker MCI vs CN."""
    _, cohort = _cohort(work, f'auc{n_subjects}', res, n_subjects=n_subjects, seed=AUC_SEED,
                        modalities=AUC_MODALITIES, resolution='low')
    cohort = [s for s in cohort if s.clinical.get('diagnosis') in ('AD', 'CN', 'MCI')]
    dx = np.array([s.clinical['diagnosis'] for s in cohort])
    affine, shape = tpl.affine, tpl.mask.shape
    real = np.stack([_regional_fdg(s.images['FDG'], affine, shape) for s in cohort])
    imputed = {}
    for name, model in models.items():
        feats = []
        for s in cohort:
            inputs = {m: a for m, a in s.images.items() if m != 'FDG'}
            clin = {k: v for k, v in s.clinical.items() if k != 'diagnosis'}
            pred = model(type(s)(s.subject, s.session, inputs, clin))
            feats.append(_regional_fdg(pred, affine, shape))
        imputed[name] = np.stack(feats)
    out = {'seed': AUC_SEED, 'fraction_imputed': fraction, 'repeats': repeats}
    for task, (pos, neg) in (('ad_cn', ('AD', 'CN')), ('mci_cn', ('MCI', 'CN'))):
        keep = np.isin(dx, (pos, neg))
        labels = (dx[keep] == pos).astype(int)
        rng = np.random.default_rng(0)
        n = int(keep.sum())
        n_imp = int(round(fraction * n))
        draws = [rng.choice(n, n_imp, replace=False) for _ in range(repeats)]
        result = {'subjects': n, 'positive': int(labels.sum()),
                  'auc_all_real': _auc(real[keep], labels)}
        for name, feats in imputed.items():
            aucs = []
            for idx in draws:
                mixed = real[keep].copy()
                mixed[idx] = feats[keep][idx]
                aucs.append(_auc(mixed, labels))
            result[f'auc_{name}'] = float(np.median(aucs))
            result[f'auc_{name}_all_imputed'] = _auc(feats[keep], labels)
        out[task] = result
    return out


def _summary(results, modalities):
    summary = {}
    for t in modalities:
        allin = '+'.join(m for m in modalities if m != t)
        row = {}
        for who in ('diffusion', 'ungated', 'regression'):
            v = results[who][t][allin]
            row.update({f'{who}_psnr': v['psnr'], f'{who}_ssim': v['ssim'],
                        f'{who}_psnr_clean': v['psnr_clean']})
        m, o = results['cohort_mean'][t]['(none)'], results['oracle'][t]['(none)']
        row.update(cohort_mean_psnr=m['psnr'], cohort_mean_psnr_clean=m['psnr_clean'],
                   oracle_psnr=o['psnr'])
        row['diffusion_minus_ridge_db'] = row['diffusion_psnr'] - row['regression_psnr']
        row['diffusion_minus_ridge_db_clean'] = (row['diffusion_psnr_clean']
                                                 - row['regression_psnr_clean'])
        gap = row['oracle_psnr'] - row['regression_psnr']
        row['oracle_minus_ridge_db'] = gap
        row['gap_closed'] = row['diffusion_minus_ridge_db'] / gap if gap > 0 else None
        summary[t] = row
    return summary


def _goals(summary, shifted, realism, auc, pair):
    """Each goal of the issue, met or not, per target."""
    g = {}
    g['standard_never_worse'] = {
        t: v['diffusion_minus_ridge_db'] >= -0.2 and v['diffusion_minus_ridge_db_clean'] >= -0.2
        for t, v in summary.items()}
    g['standard_quarter_of_gap'] = {
        t: v['gap_closed'] >= 0.25 for t, v in summary.items()
        if v['oracle_minus_ridge_db'] > 1.5}
    g['shifted_within_1db_of_standard'] = {
        t: v['diffusion_psnr_clean'] >= summary[t]['diffusion_psnr_clean'] - 1.0
        for t, v in shifted.items()}
    g['shifted_ridge_plus_3db'] = {
        t: v['diffusion_psnr_clean'] >= v['regression_psnr_clean'] + 3.0
        for t, v in shifted.items()}
    g['sample_realism_within_10pct'] = {
        t: abs(v['gradient_ratio_sample'] - 1) <= 0.1 and abs(v['hf_power_ratio_sample'] - 1)
        <= 0.1 for t, v in realism.items()}
    g['coverage_80_97'] = {t: 0.80 <= v['coverage_acquired'] <= 0.97
                           for t, v in realism.items() if 'coverage_acquired' in v}
    g['spearman_0.3'] = {t: v['spearman_acquired'] >= 0.3
                         for t, v in realism.items() if 'spearman_acquired' in v}
    g['std_higher_when_shifted'] = {t: v['std_shifted'] > v['std_standard']
                                    for t, v in realism.items() if 'std_standard' in v}
    if auc:
        for task in ('ad_cn', 'mci_cn'):
            a = auc[task]
            g[f'auc_{task}_within_0.03'] = abs(a['auc_diffusion'] - a['auc_all_real']) <= 0.03
    if pair and 'psnr_given_up_db' in pair:
        g['any_subset_within_0.5db_of_pair'] = pair['psnr_given_up_db'] >= -0.5
    return g


def markdown(result: dict) -> str:
    """The tables of docs/benchmarks.md from a result (``python bench/quality.py --table F``)."""
    summ = result['summary_all_other_inputs']
    lines = ['PSNR dB / SSIM against the acquired images, each target from every other modality:',
             '', '| target | desc-synth (K={}) | ungated network | ridge | cohort mean | oracle | '
             'synth - ridge | gap closed |'.format(result['num_samples']), '| --- ' * 8 + '|']
    for t, v in summ.items():
        gap = '' if v['gap_closed'] is None else f"{100 * v['gap_closed']:.0f}% of " \
            f"{v['oracle_minus_ridge_db']:.1f} dB"
        lines.append(f"| {t} | {v['diffusion_psnr']:.1f} / {v['diffusion_ssim']:.2f} | "
                     f"{v['ungated_psnr']:.1f} | "
                     f"{v['regression_psnr']:.1f} / {v['regression_ssim']:.2f} | "
                     f"{v['cohort_mean_psnr']:.1f} | {v['oracle_psnr']:.1f} | "
                     f"{v['diffusion_minus_ridge_db']:+.2f} | {gap} |")
    sh = result.get('shifted_contrasts') or {}
    own = result.get('own_ridge_base') or {}
    lines += ['', 'Against the clean images (PSNR dB), standard and shifted contrasts; "base" is '
              'the diffusion model\'s own ridge (penalty {}), what desc-synth is with every gate '
              'at 0:'.format(own.get('penalty', '?')), '',
              '| target | synth, standard | base, standard | ridge, standard | synth, shifted |'
              ' base, shifted | ridge, shifted | synth - ridge, shifted |', '| --- ' * 8 + '|']
    for t, v in summ.items():
        s = sh.get(t)
        o = own.get(t, {})
        cells = (f"{s['diffusion_psnr_clean']:.1f} | {o.get('shifted_psnr_clean', float('nan')):.1f}"
                 f" | {s['regression_psnr_clean']:.1f} | "
                 f"{s['diffusion_psnr_clean'] - s['regression_psnr_clean']:+.1f}"
                 if s else ' | | | ')
        lines.append(f"| {t} | {v['diffusion_psnr_clean']:.1f} | "
                     f"{o.get('standard_psnr_clean', float('nan')):.1f} | "
                     f"{v['regression_psnr_clean']:.1f} | {cells} |")
    rz = result.get('realism_uncertainty') or {}
    if rz:
        lines += ['', 'Single samples and uncertainty (ratios to the acquired image; coverage of '
                  'the acquired image by mean +/- 1.645 std):', '',
                  '| target | gradient: sample / synth / ridge | HF power: sample / synth / ridge'
                  ' | coverage | Spearman(std, abs err) | mean std: standard / shifted |'
                  ' std widening: standard / shifted | coverage of clean, shifted inputs |',
                  '| --- ' * 8 + '|']
        for t, v in rz.items():
            unc = (f"{100 * v['coverage_acquired']:.0f}% | {v['spearman_acquired']:.2f} | "
                   f"{v['std_standard']:.3f} / {v['std_shifted']:.3f} | "
                   f"{v.get('inflation_standard', 1):.2f} / {v.get('inflation_shifted', 1):.2f} | "
                   f"{100 * v.get('coverage_shifted_clean', float('nan')):.0f}%"
                   if 'coverage_acquired' in v else ' | | | | ')
            lines.append(
                f"| {t} | {v['gradient_ratio_sample']:.2f} / {v['gradient_ratio_synth']:.2f} / "
                f"{v['gradient_ratio_ridge']:.2f} | {v['hf_power_ratio_sample']:.2f} / "
                f"{v['hf_power_ratio_synth']:.2f} / {v['hf_power_ratio_ridge']:.2f} | {unc} |")
    res = result['per_target_per_pattern']
    lines += ['', 'Per missing pattern (ridge / desc-synth PSNR against the acquired images, dB):',
              '', '| target | all others | one input | none |', '| --- ' * 4 + '|']
    for t in summ:
        cells = []
        for key in res['regression'][t]:
            r, d = res['regression'][t][key]['psnr'], res['diffusion'][t][key]['psnr']
            label = '' if key == '(none)' or '+' in key else f'{key}: '
            cells.append(f'{label}{r:.1f} / {d:.1f}')
        lines.append(f"| {t} | {' | '.join(cells)} |")
    auc = result.get('downstream_auc')
    if auc and 'ad_cn' in auc:
        lines += ['', f"Downstream diagnosis AUC on regional FDG ({100 * auc['fraction_imputed']:.0f}% "
                  f"of FDG imputed, median of {auc['repeats']} draws):", '',
                  '| task | subjects | all real | diffusion | ridge | all imputed: diffusion '
                  '| all imputed: ridge |', '|---|---|---|---|---|---|---|']
        for task, name in (('ad_cn', 'AD vs CN'), ('mci_cn', 'MCI vs CN')):
            a = auc[task]
            lines.append(f"| {name} | {a['subjects']} ({a['positive']} positive) | "
                         f"{a['auc_all_real']:.3f} | {a['auc_diffusion']:.3f} | "
                         f"{a['auc_regression']:.3f} | {a['auc_diffusion_all_imputed']:.3f} | "
                         f"{a['auc_regression_all_imputed']:.3f} |")
    pair = result.get('pair_model')
    if pair and 'psnr_given_up_db' in pair:
        lines += ['', f"Dedicated pair model {pair['inputs']} -> {pair['target']}: "
                  f"{pair['pair_model']['psnr']:.1f} dB; the any-subset model with the same "
                  f"input: {pair['any_subset_model']['psnr']:.1f} dB "
                  f"(given up: {pair['psnr_given_up_db']:+.1f} dB)."]
    elif pair:
        lines += ['', f"Dedicated pair model: no figure ({pair.get('error')})."]
    goals = result.get('goals', {})
    if goals:
        lines += ['', 'Goals (met / total): ' + '; '.join(
            f"{k} {sum(v.values())}/{len(v)}" if isinstance(v, dict) else f'{k} {v}'
            for k, v in goals.items())]
    return '\n'.join(lines) + '\n'


def _own_base(diffusion, held, clean, shifted, mask, modalities) -> dict:
    """The diffusion model's own ridge base (gate 0), each target from every other modality, on
    the standard and the shifted cohorts, against the clean images: it separates what the mean
    network adds from what the base ridge (fitted with its own penalty) does."""
    out = {}
    for t in modalities:
        allin = tuple(m for m in modalities if m != t)
        row = {}
        for name, cohort in (('standard', held), ('shifted', shifted)):
            if name == 'shifted' and t not in ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45'):
                continue
            res = _evaluate(lambda s, tt: diffusion.ridge.predict(s, (tt,))[tt].mean, cohort,
                            mask, (t,), lambda _: [allin], clean)
            v = res[t]['+'.join(allin)]
            row.update({f'{name}_psnr': v['psnr'], f'{name}_psnr_clean': v['psnr_clean']})
        out[t] = row
    out['penalty'] = diffusion.ridge.lam
    return out


def _pair(work, res, held, mask, anysub_results) -> dict:
    """Train (once, cached in ``work``) and score the dedicated T1w -> FDG diffusion model with
    the default recipe; compare with the any-subset model's scores of the same pattern."""
    from bids_synth.bids.clinical import load_clinical
    from bids_synth.errors import ModelError
    from bids_synth.models.synthesis import DiffusionImputer
    from bids_synth.training.config import get_config
    from bids_synth.training.default_model import RECIPE
    from bids_synth.training.fit import fit_model

    train_bids, train = _cohort(work, 'train', res, **RECIPE['phantom'])
    src, dst = PAIR
    pair_dir = work / f'pair_{src}_{dst}'
    t0 = time.monotonic()
    if not (pair_dir / 'model_card.json').is_file():
        fit_model(train, method='diffusion', modalities=PAIR,
                  clinical_schema=load_clinical(train_bids).schema(), out_dir=pair_dir,
                  res=res, seed=RECIPE['seed'])
    pair_model = DiffusionImputer.load(pair_dir)
    pair = {'target': dst, 'inputs': src, 'budget': get_config(None).to_dict(),
            'training_seconds': pair_model.card()['training']['seconds'],
            'wall_seconds': round(time.monotonic() - t0, 1)}
    try:
        pair_res = _evaluate(lambda s, t: pair_model.predict(s, (t,), seed=0)[t].mean,
                             held, mask, (dst,), lambda t: [(src,)])
    except ModelError as exc:  # e.g. a diverged training: no figure, the reason instead
        pair['error'] = str(exc)
    else:
        anysub = anysub_results[dst][src]
        pair.update(pair_model=pair_res[dst][src], any_subset_model=anysub,
                    psnr_given_up_db=anysub['psnr'] - pair_res[dst][src]['psnr'])
    return pair


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--heldout', type=int, default=3, help='held-out subjects')
    ap.add_argument('--auc-subjects', type=int, default=40,
                    help='subjects of the downstream AUC cohort (0: skip)')
    ap.add_argument('--work', type=Path, default=Path(os.environ.get('TMPDIR', '/tmp')) /
                    'bids_synth_bench_quality')
    ap.add_argument('--table', type=Path, metavar='JSON',
                    help='print the markdown tables of a saved result and exit')
    ap.add_argument('--diffusion', type=Path,
                    help='diffusion model of the default recipe (training.default_model '
                    '--method diffusion)')
    ap.add_argument('--pair', action='store_true',
                    help='also train and score a dedicated T1w -> FDG diffusion model')
    ap.add_argument('--only', choices=('realism', 'base', 'pair'),
                    help='rescore one part (samples and uncertainty; the model\'s own ridge '
                    'base; the dedicated pair model, trained once) and update the saved --out')
    ap.add_argument('--num-samples', type=int, default=None,
                    help='diffusion samples per prediction (default: the card\'s K)')
    ap.add_argument('--out', type=Path, default=HERE / 'results' / 'quality.json')
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.table.read_text())), end='')
        return 0
    if args.diffusion is None:
        ap.error('--diffusion is required')
    os.environ.setdefault('NIPYPE_NO_ET', '1')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')

    from bids_synth.models.baseline import RegressionImputer
    from bids_synth.models.synthesis import DiffusionImputer
    from bids_synth.preprocessing.templates import ensure_templateflow_home, load_template
    from bids_synth.training.default_model import RECIPE
    from bids_synth.workflows.base import default_model_dir

    ensure_templateflow_home()
    t_start = time.monotonic()
    work = args.work
    diffusion = DiffusionImputer.load(args.diffusion)
    card = diffusion.card()
    k = diffusion.spec.num_samples if args.num_samples is None else args.num_samples
    diffusion.spec = type(diffusion.spec).from_dict({**diffusion.spec.to_dict(), 'num_samples': k})
    res = int(card['template']['res'])
    tpl = load_template(res)
    mask = tpl.mask.astype(bool)
    modalities = tuple(card['modalities'])
    regression = RegressionImputer.load(default_model_dir())
    if int(regression.card()['template']['res']) != res:
        raise SystemExit('the regression and diffusion models are on different grids')
    resolution = RECIPE['phantom']['resolution']
    common = dict(n_subjects=args.heldout, seed=HELDOUT_SEED, resolution=resolution)
    _, held = _cohort(work, 'heldout', res, **common)
    _, clean = _cohort(work, 'heldout_clean', res, clean=True, **common)
    _, shifted = _cohort(work, 'heldout_shifted', res, shift_contrast=True, **common)
    _same_subjects(held, clean, 'clean')
    _same_subjects(held, shifted, 'shifted')
    if args.only:  # rescore one part of a saved result
        saved = json.loads(args.out.read_text())
        if args.only == 'realism':
            saved['realism_uncertainty'] = _realism_and_uncertainty(
                diffusion, regression, held, clean, shifted, mask, modalities)
        elif args.only == 'base':
            saved['own_ridge_base'] = _own_base(diffusion, held, clean, shifted, mask, modalities)
        else:
            saved['pair_model'] = _pair(work, res, held, mask,
                                        saved['per_target_per_pattern']['diffusion'])
        saved['goals'] = _goals(saved['summary_all_other_inputs'], saved['shifted_contrasts'],
                                saved['realism_uncertainty'], saved['downstream_auc'],
                                saved['pair_model'])
        saved['date'] = time.strftime('%Y-%m-%d')
        args.out.write_text(json.dumps(saved, indent=2) + '\n')
        print(markdown(saved))
        return 0

    def patterns_for(target):
        others = tuple(m for m in modalities if m != target)
        return [others, ('FDG',) if target == 'T1w' else ('T1w',), ()]

    def all_others(target):
        return [tuple(m for m in modalities if m != target)]

    t0 = time.monotonic()
    n_pred = [0]

    def synth(sess, target):
        n_pred[0] += 1
        return diffusion.predict(sess, (target,), seed=0)[target].mean

    def ridge(sess, target):
        return regression.predict(sess, (target,))[target].mean

    results = {'diffusion': _evaluate(synth, held, mask, modalities, patterns_for, clean)}
    diff_seconds = (time.monotonic() - t0) / max(n_pred[0], 1)
    def ungated(s, t):
        inputs = {m: a for m, a in s.images.items() if m != t}
        parts = diffusion.components(inputs, s.clinical or {})
        img = diffusion.net.to_images(parts['network'])[0].float().numpy()
        return img[diffusion.spec.channel_slices()[t]] * mask[None]

    results['ungated'] = _evaluate(ungated, held, mask, modalities, all_others, clean)
    results['regression'] = _evaluate(ridge, held, mask, modalities, patterns_for, clean)
    results['cohort_mean'] = _evaluate(
        lambda s, t: regression.predict(type(s)(s.subject, s.session, {}, {}), (t,))[t].mean,
        held, mask, modalities, lambda t: [()], clean)
    by_subject = {(s.subject, s.session): s for s in clean}
    results['oracle'] = _evaluate(
        lambda s, t: by_subject[(s.subject, s.session)].images[t], held, mask, modalities,
        lambda t: [()])
    summary = _summary(results, modalities)

    # shifted contrasts: sMRI/PET targets from every other (shifted) modality, against clean
    shifted_targets = tuple(m for m in modalities if m in ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45'))
    sh = {who: _evaluate(fn, shifted, mask, shifted_targets, all_others, clean)
          for who, fn in (('diffusion', synth), ('regression', ridge))}
    shifted_summary = {}
    for t in shifted_targets:
        allin = '+'.join(m for m in modalities if m != t)
        shifted_summary[t] = {f'{who}_{k}': sh[who][t][allin][k] for who in sh
                              for k in ('psnr_clean', 'ssim_clean', 'psnr')}
    realism = _realism_and_uncertainty(diffusion, regression, held, clean, shifted, mask,
                                       modalities)
    auc = None
    if args.auc_subjects:
        auc = _downstream_auc(
            work, res, args.auc_subjects, {
                'diffusion': lambda s: diffusion.predict(s, ('FDG',), seed=0)['FDG'].mean,
                'regression': lambda s: regression.predict(s, ('FDG',))['FDG'].mean}, tpl)

    own_base = _own_base(diffusion, held, clean, shifted, mask, modalities)
    if args.pair:
        pair = _pair(work, res, held, mask, results['diffusion'])
    else:
        pair = {'error': 'not run (--pair not given)'}

    result = {
        'benchmark': 'quality',
        'heldout': {'subjects': args.heldout, 'seed': HELDOUT_SEED, 'missing': 0.0},
        'training_cohort': RECIPE['phantom'],
        'model': {'path': str(args.diffusion), 'name': card.get('name'),
                  'sha256': card['sha256'], 'training': card.get('training', {}).get('seconds')},
        'regression_model': {'name': regression.card()['name'],
                             'path': str(default_model_dir())},
        'res': res,
        'num_samples': k,
        'steps': diffusion.spec.steps,
        'sampler': diffusion.spec.sampler,
        'summary_all_other_inputs': summary,
        'shifted_contrasts': shifted_summary,
        'own_ridge_base': own_base,
        'realism_uncertainty': realism,
        'downstream_auc': auc,
        'pair_model': pair,
        'diffusion_seconds_per_prediction_cpu': diff_seconds,
        'per_target_per_pattern': results,
        'wall_seconds': time.monotonic() - t_start,
        'date': time.strftime('%Y-%m-%d'),
        'machine': {'cpus': os.cpu_count(), 'device': 'cpu'},
    }
    result['goals'] = _goals(summary, shifted_summary, realism, auc, pair)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(markdown(result))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
