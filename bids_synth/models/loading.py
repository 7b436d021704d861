"""Load a saved model of any method: the card's ``method`` picks the class.

Kept apart from :mod:`.imputer` (the contract every method imports) so that no module imports
one that imports it back.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .checkpoint import read_card
from .imputer import Imputer

__all__ = ['load_imputer', 'check_channels']


def load_imputer(path: str | Path, method: str | None = None) -> Imputer:
    """Load a saved model (safetensors + JSON card) of any method.

    The card's ``method`` field picks the class; ``method`` given by the user must agree.
    """
    path = Path(path)
    card = read_card(path)
    check_channels(card, path)
    kind = card.get('method')
    if method is not None and method != kind:
        raise ModelError(f'{path}: model is a {kind!r} model, but --method {method} was asked for')
    if kind == 'regression':
        from .baseline import RegressionImputer

        return RegressionImputer.load(path)
    if kind == 'diffusion':
        from .synthesis import DiffusionImputer

        return DiffusionImputer.load(path)
    raise ModelError(f'{path}: unknown model method {kind!r} in the model card')


def check_channels(card: dict, path) -> None:
    """A model fitted with another representation of a modality (e.g. dwi before it gained the
    tensor channels) cannot read today's conformed images: one clear :class:`ModelError`
    instead of a shape error inside a node.

    >>> check_channels({'channels': {'T1w': 1}}, 'm')
    >>> check_channels({'channels': {'dwi': 7}}, 'm')
    Traceback (most recent call last):
    ...
    bids_synth.errors.ModelError: m: the model represents dwi as 7 channels, this bids_synth as 13 (b0, seg1, seg2, seg3, seg4, fa, md, logdxx, logdxy, logdxz, logdyy, logdyz, logdzz); refit it with the group level of this version
    """
    from ..bids.modalities import MODALITIES

    for mod, chans in (card.get('channels') or {}).items():
        if mod not in MODALITIES:
            continue
        now = MODALITIES[mod].channels
        n = len(chans) if isinstance(chans, list) else int(chans)
        if n != len(now) or (isinstance(chans, list) and list(chans) != list(now)):
            raise ModelError(f'{path}: the model represents {mod} as {n} channels, this '
                             f'bids_synth as {len(now)} ({", ".join(now)}); refit it with the '
                             'group level of this version')
