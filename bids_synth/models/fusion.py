"""Attention-based adaptive fusion of the available modalities.

ACADiff adaptive fusion combined with AMM-Diff image-frequency fusion.

Each modality ``m`` has a small encoder that maps its wavelet coefficients (``8 C_m`` channels,
:mod:`.wavelet`) together with its high-pass Fourier features (``C_m`` channels,
:mod:`.frequency`) to a feature map ``F_m`` (``fusion_dim`` channels on the coefficient grid) and a token ``t_m`` (pooled ``F_m`` plus a modality
embedding). A query built from the sample's clinical context attends over the tokens of the
*available* modalities (plus an always-present null token, so a sample with no image input is
defined); the attention weights ``w_m`` re-weight the inputs per sample:
``fused = sum_m w_m F_m``. The weights are returned so reports can show which inputs the model
leaned on. Missing modalities get a learned "missing" token instead of their image token.

The encoder is pretrained self-supervised (:func:`masked_consistency_loss`): the fused embedding
of a randomly masked input set should be cosine-similar to that of the complete set.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelSpec

__all__ = ['AdaptiveFusion', 'FusionOutput', 'masked_consistency_loss']


class FusionOutput(dict):
    """Result of :class:`AdaptiveFusion`: a dict with the keys below.

    fused : torch.Tensor, shape (B, fusion_dim, x, y, z)
    tokens : torch.Tensor, shape (B, M, context_dim)
        Per-modality tokens (image token if available, "missing" token if not).
    weights : torch.Tensor, shape (B, M + 1)
        Attention weights over the modalities and, last, the null token; zero for missing ones.
    embedding : torch.Tensor, shape (B, context_dim)
        Pooled fused representation (used by the self-supervised pretraining).
    """


class AdaptiveFusion(nn.Module):
    """Per-modality encoders plus attention re-weighting.

    Args:
        spec: the model spec (modalities, channels, fusion and context widths).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d, f = spec.context_dim, spec.fusion_dim
        self.encoders = nn.ModuleDict()
        for m, c in zip(spec.modalities, spec.channels):
            cin = c * spec.subbands + c
            self.encoders[m] = nn.Sequential(
                nn.Conv3d(cin, f, 3, padding=1), nn.GroupNorm(4, f), nn.SiLU(),
                nn.Conv3d(f, f, 3, padding=1),
            )
        n = len(spec.modalities)
        self.to_token = nn.Linear(f, d)
        self.modality_embedding = nn.Parameter(torch.randn(n, d) * 0.02)
        self.missing_token = nn.Parameter(torch.randn(n, d) * 0.02)
        self.null_token = nn.Parameter(torch.randn(1, d) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.query_from_context = nn.Linear(d, d)
        self.attention = nn.MultiheadAttention(d, num_heads=1, batch_first=True)
        self.to_embedding = nn.Linear(f, d)

    def forward(self, coefs: torch.Tensor, freq: torch.Tensor, available: torch.Tensor,
                context: torch.Tensor | None = None) -> FusionOutput:
        """Fuse the available inputs.

        Parameters
        ----------
        coefs : torch.Tensor, shape (B, 8 C_total, x, y, z)
            Wavelet coefficients of all modalities (missing ones are ignored whatever they hold).
        freq : torch.Tensor, shape (B, C_total, x, y, z)
            Frequency features on the coefficient grid.
        available : torch.Tensor, shape (B, M), bool
        context : torch.Tensor, shape (B, T, context_dim), optional
            Clinical tokens; their mean conditions the attention query.
        """
        b = coefs.shape[0]
        wsl, csl = self.spec.coef_slices(), self.spec.channel_slices()
        maps, tokens = [], []
        for i, m in enumerate(self.spec.modalities):
            fm = self.encoders[m](torch.cat([coefs[:, wsl[m]], freq[:, csl[m]]], dim=1))
            av = available[:, i].float().view(b, 1, 1, 1, 1)
            maps.append(fm * av)
            tok = self.to_token(fm.mean(dim=(2, 3, 4))) + self.modality_embedding[i]
            miss = self.missing_token[i].expand(b, -1) + self.modality_embedding[i]
            tokens.append(torch.where(available[:, i:i + 1], tok, miss))
        toks = torch.stack(tokens, dim=1)
        keys = torch.cat([toks, self.null_token.expand(b, 1, -1)], dim=1)
        never = torch.zeros(b, 1, dtype=torch.bool, device=available.device)
        pad = torch.cat([~available, never], 1)
        q = self.query.expand(b, 1, -1)
        if context is not None:
            q = q + self.query_from_context(context.mean(dim=1, keepdim=True))
        attended, weights = self.attention(q, keys, keys, key_padding_mask=pad, need_weights=True)
        weights = weights[:, 0]  # (B, M + 1)
        stack = torch.stack(maps, dim=1)  # (B, M, F, x, y, z)
        fused = (weights[:, :-1, None, None, None, None] * stack).sum(dim=1)
        emb = self.to_embedding(fused.mean(dim=(2, 3, 4))) + attended[:, 0]
        return FusionOutput(fused=fused, tokens=toks, weights=weights, embedding=emb)


def masked_consistency_loss(fusion: AdaptiveFusion, coefs: torch.Tensor, freq: torch.Tensor,
                            present: torch.Tensor, masked: torch.Tensor,
                            context: torch.Tensor | None = None) -> torch.Tensor:
    """Self-supervised loss of the fusion encoder (AMM-Diff pretraining).

    ``1 - cos(e(masked inputs), stopgrad(e(all present inputs)))`` averaged over the batch.

    Parameters
    ----------
    present, masked : torch.Tensor, shape (B, M), bool
        The modalities present in the data, and the random subset kept as inputs.
    """
    with torch.no_grad():
        target = fusion(coefs, freq, present, context)['embedding']
    pred = fusion(coefs, freq, masked, context)['embedding']
    return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
