"""Raw-scan robustness on the real subjects of ../shared/realdata: skull-stripped detection,
N4 + deepbet brain extraction of a raw T1w, conform of thick-slice, oblique, LPS, 4D input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_synth.errors import DataError
from bids_synth.preprocessing.brain import detect_skull_stripped, prepare_brain

REAL = (Path(__file__).resolve().parents[1] / '..' / 'shared' / 'realdata' / 'bids').resolve()
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f'{REAL} not present')


def _real(sub, name):
    return REAL / f'sub-{sub}' / ('func' if 'bold' in name else 'anat') / f'sub-{sub}_{name}'


@needs_real
@pytest.mark.parametrize(('sub', 'name', 'stripped'), [
    ('ms07', 'T1w.nii.gz', True),
    ('ms07', 'FLAIR.nii.gz', True),
    ('ixi002', 'T2w.nii.gz', True),
    ('forrest02', 'T1w.nii.gz', False),
])
def test_detects_skull_stripped_inputs(sub, name, stripped):
    found, info = detect_skull_stripped(nib.load(_real(sub, name)))
    assert found is stripped, info


@needs_real
def test_deepbet_on_raw_t1w():
    """sub-forrest02's raw T1w (with skull), at half resolution to keep the test short."""
    img = nib.load(_real('forrest02', 'T1w.nii.gz'))
    half = img.slicer[::2, ::2, ::2]
    out, report = prepare_brain(half, label='forrest02', n4=False, threads=2)
    assert report.SkullStripped is False and not report.n4
    assert report.brain_extraction.startswith('deepbet')
    assert 1100 < report.mask_ml < 2100, report  # an adult brain (TIV), not the head
    assert detect_skull_stripped(out)[0]  # what is left is a brain
    assert out.shape == half.shape and np.allclose(out.affine, half.affine)
    same, skipped = prepare_brain(half, mode='skip')
    assert same is half and skipped.SkullStripped and skipped.brain_extraction == 'none'


def test_failed_extraction_is_one_line_naming_the_file():
    empty = nib.Nifti1Image(np.zeros((32, 32, 32), np.float32), np.eye(4))
    with pytest.raises(DataError, match=r'^/data/sub-01_T1w.nii.gz: brain extraction'):
        prepare_brain(empty, mode='force', label='/data/sub-01_T1w.nii.gz')


def test_n4_removes_a_bias_field():
    from bids_synth.preprocessing.brain import n4_correct

    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 48)] * 3, indexing='ij')
    head = (x ** 2 + y ** 2 + z ** 2) < 0.8
    tissue = np.where(rng.random(head.shape) < 0.5, 60.0, 100.0) * head
    field = np.exp(0.3 * x + 0.2 * y)  # about +-35%
    img = nib.Nifti1Image((tissue * field).astype(np.float32), np.diag([3.0, 3, 3, 1]))
    out = np.asarray(n4_correct(img, head).dataobj)
    assert out.shape == tissue.shape
    wm = (tissue == 100) & head

    def spread(a):
        return float(np.std(a[wm]) / np.mean(a[wm]))

    assert spread(out) < 0.5 * spread(tissue * field)


def _corr(a, b, mask):
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


@needs_real
def test_conform_thick_oblique_lps_4d(tmp_path):
    """sub-ms07's T1w as 5 mm slices, stored LPS, 10 deg oblique, 4D: conformed like the
    original."""
    from bids_synth.preprocessing.conform import conform
    from bids_synth.preprocessing.templates import load_template

    tpl = load_template(4)
    src = nib.load(_real('ms07', 'T1w.nii.gz'))
    assert nib.aff2axcodes(src.affine) == ('L', 'A', 'S')
    data = np.asarray(src.dataobj, dtype=np.float32)[:, ::-1, ::5]  # LPS, 5 mm slices
    flip = np.diag([1.0, -1.0, 5.0, 1.0])
    flip[1, 3] = data.shape[1] - 1
    a = np.deg2rad(10)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    moved = nib.Nifti1Image(np.stack([data, data], axis=-1), rot @ src.affine @ flip)
    assert nib.aff2axcodes(moved.affine)[:2] == ('L', 'P')
    nib.save(moved, tmp_path / 'thick.nii.gz')
    thick = conform(tmp_path / 'thick.nii.gz', 'T1w', tpl, tmp_path / 'w1', omp_nthreads=2)
    assert thick.brain['SkullStripped'] is True and thick.brain['brain_extraction'] == 'none'
    mask = tpl.mask
    ref = conform(_real('ms07', 'T1w.nii.gz'), 'T1w', tpl, tmp_path / 'w2', omp_nthreads=2)
    # the same brain wherever it lands (0.94 measured without the rotation)
    assert _corr(thick.array[0], ref.array[0], mask) > 0.9
    # and as close to the template as the 1 mm original (0.56: an MS patient's T1w, a tight
    # brain mask, 12-parameter affine)
    assert _corr(thick.array[0], tpl.t1, mask) > _corr(ref.array[0], tpl.t1, mask) - 0.05
