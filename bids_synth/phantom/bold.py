"""Resting-state BOLD: network-structured, band-limited fluctuations on an EPI baseline.

Latent signals (band-limited 0.01-0.1 Hz) drive the default-mode network (DMN: posterior
cingulate, medial prefrontal, angular, lateral temporal; Andrews-Hanna et al., Neuron 2010) and
a task-positive network (intraparietal sulcus, frontal eye field, MT+; Fox et al., PNAS 2005)
that is anticorrelated with it; a global grey-matter signal, spatially smooth physiological
noise and thermal noise are added. Each DMN node mixes the shared DMN signal with a private one:
the shared fraction (the nodes' mutual correlation) falls with AD severity, the connectivity loss
reported in AD (Greicius et al., PNAS 2004). Baseline contrast: T2*-weighted gradient-echo EPI.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from bids_synth.preprocessing.regions import PATTERNS

from .anatomy import NETWORK_NODES, Template

__all__ = ['network_maps', 'band_limited', 'bold_series', 'bold_sidecar', 'dmn_coupling']

TR_S = 2.0
TE_S = 0.03


def network_maps(tpl: Template) -> tuple[list[str], np.ndarray]:
    """Names and smooth weight maps (R, ...) of DMN and task-positive nodes at 2 mm."""
    return list(NETWORK_NODES), tpl.maps['net']


def band_limited(rng: np.random.Generator, n: int, tr: float, lo=0.01, hi=0.1) -> np.ndarray:
    """Unit-variance Gaussian series with power only in [lo, hi] Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, tr)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return (x - x.mean()) / (x.std() + 1e-12)


def dmn_coupling(severity: float) -> float:
    """Shared-signal fraction of DMN nodes (their expected mutual correlation, noise aside)."""
    return float(0.75 * (1 - 0.75 * severity))


def bold_series(rng: np.random.Generator, *, baseline: np.ndarray, gm: np.ndarray,
                nodes: np.ndarray, names: list[str], severity: float, n_vols: int,
                zooms, thermal_noise: bool = True) -> np.ndarray:
    """4D series (X, Y, Z, T) from native-grid baseline, GM fraction and node weights.

    ``thermal_noise=False`` leaves the scanner's white noise out (drawn all the same); the
    neural and physiological fluctuations stay.
    """
    t = n_vols
    c = dmn_coupling(severity)
    dmn = band_limited(rng, t, TR_S)
    tp = -0.5 * dmn + np.sqrt(0.75) * band_limited(rng, t, TR_S)
    glob = band_limited(rng, t, TR_S, 0.01, 0.08)
    sig = []
    for n in names:
        shared = dmn if n in PATTERNS['dmn'] else tp
        sig.append(np.sqrt(c) * shared + np.sqrt(1 - c) * band_limited(rng, t, TR_S))
    sig = np.stack(sig).astype(np.float32)  # (R, T)
    shape = baseline.shape
    # spatial arrays flattened in Fortran order, series computed as (T, V): the result is a
    # Fortran-ordered (X, Y, Z, T) array, the NIfTI layout, written without a transposing copy
    g = gm.ravel(order='F')[None]
    # spatially smooth physiological noise: low rank (smooth random maps x broadband series)
    q = 16
    maps = np.stack([ndi.zoom(rng.standard_normal((6, 6, 5)).astype(np.float32),
                              [n / m for n, m in zip(shape, (6, 6, 5))], order=1).ravel(order='F')
                     for _ in range(q)])
    series = np.stack([band_limited(rng, t, TR_S, 0.005, 0.25) for _ in range(q)])
    drift = np.linspace(-1, 1, t) * rng.normal(0, 0.004)
    # one product: [signals, global, physio, 1+drift]^T @ [node weights x GM, GM, maps, 1]
    w_all = np.concatenate([np.stack([m.ravel(order='F') for m in nodes]) * g, g, maps,
                            np.ones_like(g)]).astype(np.float32)  # (K, V)
    s_all = np.concatenate([0.02 * sig, 0.006 * glob[None], 0.004 / np.sqrt(q) * series,
                            1 + drift[None]]).astype(np.float32)  # (K, T)
    data = s_all.T @ w_all  # (T, V): 1 + fractional signal change
    data *= baseline.ravel(order='F')[None]
    sigma = 0.01 * float(np.percentile(baseline[baseline > 0], 90)) if (baseline > 0).any() \
        else 1.0
    noise = rng.standard_normal(data.shape, dtype=np.float32)
    noise *= np.float32(sigma if thermal_noise else 0.0)
    data += noise
    np.abs(data, out=data)
    return data.reshape((t,) + shape[::-1]).transpose(3, 2, 1, 0)


def bold_sidecar(n_slices: int) -> dict:
    """BIDS sidecar of a resting-state run (interleaved slice order along k)."""
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    timing = [0.0] * n_slices
    for rank, s in enumerate(order):
        timing[s] = round(rank * TR_S / n_slices, 4)
    return {
        'TaskName': 'rest',
        'TaskDescription': 'Eyes-open resting state (simulated).',
        'RepetitionTime': TR_S,
        'EchoTime': TE_S,
        'FlipAngle': 80,
        'MagneticFieldStrength': 3,
        'Manufacturer': 'bids_synth',
        'ManufacturersModelName': 'phantom (simulated)',
        'PhaseEncodingDirection': 'j-',
        'SliceEncodingDirection': 'k',
        'SliceTiming': timing,
    }
