"""Model files: safetensors weights plus a JSON model card, never pickle.

A model is a directory ``<name>/`` holding ``model.safetensors`` and ``model_card.json``; the card
records the sha256 of the weights file, and loading refuses a file whose digest differs, a card
of another format, or anything that is not a safetensors file (pickles in particular: a
``torch.load`` of an untrusted file is code execution).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ModelError, NoInputError

__all__ = [
    'CARD_NAME',
    'WEIGHTS_NAME',
    'FORMAT',
    'read_card',
    'save_model',
    'load_model',
    'sha256_file',
]

CARD_NAME = 'model_card.json'
WEIGHTS_NAME = 'model.safetensors'
FORMAT = 'bids_synth-model/1'
_PICKLE_MAGIC = (b'\x80\x02', b'\x80\x03', b'\x80\x04', b'\x80\x05', b'PK\x03\x04')


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _model_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():
        if path.name in (CARD_NAME, WEIGHTS_NAME):
            return path.parent
        with open(path, 'rb') as f:
            head = f.read(4)
        if head.startswith(_PICKLE_MAGIC):
            raise ModelError(
                f'{path}: this is a pickle/torch.save file; bids_synth only loads safetensors '
                'model directories (pickles can run arbitrary code)'
            )
        raise ModelError(f'{path}: not a bids_synth model directory ({CARD_NAME} + {WEIGHTS_NAME})')
    if not path.exists():
        raise NoInputError(f'{path}: model not found')
    return path


def read_card(path: str | Path) -> dict:
    """Read and check a model card (format, required fields)."""
    mdir = _model_dir(path)
    card_file = mdir / CARD_NAME
    if not card_file.is_file():
        raise ModelError(f'{mdir}: no {CARD_NAME}; not a bids_synth model directory')
    try:
        card = json.loads(card_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f'{card_file}: model card is not valid JSON ({exc})') from None
    if not isinstance(card, dict) or card.get('format') != FORMAT:
        raise ModelError(f'{card_file}: model card format is not {FORMAT!r}')
    for key in ('method', 'name', 'modalities', 'sha256', 'template'):
        if key not in card:
            raise ModelError(f'{card_file}: model card lacks the field {key!r}')
    return card


def save_model(path: str | Path, tensors: dict[str, np.ndarray], card: dict) -> Path:
    """Write weights and card atomically into the directory ``path``; return it.

    The card gets ``format`` and the weights' ``sha256``.
    """
    from safetensors.numpy import save_file

    mdir = Path(path)
    mdir.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    fd, tmp_w = tempfile.mkstemp(prefix='.tmp-', suffix='.safetensors', dir=mdir)
    os.close(fd)
    save_file(arrays, tmp_w)
    card = dict(card, format=FORMAT, sha256=sha256_file(tmp_w))
    fd, tmp_c = tempfile.mkstemp(prefix='.tmp-', suffix='.json', dir=mdir)
    with os.fdopen(fd, 'w') as f:
        json.dump(card, f, indent=2, sort_keys=True, default=_jsonable)
    umask = os.umask(0)
    os.umask(umask)
    for tmp in (tmp_w, tmp_c):  # mkstemp makes 0600 files: give them the usual permissions
        os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp_w, mdir / WEIGHTS_NAME)
    os.replace(tmp_c, mdir / CARD_NAME)
    return mdir


def load_model(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Load weights (numpy arrays) and card; refuse tampered or non-safetensors weights."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    card = read_card(path)
    mdir = _model_dir(path)
    wfile = mdir / WEIGHTS_NAME
    if not wfile.is_file():
        raise ModelError(f'{mdir}: no {WEIGHTS_NAME}')
    with open(wfile, 'rb') as f:
        head = f.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise ModelError(f'{wfile}: weights are a pickle, not safetensors; refusing to load')
    digest = sha256_file(wfile)
    if digest != card['sha256']:
        raise ModelError(
            f'{wfile}: sha256 {digest[:12]}... does not match the model card '
            f'({card["sha256"][:12]}...); the file was modified'
        )
    try:
        tensors = load_file(str(wfile))
    except (SafetensorError, ValueError, OSError) as exc:
        raise ModelError(f'{wfile}: not a readable safetensors file ({exc})') from None
    return tensors, card


def _jsonable(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f'not JSON serializable: {type(obj).__name__}')
