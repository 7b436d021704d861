"""Anatomy of phantom subjects: template tissues, subject deformations, scanner grids and poses.

Every phantom image is made by *pulling back* a template-space map through one composite,
smooth mapping::

    native voxel ijk --grid affine--> scanner mm --inverse head pose--> subject mm
        --head size--> unscaled subject mm --diffeomorphic warp--> template (MNI) mm

The template is nilearn's MNI152 2009a symmetric GM/WM maps and brain mask at 1 mm (CSF is
the brain mask minus GM and WM). The warp is the exponential (scaling and squaring) of a
stationary velocity field: a smooth random field (individual anatomy) plus an age/disease term
that pulls the ventricles open (and an optional medial-temporal shrinkage term, off by default:
shrinking a structure by a warp pulls WM in, whereas atrophy leaves CSF, which ``tissues``
models), so it stays invertible.

The template itself (tissue maps, fibre orientations, regional weights) is prepared in
``template``. The composite mapping is evaluated on a coarse sub-grid of each native grid
(every ~6 mm) and upsampled separably (exact for the affine part, the warp being smooth), so a
1 mm anatomical grid costs one trilinear interpolation per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .template import NETWORK_NODES, Template, load_template

__all__ = [
    'NETWORK_NODES',
    'Template',
    'Deformation',
    'Grid',
    'Pose',
    'load_template',
    'make_deformation',
    'make_grid',
    'make_pose',
    'template_coords',
    'sample',
    'smooth_random_field',
    'upsample_separable',
]

_AXIS = {'R': (0, 1.0), 'L': (0, -1.0), 'A': (1, 1.0), 'P': (1, -1.0), 'S': (2, 1.0),
         'I': (2, -1.0)}


def smooth_random_field(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit maximum absolute value."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode='wrap')
    return f / max(float(np.abs(f).max()), 1e-6)


@dataclass(frozen=True)
class Deformation:
    """Subject-to-template mapping: head-size scaling then a diffeomorphic warp.

    ``disp`` holds the warp displacement (mm, 3 components) on a coarse grid (``affine``) in
    unscaled subject space.
    """

    affine: np.ndarray
    disp: np.ndarray
    head_scale: float
    centre: np.ndarray

    def to_template(self, y: np.ndarray) -> np.ndarray:
        """Map subject points (3, N) in mm to template MNI mm."""
        y1 = self.centre[:, None] + (y - self.centre[:, None]) / self.head_scale
        inv = np.linalg.inv(self.affine)
        ijk = inv[:3, :3] @ y1 + inv[:3, 3:4]
        d = [ndi.map_coordinates(c, ijk, order=1, mode='nearest') for c in self.disp]
        return y1 + np.stack(d)

    def linear(self) -> np.ndarray:
        """Affine (4x4) part of the subject-to-template mapping (the head-size scaling)."""
        a = np.eye(4)
        a[:3, :3] /= self.head_scale
        a[:3, 3] = self.centre * (1 - 1 / self.head_scale)
        return a


def make_deformation(
    rng: np.random.Generator,
    tpl: Template,
    *,
    head_scale: float,
    ventricle_mm: float,
    mt_mm: float,
    warp_mm: float = 3.0,
    spacing: float = 5.0,
    steps: int = 5,
) -> Deformation:
    """Random diffeomorphic warp with ventricle opening and medial-temporal shrinkage.

    Parameters
    ----------
    head_scale : float
        Linear head size factor (1 = template size).
    ventricle_mm, mt_mm : float
        Peak velocity (mm) pulling the ventricle walls outwards / the medial temporal lobe in.
    warp_mm : float
        Peak velocity of the smooth random (individual anatomy) component.
    """
    lo = tpl.affine[:3, 3] - 20
    hi = tpl.affine[:3, :3] @ (np.array(tpl.gm.shape) - 1) + tpl.affine[:3, 3] + 20
    shape = tuple(int(n) for n in np.ceil((hi - lo) / spacing) + 1)
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = lo
    rand = np.stack([smooth_random_field(rng, shape, 12.0 / spacing) for _ in range(3)])
    v = warp_mm * rand
    # the disease fields live on the 2 mm template grid: sample them on the coarse grid
    pts = np.indices(shape, dtype=np.float32).reshape(3, -1)
    mm = affine[:3, :3] @ pts + affine[:3, 3:4]
    inv2 = np.linalg.inv(tpl.affine2)
    t_ijk = inv2[:3, :3] @ mm + inv2[:3, 3:4]
    for field, amp in ((tpl.vent_pull, ventricle_mm), (tpl.mt_push, mt_mm)):
        if amp:
            for c in range(3):
                v[c] += amp * ndi.map_coordinates(
                    field[c], t_ijk, order=1, mode='constant', prefilter=False
                ).reshape(shape)
    # scaling and squaring: exp(v) on the coarse grid (displacements in voxels of that grid)
    u = v / spacing / 2**steps
    grid = np.indices(shape, dtype=np.float32)
    for _ in range(steps):
        at = grid + u
        u = u + np.stack(
            [ndi.map_coordinates(c, at, order=1, mode='nearest', prefilter=False) for c in u]
        )
    return Deformation(affine, (u * spacing).astype(np.float32), float(head_scale), tpl.centre)


@dataclass(frozen=True)
class Pose:
    """Rigid head pose: scanner mm = R (subject mm - centre) + t."""

    rotation: np.ndarray
    translation: np.ndarray
    centre: np.ndarray

    def scanner_from_subject(self) -> np.ndarray:
        a = np.eye(4)
        a[:3, :3] = self.rotation
        a[:3, 3] = self.translation - self.rotation @ self.centre
        return a

    def jitter(self, rng: np.random.Generator, deg: float, mm: float) -> Pose:
        """The same head after a small movement (between scans of one session)."""
        r = _rotation(rng.uniform(-deg, deg, 3))
        return Pose(r @ self.rotation, self.translation + rng.uniform(-mm, mm, 3), self.centre)


def _rotation(deg) -> np.ndarray:
    a, b, c = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_pose(rng: np.random.Generator, centre, max_deg: float = 15.0,
              max_mm: float = 15.0) -> Pose:
    """Random head pose: pitch up to +-max_deg, roll/yaw up to 2/3 of it, translation."""
    deg = rng.uniform(-1, 1, 3) * np.array([max_deg, max_deg * 2 / 3, max_deg * 2 / 3])
    return Pose(_rotation(deg), rng.uniform(-max_mm, max_mm, 3), np.asarray(centre, float))


@dataclass(frozen=True)
class Grid:
    """A native image grid: shape, voxel-to-scanner affine and orientation code."""

    shape: tuple[int, ...]
    affine: np.ndarray
    axcodes: str


def make_grid(zooms, fov_mm, axcodes: str, centre) -> Grid:
    """Axis-aligned grid of the given orientation code centred on ``centre`` (scanner mm).

    ``zooms`` are per image axis; ``fov_mm`` per world axis (L-R, A-P, S-I).
    """
    aff = np.eye(4)
    shape = []
    for i, code in enumerate(axcodes):
        w, sign = _AXIS[code]
        aff[w, i] = 0.0
        n = int(np.ceil(fov_mm[w] / zooms[i]))
        shape.append(n)
        col = np.zeros(3)
        col[w] = sign * zooms[i]
        aff[:3, i] = col
    half = (np.array(shape) - 1) / 2
    aff[:3, 3] = np.asarray(centre, float) - aff[:3, :3] @ half
    return Grid(tuple(shape), aff, axcodes)


def upsample_separable(a: np.ndarray, positions, shape) -> np.ndarray:
    """Linear interpolation from values at sorted index ``positions`` per axis to ``shape``."""
    for ax, (pos, n) in enumerate(zip(positions, shape)):
        pos = np.asarray(pos, dtype=np.float64)
        if len(pos) == 1:
            a = np.repeat(a, n, axis=ax)
            continue
        full = np.arange(n)
        j = np.clip(np.searchsorted(pos, full, side='right') - 1, 0, len(pos) - 2)
        f = ((full - pos[j]) / (pos[j + 1] - pos[j])).astype(np.float32)
        bshape = [1] * a.ndim
        bshape[ax] = n
        f = f.reshape(bshape)
        a = np.take(a, j, axis=ax) * (1 - f) + np.take(a, j + 1, axis=ax) * f
    return a


def template_coords(
    grid: Grid, pose: Pose, deform: Deformation, tpl_affine: np.ndarray, step_mm: float = 6.0
) -> np.ndarray:
    """Template voxel coordinates (3, *grid.shape) of every native voxel centre."""
    zooms = np.sqrt((grid.affine[:3, :3] ** 2).sum(0))
    positions = []
    for n, z in zip(grid.shape, zooms):
        step = max(1, int(round(step_mm / z)))
        positions.append(np.unique(np.r_[np.arange(0, n, step), n - 1]))
    mesh = np.stack(np.meshgrid(*positions, indexing='ij')).reshape(3, -1).astype(float)
    scanner = grid.affine[:3, :3] @ mesh + grid.affine[:3, 3:4]
    sub = np.linalg.inv(pose.scanner_from_subject())
    y = sub[:3, :3] @ scanner + sub[:3, 3:4]
    x = deform.to_template(y)
    inv = np.linalg.inv(tpl_affine)
    ijk = (inv[:3, :3] @ x + inv[:3, 3:4]).astype(np.float32)
    coarse = ijk.reshape((3,) + tuple(len(p) for p in positions))
    return np.stack([upsample_separable(c, positions, grid.shape) for c in coarse])


def sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear pull-back of a template volume at native coordinates (0 outside)."""
    return ndi.map_coordinates(
        volume, coords, order=1, mode='constant', cval=0.0, prefilter=False, output=np.float32
    )
