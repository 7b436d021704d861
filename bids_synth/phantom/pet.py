"""FDG and florbetapir (AV45) PET: tracer uptake maps, frames, scanner blur, noise, sidecars.

- FDG: uptake follows grey matter (GM:WM about 3.5:1, CSF near zero). AD lowers it in the
  posterior cingulate, precuneus and temporoparietal cortex (Minoshima et al., Ann Neurol 1997)
  and, less, in the medial temporal lobe, in proportion to disease severity.
- AV45: high non-specific white-matter binding; in amyloid-negative subjects cortex is about
  as bright as the cerebellum (SUVR ~1.0-1.1); amyloid-positive subjects get diffuse neocortical
  uptake, strongest in the cortical summary regions (Landau et al., J Nucl Med 2013), sparing the
  cerebellum (the SUVR reference) and brainstem, reaching SUVR ~1.3-1.6.
- Acquisition as in ADNI: FDG 6 x 5 min frames from 30 to 60 min after injection of ~185 MBq,
  AV45 4 x 5 min from 50 to 70 min after ~370 MBq; Bq/mL, decay-corrected to injection.
- The scanner: activity is blurred by a Gaussian point-spread function (FWHM 5-7 mm, the
  partial-volume effect) and each frame gets spatially correlated, signal-dependent noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .anatomy import Template
from .tissues import Tissues

__all__ = ['TRACERS', 'uptake_map', 'pet_frames', 'pet_sidecar']

TRACERS = {
    'FDG': {'TracerName': 'FDG', 'dose_mbq': 185.0, 'start_min': 30.0, 'frame_min': 5.0,
            'n_frames': 6, 'conc_gm': 24000.0, 'mw': 181.26},
    'AV45': {'TracerName': 'florbetapir', 'dose_mbq': 370.0, 'start_min': 50.0,
             'frame_min': 5.0, 'n_frames': 4, 'conc_gm': 8000.0, 'mw': 360.4},
}

def uptake_map(tracer: str, tis: Tissues, tpl: Template, *, severity: float, amyloid: bool,
               apoe4: int, rng: np.random.Generator) -> np.ndarray:
    """Relative tracer uptake on the 2 mm template grid (GM of a healthy subject = 1)."""
    fdg_ad, mt, amy, neocortex = (tpl.maps[k] for k in ('fdg_ad', 'mt', 'amy', 'neocortex'))
    gm, wm, csf = tis.gm2, tis.wm2, tis.csf2
    if tracer == 'FDG':
        g = 1.0 - 0.35 * severity * fdg_ad - 0.15 * severity * mt
        g = g * (1 + 0.04 * rng.standard_normal())
        return (gm * g + wm * 0.28 + csf * 0.04).astype(np.float32)
    load = 0.0
    if amyloid:
        load = 0.75 + 0.5 * min(severity / 0.8, 1.0) + 0.1 * rng.standard_normal()
    load += 0.04 * apoe4
    g = 1.35 + load * neocortex * (0.55 + 0.45 * amy)
    return (gm * g + wm * 1.45 + csf * 0.08).astype(np.float32)


def pet_frames(native: np.ndarray, tracer: str, *, zooms, fwhm_mm: float, dose_factor: float,
               n_frames: int, rng: np.random.Generator, noise: bool = True) -> np.ndarray:
    """Frames (X, Y, Z, T) in Bq/mL from native-grid relative uptake ``native``.

    ``noise=False`` leaves the counting noise out (its random numbers are drawn all the same).
    """
    info = TRACERS[tracer]
    sig_vox = [fwhm_mm / 2.3548 / z for z in zooms]
    act = ndi.gaussian_filter(native, sig_vox) * np.float32(info['conc_gm'] * dose_factor)
    mean = float(act[act > 0.2 * act.max()].mean()) if act.max() > 0 else 1.0
    frames = np.empty(act.shape + (n_frames,), dtype=np.float32)
    frame_min = info['frame_min'] * info['n_frames'] / n_frames
    for k in range(n_frames):
        t_mid = info['start_min'] + (k + 0.5) * frame_min
        trend = 1 + (0.004 if tracer == 'FDG' else -0.002) * (t_mid - info['start_min'] - 15)
        white = rng.standard_normal(act.shape, dtype=np.float32)
        level = np.float32(0.5 / np.sqrt(frame_min / 5)) if noise else np.float32(0.0)
        noisy = ndi.gaussian_filter(white, [s * 0.6 for s in sig_vox])
        noisy *= np.sqrt(np.maximum(act, 0) * mean) * level
        frames[..., k] = np.maximum(act * trend + noisy, 0)
    return frames


def pet_sidecar(tracer: str, *, n_frames: int, dose_factor: float, fwhm_mm: float,
                time_zero: str) -> dict:
    """BIDS PET sidecar with every field the specification requires."""
    info = TRACERS[tracer]
    frame_s = info['frame_min'] * 60 * info['n_frames'] / n_frames
    start = info['start_min'] * 60
    dose = round(info['dose_mbq'] * dose_factor, 1)
    spec = 150.0  # MBq/ug (plausible specific activity at injection)
    return {
        'Manufacturer': 'bids_synth',
        'ManufacturersModelName': 'phantom PET (simulated)',
        'BodyPart': 'Brain',
        'Units': 'Bq/mL',
        'TracerName': info['TracerName'],
        'TracerRadionuclide': 'F18',
        'TracerMolecularWeight': info['mw'],
        'TracerMolecularWeightUnits': 'g/mol',
        'InjectedRadioactivity': dose,
        'InjectedRadioactivityUnits': 'MBq',
        'InjectedMass': round(dose / spec, 4),
        'InjectedMassUnits': 'ug',
        'SpecificRadioactivity': spec,
        'SpecificRadioactivityUnits': 'MBq/ug',
        'ModeOfAdministration': 'bolus',
        'TimeZero': time_zero,
        'InjectionStart': 0,
        'ScanStart': start,
        'FrameTimesStart': [start + k * frame_s for k in range(n_frames)],
        'FrameDuration': [frame_s] * n_frames,
        'AcquisitionMode': 'list mode',
        'ImageDecayCorrected': True,
        'ImageDecayCorrectionTime': 0,
        'ReconMethodName': '3D OSEM',
        'ReconMethodParameterLabels': ['subsets', 'iterations'],
        'ReconMethodParameterUnits': ['none', 'none'],
        'ReconMethodParameterValues': [16, 4],
        'ReconFilterType': 'Gaussian',
        'ReconFilterSize': round(float(fwhm_mm), 2),
        'AttenuationCorrection': 'CT-based',
    }
