"""Measure the registration QC similarity that sets the thresholds of bids_synth.preprocessing.qc.

For every image of a phantom cohort and of the real sample (../shared/realdata), register it to
the template as given, and, for the T1w images, also with its affine turned by 180 degrees
about x and about z (data unchanged): the similarity of the plain registration, and the
orientation candidate the QC keeps. One JSON line per registration on stdout.

    python -m bids_synth.phantom.cli /tmp/ph --n-subjects 3 --seed 3 --resolution low --missing 0
    python tools/registration_qc_thresholds.py --res 4 /tmp/ph ../shared/realdata/bids
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

TURNS = {'x': np.diag([1.0, -1.0, -1.0, 1.0]), 'z': np.diag([-1.0, -1.0, 1.0, 1.0])}


def main() -> None:
    from bids_synth.bids.layout import collect_sessions, load_layout
    from bids_synth.preprocessing.conform import register_to_template
    from bids_synth.preprocessing.derived import representation_native
    from bids_synth.preprocessing.templates import ensure_templateflow_home, load_template

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('datasets', nargs='+', type=Path)
    parser.add_argument('--res', type=int, default=4, choices=(2, 4))
    opts = parser.parse_args()
    ensure_templateflow_home()
    template = load_template(opts.res)
    work = Path(tempfile.mkdtemp(prefix='qc_thresholds_'))
    for root in opts.datasets:
        for inv in collect_sessions(load_layout(root)):
            for mod in inv.available:
                entry = inv.files[mod]
                _, ref = representation_native(entry.path, mod, entry.metadata)
                for turn in ('none', *(TURNS if mod == 'T1w' else ())):
                    img = ref if turn == 'none' else nib.Nifti1Image(
                        np.asarray(ref.dataobj), TURNS[turn] @ ref.affine)
                    t0 = time.monotonic()
                    tx = register_to_template(img, template, modality=mod, force=True,
                                              work_dir=work / inv.label / mod / turn)
                    print(json.dumps({'dataset': root.name, 'session': inv.label,
                                      'modality': mod, 'turned': turn, 'res': opts.res,
                                      'plain': tx.qc['tried']['identity'], **tx.qc,
                                      'seconds': round(time.monotonic() - t0, 1)}), flush=True)


if __name__ == '__main__':
    main()
