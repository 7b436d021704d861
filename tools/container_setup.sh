#!/usr/bin/env bash
# Build-time set-up shared by the Dockerfile and Singularity.def (so the two cannot drift):
#   1. TemplateFlow: MNI152NLin2009cAsym for fMRIPrep users (downloaded: network needed at build),
#      zero-byte TemplateFlow stubs removed (they would make templateflow go to the network), then
#      bids_synth's own MNI152NLin2009aSym written offline by ensure_templateflow_home();
#   2. checks that the embedded default model was installed with the package;
#   3. makes everything world-readable (the images run as a non-root user, or as any --user).
#
# usage: TEMPLATEFLOW_HOME=/opt/templateflow tools/container_setup.sh PYTHON
set -euo pipefail
py="${1:?usage: tools/container_setup.sh PYTHON}"
: "${TEMPLATEFLOW_HOME:?set TEMPLATEFLOW_HOME to the folder to populate}"
export TEMPLATEFLOW_HOME
mkdir -p "$TEMPLATEFLOW_HOME"

echo "container_setup: MNI152NLin2009cAsym into $TEMPLATEFLOW_HOME"
"$py" - <<'PY'
import templateflow.api as tf

tpl = 'MNI152NLin2009cAsym'
wanted = [
    dict(resolution=[1, 2], desc=None, suffix='T1w'),
    dict(resolution=[1, 2], desc='brain', suffix='mask'),
    dict(resolution=[1, 2], label=['CSF', 'GM', 'WM'], suffix='probseg'),
    dict(resolution=1, desc='carpet', suffix='dseg'),
    dict(resolution=2, desc='fMRIPrep', suffix='boldref'),
]
n = 0
for query in wanted:
    got = tf.get(tpl, raise_empty=True, **query)
    n += len(got) if isinstance(got, list) else 1
print(f'container_setup: {n} {tpl} files')
PY
# TemplateFlow's skeleton holds a 0-byte placeholder for every file of every template; any of
# them makes templateflow try the network (and fail offline, or on a read-only image).
find "$TEMPLATEFLOW_HOME" -type f -size 0 -delete
find "$TEMPLATEFLOW_HOME" -mindepth 1 -type d -empty -delete

echo "container_setup: MNI152NLin2009aSym (bids_synth's template) into $TEMPLATEFLOW_HOME"
"$py" -c "from bids_synth.preprocessing.templates import ensure_templateflow_home; print(ensure_templateflow_home())"
TEMPLATEFLOW_AUTOUPDATE=0 "$py" - <<'PY'
import templateflow.api as tf

for tpl in ('MNI152NLin2009aSym', 'MNI152NLin2009cAsym'):
    f = tf.get(tpl, resolution=2, desc='brain', suffix='mask')
    assert f and f.stat().st_size > 0, (tpl, f)
print('container_setup: templates resolve offline')
PY

echo "container_setup: embedded default model"
"$py" - <<'PY'
from bids_synth.models.checkpoint import read_card
from bids_synth.workflows.base import default_model_dir

path = default_model_dir()
if not (path / 'model_card.json').is_file():
    raise SystemExit(f'container_setup: no embedded default model at {path} (model_card.json)')
card = read_card(path)
print(f"container_setup: default model {card.get('name')} ({card.get('method')}) at {path}")
PY

chmod -R a+rX "$TEMPLATEFLOW_HOME"
