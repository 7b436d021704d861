"""Phantom cohort generator: BIDS validity, clinical effects in the images, missingness, seeds.

Effects are measured in the written ground-truth images on their native grids, with region
masks placed through each image's known voxel-to-template affine (head pose and head size; the
small random warp is left out). To isolate one effect, the same subject (same anatomy, pose,
noise) is rendered with one clinical value changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_synth.phantom import generate_cohort
from bids_synth.phantom.clinical import Subject, Visit
from bids_synth.phantom.cohort import draw_missing, parse_missing
from bids_synth.phantom.session import relpath, render_session
from bids_synth.preprocessing.regions import REGIONS, pattern_mask, region_mask, sphere_mask

MODS = ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45', 'bold', 'dwi')


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    """2 subjects x 2 sessions, all modalities, PET often missing (as in ADNI)."""
    root = tmp_path_factory.mktemp('phantom')
    return generate_cohort(root / 'bids', n_subjects=2, n_sessions=2, seed=4,
                           missing={'FDG': 0.5, 'AV45': 0.5, 'T2w': 0.25, 'dwi': 0.25},
                           resolution='low')


def _subject(age, dx='CN', severity=0.0, amyloid=False):
    s = Subject('001', 'F', age, 14, 0, dx, amyloid, severity, 1.0)
    s.visits.append(Visit(None, age, 28, severity))
    return s


@pytest.fixture(scope='module')
def variants(tmp_path_factory):
    """One anatomy rendered as a young CN, an old CN and an old amyloid-positive AD patient."""
    root = tmp_path_factory.mktemp('variants')
    mods = ('T1w', 'FLAIR', 'FDG', 'AV45', 'bold', 'dwi')
    out = {}
    for tag, subj in (('young', _subject(60)), ('old', _subject(84)),
                      ('ad', _subject(84, 'AD', 0.8, True))):
        d = root / tag
        truth = render_session(subj, 0, seed=5, sub_index=0, modalities=mods,
                               resolution='low', roots={m: [d] for m in mods})
        out[tag] = (d, truth)
    return out


def _load(variant, mod):
    d, truth = variant
    img = nib.load(d / relpath(mod, '001', None))
    return np.asarray(img.dataobj, dtype=np.float32), np.array(truth['template_from_voxel'][mod])


def _mean(a, aff, name, pattern=False):
    m = (pattern_mask if pattern else region_mask)(name, aff, a.shape[:3])
    return float(a[m].mean())


# --------------------------------------------------------------------------- layout / BIDS
def _validator():
    exe = shutil.which('bids-validator-deno', path=str(Path(sys.executable).parent))
    return exe or shutil.which('bids-validator-deno')


@pytest.mark.parametrize('which', ['bids_dir', 'ground_truth_dir'])
def test_bids_validator_no_errors(cohort, which):
    exe = _validator()
    if exe is None:
        pytest.skip('bids-validator-deno not installed')
    root = getattr(cohort, which)
    proc = subprocess.run([exe, '--format', 'json', str(root)], capture_output=True, text=True,
                          timeout=300)
    issues = json.loads(proc.stdout)['issues']['issues']
    errors = [(i['code'], i.get('location')) for i in issues if i['severity'] == 'error']
    assert errors == []
    assert proc.returncode == 0


def test_layout_missing_and_ground_truth(cohort):
    bids, gt = cohort.bids_dir, cohort.ground_truth_dir
    assert gt == Path(f'{bids}_groundtruth') and bids not in gt.parents
    assert len(cohort.missing) == 4
    for (sub, ses), missing in cohort.missing.items():
        assert ses in ('1', '2')
        assert len(missing) < len(MODS)  # never an empty session
        for mod in MODS:
            rel = relpath(mod, sub, ses)
            assert (gt / rel).is_file() and (gt / rel.replace('.nii.gz', '.json')).is_file()
            assert (bids / rel).is_file() == (mod not in missing)
            if mod not in missing:  # present files are the ground truth itself
                assert (bids / rel).read_bytes() == (gt / rel).read_bytes()
    # exact missing counts: round(rate * 4 sessions)
    counts = {m: sum(m in v for v in cohort.missing.values()) for m in MODS}
    assert counts == {'T1w': 0, 'T2w': 1, 'FLAIR': 0, 'FDG': 2, 'AV45': 2, 'bold': 0, 'dwi': 1}
    sessions = (bids / 'sub-001' / 'sub-001_sessions.tsv').read_text().splitlines()
    assert sessions[0].split('\t')[:2] == ['session_id', 'age']
    ages = [float(r.split('\t')[1]) for r in sessions[1:]]
    assert len(ages) == 2 and ages[1] > ages[0]


def test_headers_and_sidecars(cohort):
    gt = cohort.ground_truth_dir
    codes = set()
    for (sub, ses) in cohort.missing:
        for mod in MODS:
            img = nib.load(gt / relpath(mod, sub, ses))
            codes.add(''.join(nib.aff2axcodes(img.affine)))
            side = json.loads((gt / relpath(mod, sub, ses, '.json')).read_text())
            if mod in ('FDG', 'AV45'):
                assert img.ndim == 4 and img.shape[3] == len(side['FrameDuration'])
                assert side['TracerRadionuclide'] == 'F18' and side['Units'] == 'Bq/mL'
            elif mod == 'bold':
                assert side['TaskName'] == 'rest'
                assert img.header.get_zooms()[3] == pytest.approx(side['RepetitionTime'])
                assert img.header.get_xyzt_units()[1] == 'sec'
                assert len(side['SliceTiming']) == img.shape[2]
            elif mod == 'dwi':
                bvals = np.loadtxt(gt / relpath(mod, sub, ses, '.bval'))
                bvecs = np.loadtxt(gt / relpath(mod, sub, ses, '.bvec'))
                assert bvecs.shape == (3, img.shape[3]) == (3, len(bvals))
                assert (bvals == 0).sum() >= 1 and (bvals == 1000).sum() >= 30
                assert np.allclose(np.linalg.norm(bvecs[:, bvals > 0], axis=0), 1, atol=1e-4)
            else:
                assert img.ndim == 3 and side['MagneticFieldStrength'] == 3
    assert len(codes) >= 3  # varied orientation codes


def test_known_pose_maps_images_to_template(cohort):
    """Each image's recorded voxel-to-MNI affine puts its brain where the template's brain is."""
    centre = np.array([0.0, -22.0, 9.5])  # brain-mask centroid of the MNI152 2009a template
    for (sub, ses), info in cohort.sessions.items():
        for mod in ('T1w', 'FDG', 'dwi'):
            img = nib.load(cohort.ground_truth_dir / relpath(mod, sub, ses))
            data = np.asarray(img.dataobj, dtype=np.float32)
            data = data.mean(-1) if data.ndim == 4 else data
            ijk = np.argwhere(data > 0.3 * np.percentile(data, 99.5))
            aff = np.array(info['template_from_voxel'][mod])
            mni = aff[:3, :3] @ ijk.mean(0) + aff[:3, 3]
            assert np.linalg.norm(mni - centre) < 10, (sub, ses, mod, mni)
        assert not np.allclose(np.array(info['template_from_voxel']['T1w'])[:3, :3],
                               np.array(info['template_from_voxel']['FDG'])[:3, :3])


def test_participants_coherent(cohort):
    bids = cohort.bids_dir
    header = (bids / 'participants.tsv').read_text().splitlines()[0].split('\t')
    assert header == ['participant_id', 'age', 'sex', 'education_years', 'apoe4', 'mmse',
                      'diagnosis', 'amyloid', 'clinical_notes']
    meta = json.loads((bids / 'participants.json').read_text())
    assert {'Levels'} <= set(meta['diagnosis']) and 'Units' in meta['age']
    for _, row in cohort.participants.iterrows():
        note = row['clinical_notes']
        assert f'{row["age"]:.0f}' in note
        if row['mmse'] == row['mmse']:
            assert f'{int(row["mmse"])}' in note
        if row['amyloid'] == row['amyloid']:
            assert row['amyloid'] in note
        assert 55 <= row['age'] <= 90 and row['sex'] in ('M', 'F')
        assert row['diagnosis'] in ('CN', 'MCI', 'AD')


def test_clinical_story_statistics():
    """Across many drawn subjects: AD has lower MMSE and more APOE4 and amyloid than CN."""
    from bids_synth.phantom.clinical import draw_subject

    subs = [draw_subject(np.random.default_rng(i), f'{i:03d}', 1) for i in range(600)]
    by = {dx: [s for s in subs if s.diagnosis == dx] for dx in ('CN', 'MCI', 'AD')}
    mmse = {dx: np.mean([s.mmse for s in v]) for dx, v in by.items()}
    assert mmse['CN'] > mmse['MCI'] > mmse['AD']
    amy = {dx: np.mean([s.amyloid for s in v]) for dx, v in by.items()}
    assert amy['AD'] > amy['MCI'] > amy['CN']
    carriers = [s.amyloid for s in subs if s.apoe4 > 0]
    non = [s.amyloid for s in subs if s.apoe4 == 0]
    assert np.mean(carriers) > np.mean(non)
    head = {sx: np.mean([s.head_scale for s in subs if s.sex == sx]) for sx in 'MF'}
    assert head['M'] > head['F']


# --------------------------------------------------------------------------- image effects
def test_fdg_hypometabolism_in_ad(variants):
    ratio = {}
    for tag in ('old', 'ad'):
        fdg, aff = _load(variants[tag], 'FDG')
        fdg = fdg.mean(-1)
        ratio[tag] = _mean(fdg, aff, 'posterior_cingulate') / _mean(fdg, aff, 'pons')
        ratio[tag + '_prec'] = _mean(fdg, aff, 'precuneus') / _mean(fdg, aff, 'pons')
    assert ratio['ad'] < 0.92 * ratio['old']
    assert ratio['ad_prec'] < 0.92 * ratio['old_prec']


def test_av45_suvr_higher_when_amyloid_positive(variants):
    suvr = {}
    for tag in ('old', 'ad'):
        av, aff = _load(variants[tag], 'AV45')
        av = av.mean(-1)
        suvr[tag] = _mean(av, aff, 'amyloid_cortex', True) / _mean(av, aff, 'cerebellum')
    assert suvr['ad'] > suvr['old'] + 0.2


def _ventricle_ml(variant):
    t1, aff = _load(variant, 'T1w')
    wm = np.percentile(t1[t1 > 100], 95)
    box = np.zeros(t1.shape, bool)
    for centre, _ in REGIONS['lateral_ventricles']:
        box |= sphere_mask(centre, 12, aff, t1.shape)
    return (t1[box] < 0.3 * wm).sum() * abs(np.linalg.det(aff[:3, :3])) / 1000


def test_ventricles_grow_with_age_and_ad(variants):
    young, old, ad = (_ventricle_ml(variants[t]) for t in ('young', 'old', 'ad'))
    assert old > 1.2 * young
    assert ad > old


def test_medial_temporal_atrophy_in_ad(variants):
    """Hippocampal GM lost to CSF: darker hippocampus on T1w (relative to WM) in AD."""
    ratio = {}
    for tag in ('old', 'ad'):
        t1, aff = _load(variants[tag], 'T1w')
        ratio[tag] = _mean(t1, aff, 'hippocampus') / np.percentile(t1[t1 > 100], 95)
    assert ratio['ad'] < 0.9 * ratio['old']


def test_wmh_on_flair_grow_with_age(variants):
    bright = {}
    for tag in ('young', 'old'):
        fl, _ = _load(variants[tag], 'FLAIR')
        bright[tag] = int((fl > 2.0 * np.median(fl[fl > 50])).sum())
    assert variants['old'][1]['wmh_ml'] > 3 * variants['young'][1]['wmh_ml']
    assert bright['old'] > bright['young'] + 20


def _dti(variant):
    d, _ = variant
    data = np.asarray(nib.load(d / relpath('dwi', '001', None)).dataobj, dtype=np.float32)
    bvals = np.loadtxt(d / relpath('dwi', '001', None, '.bval'))
    bvecs = np.loadtxt(d / relpath('dwi', '001', None, '.bvec')).T
    b0 = data[..., bvals == 0].mean(-1)
    dw = bvecs[bvals > 0]
    design = np.stack([dw[:, 0] ** 2, dw[:, 1] ** 2, dw[:, 2] ** 2, 2 * dw[:, 0] * dw[:, 1],
                       2 * dw[:, 0] * dw[:, 2], 2 * dw[:, 1] * dw[:, 2]], 1) * 1000.0
    sel = b0 > 100
    y = -np.log(np.clip(data[sel][:, bvals > 0], 1, None) / b0[sel, None])
    coef = np.linalg.lstsq(design, y.T, rcond=None)[0].T
    t = np.zeros((len(coef), 3, 3))
    for c, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]):
        t[:, i, j] = t[:, j, i] = coef[:, c]
    ev = np.linalg.eigvalsh(t)
    md = ev.mean(1)
    fa = np.sqrt(1.5 * ((ev - md[:, None]) ** 2).sum(1) / np.maximum((ev**2).sum(1), 1e-12))
    out_fa, out_md = np.zeros(b0.shape), np.zeros(b0.shape)
    out_fa[sel], out_md[sel] = fa, md
    return out_fa, out_md, b0


def test_fa_drops_md_rises_with_age_and_ad(variants):
    fa_y, md_y, b0 = _dti(variants['young'])
    wm = (fa_y > 0.35) & (md_y < 1.0e-3) & (b0 < np.percentile(b0[b0 > 100], 60))
    assert wm.sum() > 200
    fa_o, md_o, _ = _dti(variants['old'])
    fa_a, md_a, _ = _dti(variants['ad'])
    assert fa_o[wm].mean() < fa_y[wm].mean() - 0.03
    assert md_o[wm].mean() > md_y[wm].mean() * 1.05
    assert fa_a[wm].mean() < fa_o[wm].mean()


def test_dmn_connectivity_drops_in_ad(variants):
    corr = {}
    for tag in ('old', 'ad'):
        bold, aff = _load(variants[tag], 'bold')
        ts = [bold[region_mask(n, aff, bold.shape[:3])].mean(0)
              for n in ('posterior_cingulate', 'medial_prefrontal', 'angular')]
        c = np.corrcoef(np.stack(ts))
        corr[tag] = (c[0, 1] + c[0, 2] + c[1, 2]) / 3
    assert corr['old'] > 0.4
    assert corr['ad'] < corr['old'] - 0.15


# --------------------------------------------------------------------------- seeds, missingness
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(n_subjects=1, modalities=('T1w', 'FDG', 'dwi'), missing=0.0, resolution='low')
    a = generate_cohort(tmp_path / 'a', seed=21, **kw)
    b = generate_cohort(tmp_path / 'b', seed=21, **kw)
    c = generate_cohort(tmp_path / 'c', seed=22, **kw)
    for mod in ('T1w', 'FDG', 'dwi'):
        rel = relpath(mod, '001', None)
        assert (a.bids_dir / rel).read_bytes() == (b.bids_dir / rel).read_bytes()
        da = np.asarray(nib.load(a.bids_dir / rel).dataobj)
        dc = np.asarray(nib.load(c.bids_dir / rel).dataobj)
        assert da.shape != dc.shape or not np.array_equal(da, dc)
    assert a.participants.equals(b.participants)


def test_clean_rendering_is_the_same_session_without_acquisition_noise(tmp_path):
    kw = dict(n_subjects=1, modalities=('T1w', 'FDG', 'bold', 'dwi'), missing=0.0,
              resolution='low', seed=21)
    noisy = generate_cohort(tmp_path / 'noisy', **kw)
    clean = generate_cohort(tmp_path / 'clean', clean=True, **kw)
    for mod in ('T1w', 'FDG', 'bold', 'dwi'):
        rel = relpath(mod, '001', None)
        a, b = nib.load(noisy.bids_dir / rel), nib.load(clean.bids_dir / rel)
        assert np.allclose(a.affine, b.affine) and a.shape == b.shape  # same pose and grid
        da, db = (np.asarray(x.dataobj, dtype=np.float32) for x in (a, b))
        first = (da[..., 0], db[..., 0]) if da.ndim == 4 else (da, db)
        fg = first[1] > 0.3 * first[1].max()
        assert np.corrcoef(first[0][fg], first[1][fg])[0, 1] > 0.8  # same anatomy
        if mod == 'FDG':  # no counting noise: the frames differ only by the uptake trend
            ratio = db[..., 1][fg] / db[..., 0][fg]
            assert ratio.std() < 1e-2 * ratio.mean()
            assert (da[..., 1][fg] / da[..., 0][fg]).std() > 5e-2
        else:  # no Rician / thermal noise floor outside the head
            bg = db == 0
            assert bg.mean() > 0.05 and da[bg].mean() > 1.0, mod
    again = generate_cohort(tmp_path / 'again', **kw)  # the default rendering is unchanged
    rel = relpath('T1w', '001', None)
    assert (again.bids_dir / rel).read_bytes() == (noisy.bids_dir / rel).read_bytes()


def test_missingness_rates_honoured_and_never_empty():
    keys = [(f'{i:03d}', None) for i in range(200)]
    rates = parse_missing({'FDG': 0.6, 'AV45': 0.6, 'dwi': 0.7, 'bold': 0.9}, MODS[3:])
    miss = draw_missing(keys, MODS[3:], rates, seed=3)
    for mod, rate in rates.items():
        assert sum(mod in v for v in miss.values()) == round(rate * 200)
    assert all(len(v) < 4 for v in miss.values())
    one = draw_missing(keys[:50], MODS, parse_missing(0.3, MODS), seed=1)
    assert all(sum(m in v for v in one.values()) == 15 for m in MODS)


# --------------------------------------------------------------------------- command line
def test_cli_writes_cohort(tmp_path, capsys):
    from bids_synth.phantom.cli import main

    out = tmp_path / 'ds'
    code = main([str(out), '-n', '1', '--modalities', 'T1w', 'FLAIR', '--missing', 'FLAIR=1',
                 '--resolution', 'low', '--ground-truth', str(tmp_path / 'truth')])
    assert code == 0
    assert (out / relpath('T1w', '001', None)).is_file()
    assert not (out / relpath('FLAIR', '001', None)).exists()
    assert (tmp_path / 'truth' / relpath('FLAIR', '001', None)).is_file()


@pytest.mark.parametrize('args, code, text', [
    (['-n', '0'], 64, 'positive integer'),
    (['--modalities', 'T1w', 'PD'], 64, "unknown modality 'PD'"),
    (['--missing', '1.5'], 64, 'between 0 and 1'),
    (['--missing', 'FDG=2'], 64, 'between 0 and 1'),
    (['--resolution', 'ultra'], 64, 'invalid choice'),
    (['--ground-truth', '{out}/gt'], 64, 'must not be inside'),
    ([], 73, 'cannot create'),
])
def test_cli_errors(tmp_path, capsys, args, code, text):
    from bids_synth.phantom.cli import main

    blocker = tmp_path / 'file'
    blocker.write_text('x')
    out = blocker / 'ds' if code == 73 else tmp_path / 'ds'
    args = [a.format(out=out) for a in args]
    assert main([str(out), '--resolution', 'low', *args]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and text in err and 'Traceback' not in err


def test_tensor_ground_truth(cohort):
    """The ground truth (only) has the noise-free tensor, FA and MD (BEP016 names, world axes);
    FA is realistic in white matter, and the tensor bids_synth fits from the acquired noisy
    series (``dwi_maps``) points the same way as the truth."""
    from bids_synth.bids.modalities import MODALITIES, TENSOR_CHANNELS
    from bids_synth.preprocessing import tensor as T
    from bids_synth.preprocessing.derived import dwi_maps

    sub, ses = next(k for k, m in cohort.missing.items() if 'dwi' not in m)
    folder = cohort.ground_truth_dir / relpath('dwi', sub, ses, '').rsplit('/', 1)[0]
    stem = f'sub-{sub}_ses-{ses}_model-tensor_param-'
    tensor = nib.load(folder / f'{stem}tensor_dwimap.nii.gz').get_fdata()
    fa = nib.load(folder / f'{stem}fa_dwimap.nii.gz').get_fdata()
    assert tensor.shape[-1] == 6 and (folder / f'{stem}tensor_dwimap.json').is_file()
    assert not list((cohort.bids_dir / relpath('dwi', sub, ses, '').rsplit('/', 1)[0])
                    .glob('*dwimap*'))
    assert np.allclose(T.scalar_maps(tensor)['fa'][fa > 0], fa[fa > 0], atol=1e-5)
    assert 0.45 < np.percentile(fa[fa > 0], 99) < 0.9  # white matter: FA of real brains
    raw = cohort.bids_dir / relpath('dwi', sub, ses)
    img = nib.load(raw)
    maps = dwi_maps(img, np.loadtxt(str(raw).replace('.nii.gz', '.bval')),
                    np.loadtxt(str(raw).replace('.nii.gz', '.bvec'))).get_fdata()
    names = MODALITIES['dwi'].channels
    fitted = T.exp_tensor(maps[..., [names.index(c) for c in TENSOR_CHANNELS]])
    sel = fa > 0.5
    assert sel.sum() > 20
    v_true = np.linalg.eigh(T.to_matrix(tensor[sel]))[1][..., -1]
    v_fit = np.linalg.eigh(T.to_matrix(fitted[sel]))[1][..., -1]
    assert np.median(np.abs((v_true * v_fit).sum(-1))) > 0.9
    truth = json.loads((cohort.ground_truth_dir / 'phantom_truth.json').read_text())
    assert 'dwi_diffusivities' in truth[f'sub-{sub}_ses-{ses}']
