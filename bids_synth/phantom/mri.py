"""Structural MRI contrasts (T1w, T2w, FLAIR) from tissue relaxation times.

Each voxel's signal is the partial-volume mix of its tissues' signals, each from a textbook
signal equation with the sequence timings written into the sidecar:

- T1w (MPRAGE, simplified inversion recovery): ``PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``
- T2w (turbo spin echo): ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``
- FLAIR (inversion recovery with TI near the CSF null point): same form as T1w, long TR/TI.

Relaxation times at 3 T: GM/WM T1 1331/832 ms, T2 110/80 ms (Wansapura et al., JMRI 1999,
9:531); CSF T1 ~4000 ms, T2 ~2000 ms; WMH: lengthened T1 and T2 (oedema/demyelination), so
hypointense on T1w and bright on T2w and FLAIR. A receive-coil bias field (smooth, +-20 %)
multiplies the signal and Rician noise (magnitude of complex Gaussian noise) is added.
"""

from __future__ import annotations

import numpy as np

from .anatomy import smooth_random_field, upsample_separable
from .tissues import Tissues

__all__ = ['SEQUENCES', 'TISSUE_PARAMS', 'contrast_map', 'bias_field', 'rician', 'anat_sidecar']

#: tissue -> (T1 ms, T2 ms, proton density)
TISSUE_PARAMS = {
    'gm': (1331.0, 110.0, 0.80),
    'wm': (832.0, 80.0, 0.69),
    'csf': (4000.0, 2000.0, 1.00),
    'wmh': (1250.0, 170.0, 0.82),
}

#: sequence timings (ms) and sidecar fields
SEQUENCES = {
    'T1w': {'kind': 'ir', 'TR': 2300.0, 'TI': 900.0, 'TE': 2.98, 'flip': 9.0,
            'PulseSequenceType': 'MPRAGE', 'SequenceName': 'tfl3d1'},
    'T2w': {'kind': 'se', 'TR': 5000.0, 'TE': 100.0, 'flip': 120.0,
            'PulseSequenceType': 'TSE', 'SequenceName': 'tse3d'},
    'FLAIR': {'kind': 'ir', 'TR': 9000.0, 'TI': 2500.0, 'TE': 120.0, 'flip': 120.0,
              'PulseSequenceType': 'FLAIR', 'SequenceName': 'tir2d'},
}


def _tissue_signal(seq: dict, t1: float, t2: float, pd: float) -> float:
    tr, te = seq['TR'], seq['TE']
    if seq['kind'] == 'ir':
        ti = seq['TI']
        s = abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1))
    else:
        s = 1 - np.exp(-tr / t1)
    return float(pd * s * np.exp(-te / t2))


def contrast_map(name: str, tis: Tissues, *, age: float, rng: np.random.Generator,
                 res: int = 1) -> np.ndarray:
    """Noise-free template-space image of contrast ``name`` for a session's tissues.

    Relaxation times vary a little between subjects (+-3 %) and WM T2 lengthens with age.
    """
    seq = SEQUENCES[name]
    sig = {}
    for t, (t1, t2, pd) in TISSUE_PARAMS.items():
        f1, f2 = 1 + rng.normal(0, 0.03, 2)
        if t == 'wm':
            t2 *= 1 + 0.002 * (age - 55)
        sig[t] = _tissue_signal(seq, t1 * f1, t2 * f2, pd)
    gm, wm, csf, wmh = ((tis.gm, tis.wm, tis.csf, tis.wmh) if res == 1
                        else (tis.gm2, tis.wm2, tis.csf2, tis.wmh2))
    scale = 1000.0 / max(sig.values())
    out = (gm * sig['gm'] + (wm - wmh) * sig['wm'] + wmh * sig['wmh'] + csf * sig['csf'])
    return (out * scale).astype(np.float32)


def bias_field(rng: np.random.Generator, shape, strength: float = 0.2) -> np.ndarray:
    """Smooth multiplicative field exp(+-strength) over the grid (receive-coil profile)."""
    coarse = smooth_random_field(rng, (6, 6, 6), 1.2)
    pos = [np.linspace(0, n - 1, 6) for n in shape]
    return np.exp(strength * upsample_separable(coarse, pos, shape)).astype(np.float32)


def _normal_like(rng: np.random.Generator, a: np.ndarray) -> np.ndarray:
    """Standard normal float32 array with the shape and memory layout (C or F) of ``a``."""
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        return rng.standard_normal(a.shape[::-1], dtype=np.float32).T
    return rng.standard_normal(a.shape, dtype=np.float32)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of std ``sigma`` per channel."""
    s = np.float32(sigma)
    re = _normal_like(rng, signal)
    re *= s
    re += signal
    np.square(re, out=re)
    im = _normal_like(rng, signal)
    im *= s
    np.square(im, out=im)
    re += im
    return np.sqrt(re, out=re)


def anat_sidecar(name: str) -> dict:
    """BIDS sidecar of a structural image (times in seconds, as BIDS wants)."""
    seq = SEQUENCES[name]
    side = {
        'Manufacturer': 'bids_synth',
        'ManufacturersModelName': 'phantom (simulated)',
        'MagneticFieldStrength': 3,
        'MRAcquisitionType': '3D',
        'PulseSequenceType': seq['PulseSequenceType'],
        'SequenceName': seq['SequenceName'],
        'RepetitionTime': seq['TR'] / 1000.0,
        'EchoTime': seq['TE'] / 1000.0,
        'FlipAngle': seq['flip'],
    }
    if 'TI' in seq:
        side['InversionTime'] = seq['TI'] / 1000.0
    return side
