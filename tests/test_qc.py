"""Registration QC (bids_synth.preprocessing.qc) on the phantom and on real scans."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_synth import errors
from bids_synth.preprocessing.conform import register_to_template
from bids_synth.preprocessing.qc import QC_THRESHOLDS, RegistrationQC, threshold_for

REALDATA = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'realdata' / 'bids'
TURN_X = np.diag([1.0, -1.0, -1.0, 1.0])


@pytest.fixture(scope='module')
def template():
    from bids_synth.preprocessing.templates import ensure_templateflow_home, load_template

    ensure_templateflow_home()
    return load_template(4)


def test_thresholds_and_record():
    assert threshold_for('T2w') == QC_THRESHOLDS[None] > threshold_for('bold')
    qc = RegistrationQC(similarity=0.51234, threshold=0.72, tried={'identity': 0.51234})
    assert not qc.passed and qc.to_dict()['similarity'] == 0.5123
    assert qc.to_dict()['passed'] is False


def test_noise_fails_every_orientation(template, tmp_path):
    img = nib.Nifti1Image(np.random.default_rng(1).random((40, 48, 40)).astype('f4'),
                          np.diag([4.0, 4.0, 4.0, 1.0]))
    with pytest.raises(errors.RegistrationQCError, match='registration QC failed') as info:
        register_to_template(img, template, modality='T1w', work_dir=tmp_path / 'a')
    assert info.value.exit_code == 65 and 'rot180-z' in str(info.value)
    tx = register_to_template(img, template, modality='T1w', work_dir=tmp_path / 'b',
                              force=True)
    assert tx.qc['forced'] and not tx.qc['passed'] and len(tx.qc['tried']) == 4


@pytest.mark.skipif(not REALDATA.is_dir(), reason=f'real sample not found at {REALDATA}')
def test_real_t1w_passes_and_a_turned_header_is_recovered(template, tmp_path):
    """IXI002's T1w (skull-stripped, sagittal 1.2 mm): passes as given; with its affine turned
    180 degrees the plain registration fails the QC and the rot180-x candidate recovers it."""
    img = nib.load(REALDATA / 'sub-ixi002' / 'anat' / 'sub-ixi002_T1w.nii.gz')
    plain = register_to_template(img, template, modality='T1w', work_dir=tmp_path / 'plain')
    assert plain.qc['orientation'] == 'identity' and plain.qc['similarity'] > 0.85
    turned = nib.Nifti1Image(np.asarray(img.dataobj), TURN_X @ img.affine)
    tx = register_to_template(turned, template, modality='T1w', work_dir=tmp_path / 'turned')
    assert tx.qc['tried']['identity'] < threshold_for('T1w')
    assert tx.qc['orientation'] == 'rot180-x'
    assert abs(tx.qc['similarity'] - plain.qc['similarity']) < 0.02
