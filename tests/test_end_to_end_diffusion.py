"""The diffusion method through the CLI: group (a short training) then participant, on the
6-subject phantom: desc-synth and desc-synthstd written, fusion weights and complete provenance
in the sidecars, the HTML report's content, samples on request, bids-validator clean."""

from __future__ import annotations

import json

import pytest

from bids_synth.bids.validation import find_validator, validate_dataset
from bids_synth.cli.run import main


@pytest.fixture(scope='module')
def diffusion_run(phantom6, group_regression, tmp_path_factory, digest):
    _, work = group_regression  # conform nodes are cached there
    root = tmp_path_factory.mktemp('diffusion')
    out = root / 'out'
    before = digest(phantom6.bids_dir)
    group = main([str(phantom6.bids_dir), str(out), 'group', '--method', 'diffusion',
                  '--train-config', 'tiny', '--train-steps', '3', '-w', str(work), '--nprocs', '2', '--omp-nthreads', '1',
                  '--res', '4'])
    part = main([str(phantom6.bids_dir), str(out), 'participant', '-w', str(root / 'pwork'),
                 '--nprocs', '2', '--omp-nthreads', '1', '--num-samples', '2',
                 '--write-samples'])
    return {'group': group, 'participant': part, 'out': out, 'before': before}


def _sidecar(path):
    return json.loads(path.with_name(path.name.replace('.nii.gz', '.json')).read_text())


def test_group_trains_a_diffusion_model(diffusion_run):
    assert diffusion_run['group'] == 0
    card = json.loads((diffusion_run['out'] / 'models' / 'diffusion' / 'model_card.json')
                      .read_text())
    assert card['method'] == 'diffusion' and card['ridge']['method'] == 'regression'
    assert card['training']['losses']['mean']['steps'] == 3
    assert card['validation']['per_target'] and card['validation']['ridge']['per_target']
    assert (diffusion_run['out'] / 'group_diffusion.html').is_file()


def test_participant_outputs_and_provenance(phantom6, diffusion_run, digest):
    from bids_synth.bids.derivatives import synth_path

    assert diffusion_run['participant'] == 0
    assert digest(phantom6.bids_dir) == diffusion_run['before']
    out = diffusion_run['out']
    checked = 0
    for (sub, ses), missing in phantom6.missing.items():
        for mod in missing:
            path = synth_path(out, subject=sub, session=ses, modality=mod)
            std = synth_path(out, subject=sub, session=ses, modality=mod, desc='synthstd')
            sample = synth_path(out, subject=sub, session=ses, modality=mod,
                                space='MNI152NLin2009aSym', res=4, desc='synthsample2')
            assert path.is_file() and std.is_file(), (sub, mod)
            assert sample.is_file() == (mod != 'dwi'), (sub, mod)  # no dwi samples
            prov = _sidecar(path)['bids_synth']
            assert prov['method'] == 'diffusion' and len(prov['model_sha256']) == 64
            assert prov['num_samples'] == 2 and prov['sampler'] in ('rflow', 'ddim')
            assert prov['steps'] >= 1 and isinstance(prov['seed'], int)
            assert set(prov['fusion_weights']) == set(prov['inputs_used'])
            assert 'null_weight' in prov and prov['clinical_used']
            # uncertainty provenance: how typical each input was, the std's widening, the gate
            assert set(prov['input_typicality']) == set(prov['inputs_used'])
            assert prov['std_inflation'] >= 1 and set(prov['gate']) == {mod}
            assert 'standard deviation' in _sidecar(std)['Description']
            checked += 1
    assert checked
    reports = sorted(out.glob('sub-*.html'))
    assert reports
    html = '\n'.join(r.read_text() for r in reports)
    for needle in ('alt="input', 'alt="synthesized"', '<h4>Uncertainty</h4>',
                   'alt="uncertainty"', 'Fusion weights', '<td>T1w</td>', 'alt="sample"',
                   'typicality (1: like the validation subjects)'):
        assert needle in html, needle
    for img in out.glob('sub-*/figures/*.png'):
        assert img.stat().st_size > 1000


def test_outputs_pass_validator(diffusion_run):
    if find_validator() is None:
        pytest.skip('bids-validator-deno is not installed')
    result = validate_dataset(diffusion_run['out'])
    assert result.ok, result.errors[:5]
