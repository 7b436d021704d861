"""The command line: BIDS Apps conventions, as fMRIPrep and MRIQC."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .. import __version__
from ..bids.modalities import MODALITIES, UnknownModalityError, resolve_modalities
from ..errors import UsageError

__all__ = ['build_parser', 'parse_args']


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 64) instead of exiting with status 2."""

    def error(self, message):  # noqa: D401
        # main() prints 'bids_synth: error: <message>': no second program-name prefix
        raise UsageError(message)


def _label(value: str) -> str:
    """A BIDS label, without its ``sub-``/``ses-`` prefix.

    >>> _label('sub-01'), _label('02')
    ('01', '02')
    >>> _label('01/02')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    argparse.ArgumentTypeError: invalid label '01/02': a BIDS label has only letters...
    """
    raw = value
    for prefix in ('sub-', 'ses-'):
        if value.startswith(prefix):
            value = value[len(prefix):]
    if not value or not value.isascii() or not value.isalnum():
        raise argparse.ArgumentTypeError(
            f'invalid label {raw!r}: a BIDS label has only letters and digits '
            '(with an optional sub-/ses- prefix)'
        )
    return value


def _modalities(value: str) -> list[str]:
    try:
        return list(resolve_modalities([v for v in value.replace(',', ' ').split() if v]))
    except UnknownModalityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_file(value: str) -> dict:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f'{value}: file not found')
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f'{value}: not valid JSON ({exc.msg}, line {exc.lineno})')
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f'{value}: must hold a JSON object')
    unknown = [k for k in data if k not in MODALITIES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f'{value}: unknown modality keys {", ".join(unknown)}; known: {", ".join(MODALITIES)}'
        )
    return data


def _plugin_file(value: str) -> dict:
    import yaml

    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f'{value}: file not found')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f'{value}: not valid YAML ({exc})') from None
    if not isinstance(data, dict) or 'plugin' not in data:
        raise argparse.ArgumentTypeError(f'{value}: must be a YAML mapping with a "plugin" key')
    return data


def _train_config(value: str) -> str:
    """A training preset name, or a JSON file of TrainConfig overrides (checked here)."""
    from ..training.config import PRESETS, get_config

    if value in PRESETS:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f'{value}: neither a training preset ({", ".join(PRESETS)}) nor a file')
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f'{value}: cannot read ({exc})') from None
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f'{value}: not valid JSON ({exc.msg}, line {exc.lineno})')
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f'{value}: must hold a JSON object')
    try:
        get_config(data)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f'{value}: {exc}') from None
    return str(path.absolute())


def _at_least(minimum: int):
    """An argparse ``type``: an integer of at least ``minimum``."""
    def check(value: str) -> int:
        try:
            ivalue = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{value!r} is not an integer') from None
        if ivalue < minimum:
            raise argparse.ArgumentTypeError(f'{value} must be {minimum} or more')
        return ivalue
    return check


_count = _at_least(0)
_positive = _at_least(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog='bids_synth',
        description='Impute missing brain-imaging modalities of a BIDS dataset with diffusion '
        'models; writes a BIDS-Derivatives dataset with full provenance.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument('bids_dir', type=Path, help='the input BIDS dataset (read only)')
    parser.add_argument('output_dir', type=Path, help='the output (BIDS-Derivatives) folder')
    parser.add_argument(
        'analysis_level', choices=['participant', 'group'],
        help='"group": fit the model on complete sessions; "participant": impute',
    )
    parser.add_argument('--version', action='version', version=f'bids_synth {__version__}')

    g = parser.add_argument_group('selecting data')
    g.add_argument('--participant-label', '--participant_label', nargs='+', type=_label,
                   metavar='LABEL', help='participants to process (with or without "sub-")')
    g.add_argument('--session-label', nargs='+', type=_label, metavar='LABEL',
                   help='sessions to process (with or without "ses-")')
    g.add_argument('--modalities', nargs='+', type=_modalities, metavar='MOD',
                   help=f'targets to synthesize, comma or space separated '
                   f'(default: all the model knows; known: {", ".join(MODALITIES)})')
    g.add_argument('--bids-filter-file', dest='bids_filters', type=_json_file, metavar='FILE',
                   help='JSON: modality -> extra pybids entity filters, e.g. '
                   '{"T1w": {"acquisition": "mprage"}}')
    g.add_argument('--bids-database-dir', type=Path, metavar='DIR',
                   help='cache the pybids index here (later runs reuse it)')
    g.add_argument('--skip-bids-validation', '--skip_bids_validation', action='store_true',
                   help='do not validate the input with bids-validator-deno')
    g.add_argument('--clinical-columns', nargs='+', metavar='COL',
                   help='participants.tsv columns to condition on (default: all)')
    g.add_argument('--no-impute-clinical', dest='impute_clinical', action='store_false',
                   help='participant level: do not impute n/a clinical values (default: each '
                   'n/a value of a column the model\'s tabular head knows is predicted from the '
                   'images and the other values, used by the synthesis and written to '
                   '<out>/participants.tsv)')
    g.add_argument('--derivatives', nargs='+', type=Path, metavar='DIR',
                   help='fMRIPrep/sMRIPrep output folders: their desc-preproc_T1w, '
                   'desc-brain_mask and from-T1w_to-MNI152NLin2009{a,c}Sym transforms are used '
                   'instead of registering the T1w again (as fMRIPrep --derivatives)')
    g.add_argument('--unreadable-as-missing', action='store_true',
                   help='synthesize modalities whose file exists but cannot be read '
                   '(default: report them as errors and leave them alone)')
    g.add_argument('--force', action='store_true',
                   help='keep inputs that fail the registration QC (flagged in the sidecars) '
                   'instead of treating them as unreadable')

    g = parser.add_argument_group('preprocessing and outputs')
    g.add_argument('--skull-strip', choices=['auto', 'force', 'skip'], default='auto',
                   help='sMRI inputs: N4 bias correction and deepbet brain extraction; "auto" '
                   'only for inputs that still have their skull (detected), "force" always, '
                   '"skip" never (as fMRIPrep --skull-strip-t1w)')
    g.add_argument('--native-refine', choices=['transfer', 'guided', 'none'],
                   default='transfer',
                   help='native-space T1w/T2w/FLAIR, when the reference is an sMRI image finer '
                   'than the model grid: "transfer" maps the acquired reference into the '
                   'target contrast through its CSF/GM/WM means and the synthesized image\'s '
                   'levels (default; holds on real scans), "guided" refines the model-grid '
                   'output locally with the reference\'s detail (guided filter), "none" writes '
                   'the model-grid output resampled')
    g.add_argument('--no-native-refine', dest='native_refine', action='store_const',
                   const='none', help='same as --native-refine none')
    g.add_argument('--dwi-scheme', type=str, metavar='FILE', default=None,
                   help='gradient table of the synthesized dwi series: a .bval/.bvec pair, '
                        'named by either file, their common prefix or their .nii[.gz] image '
                        '(default: the table acquired most often in the dataset, else 2 b=0 '
                        'and 30 directions at b=1000)')
    g.add_argument('--complete-dataset', type=Path, metavar='DIR',
                   help='also write DIR: a raw BIDS dataset, the input (hard links, else '
                   'copies) plus each synthesized T1w/T2w/FLAIR under a raw name with rec-synth, '
                   'for fMRIPrep/sMRIPrep/QSIPrep (participant level)')

    g = parser.add_argument_group('model and sampling')
    g.add_argument('--model', type=Path, metavar='DIR',
                   help='model directory, or "default" for the embedded default model '
                   '(default: the group-level model in output_dir, else the embedded one)')
    g.add_argument('--method', choices=['diffusion', 'regression'], default=None,
                   help='imputation method (default: the model\'s; diffusion for group)')
    g.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    g.add_argument('--seed', type=int, default=0, help='random seed (sampling, training)')
    g.add_argument('--num-samples', type=_positive, default=None,
                   help='samples per image (default: the model card\'s); K > 1 writes their '
                   'mean (desc-synth) and std (desc-synthstd); the regression has one')
    g.add_argument('--write-samples', action='store_true',
                   help='also write each sample (desc-synthsample<i>, template space): '
                   'realistic single draws for augmentation')
    g.add_argument('--steps', type=_positive, default=None,
                   help='sampler steps (default: the model card\'s)')
    g.add_argument('--sampler', choices=['ddim', 'rflow'], default=None,
                   help='sampler (default: the model card\'s)')
    g.add_argument('--res', type=int, choices=[2, 4], default=None,
                   help='group level: template resolution (mm) of the model grid (default: 2 '
                   'for regression, the training recipe\'s for diffusion)')
    g.add_argument('--train-steps', type=_positive, default=None,
                   help='group level: diffusion training steps (default: the recipe\'s)')
    g.add_argument('--train-config', type=_train_config, default=None, metavar='PRESET|FILE',
                   help='group level: the diffusion training recipe, a preset (default, tiny) '
                   'or a JSON file of overrides of the default recipe (docs/model.md)')
    g.add_argument('--contrast-augmentation', type=_count, default=0, metavar='N',
                   help='group level, regression: fit the ridge also on N copies of each '
                   'session whose sMRI/PET inputs get another scanner\'s random contrasts '
                   '(robust to new scanners, a little worse on the training contrasts; '
                   'docs/model.md; default 0)')
    g.add_argument('--no-pds-refinement', dest='pds_refinement', action='store_false',
                   help='group level, regression: do not fit the second stage for bold and dwi '
                   'targets (PDS tissue and microstructure refinement; docs/model.md)')

    g = parser.add_argument_group('execution')
    g.add_argument('-w', '--work-dir', type=Path, metavar='DIR',
                   help='working directory (default: <output_dir>/../bids_synth_work); '
                   'reruns resume from it')
    g.add_argument('--nprocs', '--nthreads', '--n_cpus', dest='nprocs', type=_positive,
                   help='maximum number of parallel processes (default: all CPUs)')
    g.add_argument('--omp-nthreads', type=_positive, help='threads per process')
    g.add_argument('--mem-mb', '--mem_mb', dest='mem_mb', type=_positive,
                   help='memory limit for MultiProc scheduling (MB)')
    g.add_argument('--use-plugin', dest='plugin_file', type=_plugin_file, metavar='FILE',
                   help='Nipype plugin YAML (plugin: SLURM, plugin_args: {...}) as fMRIPrep')
    g.add_argument('--stop-on-first-crash', action='store_true')
    g.add_argument('--dry-run', action='store_true',
                   help='print what is present, missing and unreadable per session, and what '
                   'would be synthesized; change nothing')
    g.add_argument('--no-reports', dest='reports', action='store_false',
                   help='do not write HTML reports')
    g.add_argument('--write-graph', action='store_true', help='write the workflow graph (dot)')
    g.add_argument('-v', '--verbose', action='count', default=0,
                   help='more output; -v also shows tracebacks')
    return parser


def parse_args(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` into a flat options dict; raise UsageError on bad usage."""
    opts = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    plugin = opts.pop('plugin_file', None)
    if plugin:
        opts['plugin'] = plugin['plugin']
        opts['plugin_args'] = plugin.get('plugin_args') or {}
    for key in ('bids_dir', 'output_dir', 'work_dir', 'bids_database_dir', 'model',
                'complete_dataset'):
        if key == 'model' and str(opts.get(key)) == 'default':
            opts[key] = 'default'
        elif opts.get(key) is not None:
            opts[key] = str(Path(opts[key]).expanduser().absolute())
    if opts.get('work_dir') is None:
        opts['work_dir'] = str(Path(opts['output_dir']).parent / 'bids_synth_work')
    opts['participant_label'] = opts.get('participant_label') or []
    opts['session_label'] = opts.get('session_label') or []
    opts['modalities'] = list(dict.fromkeys(m for group in (opts.get('modalities') or [])
                                            for m in group))
    opts['clinical_columns'] = opts.get('clinical_columns') or []
    opts['derivatives'] = [str(Path(d).expanduser().absolute())
                           for d in (opts.get('derivatives') or [])]
    if opts.get('complete_dataset') is None:
        opts['complete_dataset'] = ''
    if opts.get('dwi_scheme'):
        opts['dwi_scheme'] = str(Path(opts['dwi_scheme']).expanduser().absolute())
    else:
        opts['dwi_scheme'] = ''
    opts['bids_filters'] = opts.get('bids_filters') or {}
    opts['nprocs'] = opts.get('nprocs') or (os.cpu_count() or 1)
    opts['omp_nthreads'] = opts.get('omp_nthreads') or max(1, min(4, opts['nprocs']))
    if opts.get('res') is None:
        opts['res'] = 0
    if opts.get('train_steps') is None:
        opts['train_steps'] = 0
    if opts.get('train_config') is None:
        opts['train_config'] = ''
    if opts.get('steps') is None:
        opts['steps'] = 0
    if opts.get('num_samples') is None:
        opts['num_samples'] = 0
    if opts.get('sampler') is None:
        opts['sampler'] = ''
    if opts.get('model') is None:
        opts['model'] = ''
    if opts.get('bids_database_dir') is None:
        opts['bids_database_dir'] = ''
    return opts
