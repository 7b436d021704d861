"""Time and peak memory of the phantom cohort generator.

Cases (medians of ``--runs`` runs, each in a fresh temporary folder):

- ``default10``: 10 subjects, all 7 modalities, default resolution (issue goal: <= 60 s on 2 CPU
  cores), rendered with ``--jobs`` worker processes;
- ``low6``: 6 subjects, all modalities, 'low' resolution, one process (what the test suite
  generates; aim: <= 15 s).

Peak memory: maximum resident set size of this process and of the largest worker (``getrusage``).
The load average at the start is recorded: the 2-core benchmark machine is shared, and wall
times on a loaded machine are longer than the CPU time spent.

    python bench/phantom.py --runs 3 --jobs 2      # JSON to bench/results/phantom.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bids_synth.phantom import generate_cohort
from bids_synth.phantom.anatomy import load_template

CASES = {
    'default10': dict(n_subjects=10, resolution='default'),
    'low6': dict(n_subjects=6, resolution='low'),
}


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 2**20


def run_case(name: str, runs: int, jobs: int) -> dict:
    kw = dict(CASES[name])
    n_jobs = jobs if name == 'default10' else 1
    walls, cpus, sizes = [], [], []
    for r in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix=f'phantom_bench_{name}_'))
        try:
            load = os.getloadavg()[0]
            c0, t0 = _cpu_s(), time.perf_counter()
            res = generate_cohort(tmp / 'bids', seed=r, missing=0.3, n_jobs=n_jobs, **kw)
            walls.append(time.perf_counter() - t0)
            cpus.append(_cpu_s() - c0)
            sizes.append(_du_mb(res.bids_dir) + _du_mb(res.ground_truth_dir))
            print(f'{name} run {r + 1}/{runs}: {walls[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU, '
                  f'load {load:.1f} at start', flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        **kw, 'modalities': 7, 'n_jobs': n_jobs, 'runs': runs,
        'wall_s_median': round(statistics.median(walls), 2),
        'wall_s_all': [round(w, 2) for w in walls],
        'cpu_s_median': round(statistics.median(cpus), 2),
        'disk_mb_bids_plus_groundtruth': round(statistics.median(sizes), 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    p.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'phantom.json'))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    load_template()  # the on-disk template cache is built once, not per run
    template_s = time.perf_counter() - t0
    result = {
        'benchmark': 'phantom cohort generation',
        'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(),
                    'python': platform.python_version(),
                    'loadavg_at_start': [round(x, 2) for x in os.getloadavg()]},
        'template_load_s': round(template_s, 2),
        'goal': 'default10 <= 60 s wall on 2 CPU cores; low6 <= 15 s',
        'cases': {},
    }
    for name in args.cases:
        result['cases'][name] = run_case(name, args.runs, args.jobs)
    kb = 1024 if platform.system() != 'Darwin' else 1
    result['peak_rss_mb'] = {
        'main_process': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb / 2**20, 1),
        'largest_worker': round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kb / 2**20, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
