"""``--complete-dataset DIR``: the input dataset plus the synthesized scans, as raw BIDS.

fMRIPrep, sMRIPrep and QSIPrep read raw BIDS and refuse a session without a T1w (fMRIPrep
#1211, #755; QSIPrep #340). This writes a raw dataset they accept:

- every file of the input (``derivatives/``, ``sourcedata/`` and hidden folders left out) is
  hard-linked, or copied where a link is impossible (another file system); the input is never
  written to;
- each native-space synthesized T1w, T2w or FLAIR (``*_desc-synth_<suffix>`` without
  ``space-``) is copied under its raw name with ``rec-synth`` (``sub-01_ses-1_rec-synth_T1w``),
  with its sidecar (Description, Sources, the ``bids_synth`` provenance block), and only
  where the session has no acquired scan of that kind;
- ``dataset_description.json`` keeps the input's fields, adds ``GeneratedBy`` (bids_synth, with
  a Description listing every synthesized file) and ``SourceDatasets`` (the input).

PET, bold and dwi are left out: bids_synth synthesizes their model representations (static
SUVR image, segment means and maps, b0 and segment means), not the acquisitions a
preprocessing pipeline expects.

>>> raw_name('sub-01_ses-1_ce-gadolinium_desc-synth_T1w.nii.gz')
'sub-01_ses-1_ce-gadolinium_rec-synth_T1w.nii.gz'
>>> raw_name('sub-01_space-MNI152NLin2009aSym_res-2_desc-synth_T2w.nii.gz') is None
True
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .derivatives import BIDS_VERSION, CODE_URL, write_json_atomic

__all__ = ['COMPLETED_SUFFIXES', 'raw_name', 'write_completed_dataset']

#: Synthesized suffixes written into the completed dataset.
COMPLETED_SUFFIXES = ('T1w', 'T2w', 'FLAIR')
_SKIP_TOP = ('derivatives', 'sourcedata')
_SYNTH = re.compile(r'^(?P<stem>sub-[^_]+(?:_[a-z]+-[^_]+)*?)_desc-synth_(?P<suffix>[A-Za-z0-9]+)'
                    r'\.nii\.gz$')


def raw_name(derivative_name: str) -> str | None:
    """The raw-style ``rec-synth`` name of a native-space synthesized anatomical image."""
    m = _SYNTH.match(derivative_name)
    if not m or '_space-' in derivative_name or m['suffix'] not in COMPLETED_SUFFIXES:
        return None
    return f'{m["stem"]}_rec-synth_{m["suffix"]}.nii.gz'


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hard link (else copy) ``src`` to ``dest``; safe when Slurm array tasks race on it."""
    if dest.exists():
        try:
            if os.path.samefile(src, dest):
                return
        except OSError:
            pass
        dest.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except FileExistsError:  # another task linked it meanwhile
        pass
    except OSError:  # another file system: copy through a temporary name
        tmp = dest.with_name(f'.{dest.name}.{os.getpid()}.tmp')
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)


def _acquired(anat: Path, synth_raw: str) -> bool:
    """Whether the raw session folder already has a scan of the same kind (never shadowed)."""
    m = re.match(r'^(?P<head>sub-[^_]+(?:_ses-[^_]+)?)_(?P<ents>.*_)?rec-synth_(?P<suffix>\w+)'
                 r'\.nii\.gz$', synth_raw)
    ce = 'ce-' in (m['ents'] or '')
    for path in anat.glob(f'{m["head"]}_*{m["suffix"]}.nii*'):
        if 'rec-synth' not in path.name and ('_ce-' in path.name) == ce:
            return True
    return False


def write_completed_dataset(bids_dir: str | os.PathLike, output_dir: str | os.PathLike,
                            dest: str | os.PathLike, *, version: str) -> list[str]:
    """Write the completed dataset into ``dest``; return the synthesized files added (relative).

    Idempotent: a rerun refreshes links and synthesized files and rewrites the description.
    Array jobs (one participant each) may share ``dest``: each links what is missing and lists
    every synthesized file found in ``output_dir`` so far, so the last task to finish writes
    the complete list.
    """
    bids_dir, output_dir, dest = Path(bids_dir), Path(output_dir), Path(dest)
    for dirpath, dirnames, filenames in os.walk(bids_dir):
        rel = Path(dirpath).relative_to(bids_dir)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.')
                             and not (rel == Path('.') and d in _SKIP_TOP))
        for name in filenames:
            if rel == Path('.') and name == 'dataset_description.json':
                continue
            _link_or_copy(Path(dirpath) / name, dest / rel / name)
    added = []
    for path in sorted(output_dir.glob('sub-*/**/anat/*_desc-synth_*.nii.gz')):
        new = raw_name(path.name)
        if new is None:
            continue
        rel_dir = path.parent.relative_to(output_dir)
        if _acquired(bids_dir / rel_dir, new):
            continue
        target = dest / rel_dir / new
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f'.{new}.{os.getpid()}.tmp')
        shutil.copy2(path, tmp)
        os.replace(tmp, target)
        side = path.with_name(path.name.replace('.nii.gz', '.json'))
        meta = json.loads(side.read_text()) if side.is_file() else {}
        meta['Description'] = ('SYNTHESIZED, not acquired (rec-synth): '
                               + meta.get('Description', 'made by bids_synth'))
        write_json_atomic(meta, target.with_name(new.replace('.nii.gz', '.json')))
        added.append(str((rel_dir / new).as_posix()))
    try:
        desc = json.loads((bids_dir / 'dataset_description.json').read_text())
    except (OSError, ValueError):
        desc = {}
    desc.setdefault('BIDSVersion', BIDS_VERSION)
    desc['Name'] = f'{desc.get("Name", "dataset")} (completed by bids_synth)'
    desc['DatasetType'] = 'raw'
    desc['GeneratedBy'] = [{
        'Name': 'bids_synth', 'Version': version, 'CodeURL': CODE_URL,
        'Description': ('The acquired files of the source dataset, plus images synthesized by '
                        'bids_synth where a session lacked them, named rec-synth: '
                        + (', '.join(added) if added else 'none')),
    }]
    desc['SourceDatasets'] = [{'URL': bids_dir.absolute().as_uri()}]
    write_json_atomic(desc, dest / 'dataset_description.json')
    return added
