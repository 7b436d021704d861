"""group then participant on a 6-subject phantom: outputs valid, closer to the truth than the
cohort mean, the input untouched, a rerun a no-op, a bad file in one subject not fatal."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from bids_synth.bids.validation import find_validator, validate_dataset
from bids_synth.cli.run import main


@pytest.fixture(scope='module')
def participant_run(phantom6, group_regression, tmp_path_factory, digest):
    out, _ = group_regression
    before = digest(phantom6.bids_dir)
    work = tmp_path_factory.mktemp('pwork')
    t0 = time.monotonic()
    code = main([str(phantom6.bids_dir), str(out), 'participant', '-w', str(work),
                 '--nprocs', '2', '--omp-nthreads', '1'])
    return {'code': code, 'out': out, 'work': work, 'seconds': time.monotonic() - t0,
            'before': before}


def test_group_writes_model_and_report(phantom6, group_regression):
    out, _ = group_regression
    card = json.loads((out / 'models' / 'regression' / 'model_card.json').read_text())
    assert card['method'] == 'regression' and card['template']['res'] == 4
    assert card['validation']['per_target'], 'held-out validation metrics missing'
    assert (out / 'group_regression.html').is_file()
    # PDS stage 2 needs MIN_SESSIONS training sessions per input context: 6 subjects are too
    # few (with 4 it over-corrected), so this model has none (tests/test_refinement.py fits one)
    from bids_synth.models.refinement import MIN_SESSIONS

    n = max(sum(t not in miss for miss in phantom6.missing.values()) for t in ('bold', 'dwi'))
    assert n < MIN_SESSIONS and 'refinement' not in card


def _output(out, sub, ses, mod, space=False, **extra):
    from bids_synth.bids.derivatives import derivative_path, synth_path

    kw = {'space': 'MNI152NLin2009aSym', 'res': 4} if space else {}
    if extra:  # a derived map: entities=..., suffix=...
        return derivative_path(out, subject=sub, session=ses, modality=mod, **kw, **extra)
    return synth_path(out, subject=sub, session=ses, modality=mod, **kw)


def test_participant_outputs(phantom6, participant_run):
    assert participant_run['code'] == 0
    out = participant_run['out']
    n = 0
    for (sub, ses), missing in phantom6.missing.items():
        for mod in missing:
            for space in (False, True):
                path = _output(out, sub, ses, mod, space)
                assert path.is_file(), f'missing output {path}'
                side = json.loads(path.with_name(path.name.replace('.nii.gz', '.json'))
                                  .read_text())
                prov = side['bids_synth']
                assert prov['method'] == 'regression' and len(prov['model_sha256']) == 64
                assert side['SkullStripped'] is True
                assert all(s.startswith('bids:raw:') for s in side['Sources'])
                assert prov['inputs_used'] and set(prov['inputs_used']).isdisjoint(missing)
            n += 1
    assert n > 0
    desc = json.loads((out / 'dataset_description.json').read_text())
    assert desc['DatasetType'] == 'derivative'
    assert desc['GeneratedBy'][0]['Name'] == 'bids_synth'
    assert list(out.glob('sub-*.html'))


@pytest.mark.skipif(find_validator() is None, reason='bids-validator-deno not installed')
def test_outputs_pass_validator(participant_run):
    result = validate_dataset(participant_run['out'])
    assert result.ran and result.ok, result.errors[:5]


def test_input_untouched(phantom6, participant_run, digest):
    assert digest(phantom6.bids_dir) == participant_run['before']


def test_closer_to_truth_than_cohort_mean(phantom6, participant_run):
    """PSNR inside the brain mask: imputation vs the cohort mean image, against ground truth
    brought to template space by the same conform path."""
    from bids_synth.bids.layout import collect_sessions, load_layout
    from bids_synth.bids.modalities import MODALITIES
    from bids_synth.metrics import psnr
    from bids_synth.models.baseline import RegressionImputer
    from bids_synth.models.imputer import SessionArrays
    from bids_synth.preprocessing.conform import conform, load_conformed
    from bids_synth.preprocessing.templates import load_template

    out = participant_run['out']
    model = RegressionImputer.load(out / 'models' / 'regression')
    tpl = load_template(4)
    mask = tpl.mask.astype(bool)
    truth = {inv.subject: inv for inv in collect_sessions(load_layout(phantom6.ground_truth_dir))}
    gains, dwi = {}, {}
    for (sub, ses), missing in phantom6.missing.items():
        for mod in missing:
            inv = truth[sub]
            ref = conform(inv.files[mod].path, mod, tpl, participant_run['work'] / f'gt_{sub}_{mod}',
                          metadata=inv.files[mod].metadata).array
            mean = model.predict(SessionArrays(sub, ses, {}, {}), (mod,))[mod].mean
            names = MODALITIES[mod].channels
            if mod == 'dwi':  # the written maps are of the synthesized tensor: like with like
                dwi[sub] = _dwi_checks(out, sub, ses, ref, mean, tpl, mask)
                continue
            pred = load_conformed(_output(out, sub, ses, mod, space=True))
            chans = [i for i, c in enumerate(names) if len(names) == 1 or c.startswith('seg')]
            assert pred.shape[0] == len(chans)  # the main file: one channel, or segment means
            gains[f'{sub}:{mod}'] = float(np.mean([
                psnr(pred[k], ref[c], mask) - psnr(mean[c], ref[c], mask)
                for k, c in enumerate(chans)]))
    assert gains
    print('PSNR gain over the cohort mean (dB):', {k: round(v, 2) for k, v in gains.items()})
    print('dwi, written tensor maps vs the truth\'s tensor:', dwi)
    for sub, d in dwi.items():
        # bounds of the 6-subject ridge (measured: FA MAE 0.06-0.07, MD 7-10%, |cos| 0.998);
        # FA/MD do not beat the cohort mean here (MD -0.3 to -1.0 dB): see docs/outputs.md
        assert d['wm_fa_mae'] < 0.1 and d['wm_md_rel'] < 0.15, (sub, d)
        assert d['fibre_cos'] > 0.95, (sub, d)  # reoriented into template axes alike
    # the regression's gain on 6 phantom subjects is modest (about +0.2 dB on average here);
    # it must be positive on average and for most images
    assert np.mean(list(gains.values())) > 0.1
    assert sum(g > 0 for g in gains.values()) >= 0.75 * len(gains)


def _dwi_checks(out, sub, ses, ref, mean, tpl, mask) -> dict:
    """The written template-space FA/MD/tensor of a synthesized dwi against the truth's
    tensor (its conformed log-tensor channels) and the cohort mean's tensor."""
    from bids_synth.bids.modalities import MODALITIES, TENSOR_CHANNELS
    from bids_synth.metrics import psnr
    from bids_synth.preprocessing import tensor as T
    from bids_synth.preprocessing.conform import load_conformed

    idx = [MODALITIES['dwi'].channels.index(c) for c in TENSOR_CHANNELS]

    def of(arr):  # mm^2/s tensors and their FA / MD (MD in 1e-3 mm^2/s)
        d = T.exp_tensor(np.moveaxis(arr[idx], 0, -1)) * 1e-3
        m = T.scalar_maps(d)
        return d, m['fa'], m['md'] * 1e3

    def written(name):
        return load_conformed(_output(out, sub, ses, 'dwi', True, suffix='dwimap',
                                      entities=f'model-tensor_param-{name}'))

    t_d, t_fa, t_md = of(ref)
    _, m_fa, m_md = of(mean)
    p_fa, p_md, p_d = written('fa')[0], written('md')[0] * 1e3, np.moveaxis(written('tensor'),
                                                                            0, -1)
    wm = mask & (tpl.wm > 0.5)
    sel = mask & (t_fa > 0.4)
    v_t = np.linalg.eigh(T.to_matrix(t_d[sel]))[1][..., -1]
    v_p = np.linalg.eigh(T.to_matrix(p_d[sel]))[1][..., -1]
    return {'fa_gain_db': round(psnr(p_fa, t_fa, mask) - psnr(m_fa, t_fa, mask), 2),
            'md_gain_db': round(psnr(p_md, t_md, mask) - psnr(m_md, t_md, mask), 2),
            'wm_fa_mae': round(float(np.abs(p_fa - t_fa)[wm].mean()), 3),
            'wm_md_rel': round(float(np.abs(p_md / t_md - 1)[wm].mean()), 3),
            'fibre_cos': round(float(np.median(np.abs((v_t * v_p).sum(-1)))), 3)}


def test_rerun_is_noop_and_fast(phantom6, participant_run):
    out, work = participant_run['out'], participant_run['work']
    files = {p: p.stat().st_mtime_ns for p in out.rglob('sub-*/**/*.nii.gz')}
    t0 = time.monotonic()
    code = main([str(phantom6.bids_dir), str(out), 'participant', '-w', str(work),
                 '--nprocs', '2', '--omp-nthreads', '1', '--skip-bids-validation'])
    seconds = time.monotonic() - t0
    assert code == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob('sub-*/**/*.nii.gz')} == files
    # nothing recomputed: well under the first run (its conform, synthesis and writing)
    assert seconds < 0.75 * participant_run['seconds']


def test_bad_file_in_one_subject(phantom6, group_regression, tmp_path, capsys):
    """A header-only T1w in one subject: one error line naming it, exit 65, others done."""
    out, _ = group_regression
    bids = tmp_path / 'bids'
    shutil.copytree(phantom6.bids_dir, bids)
    targets = {sub: mods for (sub, _), mods in phantom6.missing.items() if mods}
    bad_sub, good_sub = sorted(targets)[:2]
    bad = next(p for p in (bids / f'sub-{bad_sub}').rglob('*.nii.gz'))
    import nibabel as nib

    hdr = nib.load(bad).header
    with open(bad.with_suffix('').with_suffix('.nii'), 'wb') as f:  # header-only NIfTI
        f.write(hdr.binaryblock + b'\x00' * 4)
    bad.unlink()
    bad = bad.with_suffix('').with_suffix('.nii')
    code = main([str(bids), str(tmp_path / 'out'), 'participant', '--model',
                 str(out / 'models' / 'regression'), '-w', str(tmp_path / 'work'),
                 '--participant-label', bad_sub, good_sub, '--skip-bids-validation',
                 '--nprocs', '2'])
    err = capsys.readouterr().err
    assert code == 65
    lines = [ln for ln in err.splitlines() if ln.startswith('bids_synth: error:')]
    assert len(lines) == 1 and bad.name in lines[0] and 'Traceback' not in err
    assert list((tmp_path / 'out' / f'sub-{good_sub}').rglob('*desc-synth_*.nii.gz'))


def test_participant_with_embedded_default(tmp_path, capsys):
    """No --model and no group model: the embedded default model is used, and the sidecar says
    where the model came from."""
    from bids_synth.bids.derivatives import derivative_path
    from bids_synth.models.checkpoint import read_card
    from bids_synth.phantom import generate_cohort
    from bids_synth.workflows.base import default_model_dir

    card = read_card(default_model_dir())
    assert card['origin'] == 'embedded default' and card['recipe']['command']
    cohort = generate_cohort(tmp_path / 'bids', n_subjects=2, seed=21, resolution='low',
                             modalities=('T1w', 'FDG'), missing={'FDG': 0.5},
                             ground_truth=tmp_path / 'gt')
    out = tmp_path / 'out'
    code = main([str(cohort.bids_dir), str(out), 'participant', '-w', str(tmp_path / 'work'),
                 '--skip-bids-validation', '--nprocs', '2'])
    assert code == 0, capsys.readouterr().err
    (sub, ses), = [k for k, v in cohort.missing.items() if v]
    path = derivative_path(out, subject=sub, session=ses, modality='FDG')
    side = json.loads(path.with_name(path.name.replace('.nii.gz', '.json')).read_text())
    prov = side['bids_synth']
    assert prov['model_origin'] == 'embedded default' and prov['method'] == card['method']
    assert prov['model_sha256'] == card['sha256'] and prov['inputs_used'] == ['T1w']
    if find_validator() is not None:
        result = validate_dataset(out)
        assert result.ok, result.errors[:5]


@pytest.fixture(scope='module')
def cross_run(tmp_path_factory):
    """Two subjects, one with bold only and one with dwi only (the embedded default model),
    the dwi rendered for a user's gradient table (--dwi-scheme)."""
    from bids_synth.bids.gradients import standard_scheme
    from bids_synth.phantom import generate_cohort

    root = tmp_path_factory.mktemp('cross')
    cohort = generate_cohort(root / 'bids', n_subjects=2, seed=31, resolution='low',
                             modalities=('bold', 'dwi'), missing=0.0,
                             ground_truth=root / 'gt')
    shutil.rmtree(cohort.bids_dir / 'sub-001' / 'dwi')
    shutil.rmtree(cohort.bids_dir / 'sub-002' / 'func')
    scheme = standard_scheme(1, 12, 2000.0)  # not the dataset's table (2 b0, 30 at b=1000)
    (root / 'table.bval').write_text(scheme.bval_text())
    (root / 'table.bvec').write_text(scheme.bvec_text())
    out = root / 'out'
    code = main([str(cohort.bids_dir), str(out), 'participant', '-w', str(root / 'work'),
                 '--nprocs', '2', '--omp-nthreads', '1', '--skip-bids-validation',
                 '--no-reports', '--dwi-scheme', str(root / 'table.bval')])
    return {'code': code, 'out': out, 'root': root, 'scheme': scheme}


def test_bold_only_session_gets_dwi_outputs(cross_run):
    """dwi from bold alone: the series' .bval/.bvec are the requested table in both spaces,
    the sidecar says where the table came from, and dipy's fit of the written series returns
    the written FA/MD (render-then-fit through the CLI)."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    from bids_synth.preprocessing.tensor import fsl_to_world

    assert cross_run['code'] == 0
    out, root, scheme = cross_run['out'], cross_run['root'], cross_run['scheme']
    for space in (False, True):
        series = _output(out, '001', None, 'dwi', space)
        stem = str(series)[:-len('.nii.gz')]
        assert Path(stem + '.bval').read_text() == (root / 'table.bval').read_text()
        assert Path(stem + '.bvec').read_text() == (root / 'table.bvec').read_text()
        side = json.loads(Path(stem + '.json').read_text())
        assert side['bids_synth']['gradient_scheme']['Source'] == 'file'
        assert side['bids_synth']['gradient_scheme']['Origin'].startswith(str(root / 'table'))
        assert side['bids_synth']['inputs_used'] == ['bold']
        ref = side['bids_synth']['refinement']  # PDS stage 2 of the embedded default
        assert ref['applied'] and ref['context'] == 'src1_t1w0'
        assert ref['tissue_maps'] == 'template' and ref['tissue_refinement']
        img = nib.load(series)
        assert img.shape[-1] == 13
        fa = _output(out, '001', None, 'dwi', space, entities='model-tensor_param-fa',
                     suffix='dwimap')
        md = _output(out, '001', None, 'dwi', space, entities='model-tensor_param-md',
                     suffix='dwimap')
        fa, md = nib.load(fa).get_fdata(), nib.load(md).get_fdata()
        data = img.get_fdata()
        sel = data[..., 0] > 0.3 * data[..., 0].max()  # brain, away from its resampled edge
        world = fsl_to_world(scheme.bvecs, img.affine)
        fit = TensorModel(gradient_table(scheme.bvals, bvecs=world)).fit(data[sel])
        assert np.median(np.abs(fit.fa - fa[sel])) < 0.01
        assert np.median(np.abs(fit.md / md[sel] - 1)) < 0.01
        assert 0.0002 < np.median(md[sel]) < 0.003  # mm^2/s


def test_dwi_only_session_gets_bold_maps(cross_run):
    import nibabel as nib

    out = cross_run['out']
    assert not list(out.rglob('*_bold.nii.gz'))  # no made-up time series
    for name in ('mean', 'alff', 'falff', 'reho'):
        path = _output(out, '002', None, 'bold', False, entities=f'stat-{name}',
                       suffix='boldmap')
        assert path.is_file(), path
        side = json.loads(path.with_name(path.name.replace('.nii.gz', '.json')).read_text())
        assert side['bids_synth']['inputs_used'] == ['dwi'] and 'RepetitionTime' not in side
    reho = nib.load(path).get_fdata()
    assert 0 <= reho.min() and reho.max() <= 1
    if find_validator() is not None:
        result = validate_dataset(out)
        assert result.ok, result.errors[:5]


def test_bad_dwi_scheme_is_one_line(cross_run, tmp_path, capsys):
    bids = cross_run['out'].parent / 'bids'
    (tmp_path / 'bad.bval').write_text('0 1000 1000\n')
    (tmp_path / 'bad.bvec').write_text('0 1\n0 0\n0 0\n')
    for arg, code in ((tmp_path / 'missing.bval', 66), (tmp_path / 'bad', 64)):
        got = main([str(bids), str(tmp_path / 'out'), 'participant', '-w', str(tmp_path / 'w'),
                    '--skip-bids-validation', '--dwi-scheme', str(arg)])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith('bids_synth: error:')]
        assert got == code and len(lines) == 1, err
        assert ('missing.bvec' if code == 66 else 'bad.bvec') in lines[0]
        assert not (tmp_path / 'out').exists()
