"""``bids-synth-generate``: whole synthetic subjects (clinical row + images) as a raw BIDS dataset.

    bids-synth-generate [MODEL_DIR] OUT --n-subjects N [--seed S] [--where "diagnosis=AD" ...]

For each subject, one draw of the model's tabular generator (a Gaussian copula fitted by
``group`` to the training table *and* the principal-component scores of the participants'
sMRI/PET images, :mod:`bids_synth.models.image_components`; ``--where`` conditions by
rejection) gives the clinical row and the images' component scores, which are decoded into
images that agree with the row as the training cohort's did (a model fitted before the joint
generator existed synthesizes each image with its image model from the row alone). Each image
is resampled from the template grid onto an acquisition-like native grid of the phantom (its field
of view, voxel size and orientation, a small random head pose). ``MODEL_DIR`` ``default`` (or
none) is the embedded default model.

What is written: ``participants.tsv``/``participants.json`` with the model's clinical schema
(text columns ``n/a``), ``anat/`` T1w/T2w/FLAIR and ``pet/`` FDG/AV45 (static, SUVR), each
sidecar saying the image is synthetic and how it was made. bold and dwi are not written: the
model represents them as derived maps, not as time series or gradient sets, and a raw dataset
must not pass maps off as acquisitions. The dataset is built in a temporary folder beside
``OUT`` and renamed at the end. Same model, seed and options: same cohort.

Errors are one line on stderr with the BIDS-Apps exit code (64 usage, 65 bad model, 66 model not
found, 73 cannot create the output); ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import (
    EX_SOFTWARE, BIDSSynthError, CannotCreateOutputError, ModelError, UsageError,
)

__all__ = ['main', 'build_parser', 'generate']

LOGGER = logging.getLogger('bids_synth.generate')

#: modalities written to the raw dataset (bold/dwi are maps in the model: see the docstring)
WRITABLE = ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45')
_FAMILY = {'T1w': 'anat', 'T2w': 'anat', 'FLAIR': 'anat', 'FDG': 'pet', 'AV45': 'pet'}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 64 (EX_USAGE) instead of argparse's 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog='bids-synth-generate',
                description='Generate whole synthetic subjects (a clinical row and every '
                            'modality) as a raw BIDS dataset.')
    p.add_argument('paths', nargs='+', metavar='[MODEL_DIR] OUT',
                   help='model folder ("default" or left out: the embedded default model), '
                        'then the dataset to create')
    p.add_argument('-n', '--n-subjects', type=int, default=10, help='subjects to generate')
    p.add_argument('--seed', type=int, default=0, help='same seed, same cohort')
    p.add_argument('--where', nargs='+', default=[], metavar='COND',
                   help='conditions on the clinical row: COL=LEVEL[,LEVEL], COL=VALUE or '
                        'COL=LOW:HIGH (e.g. "diagnosis=AD" "age=70:80")')
    p.add_argument('--modalities', nargs='+', metavar='MOD',
                   help=f'among {" ".join(WRITABLE)} (default: those the model knows)')
    p.add_argument('--resolution', choices=['low', 'default'], default='low',
                   help='native grids of the phantom preset: low (2 mm anat, 3 mm PET) or '
                        'default (1 mm anat, 2 mm PET)')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='cpu')
    p.add_argument('-v', '--verbose', action='count', default=0)
    return p


def _resolve(paths: list[str]) -> tuple[Path, Path]:
    from ..workflows.base import default_model_dir

    if len(paths) == 1:
        return default_model_dir(), Path(paths[0])
    if len(paths) != 2:
        raise UsageError(f'expected [MODEL_DIR] OUT, got {len(paths)} paths')
    model = default_model_dir() if paths[0] == 'default' else Path(paths[0])
    return model, Path(paths[1])


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CannotCreateOutputError(f'{out}: exists and is not an empty folder; generate '
                                      'writes a new dataset')
    parent = out.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CannotCreateOutputError(f'{out}: cannot create it ({parent} is not a writable '
                                      'folder)')


def _native_grid(modality: str, resolution: str, centre, rng):
    """Acquisition-like grid (phantom preset) and the pose of the head in it."""
    from ..phantom.anatomy import make_grid, make_pose
    from ..phantom.session import AXCODES, FOV, RESOLUTIONS

    fam = _FAMILY[modality]
    preset = RESOLUTIONS[resolution]
    zooms = preset['anat'][modality][0] if fam == 'anat' else (preset['pet'],) * 3
    grid = make_grid(zooms, FOV[fam], AXCODES[fam][0], centre)
    pose = make_pose(rng, centre, max_deg=6.0, max_mm=5.0)
    return grid, pose


def _to_native(vol: np.ndarray, tpl, grid, pose) -> np.ndarray:
    """Trilinear resampling of a template-grid volume onto a native grid under ``pose``."""
    from scipy import ndimage as ndi

    ijk = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    scanner = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]
    subj = np.linalg.inv(pose.scanner_from_subject())
    mni = subj[:3, :3] @ scanner + subj[:3, 3:4]
    inv = np.linalg.inv(tpl.affine)
    vox = inv[:3, :3] @ mni + inv[:3, 3:4]
    out = ndi.map_coordinates(vol.astype(np.float32), vox, order=1, mode='constant', cval=0.0)
    return out.reshape(grid.shape).astype(np.float32)


def _sidecar(modality: str, prov: dict, fwhm_mm: float, joint: bool = False) -> dict:
    from ..phantom.mri import anat_sidecar
    from ..phantom.pet import pet_sidecar

    if _FAMILY[modality] == 'anat':
        side = anat_sidecar(modality)
        side['ManufacturersModelName'] = 'bids_synth synthetic subject (not acquired)'
    else:
        side = pet_sidecar(modality, n_frames=1, dose_factor=1.0, fwhm_mm=fwhm_mm,
                           time_zero='10:00:00')
        side['ManufacturersModelName'] = 'bids_synth synthetic subject (not acquired)'
        side['Units'] = 'unitless'
        side['FrameTimesStart'] = side['FrameTimesStart'][:1]
        side['FrameDuration'] = [sum(pet_sidecar(modality, n_frames=1, dose_factor=1.0,
                                                 fwhm_mm=fwhm_mm,
                                                 time_zero='10:00:00')['FrameDuration'])]
    how = ('decoded from image component scores drawn jointly with the clinical row of this '
           "participant (the model's table+image copula)" if joint else
           'synthesized by bids_synth from the clinical row of this participant alone (no '
           'image input)')
    side['bids_synth'] = dict(prov, image=(
        f'{modality} {how}, on the model template grid, resampled to this grid; brain '
        'only (zero outside the template brain mask)'
        + ('; values are SUVR (reference region of the model representation), not Bq/mL'
           if _FAMILY[modality] == 'pet' else '; intensities are the model\'s normalized '
                                               'representation, not scanner units')))
    return side


def _participants_json(schema: dict) -> dict:
    out = {'participant_id': {'Description': 'Synthetic participant (bids-synth-generate)'}}
    for col, spec in schema.items():
        entry = {'Description': spec.get('description') or col}
        if spec.get('type') == 'categorical':
            entry['Levels'] = {str(v): str(v) for v in spec.get('levels', [])}
        if spec.get('units'):
            entry['Units'] = spec['units']
        out[col] = entry
    return out


def _cell(v) -> str:
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        return str(int(v)) if v == int(v) else f'{v:g}'
    return str(v)


def generate(model_dir, out, *, n_subjects: int, seed: int = 0, where=(), modalities=None,
             resolution: str = 'low', device: str = 'cpu', progress: bool = True) -> Path:
    """Write a synthetic raw BIDS dataset to ``out``; return it (see the module docstring)."""
    from tqdm.auto import tqdm

    from .. import __version__
    from ..interfaces.provenance import derive_seed, software_versions
    from ..models.checkpoint import read_card
    from ..models.copula import parse_where
    from ..models.loading import load_imputer
    from ..models.tabular import load_tabular
    from ..preprocessing.templates import load_template

    model_dir, out = Path(model_dir), Path(out)
    if n_subjects < 1:
        raise UsageError(f'--n-subjects must be at least 1 (got {n_subjects})')
    card = read_card(model_dir)  # 66 when missing, 65 when not a model
    tab = load_tabular(model_dir)
    if tab is None:
        raise ModelError(f'{model_dir}: the model has no tabular generator (fitted before '
                         'bids_synth had one); refit it with the group level')
    schema = tab.info.get('schema') or card.get('clinical_schema', {})
    conditions = parse_where(list(where), schema)
    known = [m for m in WRITABLE if m in card['modalities']]
    if modalities:
        bad = [m for m in modalities if m not in WRITABLE]
        if bad:
            raise UsageError(f'--modalities: {bad[0]} cannot be generated as raw data (the '
                             f'model holds bold/dwi as derived maps); choose among '
                             f'{", ".join(known)}')
        missing = [m for m in modalities if m not in known]
        if missing:
            raise UsageError(f'--modalities: the model does not know {missing[0]} (it knows '
                             f'{", ".join(card["modalities"])})')
        known = list(dict.fromkeys(modalities))
    if not known:
        raise ModelError(f'{model_dir}: the model synthesizes none of {", ".join(WRITABLE)}')
    _check_out(out)

    rng = np.random.default_rng(seed)
    rows = tab.generator.sample(n_subjects, rng, conditions)
    imputer = load_imputer(model_dir)
    tpl = load_template(int(card['template']['res']))
    brain = np.argwhere(tpl.mask)
    centre = (tpl.affine[:3, :3] @ brain.mean(0) + tpl.affine[:3, 3])
    columns = list(schema)
    base = {'synthetic': True, 'generator': 'bids-synth-generate', 'method': card['method'],
            'model_name': card['name'], 'model_sha256': card['sha256'],
            'model_origin': card.get('origin', 'user'), 'seed': seed,
            'where': list(where), 'software': software_versions()}

    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.resolve().parent))
    try:
        import nibabel as nib

        labels = [f'synth{i + 1:03d}' for i in range(n_subjects)]
        for label, row in tqdm(list(zip(labels, rows)), desc='bids-synth-generate',
                               unit='subject', disable=not progress):
            sub_seed = derive_seed(seed, label)
            images, how = tab.subject_images(row, imputer, tuple(known), seed=sub_seed,
                                             device=device)
            prng = np.random.default_rng(sub_seed)
            for mod in known:
                grid, pose = _native_grid(mod, resolution, centre, prng)
                data = _to_native(images[mod][0], tpl, grid, pose)
                folder = tmp / f'sub-{label}' / _FAMILY[mod]
                folder.mkdir(parents=True, exist_ok=True)
                name = (f'sub-{label}_trc-{mod}_pet' if _FAMILY[mod] == 'pet'
                        else f'sub-{label}_{mod}')
                img = nib.Nifti1Image(data, grid.affine)
                img.header.set_xyzt_units('mm', 'sec')
                img.header.set_qform(grid.affine, code=1)
                img.header.set_sform(grid.affine, code=1)
                img.to_filename(folder / f'{name}.nii.gz')
                prov = dict(base, clinical_used={k: row.get(k) for k in columns},
                            subject_seed=sub_seed, image_source=how[mod])
                side = _sidecar(mod, prov, fwhm_mm=float(card['template']['res']),
                                joint=how[mod] == 'joint')
                (folder / f'{name}.json').write_text(json.dumps(side, indent=2,
                                                                sort_keys=True) + '\n')
        lines = ['\t'.join(['participant_id'] + columns)]
        lines += ['\t'.join([f'sub-{lab}'] + [_cell(row.get(c)) for c in columns])
                  for lab, row in zip(labels, rows)]
        (tmp / 'participants.tsv').write_text('\n'.join(lines) + '\n')
        (tmp / 'participants.json').write_text(
            json.dumps(_participants_json(schema), indent=2) + '\n')
        desc = {
            'Name': f'bids_synth synthetic cohort ({n_subjects} subjects, seed {seed})',
            'BIDSVersion': '1.10.0', 'DatasetType': 'raw', 'License': 'CC0',
            'Authors': ['bids-synth-generate'],
            'GeneratedBy': [{'Name': 'bids_synth', 'Version': __version__,
                             'Description': 'bids-synth-generate: clinical rows and image '
                                            "component scores from the model's joint Gaussian "
                                            'copula, decoded into images'}],
        }
        (tmp / 'dataset_description.json').write_text(json.dumps(desc, indent=2) + '\n')
        (tmp / 'README').write_text(
            f'# Synthetic cohort\n\nEvery subject here is synthetic: made by bids-synth-generate '
            f'(bids_synth {__version__}) with the model {card["name"]} (sha256 '
            f'{card["sha256"][:12]}...), seed {seed}'
            + (f', conditions {" ".join(where)}' if where else '') + '.\nClinical rows were '
            'drawn, together with the principal-component scores of the images, from a Gaussian '
            'copula fitted to the training table and images; each image is the training '
            "cohort's mean plus a combination of its participants' deviations from it (see each "
            "sidecar's bids_synth.image). No row or image is a real person's.\n")
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command; return (and, as a console script, exit with) the exit code."""
    os.environ.setdefault('NIPYPE_NO_ET', '1')
    verbose = 0
    try:
        args = build_parser().parse_args(argv)
        verbose = args.verbose
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format='%(asctime)s [bids_synth] %(message)s', datefmt='%H:%M:%S')
        model, out = _resolve(args.paths)
        generate(model, out, n_subjects=args.n_subjects, seed=args.seed, where=args.where,
                 modalities=args.modalities, resolution=args.resolution, device=args.device)
        print(f'{args.n_subjects} synthetic subject(s) written to {out}', file=sys.stderr)
        code = 0
    except BIDSSynthError as exc:
        if verbose:
            LOGGER.exception('traceback (-v)')
        print(f'bids-synth-generate: error: {exc}', file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print('bids-synth-generate: error: interrupted', file=sys.stderr)
        code = 130
    except SystemExit as exc:  # --help
        code = exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback with -v
        if verbose:
            LOGGER.exception('traceback (-v)')
        print(f'bids-synth-generate: error: unexpected {type(exc).__name__}: {exc} (rerun '
              'with -v for the traceback)', file=sys.stderr)
        code = EX_SOFTWARE
    if argv is None:
        sys.exit(code)
    return code


if __name__ == '__main__':
    main()
