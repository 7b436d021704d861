"""Anatomy of phantom subjects: template tissues, subject deformations, scanner grids and poses.

Every phantom image is made by *pulling back* a template-space map through one composite,
smooth mapping::

    native voxel ijk --grid affine--> scanner mm --inverse head pose--> subject mm
        --head size--> unscaled subject mm --diffeomorphic warp--> template (MNI) mm

The template is nilearn's MNI152 2009a symmetric GM/WM maps and brain mask at 1 mm (CSF is
the brain mask minus GM and WM). The warp is the exponential (scaling and squaring) of a
stationary velocity field: a smooth random field (individual anatomy) plus two disease/age
terms (ventricles pulled open, medial temporal lobe pulled shut), so it stays invertible.

The composite mapping is evaluated on a coarse sub-grid of each native grid (every ~6 mm) and
upsampled separably (exact for the affine part, the warp being smooth), so a 1 mm anatomical
grid costs one trilinear interpolation per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from bids_synth.preprocessing.regions import PATTERNS, pattern_mask, region_mask

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

#: network nodes (DMN then task-positive, regions.py names) of ``Template.maps['net']``
NETWORK_NODES = PATTERNS['dmn'] + PATTERNS['task_positive']
#: bump when the prepared template changes (names the on-disk cache)
_CACHE_VERSION = 1

_AXIS = {'R': (0, 1.0), 'L': (0, -1.0), 'A': (1, 1.0), 'P': (1, -1.0), 'S': (2, 1.0), 'I': (2, -1.0)}


@dataclass(frozen=True)
class Template:
    """Template tissue maps (cropped to the brain) at 1 mm and 2 mm.

    Attributes
    ----------
    affine, affine2 : ndarray
        Voxel-to-MNI affines of the 1 mm and 2 mm grids.
    gm, wm, csf : ndarray
        Tissue fractions at 1 mm (float32, sum to the brain mask).
    gm2, wm2, csf2 : ndarray
        The same, block-averaged to 2 mm (true partial volumes).
    dyad2 : ndarray
        (6, ...) mean fibre dyadic ``v v^T`` (xx, yy, zz, xy, xz, yz) at 2 mm.
    vent_pull, mt_push : ndarray
        (3, ...) unit-peak fields at 2 mm that open the lateral ventricles / shrink the medial
        temporal lobe when added to a velocity field.
    centre : ndarray
        Brain centroid (MNI mm).
    maps : dict
        Smooth regional weight maps at 2 mm (unit peak): ``periv`` (periventricular
        proximity), ``mt`` (medial temporal), ``fdg_ad``, ``amy`` (amyloid cortical summary),
        ``neocortex`` (1 outside the posterior fossa), ``net`` (R, ...) network nodes in the
        order of ``NETWORK_NODES``.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    affine2: np.ndarray
    gm2: np.ndarray
    wm2: np.ndarray
    csf2: np.ndarray
    dyad2: np.ndarray
    vent_pull: np.ndarray
    mt_push: np.ndarray
    centre: np.ndarray
    maps: dict


def _block2(a: np.ndarray) -> np.ndarray:
    s = a.shape
    return a.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5))


def _fibre_dyadics(wm2: np.ndarray) -> np.ndarray:
    """Fibre orientation from the structure tensor of the WM map (smallest eigenvector).

    Inside a WM bundle the WM probability varies least along the bundle, so the eigenvector of
    the smallest eigenvalue of the local structure tensor is a proxy for the fibre direction.
    A heuristic (no tractography), but it follows the shape of the WM.
    """
    w = ndi.gaussian_filter(wm2, 1.0)
    g = np.gradient(w)
    pairs = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
    st = np.stack([ndi.gaussian_filter(g[i] * g[j], 2.0) for i, j in pairs])
    sel = wm2 > 0.05
    t = np.zeros((int(sel.sum()), 3, 3), dtype=np.float64)
    for c, (i, j) in enumerate(pairs):
        t[:, i, j] = t[:, j, i] = st[c][sel]
    _, vecs = np.linalg.eigh(t + 1e-12 * np.eye(3))
    v = vecs[:, :, 0]
    dy = np.zeros((6,) + wm2.shape, dtype=np.float32)
    for c, (i, j) in enumerate(pairs):
        dy[c][sel] = v[:, i] * v[:, j]
    dy = np.stack([ndi.gaussian_filter(d, 0.7) for d in dy])
    tr = dy[0] + dy[1] + dy[2]
    ok = tr > 1e-3
    dy[:, ok] /= tr[ok]
    dy[:3, ~ok] = 1.0 / 3.0  # isotropic where undefined
    return dy


def _unit_grad(mask: np.ndarray, sigma: float) -> np.ndarray:
    s = ndi.gaussian_filter(mask.astype(np.float32), sigma)
    g = np.stack(np.gradient(s)).astype(np.float32)
    return g / max(float(np.sqrt((g**2).sum(0)).max()), 1e-6)


def _mni152_arrays():
    """T1, GM and WM of nilearn's MNI152 2009a sym (1 mm), each rescaled to a maximum of 1.

    Reads the files nilearn ships directly (importing ``nilearn.datasets`` costs seconds) and
    does what ``load_mni152_template`` / ``_gm_template`` / ``_wm_template`` do at
    resolution 1; falls back to those functions if the files are not where expected.
    """
    import importlib.util
    from pathlib import Path

    import nibabel as nib

    spec = importlib.util.find_spec('nilearn')
    names = ('t1', 'gm', 'wm')
    if spec and spec.submodule_search_locations:
        data = Path(list(spec.submodule_search_locations)[0]) / 'datasets' / 'data'
        paths = [data / f'mni_icbm152_{n}_tal_nlin_sym_09a_converted.nii.gz' for n in names]
        if all(p.is_file() for p in paths):
            imgs = [nib.load(p) for p in paths]
            arrs = [np.asarray(i.get_fdata(dtype=np.float32)) for i in imgs]
            return [a / a.max() for a in arrs], imgs[0].affine
    from nilearn import datasets  # pragma: no cover - unusual nilearn layout

    imgs = [datasets.load_mni152_template(resolution=1),
            datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1)]
    return [np.asarray(i.get_fdata(dtype=np.float32)) for i in imgs], imgs[0].affine


def _unit(m, sigma: float) -> np.ndarray:
    w = ndi.gaussian_filter(m.astype(np.float32), sigma)
    return w / max(float(w.max()), 1e-6)


def _derived_maps(aff: np.ndarray, shape, vent: np.ndarray) -> dict:
    """Smooth regional weights on the 2 mm grid (see ``Template.maps``)."""
    dist = ndi.distance_transform_edt(~vent) * 2.0  # mm
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x, y, z = (aff[:3, :3] @ ijk + aff[:3, 3:4]).reshape((3,) + tuple(shape))

    def sig(v):
        return 1 / (1 + np.exp(-v))

    # posterior fossa (cerebellum and brainstem): no amyloid deposition
    fossa = np.maximum(sig((-38 - y) / 3) * sig((-12 - z) / 3),
                       sig((-18 - z) / 3) * sig((12 - np.abs(x)) / 3) * sig((y + 45) / 3))
    fossa = np.maximum(fossa, _unit(region_mask('cerebellum', aff, shape), 2.0))
    return {
        'periv': np.exp(-dist / 6.0).astype(np.float32),
        'mt': _unit(pattern_mask('medial_temporal', aff, shape), 1.5),
        'fdg_ad': _unit(pattern_mask('fdg_ad', aff, shape), 2.0),
        'amy': _unit(pattern_mask('amyloid_cortex', aff, shape), 3.0),
        'neocortex': (1 - fossa).astype(np.float32),
        'net': np.stack([_unit(region_mask(n, aff, shape), 1.5) for n in NETWORK_NODES]),
    }


def _build_template() -> Template:
    """Load and prepare nilearn's MNI152 2009a symmetric tissue maps (offline, cached).

    The brain mask is the T1 above 0.2 of its maximum, as ``load_mni152_brain_mask``.
    """
    (t1, gm, wm), src_affine = _mni152_arrays()
    mask = (t1 > 0.2).astype(np.float32)
    gm = gm * mask
    wm = wm * mask
    tot = gm + wm
    over = tot > 1
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf = np.clip(mask - gm - wm, 0, 1)
    # crop to the brain plus a margin, with even sizes for 2 mm block averaging
    idx = np.argwhere(mask > 0)
    lo = np.maximum(idx.min(0) - 6, 0)
    hi = lo + 2 * np.ceil((idx.max(0) + 7 - lo) / 2).astype(int)
    pad = np.maximum(hi - np.array(mask.shape), 0)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = [np.pad(a, [(0, p) for p in pad])[sl] for a in (gm, wm, csf, mask)]
    gm, wm, csf, mask = crop
    affine = np.array(src_affine, dtype=float)
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    affine2 = affine.copy()
    affine2[:3, :3] *= 2
    affine2[:3, 3] += affine[:3, :3] @ [0.5, 0.5, 0.5]
    gm2, wm2, csf2 = (_block2(a) for a in (gm, wm, csf))
    xyz = affine[:3, :3] @ np.argwhere(mask > 0).T.astype(float) + affine[:3, 3:4]
    centre = xyz.mean(1)
    # ventricles: the CSF components of the lateral ventricles near their published-in-template
    # spheres; medial temporal lobe: hippocampus + entorhinal spheres (regions.py)
    vent_seed = region_mask('lateral_ventricles', affine2, gm2.shape)
    vent = (csf2 > 0.5) & ndi.binary_dilation(vent_seed, iterations=3)
    mt = pattern_mask('medial_temporal', affine2, gm2.shape)
    maps = _derived_maps(affine2, gm2.shape, vent)
    return Template(
        affine=affine, gm=gm, wm=wm, csf=csf,
        affine2=affine2, gm2=gm2, wm2=wm2, csf2=csf2,
        dyad2=_fibre_dyadics(wm2),
        vent_pull=_unit_grad(vent, 2.0),
        mt_push=-_unit_grad(mt, 2.0),
        centre=centre,
        maps=maps,
    )


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The prepared template (cached in memory, and on disk between processes).

    The disk cache lives in ``$BIDS_SYNTH_CACHE`` (default ``~/.cache/bids_synth``); it is
    skipped silently when that folder cannot be written.
    """
    import os
    import tempfile
    from pathlib import Path

    root = Path(os.environ.get('BIDS_SYNTH_CACHE') or Path.home() / '.cache' / 'bids_synth')
    path = root / f'phantom_template_v{_CACHE_VERSION}.npz'
    if path.is_file():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
            maps = {k[5:]: v for k, v in arrays.items() if k.startswith('maps_')}
            fields = {k: v for k, v in arrays.items() if not k.startswith('maps_')}
            return Template(**fields, maps=maps)
        except (OSError, ValueError, TypeError, KeyError):
            pass
    tpl = _build_template()
    try:
        root.mkdir(parents=True, exist_ok=True)
        fields = {k: getattr(tpl, k) for k in Template.__dataclass_fields__ if k != 'maps'}
        fields.update({f'maps_{k}': v for k, v in tpl.maps.items()})
        fd, tmp = tempfile.mkstemp(dir=root, suffix='.npz')
        with os.fdopen(fd, 'wb') as fh:
            np.savez(fh, **fields)
        os.replace(tmp, path)
    except OSError:
        pass
    return tpl


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


def make_pose(rng: np.random.Generator, centre, max_deg: float = 15.0, max_mm: float = 15.0):
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
