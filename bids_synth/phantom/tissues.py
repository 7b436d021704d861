"""Per-session tissue maps in template space: ageing, AD atrophy and white-matter lesions.

The geometric effects (ventricle enlargement, medial temporal shrinkage) live in the warp (see
``anatomy``); here are the tissue-fraction effects, on the template grids:

- cortical thinning: a fraction of GM becomes CSF, growing with age (~0.3 %/year after 55) and
  disease severity;
- medial temporal atrophy (hippocampus, entorhinal cortex): extra GM loss with severity;
- white-matter hyperintensities (WMH): periventricular caps and scattered deep lesions whose
  volume grows exponentially with age (about 0.5 ml at 55, ~8 ml at 90; cf. the Rotterdam Scan
  Study, de Leeuw et al., JNNP 2001), fixed per subject in location so they grow over sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from scipy import ndimage as ndi

from .anatomy import Template, upsample_separable

__all__ = ['Tissues', 'session_tissues', 'wmh_volume_ml', 'lesion_score']


@dataclass(frozen=True)
class Tissues:
    """Tissue fractions of one session at 1 mm and 2 mm template grids.

    ``wmh`` is the lesioned part of ``wm`` (normal-appearing WM is ``wm - wmh``).
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    wmh: np.ndarray
    gm2: np.ndarray
    wm2: np.ndarray
    csf2: np.ndarray
    wmh2: np.ndarray


def wmh_volume_ml(age: float, vascular: float) -> float:
    """Expected WMH volume (ml) at ``age`` for a subject with a vascular risk factor."""
    return float(0.5 * np.exp(0.08 * (age - 55.0)) * vascular)


def lesion_score(rng: np.random.Generator, tpl: Template) -> np.ndarray:
    """Subject-specific lesion propensity (2 mm): periventricular plus random deep foci."""
    periv = tpl.maps['periv']
    noise = ndi.gaussian_filter(rng.standard_normal(tpl.gm2.shape).astype(np.float32), 1.5)
    noise /= float(noise.std()) + 1e-6
    return 0.7 * periv + 0.12 * noise


def _to_1mm(a2: np.ndarray, shape1) -> np.ndarray:
    pos = [np.arange(n) * 2 + 0.5 for n in a2.shape]
    return upsample_separable(a2, pos, shape1)


def session_tissues(
    tpl: Template, *, age: float, severity: float, score: np.ndarray, vascular: float,
    with_1mm: bool = True,
) -> Tissues:
    """Tissue fractions for one session (age in years, severity in [0, 1])."""
    mt = tpl.maps['mt']
    thin = float(np.clip(0.003 * (age - 55.0) + 0.08 * severity, 0, 0.3))
    loss2 = thin + 0.6 * severity * mt  # fraction of GM turned into CSF (2 mm)
    # lesions: the top of the subject's lesion score inside WM, sized by age
    wm_in = tpl.wm2 > 0.5
    vol_vox = wmh_volume_ml(age, vascular) * 1000.0 / 8.0
    vals = score[wm_in]
    q = 1.0 - min(vol_vox / max(vals.size, 1), 0.5)
    thr = float(np.quantile(vals, q))
    les2 = np.clip((score - thr) / 0.04 + 0.5, 0, 1).astype(np.float32) * tpl.wm2
    les2 = np.minimum(les2, tpl.wm2 * 0.95)
    gm2 = tpl.gm2 * (1 - loss2)
    csf2 = tpl.csf2 + tpl.gm2 * loss2
    if with_1mm:
        shape1 = tpl.gm.shape
        loss1 = _to_1mm(loss2.astype(np.float32), shape1)
        les1 = np.minimum(_to_1mm(les2, shape1), tpl.wm)
        gm1 = tpl.gm * (1 - loss1)
        csf1 = tpl.csf + tpl.gm * loss1
    else:
        les1 = gm1 = csf1 = None
    return Tissues(gm1, tpl.wm, csf1, les1, gm2.astype(np.float32), tpl.wm2,
                   csf2.astype(np.float32), les2)
