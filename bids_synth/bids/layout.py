"""Walk the input BIDS dataset: which modalities each session has, and which files are bad.

:func:`load_layout` indexes the dataset with pybids (skipping what bids_synth never reads, with
an optional SQLite cache); :func:`collect_sessions` returns one :class:`SessionInventory` per
selected session, in which every modality of the registry is present, unreadable (with the
reason) or missing. A bad file in one subject never stops the others.

>>> inv = SessionInventory('01', '1', {
...     'T2w': InputFile('T2w', '/d/sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz'),
...     'T1w': InputFile('T1w', '/d/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz',
...                      status='unreadable', reason='empty file (0 bytes)')})
>>> inv.label, inv.available, inv.reference.modality
('sub-01_ses-1', ('T2w',), 'T2w')
>>> inv.missing(['T1w', 'T2w', 'FLAIR'])
('FLAIR',)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bids_synth.bids.images import check_readable
from bids_synth.bids.modalities import MODALITIES, UnknownModalityError, resolve_modalities
from bids_synth.errors import (
    DataError, NoInputError, NoMatchError, UnreadableImageError, UsageError,
)

__all__ = ['InputFile', 'SessionInventory', 'load_layout', 'collect_sessions',
           'describe_inventory', 'INDEXED_DATATYPES']

LOGGER = logging.getLogger('bids_synth.bids.layout')

#: Datatype folders bids_synth reads; every other one (fmap, perf, beh, eeg, meg...) is skipped.
INDEXED_DATATYPES = tuple(sorted({m.datatype for m in MODALITIES.values()}))
#: Top-level folders never indexed (pybids' own defaults plus the BIDS-Apps usual ones).
_IGNORED_TOP = ('code', 'derivatives', 'sourcedata', 'stimuli', 'models', 'phenotype')
_FINGERPRINT = 'bids_synth_fingerprint.json'
_ANAT_ORDER = ('T1w', 'T2w', 'FLAIR', 'T1wCE')
_WIDTH = max(len(m) for m in MODALITIES)


def _ignore_patterns() -> list:
    other_datatypes = re.compile(
        r'^/sub-[a-zA-Z0-9]+(/ses-[a-zA-Z0-9]+)?/(?!(' + '|'.join(INDEXED_DATATYPES)
        + r')(/|$))[a-z]+(/|$)'
    )
    return [*_IGNORED_TOP, re.compile(r'^/\.'), re.compile(r'/\.'), other_datatypes]


def _fingerprint(root: Path) -> str:
    """sha256 over (path, size, mtime) of every file pybids would index, plus the root path.

    A stat-only walk, far cheaper than indexing: adding, removing or editing any indexed file
    (images, sidecars, .bval/.bvec, top-level JSON/TSV) changes it.
    """
    digest = hashlib.sha256(str(root).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == '.' else rel.count(os.sep) + 1
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith('.') and not (depth == 0 and d in _IGNORED_TOP)
            and not (depth >= 1 and not d.startswith('ses-') and d not in INDEXED_DATATYPES)
        )
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            digest.update(f'{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    return digest.hexdigest()


def load_layout(bids_dir: str | os.PathLike, database_dir: str | os.PathLike | None = None):
    """Index a BIDS dataset with pybids, skipping what bids_synth never reads.

    Parameters
    ----------
    bids_dir : str or os.PathLike
        Root of the raw BIDS dataset.
    database_dir : str or os.PathLike, optional
        Folder for pybids' SQLite index (``--bids-database-dir``). A second run reuses it.
        Invalidation: a fingerprint (sha256 over path, size and mtime of every indexed file, and
        the dataset root) is stored beside the database; when the dataset changed, or the
        folder was made for another dataset, the index is rebuilt.

    Returns
    -------
    bids.layout.BIDSLayout

    Raises
    ------
    NoInputError
        ``bids_dir`` does not exist or is not a folder.
    DataError
        No (or an unparsable) ``dataset_description.json``, or pybids cannot index the dataset.
    """
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

    root = Path(bids_dir).expanduser().absolute()
    if not root.is_dir():
        raise NoInputError(f'{root}: input BIDS dataset does not exist (or is not a folder)')
    description = root / 'dataset_description.json'
    if not description.is_file():
        raise DataError(f'{description}: missing; not a BIDS dataset root')
    try:
        json.loads(description.read_text())
    except (ValueError, OSError) as err:
        raise DataError(f'{description}: not valid JSON ({err})') from None

    kwargs = {}
    if database_dir is not None:
        database_dir = Path(database_dir).expanduser().absolute()
        database_dir.mkdir(parents=True, exist_ok=True)
        stamp = database_dir / _FINGERPRINT
        current = _fingerprint(root)
        try:
            previous = json.loads(stamp.read_text()).get('fingerprint')
        except (OSError, ValueError):
            previous = None
        reset = previous != current
        if reset and previous is not None:
            LOGGER.info('%s: dataset changed since the index was built; re-indexing', root)
        kwargs = {'database_path': str(database_dir), 'reset_database': reset}
    indexer = BIDSLayoutIndexer(validate=False, ignore=_ignore_patterns(), index_metadata=True)
    try:
        layout = BIDSLayout(str(root), validate=False, derivatives=False, indexer=indexer,
                            **kwargs)
    except (ValueError, OSError) as err:
        raise DataError(f'{root}: pybids cannot index the dataset ({err})') from err
    if database_dir is not None and kwargs['reset_database']:
        tmp = stamp.with_suffix('.tmp')
        tmp.write_text(json.dumps({'root': str(root), 'fingerprint': current}))
        os.replace(tmp, stamp)
    return layout


@dataclass
class InputFile:
    """One input image of a session.

    Attributes
    ----------
    modality : str
        Registry name (``'T1w'``, ``'FDG'``, ``'bold'`` ...).
    path : str
        Absolute path of the image.
    status : str
        ``'present'`` or ``'unreadable'``.
    reason : str or None
        Why the file is unreadable (``None`` when present).
    metadata : dict
        Sidecar metadata (BIDS inheritance applied); for dwi also ``'bval'``/``'bvec'`` paths.
    entities : dict
        BIDS entities of the file name.
    alternatives : tuple of str
        Other files of this modality in the session that were not chosen (other runs, tasks).
    """

    modality: str
    path: str
    status: str = 'present'
    reason: str | None = None
    metadata: dict = field(default_factory=dict)
    entities: dict = field(default_factory=dict)
    alternatives: tuple[str, ...] = ()


@dataclass
class SessionInventory:
    """What one session holds: an :class:`InputFile` per modality found (present or not)."""

    subject: str
    session: str | None
    files: dict[str, InputFile] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``'sub-01_ses-1'`` (``'sub-01'`` without sessions)."""
        return f'sub-{self.subject}' + (f'_ses-{self.session}' if self.session else '')

    @property
    def available(self) -> tuple[str, ...]:
        """Names of the modalities with a usable file, in registry order."""
        return tuple(m for m in MODALITIES if m in self.files
                     and self.files[m].status == 'present')

    @property
    def unreadable(self) -> dict[str, str]:
        """Modality name -> reason, for the files that exist but cannot be used."""
        return {m: f.reason or 'unreadable' for m, f in self.files.items()
                if f.status == 'unreadable'}

    def missing(self, targets: Iterable[str]) -> tuple[str, ...]:
        """The targets with no file at all (neither present nor unreadable)."""
        return tuple(t for t in targets if t not in self.files)

    @property
    def reference(self) -> InputFile | None:
        """Native reference: T1w, else the first anatomical, else PET, else any present file."""
        avail = self.available
        for name in _ANAT_ORDER:
            if name in avail:
                return self.files[name]
        for name in avail:
            if MODALITIES[name].family == 'pet':
                return self.files[name]
        return self.files[avail[0]] if avail else None


def _strip(labels: Iterable[str] | None, prefix: str) -> list[str] | None:
    """Labels without their ``sub-``/``ses-`` prefix.

    >>> _strip(['sub-01', '02'], 'sub-')
    ['01', '02']
    """
    if labels is None:
        return None
    return [lab[len(prefix):] if lab.startswith(prefix) else lab for lab in labels]


def _rank(bidsfile, preferred: dict) -> tuple:
    """Sort key: preferred entity values first (task-rest for bold), then run, then path."""
    ents = bidsfile.get_entities()
    miss = sum(str(ents.get(k, '')).lower() != str(v).lower() for k, v in preferred.items())
    run = ents.get('run')
    return miss, int(run) if str(run).isdigit() else 0, bidsfile.path


def _describe_file(layout, modality: str, bidsfile) -> InputFile:
    path = bidsfile.path
    entities = {k: v for k, v in bidsfile.get_entities().items()
                if k not in ('extension', 'suffix', 'datatype')}
    try:
        metadata = dict(layout.get_metadata(path))
    except Exception as err:  # a broken sidecar makes this file unusable, not the dataset
        return InputFile(modality, path, 'unreadable', f'sidecar metadata: {err}', {}, entities)
    bval = bvec = None
    if MODALITIES[modality].family == 'dmri':
        try:
            bval, bvec = layout.get_bval(path), layout.get_bvec(path)
        except (IndexError, ValueError):
            pass
        if not bval or not bvec:
            return InputFile(modality, path, 'unreadable', 'no .bval/.bvec file for this dwi',
                             metadata, entities)
        metadata.update(bval=bval, bvec=bvec)
    try:
        check_readable(path, modality, bval=bval, bvec=bvec)
    except UnreadableImageError as err:
        reason = str(err).split(': ', 1)[-1] if str(err).startswith(path) else str(err)
        return InputFile(modality, path, 'unreadable', reason, metadata, entities)
    return InputFile(modality, path, 'present', None, metadata, entities)


def _choose(layout, modality: str, candidates: list, preferred: dict) -> InputFile:
    """The first readable candidate in rank order, else the first one marked unreadable."""
    ordered = sorted(candidates, key=lambda f: _rank(f, preferred))
    first = None
    for bidsfile in ordered:
        found = _describe_file(layout, modality, bidsfile)
        first = first or found
        if found.status == 'present':
            break
    else:
        found = first
        if len(ordered) > 1:
            found.reason += f' (and the {len(ordered) - 1} other file(s) too)'
    found.alternatives = tuple(f.path for f in ordered if f.path != found.path)
    if found.alternatives:
        LOGGER.debug('%s: chose %s among %d files', modality, found.path, len(ordered))
    return found


def collect_sessions(
    layout,
    *,
    participant_labels: Sequence[str] | None = None,
    session_labels: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    bids_filters: dict | None = None,
) -> list[SessionInventory]:
    """Inventory every selected session: each modality present, unreadable, or absent.

    Parameters
    ----------
    layout : bids.layout.BIDSLayout
        From :func:`load_layout`.
    participant_labels, session_labels : sequence of str, optional
        Labels with or without the ``sub-``/``ses-`` prefix. Default: all.
    modalities : sequence of str, optional
        Registry names to look for (default: every modality of the registry).
    bids_filters : dict, optional
        Modality name -> extra pybids entity filters (``--bids-filter-file``), e.g.
        ``{'T1w': {'acquisition': 'mprage'}}``; JSON ``null`` means "entity absent".

    Notes
    -----
    Several files for one modality in a session: the first readable in the order (preferred
    entities, i.e. ``task-rest`` for bold; run number; path) is used, and the others are kept
    in :attr:`InputFile.alternatives`. Bold runs of any task are accepted.

    Raises
    ------
    NoInputError
        The dataset has no subject at all.
    NoMatchError
        Unknown participant or session labels, or a BIDS filter that matches no file.
    UsageError
        A ``bids_filters`` key that is not a modality.
    """
    subjects = sorted(layout.get_subjects())
    if not subjects:
        raise NoInputError(f'{layout.root}: no subjects (no sub-<label> folder with files '
                           'bids_synth reads)')
    wanted = _strip(participant_labels, 'sub-')
    if wanted is not None:
        unknown = [lab for lab in wanted if lab not in subjects]
        if unknown:
            raise NoMatchError(
                f'participant label(s) not in {layout.root}: '
                + ', '.join(f'sub-{u}' for u in unknown)
            )
        subjects = sorted(set(wanted))
    names = resolve_modalities(modalities) if modalities else tuple(MODALITIES)
    filters: dict[str, dict] = {}
    for key, value in (bids_filters or {}).items():
        try:
            (name,) = resolve_modalities([key])
        except UnknownModalityError as err:
            raise UsageError(f'BIDS filter: {err}') from None
        if not isinstance(value, dict):
            raise UsageError(f'BIDS filter for {key!r} must be an object of entity filters')
        filters[name] = value

    sessions_wanted = _strip(session_labels, 'ses-')
    keys: list[tuple[str, str | None]] = []
    for sub in subjects:
        sessions = sorted(layout.get_sessions(subject=sub)) or [None]
        if sessions_wanted is not None:
            sessions = [s for s in sessions if s in sessions_wanted]
        keys.extend((sub, ses) for ses in sessions)
    if not keys:
        raise NoMatchError(
            'session label(s) match no session of the selected participants: '
            + ', '.join(f'ses-{s}' for s in sessions_wanted or [])
        )

    found: dict[tuple, dict[str, list]] = {k: {} for k in keys}
    for name in names:
        query = MODALITIES[name].query()
        preferred = {'task': query.pop('task')} if 'task' in query else {}
        query.update(filters.get(name, {}))
        if sessions_wanted is not None:
            query['session'] = sessions_wanted
        hits = layout.get(subject=subjects, return_type='object', **query)
        if name in filters and not hits:
            raise NoMatchError(
                f'BIDS filter for {name} ({json.dumps(filters[name])}) matches no file'
            )
        for hit in hits:
            ents = hit.get_entities()
            key = (ents['subject'], ents.get('session'))
            if key in found:
                found[key].setdefault(name, []).append((hit, preferred))

    inventories = []
    for sub, ses in keys:
        inv = SessionInventory(sub, ses)
        for name in names:
            if name in found[(sub, ses)]:
                hits = found[(sub, ses)][name]
                inv.files[name] = _choose(layout, name, [h for h, _ in hits], hits[0][1])
        for name, reason in inv.unreadable.items():
            LOGGER.debug('%s: %s %s: %s', inv.label, name, inv.files[name].path, reason)
        inventories.append(inv)
    return inventories


def describe_inventory(inventories: Iterable[SessionInventory], targets: Iterable[str]) -> str:
    """Human-readable ``--dry-run`` text: per session, every modality and what would be made.

    >>> inv = SessionInventory('01', None, {'T1w': InputFile('T1w', '/d/sub-01_T1w.nii.gz')})
    >>> print(describe_inventory([inv], ['T1w', 'T2w']))
    sub-01
      T1w    present      /d/sub-01_T1w.nii.gz
      T2w    missing
      -> would synthesize: T2w (from T1w; reference T1w)
    """
    targets = tuple(targets)
    lines = []
    for inv in inventories:
        lines.append(inv.label)
        shown = [m for m in MODALITIES if m in inv.files or m in targets]
        for name in shown:
            entry = inv.files.get(name)
            if entry is None:
                lines.append(f'  {name:<{_WIDTH}}  missing')
            elif entry.status == 'present':
                lines.append(f'  {name:<{_WIDTH}}  present      {entry.path}')
            else:
                lines.append(f'  {name:<{_WIDTH}}  unreadable   {entry.path}: {entry.reason}')
        todo = inv.missing(targets)
        if not inv.available:
            lines.append('  -> nothing to synthesize from: no usable input')
        elif todo:
            ref = inv.reference.modality
            lines.append(f'  -> would synthesize: {", ".join(todo)} '
                         f'(from {", ".join(inv.available)}; reference {ref})')
        else:
            lines.append('  -> nothing to synthesize')
    return '\n'.join(lines)
