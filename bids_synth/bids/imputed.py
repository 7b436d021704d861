"""``<out>/participants.tsv`` with imputed clinical values, and its sidecar that marks them.

The output table is the input's ``participants.tsv`` (every row and column, in order) with each
``n/a`` cell that the model's tabular head predicted filled in; nothing else changes. The
sidecar ``participants.json`` is the input's data dictionary, each column that received values
saying so in its ``Description``, plus a ``bids_synth`` block:

- ``ImputedCells``: ``participant_id -> column -> {value, std | probabilities, session}``: each
  filled cell, its predictive spread (the Gaussian's standard deviation, or the probability of
  every level), and the session whose images it was predicted from (a subject's first session);
- ``Sessions``: every session's imputed values (what its synthesized images were conditioned
  on), also for the values of ``sessions.tsv`` columns, which are not written to a table.

A later run (other ``--participant-label``) keeps the cells earlier runs imputed for the other
subjects. Files are written to a temporary name and renamed. The input is only read.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .clinical import MISSING_VALUES

__all__ = ['write_imputed_participants', 'read_imputed_marks']

_BLOCK = 'bids_synth'


def _atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix=path.suffix, dir=path.parent)
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def read_imputed_marks(output_dir: str | os.PathLike) -> dict:
    """The ``bids_synth`` block of ``<out>/participants.json`` (empty when none)."""
    side = Path(output_dir) / 'participants.json'
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text()).get(_BLOCK, {})
    except (json.JSONDecodeError, AttributeError):
        return {}


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in path.read_text(encoding='utf-8-sig').splitlines() if ln.strip()]
    header = lines[0].split('\t')
    return header, [ln.split('\t') for ln in lines[1:]]


def write_imputed_participants(bids_dir, output_dir, records: list[dict], *,
                               columns=()) -> Path | None:
    """Write the imputed table and its sidecar; return the table's path.

    Parameters
    ----------
    records : list of dict
        :class:`~bids_synth.interfaces.clinical.ImputeClinical` records (subject, session,
        imputed).
    columns : sequence of str
        The model's clinical columns: the ones a table without ``participants.tsv`` gets.

    Returns ``None`` (nothing written) when no record imputed anything and no earlier run did.
    """
    bids_dir, out = Path(bids_dir), Path(output_dir)
    previous = read_imputed_marks(out)
    sessions = dict(previous.get('Sessions', {}))
    for rec in records:
        key = f'sub-{rec["subject"]}' + (f'_ses-{rec["session"]}' if rec.get('session') else '')
        sessions[key] = rec.get('imputed', {})
    cells: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: (r['subject'], r.get('session') or '')):
        pid = f'sub-{rec["subject"]}'
        for col, pred in rec.get('imputed', {}).items():
            cells.setdefault(pid, {}).setdefault(col, dict(pred, session=rec.get('session')))
    for pid, cols in previous.get('ImputedCells', {}).items():
        if not any(r['subject'] == pid[4:] for r in records):
            cells[pid] = cols  # an earlier run's subjects
    if not cells and not any(sessions.values()):
        return None

    src = bids_dir / 'participants.tsv'
    if src.is_file():
        header, rows = _read_table(src)
    else:
        header = ['participant_id'] + list(columns)
        rows = [[pid] + ['n/a'] * len(columns) for pid in sorted(cells)]
    pcol = header.index('participant_id')
    filled: dict[str, dict] = {}
    for row in rows:
        pid = row[pcol] if row[pcol].startswith('sub-') else f'sub-{row[pcol]}'
        for col, pred in cells.get(pid, {}).items():
            if col in header and len(row) == len(header):
                j = header.index(col)
                if row[j].strip() in MISSING_VALUES:
                    row[j] = _cell(pred['value'])
                    filled.setdefault(pid, {})[col] = pred
    text = '\n'.join('\t'.join(r) for r in [header] + rows) + '\n'

    side_src = bids_dir / 'participants.json'
    try:
        sidecar = json.loads(side_src.read_text(encoding='utf-8-sig')) if side_src.is_file() \
            else {}
    except json.JSONDecodeError:
        sidecar = {}
    sidecar = {k: v for k, v in sidecar.items() if k != _BLOCK}
    imputed_cols = sorted({c for cols in filled.values() for c in cols})
    for col in imputed_cols:
        entry = dict(sidecar.get(col) or {})
        note = ('n/a cells of the input filled in by bids_synth (predicted from the images and '
                'the other values; listed in bids_synth.ImputedCells)')
        desc = entry.get('Description', '')
        entry['Description'] = f'{desc}. {note}' if desc and note not in desc else (desc or note)
        sidecar[col] = entry
    sidecar[_BLOCK] = {
        'Description': 'Cells of participants.tsv that were n/a in the input and were imputed '
                       'by the tabular head of the bids_synth model; value, predictive spread '
                       '(std: Gaussian standard deviation; probabilities: of each level) and '
                       'the session whose images the prediction used. Sessions: every '
                       "session's imputed values, which its synthesized images used.",
        'ImputedCells': filled,
        'Sessions': sessions,
    }
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / 'participants.json', json.dumps(sidecar, indent=2, sort_keys=True) + '\n')
    _atomic(out / 'participants.tsv', text)
    return out / 'participants.tsv'


def _cell(value) -> str:
    """
    >>> _cell(27.0), _cell(71.25), _cell('AD')
    ('27', '71.25', 'AD')
    """
    if isinstance(value, float):
        return f'{value:g}' if value != int(value) else str(int(value))
    return str(value)
