"""The clinical table: typed participant (and session) variables from the BIDS phenotype files.

Reads ``participants.tsv`` with its ``participants.json`` data dictionary, and each subject's
``sub-<label>/sub-<label>_sessions.tsv``: a session's value of a column (``age`` at the session,
an ``MMSE`` score...) overrides the participant's. ``n/a`` and empty cells are missing.

Column types (what the conditioning encoders expect):

- ``continuous``: every value parses as a number -> float (units and description from JSON);
- ``categorical``: ``Levels`` in the JSON, or non-numeric with few distinct short values -> str;
- ``text``: free text (a name like ``notes``/``comments``, or long / many distinct strings).

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / 'participants.tsv').write_text(
...     'participant_id\\tage\\tsex\\nsub-01\\t71.5\\tF\\nsub-02\\tn/a\\tM\\n')
>>> table = load_clinical(root)
>>> table.for_session('01', None), table.for_session('sub-02', None)
({'age': 71.5, 'sex': 'F'}, {'age': None, 'sex': 'M'})
>>> table.schema()['sex']
{'type': 'categorical', 'levels': ['F', 'M'], 'description': None}
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bids_synth.bids.clinical_checks import declared_type, value_problem
from bids_synth.errors import ClinicalTableError, UsageError

__all__ = ['ClinicalTable', 'load_clinical', 'MISSING_VALUES']

LOGGER = logging.getLogger('bids_synth.bids.clinical')

#: Cell values read as missing (BIDS uses ``n/a``).
MISSING_VALUES = frozenset({'', 'n/a', 'N/A', 'NA', 'nan', 'NaN'})
_TEXT_NAME = re.compile(r'note|comment|remark|text|history|report|observation', re.IGNORECASE)
#: Session-table columns that are bookkeeping, not clinical variables.
_NOT_CLINICAL = frozenset({'participant_id', 'session_id', 'acq_time'})
_MAX_LEVELS = 12
_MAX_LEVEL_LEN = 40


def _read_tsv(path: Path, key: str) -> tuple[list[str], dict[str, tuple[int, dict[str, str]]],
                                             list[tuple[str | None, str]]]:
    """Parse a BIDS TSV strictly; key label -> (line number, {column: raw value}), problems.

    A bad row affects only its own key: a ragged row, or a key given twice (both rows are
    dropped: which one is right cannot be told), is returned in ``problems`` as
    ``(label or None, '<file>:<line>: <problem>')`` and the other rows are kept.

    Raises
    ------
    ClinicalTableError
        ``'<file>:<line>: <problem>'`` for what spoils the whole file: unreadable, no header,
        no key column, duplicate column names.
    """
    try:
        text = path.read_text(encoding='utf-8-sig')
    except (OSError, UnicodeDecodeError) as err:
        raise ClinicalTableError(f'{path}: cannot read ({err})') from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ClinicalTableError(f'{path}:1: empty file or empty header line')
    header = [h.strip() for h in lines[0].split('\t')]
    if key not in header:
        raise ClinicalTableError(f'{path}:1: no {key} column (header: {", ".join(header)})')
    if len(set(header)) != len(header):
        raise ClinicalTableError(f'{path}:1: duplicate column names in the header')
    rows: dict[str, tuple[int, dict[str, str]]] = {}
    problems: list[tuple[str | None, str]] = []
    dropped: set[str] = set()
    prefix = 'sub-' if key == 'participant_id' else 'ses-'
    kcol = header.index(key)
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split('\t')
        label = cells[kcol].strip() if len(cells) > kcol else ''
        label = label[len(prefix):] if label.startswith(prefix) else label
        if label in MISSING_VALUES:
            problems.append((None, f'{path}:{lineno}: empty {key} (row ignored)'))
            continue
        if len(cells) != len(header):
            problems.append((label, f'{path}:{lineno}: row has {len(cells)} fields, the header '
                                    f'has {len(header)} ({prefix}{label} skipped)'))
            dropped.add(label)
            continue
        if label in rows or label in dropped:
            first = f' (first on line {rows[label][0]})' if label in rows else ''
            problems.append((label, f'{path}:{lineno}: duplicate {key} {prefix}{label}{first}; '
                                    f'{prefix}{label} skipped'))
            rows.pop(label, None)
            dropped.add(label)
            continue
        rows[label] = (lineno, {h: c.strip() for h, c in zip(header, cells)})
    return header, rows, problems


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding='utf-8-sig'))
    except json.JSONDecodeError as err:
        raise ClinicalTableError(f'{path}:{err.lineno}: invalid JSON ({err.msg})') from None
    except (OSError, UnicodeDecodeError) as err:
        raise ClinicalTableError(f'{path}: cannot read ({err})') from None
    if not isinstance(data, dict):
        raise ClinicalTableError(f'{path}:1: expected a JSON object')
    return data


def _as_float(value: str) -> float | None:
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _infer_type(name: str, values: list[str], info: dict) -> str:
    """``'continuous'``, ``'categorical'`` or ``'text'`` for a column.

    >>> _infer_type('age', ['70', '71.5'], {})
    'continuous'
    >>> _infer_type('apoe4', ['0', '1', '2'], {'Levels': {'0': 'none', '1': 'one', '2': 'two'}})
    'categorical'
    >>> _infer_type('clinical_notes', ['mild memory complaints'], {})
    'text'
    >>> _infer_type('age', ['70', '71', '68', '75', 'seventy'], {})
    'continuous'
    """
    if isinstance(info.get('Levels'), dict) and info['Levels']:
        return 'categorical'
    if _TEXT_NAME.search(name):
        return 'text'
    numeric = sum(_as_float(v) is not None for v in values)
    if values and (numeric == len(values) or (numeric >= 2 and numeric >= 0.8 * len(values))):
        return 'continuous'  # the few non-numbers are typos, reported by the checks
    distinct = set(values)
    if len(distinct) <= _MAX_LEVELS and all(len(v) <= _MAX_LEVEL_LEN for v in distinct):
        return 'categorical'
    return 'text'


class ClinicalTable:
    """Typed clinical variables per participant, with per-session overrides.

    Attributes
    ----------
    columns : tuple of str
        The clinical columns used (after ``columns=`` selection).
    types : dict
        Column -> ``'continuous'``, ``'categorical'`` or ``'text'``.
    frame : pandas.DataFrame
        Participant-level typed values, indexed by subject label (no ``sub-``); continuous
        columns are float (NaN missing), the others object (``None`` missing).
    missing : pandas.DataFrame
        Boolean mask aligned with :attr:`frame`: True where the value is missing.
    sessions : pandas.DataFrame
        Session-level typed values, indexed by (subject, session); may be empty.
    problems : list of str
        One line per problem (``'<file>:<line>: ...'``): malformed rows, values that do not fit
        their column (participants.json, the model card); the affected rows are skipped.
    bad : dict
        ``(subject, session or None)`` -> its problems; ``None``: every session of the subject.
    """

    def __init__(self, participants: dict, sessions: dict, types: dict, info: dict):
        self.problems: list[str] = []
        self.bad: dict[tuple[str, str | None], list[str]] = {}
        self.types = dict(types)
        self.columns = tuple(types)
        self._info = info
        self.frame = pd.DataFrame.from_dict(
            {sub: {c: self._convert(c, row.get(c)) for c in self.columns}
             for sub, row in participants.items()},
            orient='index', columns=list(self.columns),
        )
        self.frame.index.name = 'participant_id'
        for col in self.columns:
            if self.types[col] == 'continuous':
                self.frame[col] = self.frame[col].astype(float)
        self.missing = self.frame.isna()
        self.sessions = pd.DataFrame.from_dict(
            {key: {c: self._convert(c, row.get(c)) for c in self.columns}
             for key, row in sessions.items()},
            orient='index', columns=list(self.columns),
        )

    def _convert(self, column: str, raw: str | None):
        if raw is None or raw in MISSING_VALUES:
            return None
        return _as_float(raw) if self.types[column] == 'continuous' else raw

    def for_session(self, subject: str, session: str | None) -> dict:
        """Column -> value (float, str, or ``None`` when missing) for one session.

        The session's value (``sessions.tsv``) overrides the participant's when it is given.
        An unknown subject gives all ``None``.
        """
        subject = subject[4:] if subject.startswith('sub-') else subject
        if session is not None and session.startswith('ses-'):
            session = session[4:]
        out = dict.fromkeys(self.columns)
        if subject in self.frame.index:
            row = self.frame.loc[subject]
            out.update({c: None if self.missing.at[subject, c] else _plain(row[c])
                        for c in self.columns})
        if session is not None and (subject, session) in self.sessions.index:
            srow = self.sessions.loc[(subject, session)]
            out.update({c: _plain(srow[c]) for c in self.columns if not _isnull(srow[c])})
        return out

    def schema(self) -> dict:
        """Per column: type and what the encoders need (levels; mean/std/units).

        Continuous statistics are over the participant-level and session-level values together.
        """
        out = {}
        for col in self.columns:
            info = self._info.get(col, {}) if isinstance(self._info.get(col), dict) else {}
            desc = info.get('Description')
            if self.types[col] == 'continuous':
                vals = pd.concat([self.frame[col], self.sessions.get(col, pd.Series())])
                vals = pd.to_numeric(vals, errors='coerce').dropna()
                out[col] = {'type': 'continuous',
                            'mean': float(vals.mean()) if len(vals) else None,
                            'std': float(vals.std(ddof=0)) if len(vals) else None,
                            'units': info.get('Units'), 'description': desc}
            elif self.types[col] == 'categorical':
                levels = list(info['Levels']) if isinstance(info.get('Levels'), dict) else []
                seen = set(self.frame[col].dropna()) | set(self.sessions.get(col, []).dropna()
                                                           if col in self.sessions else [])
                levels += sorted(str(v) for v in seen if str(v) not in levels)
                out[col] = {'type': 'categorical', 'levels': levels, 'description': desc}
            else:
                out[col] = {'type': 'text', 'description': desc}
        return out

    def is_bad(self, subject: str, session: str | None) -> bool:
        """Whether a problem of the table concerns this session (or its whole subject)."""
        return (subject, None) in self.bad or (session is not None
                                               and (subject, session) in self.bad)

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return f'ClinicalTable({len(self)} participants, columns={list(self.columns)})'


def _isnull(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value):
    """numpy scalars -> Python float/str; NaN -> None."""
    if _isnull(value):
        return None
    return float(value) if isinstance(value, (int, float)) or hasattr(value, 'dtype') else value


def load_clinical(bids_dir: str | os.PathLike, columns: Sequence[str] | None = None,
                  schema: dict | None = None):
    """Load the clinical table of a BIDS dataset.

    Parameters
    ----------
    bids_dir : str or os.PathLike
        Root of the raw dataset.
    columns : sequence of str, optional
        Restrict to these columns (``--clinical-columns``); default: all clinical columns of
        ``participants.tsv`` and the sessions files.
    schema : dict, optional
        The model card's ``clinical_schema`` (participant level): its types, levels and units
        are checked, and only its columns are (the others do not reach the model).

    Returns
    -------
    ClinicalTable
        Empty (no columns, no rows) with a warning when there is no ``participants.tsv`` and no
        sessions file. Row-level problems (ragged row, duplicate id, a value that does not fit
        participants.json or the model card) are not raised: they are listed in ``problems``
        and the affected subjects/sessions in ``bad``; the other rows are usable.

    Raises
    ------
    ClinicalTableError
        What spoils the whole table: an unreadable ``participants.tsv`` or one without a
        ``participant_id`` column, invalid ``participants.json``, a column whose
        participants.json type or units contradict the model card's. The message names the
        file (and line).
    UsageError
        A requested column that no table has.
    """
    root = Path(bids_dir)
    tsv = root / 'participants.tsv'
    info = _read_json(root / 'participants.json')
    participants: dict[str, dict[str, str]] = {}
    where: dict[tuple[str, str | None], tuple[Path, int]] = {}  # row -> (file, line)
    order: list[str] = []
    problems: list[str] = []
    bad: dict[tuple[str, str | None], list[str]] = {}

    def problem(key, message):
        problems.append(message)
        if key is not None:
            bad.setdefault(key, []).append(message)

    if tsv.is_file():
        header, rows, row_problems = _read_tsv(tsv, 'participant_id')
        participants = {label: row for label, (_, row) in rows.items()}
        where.update({(label, None): (tsv, line) for label, (line, _) in rows.items()})
        order = [h for h in header if h not in _NOT_CLINICAL]
        for label, message in row_problems:
            problem(None if label is None else (label, None), message)
    sessions: dict[tuple[str, str], dict[str, str]] = {}
    for sfile in sorted(root.glob('sub-*/sub-*_sessions.tsv')):
        subject = sfile.parent.name[4:]
        try:
            header, rows, row_problems = _read_tsv(sfile, 'session_id')
        except ClinicalTableError as exc:
            # one subject's whole file: reported and ignored (participants.tsv values are used)
            problem(None, f'{exc} (this sessions file is ignored)')
            continue
        for label, message in row_problems:
            problem((subject, label) if label is not None else None, message)
        order += [h for h in header if h not in _NOT_CLINICAL and h not in order]
        sessions.update({(subject, label): row for label, (_, row) in rows.items()})
        where.update({(subject, label): (sfile, line) for label, (line, _) in rows.items()})
    if not tsv.is_file():
        LOGGER.warning('%s: not found; no participant-level clinical variables', tsv)

    if columns is not None:
        unknown = [c for c in columns if c not in order]
        if unknown:
            raise UsageError(
                f'clinical column(s) not in {tsv.name} or sessions files: {", ".join(unknown)}'
                f' (available: {", ".join(order) or "none"})'
            )
        order = list(dict.fromkeys(columns))
    schema = schema or {}
    checked = [c for c in order if not schema or c in schema]
    types = {}
    for col in order:
        values = [row[col] for row in (*participants.values(), *sessions.values())
                  if row.get(col) not in (None, *MISSING_VALUES)]
        col_info = info.get(col) if isinstance(info.get(col), dict) else {}
        card_col = schema.get(col) if col in checked else None
        types[col] = (declared_type(col, col_info, card_col, root / 'participants.json')
                      or _infer_type(col, values, col_info))
    all_rows = [((sub, None), row) for sub, row in participants.items()]
    all_rows += list(sessions.items())
    failed: dict[str, list[tuple[tuple, str]]] = {}
    for key, row in all_rows:
        for col in checked:
            raw = row.get(col)
            if raw in (None, *MISSING_VALUES):
                continue
            col_info = info.get(col) if isinstance(info.get(col), dict) else {}
            why = value_problem(raw, types[col], col_info, schema.get(col))
            if why:
                failed.setdefault(col, []).append((key, raw, why))
    for col, fails in failed.items():
        n_values = sum(row.get(col) not in (None, *MISSING_VALUES) for _, row in all_rows)
        if len(fails) == n_values and n_values > 2:  # a coding mismatch, not a typo
            values = ', '.join(sorted({raw for _, raw, _ in fails})[:6])
            raise ClinicalTableError(
                f'{tsv}: column {col!r}: none of its values ({values}) fits, e.g. '
                f'{fails[0][2]}; recode the column, or leave it out with --clinical-columns'
            )
        for key, _, why in fails:
            path, line = where[key]
            label = f'sub-{key[0]}' + (f' ses-{key[1]}' if key[1] else '')
            problem(key, f'{path}:{line}: column {col!r}: {why} ({label} skipped)')
    table = ClinicalTable(participants, sessions, types, info)
    table.problems = problems
    table.bad = bad
    return table
