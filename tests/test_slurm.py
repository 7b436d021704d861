"""bids_synth on a real single-node Slurm (tests/slurm_cluster.py starts it; loopback only).

- the array recipe (workflows/slurm/participant_array.sbatch) maps array tasks to participants
  and calls the command with the documented arguments (a stand-in command: fast, no CLI needed);
- the Nipype plugin file (workflows/slurm/nipype_slurm.yml) drives Nipype's SLURM plugin;
- end to end: a 2-subject 'low' phantom, a regression model fitted by `bids_synth ... group`, then
  `participant` with MultiProc, with the SLURM plugin and as an array job: equal outputs.
Skipped with the reason where Slurm cannot be started (not root); under CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_cluster import slurm_cluster  # noqa: E402,F401  (pytest fixture)

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / 'workflows' / 'slurm' / 'participant_array.sbatch'
PLUGIN_YML = REPO / 'workflows' / 'slurm' / 'nipype_slurm.yml'
# small requests that fit the test node (the recipe's own #SBATCH lines ask for a real node)
SMALL = ['--cpus-per-task=1', '--mem=1G', '--time=00:20:00']
# the end-to-end test: anatomical modalities only, to keep it short
MODALITIES = ('T1w', 'T2w', 'FLAIR')


def _test_plugin_file(path: Path) -> Path:
    """The shipped plugin YAML with resource requests that fit the single test node."""
    cfg = yaml.safe_load(PLUGIN_YML.read_text())
    assert cfg['plugin'] == 'SLURM'
    cfg['plugin_args']['sbatch_args'] = ' '.join(SMALL)
    cfg['plugin_args']['gpu_sbatch_args'] = ''
    cfg['plugin_args']['retry_timeout'] = 1
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- the array recipe, with a stand-in command -----------------------------------------------

def test_array_recipe_one_participant_per_task(slurm_cluster, tmp_path):
    bids = tmp_path / 'bids'
    for label in ('03', '01', 'pilot'):
        (bids / f'sub-{label}' / 'anat').mkdir(parents=True)
    (bids / 'dataset_description.json').write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    out = tmp_path / 'out'
    stand_in = tmp_path / 'fake_bids_synth'
    stand_in.write_text(textwrap.dedent('''\
        #!/usr/bin/env python3
        import json, os, sys
        args = sys.argv[1:]
        label = args[args.index('--participant-label') + 1]
        os.makedirs(args[1], exist_ok=True)
        with open(os.path.join(args[1], f'{label}.json'), 'w') as f:
            json.dump({'argv': args, 'task': os.environ.get('SLURM_ARRAY_TASK_ID'),
                       'logname': os.environ.get('LOGNAME')}, f)
        '''))
    stand_in.chmod(0o755)
    # 4 tasks for 3 participants: the 4th finds nothing to do and ends well
    slurm_cluster.sbatch(
        SMALL + ['--array=1-4', f'--output={tmp_path}/task-%a.log', str(RECIPE), str(bids),
                 str(out), '--method', 'regression'],
        env={'BIDS_SYNTH': str(stand_in)}, cwd=tmp_path, timeout=180)
    got = {p.stem: json.loads(p.read_text()) for p in out.glob('*.json')}
    assert sorted(got) == ['01', '03', 'pilot']
    for task, label in enumerate(['01', '03', 'pilot'], start=1):
        rec = got[label]
        assert rec['task'] == str(task)
        assert rec['argv'][:3] == [str(bids), str(out), 'participant']
        argv = rec['argv']
        assert argv[argv.index('-w') + 1] == str(tmp_path / 'bids_synth_work' / label)
        assert argv[argv.index('--nprocs') + 1] == '1'
        assert argv[-2:] == ['--method', 'regression']
        assert rec['logname']
    assert 'no participant number 4' in (tmp_path / 'task-4.log').read_text()

    # PARTICIPANTS_FILE selects and orders; "sub-" prefixes are accepted; WORK_ROOT is honoured
    (tmp_path / 'labels.txt').write_text('sub-pilot\n\n03\n')
    out2 = tmp_path / 'out2'
    slurm_cluster.sbatch(
        SMALL + ['--array=1-2', f'--output={tmp_path}/b-%a.log', str(RECIPE), str(bids),
                 str(out2)],
        env={'BIDS_SYNTH': str(stand_in), 'PARTICIPANTS_FILE': str(tmp_path / 'labels.txt'),
             'WORK_ROOT': str(tmp_path / 'w')}, cwd=tmp_path, timeout=180)
    got = {p.stem: json.loads(p.read_text()) for p in out2.glob('*.json')}
    assert {k: v['task'] for k, v in got.items()} == {'pilot': '1', '03': '2'}
    argv = got['03']['argv']
    assert argv[argv.index('-w') + 1] == str(tmp_path / 'w' / '03')


def test_array_recipe_reports_a_failed_participant(slurm_cluster, tmp_path):
    bids = tmp_path / 'bids'
    (bids / 'sub-01').mkdir(parents=True)
    failing = tmp_path / 'failing'
    failing.write_text('#!/bin/sh\necho "bad input" >&2\nexit 65\n')
    failing.chmod(0o755)
    with pytest.raises(AssertionError, match='rc '):
        slurm_cluster.sbatch(SMALL + ['--array=1-1', f'--output={tmp_path}/f-%a.log',
                                      str(RECIPE), str(bids), str(tmp_path / 'out')],
                             env={'BIDS_SYNTH': str(failing)}, cwd=tmp_path, timeout=120)
    assert 'bad input' in (tmp_path / 'f-1.log').read_text()


# --- the Nipype plugin file ------------------------------------------------------------------

def _add(a, b):
    import os

    return a + b, os.environ.get('SLURM_JOB_ID')


def test_nipype_plugin_file_runs_nodes_as_slurm_jobs(slurm_cluster, tmp_path, monkeypatch):
    from nipype import Node, Workflow
    from nipype.interfaces.utility import Function

    for k, v in slurm_cluster.env.items():
        if k in ('SLURM_CONF', 'LOGNAME', 'USER'):
            monkeypatch.setenv(k, v)
    cfg = yaml.safe_load(_test_plugin_file(tmp_path / 'plugin.yml').read_text())
    wf = Workflow(name='wf', base_dir=str(tmp_path / 'work'))
    fn = Function(input_names=['a', 'b'], output_names=['s', 'job'], function=_add)
    n1 = Node(fn, name='first')
    n1.inputs.a, n1.inputs.b = 1, 2
    n2 = Node(Function(input_names=['a', 'b'], output_names=['s', 'job'], function=_add),
              name='second')
    n2.inputs.b = 10
    wf.connect(n1, 's', n2, 'a')
    t0 = time.monotonic()
    res = wf.run(plugin=cfg['plugin'], plugin_args=cfg['plugin_args'])
    nodes = {n.name: n for n in res.nodes()}
    outs = {k: n.result.outputs for k, n in nodes.items()}
    assert outs['second'].s == 13
    # each node ran inside its own Slurm job
    jobs = {outs[k].job for k in outs}
    assert None not in jobs and len(jobs) == 2, jobs
    print(f'nipype SLURM plugin: 2 nodes in {time.monotonic() - t0:.1f} s')


# --- end to end with the real CLI ------------------------------------------------------------

_VOLATILE = {'date', 'datetime', 'timestamp', 'created', 'generatedat', 'generated_at',
             'starttime', 'endtime', 'runtime', 'elapsed', 'elapsed_s', 'duration_s',
             'hostname', 'host', 'workdir', 'work_dir', 'command', 'commandline', 'argv',
             'pluginname', 'plugin', 'nprocs'}


def _strip(obj):
    """JSON minus date/provenance-timestamp and execution fields (host, plugin, command line)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items()
                if k.lower() not in _VOLATILE and 'timestamp' not in k.lower()}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _derivatives(root: Path) -> dict[str, Path]:
    keep = ('.nii', '.nii.gz', '.json', '.tsv', '.bval', '.bvec')
    return {str(p.relative_to(root)): p for p in sorted(root.rglob('*'))
            if p.is_file() and p.name.endswith(keep) and 'work' not in p.relative_to(root).parts
            and not any(part.startswith('.') for part in p.relative_to(root).parts)}


def _assert_same_outputs(ref: Path, other: Path, what: str):
    import nibabel as nib
    import numpy as np

    a, b = _derivatives(ref), _derivatives(other)
    assert sorted(a) == sorted(b), f'{what}: different files\nonly MultiProc: ' \
        f'{sorted(set(a) - set(b))}\nonly {what}: {sorted(set(b) - set(a))}'
    n_img = 0
    for rel in a:
        if rel.endswith(('.nii', '.nii.gz')):
            ia, ib = nib.load(a[rel]), nib.load(b[rel])
            assert ia.shape == ib.shape, f'{what}: {rel} shape'
            assert np.allclose(ia.affine, ib.affine), f'{what}: {rel} affine'
            assert np.allclose(ia.get_fdata(), ib.get_fdata(), atol=1e-5, equal_nan=True), \
                f'{what}: {rel} data differ'
            n_img += 1
        elif rel.endswith('.json'):
            assert _strip(json.loads(a[rel].read_text())) == \
                _strip(json.loads(b[rel].read_text())), f'{what}: {rel} differs'
        else:
            assert a[rel].read_bytes() == b[rel].read_bytes(), f'{what}: {rel} differs'
    assert n_img > 0, f'{what}: no NIfTI outputs to compare'
    return n_img


def _cli(args, env, timeout, cwd):
    bids_synth = shutil.which('bids_synth', path=os.path.dirname(sys.executable)) \
        or shutil.which('bids_synth')
    assert bids_synth, 'the bids_synth console script is not installed'
    t0 = time.monotonic()
    res = subprocess.run([bids_synth, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, f'bids_synth {" ".join(map(str, args))} -> rc ' \
        f'{res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}'
    return time.monotonic() - t0


@pytest.mark.timeout(3600)
def test_participant_on_slurm_equals_multiproc(slurm_cluster, tmp_path):
    from bids_synth.phantom import generate_cohort

    env = dict(slurm_cluster.env)
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
    env.setdefault('TEMPLATEFLOW_HOME', str(tmp_path / 'templateflow'))
    times = {}
    # a complete 'low' phantom to fit on (4 subjects: the group level holds some out for
    # validation), and the 2-subject dataset to impute: its first 2 subjects, scans removed
    full, bids = tmp_path / 'bids_complete', tmp_path / 'bids'
    t0 = time.monotonic()
    generate_cohort(full, n_subjects=4, resolution='low', modalities=MODALITIES, missing=0)
    times['phantom'] = time.monotonic() - t0
    labels = sorted(p.name[4:] for p in full.glob('sub-*') if p.is_dir())[:2]
    shutil.copytree(full, bids, ignore=lambda d, names: [
        n for n in names if n.startswith('sub-') and n[4:] not in labels and Path(d) == full])
    tsv = (bids / 'participants.tsv').read_text().splitlines()
    (bids / 'participants.tsv').write_text('\n'.join(
        [tsv[0]] + [ln for ln in tsv[1:] if ln.split('\t')[0][4:] in labels]) + '\n')
    for label, gone in zip(labels, ('T2w', 'FLAIR')):
        files = sorted(bids.glob(f'sub-{label}/**/*_{gone}.*'))
        assert files, f'sub-{label} has no {gone} to remove'
        for f in files:
            f.unlink()
    assert sorted(p.name for p in bids.glob('sub-*')) == [f'sub-{x}' for x in labels]

    # one deterministic regression model, fitted once, used by every run
    fitted = tmp_path / 'fitted'
    common = ['--method', 'regression', '--skip-bids-validation', '--omp-nthreads', '1']
    times['group'] = _cli([full, fitted, 'group', *common, '--res', '4',
                           '-w', tmp_path / 'work_group'], env, 1200, tmp_path)
    model = fitted / 'models' / 'regression'
    assert (model / 'model_card.json').is_file(), sorted(fitted.rglob('*'))[:20]
    common += ['--model', str(model)]
    outs = {k: tmp_path / f'out_{k}' for k in ('multiproc', 'plugin', 'array')}

    times['multiproc'] = _cli([bids, outs['multiproc'], 'participant', *common, '--nprocs', '2',
                               '-w', tmp_path / 'work_mp'], env, 1200, tmp_path)

    plugin = _test_plugin_file(tmp_path / 'plugin.yml')
    times['slurm_plugin'] = _cli([bids, outs['plugin'], 'participant', *common,
                                  '--use-plugin', plugin, '-w', tmp_path / 'work_plugin'],
                                 env, 1800, tmp_path)

    t0 = time.monotonic()
    slurm_cluster.sbatch(
        ['--cpus-per-task=1', '--mem=4G', '--time=00:30:00', f'--array=1-{len(labels)}',
         f'--output={tmp_path}/array-%a.log', str(RECIPE), str(bids), str(outs['array']),
         *common],
        env={**env, 'WORK_ROOT': str(tmp_path / 'work_array')}, cwd=tmp_path, timeout=1800)
    times['slurm_array'] = time.monotonic() - t0
    for label in labels:  # each task did its own participant, in its own work dir
        assert (tmp_path / 'work_array' / label).is_dir()

    n = _assert_same_outputs(outs['multiproc'], outs['plugin'], 'SLURM plugin')
    _assert_same_outputs(outs['multiproc'], outs['array'], 'array job')
    print(f'{n} images equal across MultiProc, SLURM plugin and array runs; times (s): '
          + ', '.join(f'{k} {v:.1f}' for k, v in times.items()))
