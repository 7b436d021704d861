"""Images of a synthetic subject given its clinical row: a linear-Gaussian image generator.

Mensing et al. generate images and clinical tables jointly. bids_synth's version for
``bids-synth-generate`` factors the joint as p(row) p(images | row): the row comes from the
Gaussian copula of :mod:`.copula`, the images from this model, fitted by ``group`` on one image
set per participant (the template-grid representation of every modality the generator writes,
inside the brain mask, each modality divided by its cohort-wide spread so that none dominates):

- the principal axes of the images (as many as explain 99% of the cohort's variance, at most
  32 and the number of participants minus one);
- a regression of the axes' scores on the row's encoded clinical values (standardized
  continuous values, one-hot levels, missing indicators), nearly unpenalized so that the
  cohort's relations are kept (larger ventricles with age, lower posterior-cingulate FDG with
  AD);
- the subject's own variation: a Gaussian residual score per axis with the regression
  residuals' spread.

:meth:`ImageComponents.decode` turns a design row and component scores into images. A decoded
image is the cohort mean plus combinations of the training participants' images: it is no
single participant's image, but a model fitted on very few participants should not be shared
as if it were anonymous.

Stored as ``tabular_images.safetensors`` beside ``tabular.json`` (sha256 in the model card).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> mask = np.ones((4, 4, 2), bool)
>>> imgs = [{'T1w': rng.normal(size=(1, 4, 4, 2)).astype(np.float32)} for _ in range(6)]
>>> design = rng.normal(size=(6, 2))
>>> comp = ImageComponents.fit(imgs, mask, ('T1w',), design, max_components=5, variance=1.0)
>>> s = comp.scores(imgs[2], design[2])
>>> bool(np.allclose(comp.decode(design[2], s)['T1w'], imgs[2]['T1w'], atol=1e-3))
True
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import ModelError

__all__ = ['ImageComponents', 'COMPONENTS_NAME']

COMPONENTS_NAME = 'tabular_images.safetensors'
#: at most this many components, and as many as explain this share of the variance
MAX_COMPONENTS = 32
VARIANCE = 0.99


#: ridge penalty of the score regressions (on the design's scale: standardized and one-hot
#: columns): small, for a stable solve only. A generator must reproduce the cohort's relations,
#: not predict well: penalties chosen by cross-validation over participants shrank them to 15%
#: (ventricles vs age) and 53% (FDG AD - CN) of the held-out cohort's (bench/clinical.py);
#: 0.1 keeps 55% and 89%.
PENALTY = 0.1


class ImageComponents:
    """Mean, regression on the clinical design, and residual principal axes of a cohort's
    images (see the module docstring).

    Attributes
    ----------
    modalities : tuple of str
    mask : numpy.ndarray, shape (X, Y, Z), bool
    mean : numpy.ndarray, shape (M, V)
        Per modality, the cohort mean inside the mask (first channel of each modality).
    scale : numpy.ndarray, shape (M,)
    design_mean : numpy.ndarray, shape (P,)
        Mean of the training design rows (the regression is on centred rows).
    axes : numpy.ndarray, shape (K, M * V)
        Orthonormal principal axes of the scaled images.
    coef : numpy.ndarray, shape (P, K)
        Ridge coefficients of each axis' score on the centred design.
    sd : numpy.ndarray, shape (K,)
        Standard deviation of the residual score (score minus regression) of each axis.
    penalty : float
        Ridge penalty of the score regressions.
    """

    def __init__(self, modalities, mask, mean, scale, design_mean, coef, axes, sd,
                 penalty: float):
        self.modalities = tuple(modalities)
        self.mask = np.asarray(mask, bool)
        self.mean = np.asarray(mean, np.float32)
        self.scale = np.asarray(scale, np.float32)
        self.design_mean = np.asarray(design_mean, np.float32)
        self.coef = np.asarray(coef, np.float32)
        self.axes = np.asarray(axes, np.float32)
        self.sd = np.asarray(sd, np.float32)
        self.penalty = float(penalty)

    @property
    def n_components(self) -> int:
        return int(self.axes.shape[0])

    @classmethod
    def fit(cls, images: list[dict], mask: np.ndarray, modalities, design, *,
            max_components: int = MAX_COMPONENTS, variance: float = VARIANCE,
            penalty: float = PENALTY) -> ImageComponents:
        """Fit on one image dict per participant (every modality present, shape (C, X, Y, Z))
        and its design row (``design``, shape (N, P)).

        Keeps the fewest residual components that explain ``variance`` of the residuals' total
        (at most ``max_components`` and the number of participants minus one).
        """
        mask = np.asarray(mask, bool)
        mods = tuple(modalities)
        n = len(images)
        if n < 3:
            raise ModelError(f'image components need at least 3 participants, got {n}')
        x = np.stack([np.stack([np.asarray(im[m][0], np.float64)[mask] for m in mods])
                      for im in images])  # (N, M, V)
        mean = x.mean(0)
        dev = x - mean
        scale = np.sqrt((dev ** 2).mean((0, 2)))
        scale = np.where(scale > 1e-8, scale, 1.0)
        y = (dev / scale[None, :, None]).reshape(n, -1)
        _, sv, vt = np.linalg.svd(y, full_matrices=False)
        var = sv ** 2
        share = np.cumsum(var) / max(var.sum(), 1e-12)
        k = int(np.searchsorted(share, variance - 1e-9) + 1)
        k = max(1, min(k, max_components, n - 1))
        axes = vt[:k]
        scores = y @ axes.T  # (N, K)
        d = np.asarray(design, np.float64).reshape(n, -1)
        d_mean = d.mean(0)
        c = d - d_mean
        coef = _ridge(c, scores, penalty)
        resid = scores - c @ coef
        sd = np.sqrt((resid ** 2).sum(0) / max(n - 1, 1))
        return cls(mods, mask, mean, scale, d_mean, coef, axes, sd, penalty)

    def _centred(self, design) -> np.ndarray:
        return np.asarray(design, np.float64).reshape(-1) - self.design_mean

    def scores(self, images: dict, design) -> np.ndarray:
        """Residual component scores (K,) of one participant's images and design row."""
        x = np.stack([np.asarray(images[m][0], np.float64)[self.mask] for m in self.modalities])
        y = ((x - self.mean) / self.scale[:, None]).reshape(-1)
        return (self.axes.astype(np.float64) @ y
                - self._centred(design) @ self.coef.astype(np.float64)).astype(np.float32)

    def sample_scores(self, rng: np.random.Generator) -> np.ndarray:
        """Gaussian residual scores (K,) with the training residuals' spread."""
        return (rng.standard_normal(self.n_components) * self.sd).astype(np.float32)

    def decode(self, design, scores) -> dict[str, np.ndarray]:
        """Images (1, X, Y, Z) per modality from a design row (P,) and residual scores (K,);
        zero outside the mask."""
        s = np.asarray(scores, np.float64).reshape(-1)
        s = s + self._centred(design) @ self.coef.astype(np.float64)
        y = s @ self.axes.astype(np.float64)
        x = self.mean + y.reshape(len(self.modalities), -1) * self.scale[:, None]
        out = {}
        for j, m in enumerate(self.modalities):
            vol = np.zeros(self.mask.shape, np.float32)
            vol[self.mask] = x[j]
            out[m] = vol[None]
        return out

    # ------------------------------------------------------------------ storage
    def tensors(self) -> dict[str, np.ndarray]:
        # C order: safetensors.numpy writes the buffer as it is, and a Fortran-ordered array
        # (nibabel's) would come back transposed
        t = {'mask': self.mask.astype(np.uint8), 'mean': self.mean, 'scale': self.scale,
             'design_mean': self.design_mean, 'coef': self.coef,
             'axes': self.axes.astype(np.float16), 'sd': self.sd,
             'penalty': np.array([self.penalty], np.float32)}
        return {k: np.ascontiguousarray(v) for k, v in t.items()}

    def save(self, path: str | Path) -> str:
        """Write atomically (safetensors); return the file's sha256."""
        import os
        import tempfile

        from safetensors.numpy import save_file

        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix='.safetensors', dir=path.parent)
        os.close(fd)
        try:
            save_file(self.tensors(), tmp, metadata={'modalities': ','.join(self.modalities)})
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @classmethod
    def load(cls, path: str | Path, sha256: str | None = None) -> ImageComponents:
        """Read (and check against ``sha256``); :class:`ModelError` if missing or modified."""
        from safetensors import safe_open

        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ModelError(f'{path}: the model card names it but it cannot be read ({exc})'
                             ) from None
        if sha256 and hashlib.sha256(raw).hexdigest() != sha256:
            raise ModelError(f'{path}: sha256 does not match the model card; the file was '
                             'modified')
        try:
            with safe_open(str(path), framework='numpy') as f:
                mods = (f.metadata() or {}).get('modalities', '')
                t = {k: f.get_tensor(k) for k in f.keys()}
            return cls(tuple(m for m in mods.split(',') if m), t['mask'].astype(bool),
                       t['mean'], t['scale'], t['design_mean'], t['coef'],
                       t['axes'].astype(np.float32), t['sd'], float(t['penalty'][0]))
        except Exception as exc:  # noqa: BLE001 - a corrupt file is a model error
            raise ModelError(f'{path}: not a bids_synth image-components file ({exc})'
                             ) from None


def _ridge(c: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge coefficients (P, D) of ``y`` (N, D) on centred ``c`` (N, P)."""
    p = c.shape[1]
    return np.linalg.solve(c.T @ c + penalty * np.eye(p), c.T @ y)
