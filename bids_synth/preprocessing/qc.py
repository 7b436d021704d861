"""Registration quality control: how well a registered input matches the template.

After :func:`~bids_synth.preprocessing.conform.register_to_template`, the native reference is
resampled onto the model grid and compared with the registration target (the T1w template or
the modality's tissue pseudo-contrast, :func:`~bids_synth.preprocessing.conform.fixed_image`):
the multiple correlation of the smoothed image with the template's tissue maps inside the
brain mask (:func:`similarity`). A misregistered image (an affine flipped by 180 degrees, a
collapsed registration) fits far worse than a well registered one, of any contrast.

When the similarity is below :data:`QC_THRESHOLD`, the careful-pipeline step is to try the
orientation candidates (:data:`ORIENTATION_CANDIDATES`: the image turned 180 degrees about
each axis, the usual error of a header written with a flipped orientation) as initial
transforms, and keep the best. If none passes, the input is treated as unreadable (or, with
``--force``, kept and flagged in the sidecars).

How the thresholds were chosen (figures in docs/usage.md): the similarity after registration
at res 4 and res 2 of every phantom modality and every image of the real sample
(../shared/realdata), against the same images with their affine turned by 180 degrees
(registered from the wrong start).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ['QC_THRESHOLD', 'QC_THRESHOLDS', 'SMOOTH_MM', 'threshold_for',
           'ORIENTATION_CANDIDATES', 'RegistrationQC', 'similarity', 'candidate_transform']

#: Gaussian smoothing (sigma, mm) of the image and the tissue maps before the fit.
SMOOTH_MM = 4.0
#: Lowest accepted similarity per modality family (default: ``None`` key). Measured with
#: tools/registration_qc_thresholds.py (docs/usage.md, "Registration QC"), res 4 / res 2:
#: well-registered phantom inputs (3 subjects, 7 modalities) 0.88-0.98 / 0.90-0.99; real
#: anatomical images (../shared/realdata: T1w with and without skull, T2w, FLAIR, ce-T1w)
#: 0.80-0.90 / 0.82-0.91; the same T1w images registered from a 180-degree turned start
#: 0.42-0.65 / 0.42-0.64 (every one recovered by an orientation candidate, 0.90-0.99); a noise
#: image 0.10. The real bold (3 mm EPI) scored 0.63 / 0.61, as low as misregistered anatomy:
#: bold gets a lower bar, which only catches gross failures.
QC_THRESHOLDS: dict[str | None, float] = {None: 0.72, 'fmri': 0.55}
QC_THRESHOLD = QC_THRESHOLDS[None]

#: Initial rotations tried when the plain registration fails the QC: name -> 3x3 matrix
#: (physical LPS space, about the centres of mass).
ORIENTATION_CANDIDATES: dict[str, np.ndarray] = {
    'identity': np.eye(3),
    'rot180-x': np.diag([1.0, -1.0, -1.0]),
    'rot180-y': np.diag([-1.0, 1.0, -1.0]),
    'rot180-z': np.diag([-1.0, -1.0, 1.0]),
}


def threshold_for(modality: str | None) -> float:
    """The QC threshold of a modality (registry name).

    >>> threshold_for('T1w'), threshold_for('bold')
    (0.72, 0.55)
    """
    from ..bids.modalities import MODALITIES

    family = MODALITIES[modality].family if modality in MODALITIES else None
    return QC_THRESHOLDS.get(family, QC_THRESHOLDS[None])


@dataclass
class RegistrationQC:
    """The registration QC of one input, as recorded in sidecars and reports.

    Attributes
    ----------
    metric : str
        What ``similarity`` is (:func:`similarity`).
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
    threshold: float
    orientation: str = 'identity'
    tried: dict | None = None
    forced: bool = False
    metric: str = 'R of a tissue-map fit (GM, WM, CSF) in the template brain mask'

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
               template) -> float:
    """How well a registered native image matches the template's anatomy, in [0, 1].

    The image is resampled onto the model grid, both it and the template's tissue probability
    maps are smoothed (Gaussian, sigma :data:`SMOOTH_MM`), and the image is fitted, inside the
    template brain mask, as ``a + b GM + c WM + d CSF`` by least squares: the multiple
    correlation R of that fit. It does not depend on the contrast (T1w, T2w, FLAIR, PET, EPI:
    any mix of tissue intensities fits), only on where the tissues are; smoothing takes away
    the single-subject detail a population template cannot have.

    Parameters
    ----------
    moving_path : path-like
        Native 3D image.
    transform_path : str
        ANTs affine (template -> native points, as :class:`~.conform.Transform`).
    fixed_path : str
        An image on the model grid (the registration target).
    template : TemplateSpec
        The model grid (brain mask and tissue maps).

    Returns
    -------
    float
        R in [0, 1]; 0 when the image is constant in the mask.
    """
    import ants
    from scipy.ndimage import gaussian_filter

    fixed = ants.image_read(str(fixed_path))
    moving = ants.image_read(str(moving_path)).clone('float')
    warped = ants.apply_transforms(fixed, moving, [str(transform_path)],
                                   interpolator='linear').numpy()
    sigma = SMOOTH_MM / float(template.res)
    mask = np.asarray(template.mask, bool)
    y = gaussian_filter(warped.astype(float), sigma)[mask]
    if not np.all(np.isfinite(y)) or y.std() == 0:
        return 0.0
    design = np.stack([np.ones(y.size)] + [gaussian_filter(np.asarray(t, float), sigma)[mask]
                                           for t in (template.gm, template.wm, template.csf)], 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    r2 = 1.0 - float(((y - design @ coef) ** 2).sum()) / float(((y - y.mean()) ** 2).sum())
    return float(np.sqrt(max(r2, 0.0)))


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
