"""Model representations computed in native space, before registration (DESIGN section 3).

- PET: the static image, mean of the frames in the tracer's late window.
- bold: ``BOLD_SEGMENTS`` segment-wise temporal means, then ALFF, fALFF and ReHo of the whole
  run.
- dwi: mean b=0, means of the diffusion-weighted volumes in ``DWI_SEGMENTS`` acquisition-order
  segments, tensor FA and MD, then the log-Euclidean tensor (dipy WLS fit with the b-vectors
  turned into world axes, :mod:`.tensor`).

Each function takes and returns nibabel images (channels on the last axis), so the maps keep the
native affine and are registered with the reference channel's transform.

>>> late_window('AV45')
(3000.0, 4200.0)
>>> frame_weights([0, 600, 1800, 2400, 3000], [600, 1200, 600, 600, 600], (1800, 3600)).tolist()
[0.0, 0.0, 600.0, 600.0, 600.0]
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.modalities import BOLD_SEGMENTS, DWI_SEGMENTS, MODALITIES
from ..errors import DataError

__all__ = [
    'PET_WINDOWS',
    'late_window',
    'frame_weights',
    'pet_static',
    'bold_maps',
    'reho',
    'dwi_maps',
    'representation_native',
    'ALFF_BAND',
]

LOGGER = logging.getLogger(__name__)

#: Late (static) windows in seconds post injection: FDG 30-60 min, florbetapir 50-70 min.
PET_WINDOWS: dict[str, tuple[float, float]] = {
    'FDG': (1800.0, 3600.0),
    'AV45': (3000.0, 4200.0),
}
#: ALFF band in Hz (Zang et al., Brain Dev 2007; Zou et al., J Neurosci Methods 2008).
ALFF_BAND = (0.01, 0.08)
#: b-values at or below this are b=0 volumes (s/mm^2).
B0_THRESHOLD = 50.0


def late_window(modality: str) -> tuple[float, float]:
    """The static window (start, end) in s post injection for a PET modality."""
    try:
        return PET_WINDOWS[modality]
    except KeyError:
        raise KeyError(f'no PET late window for {modality!r}; known: {list(PET_WINDOWS)}'
                       ) from None


def frame_weights(starts: Sequence[float], durations: Sequence[float],
                  window: tuple[float, float]) -> np.ndarray:
    """Seconds of each frame that fall in ``window`` (overlap durations).

    Returns
    -------
    ndarray, shape (n_frames,)
    """
    s = np.asarray(starts, dtype=float)
    e = s + np.asarray(durations, dtype=float)
    return np.clip(np.minimum(e, window[1]) - np.maximum(s, window[0]), 0.0, None)


def _pet_modality(metadata: dict) -> str | None:
    tracer = str(metadata.get('TracerName', '')).lower().replace('-', '').replace(' ', '')
    for name in PET_WINDOWS:
        aliases = MODALITIES[name].entities.get('tracer', ())
        if tracer and any(tracer == a.lower().replace('-', '') for a in aliases + (name,)):
            return name
    return None


def pet_static(img: nib.Nifti1Image, metadata: dict | None = None, *, modality: str | None = None,
               window: tuple[float, float] | None = None) -> nib.Nifti1Image:
    """Static PET image: duration-weighted mean of the frames in the late window.

    Parameters
    ----------
    img : Nifti1Image, shape (X, Y, Z) or (X, Y, Z, T)
        PET series; a 3D image passes through.
    metadata : dict
        BIDS sidecar: ``FrameTimesStart`` and ``FrameDuration`` (s, relative to ``TimeZero``),
        optional ``InjectionStart`` (s), ``TracerName``.
    modality : {'FDG', 'AV45'}, optional
        Selects the window of :data:`PET_WINDOWS`; default: from ``TracerName``.
    window : (float, float), optional
        Explicit window in s post injection (overrides ``modality``).

    Returns
    -------
    Nifti1Image, shape (X, Y, Z), float32

    Notes
    -----
    Without frame timing, or when no frame overlaps the window, the last third of the frames
    is averaged, with a warning.
    """
    metadata = metadata or {}
    data = np.asanyarray(img.dataobj)
    if data.ndim == 3 or (data.ndim == 4 and data.shape[3] == 1):
        out = np.nan_to_num(np.asarray(data, dtype=np.float32).reshape(data.shape[:3]))
        return nib.Nifti1Image(out, img.affine)
    if data.ndim != 4:
        raise DataError(f'PET image must be 3D or 4D, got shape {data.shape}')
    n = data.shape[3]
    if window is None:
        modality = modality or _pet_modality(metadata)
        window = PET_WINDOWS.get(modality) if modality else None
    starts = metadata.get('FrameTimesStart')
    durs = metadata.get('FrameDuration')
    weights = None
    if window is not None and starts is not None and durs is not None and len(starts) == n \
            and len(durs) == n:
        inj = float(metadata.get('InjectionStart', 0.0) or 0.0)
        weights = frame_weights(np.asarray(starts, float) - inj, durs, window)
        if weights.sum() <= 0:
            weights = None
    if weights is None:
        k = max(1, int(np.ceil(n / 3)))
        warnings.warn(f'PET frame timing missing or outside the window {window}: averaging the '
                      f'last {k} of {n} frames', UserWarning, stacklevel=2)
        weights = np.zeros(n)
        weights[-k:] = 1.0
    sel = np.flatnonzero(weights > 0)
    acc = np.zeros(data.shape[:3], dtype=np.float64)
    for t in sel:
        acc += weights[t] * np.nan_to_num(np.asarray(img.dataobj[..., t], dtype=np.float64))
    out = (acc / weights[sel].sum()).astype(np.float32)
    return nib.Nifti1Image(out, img.affine)


def _alff(data: np.ndarray, tr: float, band=ALFF_BAND, chunk: int = 4096):
    """ALFF and fALFF of time series ``data`` (V, T), vectorized in voxel chunks."""
    from scipy.signal import detrend

    n = data.shape[1]
    freqs = np.fft.rfftfreq(n, d=tr)
    inband = (freqs >= band[0]) & (freqs <= band[1])
    nonzero = freqs > 0
    if not inband.any():
        raise DataError(f'bold run too short for ALFF: {n} volumes at TR {tr} s resolve no '
                        f'frequency in {band} Hz')
    alff = np.zeros(data.shape[0], dtype=np.float32)
    falff = np.zeros(data.shape[0], dtype=np.float32)
    for i in range(0, data.shape[0], chunk):
        x = detrend(data[i:i + chunk].astype(np.float64), axis=1, type='linear')
        amp = np.abs(np.fft.rfft(x, axis=1)) * (2.0 / n)
        band_amp = amp[:, inband]
        total = amp[:, nonzero].sum(1)
        alff[i:i + chunk] = band_amp.mean(1)
        with np.errstate(invalid='ignore', divide='ignore'):
            falff[i:i + chunk] = np.where(total > 0, band_amp.sum(1) / total, 0.0)
    return alff, falff


def reho(data: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Regional homogeneity: Kendall's W of each voxel's 27-voxel neighbourhood.

    Zang et al., NeuroImage 2004. Each voxel's series is ranked over time; with ``K``
    neighbours (the voxel and its 26 neighbours that are inside ``mask``) and ``n`` time
    points, ``W = 12 sum_t (R_t - K (n + 1) / 2)^2 / (K^2 (n^3 - n))`` where ``R_t`` is the sum
    of the neighbours' ranks at time ``t``. No tie correction (continuous signals).

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, T)
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels taking part; default: those whose series is not constant.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        W in 0-1 (1: the neighbours' series rise and fall together); 0 outside the mask and
        where fewer than 2 neighbours take part.
    """
    from scipy import ndimage as ndi

    data = np.asarray(data, dtype=np.float32)
    n = data.shape[3]
    if mask is None:
        mask = data.max(axis=3) > data.min(axis=3)
    mask = np.asarray(mask, dtype=bool)
    ranks = np.argsort(np.argsort(data, axis=3), axis=3).astype(np.float32) + 1.0
    ranks *= mask[..., None]
    def box_sum(x):  # sum over the 27-voxel neighbourhood (separable, zero outside)
        return ndi.uniform_filter(x, size=3, mode='constant') * 27.0

    k = np.rint(box_sum(mask.astype(np.float32)))
    acc = np.zeros(data.shape[:3], dtype=np.float64)
    centre = k * (n + 1) / 2.0
    for t in range(n):
        r = box_sum(ranks[..., t])
        acc += (r - centre) ** 2
    with np.errstate(invalid='ignore', divide='ignore'):
        w = np.where((k >= 2) & mask, 12.0 * acc / (k ** 2 * (n ** 3 - n)), 0.0)
    return np.clip(w, 0, 1).astype(np.float32)


def bold_maps(img: nib.Nifti1Image, tr: float, *, n_segments: int = BOLD_SEGMENTS,
              band: tuple[float, float] = ALFF_BAND) -> nib.Nifti1Image:
    """Segment-wise temporal means, ALFF, fALFF and ReHo of a bold run.

    Parameters
    ----------
    img : Nifti1Image, shape (X, Y, Z, T)
    tr : float
        Repetition time in seconds.

    Returns
    -------
    Nifti1Image, shape (X, Y, Z, n_segments + 3), float32
        Channels ``seg1..segN, alff, falff, reho``. ALFF is the mean single-sided amplitude in
        ``band`` of the linearly detrended signal (image units); fALFF is the in-band amplitude
        sum over the amplitude sum of all non-zero frequencies (0-1); ReHo is :func:`reho` of
        the run (0-1).
    """
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))
    if data.ndim != 4 or data.shape[3] < 2 * n_segments:
        raise DataError(f'bold run must be 4D with at least {2 * n_segments} volumes, got shape '
                        f'{data.shape}')
    if not tr or tr <= 0:
        raise DataError(f'bold run needs a positive RepetitionTime, got {tr!r}')
    segs = [s.mean(axis=3) for s in np.array_split(data, n_segments, axis=3)]
    shape3 = data.shape[:3]
    alff, falff = _alff(data.reshape(-1, data.shape[3]), float(tr), band)
    maps = np.stack(segs + [alff.reshape(shape3), falff.reshape(shape3), reho(data)], axis=-1)
    return nib.Nifti1Image(maps.astype(np.float32), img.affine)


def dwi_maps(img: nib.Nifti1Image, bvals: np.ndarray, bvecs: np.ndarray, *,
             n_segments: int = DWI_SEGMENTS) -> nib.Nifti1Image:
    """Mean b0, gradient-segment means, tensor FA and MD of a dwi series.

    Parameters
    ----------
    img : Nifti1Image, shape (X, Y, Z, N)
    bvals : ndarray, shape (N,)
        s/mm^2.
    bvecs : ndarray, shape (N, 3) or (3, N)
        FSL convention (image axes, x negated for a positive-determinant affine), as in BIDS
        ``.bvec`` files.

    Returns
    -------
    Nifti1Image, shape (X, Y, Z, n_segments + 9), float32
        Channels ``b0, seg1..segN, fa, md, logdxx..logdzz`` (``bids.modalities``); MD in
        10^-3 mm^2/s; the log-tensor is ``logm(D / 10^-3 mm^2/s)`` in world (RAS+) axes
        (:mod:`.tensor`). The tensor is fitted (WLS) inside an Otsu threshold of the mean b0;
        FA, MD and the log-tensor are 0 outside.
    """
    from .tensor import LOG_UNIT, fsl_to_world, log_tensor, to_elements

    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    from dipy.segment.threshold import otsu

    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))
    bvals = np.asarray(bvals, dtype=float).ravel()
    bvecs = np.asarray(bvecs, dtype=float)
    if bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
        bvecs = bvecs.T
    if data.ndim != 4 or data.shape[3] != bvals.size or bvecs.shape != (bvals.size, 3):
        raise DataError(f'dwi series of shape {data.shape} does not match {bvals.size} b-values '
                        f'and b-vectors of shape {bvecs.shape}')
    is_b0 = bvals <= B0_THRESHOLD
    dw = np.flatnonzero(~is_b0)
    if not is_b0.any() or dw.size < max(6, n_segments):
        raise DataError(f'dwi series needs a b=0 volume and at least {max(6, n_segments)} '
                        f'diffusion-weighted volumes, got {int(is_b0.sum())} and {dw.size}')
    b0 = data[..., is_b0].mean(axis=3)
    segs = [data[..., idx].mean(axis=3) for idx in np.array_split(dw, n_segments)]
    mask = b0 > otsu(b0)
    norms = np.linalg.norm(bvecs, axis=1, keepdims=True)
    unit = np.divide(bvecs, norms, out=np.zeros_like(bvecs), where=norms > 0)
    world = fsl_to_world(unit, img.affine)  # the tensor comes out in world axes
    gtab = gradient_table(bvals, bvecs=world, b0_threshold=B0_THRESHOLD)
    with np.errstate(all='ignore'):
        fit = TensorModel(gtab).fit(data, mask=mask)
        fa = np.clip(np.nan_to_num(fit.fa), 0, 1)
        md = np.clip(np.nan_to_num(fit.md), 0, None) * 1e3
        quad = np.nan_to_num(fit.quadratic_form[mask]) / LOG_UNIT
    fa[~mask] = 0
    md[~mask] = 0
    logd = np.zeros(mask.shape + (6,), dtype=np.float32)
    logd[mask] = log_tensor(to_elements(quad))
    maps = np.concatenate([np.stack([b0] + segs + [fa, md], axis=-1), logd],
                          axis=-1).astype(np.float32)
    return nib.Nifti1Image(maps, img.affine)


def _first_volume(img: nib.Nifti1Image, path) -> nib.Nifti1Image:
    if img.ndim == 3:
        return img
    if img.ndim == 4:
        if img.shape[3] > 1:
            LOGGER.warning('%s: 4D anatomical image, using its first volume', path)
        return nib.Nifti1Image(np.asarray(img.dataobj[..., 0], dtype=np.float32), img.affine)
    raise DataError(f'{path}: expected a 3D image, got shape {img.shape}')


def _channel(img: nib.Nifti1Image, index: int) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asarray(img.dataobj[..., index], dtype=np.float32), img.affine)


def _repetition_time(img: nib.Nifti1Image, metadata: dict, path) -> float:
    tr = metadata.get('RepetitionTime')
    if tr is None and img.ndim == 4:
        zoom = float(img.header.get_zooms()[3])
        unit = img.header.get_xyzt_units()[1]
        tr = zoom / 1000.0 if unit == 'msec' else zoom
    if not tr or float(tr) <= 0:
        raise DataError(f'{path}: no RepetitionTime in the sidecar or header')
    return float(tr)


def representation_native(path: str | Path, modality: str, metadata: dict | None = None
                          ) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The model representation of one input, in its native space.

    Parameters
    ----------
    path : path-like
        The raw BIDS image.
    modality : str
        Registry key (``bids.modalities.MODALITIES``).
    metadata : dict, optional
        BIDS sidecar; for dwi, ``bval`` and ``bvec`` hold the paths of the gradient files (as
        ``bids.layout`` records them; default: the files beside the image).

    Returns
    -------
    channels : Nifti1Image, shape (X, Y, Z) or (X, Y, Z, C)
        The representation (C = the modality's channel count; 3D for one channel).
    reference : Nifti1Image, shape (X, Y, Z)
        The image registered to the template (sMRI/PET: itself, bold: seg1, dwi: b0).
    """
    metadata = dict(metadata or {})
    mod = MODALITIES[modality]
    try:
        img = nib.load(str(path))
        if mod.family == 'smri':
            out = _first_volume(img, path)
            out = nib.Nifti1Image(np.nan_to_num(np.asarray(out.dataobj, dtype=np.float32)),
                                  out.affine)
            return out, out
        if mod.family == 'pet':
            out = pet_static(img, metadata, modality=modality)
            return out, out
        if mod.family == 'fmri':
            maps = bold_maps(img, _repetition_time(img, metadata, path))
            return maps, _channel(maps, 0)
        if mod.family == 'dmri':
            from dipy.io import read_bvals_bvecs

            base = str(path).replace('.nii.gz', '').replace('.nii', '')
            bval = metadata.get('bval') or base + '.bval'
            bvec = metadata.get('bvec') or base + '.bvec'
            if not (Path(bval).is_file() and Path(bvec).is_file()):
                raise DataError(f'{path}: missing .bval/.bvec ({bval}, {bvec})')
            bvals, bvecs = read_bvals_bvecs(str(bval), str(bvec))
            maps = dwi_maps(img, bvals, bvecs)
            return maps, _channel(maps, 0)
    except DataError as exc:
        msg = str(exc)
        raise DataError(msg if str(path) in msg else f'{path}: {msg}') from exc
    raise DataError(f'{path}: unknown modality family {mod.family!r}')
