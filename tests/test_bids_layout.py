"""Dataset walk, readability checks and the session inventory (bids.layout, bids.images)."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_synth import errors
from bids_synth.bids.images import MIN_BOLD_VOLUMES, check_readable
from bids_synth.bids.layout import collect_sessions, describe_inventory, load_layout

RNG = np.random.default_rng(42)
EXAMPLES = Path(os.environ.get(
    'BIDS_SYNTH_PYBIDS_EXAMPLES',
    Path(__file__).resolve().parents[1] / '.venv' / 'share' / 'pybids-examples',
))


def _img(shape, dtype='float32', fill=None, tr=None):
    data = RNG.random(shape).astype(dtype) + 1 if fill is None else np.full(shape, fill, dtype)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    if tr is not None:
        img.header.set_xyzt_units('mm', 'sec')
        img.header.set_zooms((2.0, 2.0, 2.0, tr))
    return img


def _save(root: Path, rel: str, img=None, raw: bytes | None = None, meta: dict | None = None):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        path.write_bytes(raw)
    else:
        nib.save(img, path)
    if meta is not None:
        path.with_name(path.name.split('.')[0] + '.json').write_text(json.dumps(meta))
    return path


def _header_only(shape=(6, 6, 6)) -> bytes:
    """A gzipped NIfTI with a valid header and no voxel data."""
    header = _img(shape).header
    header.set_data_offset(352)
    return gzip.compress(header.binaryblock + b'\0' * 4)


def _corrupt_gzip() -> bytes:
    good = gzip.compress(_img((6, 6, 6)).to_bytes())
    return good[:40] + bytes(b ^ 0xFF for b in good[40:80]) + good[80:]


def _dwi(root: Path, rel: str, nvol: int, nbval: int | None = None):
    path = _save(root, rel, _img((6, 6, 6, nvol)))
    stem = path.name.split('.')[0]
    nbval = nvol if nbval is None else nbval
    (path.parent / f'{stem}.bval').write_text(' '.join(['0'] + ['1000'] * (nbval - 1)) + '\n')
    vecs = RNG.normal(size=(3, nbval))
    (path.parent / f'{stem}.bvec').write_text(
        '\n'.join(' '.join(f'{v:.4f}' for v in row) for row in vecs) + '\n')
    return path


def make_dataset(root: Path, sessions: bool = True) -> Path:
    """sub-01 complete, sub-02 every file broken in a different way, sub-03 T1w only."""
    root.mkdir(parents=True, exist_ok=True)
    (root / 'dataset_description.json').write_text(
        json.dumps({'Name': 'tiny', 'BIDSVersion': '1.10.0'}))
    ses = (lambda s, p: f'{s}/ses-1/{p}') if sessions else (lambda s, p: f'{s}/{p}')
    lab = (lambda s: f'{s}_ses-1') if sessions else (lambda s: s)
    s1 = 'sub-01'
    _save(root, ses(s1, f'anat/{lab(s1)}_run-1_T1w.nii.gz'), _img((6, 6, 6)))
    _save(root, ses(s1, f'anat/{lab(s1)}_run-2_T1w.nii.gz'), _img((6, 6, 6)))
    _save(root, ses(s1, f'anat/{lab(s1)}_acq-fast_FLAIR.nii.gz'), _img((6, 6, 6, 1)))
    _save(root, ses(s1, f'anat/{lab(s1)}_acq-slow_FLAIR.nii.gz'), _img((6, 6, 6)))
    _save(root, ses(s1, f'pet/{lab(s1)}_trc-FDG_pet.nii.gz'), _img((6, 6, 6, 3)),
          meta={'TracerName': 'FDG'})
    _save(root, ses(s1, f'func/{lab(s1)}_task-nback_bold.nii.gz'),
          _img((6, 6, 6, MIN_BOLD_VOLUMES), tr=2.0), meta={'RepetitionTime': 2.0})
    _save(root, ses(s1, f'func/{lab(s1)}_task-rest_bold.nii.gz'),
          _img((6, 6, 6, MIN_BOLD_VOLUMES), tr=2.0),
          meta={'RepetitionTime': 2.0, 'TaskName': 'rest'})
    _dwi(root, ses(s1, f'dwi/{lab(s1)}_dwi.nii.gz'), 5)
    _save(root, ses(s1, f'fmap/{lab(s1)}_phasediff.nii.gz'), _img((6, 6, 6)))
    s2 = 'sub-02'
    _save(root, ses(s2, f'anat/{lab(s2)}_T1w.nii.gz'), raw=_header_only())
    _save(root, ses(s2, f'anat/{lab(s2)}_T2w.nii.gz'), raw=_corrupt_gzip())
    _save(root, ses(s2, f'anat/{lab(s2)}_FLAIR.nii.gz'), raw=b'')
    _save(root, ses(s2, f'pet/{lab(s2)}_trc-FDG_pet.nii.gz'), _img((6, 6, 6), fill=np.nan))
    _save(root, ses(s2, f'func/{lab(s2)}_task-rest_bold.nii.gz'), _img((6, 6, 6)))
    _dwi(root, ses(s2, f'dwi/{lab(s2)}_dwi.nii.gz'), 5, nbval=4)
    s3 = 'sub-03'
    _save(root, ses(s3, f'anat/{lab(s3)}_T1w.nii.gz'), _img((6, 6, 6)))
    # never indexed
    _save(root, 'derivatives/other/sub-01/anat/sub-01_T2w.nii.gz', _img((6, 6, 6)))
    _save(root, 'sourcedata/sub-01/anat/sub-01_T2w.nii.gz', _img((6, 6, 6)))
    return root


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp('bids') / 'ds')
    return root, load_layout(root)


@pytest.fixture(scope='module')
def inventories(dataset):
    return {inv.subject: inv for inv in collect_sessions(dataset[1])}


# ---------------------------------------------------------------------------------------- images
@pytest.mark.parametrize(('name', 'write', 'modality', 'reason'), [
    ('empty.nii.gz', lambda p: p.write_bytes(b''), None, 'empty file (0 bytes)'),
    ('hdr.nii.gz', lambda p: p.write_bytes(_header_only()), None, 'header-only NIfTI'),
    ('bad.nii.gz', lambda p: p.write_bytes(_corrupt_gzip()), None, 'corrupt gzip'),
    ('junk.nii.gz', lambda p: p.write_bytes(b'not gzip' * 50), None, 'corrupt gzip'),
    ('trunc.nii', lambda p: p.write_bytes(_img((6, 6, 6)).to_bytes()[:500]), None,
     'truncated'),
    ('nan.nii.gz', lambda p: nib.save(_img((6, 6, 6), fill=np.nan), p), None,
     'no finite voxel'),
    ('zero.nii.gz', lambda p: nib.save(_img((6, 6, 6), 'int16', fill=0), p), None,
     'all voxels are zero'),
    ('3d.nii.gz', lambda p: nib.save(_img((6, 6, 6)), p), 'bold', 'bold must be 4D'),
    ('short.nii.gz', lambda p: nib.save(_img((6, 6, 6, 3)), p), 'bold', 'fewer than the'),
    ('4d.nii.gz', lambda p: nib.save(_img((6, 6, 6, 2)), p), 'T1w', 'must be 3D'),
    ('2d.nii.gz', lambda p: nib.save(_img((6, 6)), p), None, 'not a volume'),
    ('3dwi.nii.gz', lambda p: nib.save(_img((6, 6, 6)), p), 'dwi', 'dwi must be 4D'),
])
def test_check_readable_reasons(tmp_path, name, write, modality, reason):
    path = tmp_path / name
    write(path)
    with pytest.raises(errors.UnreadableImageError) as info:
        check_readable(path, modality)
    message = str(info.value)
    assert message.startswith(f'{path}: ') and reason in message
    assert '\n' not in message and info.value.exit_code == 65


def test_check_readable_affine_and_missing(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((6, 6, 6))
    header.set_data_dtype('float32')
    header['srow_x'] = [np.inf, 0, 0, 0]
    header['srow_y'], header['srow_z'], header['sform_code'] = [0, 1, 0, 0], [0, 0, 1, 0], 1
    header.set_data_offset(352)
    path = tmp_path / 'aff.nii'
    path.write_bytes(header.binaryblock + b'\0' * 4 + np.ones(216, 'float32').tobytes())
    with pytest.raises(errors.UnreadableImageError, match='non-finite affine'):
        check_readable(path)
    with pytest.raises(errors.UnreadableImageError, match='does not exist'):
        check_readable(tmp_path / 'nope.nii.gz')


def test_check_readable_good_images(tmp_path):
    nib.save(_img((6, 6, 6, 1)), tmp_path / 't1.nii.gz')
    img = check_readable(tmp_path / 't1.nii.gz', 'T1w')
    assert img.shape == (6, 6, 6, 1) and np.asanyarray(img.dataobj).min() >= 1
    nib.save(_img((6, 6, 6, 4)), tmp_path / 'pet.nii.gz')
    assert check_readable(tmp_path / 'pet.nii.gz', 'FDG').shape[3] == 4
    dwi = _dwi(tmp_path, 'sub-01_dwi.nii.gz', 5)
    stem = tmp_path / 'sub-01_dwi'
    kwargs = {'bval': f'{stem}.bval', 'bvec': f'{stem}.bvec'}
    assert check_readable(dwi, 'dwi', **kwargs).shape == (6, 6, 6, 5)
    bad = _dwi(tmp_path / 'x', 'sub-02_dwi.nii.gz', 5, nbval=6)
    with pytest.raises(errors.UnreadableImageError, match='lists 6 b-values'):
        check_readable(bad, 'dwi', bval=tmp_path / 'x' / 'sub-02_dwi.bval')


# ---------------------------------------------------------------------------------------- layout
def test_inventory_present_and_choices(inventories):
    assert sorted(inventories) == ['01', '02', '03']
    inv = inventories['01']
    assert inv.session == '1' and inv.label == 'sub-01_ses-1'
    assert inv.available == ('T1w', 'FLAIR', 'FDG', 'bold', 'dwi')
    assert inv.unreadable == {}
    assert inv.files['T1w'].path.endswith('sub-01_ses-1_run-1_T1w.nii.gz')
    assert inv.files['T1w'].alternatives[0].endswith('run-2_T1w.nii.gz')
    # bold: task-rest preferred although task-nback sorts first
    assert inv.files['bold'].entities['task'] == 'rest'
    assert inv.files['bold'].metadata['RepetitionTime'] == 2.0
    assert inv.files['FDG'].metadata['TracerName'] == 'FDG'
    assert inv.files['dwi'].metadata['bval'].endswith('sub-01_ses-1_dwi.bval')
    assert inv.files['dwi'].metadata['bvec'].endswith('sub-01_ses-1_dwi.bvec')
    assert inv.reference.modality == 'T1w'
    assert inv.missing(['T1w', 'T2w', 'FDG', 'AV45']) == ('T2w', 'AV45')


def test_inventory_unreadable_reasons(inventories):
    inv = inventories['02']
    assert inv.available == ()
    assert inv.reference is None
    reasons = inv.unreadable
    assert 'header-only' in reasons['T1w']
    assert 'corrupt gzip' in reasons['T2w']
    assert 'empty file' in reasons['FLAIR']
    assert 'no finite voxel' in reasons['FDG']
    assert 'bold must be 4D' in reasons['bold']
    assert 'lists 4 b-values' in reasons['dwi']
    # unreadable is not missing: nothing of sub-02 would be synthesized in its place
    assert inv.missing(['T1w', 'T2w', 'FLAIR', 'AV45']) == ('AV45',)
    # the bad subject did not stop the next one
    assert inventories['03'].available == ('T1w',)


def test_skipped_folders_are_not_indexed(dataset):
    _, layout = dataset
    paths = [f.path for f in layout.get()]
    assert paths and not any(('/fmap/' in p or 'derivatives' in p or 'sourcedata' in p)
                             for p in paths)


def test_labels_and_filters(dataset):
    _, layout = dataset
    invs = collect_sessions(layout, participant_labels=['sub-03', '01'],
                            session_labels=['ses-1'], modalities=['t1w', 'flair'])
    assert [i.subject for i in invs] == ['01', '03']
    assert set(invs[0].files) == {'T1w', 'FLAIR'}
    assert invs[0].files['FLAIR'].path.endswith('acq-fast_FLAIR.nii.gz')
    invs = collect_sessions(layout, participant_labels=['01'],
                            bids_filters={'FLAIR': {'acquisition': 'slow'}, 'T1w': {'run': 2}})
    assert invs[0].files['FLAIR'].path.endswith('acq-slow_FLAIR.nii.gz')
    assert invs[0].files['T1w'].path.endswith('run-2_T1w.nii.gz')
    with pytest.raises(errors.NoMatchError, match='sub-99') as info:
        collect_sessions(layout, participant_labels=['01', '99'])
    assert info.value.exit_code == 18
    with pytest.raises(errors.NoMatchError, match='ses-7'):
        collect_sessions(layout, session_labels=['7'])
    with pytest.raises(errors.NoMatchError, match='T1w'):
        collect_sessions(layout, bids_filters={'T1w': {'acquisition': 'nonexistent'}})
    with pytest.raises(errors.UsageError, match='PDw'):
        collect_sessions(layout, bids_filters={'PDw': {}})


def test_first_readable_run_is_chosen(tmp_path):
    root = tmp_path / 'ds'
    (root / 'dataset_description.json').parent.mkdir()
    (root / 'dataset_description.json').write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    _save(root, 'sub-01/anat/sub-01_run-1_T1w.nii.gz', raw=b'')
    _save(root, 'sub-01/anat/sub-01_run-2_T1w.nii.gz', _img((6, 6, 6)))
    _save(root, 'sub-01/anat/sub-01_run-1_T2w.nii.gz', raw=b'')
    _save(root, 'sub-01/anat/sub-01_run-2_T2w.nii.gz', raw=_header_only())
    (inv,) = collect_sessions(load_layout(root))
    assert inv.session is None and inv.label == 'sub-01'
    assert inv.files['T1w'].path.endswith('run-2_T1w.nii.gz')
    assert inv.files['T1w'].status == 'present'
    assert inv.files['T2w'].status == 'unreadable'
    assert 'empty file' in inv.files['T2w'].reason and '1 other' in inv.files['T2w'].reason


def test_sessionless_dataset(tmp_path):
    layout = load_layout(make_dataset(tmp_path / 'ds', sessions=False))
    invs = {i.subject: i for i in collect_sessions(layout)}
    assert all(i.session is None for i in invs.values())
    assert invs['01'].label == 'sub-01' and 'FDG' in invs['01'].available
    assert 'header-only' in invs['02'].unreadable['T1w']


def test_describe_inventory(inventories):
    text = describe_inventory([inventories['01'], inventories['02']], ['T1w', 'T2w', 'AV45'])
    block1, block2 = text.split('\nsub-02_ses-1\n')
    assert block1.startswith('sub-01_ses-1')
    assert 'T2w    missing' in block1
    assert 'would synthesize: T2w, AV45' in block1 and 'reference T1w' in block1
    assert 'unreadable' in block2 and 'header-only' in block2
    assert 'nothing to synthesize from' in block2


def test_load_layout_errors(tmp_path):
    with pytest.raises(errors.NoInputError) as info:
        load_layout(tmp_path / 'absent')
    assert info.value.exit_code == 66
    (tmp_path / 'nodesc').mkdir()
    with pytest.raises(errors.DataError, match='dataset_description.json'):
        load_layout(tmp_path / 'nodesc')


def test_database_cache_reused_and_invalidated(tmp_path):
    root = make_dataset(tmp_path / 'ds')
    dbdir = tmp_path / 'db'
    t0 = time.perf_counter()
    first = load_layout(root, database_dir=dbdir)
    t_first = time.perf_counter() - t0
    (db,) = dbdir.glob('*.sqlite')
    mtime = db.stat().st_mtime_ns
    n_files = len(first.get())
    t0 = time.perf_counter()
    second = load_layout(root, database_dir=dbdir)
    t_second = time.perf_counter() - t0
    assert db.stat().st_mtime_ns == mtime
    assert len(second.get()) == n_files and t_second < t_first
    # the dataset changed: the index is rebuilt and sees the new file
    _save(root, 'sub-03/ses-1/anat/sub-03_ses-1_T2w.nii.gz', _img((6, 6, 6)))
    third = load_layout(root, database_dir=dbdir)
    assert len(third.get()) == n_files + 1
    inv = [i for i in collect_sessions(third) if i.subject == '03'][0]
    assert inv.available == ('T1w', 'T2w')


# ------------------------------------------------------------------------ pybids' example layouts
@pytest.mark.parametrize('name', ['ds005', '7t_trt', 'synthetic', 'ds000117'])
def test_pybids_example_layouts(name):
    root = EXAMPLES / name
    if not (root / 'dataset_description.json').is_file():
        pytest.skip(f'pybids example layouts not found under {EXAMPLES} '
                    '(run tools/fetch_pybids_examples.sh, or set BIDS_SYNTH_PYBIDS_EXAMPLES)')
    layout = load_layout(root)
    invs = collect_sessions(layout)
    assert len(invs) >= len(layout.get_subjects())
    found = [f for inv in invs for f in inv.files.values()]
    assert found, f'{name}: no modality found'
    # every NIfTI there is an empty placeholder: all are reported unreadable, with the reason
    assert all(f.status == 'unreadable' for f in found)
    assert all(('empty file' in f.reason or 'header-only' in f.reason) for f in found)
    assert all(inv.available == () for inv in invs)
    if name == '7t_trt':
        inv = invs[0]
        assert inv.session == '1' and {'T1w', 'bold'} <= set(inv.files)
        assert inv.files['bold'].entities['task'] == 'rest'
    if name == 'ds005':
        assert [i.session for i in invs] == [None] * 16
