"""Template space: offline TemplateFlow home, model grid, TemplateSpec."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bids_synth.preprocessing.templates import (
    TEMPLATE,
    ensure_templateflow_home,
    load_template,
    model_grid,
    template_files,
)

# Runs in a child process with TEMPLATEFLOW_HOME set before templateflow is imported and every
# socket connection refused, so any download attempt fails loudly.
_OFFLINE = r'''
import socket, sys
def _refuse(*a, **k):
    raise OSError('network access attempted')
socket.socket.connect = _refuse
socket.create_connection = _refuse
from bids_synth.preprocessing.templates import ensure_templateflow_home
home = ensure_templateflow_home()
import templateflow.api as api
import nibabel as nib
path = api.get('MNI152NLin2009aSym', resolution=2, desc='brain', suffix='mask')
img = nib.load(str(path))
assert img.shape == (96, 112, 96), img.shape
t1 = api.get('MNI152NLin2009aSym', resolution=1, suffix='T1w', desc=None)
assert nib.load(str(t1)).shape == (197, 233, 189)
print(path)
'''


@pytest.mark.parametrize('res', [1, 2, 4])
def test_model_grid(res):
    affine, shape = model_grid(res)
    assert shape == tuple(f // res for f in (192, 224, 192))
    assert np.allclose(np.diag(affine)[:3], res)
    assert np.allclose(affine[:3, 3], (-96, -132, -76))
    if res in (2, 4):
        assert all(s % 8 == 0 for s in shape)


def test_model_grid_rejects_bad_res():
    with pytest.raises(ValueError, match='divide 64'):
        model_grid(3)


def test_offline_home_concurrent_and_idempotent(tmp_path):
    home = tmp_path / 'tf'
    env = {**os.environ, 'TEMPLATEFLOW_HOME': str(home), 'TEMPLATEFLOW_AUTOUPDATE': '0'}
    procs = [subprocess.Popen([sys.executable, '-c', _OFFLINE], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip().endswith('tpl-MNI152NLin2009aSym_res-2_desc-brain_mask.nii.gz')
    files = [p for p in home.rglob('*') if p.is_file()]
    assert files and not [p for p in files if p.stat().st_size == 0]
    assert not [p for p in home.iterdir() if p.name.startswith('.tpl-')]  # no leftovers
    for path in template_files(home).values():
        assert path.stat().st_size > 1000
    desc = json.loads((home / f'tpl-{TEMPLATE}' / 'template_description.json').read_text())
    assert desc['Identifier'] == TEMPLATE
    assert desc['res']['2']['shape'] == [96, 112, 96]
    assert desc['res']['2']['origin'] == [-96.0, -132.0, -76.0]
    before = {p: p.stat().st_mtime_ns for p in files}
    # a second call with a populated home rewrites nothing
    assert ensure_templateflow_home(home) == home
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_load_template_res4():
    tpl = load_template(4)
    assert tpl.name == TEMPLATE and tpl.res == 4 and tpl.shape == (48, 56, 48)
    assert tpl.mask.dtype == bool and 20000 < tpl.mask.sum() < 40000
    for arr in (tpl.t1, tpl.gm, tpl.wm, tpl.csf):
        assert arr.shape == tpl.shape and arr.dtype == np.float32
    assert tpl.csf.min() >= 0 and tpl.csf.max() <= 1.01
    assert tpl.gm[tpl.mask].mean() > 5 * tpl.gm[~tpl.mask].mean()
    assert load_template(4) is tpl  # cached per process


def test_template_img_channels_last():
    tpl = load_template(4)
    arr = np.stack([tpl.t1, tpl.gm, tpl.wm])
    img = tpl.img(arr)
    assert img.shape == (48, 56, 48, 3)
    assert np.allclose(img.affine, tpl.affine)
    assert np.array_equal(np.asarray(img.dataobj)[..., 1], tpl.gm)
    assert tpl.img(tpl.mask).shape == (48, 56, 48)
    with pytest.raises(ValueError, match='grid'):
        tpl.img(np.zeros((2, 10, 10, 10)))
