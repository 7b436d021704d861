"""Ridge with and without contrast augmentation (``group --contrast-augmentation N``).

Both ridges are fitted as the group level fits the regression (penalty chosen on an inner
subject split) on the embedded default's recipe cohort (24 phantom subjects, seed 2026); the
augmented one adds N copies of each session whose sMRI/PET inputs get another scanner's random
contrast curve, bias field, noise and blur (``training.augment``), against the session's own
targets. Scored on the held-out cohort of ``bench/quality.py`` (seed 9090), each target from
every other modality: PSNR against the acquired images (standard contrasts), and against the
clean images with standard and with shifted inputs (``bids-synth-phantom --shift-contrast``).

    python bench/contrast_augmentation.py [--copies 2] [--train-conformed DIR] [--real]

``--real`` also runs ``bench/real.py``'s removed-modality comparisons (the real T2w/FLAIR of
``../shared/realdata`` synthesized from the other real contrasts) with each ridge.

Prints and writes ``bench/results/contrast_augmentation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _score(model, held, clean, shifted, mask, modalities):
    from bids_synth.metrics import psnr
    from bids_synth.models.imputer import SessionArrays

    out = {}
    for t in modalities:
        rows = {'standard_vs_acquired': [], 'standard_vs_clean': [], 'shifted_vs_clean': []}
        for i, s in enumerate(held):
            if t not in s.images:
                continue
            std = SessionArrays(s.subject, None, {m: a for m, a in s.images.items() if m != t},
                                s.clinical)
            pred = model.predict(std, (t,))[t].mean
            rows['standard_vs_acquired'].append(psnr(pred, s.images[t], mask))
            rows['standard_vs_clean'].append(psnr(pred, clean[i].images[t], mask))
            sh = shifted[i]
            sh_in = SessionArrays(s.subject, None,
                                  {m: a for m, a in sh.images.items() if m != t}, s.clinical)
            rows['shifted_vs_clean'].append(psnr(model.predict(sh_in, (t,))[t].mean,
                                                 clean[i].images[t], mask))
        out[t] = {k: round(float(np.mean(v)), 2) for k, v in rows.items() if v}
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    from quality import add_cohort_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--copies', type=int, default=2)
    add_cohort_arguments(ap)
    ap.add_argument('--real', action='store_true',
                    help="also bench/real.py's removed-modality comparisons on the real scans")
    ap.add_argument('--out', type=Path, default=HERE / 'results' / 'contrast_augmentation.json')
    args = ap.parse_args(argv)

    import real
    from quality import HELDOUT_SEED, training_and_heldout

    from bids_synth.bids.clinical import load_clinical
    from bids_synth.models.baseline import RegressionImputer
    from bids_synth.preprocessing.templates import ensure_templateflow_home, load_template
    from bids_synth.training.default_model import RECIPE
    from bids_synth.training.fit import fit_model

    ensure_templateflow_home()
    t0 = time.monotonic()
    res = RECIPE['res']
    tpl = load_template(res)
    mask = tpl.mask.astype(bool)
    data = training_and_heldout(args.work, args.train_conformed, shifted=True,
                                recipe_subjects=args.recipe_subjects)
    bids, train, held, clean, shifted = (data[k] for k in ('bids', 'train', 'held', 'clean',
                                                          'shifted'))
    schema = load_clinical(bids).schema()
    modalities = [m for m in ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45', 'bold', 'dwi')
                  if any(m in s.images for s in train)]
    result = {'benchmark': 'ridge contrast augmentation', 'copies': args.copies,
              'training': {'n_sessions': len(train), 'seed': RECIPE['seed']},
              'heldout': {'n_subjects': len(held), 'seed': HELDOUT_SEED}, 'fits': {}}
    for name, copies in (('plain', 0), ('augmented', args.copies)):
        t = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            path = fit_model(train, method='regression', modalities=modalities,
                             clinical_schema=schema, out_dir=Path(tmp) / 'm', res=res,
                             seed=RECIPE['seed'], contrast_augmentation=copies)
            model = RegressionImputer.load(path)
            seconds = round(time.monotonic() - t, 1)
            fit = {'penalty': model.lam, 'fit_seconds_incl_clinical_head': seconds,
                   'scores': _score(model, held, clean, shifted, mask, modalities)}
            if args.real and (real.REAL / 'bids').is_dir():
                real.MODEL[0] = str(path)
                removed = real.removed_comparisons(Path(tmp))
                fit['real_removed'] = {
                    k: {m: v[m] for m in ('pearson_r_synth', 'psnr_synth_db') if m in v}
                    for k, v in removed.items() if k != 'run'}
                fit['real_removed']['exit_code'] = removed['run']['exit_code']
        result['fits'][name] = fit
    plain, aug = (result['fits'][k]['scores'] for k in ('plain', 'augmented'))
    result['augmented_minus_plain_db'] = {
        t: {k: round(aug[t][k] - plain[t][k], 2) for k in plain[t]} for t in plain}
    result['machine'] = {'cpus': os.cpu_count(), 'platform': platform.platform()}
    result['wall_seconds'] = round(time.monotonic() - t0, 1)
    result['date'] = time.strftime('%Y-%m-%d')
    print(json.dumps(result['augmented_minus_plain_db'], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + '\n')
    print(f'written {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
