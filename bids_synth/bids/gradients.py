"""The gradient table a synthesized dwi series is rendered for (``--dwi-scheme``).

Where the table comes from, in order:

1. ``--dwi-scheme FILE``: a ``.bval``/``.bvec`` pair, named by either file, by their common
   prefix (``/path/dwi`` for ``/path/dwi.bval`` + ``/path/dwi.bvec``) or by the ``.nii[.gz]``
   image they belong to;
2. else the table acquired most often in the input dataset (every ``dwi/*_dwi`` run; pairs
   equal to 1 s/mm^2 and 1e-3 count as the same table; ties go to the first run in path order);
3. else :func:`standard_scheme`: 2 b=0 volumes then 30 directions at b=1000 s/mm^2 on a
   Fibonacci half-sphere (deterministic).

b-vectors follow FSL's convention (BIDS): one row per axis, unit vectors along the image's
voxel axes, the first component negated when the image affine's determinant is positive. A
table is applied in the frame of each image it is written with (as a scanner applies its table
in its own frame), so the written ``.bval``/``.bvec`` are the table as given.

>>> s = standard_scheme()
>>> s.bvals.shape, s.bvecs.shape, int((s.bvals == 0).sum()), s.source
((32,), (32, 3), 2, 'standard')
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NoInputError, UsageError

__all__ = ['GradientScheme', 'read_scheme', 'dataset_scheme', 'standard_scheme',
           'resolve_scheme', 'fibonacci_hemisphere', 'B0_MAX', 'MIN_DIRECTIONS']

LOGGER = logging.getLogger('bids_synth.bids.gradients')

#: b-values at or below this are b=0 volumes (s/mm^2), as in ``preprocessing.derived``.
B0_MAX = 50.0
#: A table needs this many diffusion-weighted volumes (a tensor has 6 unknowns).
MIN_DIRECTIONS = 6


def fibonacci_hemisphere(n: int) -> np.ndarray:
    """``n`` near-uniform unit vectors (n, 3) on the upper half-sphere (Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    z = 1 - k / n
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


@dataclass(frozen=True)
class GradientScheme:
    """A gradient table: b-values (N,) in s/mm^2 and FSL b-vectors (N, 3)."""

    bvals: np.ndarray
    bvecs: np.ndarray
    source: str
    """``'file'`` (``--dwi-scheme``), ``'dataset'`` (most common acquired) or ``'standard'``."""
    origin: str = ''
    """The file it was read from, or what it is."""
    count: int = 0
    """``'dataset'``: how many acquired runs have this table (of ``total``)."""
    total: int = 0

    def bval_text(self) -> str:
        return ' '.join(f'{b:g}' for b in self.bvals) + '\n'

    def bvec_text(self) -> str:
        return '\n'.join(' '.join(f'{v:.6f}' for v in row) for row in self.bvecs.T) + '\n'

    def to_dict(self) -> dict:
        """JSON/TOML-plain form (``from_dict`` reads it back)."""
        return {'bvals': [float(b) for b in self.bvals],
                'bvecs': [[float(v) for v in row] for row in self.bvecs.T],
                'source': self.source, 'origin': self.origin, 'count': self.count,
                'total': self.total}

    @classmethod
    def from_dict(cls, d: dict) -> GradientScheme:
        return cls(np.asarray(d['bvals'], float), np.asarray(d['bvecs'], float).T,
                   d['source'], d.get('origin', ''), int(d.get('count', 0)),
                   int(d.get('total', 0)))

    def describe(self) -> dict:
        """What a sidecar records: where the table came from and its shells."""
        shells = Counter(int(round(b / 100.0) * 100) if b > B0_MAX else 0 for b in self.bvals)
        out = {'Source': self.source, 'Origin': self.origin,
               'Volumes': int(len(self.bvals)),
               'Shells': {str(b): n for b, n in sorted(shells.items())}}
        if self.source == 'dataset':
            out['AcquiredRunsWithThisTable'] = f'{self.count} of {self.total}'
        return out


def _pair(path: Path) -> tuple[Path, Path]:
    name = path.name
    for ext in ('.nii.gz', '.nii', '.bval', '.bvec'):
        if name.endswith(ext):
            stem = path.with_name(name[:-len(ext)])
            break
    else:
        stem = path
    return stem.with_name(stem.name + '.bval'), stem.with_name(stem.name + '.bvec')


def _parse(bval: Path, bvec: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a pair; UsageError naming the file on any problem."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # numpy warns on an empty file
        try:
            bvals = np.loadtxt(bval, dtype=float, ndmin=1).ravel()
        except (OSError, ValueError) as exc:
            raise UsageError(f'{bval}: not a .bval file (one row of numbers): {exc}') from None
        try:
            vecs = np.loadtxt(bvec, dtype=float, ndmin=2)
        except (OSError, ValueError) as exc:
            raise UsageError(f'{bvec}: not a .bvec file (three rows of numbers): {exc}'
                             ) from None
    n = bvals.size
    if n == 0:
        raise UsageError(f'{bval}: empty .bval file')
    if vecs.shape == (3, n):
        vecs = vecs.T
    elif vecs.shape != (n, 3):
        raise UsageError(f'{bvec}: b-vectors of shape {vecs.shape} do not match the {n} '
                         f'b-values of {bval.name} (expected 3 rows of {n})')
    if not (np.isfinite(bvals).all() and np.isfinite(vecs).all()) or (bvals < 0).any():
        raise UsageError(f'{bval}: b-values must be finite and >= 0, b-vectors finite')
    dw = bvals > B0_MAX
    norms = np.linalg.norm(vecs, axis=1)
    if (dw & (norms < 1e-6)).any():
        raise UsageError(f'{bvec}: volume {int(np.flatnonzero(dw & (norms < 1e-6))[0])} has '
                         'b > 0 but a zero b-vector')
    if not (~dw).any() or dw.sum() < MIN_DIRECTIONS:
        raise UsageError(f'{label}: a gradient table needs a b=0 volume and at least '
                         f'{MIN_DIRECTIONS} diffusion-weighted ones, got {int((~dw).sum())} '
                         f'and {int(dw.sum())}')
    if np.linalg.matrix_rank(vecs[dw] / norms[dw, None], tol=1e-3) < 3:
        raise UsageError(f'{bvec}: the diffusion-weighted directions span fewer than 3 '
                         'dimensions: no tensor can be measured with this table')
    unit = np.where(dw[:, None], vecs / np.where(norms > 0, norms, 1.0)[:, None], 0.0)
    return bvals, unit


def read_scheme(path: str | os.PathLike) -> GradientScheme:
    """The ``--dwi-scheme`` table (see the module docstring for the accepted names).

    Raises
    ------
    NoInputError
        (exit 66) a file of the pair does not exist.
    UsageError
        (exit 64) the files are not a usable table.
    """
    path = Path(path).expanduser().absolute()
    bval, bvec = _pair(path)
    for f in (bval, bvec):
        if not f.is_file():
            raise NoInputError(f'{f}: no such file (--dwi-scheme {path} needs {bval.name} '
                               f'and {bvec.name} side by side)')
    bvals, bvecs = _parse(bval, bvec, str(path))
    return GradientScheme(bvals, bvecs, 'file', str(bval.with_suffix('')) + '.{bval,bvec}')


def dataset_scheme(layout) -> GradientScheme | None:
    """The table acquired most often in a pybids layout's dwi runs (None: no usable one)."""
    files = sorted(layout.get(datatype='dwi', suffix='dwi', extension=['.nii', '.nii.gz'],
                              return_type='filename'))
    tables: dict[tuple, tuple[GradientScheme, list[str]]] = {}
    for f in files:
        try:
            bval, bvec = layout.get_bval(f), layout.get_bvec(f)
            if not bval or not bvec:
                continue
            bvals, bvecs = _parse(Path(bval), Path(bvec), f)
        except (UsageError, OSError, ValueError) as exc:
            LOGGER.debug('%s: gradient table not counted (%s)', f, exc)
            continue
        key = (tuple(np.round(bvals).astype(int)), tuple(np.round(bvecs, 3).ravel()))
        if key not in tables:
            tables[key] = (GradientScheme(bvals, bvecs, 'dataset'), [])
        tables[key][1].append(f)
    if not tables:
        return None
    total = sum(len(v[1]) for v in tables.values())
    scheme, runs = max(tables.values(), key=lambda v: len(v[1]))  # first of equals: path order
    root = Path(layout.root)
    first = Path(runs[0])
    origin = first.relative_to(root).as_posix() if first.is_relative_to(root) else str(first)
    return GradientScheme(scheme.bvals, scheme.bvecs, 'dataset',
                          f'bids:raw:{origin} (and the other runs with this table)'
                          if len(runs) > 1 else f'bids:raw:{origin}', len(runs), total)


def standard_scheme(n_b0: int = 2, n_dirs: int = 30, bvalue: float = 1000.0
                    ) -> GradientScheme:
    """``n_b0`` b=0 volumes, then ``n_dirs`` Fibonacci half-sphere directions at ``bvalue``."""
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, float(bvalue))]
    bvecs = np.r_[np.zeros((n_b0, 3)), fibonacci_hemisphere(n_dirs)]
    return GradientScheme(bvals, bvecs, 'standard',
                          f'bids_synth standard table: {n_b0} b=0, {n_dirs} directions at '
                          f'b={bvalue:g} s/mm^2 (Fibonacci half-sphere)')


def resolve_scheme(option: str | os.PathLike | None, layout=None) -> GradientScheme:
    """``--dwi-scheme`` if given, else the dataset's most common table, else the standard."""
    if option:
        return read_scheme(option)
    if layout is not None:
        found = dataset_scheme(layout)
        if found is not None:
            return found
    return standard_scheme()
