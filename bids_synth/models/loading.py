"""Load a saved model of any method: the card's ``method`` picks the class.

Kept apart from :mod:`.imputer` (the contract every method imports) so that no module imports
one that imports it back.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .checkpoint import read_card
from .imputer import Imputer

__all__ = ['load_imputer']


def load_imputer(path: str | Path, method: str | None = None) -> Imputer:
    """Load a saved model (safetensors + JSON card) of any method.

    The card's ``method`` field picks the class; ``method`` given by the user must agree.
    """
    path = Path(path)
    card = read_card(path)
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
