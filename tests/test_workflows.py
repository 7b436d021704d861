"""The Nipype graphs, checked without running them (as fMRIPrep's workflow tests)."""

from __future__ import annotations

import pytest

from bids_synth.config import Config


@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    from bids_synth.phantom import generate_cohort

    root = tmp_path_factory.mktemp('wf')
    return generate_cohort(root / 'bids', n_subjects=3, seed=4, resolution='low',
                           modalities=('T1w', 'T2w', 'FDG'),
                           missing={'T1w': 0.0, 'T2w': 0.34, 'FDG': 0.34},
                           ground_truth=root / 'gt')


@pytest.fixture(scope='module')
def inputs(cohort):
    from bids_synth.bids.clinical import load_clinical
    from bids_synth.bids.layout import collect_sessions, load_layout

    return collect_sessions(load_layout(cohort.bids_dir)), load_clinical(cohort.bids_dir)


def _config(cohort, tmp_path, **workflow):
    cfg = Config.from_options({'bids_dir': str(cohort.bids_dir), 'output_dir': str(tmp_path / 'o'),
                               'work_dir': str(tmp_path / 'w'), 'nprocs': 1, 'omp_nthreads': 1})
    for key, value in workflow.items():
        setattr(cfg.workflow, key, value)
    return cfg


CARD = {'method': 'regression', 'modalities': ['T1w', 'T2w', 'FDG'], 'template': {'res': 4}}
DIFFUSION = {**CARD, 'method': 'diffusion', 'sampler': {'num_samples': 4}}


@pytest.mark.parametrize(('num_samples', 'reports', 'card', 'stds'), [
    (1, True, CARD, False), (3, True, CARD, False),  # the regression has no std
    (1, False, CARD, False), (0, True, DIFFUSION, True), (1, True, DIFFUSION, False)])
def test_participant_graph(cohort, inputs, tmp_path, num_samples, reports, card, stds):
    from bids_synth.workflows.base import init_bids_synth_wf

    invs, clinical = inputs
    cfg = _config(cohort, tmp_path, num_samples=num_samples, method=card['method'],
                  write_samples=True)
    cfg.execution.reports = reports
    wf = init_bids_synth_wf(cfg, invs, clinical, model='/m', model_card=card,
                            targets_of=lambda inv: inv.missing(('T1w', 'T2w', 'FDG')))
    graph = wf._create_flat_graph()
    names = {n.fullname for n in graph.nodes()}
    for (sub, _), missing in cohort.missing.items():
        for target in missing:
            for stage in ('synth', 'native', 'ds'):
                assert any(f'sub_{sub}_wf' in n and n.endswith(f'{stage}_{target}')
                           for n in names), (sub, target, stage)
        if missing:
            assert any(f'sub_{sub}_wf' in n and n.endswith('report') for n in names) == reports
        else:  # nothing to do: no sub-workflow at all
            assert not any(f'sub_{sub}_wf' in n for n in names)
    assert bool([n for n in names if 'native_std_' in n]) == stds
    synth = [n for n in graph.nodes() if n.name.startswith('synth_')]
    assert all(n.inputs.num_samples == (1 if card is CARD else num_samples or 4) for n in synth)
    assert all(n.inputs.write_samples == (card is DIFFUSION) for n in synth)
    assert synth and all(n.inputs.use_gpu is False for n in synth)  # CPU here
    assert len({n.inputs.seed for n in synth}) == len(synth)  # one seed per image


def test_group_graph(cohort, inputs, tmp_path):
    from bids_synth.workflows.base import init_group_wf

    invs, clinical = inputs
    cfg = _config(cohort, tmp_path)
    wf = init_group_wf(cfg, invs, clinical, method='regression',
                       modalities=('T1w', 'T2w', 'FDG'), res=4, model_dir=tmp_path / 'm')
    graph = wf._create_flat_graph()
    conform = [n for n in graph.nodes() if n.name.startswith('conform_')]
    n_inputs = sum(len(inv.available) for inv in invs)
    assert len(conform) == n_inputs
    fit = next(n for n in graph.nodes() if n.name == 'fit_model')
    assert sorted(fit.inputs.in_modalities) == sorted(m for inv in invs for m in inv.available)
    assert set(fit.inputs.clinical) == {inv.subject for inv in invs}
