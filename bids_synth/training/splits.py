"""Subject-wise train/validation split (no subject in both sets).

>>> split_subjects(['01', '02', '03', '04', '05'], val_fraction=0.4, seed=0)
(['02', '03', '04'], ['01', '05'])
"""

from __future__ import annotations

import torch

__all__ = ['split_subjects']


def split_subjects(subjects: list[str], val_fraction: float = 0.2,
                   seed: int = 0) -> tuple[list[str], list[str]]:
    """Split unique subject labels into train and validation lists (sorted, reproducible).

    At least one validation subject when there are two or more subjects; none with one.
    """
    uniq = sorted(set(subjects))
    if len(uniq) < 2 or val_fraction <= 0:
        return uniq, []
    n_val = min(len(uniq) - 1, max(1, round(val_fraction * len(uniq))))
    perm = torch.randperm(len(uniq), generator=torch.Generator().manual_seed(seed)).tolist()
    val = sorted(uniq[i] for i in perm[:n_val])
    return [s for s in uniq if s not in val], val
