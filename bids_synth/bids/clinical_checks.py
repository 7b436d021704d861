"""Checks of clinical values against the data dictionary and the model card.

``participants.json`` (BIDS data dictionary) declares a column's type: ``Levels`` make it
categorical, ``Units`` continuous. At the participant level, the model card's
``clinical_schema`` declares it too (``type``, ``levels``, ``units``): the model was fitted on
those. A value that does not fit what is declared (``"seventy"`` in a continuous ``age``, ``U``
outside the ``Levels`` of ``sex``) is a data error for its row only; a column whose declarations
disagree (participants.json says months, the model years) is an error for the whole table.
Nothing is ever retyped silently.

>>> declared_type('age', {'Units': 'year'}, None, 'participants.json')
'continuous'
>>> declared_type('sex', {'Levels': {'M': 'male', 'F': 'female'}}, None, 'participants.json')
'categorical'
>>> declared_type('age', {}, {'type': 'continuous', 'units': 'year'}, 'participants.json')
'continuous'
>>> declared_type('notes', {}, None, 'participants.json') is None
True
>>> print(value_problem('seventy', 'continuous', {'Units': 'year'}, None))
'seventy' is not a number (Units "year" in participants.json)
>>> value_problem('U', 'categorical', {'Levels': {'M': 'male', 'F': 'female'}}, None)
"'U' is not one of the Levels in participants.json (M, F)"
>>> value_problem('O', 'categorical', {}, {'type': 'categorical', 'levels': ['M', 'F']})
"'O' is not a level the model knows (M, F)"
>>> value_problem('71.5', 'continuous', {'Units': 'year'}, None) is None
True
"""

from __future__ import annotations

import math

from bids_synth.errors import ClinicalTableError

__all__ = ['declared_type', 'value_problem']

_TYPES = ('continuous', 'categorical', 'text')


def _json_type(info: dict) -> str | None:
    if isinstance(info.get('Levels'), dict) and info['Levels']:
        return 'categorical'
    if info.get('Units') not in (None, ''):
        return 'continuous'
    return None


def _same_units(a, b) -> bool:
    return str(a).strip().lower().rstrip('s') == str(b).strip().lower().rstrip('s')


def declared_type(name: str, info: dict, card_col: dict | None, json_path) -> str | None:
    """The type a column is declared to have, or ``None`` (then it is inferred).

    Parameters
    ----------
    name : str
        Column name.
    info : dict
        The column's entry in participants.json (``{}`` when absent).
    card_col : dict or None
        The column's entry in the model card's ``clinical_schema``.
    json_path : path-like
        participants.json, for messages.

    Raises
    ------
    ClinicalTableError
        participants.json and the model card disagree on the column's type or units.
    """
    from_json = _json_type(info)
    from_card = card_col.get('type') if card_col else None
    if from_card not in _TYPES:
        from_card = None
    if from_json and from_card and from_json != from_card:
        why = 'Levels' if from_json == 'categorical' else 'Units'
        raise ClinicalTableError(
            f'{json_path}: column {name!r} is {from_json} ({why}) but the model was fitted on '
            f'a {from_card} {name!r}; fix participants.json or use another model'
        )
    if (from_json == 'continuous' and card_col and card_col.get('units')
            and not _same_units(info['Units'], card_col['units'])):
        raise ClinicalTableError(
            f'{json_path}: column {name!r} is in {info["Units"]!r} but the model expects '
            f'{card_col["units"]!r}; convert the column or use another model'
        )
    return from_json or from_card


def value_problem(raw: str, ctype: str, info: dict, card_col: dict | None) -> str | None:
    """Why a (non-missing) raw cell does not fit its column, or ``None``."""
    if ctype == 'continuous':
        try:
            ok = math.isfinite(float(raw))
        except ValueError:
            ok = False
        if not ok:
            if _json_type(info) == 'continuous':
                why = f'Units "{info["Units"]}" in participants.json'
            elif card_col and card_col.get('type') == 'continuous':
                why = 'continuous in the model card'
            else:
                why = 'the other values are numbers'
            return f'{raw!r} is not a number ({why})'
        return None
    if ctype == 'categorical':
        levels = info.get('Levels') if isinstance(info.get('Levels'), dict) else None
        if levels and raw not in levels:
            return (f'{raw!r} is not one of the Levels in participants.json '
                    f'({", ".join(map(str, levels))})')
        known = card_col.get('levels') if card_col and card_col.get('type') == 'categorical' \
            else None
        if known and raw not in [str(v) for v in known]:
            return f'{raw!r} is not a level the model knows ({", ".join(map(str, known))})'
    return None
