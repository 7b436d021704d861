"""Seconds per session by stage of the participant level, on a phantom cohort.

Stages, timed with the functions the Nipype nodes call:
  index       pybids indexing + per-session inventory (readability checks included)
  conform     every available input of the session to template space (registration included)
  synthesize  every missing modality of the session (the model's predict)
  to_native   resampling the synthesized images onto the native reference grid
  write       BIDS-Derivatives files and sidecars

Plus the wall time of the whole ``bids_synth ... participant`` command (Nipype, MultiProc).
Median over ``--repeats`` runs; JSON to bench/results/participant.json.

    python bench/participant.py [--subjects 4] [--repeats 3] [--res 4] [--method regression]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _machine() -> dict:
    import torch

    return {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
            'processor': platform.processor() or platform.machine(),
            'python': platform.python_version(), 'torch': torch.__version__,
            'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _stage_times(cohort, model_dir, res, tmp: Path) -> list[dict]:
    from bids_synth.bids.clinical import load_clinical
    from bids_synth.bids.layout import collect_sessions, load_layout
    from bids_synth.interfaces.derivatives import write_synth_outputs
    from bids_synth.models.imputer import SessionArrays
    from bids_synth.models.loading import load_imputer
    from bids_synth.preprocessing.conform import conform, save_conformed, to_native
    from bids_synth.preprocessing.templates import load_template

    t0 = time.perf_counter()
    invs = collect_sessions(load_layout(cohort.bids_dir))
    clinical = load_clinical(cohort.bids_dir)
    t_index = (time.perf_counter() - t0) / len(invs)
    template = load_template(res)
    imputer = load_imputer(model_dir)
    rows = []
    for inv in invs:
        targets = [t for t in inv.missing(imputer.modalities)]
        if not targets:
            continue
        work = tmp / inv.label
        t0 = time.perf_counter()
        conformed = {}
        for mod in inv.available:
            conformed[mod] = conform(inv.files[mod].path, mod, template, work / mod,
                                     metadata=inv.files[mod].metadata)
        t_conform = time.perf_counter() - t0
        sess = SessionArrays(inv.subject, inv.session,
                             {m: r.array for m, r in conformed.items()
                              if m in imputer.modalities},
                             clinical.for_session(inv.subject, inv.session))
        t0 = time.perf_counter()
        preds = imputer.predict(sess, tuple(targets))
        t_synth = time.perf_counter() - t0
        ref = conformed[inv.reference.modality]
        t0 = time.perf_counter()
        natives = {t: to_native(p.mean, template, ref.transform, ref.native_reference)
                   for t, p in preds.items()}
        t_native = time.perf_counter() - t0
        t0 = time.perf_counter()
        for t, p in preds.items():
            tpl_file = save_conformed(p.mean, work / f'{t}_tpl.nii.gz', template)
            nat_file = work / f'{t}_native.nii.gz'
            natives[t].to_filename(nat_file)
            write_synth_outputs(
                output_dir=tmp / 'out', bids_dir=cohort.bids_dir, subject=inv.subject,
                session=inv.session, target=t, res=res,
                images={'template': tpl_file, 'native': str(nat_file)},
                provenance={'method': imputer.method, 'inputs_used': sorted(sess.images),
                            'num_samples': 1},
                source_files=[inv.files[m].path for m in sess.images],
                reference_file=inv.reference.path,
            )
        t_write = time.perf_counter() - t0
        rows.append({'session': inv.label, 'n_inputs': len(inv.available),
                     'n_targets': len(targets), 'index': t_index, 'conform': t_conform,
                     'synthesize': t_synth, 'to_native': t_native, 'write': t_write})
    return rows


def _run(cmd: list[str]) -> None:
    """Run a command; on failure show its stderr (the CLI's one-line error) and stop."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f'failed ({proc.returncode}): {" ".join(cmd)}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--subjects', type=int, default=4)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--res', type=int, default=4, choices=[2, 4])
    ap.add_argument('--method', default='regression', choices=['regression', 'diffusion'])
    ap.add_argument('--out', type=Path, default=HERE / 'results' / 'participant.json')
    args = ap.parse_args(argv)

    os.environ.setdefault('NIPYPE_NO_ET', '1')
    from bids_synth.phantom import generate_cohort
    from bids_synth.preprocessing.templates import ensure_templateflow_home

    ensure_templateflow_home()
    with tempfile.TemporaryDirectory(prefix='bench-participant-') as tmp:
        tmp = Path(tmp)
        cohort = generate_cohort(tmp / 'bids', n_subjects=args.subjects, seed=101,
                                 missing=0.3, resolution='low', ground_truth=tmp / 'gt')
        bids_synth = [sys.executable, '-m', 'bids_synth.cli.run']
        out = tmp / 'deriv'
        if args.method == 'regression':
            _run(bids_synth + [str(cohort.bids_dir), str(out), 'group', '--method',
                               'regression', '--res', str(args.res), '-w', str(tmp / 'gwork'),
                               '--skip-bids-validation'])
            model_dir = out / 'models' / 'regression'
        else:
            from bids_synth.workflows.base import default_model_dir

            model_dir = default_model_dir()
        stage_runs, wall = [], []
        for rep in range(args.repeats):
            stage_runs.append(_stage_times(cohort, model_dir, args.res, tmp / f'stages{rep}'))
            t0 = time.perf_counter()
            _run(bids_synth + [str(cohort.bids_dir), str(tmp / f'p{rep}'), 'participant',
                               '--model', str(model_dir), '-w', str(tmp / f'pwork{rep}'),
                               '--skip-bids-validation', '--no-reports'])
            wall.append(time.perf_counter() - t0)
        n_sessions = len(stage_runs[0])
        stages = ('index', 'conform', 'synthesize', 'to_native', 'write')
        per_stage = {s: statistics.median(
            statistics.mean(r[s] for r in run) for run in stage_runs) for s in stages}
        result = {
            'benchmark': 'participant',
            'method': args.method,
            'res': args.res,
            'subjects': args.subjects,
            'sessions_with_targets': n_sessions,
            'repeats': args.repeats,
            'seconds_per_session_by_stage_median': per_stage,
            'seconds_per_session_total_stages': sum(per_stage.values()),
            'cli_wall_seconds_median': statistics.median(wall),
            'cli_wall_seconds_per_session': statistics.median(wall) / max(n_sessions, 1),
            'sessions': stage_runs[-1],
            'machine': _machine(),
            'date': time.strftime('%Y-%m-%d'),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps({k: v for k, v in result.items() if k != 'sessions'}, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
