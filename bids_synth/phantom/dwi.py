"""Diffusion MRI: b0 plus b=1000 shells from a per-voxel multi-compartment tensor model.

Compartments: white matter (cylindrically symmetric tensor along the local fibre direction, from
the template's WM structure tensor, rotated with the head), white-matter lesions (less
anisotropic), grey matter (isotropic) and CSF (free water, 3e-3 mm^2/s). Ageing and AD raise
radial and mean diffusivity and so lower FA (e.g. Salat et al., Neurobiol Aging 2005; Bosch et
al., Neurobiol Aging 2012). Gradient directions: a Fibonacci half-sphere (near uniform). bvec is
written in FSL's convention (image axes, x flipped when the affine's determinant is positive).
"""

from __future__ import annotations

import numpy as np

from bids_synth.bids.gradients import fibonacci_hemisphere
from bids_synth.preprocessing.tensor import TENSOR_ORDER, scalar_maps, to_elements

from .mri import TISSUE_PARAMS

__all__ = ['gradient_table', 'diffusivities', 'dwi_signal', 'fsl_bvecs', 'dwi_sidecar',
           'tensor_truth', 'truth_sidecar']

B = 1000.0
TE_MS = 80.0
TR_MS = 8000.0


def gradient_table(n_b0: int, n_dirs: int) -> tuple[np.ndarray, np.ndarray]:
    """bvals (N,) and unit world-frame directions (N, 3) (zeros for b0), b0 first."""
    dirs = fibonacci_hemisphere(n_dirs)
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, B)]
    return bvals, np.r_[np.zeros((n_b0, 3)), dirs]


def diffusivities(age: float, severity: float) -> dict:
    """Compartment diffusivities (mm^2/s) for a subject of this age and severity."""
    a = max(age - 55.0, 0.0)
    return {
        'wm_par': 1.65e-3 * (1 - 0.002 * a),
        'wm_perp': 0.42e-3 * (1 + 0.009 * a + 0.35 * severity),
        'wmh_par': 1.7e-3,
        'wmh_perp': 0.85e-3,
        'gm': 0.78e-3 * (1 + 0.004 * a + 0.15 * severity),
        'csf': 3.0e-3,
    }


def _s0(tissue: str) -> float:
    t1, t2, pd = TISSUE_PARAMS[tissue]
    return float(pd * (1 - np.exp(-TR_MS / t1)) * np.exp(-TE_MS / t2))


def dwi_signal(frac: dict, dyad: np.ndarray, rotation: np.ndarray, bvals, dirs, d: dict):
    """Noise-free DWI (X, Y, Z, N) from native tissue fractions and fibre dyadics (6, ...)."""
    shape = frac['gm'].shape
    n = len(bvals)

    def flat(a):  # Fortran-order flattening: the result is the NIfTI (X, Y, Z, N) layout
        return a.ravel(order='F')[None]

    m = np.stack([c.ravel(order='F') for c in dyad])  # (6, V): xx yy zz xy xz yz
    g = np.asarray(dirs, dtype=np.float64) @ rotation  # rows R^T g: g^T R M R^T g
    coef = np.stack([g[:, 0] ** 2, g[:, 1] ** 2, g[:, 2] ** 2, 2 * g[:, 0] * g[:, 1],
                     2 * g[:, 0] * g[:, 2], 2 * g[:, 1] * g[:, 2]], 1).astype(np.float32)
    proj = coef @ m  # (N, V): squared cosine between fibre and gradient
    b = np.asarray(bvals, dtype=np.float32)[:, None]
    out = proj * (-b * np.float32(d['wm_par'] - d['wm_perp']))
    out -= b * np.float32(d['wm_perp'])
    np.exp(out, out=out)
    out *= flat(frac['wm'] - frac['wmh']) * np.float32(_s0('wm'))
    les = frac['wmh'].ravel(order='F')
    on = np.flatnonzero(les > 1e-3)
    if on.size:
        out[:, on] += les[on][None] * np.float32(_s0('wmh')) * np.exp(
            -b * np.float32(d['wmh_perp'])
            - b * np.float32(d['wmh_par'] - d['wmh_perp']) * proj[:, on])
    out += (flat(frac['gm']) * np.float32(_s0('gm')) * np.exp(-b * np.float32(d['gm']))
            + flat(frac['csf']) * np.float32(_s0('csf')) * np.exp(-b * np.float32(d['csf'])))
    out *= np.float32(1000.0)
    return out.reshape((n,) + shape[::-1]).transpose(3, 2, 1, 0)


def fsl_bvecs(dirs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World-frame unit directions (N, 3) to FSL bvec rows (3, N) for this image affine."""
    rot = affine[:3, :3] / np.sqrt((affine[:3, :3] ** 2).sum(0))
    vox = dirs @ rot  # rows: R^T g, directions along the image axes
    if np.linalg.det(affine[:3, :3]) > 0:
        vox[:, 0] *= -1
    return vox.T


#: brain voxels of the tensor ground truth: tissue (GM + WM + CSF) fraction above this
TRUTH_TISSUE = 0.5


def tensor_truth(signal: np.ndarray, bvals, dirs, frac: dict) -> dict[str, np.ndarray]:
    """Ground-truth tensor maps of a noise-free series (the phantom's own tissue model).

    The tensor the noise-free multi-compartment signal has at this gradient table: a dipy WLS
    fit with the world-frame directions, so it is in world (scanner RAS+) axes, mm^2/s, as
    bids_synth writes its tensors (``preprocessing.tensor``). In white matter it is the fibre
    tensor (FA from the template's fibre directions and the subject's diffusivities); in
    partial-volume voxels it is what an acquisition would measure, not a compartment mean.

    Returns
    -------
    dict
        ``tensor`` (X, Y, Z, 6; :data:`~bids_synth.preprocessing.tensor.TENSOR_ORDER`),
        ``fa``, ``md`` (X, Y, Z); 0 outside the tissue mask.
    """
    from dipy.core.gradients import gradient_table as dipy_table
    from dipy.reconst.dti import TensorModel

    mask = (frac['gm'] + frac['wm'] + frac['csf']) > TRUTH_TISSUE
    gtab = dipy_table(np.asarray(bvals, float), bvecs=np.asarray(dirs, float), b0_threshold=50)
    tensor = np.zeros(mask.shape + (6,), dtype=np.float32)
    with np.errstate(all='ignore'):
        fit = TensorModel(gtab, fit_method='WLS').fit(np.asarray(signal)[mask])
        tensor[mask] = np.nan_to_num(to_elements(fit.quadratic_form))
    maps = scalar_maps(tensor)
    return {'tensor': tensor, 'fa': np.where(mask, maps['fa'], 0.0),
            'md': np.where(mask, maps['md'], 0.0)}


def truth_sidecar(name: str) -> dict:
    """Sidecar of a tensor ground-truth map."""
    what = {'tensor': 'diffusion tensor, 6 volumes (' + ', '.join(f'D{e}' for e in TENSOR_ORDER)
            + '), mm^2/s, world (scanner RAS+) axes',
            'fa': 'fractional anisotropy', 'md': 'mean diffusivity, mm^2/s'}[name]
    return {'Description': f'Ground truth {what} of the noise-free phantom series (dipy WLS '
                           'fit at the acquired gradient table; bids_synth phantom).',
            'SkullStripped': True}


def dwi_sidecar() -> dict:
    """BIDS sidecar of the diffusion run."""
    return {
        'Manufacturer': 'bids_synth',
        'ManufacturersModelName': 'phantom (simulated)',
        'MagneticFieldStrength': 3,
        'RepetitionTime': TR_MS / 1000.0,
        'EchoTime': TE_MS / 1000.0,
        'PhaseEncodingDirection': 'j-',
        'MultibandAccelerationFactor': 1,
    }
