"""BIDS-Derivatives naming and writing (bids.derivatives), checked with bids-validator-deno."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_synth import errors
from bids_synth.bids.derivatives import (
    BIDS_VERSION, bids_uri, check_output_dirs, create_output_dirs, derivative_path,
    remove_created, remove_stale_temporaries, write_bidsignore,
    write_dataset_description, write_json_atomic, write_nifti_atomic, write_text_atomic,
)
from bids_synth.bids.modalities import MODALITIES
from bids_synth.bids.validation import find_validator, validate_dataset

RNG = np.random.default_rng(7)
SPACE = 'MNI152NLin2009aSym'
needs_validator = pytest.mark.skipif(find_validator() is None,
                                     reason='bids-validator-deno is not installed')


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / 'raw'
    (root / 'sub-01' / 'ses-1' / 'anat').mkdir(parents=True)
    (root / 'dataset_description.json').write_text(
        json.dumps({'Name': 'Tiny cohort', 'BIDSVersion': BIDS_VERSION}))
    return root


@pytest.mark.parametrize(('kwargs', 'expected'), [
    ({'modality': 'T2w'}, 'sub-01/ses-1/anat/sub-01_ses-1_desc-synth_T2w.nii.gz'),
    ({'modality': 'T2w', 'space': SPACE, 'res': 2},
     f'sub-01/ses-1/anat/sub-01_ses-1_space-{SPACE}_res-2_desc-synth_T2w.nii.gz'),
    ({'modality': 'FLAIR', 'desc': 'synthstd'},
     'sub-01/ses-1/anat/sub-01_ses-1_desc-synthstd_FLAIR.nii.gz'),
    ({'modality': 'T1wCE'}, 'sub-01/ses-1/anat/sub-01_ses-1_ce-gadolinium_desc-synth_T1w.nii.gz'),
    ({'modality': 'FDG'}, 'sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_desc-synth_pet.nii.gz'),
    ({'modality': 'AV45', 'space': SPACE, 'res': '2'},
     f'sub-01/ses-1/pet/sub-01_ses-1_trc-AV45_space-{SPACE}_res-2_desc-synth_pet.nii.gz'),
    ({'modality': 'bold'}, 'sub-01/ses-1/func/sub-01_ses-1_task-rest_desc-synth_bold.nii.gz'),
    ({'modality': 'dwi', 'extension': '.bvec'},
     'sub-01/ses-1/dwi/sub-01_ses-1_desc-synth_dwi.bvec'),
    ({'modality': 'dwi', 'extension': '.json'},
     'sub-01/ses-1/dwi/sub-01_ses-1_desc-synth_dwi.json'),
])
def test_derivative_names(tmp_path, kwargs, expected):
    path = derivative_path(tmp_path, subject='sub-01', session='ses-1', **kwargs)
    assert path == tmp_path / expected


@pytest.mark.parametrize('modality', list(MODALITIES))
def test_never_a_raw_name(tmp_path, modality):
    mod = MODALITIES[modality]
    path = derivative_path(tmp_path, subject='01', session=None, modality=modality)
    ents = dict(part.split('-', 1) for part in path.name.split('.')[0].split('_')[:-1])
    assert ents['desc'] == 'synth' and path.name.split('.')[0].endswith(f'_{mod.suffix}')
    raw_like = path.name.replace('_desc-synth', '')
    assert path.name != raw_like
    with pytest.raises(ValueError, match='desc'):
        derivative_path(tmp_path, subject='01', session=None, modality=modality, desc='')


def test_bids_uri(raw):
    path = raw / 'sub-01' / 'ses-1' / 'anat' / 'sub-01_ses-1_T1w.nii.gz'
    assert bids_uri(raw, path) == 'bids:raw:sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz'
    with pytest.raises(ValueError, match='not inside'):
        bids_uri(raw, raw.parent / 'elsewhere.nii.gz')


def test_dataset_description(raw, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    monkeypatch.delenv('BIDS_SYNTH_CONTAINER_TYPE', raising=False)
    path = write_dataset_description(out, raw, version='1.2.3')
    desc = json.loads(path.read_text())
    assert desc['DatasetType'] == 'derivative' and desc['BIDSVersion'] == BIDS_VERSION
    assert 'Tiny cohort' in desc['Name']
    (gen,) = desc['GeneratedBy']
    assert gen['Name'] == 'bids_synth' and gen['Version'] == '1.2.3'
    assert gen['CodeURL'].startswith('https://') and 'Container' not in gen
    assert desc['SourceDatasets'] == [{'URL': 'bids:raw:'}]
    assert desc['DatasetLinks'] == {'raw': raw.absolute().as_uri()}
    mtime = path.stat().st_mtime_ns
    write_dataset_description(out, raw, version='1.2.3')  # idempotent: untouched
    assert path.stat().st_mtime_ns == mtime
    monkeypatch.setenv('BIDS_SYNTH_CONTAINER_TYPE', 'docker')
    monkeypatch.setenv('BIDS_SYNTH_CONTAINER_TAG', 'bids_synth:1.2.3')
    write_dataset_description(out, raw, version='1.2.3')
    gen = json.loads(path.read_text())['GeneratedBy'][0]
    assert gen['Container'] == {'Type': 'docker', 'Tag': 'bids_synth:1.2.3'}
    assert [p.name for p in out.iterdir()] == ['dataset_description.json']  # no temp left


def test_atomic_writers(tmp_path):
    img = nib.Nifti1Image(RNG.random((4, 4, 4)).astype('float32'), np.eye(4))
    path = write_nifti_atomic(img, tmp_path / 'a' / 'b' / 'x.nii.gz')
    assert np.allclose(nib.load(path).get_fdata(), img.get_fdata())
    with open(path, 'rb') as fobj:
        assert fobj.read(2) == b'\x1f\x8b'  # the temporary name kept .nii.gz: gzipped
    write_json_atomic({'a': 1}, tmp_path / 'x.json')
    assert json.loads((tmp_path / 'x.json').read_text()) == {'a': 1}
    write_text_atomic('hello\n', tmp_path / 'x.txt')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a', 'x.json', 'x.txt']
    with pytest.raises(ValueError):
        write_json_atomic({'a': float('nan')}, tmp_path / 'nan.json')
    assert not any(p.name.startswith('.') for p in tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason='root can write into read-only folders')
def test_atomic_writer_permission(tmp_path):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(errors.CannotCreateOutputError, match='ro/x.json') as info:
            write_json_atomic({}, ro / 'x.json')
        assert info.value.exit_code == 73
    finally:
        ro.chmod(stat.S_IRWXU)


def test_atomic_writer_cannot_create(tmp_path):
    (tmp_path / 'file').write_text('')
    with pytest.raises(errors.CannotCreateOutputError, match='file/sub/x.json'):
        write_json_atomic({}, tmp_path / 'file' / 'sub' / 'x.json')


def test_check_output_dirs(raw, tmp_path):
    with pytest.raises(errors.UsageError, match='inside') as info:
        check_output_dirs(raw, raw, tmp_path / 'work')
    assert info.value.exit_code == 64
    with pytest.raises(errors.UsageError, match='output folder'):
        check_output_dirs(raw, raw / 'sub-01' / 'out', tmp_path / 'work')
    with pytest.raises(errors.UsageError, match='work folder'):
        check_output_dirs(raw, tmp_path / 'out', raw / 'work')
    with pytest.raises(errors.UsageError, match='output folder'):  # derivatives/ too
        check_output_dirs(raw, raw / 'derivatives' / 'bids_synth', tmp_path / 'work')
    assert not (raw / 'derivatives').exists()
    check_output_dirs(raw, tmp_path / 'out', tmp_path / 'work')  # checks, creates nothing
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'work').exists()
    created = create_output_dirs(tmp_path / 'out' / 'a', tmp_path / 'work')
    assert created == [tmp_path / 'out', tmp_path / 'out' / 'a', tmp_path / 'work']
    remove_created(created)
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'work').exists()
    (tmp_path / 'afile').write_text('')
    with pytest.raises(errors.CannotCreateOutputError, match='afile/out') as info:
        check_output_dirs(raw, tmp_path / 'afile' / 'out', tmp_path / 'work')
    assert info.value.exit_code == 73 and 'is a file' in str(info.value)
    with pytest.raises(errors.CannotCreateOutputError, match='is a file, not a folder'):
        check_output_dirs(raw, tmp_path / 'afile', tmp_path / 'work')


def test_stale_temporaries(tmp_path):
    """Leftovers of a killed writer go; a live process's temporary file stays."""
    import subprocess

    dead = subprocess.Popen(['true'])
    dead.wait()
    (tmp_path / 'sub-01').mkdir()
    stale = [tmp_path / 'sub-01' / f'.sub-01_desc-synth_T2w.nii.gz.{dead.pid}.0123abcd.tmp.nii.gz',
             tmp_path / '.x.json.89abcdef.tmp.json',  # older writers: no pid
             tmp_path / 'sub-01' / f'.tmp-{dead.pid}-native_reference.nii.gz']
    live = tmp_path / f'.y.json.{os.getpid()}.0123abcd.tmp.json'
    keep = tmp_path / 'sub-01' / 'sub-01_desc-synth_T2w.nii.gz'
    for path in (*stale, live, keep):
        path.write_bytes(b'x')
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert live.exists() and keep.exists()


def test_bidsignore_keeps_lines(tmp_path):
    (tmp_path / '.bidsignore').write_text('extra/\n')
    path = write_bidsignore(tmp_path)
    write_bidsignore(tmp_path)
    lines = path.read_text().splitlines()
    assert lines[0] == 'extra/' and 'BEP016' in path.read_text()
    assert len(lines) == len(set(lines))  # a second call added nothing
    assert lines.count('*_desc-synth_dwi.bval') == 1


def _image(shape, tr=None):
    img = nib.Nifti1Image(RNG.random(shape).astype('float32') + 0.1, np.diag([2, 2, 2, 1.0]))
    img.header.set_xyzt_units('mm', 'sec' if tr else 'unknown')
    if tr:
        img.header.set_zooms((2.0, 2.0, 2.0, tr))
    return img


def _write(raw, out, modality, shape, *, desc='synth', space=None, tr=None, extra=None):
    path = derivative_path(out, subject='01', session='1', modality=modality, desc=desc,
                           space=space, res=2 if space else None)
    write_nifti_atomic(_image(shape, tr), path)
    side = {'Description': f'{modality} synthesized by bids_synth (test)',
            'Sources': [bids_uri(raw, raw / 'sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz')],
            'SkullStripped': True, **(extra or {})}
    if space:
        side.update(SpatialReference={'URI': f'https://templateflow.org/{space}'},
                    Resolution={'2': '2 mm isotropic'})
    else:
        side['SpatialReference'] = {'URI': side['Sources'][0]}
    write_json_atomic(side, path.with_name(path.name.replace('.nii.gz', '.json')))
    return path


def _representation(target, shape=(6, 6, 6)):
    """A synthesized representation as the model writes it: channels last, model units."""
    mod = MODALITIES[target]
    data = RNG.random(shape + (mod.n_channels,)).astype('float32') + 0.1
    if target == 'dwi':  # a plausible log-tensor (prolate, ~0.3-1.7e-3 mm^2/s)
        data[..., mod.channels.index('logdxx')] = np.log(1.7)
        data[..., mod.channels.index('logdyy')] = np.log(0.3)
        data[..., mod.channels.index('logdzz')] = np.log(0.3)
        for c in ('logdxy', 'logdxz', 'logdyz'):
            data[..., mod.channels.index(c)] = 0.0
    return nib.Nifti1Image(data[..., 0] if mod.n_channels == 1 else data,
                           np.diag([2, 2, 2, 1.0]))


def _synth(raw, out, target, tmp_path, *, std=True):
    """Write one target through the derivatives sink (both spaces, std when asked)."""
    from bids_synth.interfaces.derivatives import write_synth_outputs

    ref = raw / 'sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz'
    files = {}
    for kind in ('template', 'native') + (('template_std', 'native_std') if std else ()):
        files[kind] = str(tmp_path / f'{target}_{kind}.nii.gz')
        nib.save(_representation(target), files[kind])
    prov = {'method': 'regression', 'inputs_used': ['T1w'], 'num_samples': 4}
    return write_synth_outputs(output_dir=out, bids_dir=raw, subject='01', session='1',
                               target=target, res=2, images=files, provenance=prov,
                               source_files=[str(ref)], reference_file=str(ref))


def _tree(raw, out, tmp_path=None):
    """Every kind of file the participant level writes, through the real sink."""
    tmp_path = tmp_path or out.parent
    write_dataset_description(out, raw, version='0.1.0')
    for target in ('T2w', 'FDG', 'bold', 'dwi'):
        _synth(raw, out, target, tmp_path)
    _synth(raw, out, 'FLAIR', tmp_path, std=False)
    return out


def _hidden(out: Path) -> set[str]:
    """Files of ``out`` that its .bidsignore hides (bids-validator-deno's glob semantics for
    the pattern forms bids_synth writes: ``*name`` globs, bare folder names, ``**/folder``)."""
    from fnmatch import fnmatch

    pats = [ln for ln in (out / '.bidsignore').read_text().splitlines()
            if ln and not ln.startswith('#')]
    hidden = set()
    for path in out.rglob('*'):
        if not path.is_file():
            continue
        rel = path.relative_to(out)
        for pat in pats:
            folder = pat[3:] if pat.startswith('**/') else pat
            if fnmatch(rel.name, pat) or folder in rel.parts[:-1]:
                hidden.add(rel.as_posix())
    return hidden


@pytest.mark.parametrize('target', ['T2w', 'bold', 'dwi'])
def test_main_output_is_synth_path(raw, tmp_path, target):
    """The record's main files are where ``synth_path`` says; bold has no _bold file; the
    dwi sidecar records its gradient table and the maps say what they hold."""
    from bids_synth.bids.derivatives import synth_path

    out = tmp_path / 'out'
    rec = _synth(raw, out, target, tmp_path)
    for kind, desc in (('template', 'synth'), ('native', 'synth'), ('template_std', 'synthstd'),
                       ('native_std', 'synthstd')):
        space = SPACE if kind.startswith('template') else None
        path = synth_path(out, subject='01', session='1', modality=target, space=space,
                          res=2 if space else None, desc=desc)
        assert rec['files'][kind] == path.relative_to(out).as_posix()
    assert not list(out.rglob('*_bold.nii.gz'))
    if target == 'bold':
        side = json.loads((out / rec['files']['native']).with_suffix('').with_suffix('.json')
                          .read_text())
        assert side['VolumeContents'][0] == 'mean of time segment 1 of 4'
        assert 'RepetitionTime' not in side and 'Not a time series' in side['Description']
        assert {'native_alff', 'native_falff', 'native_reho'} <= set(rec['files'])
    if target == 'dwi':
        series = out / rec['files']['native']
        side = json.loads(series.with_suffix('').with_suffix('.json').read_text())
        scheme = side['bids_synth']['gradient_scheme']
        assert scheme['Source'] == 'standard' and scheme['Volumes'] == 32
        assert nib.load(series).shape[-1] == 32
        bvals = np.loadtxt(out / rec['files']['native_bval'])
        assert bvals.shape == (32,) and (bvals == 0).sum() == 2
        tens = json.loads((out / rec['files']['template_tensor']).with_suffix('').with_suffix(
            '.json').read_text())
        assert tens['TensorElements'] == ['Dxx', 'Dxy', 'Dxz', 'Dyy', 'Dyz', 'Dzz']
        assert tens['Units'] == 'mm^2/s'
        fa = nib.load(out / rec['files']['template_fa']).get_fdata()
        assert np.allclose(fa[fa > 0], 0.799, atol=1e-3)  # the prolate tensor of _representation


def test_bidsignore_hides_only_bep_files(raw, tmp_path):
    """Only the BEP016/BEP012 files (and non-BIDS reports/logs) are hidden: every
    synthesized image the schema names is seen by the validator."""
    out = _tree(raw, tmp_path / 'out', tmp_path)
    write_bidsignore(out)
    (out / 'logs').mkdir()
    (out / 'logs' / 'crash.txt').write_text('x')
    hidden = _hidden(out)
    bep = {p.relative_to(out).as_posix() for p in out.rglob('*')
           if p.name.split('.')[0].endswith(('_dwimap', '_boldmap'))
           or p.suffix in ('.bval', '.bvec')}
    assert hidden - {'logs/crash.txt'} == bep
    assert any(p.endswith('_desc-synth_dwi.bval') for p in bep)
    assert any('stat-reho' in p for p in bep) and any('param-tensor' in p for p in bep)
    seen = {p.relative_to(out).as_posix() for p in out.rglob('*.nii.gz')} - hidden
    assert {Path(p).name.split('_desc-')[1] for p in seen} == {
        'synth_T2w.nii.gz', 'synthstd_T2w.nii.gz', 'synth_FLAIR.nii.gz', 'synth_pet.nii.gz',
        'synthstd_pet.nii.gz', 'synth_dwi.nii.gz'}
    text = (out / '.bidsignore').read_text()
    assert 'BEP016' in text and 'BEP012' in text


@needs_validator
def test_derivative_tree_passes_validator(raw, tmp_path):
    out = _tree(raw, tmp_path / 'out', tmp_path)
    before = validate_dataset(out)
    assert before.ran and not before.ok
    flagged = ' '.join(before.errors)
    assert 'desc-synth_dwi.bval' in flagged and 'dwimap' in flagged and 'boldmap' in flagged
    write_bidsignore(out)
    result = validate_dataset(out)
    assert result.ran and result.ok, result.errors
    assert result.errors == []


@needs_validator
def test_validator_reports_missing_required_fields(raw, tmp_path):
    out = _tree(raw, tmp_path / 'out', tmp_path)
    write_bidsignore(out)
    side = derivative_path(out, subject='01', session='1', modality='T2w', space=SPACE, res=2,
                           extension='.json')
    meta = json.loads(side.read_text())
    del meta['SkullStripped'], meta['Resolution']
    write_json_atomic(meta, side)
    result = validate_dataset(out)
    assert not result.ok
    assert any('SkullStripped' in e for e in result.errors)
    assert any('Resolution' in e for e in result.errors)


def test_validate_dataset_without_validator(tmp_path, monkeypatch):
    import bids_synth.bids.validation as validation

    monkeypatch.setattr(validation, 'find_validator', lambda: None)
    result = validation.validate_dataset(tmp_path)
    assert result.ran is False and result.ok and 'not available' in result.summary()


@needs_validator
def test_validator_on_raw_input(raw):
    (raw / 'sub-01' / 'ses-1' / 'anat' / 'sub-01_ses-1_T1w.nii.gz').write_bytes(b'')
    result = validate_dataset(Path(raw))
    assert result.ran and not result.ok and result.errors
