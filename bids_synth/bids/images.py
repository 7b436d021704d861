"""Readability checks of input images: a bad file is named with its reason, never half-read.

A file that exists but cannot be used (empty, header-only, corrupt gzip, wrong number of
dimensions for its modality, a non-finite or all-zero voxel data, an implausible affine) raises
:class:`~bids_synth.errors.UnreadableImageError` with a one-line message ``'<path>: <reason>'``.
The layout records that reason in the session inventory and goes on with the other files.

>>> import numpy as np, nibabel as nib, tempfile, os
>>> tmp = tempfile.mkdtemp()
>>> path = os.path.join(tmp, 'sub-01_bold.nii.gz')
>>> nib.save(nib.Nifti1Image(np.ones((4, 4, 4), 'float32'), np.eye(4)), path)
>>> check_readable(path, 'T1w').shape
(4, 4, 4)
>>> try:
...     check_readable(path, 'bold')
... except UnreadableImageError as err:
...     print(str(err).split(': ', 1)[1])
bold must be 4D (time series), got 3D shape (4, 4, 4)
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_synth.bids.modalities import MODALITIES
from bids_synth.errors import UnreadableImageError

__all__ = ['check_readable', 'MIN_BOLD_VOLUMES', 'read_bvals']

#: Fewest volumes a bold run needs: the time axis is cut into BOLD_SEGMENTS segments, and ALFF
#: needs more than a couple of points per segment.
MIN_BOLD_VOLUMES = 8


def _family(modality: str | None) -> str | None:
    """Registry family of a modality name, or the name itself when it is a family/datatype.

    >>> _family('FLAIR'), _family('AV45'), _family('func'), _family(None)
    ('smri', 'pet', 'fmri', None)
    """
    if modality is None:
        return None
    if modality in MODALITIES:
        return MODALITIES[modality].family
    return {'anat': 'smri', 'func': 'fmri', 'bold': 'fmri', 'dwi': 'dmri',
            'pet': 'pet'}.get(modality, modality)


def _gzip_problem(path: Path) -> str | None:
    """Decompress a gzip file fully; the reason it is corrupt, or ``None`` if it is sound."""
    try:
        with gzip.open(path, 'rb') as fobj:
            while fobj.read(1 << 24):
                pass
    except gzip.BadGzipFile as err:
        return f'corrupt gzip ({err})'
    except EOFError:
        return 'corrupt gzip (truncated stream: the file ends before the end-of-stream marker)'
    except zlib.error as err:
        return f'corrupt gzip (deflate error: {err})'
    except OSError as err:
        return f'corrupt gzip ({err})'
    return None


def _not_gzip(path: Path) -> str | None:
    """Why a ``.gz`` file is not gzip data (no gzip magic number), or ``None``.

    An uncompressed NIfTI given a ``.nii.gz`` name is named as such, not as a corrupt gzip.
    """
    with path.open('rb') as fobj:
        head = fobj.read(348)
    if head[:2] == b'\x1f\x8b':
        return None
    for order in ('<', '>'):
        if len(head) >= 4 and int(np.frombuffer(head[:4], f'{order}i4')[0]) in (348, 540):
            return ('an uncompressed NIfTI named .nii.gz (not gzip data): rename it to .nii '
                    'or compress it with gzip')
    return 'corrupt gzip (no gzip header: not gzip data, although named .gz)'


def _orientation_problem(img) -> str | None:
    """Why an image's voxel-to-world affine is implausible for a head scan, or ``None``.

    Degenerate (zero or non-finite) or implausible voxel sizes, or strongly sheared axes. (A
    plausible affine can still be turned the wrong way: the registration QC catches that.)

    >>> import nibabel as nib, numpy as np
    >>> _orientation_problem(nib.Nifti1Image(np.zeros((64, 64, 40), 'f4'), np.diag([3, 3, 3, 1])))
    >>> sheared = np.array([[3, 1.5, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]])
    >>> _orientation_problem(nib.Nifti1Image(np.zeros((64, 64, 40), 'f4'), sheared))
    'sheared affine (voxel axes 27 degrees from orthogonal): a broken qform/sform'
    >>> _orientation_problem(nib.Nifti1Image(np.zeros((64, 64, 40), 'f4'),
    ...                                      np.diag([300, 300, 300, 1])))
    'implausible voxel size 300 x 300 x 300 mm (expected 0.05-20 mm)'
    """
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)):
        return 'non-finite affine (NaN or inf in the qform/sform)'
    lin = np.asarray(affine[:3, :3], dtype=float)
    if abs(np.linalg.det(lin)) < 1e-12:
        return 'singular affine (zero voxel size or degenerate orientation)'
    zooms = np.sqrt((lin ** 2).sum(axis=0))
    if zooms.min() < 0.05 or zooms.max() > 20:
        size = ' x '.join(f'{z:.3g}' for z in zooms)
        return f'implausible voxel size {size} mm (expected 0.05-20 mm)'
    cosines = lin / zooms
    off = np.abs(cosines.T @ cosines - np.eye(3)).max()
    if off > 0.2:  # axes more than ~11.5 degrees from orthogonal
        return (f'sheared affine (voxel axes {np.degrees(np.arcsin(min(off, 1))):.0f} degrees '
                'from orthogonal): a broken qform/sform')
    return None


def _short_by(path: Path, img) -> int | None:
    """How many bytes of image data are missing, from sizes alone (``None``: cannot tell).

    Avoids allocating and reading a large array for a header-only file. For gzip, the trailer's
    ISIZE field gives the uncompressed size (modulo 2**32, so only trusted below 4 GiB).
    """
    proxy = img.dataobj  # the image's header is a copy; the proxy knows the file's offset
    try:
        offset = int(proxy.offset)
        needed = offset + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
    except (AttributeError, TypeError, ValueError):
        return None
    if path.name.endswith('.gz'):
        if needed >= 2**32 or path.stat().st_size < 18:
            return None
        with path.open('rb') as fobj:
            fobj.seek(-4, os.SEEK_END)
            size = int.from_bytes(fobj.read(4), 'little')
    elif path.name.endswith('.nii'):
        size = path.stat().st_size
    else:
        return None
    return max(needed - size, 0) if size >= offset else needed - offset


def read_bvals(path: str | os.PathLike) -> np.ndarray:
    """Read a BIDS ``.bval`` file (one row of b-values) as a 1D float array.

    Raises
    ------
    UnreadableImageError
        If the file cannot be parsed as numbers.
    """
    try:
        values = np.loadtxt(path, dtype=float, ndmin=1)
    except (OSError, ValueError) as err:
        raise UnreadableImageError(f'{path}: unreadable b-values ({err})') from None
    return values.ravel()


def _read_bvecs(path: str | os.PathLike) -> np.ndarray:
    try:
        values = np.loadtxt(path, dtype=float, ndmin=2)
    except (OSError, ValueError) as err:
        raise UnreadableImageError(f'{path}: unreadable b-vectors ({err})') from None
    return values


def _check_shape(shape: tuple[int, ...], family: str | None, bval, bvec) -> str | None:
    """The reason a data shape does not fit the modality family, or ``None``.

    >>> _check_shape((4, 4, 4, 1), 'smri', None, None) is None
    True
    >>> _check_shape((4, 4, 4, 2), 'smri', None, None)
    'anatomical image must be 3D (or 4D with one volume), got shape (4, 4, 4, 2)'
    >>> _check_shape((4, 4, 4, 3), 'fmri', None, None)
    'bold has 3 volumes, fewer than the 8 needed'
    """
    # trailing singleton dimensions beyond the 4th carry nothing
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3 or any(s < 2 for s in shape[:3]):
        return f'not a volume: shape {shape} (need at least 3 spatial dimensions of size >= 2)'
    if len(shape) > 4:
        return f'{len(shape)}D image (shape {shape}) is not supported'
    nvol = shape[3] if len(shape) == 4 else 1
    if family == 'smri' and nvol != 1:
        return f'anatomical image must be 3D (or 4D with one volume), got shape {shape}'
    if family == 'fmri':
        if len(shape) != 4:
            return f'bold must be 4D (time series), got 3D shape {shape}'
        if nvol < MIN_BOLD_VOLUMES:
            return f'bold has {nvol} volumes, fewer than the {MIN_BOLD_VOLUMES} needed'
    if family == 'dmri':
        if len(shape) != 4:
            return f'dwi must be 4D (one volume per gradient), got 3D shape {shape}'
        if bval is not None and len(bval) != nvol:
            return f'dwi has {nvol} volumes but the .bval file lists {len(bval)} b-values'
        if bvec is not None and bvec.shape != (3, nvol):
            return (f'dwi has {nvol} volumes but the .bvec file has shape {bvec.shape} '
                    f'(expected 3 x {nvol})')
    return None


def check_readable(
    path: str | os.PathLike,
    modality: str | None = None,
    *,
    bval: str | os.PathLike | None = None,
    bvec: str | os.PathLike | None = None,
) -> nib.Nifti1Image:
    """Load an image and check that it is usable for ``modality``; return it with its data.

    The data are read once, completely, so a file that passes will not fail later on a
    truncated block.

    Parameters
    ----------
    path : str or os.PathLike
        The image (NIfTI-1/2, plain or gzipped; anything nibabel reads).
    modality : str, optional
        A registry name (``'T1w'``, ``'FDG'``, ``'bold'``, ``'dwi'`` ...) or a datatype
        (``'anat'``, ``'pet'``, ``'func'``, ``'dwi'``). Rules: anatomical images are 3D or 4D
        with one volume; PET 3D or 4D (frames); bold 4D with at least
        :data:`MIN_BOLD_VOLUMES` volumes; dwi 4D. Without it only generic checks run.
    bval, bvec : str or os.PathLike, optional
        For dwi: the volume count must match the b-values, and the b-vectors must be 3 x N.

    Returns
    -------
    nibabel.Nifti1Image
        An in-memory image (same class, affine and header) holding the data that were read.

    Raises
    ------
    UnreadableImageError
        Message ``'<path>: <reason>'``; reasons: missing file, empty file (0 bytes), corrupt
        gzip, an uncompressed file named ``.gz``, not an image nibabel can read, header-only /
        truncated data, wrong dimensionality for the modality, dwi volume count differing from
        the .bval/.bvec, any non-finite voxel (NaN/inf), all voxels zero, an implausible
        affine (non-finite, singular, sheared, voxel size out of range).
    """
    path = Path(path)
    family = _family(modality)

    def fail(reason: str):
        raise UnreadableImageError(f'{path}: {reason}') from None

    if not path.is_file():
        fail('file does not exist')
    if path.stat().st_size == 0:
        fail('empty file (0 bytes)')
    gzipped = path.name.endswith('.gz')
    if gzipped and (reason := _not_gzip(path)):
        fail(reason)
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types; each becomes a one-line reason
        if gzipped and (problem := _gzip_problem(path)):
            fail(problem)
        fail(f'not a readable image ({type(err).__name__}: {str(err).splitlines()[0]})')
    short = _short_by(path, img)
    if short:
        if gzipped and (problem := _gzip_problem(path)):
            fail(problem)
        if short >= int(np.prod(img.shape)) * img.get_data_dtype().itemsize:
            fail('header-only NIfTI: the header is there but the image data are missing')
        fail(f'truncated image data ({short} bytes missing)')
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        if gzipped and (problem := _gzip_problem(path)):
            fail(problem)
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if 'got 0 bytes' in msg:
            fail('header-only NIfTI: the header is there but the image data are missing')
        fail(f'truncated or unreadable image data ({msg})')

    affine = img.affine
    if (reason := _orientation_problem(img)) is not None:
        fail(reason)

    bvals = read_bvals(bval) if bval is not None else None
    bvecs = _read_bvecs(bvec) if bvec is not None else None
    if (reason := _check_shape(tuple(data.shape), family, bvals, bvecs)) is not None:
        fail(reason)

    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        finite = np.isfinite(data)
        if not finite.any():
            fail('no finite voxel (all NaN/inf)')
        if not finite.all():
            # registration and normalization cannot use them, and silently zeroing them
            # would hide a broken conversion: the image is refused
            n_bad = int(data.size - np.count_nonzero(finite))
            fail(f'{n_bad} of {data.size} voxels are not finite (NaN/inf)')
        if not np.any(data):
            fail('all voxels are zero')
    elif not np.any(data):
        fail('all voxels are zero')
    return img.__class__(data, affine, img.header)
