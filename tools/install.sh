#!/usr/bin/env bash
# The one install path of bids_synth: used by the Makefile (make demo / make test), CI and the
# container images, so the three cannot drift apart.
#
# usage: tools/install.sh [--cpu|--cuda] [--test] [--editable] PYTHON
#   --cpu      torch==2.13.0 CPU build (default; CI and laptops)
#   --cuda     torch==2.13.0 CUDA build from PyPI (container images)
#   --test     also install the test extras
#   --editable pip install -e (development checkouts)
#   PYTHON     the interpreter of the environment to install into (e.g. .venv/bin/python)
set -euo pipefail
flavour=cpu; extras=""; editable=""; py=""
for arg in "$@"; do
  case "$arg" in
    --cpu) flavour=cpu ;;
    --cuda) flavour=cuda ;;
    --test) extras="[test]" ;;
    --editable) editable="-e" ;;
    -*) echo "install.sh: unknown option $arg" >&2; exit 64 ;;
    *) py="$arg" ;;
  esac
done
[ -n "$py" ] || { echo "install.sh: give the python of the target environment" >&2; exit 64; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION=2.13.0
EINOPS_VERSION=0.8.2
pip_install() { "$py" -m pip install --no-cache-dir --disable-pip-version-check "$@"; }
# --cpu: on CI/dev machines the CPU wheel of this exact version lies in pip's find-links; elsewhere
# point PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS at a CPU wheel. --cuda: PyPI's default (CUDA) build.
echo "install.sh: torch==${TORCH_VERSION} (${flavour})"
pip_install "torch==${TORCH_VERSION}"
pip_install "einops==${EINOPS_VERSION}"
pip_install $editable "${here}${extras}"
