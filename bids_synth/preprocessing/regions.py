"""Named brain regions in MNI space, as spheres at published coordinates.

Used by the phantom (where disease effects go), by the PET representation (SUVR reference
region) and by the clinical-consistency loss and reports (regional biomarkers). Spheres are a
coarse stand-in for atlas labels, deliberately: every coordinate below is a published peak, and
a sphere needs no atlas download.

Coordinates (x, y, z in mm, MNI) and sources:

- Default-mode network nodes (posterior cingulate 0,-53,26; medial prefrontal 0,52,-6;
  angular/temporoparietal +-48,-62,36; lateral temporal +-61,-24,-9): Andrews-Hanna et al.,
  Neuron 2010, 65:550 (table 1), as in Buckner et al., Ann NY Acad Sci 2008.
- Precuneus 0,-64,40 and posterior cingulate: AD FDG hypometabolism peaks, Minoshima et al.,
  Ann Neurol 1997, 42:85; temporoparietal hypometabolism +-46,-60,30 (ibid.).
- Hippocampus body +-28,-22,-14 and entorhinal cortex +-24,-8,-30: medial-temporal atrophy in
  AD (e.g. Frisoni et al., Nat Rev Neurol 2010, 6:67).
- Amyloid (florbetapir) cortical summary regions (frontal 0,40,30 and +-40,30,30; anterior
  cingulate 0,30,20; parietal +-40,-60,45; lateral temporal): Landau et al., J Nucl Med 2013,
  54:70 (cortical summary SUVR), reference whole cerebellum (cerebellar hemispheres +-24,-66,-36).
- Pons 0,-24,-32: FDG reference region (e.g. Minoshima et al., J Nucl Med 1995, 36:1238).
- Task-positive (dorsal attention) nodes, anticorrelated with the default-mode network at rest:
  intraparietal sulcus -25,-57,46, frontal eye field 25,-13,50, MT+ -45,-69,-2 (Fox et al.,
  PNAS 2005, 102:9673, seeds; mirrored to both hemispheres here).
- Lateral ventricles (frontal horn +-5,10,12; body +-11,-14,22; atrium +-22,-38,13): not a
  published peak but measured on the MNI152 2009a symmetric template that nilearn ships (centres
  along the connected CSF component of each lateral ventricle, CSF = brain mask - GM - WM > 0.6;
  about 8 ml per side); used for ventricle enlargement in the phantom and ventricle volume.

>>> import numpy as np
>>> aff = np.diag([4.0, 4.0, 4.0, 1.0]); aff[:3, 3] = (-96, -132, -76)
>>> m = region_mask('posterior_cingulate', aff, (48, 56, 48))
>>> bool(m.any()), m.dtype
(True, dtype('bool'))
"""

from __future__ import annotations

import numpy as np

__all__ = ['REGIONS', 'PATTERNS', 'region_mask', 'pattern_mask', 'sphere_mask']

#: name -> list of (centre in MNI mm, radius in mm)
REGIONS: dict[str, list[tuple[tuple[float, float, float], float]]] = {
    'posterior_cingulate': [((0, -53, 26), 10)],
    'precuneus': [((0, -64, 40), 10)],
    'temporoparietal': [((-46, -60, 30), 10), ((46, -60, 30), 10)],
    'medial_prefrontal': [((0, 52, -6), 10)],
    'angular': [((-48, -62, 36), 8), ((48, -62, 36), 8)],
    'lateral_temporal': [((-61, -24, -9), 8), ((61, -24, -9), 8)],
    'hippocampus': [((-28, -22, -14), 7), ((28, -22, -14), 7)],
    'entorhinal': [((-24, -8, -30), 6), ((24, -8, -30), 6)],
    'frontal': [((0, 40, 30), 12), ((-40, 30, 30), 10), ((40, 30, 30), 10)],
    'anterior_cingulate': [((0, 30, 20), 8)],
    'parietal': [((-40, -60, 45), 10), ((40, -60, 45), 10)],
    'cerebellum': [((-24, -66, -36), 14), ((24, -66, -36), 14)],
    'pons': [((0, -24, -32), 6)],
    'intraparietal': [((-25, -57, 46), 8), ((25, -57, 46), 8)],
    'frontal_eye_field': [((-25, -13, 50), 8), ((25, -13, 50), 8)],
    'middle_temporal_mt': [((-45, -69, -2), 8), ((45, -69, -2), 8)],
    'lateral_ventricles': [
        ((-5, 10, 12), 6), ((5, 10, 12), 6),
        ((-11, -14, 22), 6), ((11, -14, 22), 6),
        ((-22, -38, 13), 6), ((22, -38, 13), 6),
    ],
}

#: Region groups that carry a disease pattern.
PATTERNS: dict[str, tuple[str, ...]] = {
    # FDG hypometabolism in AD (Minoshima 1997)
    'fdg_ad': ('posterior_cingulate', 'precuneus', 'temporoparietal'),
    # florbetapir cortical summary (Landau 2013)
    'amyloid_cortex': ('frontal', 'anterior_cingulate', 'precuneus', 'parietal',
                       'lateral_temporal', 'posterior_cingulate'),
    # medial-temporal atrophy
    'medial_temporal': ('hippocampus', 'entorhinal'),
    # default-mode network nodes (Andrews-Hanna 2010)
    'dmn': ('posterior_cingulate', 'medial_prefrontal', 'angular', 'lateral_temporal'),
    # task-positive / dorsal attention network (Fox 2005), anticorrelated with the DMN at rest
    'task_positive': ('intraparietal', 'frontal_eye_field', 'middle_temporal_mt'),
}


def _mm_coords(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return xyz.reshape((3,) + tuple(shape))


def sphere_mask(centre, radius: float, affine: np.ndarray, shape) -> np.ndarray:
    """Boolean mask of the voxels whose centres lie within ``radius`` mm of ``centre``."""
    xyz = _mm_coords(affine, tuple(shape))
    c = np.asarray(centre, dtype=np.float32).reshape(3, 1, 1, 1)
    mask = ((xyz - c) ** 2).sum(0) <= radius**2
    if not mask.any():  # coarse grids: keep at least the nearest voxel
        d = ((xyz - c) ** 2).sum(0)
        mask = d == d.min()
    return mask


def region_mask(name: str, affine: np.ndarray, shape) -> np.ndarray:
    """Union of the spheres of a named region on the grid (affine, shape)."""
    try:
        spheres = REGIONS[name]
    except KeyError:
        raise KeyError(f'unknown region {name!r}; known: {", ".join(REGIONS)}') from None
    out = np.zeros(tuple(shape), dtype=bool)
    for centre, radius in spheres:
        out |= sphere_mask(centre, radius, affine, shape)
    return out


def pattern_mask(pattern: str, affine: np.ndarray, shape) -> np.ndarray:
    """Union of the regions of a disease pattern (see ``PATTERNS``)."""
    out = np.zeros(tuple(shape), dtype=bool)
    for name in PATTERNS[pattern]:
        out |= region_mask(name, affine, shape)
    return out
