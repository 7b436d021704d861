"""Errors of bids_synth, each with the BIDS-Apps exit code the command line returns for it.

Each error mixes in the builtin it refines (pybids style), so callers that catch ``ValueError``
or ``FileNotFoundError`` keep working. The message must name the file and the problem: the
command line prints it as one line (no traceback unless ``-v``).

>>> err = UnreadableImageError('/data/sub-01/anat/sub-01_T1w.nii.gz: header-only NIfTI')
>>> err.exit_code, isinstance(err, ValueError)
(65, True)
"""

from __future__ import annotations

import os

__all__ = [
    'BIDSSynthError',
    'UsageError',
    'DataError',
    'UnreadableImageError',
    'RegistrationQCError',
    'ClinicalTableError',
    'NoInputError',
    'CannotCreateOutputError',
    'ValidationFailedError',
    'NoMatchError',
    'ModelError',
    'EX_OK',
    'EX_SOFTWARE',
]

EX_OK = 0
EX_SOFTWARE = 1  # an unexpected failure (BIDS Apps use 1 for "some participant failed" too)


class BIDSSynthError(Exception):
    """Base of all bids_synth errors."""

    exit_code = EX_SOFTWARE


class UsageError(BIDSSynthError, ValueError):
    """Bad command-line usage (EX_USAGE, 64)."""

    exit_code = getattr(os, 'EX_USAGE', 64)


class DataError(BIDSSynthError, ValueError):
    """Input data are malformed (EX_DATAERR, 65)."""

    exit_code = getattr(os, 'EX_DATAERR', 65)


class UnreadableImageError(DataError):
    """An image file exists but cannot be read (empty, header-only, corrupt, all-NaN...)."""


class RegistrationQCError(UnreadableImageError):
    """An input registered to the template fails the registration QC (misregistered)."""


class ClinicalTableError(DataError):
    """participants.tsv / sessions.tsv / participants.json is malformed."""


class ModelError(DataError):
    """A model file is not a valid bids_synth model (bad card, pickle, tampered weights)."""


class NoInputError(BIDSSynthError, FileNotFoundError):
    """The input dataset or a required input does not exist (EX_NOINPUT, 66)."""

    exit_code = getattr(os, 'EX_NOINPUT', 66)


class CannotCreateOutputError(BIDSSynthError, OSError):
    """The output or work directory cannot be created or written (EX_CANTCREAT, 73)."""

    exit_code = getattr(os, 'EX_CANTCREAT', 73)


class ValidationFailedError(BIDSSynthError, ValueError):
    """The input dataset failed BIDS validation (16)."""

    exit_code = 16


class NoMatchError(BIDSSynthError, LookupError):
    """The participant/session labels or BIDS filters matched nothing (18)."""

    exit_code = 18
