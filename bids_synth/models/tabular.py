"""The tabular head of the joint model: clinical values from images and the other values.

Mensing et al. co-generate images and mixed-type clinical tables; bids_synth's share of that
idea is a tabular part fitted beside the image model in ``group`` and stored in the same model
folder (``tabular.json``, plain JSON, its sha256 in the model card):

- **imputation head** (:class:`ClinicalHead`): for each continuous or categorical column, a
  scikit-learn model that predicts it from the session's other clinical values (standardized or
  one-hot, each with a missing indicator) and **image features** (:func:`image_features`: the
  mean of each modality's main channels in named MNI regions and in the template's GM, WM and
  CSF; a modality the session lacks is first synthesized from its images). Continuous columns:
  ``Ridge`` (penalty by cross-validation over participants), a Gaussian whose spread is the
  cross-validated residual RMS; categorical
  columns: multinomial ``LogisticRegression`` (penalty chosen by cross-validation), the level
  probabilities; a column of three or more levels may instead be **ordinal** (ridge regression
  of the level index in participants.json's order, a Gaussian latent score cut between levels:
  CN < MCI < AD, 0 < 1 < 2 alleles), whichever has the lower cross-validated log loss, so a
  middle level seen in few training rows is still predicted. Training rows are replicated
  with the other columns hidden at random, so any subset of them may be missing when it is
  used.
- **generator**: a Gaussian copula over the table (:class:`~.copula.CopulaGenerator`) draws
  the clinical row of a synthetic subject, and a linear-Gaussian model of the sMRI/PET images
  given that row (:mod:`.image_components`) its images (``bids-synth-generate``,
  :meth:`TabularModel.subject_images`).

Text columns (notes) are neither predicted nor generated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..bids.modalities import MODALITIES
from ..errors import ModelError
from .copula import CopulaGenerator
from .image_components import COMPONENTS_NAME, ImageComponents

__all__ = ['ClinicalHead', 'TabularModel', 'image_features', 'feature_names', 'fit_tabular',
           'impute_clinical', 'filled_images',
           'load_tabular', 'session_features', 'TABULAR_NAME']

LOGGER = logging.getLogger('bids_synth.models.tabular')

TABULAR_NAME = 'tabular.json'
FORMAT = 'bids_synth-tabular/1'
#: channels of each family summarized by the image features
_FEATURE_CHANNELS = {'bold': ('alff', 'falff'), 'dwi': ('fa', 'md')}
_N_COPIES = 8
_HIDE_PROB = 0.25
_ALPHAS = tuple(np.logspace(-2, 4, 13))
_CS = (0.03, 0.1, 0.3, 1.0, 3.0)
#: modalities the generator draws jointly with the clinical row (those bids-synth-generate
#: writes as raw images; bold and dwi are derived maps)
_GENERATED_IMAGES = ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45')


# ---------------------------------------------------------------------------- image features
@lru_cache(maxsize=4)
def _regions(res: int) -> tuple[tuple[str, ...], np.ndarray]:
    """Region names and boolean masks (R, X, Y, Z) on the model grid at ``res`` mm."""
    from ..preprocessing.regions import REGIONS, region_mask
    from ..preprocessing.templates import load_template

    tpl = load_template(res)
    brain = tpl.mask.astype(bool)
    names, masks = [], []
    for name in REGIONS:
        m = region_mask(name, tpl.affine, tpl.shape) & brain
        if m.sum() >= 2:
            names.append(name)
            masks.append(m)
    for tissue in ('gm', 'wm', 'csf'):
        names.append(f'tissue_{tissue}')
        masks.append(brain & (getattr(tpl, tissue) > 0.5))
    return tuple(names), np.stack(masks)


def _channels(modality: str) -> list[int]:
    chans = MODALITIES[modality].channels
    wanted = _FEATURE_CHANNELS.get(modality, (chans[0],))
    return [chans.index(c) for c in wanted if c in chans]


def feature_names(modalities, res: int) -> list[str]:
    """Names of :func:`image_features`, ``<modality>:<channel>:<region>``."""
    names, _ = _regions(res)
    return [f'{m}:{MODALITIES[m].channels[c]}:{r}' for m in modalities for c in _channels(m)
            for r in names]


def image_features(images: dict, modalities, res: int) -> np.ndarray:
    """Regional means of each modality's main channels, shape (F,) in :func:`feature_names`
    order; NaN for a modality absent from ``images``."""
    names, masks = _regions(res)
    flat = masks.reshape(len(names), -1).astype(np.float64)
    counts = flat.sum(1)
    out = []
    for m in modalities:
        for c in _channels(m):
            if m in images:
                vol = np.asarray(images[m][c], np.float64).reshape(-1)
                out.append(flat @ vol / counts)
            else:
                out.append(np.full(len(names), np.nan))
    return np.concatenate(out) if out else np.zeros(0)


def filled_images(imputer, session) -> tuple[dict, list[str]]:
    """The session's images with every modality it lacks synthesized from its images alone
    (no clinical value: a value to be imputed must not leak into what predicts it); returns
    them and the modalities synthesized."""
    from .imputer import SessionArrays

    mods = tuple(imputer.modalities)
    missing = tuple(m for m in mods if m not in session.images)
    images = dict(session.images)
    if missing:
        bare = SessionArrays(session.subject, session.session,
                             {m: v for m, v in session.images.items() if m in mods}, {})
        kwargs = {'num_samples': 1} if imputer.method == 'diffusion' else {}
        pred = imputer.predict(bare, missing, seed=0, **kwargs)
        images.update({m: p.mean for m, p in pred.items()})
    return images, list(missing)


def session_features(imputer, session, res: int) -> tuple[np.ndarray, list[str]]:
    """Features of a session (:func:`image_features`), its missing modalities synthesized by
    :func:`filled_images`. Returns the features and the modalities synthesized."""
    images, missing = filled_images(imputer, session)
    return image_features(images, tuple(imputer.modalities), res), missing


# ------------------------------------------------------------------------- imputation head
def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v)) or (
        isinstance(v, str) and v.strip().lower() in ('', 'n/a', 'nan', 'na'))


class _Encoder:
    """Clinical values -> standardized / one-hot predictors with missing indicators."""

    def __init__(self, schema: dict, stats: dict):
        self.schema, self.stats = schema, stats

    @classmethod
    def fit(cls, schema: dict, rows: list[dict]) -> _Encoder:
        stats = {}
        for col, spec in schema.items():
            if spec['type'] == 'continuous':
                v = np.array([float(r[col]) for r in rows if not _is_missing(r.get(col))])
                sd = float(v.std()) if len(v) > 1 else 1.0
                stats[col] = [float(v.mean()) if len(v) else 0.0, sd if sd > 0 else 1.0]
        return cls(schema, stats)

    def encode(self, row: dict, skip: str) -> list[float]:
        out: list[float] = []
        for col, spec in self.schema.items():
            if col == skip:
                continue
            v = row.get(col)
            miss = _is_missing(v)
            if spec['type'] == 'continuous':
                mu, sd = self.stats[col]
                try:
                    x = (float(v) - mu) / sd if not miss else 0.0
                except (TypeError, ValueError):
                    x, miss = 0.0, True
                out += [x, float(miss)]
            else:
                levels = spec['levels']
                hot = [0.0] * len(levels)
                if not miss and str(v) in levels:
                    hot[levels.index(str(v))] = 1.0
                else:
                    miss = True
                out += hot + [float(miss)]
        return out


def _design(encoder, rows, feats, col, feat_mu, feat_sd, use_images):
    tab = np.array([encoder.encode(r, col) for r in rows], float).reshape(len(rows), -1)
    if not use_images or feats is None or feats.shape[1] == 0:
        return tab
    f = (np.nan_to_num(feats - feat_mu, nan=0.0)) / feat_sd
    return np.concatenate([tab, f], 1)


def _hide(rows: list[dict], col: str, rng) -> list[dict]:
    """A copy of ``rows`` with each other column hidden with probability ``_HIDE_PROB``."""
    out = []
    for r in rows:
        out.append({k: (None if k != col and rng.random() < _HIDE_PROB else v)
                    for k, v in r.items()})
    return out


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(min(k, n))]


class ClinicalHead:
    """Per-column predictors of clinical values (see the module docstring)."""

    def __init__(self, schema: dict, encoder_stats: dict, feat_mu, feat_sd, models: dict,
                 use_images: bool):
        self.schema = schema
        self.encoder = _Encoder(schema, encoder_stats)
        self.feat_mu = np.asarray(feat_mu, float)
        self.feat_sd = np.asarray(feat_sd, float)
        self.models = models
        self.use_images = use_images

    @classmethod
    def fit(cls, rows: list[dict], feats: np.ndarray | None, schema: dict, *, seed: int = 0,
            use_images: bool = True) -> ClinicalHead:
        """Fit one predictor per column with at least 4 observed values (2 levels seen).

        Parameters
        ----------
        rows : list of dict
            Clinical values per session (``None`` missing).
        feats : numpy.ndarray, shape (N, F), or None
            :func:`image_features` of each session.
        """
        from sklearn.linear_model import LogisticRegression, Ridge

        schema = {c: s for c, s in schema.items() if s.get('type') in ('continuous',
                                                                         'categorical')}
        encoder = _Encoder.fit(schema, rows)
        use_images = bool(use_images and feats is not None and np.size(feats))
        if use_images:
            feat_mu = np.nanmean(feats, 0)
            feat_mu = np.where(np.isfinite(feat_mu), feat_mu, 0.0)
            feat_sd = np.nanstd(feats, 0)
            feat_sd = np.where(np.isfinite(feat_sd) & (feat_sd > 1e-8), feat_sd, 1.0)
        else:
            feat_mu = feat_sd = np.zeros(0)
        rng = np.random.default_rng(seed)
        models = {}
        for col, spec in schema.items():
            keep = [i for i, r in enumerate(rows) if not _is_missing(r.get(col))]
            if spec['type'] == 'categorical':
                keep = [i for i in keep if str(rows[i][col]) in spec['levels']]
            if len(keep) < 4:
                continue
            base = [rows[i] for i in keep]
            f = feats[keep] if use_images else None
            aug_rows = base + [r for _ in range(_N_COPIES - 1) for r in _hide(base, col, rng)]
            aug_f = np.concatenate([f] * _N_COPIES) if use_images else None
            groups = np.tile(np.arange(len(base)), _N_COPIES)
            x = _design(encoder, aug_rows, aug_f, col, feat_mu, feat_sd, use_images)
            folds = _folds(len(base), 5, seed)
            if spec['type'] == 'continuous':
                y = np.array([float(r[col]) for r in base] * _N_COPIES)
                # the penalty is chosen on folds of participants (all copies of a row in the
                # same fold: leave-one-out over near-duplicates would pick no penalty)
                cv = {}
                for alpha in _ALPHAS:
                    resid = []
                    for held in folds:
                        test = np.isin(groups, held)
                        m = Ridge(alpha=alpha).fit(x[~test], y[~test])
                        resid.append(y[test] - m.predict(x[test]))
                    cv[alpha] = np.concatenate(resid)
                alpha = min(cv, key=lambda a: float(np.mean(cv[a] ** 2)))
                model = Ridge(alpha=alpha).fit(x, y)
                obs = y[:len(base)]
                models[col] = {
                    'kind': 'gaussian', 'coef': model.coef_.tolist(),
                    'intercept': float(model.intercept_), 'alpha': float(alpha),
                    'std': float(np.sqrt(np.mean(cv[alpha] ** 2))),
                    'min': float(obs.min()), 'max': float(obs.max()),
                    'decimals': _decimals(obs), 'n': len(base),
                }
            else:
                levels = spec['levels']
                y = np.array([levels.index(str(r[col])) for r in base] * _N_COPIES)
                if len(set(y.tolist())) < 2:
                    probs = np.zeros(len(levels))
                    probs[y[0]] = 1.0
                    models[col] = {'kind': 'constant', 'probabilities': probs.tolist(),
                                   'n': len(base)}
                    continue
                best = None
                for c in _CS:
                    loss = 0.0
                    for held in folds:
                        test = np.isin(groups, held)
                        if len(set(y[~test].tolist())) < 2:
                            continue
                        m = LogisticRegression(C=c, max_iter=2000).fit(x[~test], y[~test])
                        p = np.full((test.sum(), len(levels)), 1e-3)
                        p[:, m.classes_] = np.maximum(m.predict_proba(x[test]), 1e-3)
                        p /= p.sum(1, keepdims=True)
                        loss -= float(np.log(p[np.arange(test.sum()), y[test]]).sum())
                    if best is None or loss < best[0]:
                        best = (loss, c)
                ordinal = (_fit_ordinal(x, y, groups, folds, len(levels))
                           if len(levels) >= 3 else None)
                if ordinal is not None and ordinal.pop('cv_loss') < best[0]:
                    models[col] = dict(ordinal, n=len(base), multinomial_cv_loss=best[0])
                    continue
                model = LogisticRegression(C=best[1], max_iter=2000).fit(x, y)
                models[col] = {'kind': 'multinomial', 'classes': model.classes_.tolist(),
                               'coef': model.coef_.tolist(),
                               'intercept': model.intercept_.tolist(), 'C': best[1],
                               'n': len(base)}
        return cls(schema, encoder.stats, feat_mu, feat_sd, models, use_images)

    @property
    def columns(self) -> list[str]:
        return list(self.models)

    def predict(self, row: dict, feats: np.ndarray | None, columns=None) -> dict:
        """Predict ``columns`` (default: every modelled column missing in ``row``).

        Returns
        -------
        dict
            column -> ``{'value', 'mean', 'std'}`` (continuous: ``value`` rounded to the
            column's precision and clipped to the training range) or ``{'value',
            'probabilities'}`` (categorical: the most probable level).
        """
        if columns is None:
            columns = [c for c in self.models if _is_missing(row.get(c))]
        out = {}
        f = None if feats is None else np.asarray(feats, float)[None]
        for col in columns:
            m = self.models.get(col)
            if m is None:
                continue
            x = _design(self.encoder, [row], f, col, self.feat_mu, self.feat_sd,
                        self.use_images)[0]
            if m['kind'] == 'gaussian':
                mean = float(x @ np.asarray(m['coef']) + m['intercept'])
                mean = min(max(mean, m['min']), m['max'])
                out[col] = {'value': round(mean, m['decimals']), 'mean': mean,
                            'std': m['std']}
            else:
                levels = self.schema[col]['levels']
                if m['kind'] == 'constant':
                    p = np.asarray(m['probabilities'])
                elif m['kind'] == 'ordinal':
                    score = float(x @ np.asarray(m['coef']) + m['intercept'])
                    p = _ordinal_probabilities(np.array([score]), m['std'], len(levels))[0]
                else:
                    logits = np.asarray(m['coef']) @ x + np.asarray(m['intercept'])
                    if len(m['classes']) == 2 and logits.shape[0] == 1:
                        logits = np.array([0.0, logits[0]])
                    e = np.exp(logits - logits.max())
                    p = np.zeros(len(levels))
                    p[m['classes']] = e / e.sum()
                out[col] = {'value': levels[int(np.argmax(p))],
                            'probabilities': {lev: round(float(q), 4)
                                              for lev, q in zip(levels, p)}}
        return out

    def to_dict(self) -> dict:
        return {'schema': self.schema, 'order': list(self.schema), 'encoder': self.encoder.stats,
                'feature_mean': self.feat_mu.tolist(), 'feature_std': self.feat_sd.tolist(),
                'models': self.models, 'use_images': self.use_images}

    @classmethod
    def from_dict(cls, d: dict) -> ClinicalHead:
        # the encoder's feature order is the schema's column order at fit time ('order')
        order = d.get('order') or list(d['schema'])
        return cls({c: d['schema'][c] for c in order}, d['encoder'], d['feature_mean'],
                   d['feature_std'], d['models'], d['use_images'])


def _ordinal_probabilities(score: np.ndarray, std: float, n_levels: int) -> np.ndarray:
    """Level probabilities of a Gaussian latent score (mean ``score``, spread ``std``) cut at
    the half-integers between level indices: shape (N, n_levels), floored at 1e-3.

    >>> _ordinal_probabilities(np.array([1.0]), 0.25, 3).round(3).tolist()
    [[0.023, 0.954, 0.023]]
    """
    from scipy.special import ndtr

    cuts = np.arange(n_levels - 1) + 0.5
    cdf = ndtr((cuts[None] - np.asarray(score, float)[:, None]) / max(std, 1e-3))
    cdf = np.concatenate([np.zeros((cdf.shape[0], 1)), cdf, np.ones((cdf.shape[0], 1))], 1)
    p = np.maximum(np.diff(cdf, axis=1), 1e-3)
    return p / p.sum(1, keepdims=True)


def _fit_ordinal(x, y, groups, folds, n_levels: int) -> dict:
    """Ordinal model of a categorical column whose levels are in a meaningful order (as
    participants.json lists them: CN, MCI, AD; 0, 1, 2 alleles): ridge regression of the
    level index, its cross-validated residual as a Gaussian spread, probabilities by
    :func:`_ordinal_probabilities`. Returns the model and its cross-validated log loss
    (``cv_loss``, summed as the multinomial's), which decides between the two."""
    from sklearn.linear_model import Ridge

    yf = y.astype(float)
    cv = {}
    for alpha in _ALPHAS:
        pred = np.empty_like(yf)
        for held in folds:
            test = np.isin(groups, held)
            pred[test] = Ridge(alpha=alpha).fit(x[~test], yf[~test]).predict(x[test])
        cv[alpha] = pred
    alpha = min(cv, key=lambda a: float(np.mean((cv[a] - yf) ** 2)))
    std = float(np.sqrt(np.mean((cv[alpha] - yf) ** 2)))
    p = _ordinal_probabilities(cv[alpha], std, n_levels)
    loss = -float(np.log(p[np.arange(len(y)), y]).sum())
    model = Ridge(alpha=alpha).fit(x, yf)
    return {'kind': 'ordinal', 'coef': model.coef_.tolist(),
            'intercept': float(model.intercept_), 'alpha': float(alpha), 'std': std,
            'cv_loss': loss}


def _decimals(values: np.ndarray) -> int:
    for d in range(4):
        if np.allclose(values, np.round(values, d), atol=1e-9):
            return d
    return 6


# --------------------------------------------------------------------------------- storage
class TabularModel:
    """The tabular part of a model folder: the imputation head, the row generator and (models
    fitted since it exists) the image components whose scores the generator draws with each
    row (:mod:`.image_components`)."""

    def __init__(self, head: ClinicalHead, generator: CopulaGenerator, features: dict,
                 info: dict, components: ImageComponents | None = None):
        self.head, self.generator, self.features, self.info = head, generator, features, info
        self.components = components

    def subject_images(self, row: dict, imputer, modalities, *, seed: int = 0,
                       device: str = 'cpu') -> tuple[dict, dict]:
        """Images (1, X, Y, Z) of a generated subject whose clinical row is ``row``.

        Modalities of the image components are drawn from p(images | row)
        (:mod:`.image_components`: the regression on the row plus Gaussian residual scores
        drawn with ``seed``); any other is synthesized by ``imputer`` from the clinical values
        alone. Returns the images and, per modality, how it was made (``'joint'`` or
        ``'conditional'``).
        """
        from .imputer import SessionArrays

        comp = self.components
        joint = [m for m in modalities if comp is not None and m in comp.modalities]
        out = {}
        if joint:
            design = self.head.encoder.encode(row, '')
            scores = comp.sample_scores(np.random.default_rng(seed))
            decoded = comp.decode(design, scores)
            out.update({m: decoded[m] for m in joint})
        rest = tuple(m for m in modalities if m not in out)
        if rest:
            kwargs = {'num_samples': 1} if imputer.method == 'diffusion' else {}
            pred = imputer.predict(SessionArrays('generated', None, {}, dict(row)), rest,
                                   seed=seed, device=device, **kwargs)
            out.update({m: pred[m].mean for m in rest})
        return out, {m: 'joint' if m in joint else 'conditional' for m in modalities}

    @property
    def res(self) -> int:
        return int(self.features['res'])

    @property
    def modalities(self) -> list[str]:
        return list(self.features['modalities'])

    def to_dict(self) -> dict:
        return {'format': FORMAT, 'features': self.features, 'head': self.head.to_dict(),
                'generator': self.generator.to_dict(), 'info': self.info}

    def save(self, model_dir: str | Path) -> Path:
        """Write ``tabular.json`` atomically and record its sha256 in the model card."""
        from .checkpoint import CARD_NAME

        mdir = Path(model_dir)
        # insertion order kept: the head's and the copula's feature orders are column orders
        text = json.dumps(self.to_dict(), indent=1)
        _atomic_write(mdir / TABULAR_NAME, text)
        card_file = mdir / CARD_NAME
        card = json.loads(card_file.read_text())
        card['tabular'] = {'file': TABULAR_NAME,
                           'sha256': hashlib.sha256(text.encode()).hexdigest(),
                           'columns': self.head.columns,
                           'generated_columns': list(self.generator.columns)}
        if self.components is not None:
            card['tabular']['images'] = {
                'file': COMPONENTS_NAME,
                'sha256': self.components.save(mdir / COMPONENTS_NAME),
                'modalities': list(self.components.modalities),
                'n_components': self.components.n_components,
                'penalty': self.components.penalty}
        _atomic_write(card_file, json.dumps(card, indent=2, sort_keys=True))
        return mdir / TABULAR_NAME


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix=path.suffix, dir=path.parent)
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def load_tabular(model_dir: str | Path) -> TabularModel | None:
    """The tabular part of a model folder, or ``None`` for a model fitted without it.

    Raises
    ------
    ModelError
        The card names a tabular file that is missing, modified (sha256) or malformed.
    """
    from .checkpoint import read_card

    mdir = Path(model_dir)
    entry = read_card(mdir).get('tabular')
    if not entry:
        return None
    path = mdir / entry.get('file', TABULAR_NAME)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f'{path}: the model card names it but it cannot be read ({exc})')
    if hashlib.sha256(raw).hexdigest() != entry.get('sha256'):
        raise ModelError(f'{path}: sha256 does not match the model card; the file was modified')
    try:
        d = json.loads(raw)
        if d.get('format') != FORMAT:
            raise ValueError(f'format is not {FORMAT!r}')
        tab = TabularModel(ClinicalHead.from_dict(d['head']),
                           CopulaGenerator.from_dict(d['generator']), d['features'],
                           d.get('info', {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f'{path}: not a bids_synth tabular model ({exc})') from None
    images = entry.get('images')
    if images:
        tab.components = ImageComponents.load(mdir / images.get('file', COMPONENTS_NAME),
                                              images.get('sha256'))
    return tab


def fit_tabular(imputer, sessions, schema: dict, res: int, *, seed: int = 0,
                progress: bool = False) -> TabularModel:
    """Fit the head (on every session) and the generator (one row per participant: its first
    session) of a fitted image model ``imputer``."""
    from tqdm.auto import tqdm

    mods = list(imputer.modalities)
    # each participant's first session: its row and images go to the generator (only those
    # images are kept, not every session's)
    first_key = {}
    for s in sessions:
        first_key[s.subject] = min(first_key.get(s.subject, s.session or ''), s.session or '')
    feats, rows, first = [], [], {}
    for s in tqdm(sessions, desc='clinical head: image features', unit='session',
                  disable=not progress, leave=False):
        images, _ = filled_images(imputer, s)
        feats.append(image_features(images, tuple(mods), res))
        rows.append(dict(s.clinical))
        if (s.session or '') == first_key[s.subject]:
            first[s.subject] = (dict(s.clinical), images)
    first = {k: first[k] for k in sorted(first)}
    feats_a = np.stack(feats) if feats else np.zeros((0, 0))
    head = ClinicalHead.fit(rows, feats_a, schema, seed=seed)
    # p(images | row): the images of each participant's first session on its encoded row
    comp_mods = [m for m in mods if m in _GENERATED_IMAGES]
    components = None
    if comp_mods and len(first) >= 3:
        from ..preprocessing.templates import load_template

        design = np.array([head.encoder.encode(row, '') for row, _ in first.values()], float)
        components = ImageComponents.fit([im for _, im in first.values()],
                                         load_template(res).mask.astype(bool), comp_mods,
                                         design)
    generator = CopulaGenerator.fit([row for row, _ in first.values()], schema, seed=seed)
    info = {'n_sessions': len(sessions), 'n_participants': len(first),
            'head_columns': head.columns, 'schema': schema}
    LOGGER.info('clinical head fitted on %d session(s): %s', len(sessions),
                ', '.join(head.columns) or 'no column with enough values')
    return TabularModel(head, generator, {'res': int(res), 'modalities': mods,
                                          'names': feature_names(mods, res)}, info, components)


def impute_clinical(tab: TabularModel, imputer, session) -> tuple[dict, dict, list[str]]:
    """Fill the session's missing clinical values that the head models.

    Returns
    -------
    values : dict
        The session's clinical values with the imputed ones filled in.
    imputed : dict
        column -> prediction (:meth:`ClinicalHead.predict`).
    synthesized : list of str
        Modalities synthesized (from the images alone) for the image features.
    """
    wanted = [c for c in tab.head.columns if _is_missing(session.clinical.get(c))]
    if not wanted:
        return dict(session.clinical), {}, []
    feats, synthesized = (session_features(imputer, session, tab.res) if tab.head.use_images
                          else (None, []))
    imputed = tab.head.predict(dict(session.clinical), feats, wanted)
    values = dict(session.clinical)
    values.update({c: p['value'] for c, p in imputed.items()})
    return values, imputed, synthesized
