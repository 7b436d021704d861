"""Diffusion tensors: log-Euclidean representation, reorientation, scalar maps, rendering.

The model represents the diffusion tensor by the 6 unique elements of its matrix logarithm
(Arsigny et al., Magn Reson Med 2006): any real symmetric matrix is the logarithm of a positive
definite one, so a regression, an average or a linear interpolation of log-tensors always gives
back a valid tensor. Conventions used everywhere in bids_synth:

- element order ``xx, xy, xz, yy, yz, zz`` (:data:`TENSOR_ORDER`, the upper triangle row by
  row, as FSL's ``dtifit --save_tensor``);
- frame: world (scanner / template) RAS+ millimetre axes, i.e. the axes of the image affine's
  output space, not the voxel axes;
- units: the log-tensor is ``logm(D / 1e-3 mm^2/s)``; written tensors are in mm^2/s.

An affine registration ``A`` (native -> template) reorients tensors by its rotation in the
finite-strain sense, ``R = (A A^T)^(-1/2) A`` (Alexander et al., IEEE TMI 2001): ``R D R^T``.
Since ``logm(R D R^T) = R logm(D) R^T``, log-tensors rotate the same way.

b-vectors follow FSL's convention: unit vectors along the image (voxel) axes, the first
component negated when the affine's determinant is positive (:func:`fsl_to_world`).

>>> import numpy as np
>>> d = to_elements(np.diag([1.7, 0.3, 0.3]))
>>> {k: round(float(v), 3) for k, v in scalar_maps(d).items()}
{'fa': 0.799, 'md': 0.767, 'ad': 1.7, 'rd': 0.3}
>>> np.allclose(exp_tensor(log_tensor(d)), d)
True
"""

from __future__ import annotations

import numpy as np

__all__ = [
    'TENSOR_ORDER',
    'LOG_UNIT',
    'EIGEN_RANGE',
    'to_matrix',
    'to_elements',
    'log_tensor',
    'exp_tensor',
    'rotate',
    'finite_strain',
    'voxel_rotation',
    'fsl_to_world',
    'world_to_fsl',
    'scalar_maps',
    'render',
]

#: Order of the 6 unique elements (upper triangle, row by row).
TENSOR_ORDER = ('xx', 'xy', 'xz', 'yy', 'yz', 'zz')
#: Unit of the tensor inside the logarithm (mm^2/s): log-tensors are logm(D / LOG_UNIT).
LOG_UNIT = 1e-3
#: Eigenvalues are clipped to this range (in LOG_UNIT) before the logarithm: a noisy fit can
#: give zero or negative eigenvalues; 4e-3 mm^2/s is above free water at body temperature.
EIGEN_RANGE = (0.01, 4.0)

_IDX = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def to_matrix(elements: np.ndarray) -> np.ndarray:
    """Elements (..., 6) in :data:`TENSOR_ORDER` -> symmetric matrices (..., 3, 3)."""
    e = np.asarray(elements)
    out = np.empty(e.shape[:-1] + (3, 3), dtype=np.result_type(e.dtype, np.float32))
    for k, (i, j) in enumerate(_IDX):
        out[..., i, j] = e[..., k]
        out[..., j, i] = e[..., k]
    return out


def to_elements(matrices: np.ndarray) -> np.ndarray:
    """Symmetric matrices (..., 3, 3) -> elements (..., 6) in :data:`TENSOR_ORDER`."""
    m = np.asarray(matrices)
    return np.stack([0.5 * (m[..., i, j] + m[..., j, i]) for i, j in _IDX], axis=-1)


def _eig_apply(elements: np.ndarray, func) -> np.ndarray:
    m = to_matrix(np.asarray(elements, dtype=np.float64))
    w, v = np.linalg.eigh(m)
    out = (v * func(w)[..., None, :]) @ np.swapaxes(v, -1, -2)
    return to_elements(out)


def log_tensor(elements: np.ndarray, clip: tuple[float, float] | None = EIGEN_RANGE
               ) -> np.ndarray:
    """Matrix logarithm of tensors given in :data:`LOG_UNIT` (..., 6) -> (..., 6).

    Eigenvalues are first clipped to ``clip`` (None: must already be positive).
    """
    lo, hi = clip if clip is not None else (np.finfo(float).tiny, np.inf)
    return _eig_apply(elements, lambda w: np.log(np.clip(w, lo, hi)))


def exp_tensor(log_elements: np.ndarray) -> np.ndarray:
    """Matrix exponential of log-tensors (..., 6) -> positive definite tensors (..., 6)."""
    return _eig_apply(log_elements, np.exp)


def rotate(elements: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``R D R^T`` for tensors (..., 6) (or log-tensors: they rotate the same way)."""
    r = np.asarray(rotation, dtype=np.float64)
    m = to_matrix(np.asarray(elements, dtype=np.float64))
    return to_elements(r @ m @ r.T).astype(np.result_type(elements, np.float32))


def finite_strain(matrix: np.ndarray) -> np.ndarray:
    """The rotation of a linear map ``A`` (3, 3): ``(A A^T)^(-1/2) A`` (orthogonal).

    A reflection (det < 0) stays in the result; tensors ``R D R^T`` do not mind its sign.
    """
    a = np.asarray(matrix, dtype=np.float64)
    w, v = np.linalg.eigh(a @ a.T)
    if w.min() <= 0:
        raise ValueError(f'singular linear map, cannot take its rotation: {a.tolist()}')
    return (v / np.sqrt(w)) @ v.T @ a


def voxel_rotation(affine: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) from the voxel axes of an image to its world axes (columns: the voxel
    axes' unit directions in world mm, orthogonalized)."""
    return finite_strain(np.asarray(affine, dtype=np.float64)[:3, :3])


def _flip(affine) -> np.ndarray:
    return np.diag([-1.0 if np.linalg.det(np.asarray(affine)[:3, :3]) > 0 else 1.0, 1.0, 1.0])


def fsl_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL b-vectors (N, 3) of an image with this affine -> world unit directions (N, 3)."""
    b = np.asarray(bvecs, dtype=np.float64)
    return b @ _flip(affine) @ voxel_rotation(affine).T


def world_to_fsl(dirs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World directions (N, 3) -> FSL b-vectors (N, 3) for an image with this affine."""
    d = np.asarray(dirs, dtype=np.float64)
    return d @ voxel_rotation(affine) @ _flip(affine)


def scalar_maps(elements: np.ndarray) -> dict[str, np.ndarray]:
    """FA, MD, AD (largest eigenvalue) and RD (mean of the other two) of tensors (..., 6).

    MD, AD and RD are in the tensors' unit; FA is 0-1 (0 where the tensor is zero).
    """
    from dipy.reconst.dti import (
        axial_diffusivity, fractional_anisotropy, mean_diffusivity, radial_diffusivity,
    )

    # dipy's definitions, on eigenvalues in decreasing order (as dipy's fits give them)
    w = np.linalg.eigvalsh(to_matrix(np.asarray(elements, dtype=np.float64)))[..., ::-1]
    with np.errstate(invalid='ignore', divide='ignore'):
        fa = np.nan_to_num(fractional_anisotropy(w))
    return {'fa': np.clip(fa, 0, 1), 'md': mean_diffusivity(w), 'ad': axial_diffusivity(w),
            'rd': radial_diffusivity(w)}


def render(s0: np.ndarray, elements: np.ndarray, bvals: np.ndarray, dirs: np.ndarray
           ) -> np.ndarray:
    """Diffusion-weighted signal ``S0 exp(-b g^T D g)``.

    Parameters
    ----------
    s0 : ndarray, shape (...)
    elements : ndarray, shape (..., 6)
        Tensors in mm^2/s, world frame.
    bvals : ndarray, shape (N,)
        s/mm^2.
    dirs : ndarray, shape (N, 3)
        World-frame unit directions (any vector for b=0).

    Returns
    -------
    ndarray, shape (..., N), float32
    """
    g = np.asarray(dirs, dtype=np.float64)
    b = np.asarray(bvals, dtype=np.float64)
    coef = np.stack([g[:, 0] ** 2, 2 * g[:, 0] * g[:, 1], 2 * g[:, 0] * g[:, 2], g[:, 1] ** 2,
                     2 * g[:, 1] * g[:, 2], g[:, 2] ** 2], 1) * b[:, None]  # (N, 6)
    e = np.asarray(elements, dtype=np.float32)
    adc = e.reshape(-1, 6) @ coef.T.astype(np.float32)  # (V, N): b g^T D g
    out = np.exp(-adc) * np.asarray(s0, dtype=np.float32).reshape(-1, 1)
    return out.reshape(e.shape[:-1] + (len(b),)).astype(np.float32)
