"""The images a user's tools read, made from a synthesized model representation.

The reverse of :mod:`.derived`: a representation (channels last, model units, any grid) becomes
a list of :class:`OutputImage` (what file, what it holds), that
:func:`bids_synth.interfaces.derivatives.write_synth_outputs` names and writes.

- sMRI, PET: the one channel, 3D.
- bold: no time series is synthesized (the model has no time axis), so none is written: the
  segment means become a 4D ``stat-mean`` boldmap (one volume per time segment, the sidecar
  says which), then ``stat-alff``, ``stat-falff`` and ``stat-reho`` boldmaps (BEP012 naming).
- dwi: the tensor ``D = expm(L)`` of the log-tensor channels gives BEP016-style
  ``model-tensor_param-{fa,md,ad,rd}`` maps and the 6-volume ``param-tensor`` map, and a dwi
  series rendered for a gradient table, ``S = S0 exp(-b g^T D g)`` with ``S0`` the b0 channel
  (:func:`render_dwi`). The standard deviation over samples (``desc-synthstd``) is written for
  the model's FA and MD channels only (a std of a tensor is not a tensor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from ..bids.modalities import MODALITIES, TENSOR_CHANNELS
from .tensor import LOG_UNIT, TENSOR_ORDER, exp_tensor, fsl_to_world, render, scalar_maps

__all__ = ['OutputImage', 'output_images', 'dwi_tensor', 'render_dwi', 'DIFFUSIVITY_UNITS']

#: Units of the written MD, AD, RD and tensor maps.
DIFFUSIVITY_UNITS = 'mm^2/s'

_TENSOR_FRAME = ('world axes of this image\'s affine (RAS+: x left to right, y posterior to '
                 'anterior, z inferior to superior), not the voxel axes')
_MAP_TEXT = {
    'fa': 'fractional anisotropy (0-1) of the synthesized diffusion tensor',
    'md': 'mean diffusivity (mean eigenvalue) of the synthesized diffusion tensor, mm^2/s',
    'ad': 'axial diffusivity (largest eigenvalue) of the synthesized diffusion tensor, mm^2/s',
    'rd': 'radial diffusivity (mean of the two smaller eigenvalues) of the synthesized '
          'diffusion tensor, mm^2/s',
    'tensor': 'the synthesized diffusion tensor, 6 volumes (unique elements '
              + ', '.join(f'D{e}' for e in TENSOR_ORDER) + f') in mm^2/s, in the {_TENSOR_FRAME}',
}
_BOLD_TEXT = {
    'alff': 'ALFF: mean amplitude of the 0.01-0.08 Hz fluctuations of the run (model units: '
            'divided by the 99th percentile of the first segment mean in the brain)',
    'falff': 'fALFF: the 0.01-0.08 Hz amplitude over the amplitude of all frequencies (0-1)',
    'reho': 'ReHo: Kendall\'s W of each voxel\'s 27-voxel neighbourhood over the run (0-1)',
}


@dataclass
class OutputImage:
    """One file to write.

    Attributes
    ----------
    key : str
        ``'main'`` for the modality's main image, else the map's name (``fa``, ``alff``...).
    image : Nifti1Image
    entities : str
        Entities inserted before ``desc-`` (e.g. ``'stat-alff'``, ``'model-tensor_param-fa'``);
        empty for the main image of sMRI/PET/dwi.
    suffix : str
        ``T1w``, ``pet``, ``dwi``, ``boldmap``, ``dwimap``...
    description : str
        What the image holds (goes into the sidecar's Description).
    sidecar : dict
        Extra sidecar fields.
    texts : dict
        Extra files beside the image: extension -> text (``.bval``/``.bvec``).
    """

    key: str
    image: nib.Nifti1Image
    entities: str
    suffix: str
    description: str
    sidecar: dict = field(default_factory=dict)
    texts: dict = field(default_factory=dict)


def _img(data: np.ndarray, affine, *, time: bool = False, dtype=np.float32) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units('mm', 'sec' if time else None)
    return img


def dwi_tensor(channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tensor (X, Y, Z, 6) in mm^2/s and brain mask (X, Y, Z) of a dwi representation.

    The mask is where the b0 channel is positive (the model's outputs are 0 outside the brain);
    the tensor is 0 outside it.
    """
    names = MODALITIES['dwi'].channels
    b0 = channels[..., names.index('b0')]
    mask = b0 > 1e-6
    idx = [names.index(c) for c in TENSOR_CHANNELS]
    tensor = np.zeros(b0.shape + (6,), dtype=np.float32)
    tensor[mask] = exp_tensor(channels[mask][:, idx]) * LOG_UNIT
    return tensor, mask


def render_dwi(s0: np.ndarray, tensor: np.ndarray, affine: np.ndarray, bvals: np.ndarray,
               bvecs: np.ndarray, mask: np.ndarray | None = None, chunk: int = 200_000
               ) -> np.ndarray:
    """``S0 exp(-b g^T D g)`` for FSL b-vectors of an image with ``affine``.

    Parameters
    ----------
    s0 : ndarray, shape (X, Y, Z)
    tensor : ndarray, shape (X, Y, Z, 6)
        mm^2/s, world axes (:mod:`.tensor`).
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3)
        FSL convention for this ``affine`` (the table as written beside the image).
    mask : ndarray of bool, optional
        Voxels to render (0 elsewhere); default: ``s0 > 0``.

    Returns
    -------
    ndarray, shape (X, Y, Z, N), float32
    """
    world = fsl_to_world(bvecs, affine)
    mask = s0 > 0 if mask is None else mask
    out = np.zeros(s0.shape + (len(bvals),), dtype=np.float32)
    where = np.flatnonzero(mask.ravel())
    flat_s0, flat_t = s0.reshape(-1), tensor.reshape(-1, 6)
    flat_out = out.reshape(-1, len(bvals))
    for i in range(0, where.size, chunk):
        sel = where[i:i + chunk]
        flat_out[sel] = render(flat_s0[sel], flat_t[sel], bvals, world)
    return out


def _bold(data, affine, mod, desc: str) -> list[OutputImage]:
    names = mod.channels
    segs = [i for i, c in enumerate(names) if c.startswith('seg')]
    n = len(segs)
    what = 'standard deviation over samples of ' if desc == 'synthstd' else ''
    out = [OutputImage(
        'main', _img(data[..., segs], affine), 'stat-mean', 'boldmap',
        f'{what}{n} maps, the temporal means of the run\'s {n} consecutive time segments (PDS '
        'time segments; model units: divided by the 99th percentile of the first in the '
        'brain). Not a time series: no RepetitionTime applies.',
        {'VolumeContents': [f'mean of time segment {i + 1} of {n}' for i in range(n)]})]
    for name in ('alff', 'falff', 'reho'):
        out.append(OutputImage(name, _img(data[..., names.index(name)], affine),
                               f'stat-{name}', 'boldmap', what + _BOLD_TEXT[name]))
    return out


def _dwi(data, affine, scheme, desc: str) -> list[OutputImage]:
    names = MODALITIES['dwi'].channels
    if desc == 'synthstd':
        fa, md = data[..., names.index('fa')], data[..., names.index('md')] * 1e-3
        return [
            OutputImage('main', _img(fa, affine), 'model-tensor_param-fa', 'dwimap',
                        'standard deviation over samples of the model\'s FA channel (0-1)'),
            OutputImage('md', _img(md, affine), 'model-tensor_param-md', 'dwimap',
                        'standard deviation over samples of the model\'s MD channel, mm^2/s',
                        {'Units': DIFFUSIVITY_UNITS}),
        ]
    tensor, mask = dwi_tensor(data)
    s0 = np.where(mask, data[..., names.index('b0')], 0.0).astype(np.float32)
    series = render_dwi(s0, tensor, affine, scheme.bvals, scheme.bvecs, mask)
    out = [OutputImage(
        'main', _img(series, affine, time=True, dtype=np.int16), '', 'dwi',
        f'a dwi series rendered from the synthesized S0 (b0 channel, model units: divided by its '
        f'99th percentile in the brain) and diffusion tensor, S = S0 exp(-b g^T D g), for the '
        f'{len(scheme.bvals)}-volume gradient table beside it ({scheme.source}: '
        f'{scheme.origin}); b-vectors in FSL convention for this image. Noise-free: a tensor '
        'model, no non-Gaussian diffusion.',
        {},
        {'.bval': scheme.bval_text(), '.bvec': scheme.bvec_text()})]
    maps = scalar_maps(tensor)
    for name in ('fa', 'md', 'ad', 'rd'):
        vol = np.where(mask, maps[name], 0.0)
        extra = {} if name == 'fa' else {'Units': DIFFUSIVITY_UNITS}
        out.append(OutputImage(name, _img(vol, affine), f'model-tensor_param-{name}', 'dwimap',
                               _MAP_TEXT[name], extra))
    out.append(OutputImage('tensor', _img(tensor, affine), 'model-tensor_param-tensor',
                           'dwimap', _MAP_TEXT['tensor'],
                           {'Units': DIFFUSIVITY_UNITS,
                            'TensorElements': [f'D{e}' for e in TENSOR_ORDER],
                            'TensorFrame': _TENSOR_FRAME}))
    return out


def output_images(target: str, img: nib.Nifti1Image, desc: str = 'synth',
                  scheme=None) -> list[OutputImage]:
    """The files one synthesized representation becomes (first: the main image).

    Parameters
    ----------
    target : str
        Registry key.
    img : Nifti1Image, shape (X, Y, Z) or (X, Y, Z, C)
        The representation (``MODALITIES[target].channels``), or its std over samples.
    desc : {'synth', 'synthstd', 'synthsample<i>'}
    scheme : bids_synth.bids.gradients.GradientScheme
        dwi (not its std): the table the series is rendered for.
    """
    mod = MODALITIES[target]
    data = np.asarray(img.dataobj, dtype=np.float32)
    if mod.n_channels == 1:  # one channel: a 3D image (the validator rejects 4D anat files)
        return [OutputImage('main', _img(data.reshape(data.shape[:3]), img.affine), '',
                            mod.suffix, '')]
    if data.ndim == 3:
        data = data[..., None]
    if data.shape[-1] != mod.n_channels:
        raise ValueError(f'{target}: expected {mod.n_channels} channels, got {data.shape}')
    if mod.family == 'fmri':
        return _bold(data, img.affine, mod, desc)
    if mod.family == 'dmri':
        if scheme is None and desc != 'synthstd':
            raise ValueError('a synthesized dwi series needs a gradient table')
        return _dwi(data, img.affine, scheme, desc)
    raise ValueError(f'{target}: no outputs defined for family {mod.family!r}')
