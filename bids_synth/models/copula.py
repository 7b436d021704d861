"""A Gaussian copula over a mixed-type clinical table: fit, sample, condition (``--where``).

The synthetic-subject generator of ``bids-synth-generate`` draws one clinical row per subject
from this model, then the image model synthesizes every modality conditioned on that row.

Each column gets a marginal and a latent normal score:

- continuous: the empirical quantile function (stored as up to 101 quantiles, linearly
  interpolated; values are rounded to the column's observed precision, so integer scores stay
  integers);
- categorical: the level frequencies cut [0, 1] into intervals, one per level (ordered as in the
  schema); a row's score is the normal quantile of a uniform draw inside its level's interval
  (the frequency encoding of SDV's GaussianCopula);
- text: not modelled (written as ``n/a``).

The latent correlation is estimated with pairwise-complete rows (missing cells are left out)
and projected to the nearest correlation matrix. Conditions (``diagnosis=AD``, ``age=70:80``)
are met by rejection: batches are drawn until enough rows satisfy them.

>>> import numpy as np
>>> rows = [{'age': 60.0 + i, 'dx': 'AD' if i % 3 == 0 else 'CN'} for i in range(30)]
>>> schema = {'age': {'type': 'continuous'}, 'dx': {'type': 'categorical',
...                                               'levels': ['CN', 'AD']}}
>>> gen = CopulaGenerator.fit(rows, schema, seed=0)
>>> out = gen.sample(5, np.random.default_rng(1), parse_where(['dx=AD', 'age=70:80'], schema))
>>> all(r['dx'] == 'AD' and 70 <= r['age'] <= 80 for r in out)
True
"""

from __future__ import annotations

import math
import re

import numpy as np
from scipy import stats

from ..errors import UsageError

__all__ = ['CopulaGenerator', 'Condition', 'parse_where']

_N_QUANTILES = 101
_BATCH = 512
_MAX_BATCHES = 400


class Condition:
    """One ``--where`` condition: a level set (categorical) or a closed range (continuous)."""

    def __init__(self, column: str, levels: set[str] | None = None,
                 low: float = -math.inf, high: float = math.inf, text: str = ''):
        self.column, self.levels, self.low, self.high = column, levels, low, high
        self.text = text or column

    def holds(self, value) -> bool:
        if value is None:
            return False
        if self.levels is not None:
            return str(value) in self.levels
        return self.low <= float(value) <= self.high

    def __repr__(self) -> str:
        return f'Condition({self.text!r})'


def _number(text: str, where: str) -> float:
    try:
        out = float(text)
    except ValueError:
        raise UsageError(f'--where {where!r}: {text!r} is not a number') from None
    if not math.isfinite(out):
        raise UsageError(f'--where {where!r}: {text!r} is not a finite number')
    return out


def parse_where(conditions, schema: dict) -> list[Condition]:
    """Parse ``COL=LEVEL[,LEVEL]``, ``COL=VALUE``, ``COL=LOW:HIGH`` (either end may be empty).

    Raises
    ------
    UsageError
        One line naming the condition: bad form, unknown column, text column, unknown level,
        non-number, empty range.

    >>> s = {'age': {'type': 'continuous'}, 'sex': {'type': 'categorical', 'levels': ['F', 'M']}}
    >>> parse_where(['sex=F', 'age=:80'], s)
    [Condition('sex=F'), Condition('age=:80')]
    >>> parse_where(['sex=X'], s)
    Traceback (most recent call last):
    ...
    bids_synth.errors.UsageError: --where 'sex=X': sex has no level 'X' (levels: F, M)
    """
    out = []
    for text in conditions or []:
        m = re.fullmatch(r'\s*([^=\s]+)\s*=\s*(.+?)\s*', text)
        if not m:
            raise UsageError(f'--where {text!r}: expected COLUMN=VALUE, COLUMN=LOW:HIGH or '
                             'COLUMN=LEVEL[,LEVEL...]')
        col, value = m.groups()
        if col not in schema:
            raise UsageError(f'--where {text!r}: no column {col!r} in the model\'s clinical '
                             f'schema (columns: {", ".join(schema) or "none"})')
        kind = schema[col].get('type')
        if kind == 'categorical':
            levels = [v.strip() for v in value.split(',')]
            known = [str(v) for v in schema[col].get('levels', [])]
            bad = [v for v in levels if v not in known]
            if bad:
                raise UsageError(f'--where {text!r}: {col} has no level {bad[0]!r} '
                                 f'(levels: {", ".join(known)})')
            out.append(Condition(col, levels=set(levels), text=text))
        elif kind == 'continuous':
            if ':' in value:
                lo_t, _, hi_t = value.partition(':')
                lo = _number(lo_t, text) if lo_t.strip() else -math.inf
                hi = _number(hi_t, text) if hi_t.strip() else math.inf
            else:
                lo = hi = _number(value, text)
            if lo > hi:
                raise UsageError(f'--where {text!r}: empty range ({lo:g} > {hi:g})')
            out.append(Condition(col, low=lo, high=hi, text=text))
        else:
            raise UsageError(f'--where {text!r}: {col} is a {kind} column; only continuous and '
                             'categorical columns can be conditioned on')
    return out


def _decimals(values: np.ndarray) -> int:
    """Smallest number of decimals (0-3) that represents every value.

    >>> _decimals(np.array([1.0, 2.0])), _decimals(np.array([71.5, 70.2]))
    (0, 1)
    """
    for d in range(4):
        if np.allclose(values, np.round(values, d), atol=1e-9):
            return d
    return 6


def _nearest_correlation(c: np.ndarray) -> np.ndarray:
    """Clip negative eigenvalues and rescale to a unit diagonal."""
    c = np.nan_to_num((c + c.T) / 2, nan=0.0)
    np.fill_diagonal(c, 1.0)
    w, v = np.linalg.eigh(c)
    c = (v * np.clip(w, 1e-6, None)) @ v.T
    d = np.sqrt(np.diag(c))
    return c / d[:, None] / d[None, :]


class CopulaGenerator:
    """Gaussian copula over the continuous and categorical columns of a clinical schema."""

    def __init__(self, columns: dict, corr: np.ndarray, n_rows: int, text_columns=()):
        self.columns = columns  # name -> marginal (see fit)
        self.corr = np.asarray(corr, float)
        self.n_rows = int(n_rows)
        self.text_columns = list(text_columns)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, rows: list[dict], schema: dict, seed: int = 0) -> CopulaGenerator:
        """Fit marginals and the latent correlation to ``rows`` (one dict per participant).

        Columns with fewer than two observed values are left out (written as ``n/a``).
        """
        rng = np.random.default_rng(seed)
        columns: dict = {}
        scores = []
        text = [c for c, s in schema.items() if s.get('type') == 'text']
        for col, spec in schema.items():
            kind = spec.get('type')
            raw = [r.get(col) for r in rows]
            if kind == 'continuous':
                vals = np.array([np.nan if v is None else float(v) for v in raw])
                obs = vals[np.isfinite(vals)]
                if len(obs) < 2:
                    text.append(col)
                    continue
                q = np.quantile(obs, np.linspace(0, 1, _N_QUANTILES))
                columns[col] = {'type': 'continuous', 'quantiles': q.tolist(),
                                'decimals': _decimals(obs)}
                z = np.full(len(rows), np.nan)
                ok = np.isfinite(vals)
                ranks = stats.rankdata(vals[ok])
                z[ok] = stats.norm.ppf(ranks / (ok.sum() + 1))
            elif kind == 'categorical':
                levels = [str(v) for v in spec.get('levels', [])]
                vals = [None if v is None else str(v) for v in raw]
                counts = np.array([sum(v == lev for v in vals) for lev in levels], float)
                if counts.sum() < 2:
                    text.append(col)
                    continue
                probs = (counts + 0.01) / (counts + 0.01).sum()  # unseen levels stay possible
                edges = np.concatenate([[0.0], np.cumsum(probs)])
                edges[-1] = 1.0
                columns[col] = {'type': 'categorical', 'levels': levels,
                                'probabilities': probs.tolist()}
                z = np.full(len(rows), np.nan)
                for i, v in enumerate(vals):
                    if v in levels:
                        k = levels.index(v)
                        u = rng.uniform(edges[k], edges[k + 1])
                        z[i] = stats.norm.ppf(np.clip(u, 1e-6, 1 - 1e-6))
            else:
                continue
            scores.append(z)
        z = np.stack(scores, 1) if scores else np.zeros((len(rows), 0))
        k = z.shape[1]
        corr = np.eye(k)
        for i in range(k):
            for j in range(i + 1, k):
                both = np.isfinite(z[:, i]) & np.isfinite(z[:, j])
                if both.sum() >= 3 and z[both, i].std() > 0 and z[both, j].std() > 0:
                    corr[i, j] = corr[j, i] = np.corrcoef(z[both, i], z[both, j])[0, 1]
        return cls(columns, _nearest_correlation(corr), len(rows), text)

    # ----------------------------------------------------------------- sampling
    def _decode(self, z: np.ndarray) -> list[dict]:
        u = stats.norm.cdf(z)
        rows = [dict.fromkeys(self.text_columns) for _ in range(len(z))]
        for j, (col, m) in enumerate(self.columns.items()):
            if m['type'] == 'continuous':
                q = np.asarray(m['quantiles'])
                x = np.interp(u[:, j], np.linspace(0, 1, len(q)), q)
                x = np.round(x, m['decimals'])
                for i in range(len(z)):
                    rows[i][col] = float(x[i])
            else:
                edges = np.cumsum(m['probabilities'])
                idx = np.minimum(np.searchsorted(edges, u[:, j], side='right'),
                                 len(m['levels']) - 1)
                for i in range(len(z)):
                    rows[i][col] = m['levels'][int(idx[i])]
        return rows

    def sample(self, n: int, rng: np.random.Generator,
               conditions: list[Condition] | None = None) -> list[dict]:
        """``n`` rows that satisfy every condition (rejection sampling).

        Raises
        ------
        UsageError
            When the conditions hold for none of the draws (a combination the fitted table
            makes vanishingly rare, or a range outside the column's observed values).
        """
        conditions = conditions or []
        for c in conditions:
            m = self.columns.get(c.column)
            if m is None:
                raise UsageError(f'--where {c.text!r}: the generator has no model of '
                                 f'{c.column} (too few observed values)')
            if m['type'] == 'continuous':
                lo, hi = m['quantiles'][0], m['quantiles'][-1]
                if c.high < lo or c.low > hi:
                    raise UsageError(f'--where {c.text!r}: outside the values the model was '
                                     f'fitted on ({c.column} {lo:g} to {hi:g})')
        out: list[dict] = []
        chol = np.linalg.cholesky(self.corr) if len(self.columns) else None
        tried = 0
        while len(out) < n:
            if tried >= _MAX_BATCHES:
                text = ' '.join(c.text for c in conditions)
                raise UsageError(f'--where {text}: {len(out)} of {n} rows met the conditions '
                                 f'in {tried * _BATCH} draws; the combination is too rare in '
                                 'the fitted table')
            z = rng.standard_normal((_BATCH, len(self.columns)))
            if chol is not None:
                z = z @ chol.T
            tried += 1
            for row in self._decode(z):
                if all(c.holds(row.get(c.column)) for c in conditions):
                    out.append(row)
                    if len(out) == n:
                        break
        return out

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        # 'order': the rows and columns of the correlation; a JSON writer that sorts keys
        # must not scramble them
        return {'kind': 'gaussian copula', 'columns': self.columns, 'order': list(self.columns),
                'correlation': self.corr.tolist(), 'n_rows': self.n_rows,
                'text_columns': self.text_columns}

    @classmethod
    def from_dict(cls, d: dict) -> CopulaGenerator:
        order = d.get('order') or list(d['columns'])
        return cls({c: d['columns'][c] for c in order}, np.asarray(d['correlation'], float),
                   d.get('n_rows', 0), d.get('text_columns', []))
