"""``bids-synth-phantom``: write a phantom BIDS cohort and its ground truth.

Errors are one line on stderr and a BIDS-Apps exit code (64 bad usage, 73 cannot create the
output); ``-v`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys
import time

from bids_synth.bids.modalities import DEFAULT_TARGETS
from bids_synth.errors import BIDSSynthError, UsageError

__all__ = ['main', 'build_parser', 'parse_missing_arg']


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 64 (EX_USAGE) instead of argparse's 2
        raise UsageError(message)


def parse_missing_arg(values: list[str]) -> float | dict[str, float]:
    """``['0.3']`` -> 0.3; ``['FDG=0.6,AV45=0.6']`` or ``['FDG=0.6', 'AV45=0.6']`` -> dict."""
    items = [v for raw in values for v in raw.split(',') if v.strip()]
    if len(items) == 1 and '=' not in items[0]:
        try:
            return float(items[0])
        except ValueError:
            raise UsageError(f'--missing: not a number: {items[0]!r}') from None
    out = {}
    for item in items:
        name, sep, rate = item.partition('=')
        if not sep:
            raise UsageError(f'--missing: expected MODALITY=RATE, got {item!r}')
        try:
            out[name.strip()] = float(rate)
        except ValueError:
            raise UsageError(f'--missing: not a number for {name}: {rate!r}') from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog='bids-synth-phantom',
        description='Generate a simulated multimodal BIDS cohort (MRI, PET, bold, dwi) with '
                    'clinical data, missing modalities and a complete ground truth.',
    )
    p.add_argument('output_dir', metavar='OUTPUT_DIR', help='BIDS dataset to create')
    p.add_argument('-n', '--subjects', '--n-subjects', dest='subjects', type=int, default=6,
                   help='number of participants')
    p.add_argument('--sessions', '--n-sessions', dest='sessions', type=int, default=1,
                   help='sessions per participant (longitudinal when > 1)')
    p.add_argument('--seed', type=int, default=0, help='random seed (same seed, same data)')
    p.add_argument('--modalities', nargs='+', default=list(DEFAULT_TARGETS),
                   metavar='MODALITY', help=f'among {" ".join(DEFAULT_TARGETS)}')
    p.add_argument('--missing', nargs='+', default=['0.3'], metavar='SPEC',
                   help='fraction of sessions missing each modality (e.g. 0.3), or per '
                        'modality: FDG=0.6 AV45=0.6 (others then 0)')
    p.add_argument('--resolution', default='default', choices=('default', 'low'),
                   help="'default' (anat 1 mm, PET 2 mm, bold 3 mm, dwi 2 mm) or 'low' (fast)")
    p.add_argument('--ground-truth', metavar='DIR', default=None,
                   help='ground-truth folder (default: OUTPUT_DIR_groundtruth beside it)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an existing phantom cohort at these paths')
    p.add_argument('-j', '--jobs', type=int, default=1, help='sessions rendered in parallel')
    p.add_argument('--clean', action='store_true',
                   help='render without the acquisition bias fields and noise (an oracle '
                        'reference for benchmarks, not realistic data)')
    p.add_argument('--shift-contrast', action='store_true',
                   help='pass the sMRI and PET images through another scanner\'s contrast '
                        '(random intensity curves, bias fields, noise, blur): a test cohort '
                        'for models trained on the standard phantom')
    p.add_argument('-v', '--verbose', action='store_true', help='tracebacks on errors')
    return p


def main(argv=None) -> int:
    """Entry point of ``bids-synth-phantom``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = '-v' in argv or '--verbose' in argv
    try:
        args = build_parser().parse_args(argv)
        from .cohort import generate_cohort

        start = time.perf_counter()
        result = generate_cohort(
            args.output_dir, n_subjects=args.subjects, n_sessions=args.sessions,
            seed=args.seed, modalities=args.modalities, missing=parse_missing_arg(args.missing),
            resolution=args.resolution, ground_truth=args.ground_truth,
            overwrite=args.overwrite, n_jobs=args.jobs, clean=args.clean,
            shift_contrast=args.shift_contrast,
        )
    except BIDSSynthError as exc:
        if verbose:
            raise
        print(f'bids-synth-phantom: error: {exc}', file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print('bids-synth-phantom: interrupted', file=sys.stderr)
        return 130
    n_missing = sum(len(v) for v in result.missing.values())
    print(f'wrote {len(result.participants)} participants, {len(result.missing)} sessions '
          f'({n_missing} modality files left out) to {result.bids_dir}; ground truth in '
          f'{result.ground_truth_dir} ({time.perf_counter() - start:.1f} s)')
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
