"""Generate a phantom BIDS cohort, its ground truth and its clinical table.

>>> from bids_synth.phantom.cohort import draw_missing
>>> miss = draw_missing([('001', None), ('002', None)], ('T1w', 'FDG'), {'FDG': 1.0}, seed=0)
>>> miss[('001', None)], miss[('002', None)]
(['FDG'], ['FDG'])
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bids_synth.bids.modalities import DEFAULT_TARGETS, UnknownModalityError, resolve_modalities
from bids_synth.errors import CannotCreateOutputError, UsageError

from .clinical import COLUMNS, PARTICIPANTS_JSON, Subject, clinical_note, draw_subject
from .session import RESOLUTIONS, render_session

__all__ = ['PhantomCohort', 'generate_cohort', 'draw_missing', 'parse_missing']

_NA_RATES = {'education_years': 0.05, 'apoe4': 0.1, 'mmse': 0.05, 'amyloid': 0.12}
_MARK = 'bids_synth phantom'


@dataclass
class PhantomCohort:
    """What ``generate_cohort`` made.

    Attributes
    ----------
    bids_dir, ground_truth_dir : Path
        The BIDS dataset (with missing files) and the complete ground truth beside it.
    participants : pandas.DataFrame
        ``participants.tsv`` as written (``n/a`` read as NaN).
    missing : dict
        ``(subject, session) -> [modality, ...]`` for every session, with labels without
        prefixes (``('001', None)`` when there is one session per subject, else
        ``('001', '1')``).
    truth : pandas.DataFrame
        The true clinical values (nothing missing), one row per participant.
    sessions : dict
        ``(subject, session) -> dict`` with age, severity, mmse, wmh_ml and, per modality,
        ``template_from_voxel``: the 4x4 affine from native voxel indices to template (MNI) mm
        (head pose and head size; the small non-linear warp is left out).
    """

    bids_dir: Path
    ground_truth_dir: Path
    participants: pd.DataFrame
    missing: dict
    truth: pd.DataFrame
    sessions: dict = field(default_factory=dict)


def parse_missing(missing, modalities) -> dict[str, float]:
    """Missingness per modality from a fraction or a ``{modality: rate}`` mapping."""
    if isinstance(missing, dict):
        try:
            names = resolve_modalities(missing)
        except UnknownModalityError as exc:
            raise UsageError(f'missing: {exc}') from None
        rates = dict.fromkeys(modalities, 0.0)
        for name, raw in zip(names, missing.values()):
            if name not in modalities:
                raise UsageError(f'missing: modality {name!r} is not generated '
                                 f'(modalities: {", ".join(modalities)})')
            rates[name] = raw
    else:
        rates = dict.fromkeys(modalities, missing)
    for name, rate in rates.items():
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise UsageError(f'missing rate for {name} is not a number: {rate!r}') from None
        if not 0.0 <= rate <= 1.0 or rate != rate:
            raise UsageError(f'missing rate for {name} must be between 0 and 1, got {rate}')
        rates[name] = rate
    if len(modalities) and all(r >= 1.0 for r in rates.values()):
        raise UsageError('missing: every modality would be missing in every session')
    return rates


def draw_missing(keys, modalities, rates: dict, seed: int) -> dict:
    """Which modalities each session lacks: exact counts per modality, no empty session.

    For each modality ``round(rate * n_sessions)`` sessions are drawn at random; a session left
    with nothing gets back one modality, swapped with a session that can lose it.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 77]))
    n = len(keys)
    miss = {key: set() for key in keys}
    for mod in modalities:
        count = int(round(rates.get(mod, 0.0) * n))
        for i in rng.permutation(n)[:count]:
            miss[keys[i]].add(mod)
    for key in keys:
        if len(miss[key]) < len(modalities):
            continue
        order = sorted(modalities, key=lambda m: rates.get(m, 0.0))
        done = False
        for mod in order:
            for other in rng.permutation(n):
                okey = keys[other]
                if mod not in miss[okey] and len(miss[okey]) < len(modalities) - 1:
                    miss[okey].add(mod)
                    miss[key].discard(mod)
                    done = True
                    break
            if done:
                break
        if not done:  # nowhere to move it: keep the session non-empty
            miss[key].discard(order[0])
    return {key: [m for m in modalities if m in miss[key]] for key in keys}


def _check_out(bids_dir: Path, gt_dir: Path, overwrite: bool) -> None:
    b, g = bids_dir.resolve(), gt_dir.resolve()
    if b == g or b in g.parents or g in b.parents:
        raise UsageError(f'the ground truth folder {gt_dir} must not be inside (or contain) the '
                         f'BIDS dataset {bids_dir}')
    for d in (bids_dir, gt_dir):
        if d.exists() and not d.is_dir():
            raise CannotCreateOutputError(f'{d}: exists and is not a folder')
        if d.is_dir() and any(d.iterdir()):
            desc = d / 'dataset_description.json'
            ours = desc.is_file() and _MARK in desc.read_text(errors='replace')
            if not overwrite:
                raise UsageError(f'{d}: folder is not empty (use overwrite to replace a '
                                 f'phantom cohort)')
            if not ours:
                raise UsageError(f'{d}: not empty and not a phantom cohort; refusing to overwrite')
            shutil.rmtree(d)
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / '.bids_synth_write_test'
            probe.write_text('')
            probe.unlink()
        except OSError as exc:
            raise CannotCreateOutputError(f'{d}: cannot create output folder ({exc.strerror})') \
                from None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version('bids_synth')
    except Exception:  # noqa: BLE001 - not installed (source tree)
        return '0+unknown'


def _write_dataset_files(root: Path, *, name: str, seed: int, table: pd.DataFrame,
                         longitudinal: dict | None, readme: str) -> None:
    desc = {
        'Name': name,
        'BIDSVersion': '1.10.0',
        'DatasetType': 'raw',
        'License': 'CC0',
        'Authors': ['bids_synth phantom generator'],
        'HowToAcknowledge': 'Simulated data: no acknowledgement needed.',
        'GeneratedBy': [{'Name': 'bids_synth phantom', 'Version': _version(),
                         'Description': f'generate_cohort(seed={seed})'}],
    }
    (root / 'dataset_description.json').write_text(json.dumps(desc, indent=2) + '\n')
    (root / 'README').write_text(readme)
    (root / 'CHANGES').write_text(f'1.0.0 (simulated)\n  - generated by bids_synth phantom '
                                  f'{_version()}, seed {seed}\n')
    table.to_csv(root / 'participants.tsv', sep='\t', index=False, na_rep='n/a',
                 lineterminator='\n')
    (root / 'participants.json').write_text(json.dumps(PARTICIPANTS_JSON, indent=2) + '\n')
    if longitudinal:
        for sub, rows in longitudinal.items():
            path = root / f'sub-{sub}' / f'sub-{sub}_sessions.tsv'
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(path, sep='\t', index=False, na_rep='n/a',
                                      lineterminator='\n')
        (root / 'sessions.json').write_text(json.dumps({
            'age': {'Description': 'Age at the session', 'Units': 'year'},
            'mmse': {'Description': 'Mini-Mental State Examination score at the session (0-30)',
                     'Units': 'score'},
        }, indent=2) + '\n')


_README = """# {name}

Simulated multimodal brain-imaging cohort made by `bids_synth.phantom` (seed {seed}):
{n} participants, {s} session(s) each, modalities {mods}. Anatomy from the MNI152 2009a
symmetric template with random diffeomorphic warps; clinical values, notes and image effects
(atrophy, white-matter lesions, FDG hypometabolism, amyloid, diffusion and connectivity changes)
are simulated. A test bed, not real data.
{extra}"""


def _subject_table(subjects: list[Subject], seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, truth = [], []
    for i, s in enumerate(subjects):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i, 55]))
        full = {'participant_id': f'sub-{s.label}', 'age': s.age, 'sex': s.sex,
                'education_years': s.education_years, 'apoe4': s.apoe4, 'mmse': s.mmse,
                'diagnosis': s.diagnosis, 'amyloid': 'positive' if s.amyloid else 'negative'}
        known = dict(full)
        for col, rate in _NA_RATES.items():
            if rng.random() < rate:
                known[col] = None
        note_rng = np.random.default_rng(np.random.SeedSequence([int(seed), i, 56]))
        known['clinical_notes'] = clinical_note(note_rng, s, known)
        full['clinical_notes'] = clinical_note(note_rng, s, full)
        rows.append(known)
        truth.append(full)
    cols = list(COLUMNS)
    table = pd.DataFrame(rows, columns=cols)
    for col in ('education_years', 'apoe4', 'mmse'):
        table[col] = table[col].astype('Int64')
    return table, pd.DataFrame(truth, columns=cols)


def _job(args):
    return render_session(*args[:2], **args[2])


def generate_cohort(
    out_dir,
    *,
    n_subjects: int = 6,
    n_sessions: int = 1,
    seed: int = 0,
    modalities=DEFAULT_TARGETS,
    missing=0.3,
    resolution: str = 'default',
    ground_truth=None,
    overwrite: bool = False,
    n_jobs: int = 1,
    clean: bool = False,
    shift_contrast: bool = False,
) -> PhantomCohort:
    """Generate a phantom BIDS cohort and its complete ground truth.

    Parameters
    ----------
    out_dir : path
        The BIDS dataset to create (must be empty or absent).
    n_subjects, n_sessions : int
        Participants (``sub-001``...) and sessions per participant (``ses-1``... when > 1;
        no session level when 1).
    seed : int
        Same seed, same cohort (byte-identical images).
    modalities : sequence of str
        Among T1w, T2w, FLAIR, FDG, AV45, bold, dwi (any case).
    missing : float or dict
        Fraction of sessions in which each modality is missing, or ``{modality: rate}``.
        No session is ever left without a modality.
    resolution : {'default', 'low'}
        'default': anat ~1 mm, PET 2 mm, bold 3 mm (120 volumes), dwi 2 mm (2 b0 + 30 dirs);
        'low' (fast, for tests): anat 2 mm, PET 3 mm, bold 4 mm (60 volumes), dwi 3 mm.
    ground_truth : path, optional
        Folder for the ground truth; default ``f'{out_dir}_groundtruth'``. Never inside the
        BIDS dataset.
    overwrite : bool
        Replace an existing phantom cohort at these paths.
    n_jobs : int
        Sessions rendered in parallel processes.
    clean : bool
        Render the same cohort without the acquisition's bias fields and noise (MRI bias and
        Rician noise, PET counting noise, bold thermal noise): the same subjects, anatomy,
        tracer maps and BOLD fluctuations. An oracle reference for benchmarks (the best any
        imputer could do), not realistic data.
    shift_contrast : bool
        Pass the sMRI and PET images through another scanner's contrast (random intensity
        curve, bias field, noise and blur: :mod:`.scanner`), drawn per session and modality from
        generators of their own, so the cohort is otherwise the same.

    Returns
    -------
    PhantomCohort

    Raises
    ------
    UsageError
        Bad arguments (exit code 64).
    CannotCreateOutputError
        Output folders cannot be created or written (exit code 73).
    """
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) \
            or n_subjects < 1:
        raise UsageError(f'number of subjects must be a positive integer, got {n_subjects!r}')
    if isinstance(n_sessions, bool) or not isinstance(n_sessions, (int, np.integer)) \
            or n_sessions < 1:
        raise UsageError(f'number of sessions must be a positive integer, got {n_sessions!r}')
    if n_subjects > 999:
        raise UsageError('at most 999 subjects')
    if isinstance(modalities, str):
        modalities = [modalities]
    try:
        mods = resolve_modalities(modalities)
    except UnknownModalityError as exc:
        raise UsageError(str(exc)) from None
    if not mods:
        raise UsageError('no modality requested')
    unsupported = [m for m in mods if m not in DEFAULT_TARGETS]
    if unsupported:
        raise UsageError(f'the phantom does not simulate {", ".join(unsupported)}; '
                         f'choose among {", ".join(DEFAULT_TARGETS)}')
    mods = tuple(m for m in DEFAULT_TARGETS if m in mods)
    if resolution not in RESOLUTIONS:
        raise UsageError(f'unknown resolution {resolution!r}; choose among '
                         f'{", ".join(RESOLUTIONS)}')
    rates = parse_missing(missing, mods)
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise UsageError(f'seed must be an integer, got {seed!r}') from None
    if seed < 0:
        raise UsageError(f'seed must be non-negative, got {seed}')
    bids_dir = Path(out_dir)
    gt_dir = Path(ground_truth) if ground_truth is not None else Path(f'{bids_dir}_groundtruth')
    _check_out(bids_dir, gt_dir, overwrite)

    subjects = [
        draw_subject(np.random.default_rng(np.random.SeedSequence([seed, i, 50])),
                     f'{i + 1:03d}', n_sessions)
        for i in range(n_subjects)
    ]
    keys = [(s.label, v.session) for s in subjects for v in s.visits]
    miss = draw_missing(keys, mods, rates, seed)
    jobs = []
    for i, s in enumerate(subjects):
        for k, v in enumerate(s.visits):
            roots = {m: [gt_dir] + ([] if m in miss[(s.label, v.session)] else [bids_dir])
                     for m in mods}
            jobs.append((s, k, dict(seed=seed, sub_index=i, modalities=mods,
                                    resolution=resolution, roots=roots, clean=clean,
                                    shift_contrast=shift_contrast)))
    try:
        if n_jobs > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs))) as pool:
                truths = list(pool.map(_job, jobs))
        else:
            truths = [_job(j) for j in jobs]
    except OSError as exc:
        raise CannotCreateOutputError(f'cannot write the cohort: {exc}') from None
    table, truth = _subject_table(subjects, seed)
    longitudinal = None
    if n_sessions > 1:
        longitudinal = {s.label: [{'session_id': f'ses-{v.session}', 'age': v.age,
                                   'mmse': v.mmse} for v in s.visits] for s in subjects}
    name = f'{_MARK} cohort (seed {seed})'
    fmt = dict(name=name, seed=seed, n=n_subjects, s=n_sessions, mods=', '.join(mods))
    _write_dataset_files(bids_dir, name=name, seed=seed, table=table, longitudinal=longitudinal,
                         readme=_README.format(extra='\nSome sessions lack some modalities; '
                                               'the complete data are in the ground-truth '
                                               'folder.\n', **fmt))
    _write_dataset_files(gt_dir, name=f'{name} ground truth', seed=seed, table=truth,
                         longitudinal=longitudinal,
                         readme=_README.format(extra='\nGround truth: every modality of every '
                                               'session, true clinical values; '
                                               'phantom_truth.json has per-session simulation '
                                               'parameters.\n', **fmt))
    sessions = dict(zip(keys, truths))
    (gt_dir / 'phantom_truth.json').write_text(json.dumps(
        {f'sub-{k[0]}' + (f'_ses-{k[1]}' if k[1] else ''): v for k, v in sessions.items()},
        indent=1) + '\n')
    (gt_dir / '.bidsignore').write_text(
        'phantom_truth.json\n'
        '# tensor ground truth (model-tensor_param-*_dwimap) follows BEP016 (Diffusion\n'
        '# derivatives, https://bids.neuroimaging.io/bep016), not in the schema yet\n'
        '*_dwimap.nii.gz\n*_dwimap.json\n')
    participants = pd.read_csv(bids_dir / 'participants.tsv', sep='\t', na_values='n/a',
                               keep_default_na=False)
    return PhantomCohort(bids_dir, gt_dir, participants, miss, truth, sessions)
