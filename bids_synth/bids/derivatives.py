"""Writing the BIDS-Derivatives dataset: names, dataset_description.json, atomic writers.

A synthesized image never takes a raw file name: ``desc-synth`` (the estimate) or
``desc-synthstd`` (the samples' standard deviation) is always in the name.

What ``bids-validator-deno`` 3.0.2 (schema 1.2.7) wants of these files (tried on a small tree,
kept as a test in ``tests/test_derivatives.py``):

- every image needs a JSON sidecar with ``SkullStripped`` (an error without it);
  ``Description`` is recommended (a warning); ``Sources`` (BIDS URIs) is not checked but is what
  DESIGN section 4 asks for;
- template-space images (``res-``): ``Resolution`` is required, an object mapping the ``res-``
  label to its description (e.g. ``{'2': '2 mm isotropic'}``); ``SpatialReference`` is
  recommended (the template name, e.g. ``'MNI152NLin2009aSym'``);
- bold: the NIfTI header's time unit and ``pixdim[4]`` must equal ``RepetitionTime`` (the
  sidecar's ``TaskName``/``RepetitionTime`` are not required for a derivative but we keep them);
- pet: the sidecar fields raw PET requires are not required for a derivative;
- dwi: a derivative ``desc-synth_dwi.nii.gz`` (the series rendered for a gradient table)
  passes, but a ``desc-synth_dwi.bval``/``.bvec`` beside it is an error
  (ALL_FILENAME_RULES_HAVE_ISSUES), and BEP016 maps (``model-tensor_param-*_dwimap``) are
  NOT_INCLUDED. Two forms pass: ``.bidsignore`` (our choice, :func:`write_bidsignore`; readers
  find the gradients beside the image, as QSIPrep writes them), or inherited
  ``sub-01_dwi.bval`` files without ``desc-`` (rejected: a raw-looking name that a reader
  would take for an acquisition's table).
- derived bold maps (BEP012 ``stat-{mean,alff,falff,reho}_..._boldmap``) are NOT_INCLUDED:
  ``.bidsignore`` too. No ``_bold`` file is written: the model has no time series to give
  (a 4D ``_bold`` of segment means would need a made-up RepetitionTime).
- ``tests/test_derivatives.py`` checks that ``.bidsignore`` hides only these BEP files (and the
  reports, logs and models), never a synthesized image the schema names.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import nibabel as nib

from bids_synth.bids.modalities import MODALITIES
from bids_synth.errors import CannotCreateOutputError, UsageError

__all__ = [
    'BIDS_VERSION', 'CODE_URL', 'bids_uri', 'derivative_path', 'write_dataset_description',
    'write_nifti_atomic', 'write_json_atomic', 'write_text_atomic', 'write_bidsignore',
    'check_output_dirs', 'create_output_dirs', 'remove_created', 'BIDSIGNORE_LINES',
    'temp_path', 'remove_stale_temporaries', 'synth_path', 'MAIN_OUTPUT',
]

#: BIDS version of the outputs (what schema 1.2.7 of bids-validator-deno 3.0.2 validates).
BIDS_VERSION = '1.10.0'
CODE_URL = 'https://github.com/bids-synth/bids_synth'
#: BIDS entity order (of the entities bids_synth writes), and pybids name -> file-name key.
_ENTITY_KEYS = (('subject', 'sub'), ('session', 'ses'), ('task', 'task'), ('ceagent', 'ce'),
                ('tracer', 'trc'), ('space', 'space'), ('res', 'res'), ('desc', 'desc'))
#: What ``.bidsignore`` hides from the validator (see the module docstring).
BIDSIGNORE_LINES = (
    '# bids_synth: reports, their figures, run logs and fitted models are not BIDS files.',
    '# (bids-validator-deno matches folders only without a trailing slash)',
    '*.html',
    '**/figures',
    'logs',
    'models',
    '# bids_synth: derivative diffusion files the BIDS schema does not cover yet.',
    '# .bval/.bvec beside a desc-synth_dwi image, and diffusion-model maps, follow BEP016',
    '# (Diffusion derivatives, https://bids.neuroimaging.io/bep016) until it is merged.',
    '*_desc-synth_dwi.bval',
    '*_desc-synth_dwi.bvec',
    '*_dwimap.nii.gz',
    '*_dwimap.json',
    '# Derived bold maps (segment means, ALFF, fALFF, ReHo) follow BEP012 (Functional',
    '# preprocessing derivatives, https://bids.neuroimaging.io/bep012), not in the schema yet.',
    '*_boldmap.nii.gz',
    '*_boldmap.json',
)


def bids_uri(bids_dir: str | os.PathLike, path: str | os.PathLike, name: str = 'raw') -> str:
    """The BIDS URI of a file of the input dataset (``DatasetLinks`` name ``raw``).

    >>> bids_uri('/data', '/data/sub-01/anat/sub-01_T1w.nii.gz')
    'bids:raw:sub-01/anat/sub-01_T1w.nii.gz'
    >>> bids_uri('/data', 'sub-01/pet/sub-01_trc-FDG_pet.nii.gz')
    'bids:raw:sub-01/pet/sub-01_trc-FDG_pet.nii.gz'
    """
    root = Path(bids_dir).absolute()
    path = Path(path)
    if path.is_absolute():
        try:
            path = path.absolute().relative_to(root)
        except ValueError:
            raise ValueError(f'{path} is not inside the dataset {root}') from None
    return f'bids:{name}:{path.as_posix()}'


def derivative_path(
    out_dir: str | os.PathLike,
    *,
    subject: str,
    session: str | None,
    modality: str,
    space: str | None = None,
    res: str | int | None = None,
    desc: str = 'synth',
    extension: str = '.nii.gz',
    entities: str = '',
    suffix: str | None = None,
) -> Path:
    """Path of a synthesized file in the derivatives dataset.

    Parameters
    ----------
    subject, session : str
        Labels, with or without ``sub-``/``ses-`` (``session=None`` without sessions).
    modality : str
        Registry name; gives the datatype folder, the suffix, and the kept entities
        (``trc-`` for PET, ``task-rest`` for bold, ``ce-`` for contrast T1w).
    space, res : optional
        Template space (e.g. ``MNI152NLin2009aSym``) and resolution label; native if omitted.
    desc : str
        ``'synth'`` (the image) or ``'synthstd'`` (uncertainty). Never empty.
    extension : str
        ``.nii.gz``, ``.json``, ``.bval``, ``.bvec`` ...
    entities, suffix : str, optional
        Entities before ``desc-`` and another suffix, for derived maps (BEP012/BEP016, e.g.
        ``entities='stat-alff', suffix='boldmap'``).

    >>> derivative_path('/out', subject='01', session='1', modality='T2w').as_posix()
    '/out/sub-01/ses-1/anat/sub-01_ses-1_desc-synth_T2w.nii.gz'
    >>> derivative_path('/out', subject='sub-01', session=None, modality='FLAIR',
    ...                 space='MNI152NLin2009aSym', res=2).name
    'sub-01_space-MNI152NLin2009aSym_res-2_desc-synth_FLAIR.nii.gz'
    >>> derivative_path('/out', subject='01', session=None, modality='FDG').as_posix()
    '/out/sub-01/pet/sub-01_trc-FDG_desc-synth_pet.nii.gz'
    >>> derivative_path('/out', subject='01', session=None, modality='bold', desc='synthstd').name
    'sub-01_task-rest_desc-synthstd_bold.nii.gz'
    >>> derivative_path('/out', subject='01', session=None, modality='dwi', extension='.bval').name
    'sub-01_desc-synth_dwi.bval'
    >>> derivative_path('/out', subject='01', session=None, modality='bold',
    ...                 space='MNI152NLin2009aSym', res=4, entities='stat-reho',
    ...                 suffix='boldmap').name
    'sub-01_task-rest_space-MNI152NLin2009aSym_res-4_stat-reho_desc-synth_boldmap.nii.gz'
    """
    if not desc:
        raise ValueError('a derivative needs a desc- entity (it must never take a raw name)')
    mod = MODALITIES[modality]
    subject = subject[4:] if subject.startswith('sub-') else subject
    if session is not None and session.startswith('ses-'):
        session = session[4:]
    values = {'subject': subject, 'session': session, **mod.derivative_entities,
              'space': space, 'res': None if res is None else str(res), 'desc': desc}
    parts = [f'{key}-{values[name]}' for name, key in _ENTITY_KEYS
             if values.get(name) not in (None, '')]
    if entities:
        parts.insert(len(parts) - 1, entities)  # before desc-
    folder = Path(out_dir, f'sub-{subject}', *([f'ses-{session}'] if session else []),
                  mod.datatype)
    return folder / f'{"_".join(parts)}_{suffix or mod.suffix}{extension}'


#: The main file of a synthesized modality where it is not ``desc-<desc>_<suffix>``:
#: family -> {desc or '*': (entities, suffix)} (``preprocessing.outputs`` writes them).
MAIN_OUTPUT = {
    'fmri': {'*': ('stat-mean', 'boldmap')},  # no time series: the segment means
    'dmri': {'synthstd': ('model-tensor_param-fa', 'dwimap')},  # std of the FA channel
}


def synth_path(out_dir: str | os.PathLike, *, subject: str, session: str | None,
               modality: str, space: str | None = None, res: str | int | None = None,
               desc: str = 'synth') -> Path:
    """Path of the main file written for a synthesized modality (the image the record
    names ``template``/``native``): :func:`derivative_path` with :data:`MAIN_OUTPUT`.

    >>> synth_path('/out', subject='01', session=None, modality='bold').name
    'sub-01_task-rest_stat-mean_desc-synth_boldmap.nii.gz'
    >>> synth_path('/out', subject='01', session=None, modality='dwi').name
    'sub-01_desc-synth_dwi.nii.gz'
    """
    rule = MAIN_OUTPUT.get(MODALITIES[modality].family, {})
    entities, suffix = rule.get(desc) or rule.get('*') or ('', None)
    return derivative_path(out_dir, subject=subject, session=session, modality=modality,
                           space=space, res=res, desc=desc, entities=entities, suffix=suffix)


#: Temporary files of the atomic writers: ``.<name>.<pid>.<8 hex>.tmp<ext>`` (older versions
#: wrote no pid), and ``.tmp-<pid>-<name>`` of :mod:`bids_synth.preprocessing.conform`.
_TEMP = re.compile(r'^\..+?\.(?:(?P<pid>\d+)\.)?[0-9a-f]{8}\.tmp(?:\.[A-Za-z]+)*$'
                   r'|^\.tmp-(?P<pid2>\d+)-.+$')
#: A temporary file older than this is stale whoever wrote it (a write takes seconds).
STALE_AFTER_S = 3600


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary name beside ``path`` that names this process (see :data:`_TEMP`).

    >>> import re; bool(_TEMP.match(temp_path('/o/sub-01_T2w.nii.gz').name))
    True
    """
    path = Path(path)
    ext = ''.join(s for s in path.suffixes if s in ('.nii', '.gz', '.json', '.tsv', '.bval',
                                                     '.bvec', '.html', '.txt'))
    return path.with_name(f'.{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{ext}')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed run left under ``root``; return them.

    A temporary file is stale when the process that wrote it is gone (the pid in its name),
    or it is older than :data:`STALE_AFTER_S`. Files of a live concurrent run are left alone.
    """
    import time

    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    now = time.time()
    for dirpath, _, filenames in os.walk(root):
        for fname in filenames:
            match = _TEMP.match(fname)
            if not match:
                continue
            path = Path(dirpath) / fname
            pid = match.group('pid') or match.group('pid2')
            try:
                old = now - path.stat().st_mtime > STALE_AFTER_S
                if old or pid is None or not _alive(int(pid)):
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue
    return removed


def _atomic(path: str | os.PathLike, write) -> Path:
    """Run ``write(tmp_path)`` then move the temporary file onto ``path``."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise CannotCreateOutputError(f'{path}: cannot write ({err.strerror or err})') from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_nifti_atomic(img, path: str | os.PathLike) -> Path:
    """Save a nibabel image through a temporary file in the same folder (no partial file)."""
    return _atomic(path, lambda tmp: nib.save(img, tmp))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write text through a temporary file in the same folder."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding='utf-8'))


def write_json_atomic(obj, path: str | os.PathLike) -> Path:
    """Write JSON (indented, keys in the given order) through a temporary file."""
    return write_text_atomic(json.dumps(obj, indent=2, allow_nan=False) + '\n', path)


def write_dataset_description(
    out_dir: str | os.PathLike,
    bids_dir: str | os.PathLike,
    *,
    version: str,
    container: dict | None = None,
) -> Path:
    """Write ``<out_dir>/dataset_description.json`` for the derivatives (idempotent, atomic).

    ``GeneratedBy[0].Container`` comes from ``container`` (``{'Type': ..., 'Tag': ...}``), else
    from the environment variables ``BIDS_SYNTH_CONTAINER_TYPE`` / ``BIDS_SYNTH_CONTAINER_TAG``
    that the container images set. ``DatasetLinks.raw`` is the input dataset as a ``file://``
    URI, so that the ``bids:raw:`` URIs of the sidecars resolve.
    """
    bids_dir = Path(bids_dir).absolute()
    raw_name = None
    try:
        raw_name = json.loads((bids_dir / 'dataset_description.json').read_text()).get('Name')
    except (OSError, ValueError, AttributeError):
        pass
    generated = {'Name': 'bids_synth', 'Version': version, 'CodeURL': CODE_URL}
    if container is None and os.environ.get('BIDS_SYNTH_CONTAINER_TYPE'):
        container = {'Type': os.environ['BIDS_SYNTH_CONTAINER_TYPE']}
        if os.environ.get('BIDS_SYNTH_CONTAINER_TAG'):
            container['Tag'] = os.environ['BIDS_SYNTH_CONTAINER_TAG']
    if container:
        generated['Container'] = dict(container)
    desc = {
        'Name': 'bids_synth: synthesized missing modalities'
        + (f' of {raw_name}' if raw_name else ''),
        'BIDSVersion': BIDS_VERSION,
        'DatasetType': 'derivative',
        'GeneratedBy': [generated],
        'SourceDatasets': [{'URL': 'bids:raw:'}],
        'DatasetLinks': {'raw': bids_dir.as_uri()},
    }
    path = Path(out_dir) / 'dataset_description.json'
    try:
        if json.loads(path.read_text()) == desc:
            return path
    except (OSError, ValueError):
        pass
    return write_json_atomic(desc, path)


def write_bidsignore(out_dir: str | os.PathLike) -> Path:
    """Add :data:`BIDSIGNORE_LINES` to ``<out_dir>/.bidsignore``, keeping lines already there."""
    path = Path(out_dir) / '.bidsignore'
    try:
        old = path.read_text().splitlines()
    except OSError:
        old = []
    new = old + [line for line in BIDSIGNORE_LINES if line not in old]
    if new != old:
        write_text_atomic('\n'.join(new) + '\n', path)
    return path


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dirs(bids_dir, output_dir, work_dir=None) -> None:
    """Refuse output/work folders that would write into the input dataset, or cannot be made.

    Creates nothing (see :func:`create_output_dirs`): a run that fails its checks leaves no
    folder behind. Neither folder may be the input dataset or inside it, ``derivatives/``
    included: bids_synth never writes into the input dataset.

    Raises
    ------
    UsageError
        Output or work folder equal to, or inside, the input dataset.
    CannotCreateOutputError
        A path that is a file, or a folder that cannot be created or written.
    """
    bids_dir = Path(bids_dir).expanduser().resolve()
    checks = [('output', output_dir)] + ([('work', work_dir)] if work_dir is not None else [])
    for kind, folder in checks:
        folder = Path(folder).expanduser().resolve()
        if _inside(folder, bids_dir):
            raise UsageError(
                f'{kind} folder {folder} is the input dataset or inside it ({bids_dir}); '
                'choose a folder outside the input (it is never written to)'
            )
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            what = ('is a file' if existing == folder
                    else f'cannot be created: {existing} is a file')
            raise CannotCreateOutputError(f'{folder}: the {kind} folder {what}, not a folder')
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CannotCreateOutputError(
                f'{folder}: the {kind} folder ' + ('is not writable' if existing == folder
                                                   else f'cannot be created in {existing} '
                                                   '(not writable)'))


def create_output_dirs(*folders) -> list[Path]:
    """Create folders; return those this call created (topmost first), for :func:`remove_created`.

    Raises
    ------
    CannotCreateOutputError
    """
    created: list[Path] = []
    for folder in folders:
        folder = Path(folder).expanduser().absolute()
        missing = []
        probe = folder
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CannotCreateOutputError(
                f'{folder}: cannot create the folder ({err.strerror or err})'
            ) from None
        created += reversed(missing)
    return created


def remove_created(created: list[Path]) -> None:
    """Remove the folders of :func:`create_output_dirs` that are still empty (deepest first)."""
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            continue
