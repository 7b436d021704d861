"""The subject report: a brain-mask mosaic when brain extraction ran (--skull-strip)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np


def _conform_report(path, modality, in_file, brain_file, extracted: bool):
    """A record as ``ConformInput`` writes it."""
    rec = {'modality': modality, 'in_file': str(in_file), 'transform_source': 'bids_synth',
           'brain_file': str(brain_file), 'SkullStripped': not extracted, 'n4': extracted,
           'brain_extraction': 'deepbet 1.0.2' if extracted else 'none',
           'mask_ml': 1234.5 if extracted else None, 'seconds': {'detect': 0.1}}
    path.write_text(json.dumps(rec))
    return str(path)


def test_report_shows_the_brain_mask_of_extracted_inputs(tmp_path):
    from bids_synth.interfaces.derivatives import _brain_masks, _read_reports
    from bids_synth.reports.core import subject_report

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    head = np.zeros((24, 24, 24), np.float32)
    head[3:21, 3:21, 3:21] = 50.0
    head[6:18, 6:18, 6:18] = 100.0
    raw = tmp_path / 'sub-01_T1w.nii.gz'
    nib.save(nib.Nifti1Image(head, aff), raw)
    brain = tmp_path / 'native_reference.nii.gz'
    nib.save(nib.Nifti1Image(np.where(head > 60, head, 0), aff), brain)
    flair = tmp_path / 'sub-01_FLAIR.nii.gz'
    nib.save(nib.Nifti1Image(head, aff), flair)
    reports = [_conform_report(tmp_path / 'T1w_brain.json', 'T1w', raw, brain, True),
               _conform_report(tmp_path / 'FLAIR_brain.json', 'FLAIR', flair, flair, False)]
    masks = _brain_masks(reports)
    assert set(masks) == {'T1w'} and masks['T1w']['mask_ml'] == 1234.5
    # the sidecars' preprocessing block keeps no work-dir path
    assert all('brain_file' not in r and 'in_file' not in r
               for r in _read_reports(reports).values())

    out = tmp_path / 'out'
    (out / 'sub-01' / 'anat').mkdir(parents=True)
    native = out / 'sub-01' / 'anat' / 'sub-01_desc-synth_T2w.nii.gz'
    nib.save(nib.Nifti1Image(np.where(head > 60, 0.5, 0).astype(np.float32), aff), native)
    record = {'subject': '01', 'session': None, 'target': 'T2w',
              'files': {'native': str(native.relative_to(out))},
              'source_files': [str(raw)], 'provenance': {'method': 'regression'},
              'brain_masks': masks,
              'native_refinement': {'applied': True, 'guide_modality': 'T1w',
                                    'radius_mm': 2.0, 'eps': 0.001}}
    page = subject_report(out, '01', [record]).read_text()
    assert 'Brain extraction: sub-01_T1w' in page and '1234.5 mL' in page
    assert 'alt="brain mask sub-01_T1w"' in page and 'FLAIR' not in page
    png = out / 'sub-01' / 'figures' / 'sub-01_T1w_desc-brain_mask.png'
    assert png.is_file() and png.stat().st_size > 1000
    assert 'refined with the detail of the acquired T1w' in page

    # no brain extraction: no mask section
    record.pop('brain_masks')
    page = subject_report(out, '01', [record]).read_text()
    assert 'Brain extraction' not in page
