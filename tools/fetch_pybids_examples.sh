#!/usr/bin/env bash
# Unpack the real BIDS layouts that ship in pybids' source distribution (empty NIfTIs, real file
# names, sidecars and TSVs: ds005, 7t_trt, ds000117, synthetic, ...) for walking/indexing tests.
#
# usage: tools/fetch_pybids_examples.sh DEST [PYTHON]
#   DEST    folder to fill, e.g. .venv/share/pybids-examples (tests read BIDS_SYNTH_PYBIDS_EXAMPLES)
#   PYTHON  interpreter whose pybids version is matched (default: DEST/../../bin/python when DEST
#           lies in a virtual environment, e.g. .venv/share/pybids-examples; else python3)
#
# Run at install time (Makefile); it needs the package index. Never run at test time: tests skip
# when DEST is absent. Idempotent: a DEST whose .pybids-version matches is left alone.
set -euo pipefail
dest="${1:?usage: fetch_pybids_examples.sh DEST [PYTHON]}"
venv_py="$(dirname "$(dirname "$dest")")/bin/python"
if [ -n "${2:-}" ]; then py="$2"; elif [ -x "$venv_py" ]; then py="$venv_py"; else py=python3; fi
version="$("$py" -c 'from importlib.metadata import version; print(version("pybids"))' 2>/dev/null)" || {
  echo "fetch_pybids_examples: ${py} has no pybids installed; give the environment's python" >&2
  exit 69
}
stamp="${dest}/.pybids-version"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
  echo "fetch_pybids_examples: pybids ${version} layouts already in ${dest}"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check \
  -d "$tmp" "pybids==${version}"
sdist="$(ls "$tmp"/pybids-*.tar.gz | head -n 1)"
tar -xzf "$sdist" -C "$tmp"
src="$(ls -d "$tmp"/pybids-*/ | head -n 1)"
data=""
# pybids >= 0.16 keeps the dataset layouts in tests/data at the top of the sdist; older ones kept
# them inside the package (bids/tests/data). src/bids/tests/data only holds a few loose images.
for cand in "${src}tests/data" "${src}bids/tests/data" "${src}src/bids/tests/data"; do
  if [ -f "${cand}/ds005/dataset_description.json" ]; then data="$cand"; break; fi
done
[ -n "$data" ] || { echo "fetch_pybids_examples: no tests/data in ${sdist}" >&2; exit 65; }
mkdir -p "$dest"
rm -rf "${dest:?}"/*
cp -a "$data"/. "$dest"/
echo "$version" > "$stamp"
echo "fetch_pybids_examples: pybids ${version} layouts -> ${dest}: $(ls "$dest" | tr '\n' ' ')"
