"""Phantom cohort generator: simulated multimodal BIDS subjects with known ground truth.

>>> from bids_synth.phantom import generate_cohort  # doctest: +SKIP
>>> result = generate_cohort('/tmp/phantom', n_subjects=2, resolution='low')  # doctest: +SKIP
"""

from __future__ import annotations

from .cohort import PhantomCohort, generate_cohort

__all__ = ['generate_cohort', 'PhantomCohort']
