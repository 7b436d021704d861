"""Shared fixtures: phantom cohorts and a fitted regression model, built once per session."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

os.environ.setdefault('NIPYPE_NO_ET', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    out = {}
    for path in sorted(Path(root).rglob('*')):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope='session')
def digest():
    """The :func:`tree_digest` function, for tests that check a tree is unchanged."""
    return tree_digest


@pytest.fixture(scope='session')
def phantom6(tmp_path_factory):
    """A 6-subject, all-modality, low-resolution phantom with ~30% missing modalities."""
    from bids_synth.phantom import generate_cohort

    root = tmp_path_factory.mktemp('phantom6')
    return generate_cohort(root / 'bids', n_subjects=6, seed=11, missing=0.3,
                           resolution='low', ground_truth=root / 'groundtruth')


@pytest.fixture(scope='session')
def group_regression(phantom6, tmp_path_factory):
    """Output of ``bids_synth BIDS OUT group --method regression`` on ``phantom6``."""
    from bids_synth.cli.run import main

    root = tmp_path_factory.mktemp('group')
    out, work = root / 'out', root / 'work'
    code = main([str(phantom6.bids_dir), str(out), 'group', '--method', 'regression',
                 '-w', str(work), '--nprocs', '2', '--omp-nthreads', '1', '--res', '4'])
    assert code == 0
    return out, work
