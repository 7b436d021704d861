"""``bids_synth`` entry point: parse, check, build the graph, run it, report.

Errors are one line on stderr naming the file and the problem, with the BIDS-Apps exit code of
:mod:`bids_synth.errors`; ``-v`` adds the traceback. Inputs are never written to.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from pathlib import Path

from .. import __version__
from ..errors import EX_SOFTWARE, BIDSSynthError, DataError, NoInputError

__all__ = ['main']

LOGGER = logging.getLogger('bids_synth')


def _setup_logging(verbose: int) -> None:
    level = logging.INFO if verbose == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(asctime)s [bids_synth] %(message)s', '%H:%M:%S'))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def _error(msg: str) -> None:
    print(f'bids_synth: error: {msg}', file=sys.stderr, flush=True)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return (and, as a console script, exit with) the exit code."""
    os.environ.setdefault('NIPYPE_NO_ET', '1')  # no telemetry ping: we run offline
    from ..config import Config
    from .parser import parse_args

    verbose = 0
    if argv is None:  # as a command: SIGTERM (kill, Slurm time-out) unwinds like Ctrl-C, so the
        import signal  # atomic writers remove their temporary files

        signal.signal(signal.SIGTERM, _terminate)
    try:
        opts = parse_args(argv)
        verbose = opts.get('verbose', 0)
        _setup_logging(verbose)
        config = Config.from_options(opts)
        code = run(config)
    except BIDSSynthError as exc:
        if verbose:
            LOGGER.exception('traceback (-v)')
        _error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        _error('interrupted; rerun with the same --work-dir to resume')
        code = 130
    except SystemExit as exc:  # --help / --version
        code = exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback with -v
        if verbose:
            LOGGER.exception('traceback (-v)')
        _error(f'unexpected {type(exc).__name__}: {exc} (rerun with -v for the traceback)')
        code = EX_SOFTWARE
    if argv is None:
        sys.exit(code)
    return code


def run(config) -> int:
    """Run a parsed configuration; return the exit code.

    Everything is checked before anything is written: the output folders (not created yet), the
    input's BIDS validity, every input image, the model (card, sha256, safetensors) and the
    clinical table (against participants.json and the model card). Each problem is one error
    line; the subjects and sessions it concerns are left out and the others run.
    """
    from ..bids.derivatives import check_output_dirs

    ex = config.execution
    bids_dir = Path(ex.bids_dir)
    if not bids_dir.is_dir():
        raise NoInputError(f'{bids_dir}: input BIDS dataset not found')
    if not ex.dry_run:
        check_output_dirs(bids_dir, ex.output_dir, ex.work_dir)
    _check_fmriprep_options(config)
    if not ex.skip_bids_validation:
        _validate_input(bids_dir)
    plan = _plan(config)
    if ex.dry_run:
        from ..bids.layout import describe_inventory

        print(describe_inventory(plan.inventories, plan.targets))
        if plan.n_problems:
            LOGGER.info('dry run: %d problem(s) (the error lines above)', plan.n_problems)
        return DataError.exit_code if plan.n_problems else 0
    return _run_planned(config, plan)


class _Plan:
    """What the checks decided: the sessions to process, the model, the problem count."""

    def __init__(self, inventories, clinical, targets, model, card, n_problems):
        self.inventories, self.clinical, self.targets = inventories, clinical, targets
        self.model, self.card, self.n_problems = model, card, n_problems


def _plan(config) -> _Plan:
    from ..bids.clinical import load_clinical
    from ..bids.layout import collect_sessions, load_layout
    from ..bids.modalities import DEFAULT_TARGETS

    ex, wfc = config.execution, config.workflow
    t0 = time.monotonic()
    layout = load_layout(ex.bids_dir, ex.bids_database_dir or None)
    inventories = collect_sessions(
        layout,
        participant_labels=ex.participant_label or None,
        session_labels=ex.session_label or None,
        bids_filters=ex.bids_filters or None,
    )
    LOGGER.info('indexed %d session(s) in %.1f s', len(inventories), time.monotonic() - t0)
    model = card = None
    if ex.analysis_level == 'participant':
        model, card = _resolve_model(config)  # card, sha256 and safetensors checked here
    schema = (card or {}).get('clinical_schema') or None
    clinical = load_clinical(ex.bids_dir, wfc.clinical_columns or None, schema=schema)
    n_problems = 0
    selected = {inv.subject for inv in inventories}
    for (subject, _), lines in clinical.bad.items():
        if subject in selected:
            for line in lines:
                n_problems += 1
                _error(line)
    for line in clinical.problems:  # rows that name no subject (an empty participant_id)
        if not any(line in lines for lines in clinical.bad.values()):
            n_problems += 1
            _error(line)
    kept = [inv for inv in inventories if not clinical.is_bad(inv.subject, inv.session)]
    for inv in kept:
        for mod, reason in inv.unreadable.items():
            line = f'{inv.files[mod].path}: {reason} ({inv.label}: {mod} is unreadable; '
            if ex.unreadable_as_missing:  # asked for: a warning, not a problem
                LOGGER.warning('%ssynthesizing it as missing)', line)
                continue
            n_problems += 1
            _error(line + 'left alone, the other modalities and subjects go on)')
    targets = tuple(wfc.modalities) or DEFAULT_TARGETS
    if ex.analysis_level == 'participant' and ('dwi' in targets or wfc.dwi_scheme):
        from ..bids.gradients import resolve_scheme

        scheme = resolve_scheme(wfc.dwi_scheme or None, layout)  # exit 64/66 on a bad file
        wfc.dwi_gradients = scheme.to_dict()
        LOGGER.info('dwi gradient table: %s (%s)', scheme.source, scheme.origin)
    return _Plan(kept, clinical, targets, model, card, n_problems)


def _run_planned(config, plan: _Plan) -> int:
    from ..bids.derivatives import (
        create_output_dirs, remove_created, remove_stale_temporaries,
    )
    from ..preprocessing.templates import ensure_templateflow_home

    ex = config.execution
    created = create_output_dirs(ex.output_dir, ex.work_dir)
    for folder in (ex.output_dir, ex.work_dir):
        for path in remove_stale_temporaries(folder):
            LOGGER.info('removed %s (a temporary file left by an interrupted run)', path)
    code, started = 1, False
    try:
        ensure_templateflow_home()
        if ex.analysis_level == 'group':
            code, started = _run_group(config, plan.inventories, plan.clinical)
        else:
            code, started = _run_participant(config, plan)
            if code == 0 and ex.complete_dataset:
                from ..bids.completed import write_completed_dataset

                added = write_completed_dataset(ex.bids_dir, ex.output_dir,
                                                ex.complete_dataset, version=__version__)
                LOGGER.info('completed dataset %s: %d synthesized scan(s) added (rec-synth)',
                            ex.complete_dataset, len(added))
    finally:
        if not started:  # failed (or had nothing to do) before any work: no empty folders
            remove_created(created)
        if code != 0:
            for folder in (ex.output_dir, ex.work_dir):
                remove_stale_temporaries(folder)
    n_problems = plan.n_problems + getattr(ex, 'runtime_problems', 0)
    if code == 0 and n_problems:
        code = DataError.exit_code
    if n_problems and code == DataError.exit_code:
        LOGGER.info('finished with %d problem(s) (the error lines above); outputs of the other '
                    'subjects and modalities in %s', n_problems, ex.output_dir)
    return code


def _check_fmriprep_options(config) -> None:
    """``--derivatives`` folders exist; ``--complete-dataset`` is neither the input nor the
    output, and is refused at the group level."""
    from ..errors import NoInputError, UsageError

    ex = config.execution
    for folder in ex.derivatives:
        if not Path(folder).is_dir():
            raise NoInputError(f'{folder}: --derivatives folder not found')
    if not ex.complete_dataset:
        return
    if ex.analysis_level != 'participant':
        raise UsageError('--complete-dataset is a participant-level option')
    dest = Path(ex.complete_dataset).resolve()
    if dest == Path(ex.output_dir).resolve():
        raise UsageError(f'{dest}: --complete-dataset must differ from the output folder')
    if not ex.dry_run:
        from ..bids.derivatives import check_output_dirs

        check_output_dirs(ex.bids_dir, dest)


def _validate_input(bids_dir: Path) -> None:
    from ..bids.validation import validate_dataset
    from ..errors import ValidationFailedError

    result = validate_dataset(bids_dir)
    if not result.ran:
        LOGGER.info('bids-validator-deno not installed: input not validated')
        return
    if not result.ok:
        first = '; '.join(result.errors[:3])
        raise ValidationFailedError(
            f'{bids_dir}: BIDS validation failed with {len(result.errors)} error(s): {first} '
            '(use --skip-bids-validation to go on anyway)'
        )


def _resolve_model(config) -> tuple[str, dict]:
    """The model to use, checked: card, weights (not a pickle, sha256, safetensors)."""
    from ..models.checkpoint import load_model, read_card
    from ..models.loading import check_channels
    from ..workflows.base import default_model_dir

    wfc = config.workflow
    if wfc.model == 'default':
        path = default_model_dir()
    elif wfc.model:
        path = Path(wfc.model)
    else:
        models = Path(config.execution.output_dir) / 'models'
        candidates = [models / wfc.method] if wfc.method else [models / 'diffusion',
                                                                models / 'regression']
        path = next((c for c in candidates if (c / 'model_card.json').is_file()), None)
        if path is None:
            path = default_model_dir()
            if wfc.method and read_card(path)['method'] != wfc.method:
                raise NoInputError(
                    f'{models / wfc.method}: no {wfc.method} model, and the embedded default '
                    f'is a {read_card(path)["method"]} model; run the group level with '
                    f'--method {wfc.method} first, or pass --model'
                )
            LOGGER.info('no %s model under %s: using the embedded default',
                        wfc.method or 'group-level', models)
    card = read_card(path)
    if wfc.method and card['method'] != wfc.method:
        from ..errors import UsageError

        raise UsageError(f'{path}: a {card["method"]} model, but --method {wfc.method}')
    load_model(path)  # raises ModelError (65) for a pickle, a sha256 mismatch, bad safetensors
    check_channels(card, path)  # ModelError (65): fitted with another representation
    wfc.method = card['method']
    LOGGER.info('model: %s (%s, %s)', path, card['method'], card.get('name'))
    return str(path), card


def _run_participant(config, plan: _Plan) -> tuple[int, bool]:
    """Build and run the participant graph; ``(exit code, whether work started)``."""
    from ..bids.derivatives import write_bidsignore, write_dataset_description
    from ..workflows.base import init_bids_synth_wf

    ex = config.execution
    model, card, targets = plan.model, plan.card, plan.targets
    known = set(card['modalities'])

    def targets_of(inv):
        wanted = list(inv.missing(targets))
        if ex.unreadable_as_missing:
            wanted += [t for t in inv.unreadable if t in targets]
        return tuple(t for t in targets if t in wanted and t in known)

    unknown = [t for t in targets if t not in known]
    if config.workflow.modalities and unknown:
        LOGGER.warning('the model cannot synthesize %s; skipped', ', '.join(unknown))
    impute_columns = [c for c in _impute_columns(config, card) if c in plan.clinical.columns]

    def imputes(inv):
        from ..workflows.base import needs_imputation

        return needs_imputation(plan.clinical.for_session(inv.subject, inv.session),
                                impute_columns)

    todo = [inv for inv in plan.inventories
            if (targets_of(inv) or imputes(inv)) and inv.reference is not None]
    if not todo:
        LOGGER.info('nothing to synthesize: every selected session has its target modalities'
                    + (' and clinical values' if impute_columns else ''))
        return 0, False
    out = Path(ex.output_dir)
    write_dataset_description(out, ex.bids_dir, version=__version__)
    write_bidsignore(out)
    for inv in todo:
        if targets_of(inv):
            LOGGER.info('%s: synthesizing %s from %s', inv.label, ', '.join(targets_of(inv)),
                        ', '.join(m for m in inv.available if m in known)
                        or 'clinical data only')
        if imputes(inv):
            values = plan.clinical.for_session(inv.subject, inv.session)
            LOGGER.info('%s: imputing %s', inv.label,
                        ', '.join(c for c in impute_columns if values.get(c) is None))
    wf = init_bids_synth_wf(config, todo, plan.clinical, model=model, model_card=card,
                            targets_of=targets_of, impute_columns=impute_columns)
    return _execute(config, wf), True


def _impute_columns(config, card: dict) -> list[str]:
    """Clinical columns the model's tabular head imputes (none with --no-impute-clinical, or
    for a model without a tabular head, or outside --clinical-columns). The caller keeps those
    the dataset's tables have: a column a dataset lacks has no n/a cell to fill."""
    if not config.workflow.impute_clinical:
        return []
    columns = list((card.get('tabular') or {}).get('columns', []))
    if not columns:
        LOGGER.info('the model has no clinical head (fitted before it existed): n/a clinical '
                    'values are not imputed; refit with the group level to get one')
        return []
    if config.workflow.clinical_columns:
        columns = [c for c in columns if c in config.workflow.clinical_columns]
    return columns


def _group_base(wfc) -> tuple[Path | None, dict | None]:
    """The model ``group --model`` starts from (``default``: the embedded one) and its card."""
    if not wfc.model:
        return None, None
    from ..models.checkpoint import read_card
    from ..workflows.base import default_model_dir

    path = default_model_dir() if wfc.model == 'default' else Path(wfc.model)
    return path, read_card(path)


def _run_group(config, inventories, clinical) -> tuple[int, bool]:
    from ..bids.derivatives import write_bidsignore, write_dataset_description
    from ..bids.modalities import DEFAULT_TARGETS
    from ..reports.core import group_report
    from ..workflows.base import init_group_wf

    ex, wfc = config.execution, config.workflow
    init_from, base_card = _group_base(wfc)
    method = wfc.method or (base_card or {}).get('method') or 'diffusion'
    modalities = tuple(wfc.modalities) or DEFAULT_TARGETS
    res = wfc.res or 2
    if base_card:
        res = wfc.res or int(base_card['template']['res'])
    elif method == 'diffusion' and not wfc.res:
        from ..training.diffusion import DEFAULT_RES

        res = DEFAULT_RES
    if base_card and method != base_card.get('method'):
        from ..errors import UsageError

        raise UsageError(f'{init_from}: a {base_card.get("method")} model cannot start a '
                         f'--method {method} fit')
    if method == 'regression':
        init_from = None  # a ridge is refitted on this dataset (it has nothing to fine-tune)
    out = Path(ex.output_dir)
    model_dir = out / 'models' / method
    usable = [inv for inv in inventories if inv.available]
    wf = init_group_wf(config, usable, clinical, method=method, modalities=modalities, res=res,
                       model_dir=model_dir, init_from=str(init_from) if init_from else None)
    write_dataset_description(out, ex.bids_dir, version=__version__)
    write_bidsignore(out)
    code = _execute(config, wf)
    if code == 0:
        report = group_report(out, model_dir)
        LOGGER.info('model written to %s; report %s', model_dir, report)
    return code, True


def _execute(config, wf) -> int:
    """Run a graph with the configured plugin; one line per crashed node; exit code."""
    from nipype import config as ncfg
    from nipype import logging as nlogging

    ex, nip = config.execution, config.nipype
    logdir = Path(ex.output_dir) / 'logs' / ex.run_id
    logdir.mkdir(parents=True, exist_ok=True)
    config.to_filename(logdir / 'bids_synth.toml')
    exec_cfg = {
        'crashdump_dir': str(logdir),
        'crashfile_format': 'txt',
        'stop_on_first_crash': nip.stop_on_first_crash,
        'check_version': False,
        'remove_unnecessary_outputs': False,
        'poll_sleep_duration': 0.5 if nip.plugin == 'MultiProc' else 2,
    }
    ncfg.update_config({'execution': exec_cfg, 'monitoring': {'enabled': False}})
    # without -v, nipype logs nothing (its crash reports carry tracebacks): each crash becomes
    # one line of ours below, with the crash file named
    level = 'INFO' if ex.verbose else 'CRITICAL'
    for name in ('nipype.workflow', 'nipype.interface', 'nipype.utils'):
        ncfg.set('logging', name.split('.')[1] + '_level', level)
    nlogging.update_logging(ncfg)
    wf.config['execution'].update(exec_cfg)
    if ex.write_graph:
        wf.write_graph(graph2use='colored', format='svg', simple_form=True)
    plugin_args = nip.resolved_plugin_args()
    if nip.plugin in ('SLURM', 'SLURMGraph'):
        import getpass

        os.environ.setdefault('LOGNAME', getpass.getuser())  # nipype's SLURM plugin needs it
        gpu_args = plugin_args.pop('gpu_sbatch_args', '')
        if gpu_args:  # GPU request only for the nodes that use one (Synthesize, FitModel)
            for node in wf._get_all_nodes():
                if getattr(node.inputs, 'use_gpu', False):
                    node.plugin_args = {'sbatch_args': gpu_args, 'overwrite': False}
    # nipype's MultiProc loop runs a full gc.collect() on every poll; with torch, MONAI and
    # pybids loaded that is ~0.15 s, a third of a core at a 0.5 s poll. Freezing what exists now
    # (modules, the layout, the graph) leaves it only the objects made while running.
    gc.collect()
    gc.freeze()
    t0 = time.monotonic()
    try:
        wf.run(plugin=nip.plugin, plugin_args=plugin_args)
    except RuntimeError as exc:
        crashes = sorted(logdir.glob('crash-*.txt'))
        data_errors = 0
        for crash in crashes:
            data_error = _crash_data_error(crash)
            if data_error:  # bad input found while running (registration QC): one plain line
                data_errors += 1
                _error(data_error)
            else:
                _error(f'{_crash_summary(crash)} (details: {crash})')
        if not crashes:
            _error(f'the workflow failed: {exc}')
        config.execution.runtime_problems = len(crashes) or 1
        if crashes and data_errors == len(crashes):
            return DataError.exit_code
        LOGGER.info('finished in %.1f s with %d failed node(s) (the error lines above); '
                    'outputs of the other subjects in %s', time.monotonic() - t0,
                    len(crashes) or 1, ex.output_dir)
        return EX_SOFTWARE
    finally:
        gc.unfreeze()  # an in-process caller (tests, notebooks) gets a normal collector back
    LOGGER.info('finished in %.1f s; outputs in %s', time.monotonic() - t0, ex.output_dir)
    return 0


def _crash_data_error(crash: Path) -> str | None:
    """The message of a bids_synth data error (exit 65) a node raised, or ``None``."""
    import re

    text = crash.read_text(errors='replace')
    found = re.findall(r'bids_synth\.errors\.(\w+): (.+)', text)
    if not found:
        return None
    from .. import errors

    name, message = found[-1]
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.DataError):
        return message.strip()
    return None


def _crash_summary(crash: Path) -> str:
    """``node <name>: <last line of the traceback>`` from a Nipype text crash file."""
    text = crash.read_text(errors='replace').splitlines()
    node = next((ln.split(':', 1)[1].strip() for ln in text if ln.startswith('Node:')), '?')
    last = next((ln.strip() for ln in reversed(text) if ln.strip()), 'failed')
    for ln in reversed(text):  # prefer our own one-line errors
        if 'Error: ' in ln and ('bids_synth' in ln or '/' in ln):
            last = ln.strip()
            break
    return f'node {node}: {last}'


if __name__ == '__main__':
    main()
