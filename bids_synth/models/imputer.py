"""The contract every imputation method fulfils (regression baseline, latent diffusion).

Arrays are in the model's template space (``preprocessing.templates.model_grid``), already in
the representation of ``bids.modalities`` (intensity-normalized, channels first).

A method is fitted on complete (or partly complete) sessions and then, for one session, predicts
every requested target from whatever subset of modalities and clinical values is available.
This module imports no method: :mod:`.loading` picks the class of a saved model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ['Prediction', 'SessionArrays', 'Imputer']


@dataclass
class SessionArrays:
    """One session's images and clinical values, ready for a model.

    Attributes
    ----------
    subject, session : str
        Labels without the ``sub-``/``ses-`` prefixes (session may be ``None``).
    images : dict of str to numpy.ndarray, shape (C, X, Y, Z), float32
        Available modalities in the model representation; a missing modality is absent.
    clinical : dict of str to float, str or None
        Clinical values (``None`` for missing), keyed by participants.tsv column.
    """

    subject: str
    session: str | None
    images: dict[str, np.ndarray]
    clinical: dict[str, object] = field(default_factory=dict)


@dataclass
class Prediction:
    """A synthesized modality: the mean over samples and the voxelwise std (``None`` if K=1).

    Attributes
    ----------
    mean : numpy.ndarray, shape (C, X, Y, Z)
    std : numpy.ndarray or None, shape (C, X, Y, Z)
    extra : dict
        Method-specific provenance (e.g. fusion weights per input) for sidecars and reports.
    """

    mean: np.ndarray
    std: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    #: the K individual samples (K, C, X, Y, Z) when asked for (``return_samples``)
    samples: np.ndarray | None = None


@runtime_checkable
class Imputer(Protocol):
    """What the synthesize node needs from a method."""

    #: short method name written into provenance ('regression', 'diffusion').
    method: str
    #: modalities the model knows, in channel order.
    modalities: tuple[str, ...]

    def predict(
        self,
        session: SessionArrays,
        targets: tuple[str, ...],
        *,
        seed: int = 0,
        num_samples: int = 1,
        device: str = 'cpu',
    ) -> dict[str, Prediction]: ...

    def card(self) -> dict:
        """The model card (JSON-serializable) as stored beside the weights."""
        ...
