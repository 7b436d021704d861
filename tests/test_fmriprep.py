"""fMRIPrep integration: ``--derivatives`` (use its T1w and transforms) and ``--complete-dataset``
(a raw dataset in which fMRIPrep's own input query finds a T1w for a session that had none)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from bids_synth.bids.validation import find_validator, validate_dataset
from bids_synth.cli.run import main
from bids_synth.errors import DataError
from bids_synth.preprocessing.precomputed import find_precomputed

SPACE = 'MNI152NLin2009cAsym'


def fmriprep_tree(t1w, deriv, subject, work):
    """An fMRIPrep-named anatomical derivatives folder for ``t1w``: our own registration,
    written as fMRIPrep's ``from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5`` and inverse."""
    import ants

    from bids_synth.preprocessing.conform import register_to_template
    from bids_synth.preprocessing.templates import load_template

    anat = deriv / f'sub-{subject}' / 'anat'
    anat.mkdir(parents=True)
    img = nib.load(t1w)
    data = np.asarray(img.dataobj, dtype=np.float32)
    stem = anat / f'sub-{subject}_'
    nib.save(nib.Nifti1Image(data, img.affine), f'{stem}desc-preproc_T1w.nii.gz')
    nib.save(nib.Nifti1Image((data > 0).astype(np.uint8), img.affine),
             f'{stem}desc-brain_mask.nii.gz')
    tx = register_to_template(t1w, load_template(2), modality='T1w', work_dir=work)
    affine = ants.read_transform(tx.path)
    ants.write_transform(affine, f'{stem}from-T1w_to-{SPACE}_mode-image_xfm.h5')
    ants.write_transform(affine.invert(), f'{stem}from-{SPACE}_to-T1w_mode-image_xfm.h5')
    (deriv / 'dataset_description.json').write_text(json.dumps(
        {'Name': 'fMRIPrep (test)', 'BIDSVersion': '1.10.0', 'DatasetType': 'derivative',
         'GeneratedBy': [{'Name': 'fMRIPrep'}]}))
    return tx


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """sub-001 lacks a T1w (synthesized, then completed); sub-002 lacks a FLAIR and has
    fMRIPrep derivatives for its T1w."""
    from bids_synth.phantom import generate_cohort

    root = tmp_path_factory.mktemp('fmriprep')
    generate_cohort(root / 'bids', n_subjects=2, seed=3, modalities=('T1w', 'T2w', 'FLAIR'),
                    missing=0.0, resolution='low', ground_truth=root / 'gt')
    for path in (root / 'bids/sub-001/anat').glob('*_T1w.*'):
        path.unlink()
    for path in (root / 'bids/sub-002/anat').glob('*_FLAIR.*'):
        path.unlink()
    own = fmriprep_tree(root / 'bids/sub-002/anat/sub-002_T1w.nii.gz', root / 'fmriprep',
                        '002', root / 'reg')
    args = [str(root / 'bids'), str(root / 'out'), 'participant', '--model', 'default',
            '--modalities', 'T1w', 'FLAIR', '--derivatives', str(root / 'fmriprep'),
            '--complete-dataset', str(root / 'completed'), '-w', str(root / 'work'),
            '--nprocs', '2', '--omp-nthreads', '1', '--skip-bids-validation', '--no-reports']
    code = main(args)
    return {'code': code, 'root': root, 'own': own}


def _sidecar(path):
    return json.loads(path.with_name(path.name.replace('.nii.gz', '.json')).read_text())


def test_participant_runs(run):
    assert run['code'] == 0


def test_derivatives_used_instead_of_registration(run):
    root = run['root']
    out = root / 'out/sub-002/anat/sub-002_desc-synth_FLAIR.nii.gz'
    prep = _sidecar(out)['bids_synth']['preprocessing']
    assert prep['T1w']['transform_source'] == f'derivatives: {root / "fmriprep"}'
    assert prep['T1w']['precomputed']['space'] == SPACE and 'approximation' in prep['T1w']
    assert prep['T2w']['transform_source'] == 'bids_synth'
    assert prep['T2w']['SkullStripped'] is True  # the phantom is brain-only: detected
    # the T1w node registered nothing: no ANTs registration output in its folder
    conform_dirs = list((root / 'work').rglob('conform_T1w'))
    assert conform_dirs and not list(conform_dirs[0].glob('*_ants_*'))
    # native output on the grid of fMRIPrep's desc-preproc_T1w (the native reference)
    ref = nib.load(root / 'fmriprep/sub-002/anat/sub-002_desc-preproc_T1w.nii.gz')
    assert np.allclose(nib.load(out).affine, ref.affine)


def test_precomputed_errors_name_the_folder(run, tmp_path):
    deriv = tmp_path / 'fmriprep'
    shutil.copytree(run['root'] / 'fmriprep', deriv)
    for path in deriv.glob('sub-002/anat/*_xfm.h5'):
        path.unlink()
    with pytest.raises(DataError, match='sub-002/anat: has sub-002_desc-preproc_T1w'):
        find_precomputed([deriv], '002', None)
    assert find_precomputed([deriv], '003', None) is None


def test_collect_data_finds_the_synthesized_t1w(run):
    """What fMRIPrep/sMRIPrep call to find their inputs (niworkflows.utils.bids)."""
    collect_data = pytest.importorskip('niworkflows.utils.bids').collect_data
    completed = run['root'] / 'completed'
    found, _ = collect_data(str(completed), '001', bids_validate=False)
    assert [p.split('/')[-1] for p in found['t1w']] == ['sub-001_rec-synth_T1w.nii.gz']
    found, _ = collect_data(str(completed), '002', bids_validate=False)
    assert [p.split('/')[-1] for p in found['t1w']] == ['sub-002_T1w.nii.gz']
    assert found['flair'][0].endswith('sub-002_rec-synth_FLAIR.nii.gz')
    side = _sidecar(completed / 'sub-001/anat/sub-001_rec-synth_T1w.nii.gz')
    assert side['Description'].startswith('SYNTHESIZED') and side['bids_synth']['model_sha256']
    desc = json.loads((completed / 'dataset_description.json').read_text())
    assert desc['DatasetType'] == 'raw'
    assert 'sub-001/anat/sub-001_rec-synth_T1w.nii.gz' in desc['GeneratedBy'][0]['Description']
    raw = completed / 'sub-002/anat/sub-002_T1w.nii.gz'
    assert raw.samefile(run['root'] / 'bids/sub-002/anat/sub-002_T1w.nii.gz')  # hard link


@pytest.mark.skipif(find_validator() is None, reason='bids-validator-deno not installed')
def test_completed_dataset_passes_validator(run):
    result = validate_dataset(run['root'] / 'completed')
    assert result.ran and result.ok, result.errors[:5]


def test_complete_dataset_refuses_the_output_folder(run, tmp_path, capsys):
    root = run['root']
    code = main([str(root / 'bids'), str(tmp_path / 'o'), 'participant', '--complete-dataset',
                 str(tmp_path / 'o'), '--skip-bids-validation'])
    assert code == 64
    assert '--complete-dataset must differ' in capsys.readouterr().err
