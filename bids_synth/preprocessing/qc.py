"""Registration quality control: how well a registered input matches the template.

After :func:`~bids_synth.preprocessing.conform.register_to_template`, the native reference is
resampled onto the model grid and compared with the registration target (the T1w template or
the modality's tissue pseudo-contrast, :func:`~bids_synth.preprocessing.conform.fixed_image`):
Pearson correlation inside the template's brain mask. A misregistered image (an affine flipped
by 180 degrees, a collapsed registration) correlates far less than a well registered one, of
any contrast, with or without skull.

When the similarity is below :data:`QC_THRESHOLD`, the careful-pipeline step is to try the
orientation candidates (:data:`ORIENTATION_CANDIDATES`: the image turned 180 degrees about
each axis, the usual error of a header written with a flipped orientation) as initial
transforms, and keep the best. If none passes, the input is treated as unreadable (or, with
``--force``, kept and flagged in the sidecars).

How the threshold was chosen (``bench`` figures, recorded in docs/usage.md): correlation inside
the mask after registration at res 4 / res 2 of every phantom modality and every image of the
real sample (../shared/realdata), against the same images with their affine turned by 180
degrees (registered from the wrong start).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ['QC_THRESHOLD', 'ORIENTATION_CANDIDATES', 'RegistrationQC', 'similarity',
           'candidate_transform']

#: Lowest correlation (inside the template brain mask) with the registration target that is
#: accepted. Measured (docs/usage.md, "Registration QC"): well-registered inputs 0.61-0.97,
#: inputs registered from a 180-degree flipped start 0.05-0.39.
QC_THRESHOLD = 0.5

#: Initial rotations tried when the plain registration fails the QC: name -> 3x3 matrix
#: (physical LPS space, about the centres of mass).
ORIENTATION_CANDIDATES: dict[str, np.ndarray] = {
    'identity': np.eye(3),
    'rot180-x': np.diag([1.0, -1.0, -1.0]),
    'rot180-y': np.diag([-1.0, 1.0, -1.0]),
    'rot180-z': np.diag([-1.0, -1.0, 1.0]),
}


@dataclass
class RegistrationQC:
    """The registration QC of one input, as recorded in sidecars and reports.

    Attributes
    ----------
    metric : str
        ``'correlation in the template brain mask'``.
    similarity : float
        Of the registration kept.
    threshold : float
    passed : bool
    orientation : str
        The :data:`ORIENTATION_CANDIDATES` key of the registration kept.
    tried : dict
        Candidate -> similarity, for every candidate tried.
    forced : bool
        Below the threshold but kept because of ``--force``.
    """

    similarity: float
    threshold: float = QC_THRESHOLD
    orientation: str = 'identity'
    tried: dict | None = None
    forced: bool = False
    metric: str = 'correlation in the template brain mask'

    @property
    def passed(self) -> bool:
        return bool(self.similarity >= self.threshold)

    def to_dict(self) -> dict:
        out = asdict(self)
        out['passed'] = self.passed
        out['similarity'] = round(float(self.similarity), 4)
        out['tried'] = {k: round(float(v), 4) for k, v in (self.tried or {}).items()}
        return out


def similarity(moving_path: str | os.PathLike, transform_path: str, fixed_path: str,
               mask: np.ndarray) -> float:
    """Correlation, inside ``mask``, of a native image warped onto the fixed grid.

    Parameters
    ----------
    moving_path : path-like
        Native 3D image.
    transform_path : str
        ANTs affine (template -> native points, as :class:`~.conform.Transform`).
    fixed_path : str
        The registration target on the model grid.
    mask : ndarray of bool, shape of the fixed image

    Returns
    -------
    float
        Pearson correlation in [-1, 1]; 0 when either image is constant in the mask.
    """
    import ants

    fixed = ants.image_read(str(fixed_path))
    moving = ants.image_read(str(moving_path)).clone('float')
    warped = ants.apply_transforms(fixed, moving, [str(transform_path)],
                                   interpolator='linear').numpy()
    a = warped[mask].astype(float)
    b = fixed.numpy()[mask].astype(float)
    if a.std() == 0 or b.std() == 0 or not np.all(np.isfinite(a)):
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def candidate_transform(name: str, fixed, moving, path: str) -> str:
    """Write the initial transform of an orientation candidate; return its path.

    The candidate maps template points to native ones as ``x -> R (x - c_f) + c_m`` (ANTs
    convention), ``c_f``/``c_m`` the centres of mass of the fixed and moving images, so that
    the rigid stage starts from the turned image instead of the centre-of-mass alignment.
    """
    import ants

    c_f = np.asarray(ants.get_center_of_mass(fixed), dtype=float)
    c_m = np.asarray(ants.get_center_of_mass(moving), dtype=float)
    tx = ants.create_ants_transform(
        transform_type='AffineTransform', dimension=3,
        matrix=ORIENTATION_CANDIDATES[name], center=tuple(c_f),
        translation=tuple(c_m - c_f),
    )
    ants.write_transform(tx, path)
    return path
