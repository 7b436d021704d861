"""Bad input never gives a silently wrong answer (issue 12).

Each case runs the command line on a 2-subject low-resolution phantom (T2w missing everywhere,
so T2w is synthesized from T1w and FLAIR) with one defect in sub-001, and checks: the exit code,
exactly one error line naming the file (and row/column), no traceback, the input tree
unchanged, no temporary file left, and sub-002 processed.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_synth.bids.derivatives import _TEMP
from bids_synth.cli.run import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ['--skip-bids-validation', '--modalities', 'T2w', '--no-reports', '--nprocs', '2',
        '--omp-nthreads', '1']


@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    from bids_synth.phantom import generate_cohort

    root = tmp_path_factory.mktemp('badinput')
    return generate_cohort(root / 'bids', n_subjects=2, seed=1, resolution='low',
                           modalities=('T1w', 'T2w', 'FLAIR'),
                           missing={'T1w': 0.0, 'T2w': 1.0, 'FLAIR': 0.0})


@pytest.fixture(scope='module')
def reference(cohort, tmp_path_factory):
    """A clean run: the outputs every case is compared with."""
    root = tmp_path_factory.mktemp('reference')
    code = main([str(cohort.bids_dir), str(root / 'out'), 'participant', '-w',
                 str(root / 'work'), *FAST])
    assert code == 0
    return root


class Case:
    """One run of the command line on a copy of the cohort with a defect."""

    def __init__(self, cohort, tmp_path):
        self.bids = tmp_path / 'bids'
        shutil.copytree(cohort.bids_dir, self.bids)
        self.out, self.work = tmp_path / 'out', tmp_path / 'work'
        self.tmp = tmp_path

    def file(self, sub: str, suffix: str) -> Path:
        return next(self.bids.rglob(f'sub-{sub}*_{suffix}.nii.gz'))

    def run(self, capsys, digest, *extra) -> int:
        before = digest(self.bids)
        self.code = main([str(self.bids), str(self.out), 'participant', '-w', str(self.work),
                          *FAST, *[str(e) for e in extra]])
        captured = capsys.readouterr()
        self.err, self.stdout = captured.err, captured.out
        assert digest(self.bids) == before, 'the input dataset was modified'
        assert 'Traceback' not in self.err + self.stdout
        leftovers = [p for d in (self.out, self.work) if d.exists() for p in d.rglob('*')
                     if _TEMP.match(p.name)]
        assert not leftovers, leftovers
        return self.code

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith('bids_synth: error:')]

    def one_error(self, *words) -> str:
        (line,) = self.errors
        for word in words:
            assert str(word) in line, (word, line)
        return line

    def synthesized(self, sub: str) -> list[Path]:
        return sorted((self.out / f'sub-{sub}').rglob('*desc-synth_T2w.nii.gz'))

    def closing(self) -> str:
        return [ln for ln in self.err.splitlines() if '[bids_synth]' in ln][-1]


def _save_like(path: Path, data, affine, header=None):
    nib.save(nib.Nifti1Image(data, affine, header), path)


def test_non_finite_voxels(cohort, tmp_path, capsys, digest):
    """Case 1: a T1w with NaN/Inf voxels is unreadable (65), never registered."""
    case = Case(cohort, tmp_path)
    t1 = case.file('001', 'T1w')
    img = nib.load(t1)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[10:14, 10:14, 10:14] = np.nan
    data[0, 0, 0] = np.inf
    _save_like(t1, data, img.affine)  # float32: NaN and inf survive
    assert case.run(capsys, digest) == 65
    case.one_error(t1, '65 of', 'not finite (NaN/inf)', 'sub-001: T1w is unreadable')
    assert case.synthesized('002') and '1 problem(s)' in case.closing()
    prov = json.loads(case.synthesized('001')[0].with_suffix('').with_suffix('.json')
                      .read_text())['bids_synth']
    assert prov['inputs_used'] == ['FLAIR']  # sub-001 goes on from what is usable


def test_flipped_affine_is_recovered(cohort, reference, tmp_path, capsys, digest):
    """Case 2: an affine turned 180 degrees: the orientation candidates find the right start;
    the QC and the orientation kept are in the sidecar; same image as the clean run."""
    case = Case(cohort, tmp_path)
    t1 = case.file('001', 'T1w')
    img = nib.load(t1)
    _save_like(t1, np.asarray(img.dataobj), np.diag([1.0, -1.0, -1.0, 1.0]) @ img.affine)
    assert case.run(capsys, digest) == 0 and not case.errors
    tpl = next(p for p in case.synthesized('001') if 'space-' in p.name)
    qc = json.loads(tpl.with_suffix('').with_suffix('.json').read_text())['bids_synth'][
        'registration_qc']
    assert qc['T1w']['orientation'] == 'rot180-x' and qc['T1w']['passed']
    assert qc['T1w']['tried']['identity'] < qc['T1w']['threshold'] <= qc['T1w']['similarity']
    clean = reference / 'out' / tpl.relative_to(case.out)
    r = np.corrcoef(nib.load(tpl).get_fdata().ravel(), nib.load(clean).get_fdata().ravel())
    assert r[0, 1] > 0.99


def test_registration_qc_gate_and_force(cohort, tmp_path, capsys, digest):
    """An input no orientation registers (noise): one line, 65, the other subject done; with
    --force it is kept and flagged in the sidecar."""
    case = Case(cohort, tmp_path)
    t1 = case.file('001', 'T1w')
    img = nib.load(t1)
    # noise on a grid twice as coarse, same field of view (each orientation tried registers
    # 8 times fewer voxels)
    shape = tuple(max(1, n // 2) for n in img.shape[:3])
    affine = img.affine.copy()
    affine[:3, :3] *= 2
    noise = np.random.default_rng(0).random(shape).astype(np.float32)
    _save_like(t1, noise, affine)
    assert case.run(capsys, digest) == 65
    case.one_error(t1, 'registration QC failed', 'orientations tried', '--force')
    assert case.synthesized('002') and not case.synthesized('001')
    assert '1 problem(s)' in case.closing()
    assert case.run(capsys, digest, '--force') == 0 and not case.errors
    side = json.loads(case.synthesized('001')[0].with_suffix('').with_suffix('.json')
                      .read_text())
    assert side['bids_synth']['registration_qc']['T1w']['forced'] is True
    assert 'kept with --force' in side['Description']


@pytest.mark.parametrize(('column', 'value', 'words'), [
    ('age', 'seventy', ["'seventy' is not a number", 'Units "year"']),
    ('sex', 'U', ["'U' is not one of the Levels in participants.json"]),
])
def test_clinical_value_checked(cohort, tmp_path, capsys, digest, column, value, words):
    """Cases 3 and 4: a value that does not fit participants.json: one line naming file, row
    and column; that subject skipped, the other processed."""
    case = Case(cohort, tmp_path)
    tsv = case.bids / 'participants.tsv'
    lines = [ln.split('\t') for ln in tsv.read_text().splitlines()]
    row = next(i for i, ln in enumerate(lines) if ln[0] == 'sub-001')
    lines[row][lines[0].index(column)] = value
    tsv.write_text('\n'.join('\t'.join(ln) for ln in lines) + '\n')
    assert case.run(capsys, digest) == 65
    case.one_error(f'{tsv}:{row + 1}:', f'column {column!r}', *words, 'sub-001 skipped')
    assert case.synthesized('002') and not case.synthesized('001')


@pytest.mark.parametrize('defect', ['ragged', 'duplicate'])
def test_malformed_participants_tsv_stops_only_its_subject(cohort, tmp_path, capsys, digest,
                                                           defect):
    """Case 7: a ragged row or a duplicate id skips that subject only."""
    case = Case(cohort, tmp_path)
    tsv = case.bids / 'participants.tsv'
    lines = tsv.read_text().splitlines()
    row = next(i for i, ln in enumerate(lines) if ln.startswith('sub-001'))
    if defect == 'ragged':
        lines[row] += '\textra'
        where, what = row + 1, 'row has'
    else:
        lines.append(lines[row])
        where, what = len(lines), 'duplicate participant_id sub-001'
    tsv.write_text('\n'.join(lines) + '\n')
    assert case.run(capsys, digest) == 65
    case.one_error(f'{tsv}:{where}:', what, 'sub-001 skipped')
    assert case.synthesized('002') and not case.synthesized('001')


def test_leftover_temporaries_removed_on_resume(cohort, tmp_path, capsys, digest):
    """Case 5: the truncated temporary files of a killed run (output and work folders) are
    removed when the run resumes, and the resumed outputs are identical."""
    case = Case(cohort, tmp_path)
    assert case.run(capsys, digest) == 0
    before = {k: v for k, v in digest(case.out).items() if k.endswith('.nii.gz')}
    dead = subprocess.Popen(['true'])
    dead.wait()
    final = case.synthesized('001')[0]
    leftover = final.with_name(f'.{final.name}.{dead.pid}.0badcafe.tmp.nii.gz')
    leftover.write_bytes(final.read_bytes()[:100])  # truncated, as a kill mid-write leaves it
    work_leftover = next(case.work.rglob('native_reference.nii.gz')).with_name(
        f'.tmp-{dead.pid}-native_reference.nii.gz')
    work_leftover.write_bytes(b'\x1f\x8b')
    assert case.run(capsys, digest) == 0 and not case.errors  # (it checks: no leftovers)
    assert {k: v for k, v in digest(case.out).items() if k.endswith('.nii.gz')} == before


def _bad_model(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    from bids_synth.workflows.base import default_model_dir

    model = tmp_path / 'model'
    shutil.copytree(default_model_dir(), model)
    weights = model / 'model.safetensors'
    marker = tmp_path / 'pickle-was-loaded'
    if kind == 'pickle':
        class Evil:
            def __reduce__(self):
                return (os.system, (f'touch {marker}',))

        weights.write_bytes(pickle.dumps(Evil(), protocol=4))
    else:
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    return model, marker


@pytest.mark.parametrize(('kind', 'words'), [
    ('pickle', ['weights are a pickle', 'refusing to load']),
    ('tampered', ['sha256', 'does not match the model card']),
])
def test_bad_model_checked_before_any_output(cohort, tmp_path, capsys, digest, kind, words):
    """Case 6: 65 before anything is written (no output or work folder), never unpickled."""
    case = Case(cohort, tmp_path)
    model, marker = _bad_model(tmp_path, kind)
    assert case.run(capsys, digest, '--model', model) == 65
    case.one_error(model / 'model.safetensors', *words)
    assert not case.out.exists() and not case.work.exists() and not marker.exists()


def test_method_regression_falls_back_to_the_default(cohort, tmp_path, capsys, digest):
    """Case 8: the embedded default is a regression model: --method regression uses it."""
    case = Case(cohort, tmp_path)
    assert case.run(capsys, digest, '--method', 'regression', '--dry-run') == 0
    assert not case.errors and 'using the embedded default' in case.err
    assert 'would synthesize: T2w' in case.stdout


def test_no_subjects_is_66(tmp_path, capsys, digest):
    """Case 9: no subject at all is "no input", not a --session-label mismatch."""
    bids = tmp_path / 'bids'
    bids.mkdir()
    (bids / 'dataset_description.json').write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    code = main([str(bids), str(tmp_path / 'out'), 'participant', '--skip-bids-validation'])
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith('bids_synth: error:')]
    assert code == 66 and 'no subjects' in line and 'session' not in line
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'bids_synth_work').exists()


def test_dry_run_exit_code_matches_the_run(cohort, tmp_path, capsys, digest):
    """Case 9 and a minor one: --dry-run exits 65 when it printed errors; an uncompressed NIfTI
    named .nii.gz is named as such."""
    case = Case(cohort, tmp_path)
    flair = case.file('001', 'FLAIR')
    img = nib.load(flair)
    raw = tmp_path / 'plain.nii'
    nib.save(img, raw)
    flair.write_bytes(raw.read_bytes())
    assert case.run(capsys, digest, '--dry-run') == 65
    line = case.one_error(flair, 'an uncompressed NIfTI named .nii.gz')
    assert 'corrupt gzip' not in line and not case.out.exists()


@pytest.mark.parametrize(('argv', 'code', 'words'), [
    (['--participant-label', '01/02'], 64,
     ["invalid label '01/02': a BIDS label has only letters"]),
    (['--output-is-a-file'], 73, ['the output folder is a file, not a folder']),
])
def test_minor_messages(cohort, tmp_path, capsys, argv, code, words):
    out = tmp_path / 'out'
    if argv == ['--output-is-a-file']:
        out.write_text('')
        argv = []
    got = main([str(cohort.bids_dir), str(out), 'participant', '--skip-bids-validation', *argv])
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith('bids_synth: error:')]
    assert got == code and not line.startswith('bids_synth: error: bids_synth:')
    for word in words:
        assert word in line


def test_concurrent_runs_into_one_output(cohort, reference, tmp_path, digest):
    """Two runs at once into one output folder (separate work folders): both succeed and the
    outputs equal a single run's."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    procs = [subprocess.Popen([sys.executable, '-m', 'bids_synth', str(cohort.bids_dir),
                               str(tmp_path / 'out'), 'participant', '-w',
                               str(tmp_path / f'work{i}'), *FAST, '--participant-label', '002'],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
             for i in range(2)]
    for proc in procs:
        output = proc.communicate(timeout=600)[0].decode()
        assert proc.returncode == 0 and 'Traceback' not in output, output
    ours, theirs = digest(tmp_path / 'out'), digest(reference / 'out')
    images = [k for k in theirs if k.endswith('.nii.gz') and k.startswith('sub-002')]
    assert images and all(ours[k] == theirs[k] for k in images)
    assert not [k for k in ours if re.search(r'\.tmp', k)]


def test_unreadable_as_missing_is_a_warning(cohort, tmp_path, capsys, digest):
    """Asked for with --unreadable-as-missing: the unreadable file is a warning, exit 0."""
    case = Case(cohort, tmp_path)
    flair = case.file('001', 'FLAIR')
    flair.write_bytes(flair.read_bytes()[:200])
    assert case.run(capsys, digest, '--dry-run', '--unreadable-as-missing') == 0
    assert not case.errors and f'{flair}: ' in case.err
    assert 'synthesizing it as missing' in case.err


def test_model_of_another_representation_is_65(cohort, tmp_path, capsys, digest):
    """A model fitted before dwi gained its tensor channels (its card lists the old ones): one
    line, 65, before anything is written, instead of a shape error inside a node."""
    import json

    from bids_synth.workflows.base import default_model_dir

    case = Case(cohort, tmp_path)
    model = tmp_path / 'model'
    shutil.copytree(default_model_dir(), model)
    card = json.loads((model / 'model_card.json').read_text())
    card['channels']['dwi'] = ['b0', 'seg1', 'seg2', 'seg3', 'seg4', 'fa', 'md']
    (model / 'model_card.json').write_text(json.dumps(card))
    assert case.run(capsys, digest, '--model', model) == 65
    case.one_error(model, 'represents dwi as 7 channels', 'refit')
    assert not case.out.exists() and not case.work.exists()
