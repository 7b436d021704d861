"""Run ``bids-validator-deno`` on a dataset (the input, or our own outputs in tests).

The validator ships its own binary on PyPI (``bids-validator-deno``) and works offline with the
schema it bundles. When it is not installed :func:`validate_dataset` says so (``ran=False``)
instead of failing: the command line then warns and goes on, as ``--skip-bids-validation``.

>>> ValidationResult(ok=True, errors=[], warnings=[], ran=False).summary()
'bids-validator-deno not available: dataset not validated'
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ['ValidationResult', 'find_validator', 'validate_dataset']

LOGGER = logging.getLogger('bids_synth.bids.validation')
_NAMES = ('bids-validator-deno', 'bids-validator')


@dataclass
class ValidationResult:
    """Outcome of one validator run.

    Attributes
    ----------
    ok : bool
        No error (warnings allowed). True when the validator did not run.
    errors, warnings : list of str
        One line each: ``'CODE location: message'``.
    ran : bool
        Whether the validator ran at all.
    """

    ok: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ran: bool = True

    def summary(self) -> str:
        """One line for logs and error messages."""
        if not self.ran:
            return 'bids-validator-deno not available: dataset not validated'
        text = f'{len(self.errors)} error(s), {len(self.warnings)} warning(s)'
        return text + (f'; first: {self.errors[0]}' if self.errors else '')


def find_validator() -> str | None:
    """Path of the ``bids-validator-deno`` executable: on PATH, or beside ``sys.executable``."""
    here = Path(sys.executable).parent
    for name in _NAMES:
        found = shutil.which(name) or shutil.which(name, path=str(here))
        if found and (name != 'bids-validator' or _is_deno(found)):
            return found
    return None


def _is_deno(path: str) -> bool:
    """The legacy Node ``bids-validator`` shares the name; only accept version 2 or later."""
    try:
        out = subprocess.run([path, '--version'], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip()[:1].isdigit() and int(out.stdout.strip().split('.')[0]) >= 2


def _line(issue: dict) -> str:
    code = issue.get('code', 'ISSUE')
    where = issue.get('location') or ''
    sub = issue.get('subCode')
    msg = (issue.get('issueMessage') or '').strip().splitlines()
    text = f'{code}{f" ({sub})" if sub else ""} {where}'.strip()
    return text + (f': {msg[0]}' if msg else '')


def validate_dataset(path: str | os.PathLike, *, timeout: float = 600,
                     ignore_nifti_headers: bool = False) -> ValidationResult:
    """Validate a BIDS (raw or derivative) dataset with ``bids-validator-deno --format json``.

    Parameters
    ----------
    path : str or os.PathLike
        Dataset root.
    timeout : float
        Seconds before the validator is stopped (then an error result).
    ignore_nifti_headers : bool
        Pass ``--ignoreNiftiHeaders`` (e.g. datasets of empty placeholder images).

    Returns
    -------
    ValidationResult
        ``ran=False`` (and ``ok=True``) when the validator is not installed.
    """
    exe = find_validator()
    if exe is None:
        LOGGER.warning('bids-validator-deno not found; %s not validated', path)
        return ValidationResult(ok=True, ran=False)
    cmd = [exe, '--format', 'json', str(path)]
    if ignore_nifti_headers:
        cmd.insert(1, '--ignoreNiftiHeaders')
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, 'NO_COLOR': '1'})
    except subprocess.TimeoutExpired:
        return ValidationResult(ok=False, errors=[f'validator timed out after {timeout} s'])
    try:
        report = json.loads(proc.stdout)
        issues = report['issues']['issues']
    except (ValueError, KeyError, TypeError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
        return ValidationResult(
            ok=False, errors=[f'validator failed (exit {proc.returncode}): {tail[0]}']
        )
    errors = [_line(i) for i in issues if i.get('severity') == 'error']
    warnings = [_line(i) for i in issues if i.get('severity') == 'warning']
    return ValidationResult(ok=not errors, errors=errors, warnings=warnings)
