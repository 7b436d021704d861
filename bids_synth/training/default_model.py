"""The recipe of the embedded default model (``make default-model``).

It takes the same path a user takes: a phantom cohort is generated with a fixed seed, then
``bids_synth BIDS OUT group --method METHOD`` fits the model on it (conform, fit with a
subject-wise split, validation), and the result is copied into ``bids_synth/data/`` with a card
that says what it was trained on and how to rebuild it.

The shipped default is still the ``regression`` method: the diffusion recipe (ridge base,
wavelet-space mean network, residual flow; docs/model.md) trains on 2 CPU cores in about 30
minutes, conform included (``--method diffusion``), but its benchmark against the ridge is not
done yet, so it is not what a user gets by default.

    python -m bids_synth.training.default_model --out bids_synth/data/default_model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ['main', 'RECIPE']

#: The phantom cohort and training settings of the shipped model.
RECIPE = {
    'phantom': {'n_subjects': 24, 'n_sessions': 1, 'seed': 2026, 'missing': 0.15,
                'resolution': 'low'},
    'res': 4,
    'seed': 0,
    'method': 'regression',
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', type=Path, default=Path(__file__).parents[1] / 'data' /
                    'default_model')
    ap.add_argument('--work', type=Path, help='keep the cohort and work folder here')
    ap.add_argument('--subjects', type=int, default=RECIPE['phantom']['n_subjects'])
    ap.add_argument('--train-steps', type=int, default=0, help='0: the trainer default')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--method', default=RECIPE['method'], choices=['regression', 'diffusion'])
    ap.add_argument('--nprocs', type=int, default=os.cpu_count() or 1)
    ap.add_argument('--clinical-head-only', action='store_true',
                    help='refit only the tabular part (clinical head, row generator) with the '
                         'same recipe and add it to the model in --out, keeping its weights')
    args = ap.parse_args(argv)

    from ..cli.run import main as bids_synth
    from ..models.checkpoint import CARD_NAME, WEIGHTS_NAME, read_card
    from ..models.image_components import COMPONENTS_NAME
    from ..models.tabular import TABULAR_NAME
    from ..phantom import generate_cohort

    tmp_ctx = tempfile.TemporaryDirectory(prefix='bids_synth-default-') if not args.work else None
    root = Path(tmp_ctx.name if tmp_ctx else args.work)
    root.mkdir(parents=True, exist_ok=True)
    phantom = dict(RECIPE['phantom'], n_subjects=args.subjects)
    t0 = time.monotonic()
    bids = root / 'bids'
    if not (bids / 'dataset_description.json').is_file():
        generate_cohort(bids, ground_truth=root / 'groundtruth', **phantom)
    if args.clinical_head_only:
        return _add_clinical_head(bids, root, args.out, args.nprocs, t0, tmp_ctx)
    cmd = [str(bids), str(root / 'out'), 'group', '--method', args.method, '--res',
           str(RECIPE['res']), '--seed', str(RECIPE['seed']), '-w', str(root / 'work'),
           '--nprocs', str(args.nprocs), '--omp-nthreads', '1', '--skip-bids-validation',
           '--device', args.device]
    if args.train_steps and args.method == 'diffusion':
        cmd += ['--train-steps', str(args.train_steps)]
    code = bids_synth(cmd)
    if code:
        return code
    src = root / 'out' / 'models' / args.method
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / WEIGHTS_NAME, args.out / f'.{WEIGHTS_NAME}.tmp')
    os.replace(args.out / f'.{WEIGHTS_NAME}.tmp', args.out / WEIGHTS_NAME)
    card = read_card(src)
    if (src / TABULAR_NAME).is_file():  # the clinical head group fitted with these weights
        for name in (TABULAR_NAME, COMPONENTS_NAME):  # and its image generator
            if (src / name).is_file():
                shutil.copy2(src / name, args.out / f'.{name}.tmp')
                os.replace(args.out / f'.{name}.tmp', args.out / name)
        card['tabular']['recipe'] = ('fitted by the group level of `make default-model` on '
                                     'the recipe cohort, with these weights')
    card['name'] = 'bids_synth-default'
    card['origin'] = 'embedded default'
    card['recipe'] = {
        'command': 'make default-model',
        'phantom': phantom,
        'method': args.method,
        'group_command': 'bids_synth BIDS OUT ' + ' '.join(cmd[2:]),
        'trained_on': {'machine': platform.machine(), 'cpus': os.cpu_count(),
                       'device': card.get('training', {}).get('device', args.device)},
        'wall_seconds': round(time.monotonic() - t0, 1),
        'note': 'trained on a phantom cohort (bids-synth-phantom): a working demonstration, '
                'not a model of real brains; fit your own with the group level',
    }
    tmp = args.out / f'.{CARD_NAME}.tmp'
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True))
    os.replace(tmp, args.out / CARD_NAME)
    read_card(args.out)
    size = (args.out / WEIGHTS_NAME).stat().st_size / 2**20
    print(f'default model written to {args.out} ({size:.1f} MB) in '
          f'{time.monotonic() - t0:.0f} s')
    if tmp_ctx:
        tmp_ctx.cleanup()
    return 0


def _add_clinical_head(bids: Path, root: Path, dest: Path, nprocs: int, t0: float,
                       tmp_ctx) -> int:
    """Fit the tabular part of the model in ``dest`` on the recipe cohort and add it.

    The cohort is conformed with the participant level's conform function (cached under
    ``<work>/conformed``), its clinical table read as ``group`` reads it, and the head fitted
    with the model's own predictions (``training.fit.fit_clinical_head``): the weights and the
    rest of the card are kept.
    """
    from ..bids.clinical import load_clinical
    from ..models.checkpoint import CARD_NAME, read_card
    from ..models.loading import load_imputer
    from .conformed import conform_cohort, load_sessions
    from .fit import fit_clinical_head

    card = read_card(dest)
    res = int(card['template']['res'])
    conform_cohort(bids, root / 'conformed', res=res, procs=nprocs,
                   modalities=card['modalities'])
    sessions = load_sessions(bids, root / 'conformed')
    tab = fit_clinical_head(load_imputer(dest), sessions, load_clinical(bids).schema(), dest,
                            res=res, seed=RECIPE['seed'])
    card = read_card(dest)
    card['tabular']['recipe'] = (
        '`python -m bids_synth.training.default_model --clinical-head-only` (the recipe '
        f'cohort conformed, the head fitted with these weights; {time.monotonic() - t0:.0f} s)')
    tmp = dest / f'.{CARD_NAME}.tmp'
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True))
    os.replace(tmp, dest / CARD_NAME)
    print(f'clinical head added to {dest} (columns: {", ".join(tab.head.columns)})')
    if tmp_ctx:
        tmp_ctx.cleanup()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
