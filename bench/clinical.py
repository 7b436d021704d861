"""Joint image + clinical generation (issue 11): imputation, tabular fidelity, coherence.

A training cohort (``group --method regression`` fits the image model and its tabular part, as a
user would; ``--train-dir`` reuses one, e.g. the embedded default's recipe cohort, seed 2026)
and a held-out phantom cohort with a seed used nowhere else (seed 5353), conformed with the
participant level's conform function.

1. **Imputation**, each value of each held-out subject hidden in turn (the subject's other
   values as in its participants.tsv, its acquired images, its missing modalities synthesized
   from its images): MMSE MAE and diagnosis accuracy (plus age MAE, amyloid accuracy) of
   - the training column mean / mode,
   - scikit-learn ``IterativeImputer`` on the table alone (categorical columns ordinal coded),
   - the tabular head without images (an ablation),
   - the tabular head with the image features (what ``participant`` does);
   with the paired per-subject difference of the last to each of the others and its standard
   error (``head_with_images_minus``).
2. **Tabular fidelity of synthetic rows**: sdmetrics ``QualityReport`` (column shapes,
   column-pair trends) of rows drawn from the model's Gaussian copula, CTGAN and TVAE (PyPI
   ``ctgan``), all fitted to the same training table, scored on complete rows against 500
   fresh rows of the phantom's clinical generator (the population; seed 6464), the held-out
   table and the training table; a classifier two-sample test (cross-validated AUC of a random
   forest telling real rows from synthetic ones; 0.5 = indistinguishable).
3. **Image-table coherence** of generated subjects (``bids-synth-generate``'s path: a copula
   row, then every modality from it alone): the slope of the ventricle-region T1w signal
   (lower T1w = more CSF) against age, and the FDG SUVR difference AD - CN in the AD
   hypometabolism regions (posterior cingulate, precuneus, temporoparietal), generated vs the
   held-out real cohort; and the realism of regional means (generated vs real: mean shift in
   real SDs, ratio of spreads).

sdmetrics pins pandas<3: run with the bench extra in its own environment or target folder, e.g.
``pip install --target /tmp/benchlib --no-deps sdmetrics ctgan rdt copulas Faker plotly pytz
'pandas<3'`` and ``PYTHONPATH=/tmp/benchlib python bench/clinical.py``.

    python bench/clinical.py [--train 24] [--test 24] [--work DIR] [--train-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEEDS = {'train': 4242, 'test': 5353, 'population': 6464, 'images': 7777}
_AD_REGIONS = ('posterior_cingulate', 'precuneus', 'temporoparietal')


def _machine() -> dict:
    import torch

    return {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
            'processor': platform.processor() or platform.machine(),
            'note': '2-core x86_64 VM, CPU only, shared with another training job (contended)',
            'torch': torch.__version__}


def _cohort(root: Path, n: int, seed: int):
    from bids_synth.phantom import generate_cohort

    return generate_cohort(root / 'bids', n_subjects=n, seed=seed, missing=0.15,
                           resolution='low', ground_truth=root / 'groundtruth')


def _group(root: Path) -> Path:
    from bids_synth.cli.run import main

    out = root / 'out'
    if not (out / 'models' / 'regression' / 'tabular.json').is_file():
        code = main([str(root / 'bids'), str(out), 'group', '--method', 'regression', '--res',
                     '4', '-w', str(root / 'work'), '--nprocs', '2', '--omp-nthreads', '1',
                     '--skip-bids-validation', '--no-reports'])
        if code:
            raise SystemExit(f'group failed on {root} ({code})')
    return out / 'models' / 'regression'


def _sessions(root: Path):
    """Conformed sessions of a cohort: ``conformed/`` (training.conformed), else the group
    work folder's conform nodes."""
    from bids_synth.bids.clinical import load_clinical
    from bids_synth.training.conformed import load_sessions
    from bids_synth.training.fit import sessions_from_files

    if (root / 'conformed').is_dir():
        return load_sessions(root / 'bids', root / 'conformed')
    files, mods, keys = [], [], []
    for d in sorted((root / 'work' / 'bids_synth_group_wf').glob('conform_*')):
        _, sub, mod = d.name.split('_', 2)
        files.append(str(next(d.glob('*_conformed.nii.gz'))))
        mods.append(mod)
        keys.append(sub)
    table = load_clinical(root / 'bids')
    return sessions_from_files(files, mods, keys,
                               {k: table.for_session(k, None) for k in set(keys)})


# ------------------------------------------------------------------------------ imputation
def _iterative(train_rows, schema):
    """IterativeImputer on the table alone: ordinal codes for categorical columns."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    cols = [c for c, s in schema.items() if s['type'] in ('continuous', 'categorical')]

    def encode(row):
        out = []
        for c in cols:
            v = row.get(c)
            if v is None:
                out.append(np.nan)
            elif schema[c]['type'] == 'continuous':
                out.append(float(v))
            else:
                levels = schema[c]['levels']
                out.append(float(levels.index(str(v))) if str(v) in levels else np.nan)
        return out

    imp = IterativeImputer(max_iter=20, random_state=0, sample_posterior=False)
    imp.fit(np.array([encode(r) for r in train_rows]))

    def predict(row, col):
        x = imp.transform(np.array([encode(row)]))[0][cols.index(col)]
        if schema[col]['type'] == 'continuous':
            return float(x)
        levels = schema[col]['levels']
        return levels[int(np.clip(round(x), 0, len(levels) - 1))]

    return predict


def _imputation(train_sessions, test_sessions, truth, tab, imputer):
    from bids_synth.models.tabular import ClinicalHead, session_features

    schema = tab.head.schema
    train_rows = [dict(s.clinical) for s in train_sessions]
    table_head = ClinicalHead.fit(train_rows, None, schema, seed=0, use_images=False)
    iterative = _iterative(train_rows, schema)
    base = {}
    for c, s in schema.items():
        vals = [r[c] for r in train_rows if r.get(c) is not None]
        base[c] = (float(np.mean(vals)) if s['type'] == 'continuous'
                   else max(set(map(str, vals)), key=list(map(str, vals)).count))
    targets = {'mmse': 'mae', 'age': 'mae', 'diagnosis': 'accuracy', 'amyloid': 'accuracy'}
    scores = {t: {m: [] for m in ('mean_or_mode', 'iterative_imputer', 'head_table_only',
                                  'head_with_images')} for t in targets}
    for s in test_sessions:
        feats, _ = session_features(imputer, s, tab.res)
        true = truth[s.subject]
        for col, kind in targets.items():
            value = true[col]
            row = dict(s.clinical, **{col: None})
            preds = {
                'mean_or_mode': base[col],
                'iterative_imputer': iterative(row, col),
                'head_table_only': table_head.predict(row, None, [col])[col],
                'head_with_images': tab.head.predict(row, feats, [col])[col],
            }
            for name, p in preds.items():
                if isinstance(p, dict):
                    p = p.get('mean', p['value'])
                if kind == 'mae':
                    scores[col][name].append(abs(float(p) - float(value)))
                else:
                    scores[col][name].append(float(str(p) == str(value)))
    out = {}
    for col, kind in targets.items():
        out[col] = {'metric': kind, 'n': len(scores[col]['mean_or_mode']),
                    **{m: round(float(np.mean(v)), 4) for m, v in scores[col].items()}}
        # paired per-subject differences (head with images minus each baseline) and their
        # standard error: with n = 24, a difference inside about 2 SE is not a result
        mine = np.asarray(scores[col]['head_with_images'])
        diffs = {m: mine - np.asarray(v) for m, v in scores[col].items()
                 if m != 'head_with_images'}
        out[col]['head_with_images_minus'] = {
            m: {'mean': round(float(d.mean()), 4),
                'se': round(float(d.std(ddof=1) / np.sqrt(len(d))), 4)}
            for m, d in diffs.items()}
    return out


# ------------------------------------------------------------------------ tabular fidelity
def _frame(rows, schema):
    import pandas as pd

    cols = [c for c, s in schema.items() if s['type'] in ('continuous', 'categorical')]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows])
    for c in cols:
        if schema[c]['type'] == 'continuous':
            df[c] = pd.to_numeric(df[c], errors='coerce')
        else:
            df[c] = df[c].astype(object).where(df[c].notna(), None).astype('category')
    return df


def _c2st(real, synth, seed=0) -> float:
    """Cross-validated AUC of a random forest telling real rows from synthetic rows."""
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.metrics import roc_auc_score

    n = min(len(real), len(synth))
    both = pd.concat([real.sample(n, random_state=seed), synth.sample(n, random_state=seed)])
    x = pd.get_dummies(both, dummy_na=True).astype(float).fillna(-1.0).to_numpy()
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = RandomForestClassifier(n_estimators=300, min_samples_leaf=2, random_state=seed)
    p = cross_val_predict(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                          method='predict_proba')[:, 1]
    return float(roc_auc_score(y, p))


def _population(n: int, seed: int) -> list[dict]:
    """``n`` fresh complete clinical rows of the phantom's generator (the population the
    training table was drawn from; no images needed)."""
    from bids_synth.phantom.clinical import draw_subject

    rows = []
    for i in range(n):
        s = draw_subject(np.random.default_rng(np.random.SeedSequence([seed, i, 50])),
                         f'{i:04d}', 1)
        rows.append({'age': s.age, 'sex': s.sex, 'education_years': float(s.education_years),
                     'apoe4': str(s.apoe4), 'mmse': float(s.mmse), 'diagnosis': s.diagnosis,
                     'amyloid': 'positive' if s.amyloid else 'negative'})
    return rows


def _fidelity(train_rows, test_rows, tab, n_synth: int, epochs: int, population=()):
    try:
        from sdmetrics.reports.single_table import QualityReport
    except ImportError as exc:
        print(f'sdmetrics not installed ({exc}): tabular fidelity skipped (see the docstring)')
        return {'skipped': f'sdmetrics not installed: {exc}'}

    schema = tab.head.schema
    real_train, real_test = _frame(train_rows, schema), _frame(test_rows, schema)
    real_pop = _frame(list(population), schema) if population else None
    meta = {'columns': {c: {'sdtype': 'numerical' if schema[c]['type'] == 'continuous'
                            else 'categorical'} for c in real_train.columns}}
    synth = {'copula (bids_synth)': _frame(
        tab.generator.sample(n_synth, np.random.default_rng(0)), schema)}
    discrete = [c for c in real_train.columns if schema[c]['type'] == 'categorical']
    fit_data = real_train.copy()
    for c in discrete:
        fit_data[c] = fit_data[c].astype(str)  # CTGAN/TVAE: missing as its own level
    for c in fit_data.columns:
        if c not in discrete:
            fit_data[c] = fit_data[c].fillna(fit_data[c].median())
    try:
        from ctgan import CTGAN, TVAE

        for name, cls in (('CTGAN', CTGAN), ('TVAE', TVAE)):
            t0 = time.monotonic()
            kw = {'epochs': epochs, 'batch_size': 50}
            if name == 'CTGAN':
                kw['pac'] = 5
            model = cls(**kw)
            model.set_random_state(0)
            model.fit(fit_data, discrete_columns=discrete)
            s = model.sample(n_synth)
            for c in discrete:
                s[c] = s[c].where(s[c] != 'None', None).astype('category')
            synth[name] = s
            print(f'  {name}: fitted in {time.monotonic() - t0:.0f} s')
    except ImportError as exc:
        print(f'ctgan not installed ({exc}); CTGAN/TVAE skipped')
    # scored on complete rows: real rows carry the phantom's n/a cells and no generator writes
    # missing cells, which a classifier would otherwise learn instead of the values
    real_test, real_train = real_test.dropna(), real_train.dropna()
    refs = [('vs_held_out', real_test), ('vs_training', real_train)]
    if real_pop is not None:
        refs.insert(0, ('vs_population', real_pop[real_train.columns].dropna()))
    synth = {k: v[real_train.columns].dropna() for k, v in synth.items()}
    out = {'complete_rows': {'training': len(real_train), 'held_out': len(real_test),
                             **{k: len(v) for k, v in synth.items()}}}
    for name, s in synth.items():
        row = {}
        for ref_name, ref in refs:
            rep = QualityReport()
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                rep.generate(ref, s[ref.columns], meta, verbose=False)
            props = rep.get_properties().set_index('Property')['Score']
            row[ref_name] = {'overall': round(float(rep.get_score()), 4),
                             'column_shapes': round(float(props['Column Shapes']), 4),
                             'column_pair_trends': round(float(props['Column Pair Trends']), 4)}
        row['c2st_auc_vs_held_out'] = round(_c2st(real_test, s[real_test.columns]), 4)
        if real_pop is not None:
            row['c2st_auc_vs_population'] = round(_c2st(real_pop[real_test.columns],
                                                         s[real_test.columns]), 4)
        out[name] = row
    out['real training rows (reference)'] = {
        'c2st_auc_vs_held_out': round(_c2st(real_test, real_train), 4)}
    if real_pop is not None:
        out['real training rows (reference)']['c2st_auc_vs_population'] = round(
            _c2st(real_pop[real_test.columns], real_train), 4)
        out['complete_rows']['population'] = len(real_pop)
    return out


# ------------------------------------------------------------------------------ coherence
def _roi_means(vol, res, names):
    from bids_synth.preprocessing.regions import region_mask
    from bids_synth.preprocessing.templates import load_template

    tpl = load_template(res)
    m = np.zeros(tpl.shape, bool)
    for name in names:
        m |= region_mask(name, tpl.affine, tpl.shape)
    m &= tpl.mask.astype(bool)
    return float(vol[m].mean())


def _coherence(test_sessions, truth, tab, imputer, n_gen: int, seed: int, train=None,
               population=None):
    """Image-table relations of generated subjects against the held-out cohort's, (when
    ``train`` = (sessions, truth) is given) the training cohort's, which is what the generator
    learned, and (``population``) a large phantom cohort's: with 20-odd subjects per cohort the
    real figures differ from each other too."""
    from bids_synth.models.tabular import image_features

    res = tab.res
    rows = tab.generator.sample(n_gen, np.random.default_rng(seed))
    mods = [m for m in ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45') if m in imputer.modalities]
    gen = [(tab.subject_images(row, imputer, tuple(mods), seed=i)[0], row)
           for i, row in enumerate(rows)]
    real = [({m: v for m, v in s.images.items()}, truth[s.subject]) for s in test_sessions]

    def slope(pairs):
        x = np.array([a for a, _ in pairs])
        y = np.array([b for _, b in pairs])
        return float(np.polyfit(x, y, 1)[0]) if len(x) > 2 else float('nan')

    def measures(items):
        vent = [(float(r['age']), _roi_means(im['T1w'][0], res, ['lateral_ventricles']))
                for im, r in items if 'T1w' in im and r.get('age') is not None]
        fdg = {}
        for im, r in items:
            if 'FDG' in im and r.get('diagnosis') in ('AD', 'CN'):
                fdg.setdefault(r['diagnosis'], []).append(
                    _roi_means(im['FDG'][0], res, _AD_REGIONS))
        diff = (float(np.mean(fdg['AD']) - np.mean(fdg['CN']))
                if fdg.get('AD') and fdg.get('CN') else float('nan'))
        return {'ventricle_t1w_vs_age_slope_per_year': slope(vent), 'n_ventricle': len(vent),
                'fdg_ad_minus_cn_suvr': diff,
                'n_fdg': {k: len(v) for k, v in fdg.items()}}

    m_real, m_gen = measures(real), measures(gen)
    keys = ('ventricle_t1w_vs_age_slope_per_year', 'fdg_ad_minus_cn_suvr')
    ratio = {k: round(m_gen[k] / m_real[k], 3) for k in keys if m_real[k] not in (0, float('nan'))}
    extra = {}
    for name, ref in (('training', train), ('population', population)):
        if ref is None:
            continue
        m_ref = measures([(dict(s.images), ref[1][s.subject]) for s in ref[0]])
        extra[f'{name}_real'] = m_ref
        extra[f'generated_over_{name}'] = {k: round(m_gen[k] / m_ref[k], 3) for k in keys
                                           if m_ref[k] not in (0, float('nan'))}
    if population is not None:
        # how much a 20-subject cohort's slope varies: 200 random draws from the population
        vent = [(float(ref_row['age']), _roi_means(s.images['T1w'][0], res,
                                                    ['lateral_ventricles']))
                for s in population[0] if 'T1w' in s.images
                for ref_row in [population[1][s.subject]]]
        rng = np.random.default_rng(seed)
        draws = [slope([vent[i] for i in rng.choice(len(vent), 20, replace=False)])
                 for _ in range(200)] if len(vent) > 20 else []
        if draws:
            extra['population_20_subject_slope_percentiles_5_50_95'] = [
                round(float(v), 6) for v in np.percentile(draws, [5, 50, 95])]
    fr = np.array([image_features({m: im[m] for m in mods if m in im}, mods, res)
                   for im, _ in real])
    fg = np.array([image_features(im, mods, res) for im, _ in gen])
    mu_r, sd_r = np.nanmean(fr, 0), np.nanstd(fr, 0)
    ok = np.isfinite(mu_r) & (sd_r > 1e-8)
    shift = np.abs(np.nanmean(fg, 0) - mu_r)[ok] / sd_r[ok]
    spread = (np.nanstd(fg, 0)[ok] / sd_r[ok])
    return {'real': m_real, 'generated': m_gen, 'generated_over_real': ratio, **extra,
            'n_generated': n_gen, 'n_real': len(real),
            'regional_means': {'n_features': int(ok.sum()),
                               'median_mean_shift_in_real_sd': round(float(np.median(shift)), 3),
                               'median_spread_ratio_generated_over_real':
                                   round(float(np.median(spread)), 3)}}


def _mosaic(tab, imputer, out_png: Path, seed: int = 2) -> dict:
    """Axial slices of two generated subjects (a CN and an AD row), every written modality."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from bids_synth.models.copula import parse_where

    mods = [m for m in ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45') if m in imputer.modalities]
    rows = [tab.generator.sample(1, np.random.default_rng(seed),
                                 parse_where([f'diagnosis={dx}'], tab.head.schema))[0]
            for dx in ('CN', 'AD')]
    fig, axes = plt.subplots(2, len(mods), figsize=(2.2 * len(mods), 5.2))
    for i, row in enumerate(rows):
        images, _ = tab.subject_images(row, imputer, tuple(mods), seed=i)
        for j, m in enumerate(mods):
            vol = images[m][0]
            z = vol.shape[2] // 2 + 2
            ax = axes[i, j]
            ax.imshow(np.rot90(vol[:, :, z]), cmap='gray' if j < 3 else 'magma',
                      vmin=0, vmax=float(np.percentile(vol[vol > 0], 99)) if (vol > 0).any()
                      else 1)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(m, fontsize=9)
        axes[i, 0].text(-0.05, 0.5, f"{row['diagnosis']}, {row['age']:.0f} y, MMSE "
                        f"{row['mmse']:.0f}", transform=axes[i, 0].transAxes, rotation=90,
                        va='center', ha='right', fontsize=8)
    fig.suptitle('bids-synth-generate: two synthetic subjects (template grid, 4 mm)', fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return {'png': str(out_png.relative_to(HERE.parent)), 'rows': rows}


def _cohort_info(root: Path) -> dict:
    desc = json.loads((root / 'bids' / 'dataset_description.json').read_text())
    n = sum(1 for _ in (root / 'bids').glob('sub-*'))
    return {'n_subjects': n, 'generated_by': desc.get('GeneratedBy', [{}])[0].get('Description'),
            'folder': str(root)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--train', type=int, default=24)
    ap.add_argument('--test', type=int, default=24)
    ap.add_argument('--n-synth', type=int, default=500)
    ap.add_argument('--n-generated', type=int, default=200)
    ap.add_argument('--population', type=int, default=120,
                    help='subjects of a T1w+FDG phantom cohort (seed 7777) whose relations are a '
                         'third, low-noise reference of the coherence (0: skip)')
    ap.add_argument('--epochs', type=int, default=300)
    ap.add_argument('--work', type=Path, default=Path('/tmp/bids_synth-bench-clinical'))
    ap.add_argument('--model', type=Path,
                    help='the fitted model of the --train-dir cohort (default: run group on it)')
    ap.add_argument('--train-dir', type=Path,
                    help='a training cohort already fitted by group (bids/, out/, work/), e.g. '
                         'the --work folder of training/default_model.py')
    ap.add_argument('--out', type=Path, default=HERE / 'results' / 'clinical.json')
    args = ap.parse_args(argv)
    from bids_synth.models.loading import load_imputer
    from bids_synth.models.tabular import load_tabular

    t0 = time.monotonic()
    roots = {'train': args.train_dir or args.work / 'train', 'test': args.work / 'test'}
    if args.model and not (roots['train'] / 'bids' / 'participants.tsv').is_file():
        # the model's own recipe cohort (its card says how it was made)
        from bids_synth.models.checkpoint import read_card
        from bids_synth.phantom import generate_cohort

        recipe = read_card(args.model).get('recipe', {}).get('phantom')
        if not recipe:
            raise SystemExit(f'{args.model}: no recipe cohort in its card; pass --train-dir')
        generate_cohort(roots['train'] / 'bids', ground_truth=roots['train'] / 'groundtruth',
                        **recipe)
    for k, n in (('train', args.train), ('test', args.test)):
        if not (roots[k] / 'bids' / 'participants.tsv').is_file():
            _cohort(roots[k], n, SEEDS[k])
    if args.model and not (roots['train'] / 'work' / 'bids_synth_group_wf').is_dir():
        from bids_synth.training.conformed import conform_cohort

        conform_cohort(roots['train'] / 'bids', roots['train'] / 'conformed', res=4, procs=2)
    from bids_synth.training.conformed import conform_cohort

    timings = {}
    t = time.monotonic()
    held_out = sorted(p.name[4:] for p in (roots['test'] / 'bids').glob('sub-*'))[:args.test]
    conform_cohort(roots['test'] / 'bids', roots['test'] / 'conformed', res=4, procs=2,
                   subjects=held_out)
    timings['conform_held_out_s'] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    train_model = args.model or _group(roots['train'])
    timings['group_train_s'] = round(time.monotonic() - t, 1)
    tab = load_tabular(train_model)
    imputer = load_imputer(train_model)
    train_sessions = _sessions(roots['train'])
    test_sessions = [s for s in _sessions(roots['test']) if s.subject in held_out]
    import pandas as pd

    def read_truth(root):
        truth = {}
        for _, r in pd.read_csv(root / 'groundtruth' / 'participants.tsv', sep='\t').iterrows():
            sub = str(r['participant_id']).removeprefix('sub-')
            truth[sub] = {k: (None if (isinstance(v, float) and np.isnan(v)) else v)
                          for k, v in r.items()}
            for k in ('diagnosis', 'amyloid', 'sex', 'apoe4'):
                if truth[sub].get(k) is not None:
                    truth[sub][k] = str(truth[sub][k])
        return truth

    truth = read_truth(roots['test'])
    t = time.monotonic()
    imputation = _imputation(train_sessions, test_sessions, truth, tab, imputer)
    timings['imputation_s'] = round(time.monotonic() - t, 1)
    print(json.dumps(imputation, indent=1))
    first = {}
    for s in train_sessions:
        first.setdefault(s.subject, dict(s.clinical))
    test_rows = [dict(s.clinical) for s in test_sessions]
    t = time.monotonic()
    fidelity = _fidelity(list(first.values()), test_rows, tab, args.n_synth, args.epochs,
                         population=_population(args.n_synth, SEEDS['population']))
    timings['fidelity_s'] = round(time.monotonic() - t, 1)
    print(json.dumps(fidelity, indent=1))
    t = time.monotonic()
    train_truth = (read_truth(roots['train'])
                   if (roots['train'] / 'groundtruth' / 'participants.tsv').is_file() else None)
    population = None
    if args.population:
        root = args.work / 'population'
        if not (root / 'bids' / 'participants.tsv').is_file():
            from bids_synth.phantom import generate_cohort

            generate_cohort(root / 'bids', n_subjects=args.population, seed=SEEDS['images'],
                            missing=0.0, resolution='low', modalities=('T1w', 'FDG'),
                            ground_truth=root / 'groundtruth', n_jobs=2)
        conform_cohort(root / 'bids', root / 'conformed', res=4, procs=2)
        population = (_sessions(root), read_truth(root))
    coherence = _coherence(test_sessions, truth, tab, imputer, args.n_generated, seed=1,
                           train=(train_sessions, train_truth) if train_truth else None,
                           population=population)
    timings['coherence_s'] = round(time.monotonic() - t, 1)
    print(json.dumps(coherence, indent=1))
    mosaic = _mosaic(tab, imputer, HERE.parent / 'docs' / 'img' / 'clinical_generated.png')
    result = {
        'machine': _machine(),
        'mosaic': mosaic,
        'cohorts': {'train': _cohort_info(roots['train']),
                    'held_out': {'n_subjects': len(held_out), 'seed': SEEDS['test'],
                                 'subjects': held_out},
                    'phantom': {'resolution': 'low', 'missing': 0.15}, 'model_res_mm': 4,
                    'method': 'regression', 'model': str(train_model)},
        'imputation': imputation,
        'tabular_fidelity': {'n_synthetic_rows': args.n_synth, 'epochs_ctgan_tvae':
                             args.epochs, 'n_training_rows': len(first),
                             'n_held_out_rows': len(test_rows), 'scores': fidelity},
        'coherence': coherence,
        'seconds': timings,
        'wall_seconds': round(time.monotonic() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(result, indent=2, default=float) + '\n')
    os.replace(tmp, args.out)
    print(f'written {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
