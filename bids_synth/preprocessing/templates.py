"""The template space of the models: TemplateFlow home populated offline, and the model grid.

nilearn ships the MNI152 2009a symmetric T1w, GM, WM and brain mask at 1 mm. This module writes
them into ``TEMPLATEFLOW_HOME`` as ``tpl-MNI152NLin2009aSym`` (res-1 as shipped, res-2
resampled onto :func:`model_grid` at 2 mm, CSF derived as brain mask minus GM minus WM), with a
``template_description.json``, so that ``templateflow.api.get`` resolves them without network:
templateflow only downloads files that are missing or 0 bytes long, and never touches a
non-empty home. Every file is written once, in a temporary folder that is renamed into place,
so concurrent processes (Nipype MultiProc, Slurm array jobs) can call
:func:`ensure_templateflow_home` safely.

Note that our res-2 grid is the model grid (96x112x96, origin (-96, -132, -76) mm), not the
97x115x97 grid of the TemplateFlow archive; ``template_description.json`` records it.

>>> aff, shape = model_grid(4)
>>> shape
(48, 56, 48)
>>> aff[:3, 3].tolist(), float(aff[0, 0])
([-96.0, -132.0, -76.0], 4.0)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    'TEMPLATE',
    'TemplateSpec',
    'ensure_templateflow_home',
    'model_grid',
    'load_template',
    'template_files',
]

#: TemplateFlow identifier of the models' template space.
TEMPLATE = 'MNI152NLin2009aSym'
#: Corner (centre of voxel 0,0,0) of the model grid, in MNI mm.
GRID_ORIGIN = (-96.0, -132.0, -76.0)
#: Field of view of the model grid, in mm.
GRID_FOV = (192, 224, 192)
_RESOLUTIONS = (1, 2)
_SUFFIXES = {
    'T1w': 'T1w',
    'mask': 'desc-brain_mask',
    'GM': 'label-GM_probseg',
    'WM': 'label-WM_probseg',
    'CSF': 'label-CSF_probseg',
}


def model_grid(res: int = 2) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the model grid at ``res`` mm.

    Parameters
    ----------
    res : int
        Voxel size in mm (1, 2 or 4 in practice; must divide 64).

    Returns
    -------
    affine : ndarray, shape (4, 4)
        ``diag(res, res, res, 1)`` with origin (-96, -132, -76) mm (RAS).
    shape : tuple of int, (X, Y, Z)
        ``(192, 224, 192) // res``.

    >>> model_grid(2)[1]
    (96, 112, 96)
    """
    if res <= 0 or 64 % res:
        raise ValueError(f'model grid resolution must divide 64 mm, got {res}')
    affine = np.diag([float(res)] * 3 + [1.0])
    affine[:3, 3] = GRID_ORIGIN
    shape = tuple(int(f // res) for f in GRID_FOV)
    return affine, shape  # type: ignore[return-value]


def _default_home() -> Path:
    env = os.environ.get('TEMPLATEFLOW_HOME')
    if env:
        return Path(env)
    cache = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(cache) / 'bids_synth' / 'templateflow'


def template_files(home: Path) -> dict[tuple[int, str], Path]:
    """Paths of the template files in a TemplateFlow home, keyed by (res, kind)."""
    tdir = Path(home) / f'tpl-{TEMPLATE}'
    return {
        (res, kind): tdir / f'tpl-{TEMPLATE}_res-{res}_{suffix}.nii.gz'
        for res in _RESOLUTIONS
        for kind, suffix in _SUFFIXES.items()
    }


def _complete(home: Path) -> bool:
    tdir = Path(home) / f'tpl-{TEMPLATE}'
    files = list(template_files(home).values()) + [tdir / 'template_description.json']
    return all(f.is_file() and f.stat().st_size > 0 for f in files)


def _nilearn_images() -> dict[str, nib.Nifti1Image]:
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    aff = t1.affine
    m = mask.get_fdata(dtype=np.float32) > 0.5
    g = gm.get_fdata(dtype=np.float32)
    w = wm.get_fdata(dtype=np.float32)
    csf = np.clip(m.astype(np.float32) - g - w, 0.0, 1.0)

    def img(a, dtype):
        out = nib.Nifti1Image(np.asarray(a, dtype=dtype), aff)
        out.header.set_xyzt_units('mm')
        return out

    return {
        'T1w': img(t1.get_fdata(dtype=np.float32), np.float32),
        'mask': img(m, np.uint8),
        'GM': img(g, np.float32),
        'WM': img(w, np.float32),
        'CSF': img(csf, np.float32),
    }


def _description(images: dict[int, nib.Nifti1Image]) -> dict:
    res = {}
    for r, im in images.items():
        res[str(r)] = {
            'origin': [float(v) for v in im.affine[:3, 3]],
            'shape': [int(v) for v in im.shape[:3]],
            'zooms': [float(v) for v in im.header.get_zooms()[:3]],
        }
    return {
        'Identifier': TEMPLATE,
        'Name': 'ICBM 2009a Nonlinear Symmetric (from nilearn, offline copy by bids_synth)',
        'Authors': ['Fonov V', 'Evans AC', 'Botteron K', 'Almli CR', 'McKinstry RC',
                    'Collins DL', 'BDCG'],
        'Acknowledgements': ('Files written by bids_synth from the copy shipped with nilearn; '
                             'res-2 is resampled onto the bids_synth model grid; CSF is the '
                             'brain mask minus GM minus WM, clipped to [0, 1].'),
        'License': 'See LICENSE file',
        'RRID': 'SCR_008796',
        'ReferencesAndLinks': [
            'https://doi.org/10.1016/j.neuroimage.2010.07.033',
            'https://doi.org/10.1016/S1053-8119(09)70884-5',
            'http://nist.mni.mcgill.ca/?p=904',
        ],
        'TemplateFlowVersion': '1.0.0',
        'res': res,
    }


def _populate(tdir: Path) -> None:
    from nilearn.image import resample_img

    images = _nilearn_images()
    aff2, shape2 = model_grid(2)
    first = {}
    for kind, im in images.items():
        for res in _RESOLUTIONS:
            if res == 1:
                out = im
            else:
                interp = 'nearest' if kind == 'mask' else 'linear'
                out = resample_img(im, target_affine=aff2, target_shape=shape2,
                                   interpolation=interp, force_resample=True,
                                   copy_header=True)
                data = out.get_fdata(dtype=np.float32)
                if kind == 'mask':
                    data = data > 0.5
                    out = nib.Nifti1Image(data.astype(np.uint8), aff2)
                else:
                    out = nib.Nifti1Image(np.clip(data, 0, None).astype(np.float32), aff2)
                out.header.set_xyzt_units('mm')
            first.setdefault(res, out)
            name = f'tpl-{TEMPLATE}_res-{res}_{_SUFFIXES[kind]}.nii.gz'
            nib.save(out, tdir / name)
    (tdir / 'template_description.json').write_text(json.dumps(_description(first), indent=2))


def ensure_templateflow_home(path: str | os.PathLike | None = None) -> Path:
    """Make a TemplateFlow home that resolves ``MNI152NLin2009aSym`` offline.

    Parameters
    ----------
    path : path-like, optional
        The home to populate. Default: ``$TEMPLATEFLOW_HOME`` if set, else
        ``$XDG_CACHE_HOME/bids_synth/templateflow`` (``~/.cache/...``).

    Returns
    -------
    Path
        The home (absolute). ``TEMPLATEFLOW_HOME`` is set to it when it was unset, so that a
        later ``import templateflow`` in this process and its children uses it.

    Notes
    -----
    Idempotent and safe under concurrency: files are written in a temporary sibling folder,
    which is renamed into place; a process that loses the race discards its copy.
    """
    home = Path(path) if path is not None else _default_home()
    home = home.expanduser().absolute()
    home.mkdir(parents=True, exist_ok=True)
    if 'TEMPLATEFLOW_HOME' not in os.environ:
        os.environ['TEMPLATEFLOW_HOME'] = str(home)
    desc = home / 'dataset_description.json'
    if not desc.exists():
        fd, tmp = tempfile.mkstemp(dir=home, prefix='.dd-', suffix='.json')
        with os.fdopen(fd, 'w') as fh:
            json.dump({'Name': 'TemplateFlow (bids_synth offline subset)',
                       'BIDSVersion': '1.1.0', 'DatasetType': 'raw'}, fh)
        os.replace(tmp, desc)
    if _complete(home):
        return home
    tdir = home / f'tpl-{TEMPLATE}'
    tmpdir = Path(tempfile.mkdtemp(dir=home, prefix='.tpl-tmp-'))
    try:
        _populate(tmpdir)
        os.chmod(tmpdir, 0o755)
        if tdir.exists() and not _complete(home):
            # incomplete leftovers (e.g. a templateflow stub with 0-byte files): replace them
            stale = Path(tempfile.mkdtemp(dir=home, prefix='.tpl-stale-'))
            try:
                os.replace(tdir, stale / tdir.name)
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmpdir, tdir)
        except OSError:
            if not _complete(home):  # lost the race to a process that left it incomplete
                raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return home


@dataclass(frozen=True, eq=False)
class TemplateSpec:
    """The template on the model grid.

    Attributes
    ----------
    name : str
        TemplateFlow identifier.
    res : int
        Voxel size in mm.
    affine : ndarray, shape (4, 4)
    shape : tuple of int, (X, Y, Z)
    t1 : ndarray, shape (X, Y, Z), float32
        T1w template intensities (0-1).
    mask : ndarray, shape (X, Y, Z), bool
        Brain mask.
    gm, wm, csf : ndarray, shape (X, Y, Z), float32
        Tissue probabilities.
    """

    name: str
    res: int
    affine: np.ndarray = field(repr=False)
    shape: tuple[int, int, int]
    t1: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    gm: np.ndarray = field(repr=False)
    wm: np.ndarray = field(repr=False)
    csf: np.ndarray = field(repr=False)

    def img(self, array: np.ndarray) -> nib.Nifti1Image:
        """A NIfTI image on the model grid.

        Parameters
        ----------
        array : ndarray, shape (X, Y, Z) or (C, X, Y, Z)
            Channels first; written with channels on the last axis.
        """
        array = np.asarray(array)
        if array.ndim == 4:
            array = np.moveaxis(array, 0, -1)
        if array.shape[:3] != tuple(self.shape):
            raise ValueError(f'array of shape {array.shape} is not on the {self.shape} grid')
        if array.dtype == bool:
            array = array.astype(np.uint8)
        out = nib.Nifti1Image(array, self.affine)
        out.header.set_xyzt_units('mm')
        return out


def _tf_get(home: Path, res: int, suffix: str, **entities) -> Path:
    client = _client(str(home))
    path = client.get(TEMPLATE, resolution=res, suffix=suffix, raise_empty=True, **entities)
    return Path(path[0] if isinstance(path, list) else path)


@lru_cache(maxsize=4)
def _client(home: str):
    from templateflow.client import TemplateFlowClient

    return TemplateFlowClient(root=home)


@lru_cache(maxsize=4)
def load_template(res: int = 2) -> TemplateSpec:
    """The template resampled onto :func:`model_grid` at ``res`` mm (cached per process).

    Files are resolved through TemplateFlow in the home of :func:`ensure_templateflow_home`.
    """
    from nilearn.image import resample_img

    home = ensure_templateflow_home()
    affine, shape = model_grid(res)
    src = 1 if res < 2 else 2
    paths = {
        't1': _tf_get(home, src, 'T1w', desc=None),
        'mask': _tf_get(home, src, 'mask', desc='brain'),
        'gm': _tf_get(home, src, 'probseg', label='GM'),
        'wm': _tf_get(home, src, 'probseg', label='WM'),
        'csf': _tf_get(home, src, 'probseg', label='CSF'),
    }
    arrays = {}
    for key, path in paths.items():
        img = nib.load(path)
        if img.shape[:3] != tuple(shape) or not np.allclose(img.affine, affine):
            img = nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine)
            with warnings.catch_warnings():  # the mask: linear, then thresholded at 0.5
                warnings.simplefilter('ignore', UserWarning)
                img = resample_img(img, target_affine=affine, target_shape=shape,
                                   interpolation='linear', force_resample=True,
                                   copy_header=True)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        arrays[key] = data > 0.5 if key == 'mask' else np.clip(data, 0, None)
    for a in arrays.values():
        a.setflags(write=False)
    return TemplateSpec(name=TEMPLATE, res=int(res), affine=affine, shape=tuple(shape),
                        **arrays)
