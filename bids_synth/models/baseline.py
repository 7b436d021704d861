"""Regression imputer: the comparator for the diffusion model.

A voxelwise model in template space, fitted at ``group`` level on complete sessions:

    y_t(v) = mu_t(v) + sum_j beta[p(v), t, j] * (x_j(v) - mu_j(v)) + sum_k gamma[p(v), t, k] * c_k

``mu`` are the cohort's voxelwise mean images (the "template mean" imputer is this model with no
inputs), ``x_j`` the channels of the available modalities, ``c_k`` the standardized clinical
covariates, and the coefficients are ridge solutions shared inside small spatial parcels
``p(v)`` (cubes of ``parcel_mm`` inside the brain mask), so a few dozen sessions suffice.

What makes it serve any subset of inputs: the fit keeps the ridge *sufficient statistics* of
every parcel (``Z'Z`` and ``Z'Y`` over all features), and prediction solves the system restricted
to the features present in the session (available modalities, non-missing clinical values).
Nothing is refitted per pattern.

A model with bold or dwi may carry PDS's second stage (:mod:`.refinement`, tissue and
microstructure refinement), applied to those targets after the ridge.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..bids.modalities import MODALITIES
from ..errors import DataError, ModelError
from .checkpoint import load_model, save_model
from .imputer import Prediction, SessionArrays

__all__ = ['RegressionImputer', 'clinical_features', 'parcellate']


def parcellate(mask: np.ndarray, zooms: float, parcel_mm: float = 12.0) -> np.ndarray:
    """Label the mask's voxels by cube of ``parcel_mm`` (0 = outside); labels are 1..P.

    >>> m = np.ones((4, 4, 4), bool)
    >>> lab = parcellate(m, zooms=4.0, parcel_mm=8.0)
    >>> int(lab.max()), int((lab == 1).sum())
    (8, 8)
    """
    step = max(1, int(round(parcel_mm / zooms)))
    idx = np.indices(mask.shape) // step
    nblk = [int(np.ceil(s / step)) for s in mask.shape]
    block = (idx[0] * nblk[1] + idx[1]) * nblk[2] + idx[2]
    _, labels = np.unique(block[mask], return_inverse=True)
    out = np.zeros(mask.shape, dtype=np.int32)
    out[mask] = labels.astype(np.int32) + 1
    return out


def clinical_features(schema: dict, values: dict) -> tuple[np.ndarray, np.ndarray]:
    """Encode clinical values as (features, present) under ``schema``.

    Continuous columns are z-scored; categorical ones one-hot over their levels; text columns
    are skipped (the regression does not read notes). ``present`` marks features whose value
    was given.

    >>> schema = {'age': {'type': 'continuous', 'mean': 70.0, 'std': 10.0},
    ...           'sex': {'type': 'categorical', 'levels': ['F', 'M']}}
    >>> f, p = clinical_features(schema, {'age': 80.0, 'sex': None})
    >>> f.tolist(), p.tolist()
    ([[1.0, 0.0, 0.0]], [[True, False, False]])
    """
    feats, present = [], []
    for name in sorted(schema):
        spec = schema[name]
        val = values.get(name)
        missing = val is None or (isinstance(val, float) and np.isnan(val))
        if spec.get('type') == 'continuous':
            std = spec.get('std') or 1.0
            feats.append(0.0 if missing else (float(val) - spec.get('mean', 0.0)) / std)
            present.append(not missing)
        elif spec.get('type') == 'categorical':
            for level in spec.get('levels', []):
                feats.append(0.0 if missing else float(str(val) == str(level)))
                present.append(not missing)
    return np.asarray([feats], np.float32).reshape(1, -1), np.asarray([present]).reshape(1, -1)


def _channel_index(modalities: Sequence[str]) -> list[tuple[str, int]]:
    return [(m, c) for m in modalities for c in range(MODALITIES[m].n_channels)]


#: Channels not used as regression *inputs*: the later time/gradient segments repeat the first
#: one almost exactly (collinear features make the per-parcel systems ill-conditioned).
_REDUNDANT_INPUTS = ('seg2', 'seg3', 'seg4')


def _is_input(mod: str, ch: int) -> bool:
    return MODALITIES[mod].channels[ch] not in _REDUNDANT_INPUTS


def _accumulate(zz, zy, z, y, starts, chunk=40_000):
    """Add per-parcel ``z'z`` and ``z'y`` to ``zz``/``zy``; voxels are sorted by parcel.

    Works through the parcels in chunks of about ``chunk`` voxels to bound memory.
    """
    n_par = len(starts)
    ends = np.append(starts[1:], len(z))
    p0 = 0
    while p0 < n_par:
        p1 = int(np.searchsorted(ends, starts[p0] + chunk, side='right'))
        p1 = max(p1, p0 + 1)
        v0, v1 = starts[p0], ends[p1 - 1]
        zc, yc = z[v0:v1], y[v0:v1]
        local = starts[p0:p1] - v0
        zz[p0:p1] += np.add.reduceat(zc[:, :, None] * zc[:, None, :], local, axis=0)
        zy[p0:p1] += np.add.reduceat(zc[:, :, None] * yc[:, None, :], local, axis=0)
        p0 = p1


def _ridge_solve(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """Batched ridge ``(A + lam I)^-1 B`` on the correlation scale, A projected to PSD.

    Available-case moments need not form a positive semi-definite matrix, so ``a`` is first
    standardized by its diagonal (features on a common scale, the ridge is then in units of
    correlation) and its negative eigenvalues are clipped.

    >>> a = np.array([[[4.0, 0.0], [0.0, 1.0]]]); b = np.array([[[4.0], [0.0]]])
    >>> np.round(_ridge_solve(a, b, 0.0)[0, :, 0], 3).tolist()
    [1.0, 0.0]
    """
    d = np.sqrt(np.clip(np.einsum('pii->pi', a), 1e-12, None))  # (P, d)
    corr = a / d[:, :, None] / d[:, None, :]
    w, v = np.linalg.eigh(corr)
    corr = np.einsum('pij,pj,pkj->pik', v, np.clip(w, 0.0, None), v)
    corr += lam * np.eye(a.shape[1])[None]
    beta_std = np.linalg.solve(corr, b / d[:, :, None])
    return beta_std / d[:, :, None]


class RegressionImputer:
    """Voxelwise ridge regression with parcel-shared coefficients (see module docstring)."""

    method = 'regression'

    def __init__(self, modalities, mask, affine, mu, labels, zz, zy, schema, lam, info, clin_mean):
        self.modalities = tuple(modalities)
        self.mask = mask
        self.affine = affine
        self.mu = mu  # (n_channels_total, X, Y, Z)
        self.labels = labels  # (X, Y, Z) int32, 0 outside
        self.zz = zz  # (P, D, D)
        self.zy = zy  # (P, D, n_channels_total)
        self.schema = schema
        self.lam = lam
        self.info = info
        self.clin_mean = clin_mean  # (K,) training mean of each clinical feature
        self._index = _channel_index(self.modalities)
        self._cache: dict = {}
        #: PDS stage 2 for bold/dwi targets (:class:`.refinement.Refinement`), or None
        self.refinement = None

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        sessions: Sequence[SessionArrays],
        *,
        mask: np.ndarray,
        affine: np.ndarray,
        clinical_schema: dict,
        modalities: Sequence[str],
        parcel_mm: float = 12.0,
        ridge: float = 3.0,
        template: dict | None = None,
        augment=None,
        augment_copies: int = 0,
    ) -> RegressionImputer:
        """Fit on every session, using the modalities and clinical values each one has.

        Moments are *available-case* (pairwise-complete) means: each cross-product of two
        features is averaged over the sessions that have both, so incomplete sessions count
        too and no imputation of the training data is needed. A modality needs at least two
        sessions.

        ``augment`` (a function ``(images, copy_index) -> images``, e.g. random contrasts of
        the sMRI/PET inputs) adds ``augment_copies`` copies of each session whose *features*
        are the augmented images and whose *targets* stay the session's own: the moments then
        describe predicting the standard images from inputs of any contrast, and the
        coefficients lean on what survives a change of scanner (SynthSR's lesson for a linear
        model).
        """
        schema = {k: v for k, v in clinical_schema.items() if v.get('type') != 'text'}
        counts = {m: sum(m in s.images for s in sessions) for m in modalities}
        modalities = tuple(m for m in modalities if counts[m] >= 2)
        if not modalities:
            raise DataError(
                f'regression needs a modality in at least 2 sessions; counts: {counts}'
            )
        sessions = [s for s in sessions if any(m in s.images for m in modalities)]
        mask = mask.astype(bool)
        index = _channel_index(modalities)
        n_img = len(index)
        mu = np.zeros((n_img, int(mask.sum())))
        for j, (mod, ch) in enumerate(index):
            mu[j] = np.mean([s.images[mod][ch][mask] for s in sessions if mod in s.images], 0)
        labels = parcellate(mask, float(abs(affine[0, 0])), parcel_mm)
        lab = labels[mask] - 1
        n_par = int(lab.max()) + 1
        n_clin = clinical_features(schema, {})[0].shape[1]
        dim = n_img + n_clin
        clin_all = [clinical_features(schema, sess.clinical) for sess in sessions]
        # centre each clinical feature on the sessions that have it: deviations have zero mean,
        # so uncentred covariates (no intercept) would bias the prediction
        cf = np.concatenate([c for c, _ in clin_all], 0)
        cp = np.concatenate([p for _, p in clin_all], 0)
        clin_mean = (cf * cp).sum(0) / np.maximum(cp.sum(0), 1)
        order = np.argsort(lab, kind='stable')
        starts = np.searchsorted(lab[order], np.arange(n_par))
        zz = np.zeros((n_par, dim, dim))
        zy = np.zeros((n_par, dim, n_img))
        pair_n = np.zeros((dim, dim))
        pair_ny = np.zeros((dim, n_img))
        def deviations(images, has):
            dev = np.zeros((n_img, mu.shape[1]))
            for j, (mod, ch) in enumerate(index):
                if has[j]:
                    dev[j] = images[mod][ch][mask] - mu[j]
            return dev.T[order]  # (V, C), voxels grouped by parcel

        copies = int(augment_copies) if augment is not None else 0
        for s_idx, sess in enumerate(sessions):
            has = np.array([mod in sess.images for mod, _ in index])
            dev = deviations(sess.images, has)
            clin, present = clin_all[s_idx]
            clin = np.repeat(np.where(present, clin - clin_mean, 0.0), dev.shape[0], 0)
            pres = np.concatenate([has, present[0]]).astype(float)
            for k in range(1 + copies):
                feats = dev if k == 0 else deviations(augment(sess.images, k), has)
                _accumulate(zz, zy, np.concatenate([feats, clin], 1), dev, starts)
                pair_n += np.outer(pres, pres)
                pair_ny += np.outer(pres, has)
        nvox = np.bincount(lab, minlength=n_par).astype(float)
        zz /= nvox[:, None, None] * np.maximum(pair_n, 1)[None]
        zy /= nvox[:, None, None] * np.maximum(pair_ny, 1)[None]
        full_mu = np.zeros((n_img,) + mask.shape, np.float32)
        full_mu[:, mask] = mu
        info = {
            'n_sessions': len(sessions),
            'n_subjects': len({s.subject for s in sessions}),
            'sessions_per_modality': {m: counts[m] for m in modalities},
            'parcel_mm': parcel_mm,
            'n_parcels': n_par,
            'augment_copies': copies,
            'fitted': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'),
            'template': template or {},
        }
        return cls(modalities, mask, affine, full_mu, labels, zz.astype(np.float32),
                   zy.astype(np.float32), schema, ridge, info, clin_mean.astype(np.float32))

    # --------------------------------------------------------------- prediction
    def predict(self, session, targets, *, seed=0, num_samples=1, device='cpu'):
        """Predict ``targets`` from the session's available modalities and clinical values.

        Deterministic: ``seed`` and ``num_samples`` are accepted for the common interface; the
        standard deviation is ``None``.
        """
        avail = [m for m in self.modalities if m in session.images and m not in targets]
        unknown = [t for t in targets if t not in self.modalities]
        if unknown:
            raise ModelError(f'the regression model was not fitted for {", ".join(unknown)}')
        mask = self.mask
        lab = self.labels[mask] - 1
        feats = []  # (V, d) deviations of available channels, then clinical
        keep = []
        for j, (mod, ch) in enumerate(self._index):
            if mod in avail and _is_input(mod, ch):
                feats.append(session.images[mod][ch][mask] - self.mu[j][mask])
                keep.append(j)
        n_img = len(self._index)
        clin, present = clinical_features(self.schema, session.clinical)
        for k in np.flatnonzero(present[0]):
            feats.append(np.full(lab.shape, clin[0, k] - self.clin_mean[k], np.float32))
            keep.append(n_img + k)
        out_idx = [j for j, (m, _) in enumerate(self._index) if m in targets]
        pred = self.mu[out_idx][:, mask].astype(np.float64)  # (T, V)
        if keep:
            z = np.stack(feats, 1).astype(np.float64)  # (V, d)
            beta = self._coefficients(tuple(keep), tuple(out_idx))  # (P, d, T)
            pred += np.einsum('vd,vdt->tv', z, beta[lab])
        result = {}
        pos = 0
        for t in targets:
            n_ch = MODALITIES[t].n_channels
            vol = np.zeros((n_ch,) + mask.shape, np.float32)
            vol[:, mask] = pred[pos:pos + n_ch]
            pos += n_ch
            extra: dict = {'inputs_used': avail}
            if self.refinement is not None and t in self.refinement.targets:
                inputs = {m: session.images[m] for m in avail}
                vol, extra['refinement'] = self.refinement.apply(t, vol, inputs, mask)
            result[t] = Prediction(mean=vol, std=None, extra=extra)
        return result

    def _coefficients(self, keep: tuple[int, ...], out_idx: tuple[int, ...]) -> np.ndarray:
        """Ridge coefficients (P, d, T) of the features ``keep`` for the outputs ``out_idx``.

        Cached per (features, outputs, penalty): the diffusion trainer asks for the same few
        input patterns thousands of times.
        """
        key = (keep, out_idx, float(self.lam))
        beta = self._cache.get(key)
        if beta is None:
            keep_a = np.asarray(keep)
            a = self.zz[:, keep_a][:, :, keep_a].astype(np.float64)  # (P, d, d)
            b = self.zy[:, keep_a][:, :, list(out_idx)].astype(np.float64)  # (P, d, T)
            beta = _ridge_solve(a, b, self.lam)
            if len(self._cache) >= 512:
                self._cache.clear()
            self._cache[key] = beta
        return beta

    # ------------------------------------------------------------------ storage
    def card(self) -> dict:
        return {
            'method': 'regression',
            'name': 'bids_synth-regression',
            'modalities': list(self.modalities),
            'channels': {m: list(MODALITIES[m].channels) for m in self.modalities},
            'template': self.info.get('template', {}),
            'clinical_schema': self.schema,
            'architecture': {
                'kind': 'voxelwise ridge, parcel-shared coefficients, sufficient statistics',
                'parcel_mm': self.info['parcel_mm'],
                'n_parcels': self.info['n_parcels'],
                'ridge': self.lam,
                'contrast_augmentation': self.info.get('augment_copies', 0),
            },
            'training_data': {k: self.info[k] for k in ('n_sessions', 'n_subjects')
                              if k in self.info},
            'fitted': self.info['fitted'],
            **({'validation': self.info['validation']} if 'validation' in self.info else {}),
            **({'refinement': self.refinement.card()} if self.refinement is not None else {}),
        }

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays that, with :meth:`card` plus ``info``, rebuild the model."""
        out = {
            'mu': self.mu,
            'labels': self.labels,
            'mask': self.mask.astype(np.uint8),
            'affine': self.affine.astype(np.float64),
            'zz': self.zz,
            'zy': self.zy,
            'clin_mean': self.clin_mean,
        }
        if self.refinement is not None:
            out.update(self.refinement.tensors())
        return out

    def save(self, path: str | Path) -> Path:
        card = self.card()
        card['info'] = self.info
        return save_model(path, self.tensors(), card)

    @classmethod
    def load(cls, path: str | Path) -> RegressionImputer:
        tensors, card = load_model(path)
        if card.get('method') != 'regression':
            raise ModelError(f'{path}: not a regression model')
        return cls.from_tensors(tensors, card, where=path)

    @classmethod
    def from_tensors(cls, tensors: dict, card: dict, where: object = 'model') -> RegressionImputer:
        """Rebuild from :meth:`tensors` and a card holding ``info`` (as :meth:`save` writes)."""
        from .refinement import Refinement

        try:
            model = cls(
                card['modalities'], tensors['mask'].astype(bool), tensors['affine'],
                tensors['mu'], tensors['labels'], tensors['zz'], tensors['zy'],
                card['clinical_schema'], card['architecture']['ridge'], card['info'],
                tensors['clin_mean'],
            )
        except KeyError as exc:
            raise ModelError(f'{where}: regression model lacks {exc}') from None
        try:
            model.refinement = Refinement.from_tensors(tensors, card.get('refinement'))
        except ModelError as exc:
            raise ModelError(f'{where}: {exc}') from None
        return model
