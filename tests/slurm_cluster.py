"""A real single-node Slurm for tests: pytest fixtures around ``tools/slurm/start.sh``/``stop.sh``.

Use from a test module (or a conftest.py)::

    from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

    def test_x(slurm_cluster):
        job = slurm_cluster.sbatch(['--wrap', 'hostname'], wait=True)

The session-scoped fixture starts slurmctld, slurmd and munged (Debian's ``slurm-wlm`` and
``munge``, installed with apt-get when missing) on loopback, with its own state folder and free
ports (so concurrent test sessions on one machine do not meet), and stops them afterwards. Where
Slurm cannot be had (not root, no apt-get, daemons do not start) the tests that use it are
skipped with the reason, except under CI (``CI=true``), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ['SlurmCluster', 'in_ci', 'slurm_cluster', 'unavailable']

REPO = Path(__file__).resolve().parents[1]
START = REPO / 'tools' / 'slurm' / 'start.sh'
STOP = REPO / 'tools' / 'slurm' / 'stop.sh'


def in_ci() -> bool:
    """True under CI (``CI`` set to true/1/yes, as GitHub Actions, GitLab CI and .ci/run do)."""
    return os.environ.get('CI', '').strip().lower() in {'true', '1', 'yes'}


def unavailable(reason: str):
    """Skip with ``reason``; under CI fail instead (the Slurm tests must run there)."""
    if in_ci():
        pytest.fail(f'Slurm test cannot run under CI: {reason}', pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    """A running single-node cluster: its state folder and the environment that reaches it."""

    state_dir: Path
    conf: Path
    env: dict = field(default_factory=dict)

    def run(self, args: list[str], *, check: bool = True, timeout: float = 60,
            env: dict | None = None, cwd: str | os.PathLike | None = None):
        """Run a Slurm client command (sbatch, squeue, scontrol...) against this cluster."""
        full = dict(self.env)
        if env:
            full.update(env)
        return subprocess.run(args, env=full, cwd=cwd, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def sbatch(self, args: list[str], *, wait: bool = True, timeout: float = 600,
               env: dict | None = None, cwd: str | os.PathLike | None = None) -> int:
        """Submit with sbatch; with ``wait`` block until the job (all array tasks) ends.

        Returns the job id. Raises ``AssertionError`` with the job's log tail when a task
        fails (sbatch --wait exits non-zero then) or when it does not end within ``timeout``.
        """
        cmd = ['sbatch', '--parsable'] + (['--wait'] if wait else []) + list(args)
        try:
            res = self.run(cmd, check=False, timeout=timeout, env=env, cwd=cwd)
        except subprocess.TimeoutExpired as exc:
            self.run(['scancel', '--user', _user()], check=False)
            raise AssertionError(f'{cmd} did not finish within {timeout} s\n{self.diagnostics()}'
                                 ) from exc
        out = res.stdout.strip().splitlines()
        job = int(out[0].split(';')[0]) if out and out[0].split(';')[0].isdigit() else -1
        assert res.returncode == 0 and job > 0, (
            f'{" ".join(cmd)} -> rc {res.returncode}\nstdout: {res.stdout}\n'
            f'stderr: {res.stderr}\n{self.diagnostics()}'
        )
        return job

    def diagnostics(self) -> str:
        """sinfo/squeue and the tails of the daemon logs, for assertion messages."""
        parts = []
        for cmd in (['sinfo', '-N', '-l'], ['squeue', '-l']):
            try:
                r = self.run(cmd, check=False, timeout=10)
                parts.append(f'$ {" ".join(cmd)}\n{r.stdout}{r.stderr}')
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                parts.append(f'$ {" ".join(cmd)}: {exc}')
        for log in ('slurmctld.log', 'slurmd.log'):
            p = self.state_dir / 'log' / log
            if p.exists():
                tail = p.read_text(errors='replace').splitlines()[-15:]
                parts.append(f'--- {log}\n' + '\n'.join(tail))
        return '\n'.join(parts)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def start_cluster(state_dir: Path, timeout: float = 300) -> SlurmCluster:
    """Start a cluster in ``state_dir`` (calls ``unavailable`` when that is impossible)."""
    if os.geteuid() != 0:
        unavailable('a single-node Slurm needs root here (slurmd starts jobs as their users); '
                    'run the tests as root or under CI')
    if shutil.which('slurmctld') is None and shutil.which('apt-get') is None:
        unavailable('slurm-wlm is not installed and there is no apt-get to install it')
    env = dict(os.environ)
    env.update({
        'BIDS_SYNTH_SLURMCTLD_PORT': str(_free_port()),
        'BIDS_SYNTH_SLURMD_PORT': str(_free_port()),
    })
    t0 = time.monotonic()
    try:
        res = subprocess.run([str(START), str(state_dir)], env=env, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run([str(STOP), '--purge', str(state_dir)], capture_output=True)
        unavailable(f'tools/slurm/start.sh did not finish within {timeout} s')
    if res.returncode != 0:
        subprocess.run([str(STOP), '--purge', str(state_dir)], capture_output=True)
        unavailable(f'tools/slurm/start.sh failed (rc {res.returncode}): '
                    f'{res.stderr.strip()[-2000:]}')
    conf = state_dir / 'slurm.conf'
    cenv = dict(os.environ)
    cenv['SLURM_CONF'] = str(conf)
    # Nipype's SLURM plugin names jobs after LOGNAME; batch environments may lack it
    cenv.setdefault('LOGNAME', _user())
    cenv.setdefault('USER', _user())
    print(f'slurm_cluster: up in {time.monotonic() - t0:.1f} s ({conf})')
    return SlurmCluster(state_dir=state_dir, conf=conf, env=cenv)


def stop_cluster(cluster: SlurmCluster) -> None:
    subprocess.run([str(STOP), '--purge', str(cluster.state_dir)], capture_output=True,
                   timeout=120)


@pytest.fixture(scope='session')
def slurm_cluster():
    """A running single-node Slurm for the whole session; stopped (and its state removed) after."""
    state = Path(tempfile.mkdtemp(prefix='bids_synth_slurm_'))
    # munged needs every parent of its socket folder searchable by the munge user
    os.chmod(state, 0o755)
    cluster = start_cluster(state)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
