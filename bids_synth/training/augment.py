"""Contrast randomization of the training inputs (SynthSR's lesson, Billot et al. 2023).

With probability ``prob`` a training sample's sMRI and PET inputs are passed through another
scanner's contrast (:class:`bids_synth.phantom.scanner.ContrastShift`: random smooth monotone or
non-monotone intensity curve, bias field, noise, blur), each input with its own draw, then put
back on the scale conform gives (99th percentile inside the brain mask as before), as a
conformed image from a new scanner would be. The targets are never changed: the network learns
to predict the standard contrast from whatever contrast it is given, so it keys on anatomy.

>>> rng = np.random.default_rng(0)
>>> mask = np.zeros((8, 8, 8), bool); mask[2:6, 2:6, 2:6] = True
>>> t1 = (mask * np.linspace(0.5, 1.0, 512).reshape(8, 8, 8)).astype(np.float32)[None]
>>> out = augment_inputs({'T1w': t1, 'bold': np.ones((6, 8, 8, 8), np.float32)}, mask, rng, 1.0)
>>> bool(np.allclose(out['bold'], 1.0)), bool(np.isclose(np.percentile(out['T1w'][0][mask], 99),
...                                                    np.percentile(t1[0][mask], 99)))
(True, True)
"""

from __future__ import annotations

import numpy as np

from ..bids.modalities import MODALITIES
from ..phantom.scanner import ContrastShift

__all__ = ['augment_inputs', 'RANDOMIZED_FAMILIES']

#: modality families whose inputs get random contrasts (intensity images; bold and dwi are
#: derived quantitative maps)
RANDOMIZED_FAMILIES = ('smri', 'pet')


def augment_inputs(images: dict[str, np.ndarray], mask: np.ndarray, rng: np.random.Generator,
                   prob: float) -> dict[str, np.ndarray]:
    """A copy of ``images`` (modality -> (C, X, Y, Z)) with random contrasts, or ``images``."""
    if prob <= 0 or rng.uniform() >= prob:
        return images
    out = dict(images)
    for m, img in images.items():
        if MODALITIES[m].family not in RANDOMIZED_FAMILIES:
            continue
        shifted = np.stack([ContrastShift(rng)(c) for c in img])
        for c in range(img.shape[0]):
            before = np.percentile(np.abs(img[c][mask]), 99)
            after = np.percentile(np.abs(shifted[c][mask]), 99)
            if after > 0:
                shifted[c] *= before / after
        out[m] = shifted.astype(np.float32)
    return out
