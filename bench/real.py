"""The participant level on the three real subjects of ../shared/realdata, and how close its
synthesized T2w/FLAIR come to the real ones (issue 13).

Everything runs on copies in a temporary folder (../shared is read-only):

1. ``all``: the three subjects as they are, every missing modality synthesized with the
   embedded default model (``--model default``): exit code, wall time, and per conform node
   the registration quality (normalized mutual information, Studholme's (H(A)+H(B))/H(A,B),
   32 bins, and Pearson correlation, between the conformed image and the registration target,
   inside the template brain mask; for scale, the NMI of the same image shifted by 8 mm; the
   correlation means little across contrasts, e.g. an EPI against the pseudo-T2 target),
   what brain extraction did (SkullStripped detected, deepbet mask volume), the node's run
   time.
2. ``removed``: sub-ms07 without its T2w, sub-ms07 without its FLAIR (as two subjects), and
   sub-ixi002 without its T2w; the native-space synthesized image against the real one, inside
   the brain (real image > 0, co-registered grids; sub-ixi002's real T2w is first aligned to its
   T1w with an antspyx rigid registration): Pearson r, PSNR (each image divided by its 99th
   percentile in the brain, range of the real one) of the synthesized image and of the nearest
   acquired contrast copied (FLAIR for T2w, T2w for FLAIR, T1w for sub-ixi002's T2w), and for
   the FLAIR the MS lesion contrast kept: ((lesion - NAWM) / NAWM) synthesized over real, NAWM
   a 3-voxel ring around the lesions where the T1w is brighter than its brain median (white
   matter), from ``truth/sub-ms07_lesions.nii.gz``. With the default native refinement
   (``removed``, the tissue transfer) and with ``--native-refine guided``
   (``removed_guided``).
3. Brain extraction of sub-forrest02's bold reference (temporal mean) with deepbet: mask volume
   and time (the pipeline extracts sMRI only), and a mosaic of the raw T1w's mask.

    nice -n 19 python bench/real.py            # JSON to bench/results/real.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = (ROOT / '..' / 'shared' / 'realdata').resolve()


def _rel(path: Path) -> str:
    return os.path.relpath(path, ROOT) if str(path).startswith(str(ROOT)) else str(path)


def nmi(a: np.ndarray, b: np.ndarray, mask: np.ndarray, bins: int = 32) -> float:
    """Studholme's normalized mutual information (1: independent, 2: identical)."""
    h, _, _ = np.histogram2d(a[mask], b[mask], bins=bins)
    p = h / h.sum()

    def ent(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (ent(p.sum(0)) + ent(p.sum(1))) / ent(p)


def _shift(a: np.ndarray, vox: float) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.shift(a, (vox, vox, 0), order=1)


def _corr(a, b, mask) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def copy_subjects(dst: Path, plan: dict[str, tuple[str, tuple[str, ...]]]) -> Path:
    """A BIDS copy: ``{new_label: (source_label, suffixes_to_drop)}``."""
    src = REAL / 'bids'
    if (dst / 'participants.tsv').is_file():  # --keep folder of an earlier run: reuse (cached)
        return dst
    dst.mkdir(parents=True)
    for name in ('dataset_description.json', 'README', 'participants.json'):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    rows = (src / 'participants.tsv').read_text().splitlines()
    out_rows = [rows[0]]
    for new, (old, drop) in plan.items():
        for path in (src / f'sub-{old}').rglob('*'):
            if path.is_dir() or any(path.name.split('.')[0].endswith(f'_{s}') for s in drop):
                continue
            target = dst / str(path.relative_to(src)).replace(f'sub-{old}', f'sub-{new}')
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        row = next(r for r in rows[1:] if r.split('\t')[0] == f'sub-{old}')
        out_rows.append(row.replace(f'sub-{old}', f'sub-{new}', 1))
    (dst / 'participants.tsv').write_text('\n'.join(out_rows) + '\n')
    return dst


MODEL = ['default']  # --model of the participant runs (bench/real.py --model)


def run_participant(bids: Path, out: Path, work: Path, *extra: str) -> dict:
    from bids_synth.cli.run import main

    t0 = time.perf_counter()
    # the real table's diagnosis (MS, healthy) has no level of the phantom-trained models
    # (CN, MCI, AD): condition on age and sex only, as the error message tells a user to
    code = main([str(bids), str(out), 'participant', '--model', MODEL[0], '-w', str(work),
                 '--nprocs', '2', '--omp-nthreads', '2', '--no-reports',
                 '--clinical-columns', 'age', 'sex', *extra])
    return {'exit_code': code, 'seconds': round(time.perf_counter() - t0, 1)}


def conform_nodes(work: Path) -> list[dict]:
    """Registration quality, brain extraction record and run time of every conform node."""
    from nipype.utils.filemanip import loadpkl

    from bids_synth.preprocessing.conform import load_conformed
    from bids_synth.preprocessing.templates import load_template

    rows = []
    for node in sorted(work.rglob('conform_*')):
        brain = next(node.glob('*_brain.json'), None)
        conformed = next(node.glob('*_conformed.nii.gz'), None)
        if brain is None or conformed is None:
            continue
        rec = json.loads(brain.read_text())
        side = next(iter(sorted(node.glob('*.mat.json')) + sorted(node.glob('*.h5.json'))))
        tx = json.loads(side.read_text())
        tpl = load_template(tx['res'])
        fixed = np.asarray(nib.load(tx['fixed']).dataobj, dtype=np.float32)
        moved = load_conformed(conformed)[0]
        mask = tpl.mask
        row = {
            'session': str(node.parent.relative_to(work)).split('/')[1:],
            'modality': rec['modality'], 'input': Path(rec['in_file']).name,
            'template': f'{tx["template"]} res-{tx["res"]}', 'transform': rec['transform_source'],
            'registration_seconds': round(tx.get('seconds', 0.0), 1),
            'nmi': round(nmi(moved, fixed, mask), 4), 'corr': round(_corr(moved, fixed, mask), 4),
            # the same image misplaced by 8 mm (x and y), for scale
            'nmi_misaligned_8mm': round(nmi(_shift(moved, 8.0 / tx['res']), fixed, mask), 4),
            'SkullStripped_input': rec.get('SkullStripped'),
            'brain_extraction': rec.get('brain_extraction'), 'n4': rec.get('n4'),
            'mask_ml': rec.get('mask_ml'), 'detection': rec.get('detection'),
            'brain_seconds': rec.get('seconds'),
        }
        result = next(node.glob('result_*.pklz'), None)
        if result is not None:
            row['node_seconds'] = round(float(loadpkl(result).runtime.duration), 1)
        rows.append(row)
    return rows


def _unit(img: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return img / max(float(np.percentile(img[brain], 99)), 1e-6)


def compare(synth: Path, real: np.ndarray, nearest: np.ndarray, brain: np.ndarray) -> dict:
    from bids_synth.metrics import psnr

    s = _unit(np.asarray(nib.load(synth).dataobj, dtype=np.float32), brain)
    r, n = _unit(real, brain), _unit(nearest, brain)
    return {
        'pearson_r_synth': round(_corr(s, r, brain), 3),
        'pearson_r_nearest_copy': round(_corr(n, r, brain), 3),
        'psnr_synth_db': round(psnr(s, r, brain), 2),
        'psnr_nearest_copy_db': round(psnr(n, r, brain), 2),
    }


def lesion_contrast(img: np.ndarray, lesions: np.ndarray, wm: np.ndarray) -> float:
    from scipy import ndimage as ndi

    ring = ndi.binary_dilation(lesions, iterations=3) & ~lesions & wm
    nawm = float(img[ring].mean())
    return (float(img[lesions].mean()) - nawm) / nawm


def _load(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def align_to(moving: Path, fixed: Path, work: Path) -> np.ndarray:
    """antspyx rigid registration (MI) of ``moving`` onto ``fixed``'s grid."""
    import ants

    f, m = ants.image_read(str(fixed)), ants.image_read(str(moving))
    reg = ants.registration(f, m, type_of_transform='Rigid', outprefix=str(work / 'align_'))
    return reg['warpedmovout'].numpy().astype(np.float32)


def removed_comparisons(tmp: Path, refine: str | None = None) -> dict:
    """``refine``: the ``--native-refine`` method (None: the default)."""
    plan = {'ms07not2': ('ms07', ('T2w',)), 'ms07noflair': ('ms07', ('FLAIR',)),
            'ixi002not2': ('ixi002', ('T2w',))}
    tag = f'_{refine}' if refine else ''
    bids = copy_subjects(tmp / f'removed_bids{tag}', plan)
    run = run_participant(bids, tmp / f'removed_out{tag}', tmp / f'removed_work{tag}',
                          '--modalities', 'T2w', 'FLAIR', '--skip-bids-validation',
                          *(['--native-refine', refine] if refine else []))
    out = tmp / f'removed_out{tag}'
    ms = REAL / 'bids' / 'sub-ms07' / 'anat'
    t1, t2, flair = (_load(ms / f'sub-ms07_{s}.nii.gz') for s in ('T1w', 'T2w', 'FLAIR'))
    brain = (t2 > 0) & (flair > 0) & (t1 > 0)
    res = {'run': run}
    res['ms07_T2w'] = compare(out / 'sub-ms07not2/anat/sub-ms07not2_desc-synth_T2w.nii.gz',
                              t2, flair, brain)
    res['ms07_T2w']['nearest'] = 'FLAIR'
    synth_flair = out / 'sub-ms07noflair/anat/sub-ms07noflair_desc-synth_FLAIR.nii.gz'
    res['ms07_FLAIR'] = compare(synth_flair, flair, t2, brain)
    res['ms07_FLAIR']['nearest'] = 'T2w'
    lesions = _load(REAL / 'truth' / 'sub-ms07_lesions.nii.gz') > 0.5
    wm = brain & (t1 > np.median(t1[brain]))
    c_real = lesion_contrast(flair, lesions, wm)
    c_synth = lesion_contrast(_load(synth_flair), lesions, wm)
    res['ms07_FLAIR'].update(lesion_voxels=int(lesions.sum()),
                             lesion_contrast_real=round(c_real, 3),
                             lesion_contrast_synth=round(c_synth, 3),
                             lesion_contrast_kept=round(c_synth / c_real, 3))
    ixi = REAL / 'bids' / 'sub-ixi002' / 'anat'
    t2_on_t1 = align_to(ixi / 'sub-ixi002_T2w.nii.gz', ixi / 'sub-ixi002_T1w.nii.gz',
                        tmp / f'removed_work{tag}')
    ixi_t1 = _load(ixi / 'sub-ixi002_T1w.nii.gz')
    ixi_brain = (ixi_t1 > 0) & (t2_on_t1 > 0.01 * t2_on_t1.max())
    res['ixi002_T2w'] = compare(out / 'sub-ixi002not2/anat/sub-ixi002not2_desc-synth_T2w.nii.gz',
                                t2_on_t1, ixi_t1, ixi_brain)
    res['ixi002_T2w']['nearest'] = 'T1w'
    for key in ('ms07_T2w', 'ms07_FLAIR', 'ixi002_T2w'):
        r = res[key]
        r['goal_r_0.8_met'] = r['pearson_r_synth'] >= 0.8
        r['goal_psnr_above_copy_met'] = r['psnr_synth_db'] > r['psnr_nearest_copy_db']
    res['ms07_FLAIR']['goal_half_lesion_contrast_met'] = (
        res['ms07_FLAIR']['lesion_contrast_kept'] >= 0.5)
    return res


def bold_reference_extraction(tmp: Path, mosaic: Path | None) -> dict:
    from bids_synth.preprocessing.brain import deepbet_mask, detect_skull_stripped

    bold = nib.load(REAL / 'bids/sub-forrest02/func/sub-forrest02_task-oneback_bold.nii.gz')
    mean = nib.Nifti1Image(np.asarray(bold.dataobj, dtype=np.float32).mean(-1), bold.affine)
    t0 = time.perf_counter()
    mask = deepbet_mask(mean, threads=2)
    out = {'seconds': round(time.perf_counter() - t0, 1),
           'mask_ml': round(float(mask.sum()) * float(np.prod(bold.header.get_zooms()[:3]))
                            / 1000, 1),
           'detected_skull_stripped': detect_skull_stripped(mean)[0]}
    if mosaic is not None:
        from nilearn import plotting

        img = nib.Nifti1Image(mask.astype(np.uint8), mean.affine)
        disp = plotting.plot_roi(img, bg_img=mean, display_mode='z', cut_coords=6,
                                 title='sub-forrest02 bold reference: deepbet mask')
        disp.savefig(str(mosaic))
        disp.close()
        out['mosaic'] = _rel(mosaic)
    return out


def t1w_mask_mosaic(work: Path, mosaic: Path) -> str | None:
    """Mosaic of the deepbet mask of sub-forrest02's raw T1w (the conform node's brain)."""
    from nilearn import plotting

    node = next((p for p in work.rglob('conform_T1w') if 'forrest02' in str(p)), None)
    if node is None or not (node / 'native_reference.nii.gz').is_file():
        return None
    brain = nib.load(node / 'native_reference.nii.gz')
    mask = nib.Nifti1Image((np.asarray(brain.dataobj) > 0).astype(np.uint8), brain.affine)
    raw = REAL / 'bids/sub-forrest02/anat/sub-forrest02_T1w.nii.gz'
    disp = plotting.plot_roi(mask, bg_img=str(raw), display_mode='z', cut_coords=6,
                             title='sub-forrest02 raw T1w: deepbet mask')
    disp.savefig(str(mosaic))
    disp.close()
    return _rel(mosaic)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=ROOT / 'bench/results/real.json')
    parser.add_argument('--machine-note', default='',
                        help="what else ran on the machine, for the JSON (e.g. 'contended')")
    parser.add_argument('--keep', type=Path, help='keep the temporary folder here')
    parser.add_argument('--model', default='default',
                        help='model of the participant runs (default: the embedded default)')
    parser.add_argument('--removed-only', action='store_true',
                        help='only the removed-modality comparisons (written to --out)')
    args = parser.parse_args(argv)
    MODEL[0] = args.model
    if not (REAL / 'bids').is_dir():
        print(f'{REAL}: not present; nothing to measure')
        return 0
    os.environ.setdefault('NIPYPE_NO_ET', '1')
    tmp = Path(args.keep or tempfile.mkdtemp(prefix='bids_synth_real_'))
    t0 = time.perf_counter()
    machine = f'{platform.machine()}, {os.cpu_count()} cores, CPU only'
    if args.machine_note:
        machine += f'; {args.machine_note}'
    result = {'machine': machine, 'model': args.model}
    if args.removed_only:
        result['removed'] = removed_comparisons(tmp)
        result['removed_guided'] = removed_comparisons(tmp, 'guided')
        run = result['removed']['run']
    else:
        bids = copy_subjects(tmp / 'bids', {s: (s, ()) for s in ('ms07', 'ixi002', 'forrest02')})
        run = run_participant(bids, tmp / 'out', tmp / 'work')
        result.update({
            'all_subjects': {'run': run, 'conform': conform_nodes(tmp / 'work'),
                             'forrest02_T1w_mask_mosaic': t1w_mask_mosaic(
                                 tmp / 'work', args.out.parent / 'real_forrest02_T1w_mask.png')},
            'removed': removed_comparisons(tmp),
            'removed_guided': removed_comparisons(tmp, 'guided'),
            'bold_reference_brain_extraction': bold_reference_extraction(
                tmp, args.out.parent / 'real_forrest02_bold_mask.png'),
        })
    result['total_seconds'] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps({k: result[k] for k in ('removed', 'removed_guided')}, indent=2))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if run['exit_code'] == 0 else 1


if __name__ == '__main__':
    raise SystemExit(main())
