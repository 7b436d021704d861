"""Clinical variables and notes as cross-attention tokens (ACADiff structured conditioning).

The schema comes from the clinical table (``bids.clinical.ClinicalTable.schema()``) and is
stored in the model card::

    {'age': {'type': 'continuous', 'mean': 71.2, 'std': 6.9},
     'sex': {'type': 'categorical', 'levels': ['F', 'M']},
     'notes': {'type': 'text'}}

Each column becomes one token of width ``context_dim``: a continuous value is normalized with the
schema's mean/std and projected; a categorical value is embedded (unknown levels count as
missing); a note is embedded with all-MiniLM-L6-v2 (:mod:`.text`) and projected. A missing value
is a learned per-column "missing" token (the missing indicator). A column-identity embedding is
added to every token and a constant null token is appended so the context is never empty.
During training each variable is dropped at random (:meth:`ClinicalEncoder.forward`
``drop_prob``) so any subset may be absent at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .text import TEXT_DIM, encode_notes

__all__ = ['ClinicalEncoder', 'ClinicalBatch', 'clinical_batch', 'validate_schema']


def validate_schema(schema: dict) -> dict:
    """Check a clinical schema; return it with sorted keys (the token order)."""
    out = {}
    for name in sorted(schema):
        col = schema[name]
        kind = col.get('type') if isinstance(col, dict) else None
        if kind == 'continuous':
            std = float(col.get('std') or 1.0)
            out[name] = {'type': kind, 'mean': float(col.get('mean') or 0.0),
                         'std': std if std > 0 and math.isfinite(std) else 1.0}
        elif kind == 'categorical':
            out[name] = {'type': kind, 'levels': [str(v) for v in col.get('levels', [])]}
        elif kind == 'text':
            out[name] = {'type': kind}
        else:
            raise ValueError(f'clinical schema: column {name!r} has unknown type {kind!r}')
    return out


@dataclass
class ClinicalBatch:
    """Clinical values of a batch, as tensors.

    values : torch.Tensor, shape (B, K), float32
        Normalized continuous value or level index (as float) per column; 0 where missing.
    missing : torch.Tensor, shape (B, K), bool
    text : torch.Tensor, shape (B, K, 384), float32
        Note embeddings (zero for non-text columns).
    """

    values: torch.Tensor
    missing: torch.Tensor
    text: torch.Tensor

    def index(self, idx: torch.Tensor | slice) -> ClinicalBatch:
        return ClinicalBatch(self.values[idx], self.missing[idx], self.text[idx])

    def to(self, device) -> ClinicalBatch:
        return ClinicalBatch(self.values.to(device), self.missing.to(device), self.text.to(device))


def _is_missing(v: object) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and not math.isfinite(v):
        return True
    return isinstance(v, str) and v.strip().lower() in ('', 'n/a', 'nan', 'na')


def clinical_batch(rows: list[dict], schema: dict) -> ClinicalBatch:
    """Turn clinical dicts (``SessionArrays.clinical``) into a :class:`ClinicalBatch`.

    Unknown categorical levels and unparsable numbers count as missing.
    """
    schema = validate_schema(schema)
    cols = list(schema)
    b, k = len(rows), len(cols)
    values = np.zeros((b, k), np.float32)
    missing = np.ones((b, k), bool)
    text = np.zeros((b, k, TEXT_DIM), np.float32)
    notes: list[tuple[int, int, str]] = []
    for i, row in enumerate(rows):
        for j, name in enumerate(cols):
            v, col = row.get(name), schema[name]
            if _is_missing(v):
                continue
            if col['type'] == 'continuous':
                try:
                    x = float(v)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    continue
                if math.isfinite(x):
                    values[i, j] = (x - col['mean']) / col['std']
                    missing[i, j] = False
            elif col['type'] == 'categorical':
                if str(v) in col['levels']:
                    values[i, j] = col['levels'].index(str(v))
                    missing[i, j] = False
            else:
                notes.append((i, j, str(v)))
    if notes:
        emb = encode_notes([t for _, _, t in notes])
        for (i, j, _), e in zip(notes, emb):
            text[i, j] = e
            missing[i, j] = False
    return ClinicalBatch(torch.from_numpy(values), torch.from_numpy(missing),
                         torch.from_numpy(text))


class ClinicalEncoder(nn.Module):
    """Clinical tokens for cross-attention.

    Args:
        schema: clinical schema (see module docstring).
        dim: token width (the UNet's ``cross_attention_dim``).
    """

    def __init__(self, schema: dict, dim: int) -> None:
        super().__init__()
        self.schema = validate_schema(schema)
        k = len(self.schema)
        self.dim = dim
        self.column_embedding = nn.Parameter(torch.randn(k + 1, dim) * 0.02)
        self.missing_token = nn.Parameter(torch.randn(max(k, 1), dim) * 0.02)
        self.continuous = nn.ModuleDict()
        self.categorical = nn.ModuleDict()
        self.text = nn.ModuleDict()
        for name, col in self.schema.items():
            if col['type'] == 'continuous':
                self.continuous[name] = nn.Linear(1, dim)
            elif col['type'] == 'categorical':
                self.categorical[name] = nn.Embedding(max(len(col['levels']), 1), dim)
            else:
                self.text[name] = nn.Linear(TEXT_DIM, dim)

    @property
    def num_tokens(self) -> int:
        return len(self.schema) + 1

    def forward(self, batch: ClinicalBatch, drop_prob: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Tokens of a batch.

        Parameters
        ----------
        batch : ClinicalBatch
        drop_prob : float
            Training only: probability of treating each observed value as missing.
        generator : torch.Generator, optional

        Returns
        -------
        torch.Tensor, shape (B, K + 1, dim)
        """
        b = batch.values.shape[0]
        missing = batch.missing
        if drop_prob > 0:
            drop = torch.rand(missing.shape, generator=generator) < drop_prob
            missing = missing | drop.to(missing.device)
        tokens = []
        for j, (name, col) in enumerate(self.schema.items()):
            v = batch.values[:, j]
            if col['type'] == 'continuous':
                tok = self.continuous[name](v[:, None])
            elif col['type'] == 'categorical':
                tok = self.categorical[name](v.long().clamp(min=0))
            else:
                tok = self.text[name](batch.text[:, j])
            tok = torch.where(missing[:, j:j + 1], self.missing_token[j].expand(b, -1), tok)
            tokens.append(tok + self.column_embedding[j])
        tokens.append(self.column_embedding[-1].expand(b, -1))
        return torch.stack(tokens, dim=1)
