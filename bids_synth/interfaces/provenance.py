"""Provenance: what a sidecar's ``bids_synth`` block says about how an image was made."""

from __future__ import annotations

import datetime as _dt
from importlib.metadata import PackageNotFoundError, version

__all__ = ['software_versions', 'model_provenance', 'resolve_device', 'derive_seed']

_PACKAGES = ('bids_synth', 'torch', 'monai', 'nipype', 'pybids', 'nibabel', 'nilearn', 'numpy',
             'antspyx', 'dipy', 'templateflow')


def software_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the output."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != 'auto':
        return device
    try:
        import torch

        return 'cuda' if torch.cuda.is_available() else 'cpu'
    except ImportError:  # pragma: no cover - torch is a dependency
        return 'cpu'


def derive_seed(master: int, *keys: str) -> int:
    """A per-image seed from the run's master seed and the image's identity.

    Stable across runs and processes (no ``hash()`` randomization).

    >>> derive_seed(0, 'sub-01', 'ses-1', 'FDG') == derive_seed(0, 'sub-01', 'ses-1', 'FDG')
    True
    >>> derive_seed(0, 'sub-01', '', 'FDG') != derive_seed(1, 'sub-01', '', 'FDG')
    True
    """
    import hashlib

    digest = hashlib.sha256('/'.join((str(master),) + keys).encode()).digest()
    return int.from_bytes(digest[:4], 'little') & 0x7FFFFFFF


def model_provenance(imputer, model_path: str) -> dict:
    """The model part of the provenance block."""
    from ..models.checkpoint import read_card

    card = read_card(model_path)
    prov = {
        'method': card['method'],
        'model_name': card['name'],
        'model_path': str(model_path),
        'model_sha256': card['sha256'],
        'model_origin': card.get('origin', 'user'),
        'template': card.get('template', {}),
        'software': software_versions(),
        'date': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'),
    }
    if card['method'] == 'diffusion':
        prov['sampler'] = card.get('sampler', {})
    return prov
