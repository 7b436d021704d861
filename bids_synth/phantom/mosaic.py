"""PNG mosaic of one phantom subject's modalities (the picture in docs/phantom.md).

    python -m bids_synth.phantom.mosaic docs/img/phantom_mosaic.png [--seed 3]

Generates a 2-subject cohort in a temporary folder (no missing modality), picks the subject with
the most advanced disease, and shows each modality of its ground truth in three orthogonal
planes through the middle of each image, in scanner (RAS) orientation: the head pose, the
different grids and fields of view are the ones written. PET: mean over frames; bold: the first
volume and its temporal standard deviation; dwi: the b0 and one b=1000 volume.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ['make_mosaic', 'main']


def _panels(gt: Path, sub: str) -> list[tuple[str, np.ndarray, tuple]]:
    from .session import relpath

    out = []
    for mod in ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45', 'bold', 'dwi'):
        img = nib.as_closest_canonical(nib.load(gt / relpath(mod, sub, None)))
        data = np.asarray(img.dataobj, dtype=np.float32)
        zooms = img.header.get_zooms()[:3]
        if mod in ('FDG', 'AV45'):
            out.append((f'{mod} (mean of {data.shape[3]} frames, Bq/mL)', data.mean(-1), zooms))
        elif mod == 'bold':
            out.append(('bold (volume 1)', data[..., 0], zooms))
            out.append(('bold (temporal std)', data.std(-1), zooms))
        elif mod == 'dwi':
            bvals = np.loadtxt(gt / relpath(mod, sub, None, '.bval'))
            out.append(('dwi b=0', data[..., int(np.argmin(bvals))], zooms))
            out.append(('dwi b=1000', data[..., int(np.argmax(bvals))], zooms))
        else:
            out.append((f'{mod} ({"x".join(f"{z:.1f}" for z in zooms)} mm)', data, zooms))
    return out


def make_mosaic(out_png, *, seed: int = 3, resolution: str = 'default') -> Path:
    """Generate the subject and write the mosaic PNG; returns its path."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .cohort import generate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        res = generate_cohort(Path(tmp) / 'bids', n_subjects=2, seed=seed, missing=0.0,
                              resolution=resolution)
        truth = res.truth.set_index('participant_id')
        sev = {k[0]: v['severity'] for k, v in res.sessions.items()}
        sub = max(sev, key=sev.get)
        row = truth.loc[f'sub-{sub}']
        panels = _panels(res.ground_truth_dir, sub)
    fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.3 * len(panels)),
                             facecolor='black')
    for r, (title, data, zooms) in enumerate(panels):
        mid = [n // 2 for n in data.shape]
        lo, hi = np.percentile(data[data > 0], [1, 99.5]) if (data > 0).any() else (0, 1)
        cuts = [(data[:, :, mid[2]], zooms[0], zooms[1]),   # axial
                (data[:, mid[1], :], zooms[0], zooms[2]),   # coronal
                (data[mid[0], :, :], zooms[1], zooms[2])]   # sagittal
        for c, (sl, zx, zy) in enumerate(cuts):
            ax = axes[r, c]
            ax.imshow(sl.T, origin='lower', cmap='hot' if 'FDG' in title or 'AV45' in title
                      else 'gray', vmin=lo, vmax=hi, aspect=zy / zx, interpolation='nearest')
            ax.set_axis_off()
        axes[r, 0].set_title(title, color='white', fontsize=9, loc='left')
    fig.suptitle(f'bids_synth phantom, seed {seed}: sub-{sub}, {row["age"]:.0f} y, '
                 f'{row["sex"]}, {row["diagnosis"]}, MMSE {row["mmse"]}, '
                 f'amyloid {row["amyloid"]}, APOE4 {row["apoe4"]}', color='white', fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80, facecolor='black')
    plt.close(fig)
    return out_png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m bids_synth.phantom.mosaic', description=__doc__)
    p.add_argument('out_png')
    p.add_argument('--seed', type=int, default=3)
    p.add_argument('--resolution', default='default', choices=('default', 'low'))
    args = p.parse_args(argv)
    print(make_mosaic(args.out_png, seed=args.seed, resolution=args.resolution))
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
