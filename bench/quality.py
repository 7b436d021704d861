"""Imputation quality on a held-out phantom cohort: diffusion vs regression vs cohort mean.

- Models, all fitted on the recipe cohort of ``training.default_model.RECIPE`` (24 phantom
  subjects, seed 2026): the regression baseline is the embedded default model; the diffusion
  model is the same recipe run with ``--method diffusion`` (``--diffusion DIR``); with
  ``--pair`` a dedicated single-pair diffusion model (T1w -> FDG) is trained on the regenerated
  cohort too.
- Held-out data: a complete phantom cohort from a seed never used in training, conformed the
  same way (its ground truth is every modality).
- Metrics (``bids_synth.metrics``): PSNR / SSIM / MAE inside the brain mask, per target
  modality (from every other modality) and per missing pattern (one structural input - T1w,
  or FDG for T1w - and no input at all).
- Ceiling: the held-out cohort rendered again without the acquisition's bias fields and noise
  (``generate_cohort(clean=True)``: same subjects, anatomy, tracer maps), conformed the same way.
  Scored against the acquired images it is an oracle that knows everything about the subject
  but the acquisition noise: what no imputer can beat, so ``oracle - regression`` bounds the
  gain over the regression that is possible at all. Every method is also scored against the
  clean images (``*_clean``).

JSON to bench/results/quality.json; table in docs/benchmarks.md.

    python -m bids_synth.training.default_model --method diffusion --out DIFF_DIR
    python bench/quality.py --diffusion DIFF_DIR [--heldout 3] [--work DIR] [--pair]
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
#: the dedicated single-pair model of ``--pair``: (input, target)
PAIR = ('T1w', 'FDG')


def _conform_cohort(bids_dir: Path, work: Path, res: int):
    """Conform every image of every session; list of SessionArrays."""
    from bids_synth.bids.clinical import load_clinical
    from bids_synth.bids.layout import collect_sessions, load_layout
    from bids_synth.models.imputer import SessionArrays
    from bids_synth.preprocessing.conform import conform, load_conformed, save_conformed
    from bids_synth.preprocessing.templates import load_template

    tpl = load_template(res)
    clinical = load_clinical(bids_dir)
    out = []
    for inv in collect_sessions(load_layout(bids_dir)):
        images = {}
        for mod in inv.available:
            f = inv.files[mod]
            cache = work / inv.label / f'{mod}.nii.gz'
            if not cache.is_file():
                res_ = conform(f.path, mod, tpl, work / inv.label / mod, metadata=f.metadata)
                save_conformed(res_, cache, tpl)
            images[mod] = load_conformed(cache)
        out.append(SessionArrays(inv.subject, inv.session, images,
                                 clinical.for_session(inv.subject, inv.session)))
    return out


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


def markdown(result: dict) -> str:
    """The tables of docs/benchmarks.md from a result (``python bench/quality.py --table F``)."""
    summ = result['summary_all_other_inputs']
    lines = ['| target | diffusion | regression | cohort mean | oracle (ceiling) | '
             'diffusion - regression | oracle - regression |', '| --- ' * 7 + '|']
    for t, v in summ.items():
        lines.append(f"| {t} | {v['diffusion_psnr']:.1f} / {v['diffusion_ssim']:.2f} | "
                     f"{v['regression_psnr']:.1f} / {v['regression_ssim']:.2f} | "
                     f"{v['mean_psnr']:.1f} / {v['mean_ssim']:.2f} | "
                     f"{v['oracle_psnr']:.1f} / {v['oracle_ssim']:.2f} | "
                     f"{v['diffusion_minus_regression_db']:+.1f} | "
                     f"{v['oracle_minus_regression_db']:+.1f} |")
    lines += ['', 'Against the clean (noise- and bias-free) images, PSNR dB:', '',
              '| target | diffusion | regression | cohort mean |', '| --- ' * 4 + '|']
    for t, v in summ.items():
        lines.append(f"| {t} | {v['diffusion_psnr_clean']:.1f} | "
                     f"{v['regression_psnr_clean']:.1f} | {v['mean_psnr_clean']:.1f} |")
    res = result['per_target_per_pattern']
    lines += ['', 'Per missing pattern (regression / diffusion PSNR, dB):', '',
              '| target | all others | one input | none |', '| --- ' * 4 + '|']
    for t in summ:
        cells = []
        for key in res['regression'][t]:
            r, d = res['regression'][t][key]['psnr'], res['diffusion'][t][key]['psnr']
            label = '' if key == '(none)' or '+' in key else f'{key}: '
            cells.append(f'{label}{r:.1f} / {d:.1f}')
        lines.append(f"| {t} | {' | '.join(cells)} |")
    pair = result.get('pair_model')
    if pair and 'error' in pair:
        lines += ['', f"Dedicated pair model {pair['inputs']} -> {pair['target']}: no figure "
                  f"({pair['error']})."]
    elif pair:
        lines += ['', f"Dedicated pair model {pair['inputs']} -> {pair['target']}: "
                  f"{pair['pair_model']['psnr']:.1f} dB; the any-subset model with the same "
                  f"input: {pair['any_subset_model']['psnr']:.1f} dB "
                  f"(given up: {pair['psnr_given_up_db']:+.1f} dB)."]
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--heldout', type=int, default=3, help='held-out subjects')
    ap.add_argument('--work', type=Path, default=Path(os.environ.get('TMPDIR', '/tmp')) /
                    'bids_synth_bench_quality')
    ap.add_argument('--table', type=Path, metavar='JSON',
                    help='print the markdown tables of a saved result and exit')
    ap.add_argument('--diffusion', type=Path,
                    help='diffusion model of the default recipe (training.default_model '
                    '--method diffusion)')
    ap.add_argument('--pair', action='store_true',
                    help='also train and score a dedicated T1w -> FDG diffusion model')
    ap.add_argument('--num-samples', type=int, default=1,
                    help='diffusion samples averaged per prediction (K)')
    ap.add_argument('--steps', type=int, default=None,
                    help='diffusion sampler steps (default: the model card\'s)')
    ap.add_argument('--out', type=Path, default=HERE / 'results' / 'quality.json')
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.table.read_text())), end='')
        return 0
    if args.diffusion is None:
        ap.error('--diffusion is required')
    os.environ.setdefault('NIPYPE_NO_ET', '1')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')

    from bids_synth.bids.clinical import load_clinical
    from bids_synth.errors import ModelError
    from bids_synth.models.baseline import RegressionImputer
    from bids_synth.models.synthesis import DiffusionImputer
    from bids_synth.phantom import generate_cohort
    from bids_synth.preprocessing.templates import ensure_templateflow_home, load_template
    from bids_synth.training.default_model import RECIPE
    from bids_synth.training.fit import fit_model
    from bids_synth.workflows.base import default_model_dir

    ensure_templateflow_home()
    t_start = time.monotonic()
    work = args.work
    model_dir = args.diffusion
    diffusion = DiffusionImputer.load(model_dir)
    card = diffusion.card()
    res = int(card['template']['res'])
    tpl = load_template(res)
    mask = tpl.mask.astype(bool)
    modalities = tuple(card['modalities'])
    regression = RegressionImputer.load(default_model_dir())
    if int(regression.card()['template']['res']) != res:
        raise SystemExit('the regression and diffusion models are on different grids')

    held_bids = work / 'heldout' / 'bids'
    if not (held_bids / 'dataset_description.json').is_file():
        generate_cohort(held_bids, n_subjects=args.heldout, seed=HELDOUT_SEED, missing=0.0,
                        resolution=RECIPE['phantom']['resolution'],
                        ground_truth=work / 'heldout' / 'gt')
    held = _conform_cohort(held_bids, work / 'heldout' / 'conformed', res)
    clean_bids = work / 'heldout_clean' / 'bids'
    if not (clean_bids / 'dataset_description.json').is_file():
        generate_cohort(clean_bids, n_subjects=args.heldout, seed=HELDOUT_SEED, missing=0.0,
                        resolution=RECIPE['phantom']['resolution'], clean=True,
                        ground_truth=work / 'heldout_clean' / 'gt')
    clean = _conform_cohort(clean_bids, work / 'heldout_clean' / 'conformed', res)
    if [(s.subject, s.session) for s in clean] != [(s.subject, s.session) for s in held]:
        raise SystemExit('the clean and acquired held-out cohorts differ')

    def patterns_for(target):
        others = tuple(m for m in modalities if m != target)
        return [others, ('FDG',) if target == 'T1w' else ('T1w',), ()]

    sampler = card.get('sampler', {})
    t0 = time.monotonic()
    n_pred = [0]

    def diff_predict(sess, target):
        n_pred[0] += 1
        return diffusion.predict(sess, (target,), seed=0, num_samples=args.num_samples,
                                 steps=args.steps)[target].mean

    results = {
        'diffusion': _evaluate(diff_predict, held, mask, modalities, patterns_for, clean),
    }
    diff_seconds = (time.monotonic() - t0) / max(n_pred[0], 1)
    results['regression'] = _evaluate(
        lambda s, t: regression.predict(s, (t,))[t].mean, held, mask, modalities, patterns_for,
        clean)
    results['cohort_mean'] = _evaluate(
        lambda s, t: regression.predict(type(s)(s.subject, s.session, {}, {}), (t,))[t].mean,
        held, mask, modalities, lambda t: [()], clean)
    by_subject = {(s.subject, s.session): s for s in clean}
    results['oracle'] = _evaluate(
        lambda s, t: by_subject[(s.subject, s.session)].images[t], held, mask, modalities,
        lambda t: [()])

    pair = None
    if args.pair:
        train_bids = work / 'train' / 'bids'
        if not (train_bids / 'dataset_description.json').is_file():
            generate_cohort(train_bids, ground_truth=work / 'train' / 'gt', **RECIPE['phantom'])
        train = _conform_cohort(train_bids, work / 'train' / 'conformed', res)
        src, dst = PAIR
        pair_dir = work / f'pair_{src}_{dst}'
        if not (pair_dir / 'model_card.json').is_file():
            fit_model(train, method='diffusion', modalities=PAIR,
                      clinical_schema=load_clinical(train_bids).schema(), out_dir=pair_dir,
                      res=res, seed=RECIPE['seed'])
        pair_model = DiffusionImputer.load(pair_dir)
        pair = {'target': dst, 'inputs': src}
        try:
            pair_res = _evaluate(lambda s, t: pair_model.predict(
                s, (t,), seed=0, num_samples=args.num_samples, steps=args.steps)[t].mean,
                                 held, mask, (dst,), lambda t: [(src,)])
        except ModelError as exc:  # e.g. a diverged training: no figure, the reason instead
            pair['error'] = str(exc)
        else:
            anysub = results['diffusion'][dst][src]
            pair.update(pair_model=pair_res[dst][src], any_subset_model=anysub,
                        psnr_given_up_db=pair_res[dst][src]['psnr'] - anysub['psnr'])

    summary = {}
    for t in modalities:
        allin = '+'.join(m for m in modalities if m != t)
        d = results['diffusion'][t][allin]
        r = results['regression'][t][allin]
        m = results['cohort_mean'][t]['(none)']
        o = results['oracle'][t]['(none)']
        summary[t] = {'diffusion_psnr': d['psnr'], 'regression_psnr': r['psnr'],
                      'mean_psnr': m['psnr'], 'oracle_psnr': o['psnr'],
                      'diffusion_minus_regression_db': d['psnr'] - r['psnr'],
                      'oracle_minus_regression_db': o['psnr'] - r['psnr'],
                      'diffusion_ssim': d['ssim'], 'regression_ssim': r['ssim'],
                      'mean_ssim': m['ssim'], 'oracle_ssim': o['ssim'],
                      'diffusion_psnr_clean': d['psnr_clean'],
                      'regression_psnr_clean': r['psnr_clean'],
                      'mean_psnr_clean': m['psnr_clean']}
    result = {
        'benchmark': 'quality',
        'heldout': {'subjects': args.heldout, 'seed': HELDOUT_SEED, 'missing': 0.0},
        'training_cohort': RECIPE['phantom'],
        'model': {'path': str(model_dir), 'name': card.get('name'), 'sha256': card['sha256'],
                  'sampler': sampler},
        'regression_model': {'name': regression.card()['name'],
                             'path': str(default_model_dir())},
        'res': res,
        'summary_all_other_inputs': summary,
        'goal_diffusion_minus_regression_db': 2.0,
        'goal_met_every_target': all(v['diffusion_minus_regression_db'] >= 2.0
                                     for v in summary.values()),
        'goal_reachable_every_target': all(v['oracle_minus_regression_db'] >= 2.0
                                           for v in summary.values()),
        'num_samples': args.num_samples,
        'steps': args.steps or sampler.get('steps'),
        'pair_model': pair,
        'diffusion_seconds_per_prediction_cpu': diff_seconds,
        'per_target_per_pattern': results,
        'wall_seconds': time.monotonic() - t_start,
        'date': time.strftime('%Y-%m-%d'),
        'machine': {'cpus': os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps({k: result[k] for k in ('summary_all_other_inputs', 'goal_met_every_target',
                                             'goal_reachable_every_target', 'pair_model')},
                     indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
