"""A cohort's images conformed to the model grid, outside Nipype (recipes and benchmarks).

``conform_cohort`` runs the participant level's conform function (registration, brain
extraction when needed, representation, normalization) on every available image of a BIDS
dataset, in a process pool, caching each result as ``<dest>/<subject>[_<session>]_<modality>
.nii.gz`` (written to a temporary name and renamed); ``load_sessions`` reads them back as
:class:`~bids_synth.models.imputer.SessionArrays` with the dataset's clinical values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ['conform_cohort', 'load_sessions']


def _one(job) -> str:
    from ..preprocessing.conform import conform, save_conformed
    from ..preprocessing.templates import load_template

    path, mod, metadata, out, work, res, force = job
    if not Path(out).is_file():
        tpl = load_template(res)
        tmp = out[:-len('.nii.gz')] + '.tmp.nii.gz'
        save_conformed(conform(path, mod, tpl, work, metadata=metadata, force=force), tmp, tpl)
        os.replace(tmp, out)
    return out


def conform_cohort(bids_dir, dest, *, res: int, procs: int = 1, modalities=None,
                   subjects=None, force: bool = False) -> list[str]:
    """Conform every available image of ``bids_dir`` (of ``subjects``, default all) into
    ``dest``; return the files. ``force`` keeps inputs that fail the registration QC (as
    ``--force``: another scanner's contrast may)."""
    from concurrent.futures import ProcessPoolExecutor

    from ..bids.layout import collect_sessions, load_layout

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    jobs = []
    for inv in collect_sessions(load_layout(bids_dir), participant_labels=subjects or None):
        key = inv.subject + (f'_{inv.session}' if inv.session else '')
        for mod in inv.available:
            if modalities and mod not in modalities:
                continue
            f = inv.files[mod]
            jobs.append((str(f.path), mod, json.loads(json.dumps(f.metadata, default=str)),
                         str(dest / f'{key}_{mod}.nii.gz'), str(dest / 'work' / f'{key}_{mod}'),
                         int(res), bool(force)))
    if procs > 1:
        with ProcessPoolExecutor(procs) as pool:
            return list(pool.map(_one, jobs))
    return [_one(job) for job in jobs]


def load_sessions(bids_dir, dest, subjects=None) -> list:
    """The conformed sessions of :func:`conform_cohort` (of ``subjects``, default all) with
    their clinical values."""
    from ..bids.clinical import load_clinical
    from .fit import sessions_from_files

    files, mods, keys = [], [], []
    for f in sorted(Path(dest).glob('*.nii.gz')):
        if f.name.endswith('.tmp.nii.gz'):
            continue
        parts = f.name[:-len('.nii.gz')].split('_')
        mod = parts[-1]
        if subjects and parts[0] not in subjects:
            continue
        files.append(str(f))
        mods.append(mod)
        keys.append('/'.join(parts[:-1]))
    table = load_clinical(bids_dir)
    clinical = {}
    for k in set(keys):
        sub, _, ses = k.partition('/')
        clinical[k] = table.for_session(sub, ses or None)
    return sessions_from_files(files, mods, keys, clinical)
