"""Training data: a cohort as tensors, intensity scales and random input masking."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.conditioning import ClinicalBatch, clinical_batch
from ..models.config import ModelSpec
from ..models.imputer import SessionArrays
from ..models.synthesis import stack_images

__all__ = ['Cohort', 'build_cohort', 'channel_scales', 'random_inputs']


@dataclass
class Cohort:
    """Sessions stacked in the model's channel order.

    images : torch.Tensor, shape (N, C_total, X, Y, Z), float32 (zeros where missing)
    present : torch.Tensor, shape (N, M), bool
    clinical : ClinicalBatch, N rows
    subjects : list of str
    """

    images: torch.Tensor
    present: torch.Tensor
    clinical: ClinicalBatch
    subjects: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def build_cohort(sessions: list[SessionArrays], spec: ModelSpec, schema: dict) -> Cohort:
    """Stack sessions (shapes checked, unknown modalities ignored)."""
    imgs, pres = [], []
    for s in sessions:
        where = f'sub-{s.subject}' + (f'_ses-{s.session}' if s.session else '')
        known = {m: v for m, v in s.images.items() if m in spec.modalities}
        a, p = stack_images(known, spec, where)
        imgs.append(a)
        pres.append(p)
    return Cohort(torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(pres)),
                  clinical_batch([s.clinical or {} for s in sessions], schema),
                  [s.subject for s in sessions])


def channel_scales(cohort: Cohort, spec: ModelSpec, mask: np.ndarray,
                   q: float = 0.99) -> tuple[float, ...]:
    """Per image channel, the ``q`` quantile of its absolute value in ``mask`` over the
    sessions where its modality is present (1.0 for a channel without data)."""
    m = torch.from_numpy(np.asarray(mask, bool))
    out = []
    for j, sl in enumerate(spec.channel_slices().values()):
        rows = cohort.present[:, j]
        for c in range(sl.start, sl.stop):
            v = cohort.images[rows, c][:, m].abs().flatten()
            if v.numel() > 2_000_000:  # a regular subsample keeps torch.quantile quick
                v = v[::v.numel() // 1_000_000 + 1]
            val = float(torch.quantile(v, q)) if v.numel() else 1.0
            out.append(val if val > 1e-8 else 1.0)
    return tuple(out)


def random_inputs(present: torch.Tensor, generator: torch.Generator,
                  keep_prob: float = 0.5, all_prob: float = 0.1) -> torch.Tensor:
    """Random non-empty subsets of the present modalities to use as inputs.

    Each present modality is kept with ``keep_prob``; with probability ``all_prob`` all are
    kept (pure reconstruction). When two or more are present at least one is hidden otherwise,
    and at least one is always kept, so every subset size occurs.

    Parameters
    ----------
    present : torch.Tensor, shape (B, M), bool

    Returns
    -------
    torch.Tensor, shape (B, M), bool, a subset of ``present``
    """
    b, m = present.shape
    keep = (torch.rand((b, m), generator=generator) < keep_prob) & present
    everything = torch.rand((b,), generator=generator) < all_prob
    scores = torch.rand((b, m), generator=generator) + (~present) * 10  # present ones first
    order = scores.argsort(dim=1)
    for i in range(b):
        n = int(present[i].sum())
        if n == 0:
            continue
        if everything[i]:
            keep[i] = present[i]
            continue
        if not keep[i].any():
            keep[i, order[i, 0]] = True
        if n >= 2 and bool((keep[i] == present[i]).all()):
            keep[i, order[i, n - 1]] = False
    return keep
