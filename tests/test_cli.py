"""Command-line behaviour on bad input: one clear line, the right exit code, no traceback."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from bids_synth.cli.run import main

EXAMPLES = Path(os.environ.get('BIDS_SYNTH_PYBIDS_EXAMPLES',
                               Path(__file__).parents[1] / '.venv/share/pybids-examples'))


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    """A 3-subject phantom (T1w, T2w, FLAIR) where sub-001 lacks T2w."""
    from bids_synth.phantom import generate_cohort

    root = tmp_path_factory.mktemp('small')
    return generate_cohort(root / 'bids', n_subjects=3, seed=5, resolution='low',
                           modalities=('T1w', 'T2w', 'FLAIR'),
                           missing={'T1w': 0.0, 'T2w': 0.0, 'FLAIR': 0.0},
                           ground_truth=root / 'gt')


def _copy(cohort, tmp_path) -> Path:
    dst = tmp_path / 'bids'
    shutil.copytree(cohort.bids_dir, dst)
    return dst


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith('bids_synth: error:')]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        from bids_synth.cli.parser import build_parser

        build_parser().parse_args(['--version'])
    assert info.value.code == 0
    assert 'bids_synth' in capsys.readouterr().out


def test_usage_error_is_64(tmp_path, capsys):
    code, err = _run([tmp_path, tmp_path / 'out', 'participant', '--no-such-flag'], capsys)
    assert code == 64
    (line,) = _error_lines(err)
    assert 'Traceback' not in err and not line.startswith('bids_synth: error: bids_synth:')
    assert not (tmp_path / 'out').exists()


def test_missing_input_is_66(tmp_path, capsys):
    code, err = _run([tmp_path / 'nope', tmp_path / 'out', 'participant'], capsys)
    assert code == 66
    assert 'nope' in _error_lines(err)[0]


def test_output_inside_input_is_64(small, tmp_path, capsys):
    bids = _copy(small, tmp_path)
    code, err = _run([bids, bids / 'derivatives' / 'synth', 'participant',
                      '--skip-bids-validation'], capsys)
    assert code == 64
    (line,) = _error_lines(err)
    assert 'inside' in line and str(bids) in line
    assert not (bids / 'derivatives').exists()


def test_unwritable_output_is_73(small, tmp_path, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    code, err = _run([small.bids_dir, blocker / 'out', 'participant',
                      '--skip-bids-validation'], capsys)
    assert code == 73
    (line,) = _error_lines(err)
    assert 'a_file/out' in line and 'Traceback' not in err


def test_unknown_participant_is_18(small, tmp_path, capsys):
    code, err = _run([small.bids_dir, tmp_path / 'out', 'participant', '--participant-label',
                      'sub-999', '--skip-bids-validation', '--dry-run'], capsys)
    assert code == 18
    (line,) = _error_lines(err)
    assert '999' in line


def test_ragged_participants_tsv_is_65(small, tmp_path, capsys):
    bids = _copy(small, tmp_path)
    tsv = bids / 'participants.tsv'
    lines = tsv.read_text().splitlines()
    lines[2] = lines[2] + '\textra'
    tsv.write_text('\n'.join(lines) + '\n')
    code, err = _run([bids, tmp_path / 'out', 'participant', '--skip-bids-validation',
                      '--dry-run'], capsys)
    assert code == 65  # the run goes on for the other subjects: tests/test_bad_input.py
    (line,) = _error_lines(err)
    assert 'participants.tsv' in line and ':3' in line
    assert 'Traceback' not in err


def test_dry_run_reports_and_writes_nothing(small, tmp_path, capsys):
    bids = _copy(small, tmp_path)
    flair = next(bids.rglob('sub-002*_FLAIR.nii.gz'))
    data = flair.read_bytes()
    flair.write_bytes(data[: len(data) // 2])  # a truncated (corrupt) gzip stream
    code = main([str(bids), str(tmp_path / 'out'), 'participant', '--dry-run',
                 '--skip-bids-validation'])
    captured = capsys.readouterr()
    assert code == 65  # as the real run: an error line was printed
    assert 'unreadable' in captured.out and 'gzip' in captured.out.lower()
    assert flair.name in captured.err and captured.err.count('bids_synth: error:') == 1
    assert not (tmp_path / 'out').exists()


@pytest.mark.skipif(not (EXAMPLES / 'ds005').is_dir(),
                    reason=f'pybids example layouts not fetched into {EXAMPLES} '
                    '(tools/fetch_pybids_examples.sh, run by make test)')
@pytest.mark.parametrize('dataset', ['ds005', '7t_trt', 'synthetic'])
def test_dry_run_on_pybids_examples(dataset, tmp_path, capsys):
    """pybids' own layouts (empty NIfTIs): no traceback, files reported unreadable."""
    # ds005 codes sex 0/1, which the default model's card does not know (M/F): a whole-column
    # mismatch is one fatal line (tests/test_bad_input.py), so leave the column out here
    extra = ['--clinical-columns', 'age'] if dataset == 'ds005' else []
    code = main([str(EXAMPLES / dataset), str(tmp_path / 'out'), 'participant', '--dry-run',
                 '--skip-bids-validation', *extra])
    captured = capsys.readouterr()
    assert code == 65, captured.err  # unreadable files are errors, as in the real run
    assert 'Traceback' not in captured.err
    assert 'unreadable' in captured.out


@pytest.mark.skipif(shutil.which('bids-validator-deno') is None
                    and not (Path(sys.executable).parent / 'bids-validator-deno').exists(),
                    reason='bids-validator-deno not installed')
def test_validation_failure_is_16(small, tmp_path, capsys):
    bids = _copy(small, tmp_path)
    (bids / 'dataset_description.json').write_text('{"Name": "no BIDSVersion"}')
    code, err = _run([bids, tmp_path / 'out', 'participant', '--dry-run'], capsys)
    assert code == 16
    (line,) = _error_lines(err)
    assert 'validation failed' in line and '--skip-bids-validation' in line


def test_graph_runs_with_the_startup_heap_frozen(small, tmp_path, capsys, monkeypatch):
    """nipype's MultiProc loop calls gc.collect() on every poll: the heap that exists before the
    run (torch, MONAI, pybids, the graph) is frozen out of it, and thawed afterwards."""
    import gc

    from nipype.pipeline.engine import Workflow

    seen = {}

    def fake_run(self, plugin=None, plugin_args=None, **kw):
        seen['frozen'] = gc.get_freeze_count()

    monkeypatch.setattr(Workflow, 'run', fake_run)
    code = main([str(small.bids_dir), str(tmp_path / 'out'), 'participant', '--model', 'default',
                 '--skip-bids-validation', '-w', str(tmp_path / 'work')])
    assert code == 0, capsys.readouterr().err
    assert seen['frozen'] > 100_000  # modules, the layout and the graph
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize('content,problem', [
    ('{"mean_steps": 10, "no_such_field": 1}', 'no_such_field'),
    ('[1, 2]', 'JSON object'),
    ('{"mean_steps": ', 'not valid JSON'),
])
def test_bad_train_config_is_64(tmp_path, capsys, content, problem):
    recipe = tmp_path / 'recipe.json'
    recipe.write_text(content)
    code, err = _run([tmp_path, tmp_path / 'out', 'group', '--train-config', recipe], capsys)
    assert code == 64
    (line,) = _error_lines(err)
    assert 'recipe.json' in line and problem in line and 'Traceback' not in err


def test_train_config_file_overrides_the_recipe(tmp_path):
    from bids_synth.cli.parser import parse_args
    from bids_synth.training.fit import recipe

    path = tmp_path / 'recipe.json'
    path.write_text('{"mean_steps": 40, "model": {"mean_channels": [8, 16, 32]}}')
    opts = parse_args([str(tmp_path), str(tmp_path / 'out'), 'group', '--train-config',
                       str(path)])
    cfg = recipe(opts['train_config'], 0)
    assert cfg.mean_steps == 40 and tuple(cfg.model['mean_channels']) == (8, 16, 32)
    assert cfg.model['mean_attention'] == (False, False, True)  # merged, not replaced
    tiny = recipe('tiny', 3)
    assert (tiny.mean_steps, tiny.flow_steps, tiny.ssl_steps) == (3, 1, 2)
    assert tiny.model['mean_channels'] == (8, 8)


def test_contrast_augmentation_option(tmp_path, capsys):
    from bids_synth.cli.parser import parse_args
    from bids_synth.config import Config

    opts = parse_args([str(tmp_path), str(tmp_path / 'out'), 'group',
                       '--contrast-augmentation', '2'])
    assert Config.from_options(opts).workflow.contrast_augmentation == 2
    assert Config.from_options(parse_args([str(tmp_path), str(tmp_path / 'out'), 'group'])
                               ).workflow.contrast_augmentation == 0
    code, err = _run([tmp_path, tmp_path / 'out', 'group', '--contrast-augmentation', '-1'],
                     capsys)
    assert code == 64
    (line,) = _error_lines(err)
    assert 'contrast-augmentation' in line and '0 or more' in line
