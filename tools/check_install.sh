#!/usr/bin/env bash
# Exercise the install path of the container images: a fresh venv, tools/install.sh (non-editable,
# as the Dockerfile and Singularity.def run it, but with the CPU torch), then `bids_synth --version`
# from that venv must print the version of pyproject.toml.
#
# usage: tools/check_install.sh [--keep] [VENV_DIR]
#   VENV_DIR  where to make the venv (default: a temporary folder, removed afterwards unless --keep)
#   PYTHON    env: the interpreter to make the venv with (default: python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
keep=""; venv=""
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    -*) echo "check_install.sh: unknown option $arg" >&2; exit 64 ;;
    *) venv="$arg" ;;
  esac
done
if [ -z "$venv" ]; then
  venv="$(mktemp -d "${TMPDIR:-/tmp}/bids_synth_check_install.XXXXXX")/venv"
  [ -n "$keep" ] || trap 'rm -rf "$(dirname "$venv")"' EXIT
fi
[ ! -e "$venv" ] || { echo "check_install.sh: $venv exists; give a new folder" >&2; exit 73; }
start=$(date +%s)
"${PYTHON:-python3}" -m venv "$venv"
# the same script, the same way the images call it (non-editable), the CPU flavour of torch
"$here/tools/install.sh" --cpu "$venv/bin/python"
want="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$here/pyproject.toml" | head -n 1)"
# run from elsewhere so the source tree cannot shadow the installed package
got="$(cd / && "$venv/bin/bids_synth" --version)"
echo "check_install.sh: bids_synth --version -> ${got}"
case "$got" in
  *"$want"*) ;;
  *) echo "check_install.sh: expected version ${want} in '${got}'" >&2; exit 1 ;;
esac
loc="$(cd / && "$venv/bin/python" -c 'import bids_synth; print(bids_synth.__file__)')"
case "$loc" in
  "$venv"/*) ;;
  *) echo "check_install.sh: bids_synth imported from ${loc}, not from the venv" >&2; exit 1 ;;
esac
echo "check_install.sh: OK in $(( $(date +%s) - start )) s (${venv})"
