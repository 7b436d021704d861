"""PDS stage 2 for fMRI and dMRI: tissue refinement (TR) and microstructure refinement (MR).

PDS (Shen et al.) synthesizes fMRI <-> dMRI in two stages: a generator, then a refinement
network that takes the generated maps, the source modality and the subject's tissue maps and
regresses refined maps (MSE + L1). Here stage 1 is the ridge (:mod:`.baseline`) and stage 2 is
fitted on its *cross-fitted* predictions (each training session predicted by a ridge that never
saw its subject, :func:`bids_synth.training.ridge.cross_fit`), so it learns to correct the
ridge as it behaves on new subjects.

**TR**, per channel ``c`` of a bold target and per b0 / gradient-segment channel of a dwi
target (:data:`TR_SKIP`: the tensor and FA/MD channels stay the ridge's), is a linear model
shared by all voxels of all subjects (15 coefficients, so a few dozen sessions fit it) on the
features

    p_c, l_c, t_k, p_c t_k, s t_k, l_c t_k, 1          (k = CSF, GM, WM)

``p_c`` the ridge's prediction, ``l_c`` its 3x3x3 local mean minus itself (sharpening or
smoothing), ``t_k`` the tissue probabilities (:mod:`bids_synth.preprocessing.tissues`: the
session's T1w segmented with template priors, else the template's) and ``s`` the first channel
of the source modality (bold's first segment mean for a dwi target, dwi's b0 for bold; 0 when
absent). The ridge is linear in its inputs; TR adds what is not (a tissue-dependent
contrast, a partial-volume boundary). It is fitted by iteratively reweighted least squares of
the loss ``MSE + L1`` (:data:`L1_WEIGHT`) with the voxel weights of :mod:`.patterns`. One fit per
*context*, i.e. whether the source modality and a T1w are among the inputs.

**MR** (dwi) makes the tensor, the FA/MD channels and the gradient-segment channels agree.
The tensor's FA and MD, the FA and MD channels and the MD implied by the segment means
(``-ln(mean seg / b0)``, put on the MD scale by a least-squares factor) are blended with
weights that sum to one and no intercept, fitted by least squares to the training sessions'
own tensors; the predicted tensor's eigenvalues are then moved (eigenvectors kept) so that its
FA and MD are the blended ones, and the FA/MD channels are set to them. Every written map
(FA, MD, AD, RD, the tensor, the rendered series) then tells one story. MR is off in
``group``: it gained nothing measurable and cost the downstream classification.

``bench/pds.py`` measures what each part (TR, MR, the pattern weights) adds (docs/pds.md).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence

import numpy as np

from ..bids.modalities import MODALITIES, TENSOR_CHANNELS
from ..errors import ModelError
from ..preprocessing.tissues import tissue_maps
from .imputer import SessionArrays

__all__ = ['PDS_TARGETS', 'SOURCE', 'Refinement', 'fit_refinement', 'tr_features',
           'microstructure_estimates', 'set_microstructure']

LOG = logging.getLogger('bids_synth.models.refinement')

#: targets refined, and the source modality of each (PDS's pair)
PDS_TARGETS = ('bold', 'dwi')
SOURCE = {'bold': 'dwi', 'dwi': 'bold'}
#: weight of the L1 term of the TR loss (PDS stage 2: MSE + L1)
L1_WEIGHT = 0.1
#: ridge penalty of the TR/MR fits, relative to each feature's weighted mean square
PENALTY = 1e-4
N_TR = 15
#: TR coefficients that leave a channel as the ridge predicted it
IDENTITY = np.eye(N_TR)[0]
#: channels TR leaves to the ridge (and MR): refitting the tensor and its FA/MD, pooled over
#: subjects, raised the WM MD error (3.0% -> 3.8%) and lowered the downstream CN/MCI/AD
#: accuracy (an earlier run of bench/pds.py, docs/pds.md); elsewhere it gains without either
TR_SKIP: tuple[str, ...] = TENSOR_CHANNELS + ('fa', 'md')
FA_MAX = 0.95
#: training sessions an input context needs: with fewer, the cross-fitted ridges (fitted on
#: 3/4 of them) are much worse than the final one and TR over-corrects it (a 6-subject fit
#: cost one bold 1.8 dB against the cohort mean)
MIN_SESSIONS = 10


def context(inputs: Sequence[str], target: str) -> str:
    """The fit a prediction uses: whether the source modality and a T1w are inputs.

    >>> context(['T1w', 'FDG'], 'dwi')
    'src0_t1w1'
    """
    return f'src{int(SOURCE[target] in inputs)}_t1w{int("T1w" in inputs)}'


def _context_inputs(ctx: str, target: str) -> list[str]:
    return ([SOURCE[target]] if ctx.startswith('src1') else []) + (
        ['T1w'] if ctx.endswith('t1w1') else [])


CONTEXTS = tuple(f'src{a}_t1w{b}' for a in (1, 0) for b in (1, 0))


def tr_features(pred_c: np.ndarray, tissues: np.ndarray, source0: np.ndarray | None,
                mask: np.ndarray) -> np.ndarray:
    """TR features (V, :data:`N_TR`) of one channel inside ``mask`` (module docstring)."""
    from scipy.ndimage import uniform_filter

    m = mask.astype(np.float32)
    # local mean over the brain's voxels only (no pull towards the 0 outside)
    num = uniform_filter(pred_c * m, 3)
    den = uniform_filter(m, 3)
    loc = (num / np.maximum(den, 1e-6) - pred_c)[mask]
    p = pred_c[mask]
    t = [tissues[k][mask] for k in range(3)]
    s = np.zeros_like(p) if source0 is None else source0[mask]
    cols = [p, loc, *t, *(p * tk for tk in t), *(s * tk for tk in t), *(loc * tk for tk in t),
            np.ones_like(p)]
    return np.stack(cols, 1).astype(np.float64)


def _solve(xtx: np.ndarray, xty: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.clip(np.diag(xtx), 1e-12, None))
    a = xtx / d[:, None] / d[None] + PENALTY * np.eye(len(d))
    return np.linalg.solve(a, xty / d) / d


def _irls(blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], iters: int = 4
          ) -> np.ndarray:
    """Coefficients minimizing sum w (r^2 + L1_WEIGHT s |r|) over ``blocks`` of (X, y, w), by
    iteratively reweighted least squares (the L1 term as a weight s / (2 |r|) on r^2; ``s`` the
    RMS of the starting residual, so the weight is scale-free), starting from the identity on
    column 0 (the ridge's prediction unchanged)."""
    n_f = blocks[0][0].shape[1]
    beta = np.zeros(n_f)
    beta[0] = 1.0
    scale = np.sqrt(np.mean(np.concatenate([(y - x @ beta) ** 2 for x, y, _ in blocks])))
    eps = 0.05 * max(float(scale), 1e-6)
    for _ in range(iters):
        xtx, xty = np.zeros((n_f, n_f)), np.zeros(n_f)
        for x, y, w in blocks:
            r = y - x @ beta
            ww = w * (1.0 + L1_WEIGHT * scale / (2.0 * np.maximum(np.abs(r), eps)))
            xw = x * ww[:, None]
            xtx += xw.T @ x
            xty += xw.T @ y
        beta = _solve(xtx, xty)
    return beta


# ---------------------------------------------------------------- microstructure (dwi)
def _eig(pred: np.ndarray, mask: np.ndarray):
    names = MODALITIES['dwi'].channels
    from ..preprocessing.tensor import to_matrix

    log_el = np.stack([pred[names.index(c)][mask] for c in TENSOR_CHANNELS], 1)
    w, v = np.linalg.eigh(to_matrix(log_el.astype(np.float64)))
    return np.exp(w), v


def _fa_md(lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FA and MD of eigenvalues (V, 3), dipy's definitions."""
    from dipy.reconst.dti import fractional_anisotropy, mean_diffusivity

    return fractional_anisotropy(lam), mean_diffusivity(lam)


def microstructure_estimates(pred: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """(FA estimates (V, 2), MD estimates (V, 3)) of a dwi representation inside ``mask``:
    the tensor's FA, the FA channel; the tensor's MD, the MD channel, the segment MD
    ``-ln(mean seg / b0)`` (in units of 1 / b, not yet on the MD scale)."""
    names = MODALITIES['dwi'].channels
    lam, _ = _eig(pred, mask)
    fa_t, md_t = _fa_md(lam)
    segs = [i for i, c in enumerate(names) if c.startswith('seg')]
    b0 = pred[names.index('b0')][mask]
    seg = np.mean([pred[i][mask] for i in segs], 0)
    md_s = -np.log(np.clip(seg / np.maximum(b0, 1e-6), 1e-3, 1.0))
    fa_f = np.stack([fa_t, pred[names.index('fa')][mask]], 1)
    md_f = np.stack([md_t, pred[names.index('md')][mask], md_s], 1)
    return fa_f.astype(np.float64), md_f.astype(np.float64)


def blend(estimates: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """MR's blend: ``coef`` = weights (summing to one) of the columns of ``estimates``, then
    the factors that put each column on the first one's scale (the segment MD's)."""
    n = estimates.shape[1]
    return estimates @ (coef[:n] * coef[n:])


def _fit_blend(blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Weights summing to one (and scale factors, :func:`blend`) of the estimates in ``blocks``
    of (estimates (V, n), truth (V,), voxel weights (V,)), by weighted least squares."""
    n = blocks[0][0].shape[1]
    scale = np.ones(n)
    for j in range(2, n):  # a column on another scale (segment MD): its factor to column 0
        num = sum(float(np.sum(w * e[:, j] * e[:, 0])) for e, _, w in blocks)
        den = sum(float(np.sum(w * e[:, j] ** 2)) for e, _, w in blocks)
        scale[j] = num / den if den > 0 else 0.0
    # truth - e_1 = sum_{j != 1} a_j (e_j - e_1); a_1 = 1 - sum a_j
    others = [j for j in range(n) if j != 1]
    xtx, xty = np.zeros((n - 1, n - 1)), np.zeros(n - 1)
    for e, y, w in blocks:
        es = e * scale
        x = es[:, others] - es[:, [1]]
        xw = x * w[:, None]
        xtx += xw.T @ x
        xty += xw.T @ (y - es[:, 1])
    a = np.linalg.solve(xtx + 1e-9 * np.eye(n - 1) * max(np.trace(xtx), 1e-12), xty)
    weights = np.zeros(n)
    weights[others] = a
    weights[1] = 1.0 - a.sum()
    return np.concatenate([weights, scale])


def set_microstructure(pred: np.ndarray, mask: np.ndarray, fa: np.ndarray, md: np.ndarray
                       ) -> np.ndarray:
    """``pred`` with its tensor's eigenvalues moved to FA ``fa`` and MD ``md`` (eigenvectors and
    the shape of the eigenvalue spread kept) and its FA/MD channels set to them.

    >>> from bids_synth.preprocessing.tensor import log_tensor, to_elements
    >>> names = MODALITIES['dwi'].channels
    >>> p = np.zeros((len(names), 1, 1, 1), np.float32); m = np.ones((1, 1, 1), bool)
    >>> L = log_tensor(to_elements(np.diag([1.7, 0.3, 0.3])))
    >>> for k, c in enumerate(TENSOR_CHANNELS): p[names.index(c)] = L[k]
    >>> q = set_microstructure(p, m, np.array([0.5]), np.array([0.8]))
    >>> [round(float(x), 3) for x in _fa_md(_eig(q, m)[0])]
    [0.5, 0.8]
    """
    from ..preprocessing.tensor import to_elements

    names = MODALITIES['dwi'].channels
    lam, vec = _eig(pred, mask)
    fa = np.clip(fa, 0.0, FA_MAX)
    md = np.clip(md, 1e-2, None)
    dev = lam - lam.mean(1, keepdims=True)
    norm = np.linalg.norm(dev, axis=1, keepdims=True)
    unit = np.where(norm > 1e-9, dev / np.maximum(norm, 1e-12), 0.0)
    size = md * fa * np.sqrt(3.0 / (1.5 - fa ** 2))
    new = np.clip(md[:, None] + unit * size[:, None], 1e-3, None)
    log_m = np.einsum('vij,vj,vkj->vik', vec, np.log(new), vec)
    out = pred.copy()
    el = to_elements(log_m)
    for k, c in enumerate(TENSOR_CHANNELS):
        out[names.index(c)][mask] = el[:, k]
    out[names.index('fa')][mask] = fa
    out[names.index('md')][mask] = md
    return out


# ---------------------------------------------------------------------------- model
class Refinement:
    """Fitted TR coefficients per (target, context) and MR blends per context."""

    def __init__(self, tr: dict[str, np.ndarray], mr: dict[str, np.ndarray],
                 priors: np.ndarray, info: dict):
        self.tr = tr  # 'target/context' -> (C, N_TR)
        self.mr = mr  # 'context/fa', 'context/md' -> weights then scales (:func:`blend`)
        self.priors = priors  # (3, X, Y, Z) template tissue maps
        self.info = info

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t in PDS_TARGETS if any(k.startswith(t + '/') for k in self.tr)
                     or (t == 'dwi' and self.mr))

    def apply(self, target: str, pred: np.ndarray, inputs: dict, mask: np.ndarray
              ) -> tuple[np.ndarray, dict]:
        """(refined prediction, provenance record) of ``target`` given the input images."""
        ctx = context(list(inputs), target)
        record = {'stage': 'PDS stage 2', 'context': ctx}
        tr = self.tr.get(f'{target}/{ctx}')
        mr_fa, mr_md = self.mr.get(f'{ctx}/fa'), self.mr.get(f'{ctx}/md')
        if tr is None and (target != 'dwi' or mr_fa is None):
            record['applied'] = False
            return pred, record
        out = pred.copy()
        if tr is not None:
            t1 = inputs.get('T1w')
            tis, src = tissue_maps(None if t1 is None else t1[0], self.priors, mask)
            s = inputs.get(SOURCE[target])
            for c in range(pred.shape[0]):
                if not np.array_equal(tr[c], IDENTITY):
                    x = tr_features(pred[c], tis, None if s is None else s[0], mask)
                    out[c][mask] = (x @ tr[c]).astype(np.float32)
            record.update(tissue_refinement=True, tissue_maps=src)
        if target == 'dwi' and mr_fa is not None:
            fa_f, md_f = microstructure_estimates(out, mask)
            out = set_microstructure(out, mask, blend(fa_f, mr_fa), blend(md_f, mr_md))
            record['microstructure_refinement'] = True
        record['applied'] = True
        record['pattern_weighting'] = bool(self.info.get('pattern_weighting'))
        return out, record

    # ---------------------------------------------------------------- storage
    def card(self) -> dict:
        return {'kind': 'PDS stage 2: tissue (TR) and microstructure (MR) refinement',
                'tr': sorted(self.tr), 'mr': sorted(self.mr), **self.info}

    def tensors(self, prefix: str = 'refine.') -> dict[str, np.ndarray]:
        out = {f'{prefix}tr.{k}': v.astype(np.float64) for k, v in self.tr.items()}
        out.update({f'{prefix}mr.{k}': v.astype(np.float64) for k, v in self.mr.items()})
        out[f'{prefix}priors'] = self.priors.astype(np.float32)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict, card: dict | None, prefix: str = 'refine.'
                     ) -> Refinement | None:
        """The refinement stored by :meth:`tensors` (None when the model has none)."""
        if not card or f'{prefix}priors' not in tensors:
            return None
        try:
            tr = {k: np.asarray(tensors[f'{prefix}tr.{k}']) for k in card['tr']}
            mr = {k: np.asarray(tensors[f'{prefix}mr.{k}']) for k in card['mr']}
        except KeyError as exc:
            raise ModelError(f'refinement lacks {exc}') from None
        info = {k: v for k, v in card.items() if k not in ('kind', 'tr', 'mr')}
        return cls(tr, mr, np.asarray(tensors[f'{prefix}priors']), info)


def fit_refinement(model, sessions: Sequence[SessionArrays], *, priors: np.ndarray,
                   seed: int = 0, folds: int = 4, tissue: bool = True,
                   microstructure: bool = False, pattern: bool = True,
                   min_sessions: int = MIN_SESSIONS) -> Refinement | None:
    """Fit PDS stage 2 on cross-fitted predictions of the ridge ``model`` (module docstring).

    ``tissue``, ``microstructure``, ``pattern``: the three parts. MR is off by default (what
    ``group`` fits): it showed no PSNR, FA or MD gain and cost the downstream test accuracy
    (bench/pds.py, docs/pds.md). A context is fitted from ``min_sessions`` training sessions
    that have its inputs and the target; returns None when the model has neither bold nor dwi,
    or no context has that many (then nothing is cross-fitted).
    """
    from ..training.ridge import cross_fit
    from .patterns import diagnosis_column, pattern_weights

    targets = [t for t in PDS_TARGETS if t in model.modalities]
    if not targets or not (tissue or microstructure):
        return None
    mask = np.asarray(model.mask, bool)
    counts = {f'{t}/{ctx}': sum(t in s.images and all(m in s.images for m in
                                                     _context_inputs(ctx, t)) for s in sessions)
              for t in targets for ctx in CONTEXTS}
    if max(counts.values()) < min_sessions:
        LOG.warning('PDS refinement not fitted: fewer than %d training sessions for every input '
                    'context (%s)', min_sessions, counts)
        return None
    fits = cross_fit(list(sessions), model, mask=mask, affine=model.affine, folds=folds,
                     seed=seed)
    dx = diagnosis_column(model.schema)
    reference = model.schema[dx]['levels'][0] if dx else None
    tissue_cache: dict[int, tuple[np.ndarray, str]] = {}

    def tissues_of(i: int, inputs: dict) -> np.ndarray:
        if 'T1w' not in inputs:
            return priors * mask
        if i not in tissue_cache:
            tissue_cache[i] = tissue_maps(inputs['T1w'][0], priors, mask)
        return tissue_cache[i][0]

    tr_coef: dict[str, np.ndarray] = {}
    mr_coef: dict[str, np.ndarray] = {}
    for target in targets:
        rows = [i for i, s in enumerate(sessions) if target in s.images]
        if pattern:
            weights = pattern_weights(
                mask, model.affine, [sessions[i].images[target] for i in rows],
                [sessions[i].clinical.get(dx) if dx else None for i in rows], reference)
        else:
            weights = mask.astype(np.float32)
        w = weights[mask].astype(np.float64)
        for ctx in CONTEXTS:
            need = _context_inputs(ctx, target)
            use = [i for i in rows if all(m in sessions[i].images for m in need)]
            if len(use) < min_sessions:
                continue
            preds, inputs_of = [], []
            for i in use:
                s = sessions[i]
                inp = {m: s.images[m] for m in need}
                preds.append(fits[i].predict(SessionArrays(s.subject, s.session, inp, s.clinical),
                                             (target,))[target].mean)
                inputs_of.append(inp)
            n_ch = preds[0].shape[0]
            if tissue:
                coef = np.tile(IDENTITY, (n_ch, 1))
                names = MODALITIES[target].channels
                refit = [c for c in range(n_ch) if names[c] not in TR_SKIP]
                for c in refit:
                    blocks = []
                    for i, p, inp in zip(use, preds, inputs_of):
                        src = inp.get(SOURCE[target])
                        x = tr_features(p[c], tissues_of(i, inp), None if src is None else src[0],
                                        mask)
                        blocks.append((x, sessions[i].images[target][c][mask].astype(np.float64),
                                       w))
                    coef[c] = _irls(blocks)
                tr_coef[f'{target}/{ctx}'] = coef
                refined = []
                for i, p, inp in zip(use, preds, inputs_of):
                    q = p.copy()
                    src = inp.get(SOURCE[target])
                    for c in refit:
                        q[c][mask] = tr_features(p[c], tissues_of(i, inp),
                                                 None if src is None else src[0], mask) @ coef[c]
                    refined.append(q)
                preds = refined
            if target == 'dwi' and microstructure:
                fa_blocks, md_blocks = [], []
                for i, p in zip(use, preds):
                    lam, _ = _eig(sessions[i].images['dwi'], mask)
                    fa_true, md_true = _fa_md(lam)
                    fa_f, md_f = microstructure_estimates(p, mask)
                    fa_blocks.append((fa_f, fa_true, w))
                    md_blocks.append((md_f, md_true, w))
                mr_coef[f'{ctx}/fa'] = _fit_blend(fa_blocks)
                mr_coef[f'{ctx}/md'] = _fit_blend(md_blocks)
    if not tr_coef and not mr_coef:
        LOG.warning('PDS refinement not fitted: too few sessions per context (%s)', counts)
        return None
    info = {'tissue_refinement': bool(tissue), 'microstructure_refinement': bool(microstructure),
            'pattern_weighting': bool(pattern), 'folds': folds, 'l1_weight': L1_WEIGHT,
            'sessions_per_context': counts,
            'fitted': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}
    return Refinement(tr_coef, mr_coef, np.asarray(priors, np.float32), info)
