"""Clinical-consistency loss (ACADiff): the prediction's image biomarkers match the real ones.

Biomarkers are regional means of every channel inside three disease-pattern regions of
``preprocessing.regions.PATTERNS`` (intersected with the brain mask): ``fdg_ad`` (posterior
cingulate, precuneus, temporoparietal: the AD hypometabolism SUVR for FDG), ``amyloid_cortex``
(the florbetapir cortical summary SUVR for AV45) and ``medial_temporal`` (hippocampus and
entorhinal cortex: for structural images the mean normalized intensity there is our proxy of
medial-temporal grey-matter volume). PET images are SUVR already, so their regional means are
regional SUVRs. The loss is the mean absolute biomarker difference between the predicted clean
image (decoded from the predicted latent) and the real image, over the channels of the
modalities that were hidden from the model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..preprocessing.regions import pattern_mask

__all__ = ['BIOMARKER_PATTERNS', 'BiomarkerLoss']

BIOMARKER_PATTERNS = ('fdg_ad', 'amyloid_cortex', 'medial_temporal')


class BiomarkerLoss(nn.Module):
    """Regional-biomarker L1 loss on the model grid.

    Args:
        affine: (4, 4) affine of the model grid.
        shape: (X, Y, Z) of the model grid.
        brain_mask: optional (X, Y, Z) bool brain mask to intersect the regions with.
    """

    def __init__(self, affine: np.ndarray, shape: tuple[int, int, int],
                 brain_mask: np.ndarray | None = None) -> None:
        super().__init__()
        weights = []
        for pattern in BIOMARKER_PATTERNS:
            m = pattern_mask(pattern, affine, shape)
            if brain_mask is not None and (m & brain_mask).any():
                m = m & brain_mask
            weights.append(m.astype(np.float32) / max(int(m.sum()), 1))
        self.register_buffer('weights', torch.from_numpy(np.stack(weights)), persistent=False)

    def biomarkers(self, images: torch.Tensor) -> torch.Tensor:
        """Regional means.

        Parameters
        ----------
        images : torch.Tensor, shape (B, C, X, Y, Z)

        Returns
        -------
        torch.Tensor, shape (B, C, P)
            One value per channel and pattern of :data:`BIOMARKER_PATTERNS`.
        """
        return torch.einsum('bcxyz,pxyz->bcp', images, self.weights)

    def forward(self, pred: torch.Tensor, real: torch.Tensor,
                channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean |biomarker(pred) - biomarker(real)| over the selected channels.

        Parameters
        ----------
        pred, real : torch.Tensor, shape (B, C, X, Y, Z)
        channel_mask : torch.Tensor, shape (B, C), bool, optional
            Channels that count (the hidden modalities); all when omitted.
        """
        diff = (self.biomarkers(pred) - self.biomarkers(real)).abs().mean(dim=-1)
        if channel_mask is None:
            return diff.mean()
        w = channel_mask.float()
        return (diff * w).sum() / w.sum().clamp(min=1.0)
