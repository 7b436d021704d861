"""The derivatives sink: write one synthesized modality (both spaces) with its sidecars."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

__all__ = ['SynthDerivatives', 'write_synth_outputs', 'registration_qc']


class _SynthDerivativesInputSpec(BaseInterfaceInputSpec):
    template_file = File(exists=True, mandatory=True, desc='synthesized, template space')
    native_file = File(exists=True, mandatory=True, desc='synthesized, native space')
    template_std = File(exists=True, desc='std over samples, template space')
    native_std = File(exists=True, desc='std over samples, native space')
    template_samples = traits.List(File(exists=True), desc='single samples, template space')
    provenance = File(exists=True, mandatory=True)
    subject = traits.Str(mandatory=True)
    session = traits.Str('', usevalue=True)
    target = traits.Str(mandatory=True)
    output_dir = traits.Str(mandatory=True)
    bids_dir = traits.Str(mandatory=True)
    res = traits.Int(2, usevalue=True)
    source_files = traits.List(traits.Str, desc='raw inputs given to the model')
    source_metadata = traits.Dict(desc='modality -> sidecar metadata of the inputs')
    reference_file = traits.Str(mandatory=True, desc='raw native reference image')
    transforms = traits.List(traits.Str, desc='native->template transforms of the inputs '
                             '(their JSON sidecars hold the registration QC)')
    brain_reports = traits.List(File(exists=True), desc='JSON records of the conform nodes '
                                '(skull stripping, N4, precomputed fMRIPrep inputs)')
    refinement = File(exists=True, desc='JSON record of the native refinement (RefineNative); '
                      'absent: none was run')
    dwi_scheme = traits.Dict(desc='dwi: the gradient table the series is rendered for '
                             '(bids.gradients.GradientScheme.to_dict)')


class _SynthDerivativesOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str)
    out_record = File(exists=True, desc='JSON record for the report')


class SynthDerivatives(SimpleInterface):
    """Write the BIDS-Derivatives files of one synthesized modality (atomic writes)."""

    input_spec = _SynthDerivativesInputSpec
    output_spec = _SynthDerivativesOutputSpec

    def _run_interface(self, runtime):
        with open(self.inputs.provenance) as f:
            prov = json.load(f)
        qc = registration_qc(self.inputs.transforms if isdefined(self.inputs.transforms)
                             else [])
        if qc:
            prov['registration_qc'] = qc
        record = write_synth_outputs(
            output_dir=self.inputs.output_dir,
            bids_dir=self.inputs.bids_dir,
            subject=self.inputs.subject,
            session=self.inputs.session or None,
            target=self.inputs.target,
            res=self.inputs.res,
            images={
                'template': self.inputs.template_file,
                'native': self.inputs.native_file,
                'template_std': _opt(self.inputs.template_std),
                'native_std': _opt(self.inputs.native_std),
                'template_samples': list(self.inputs.template_samples or []),
            },
            provenance=prov,
            source_files=list(self.inputs.source_files),
            reference_file=self.inputs.reference_file,
            preprocessing=_read_reports(self.inputs.brain_reports),
            native_refinement=_read_json(self.inputs.refinement),
            dwi_scheme=dict(self.inputs.dwi_scheme) if isdefined(self.inputs.dwi_scheme)
            else None,
        )
        record['brain_masks'] = _brain_masks(self.inputs.brain_reports)
        out_record = os.path.join(runtime.cwd, 'record.json')
        with open(out_record, 'w') as f:
            json.dump(record, f, indent=2)
        self._results['out_files'] = sorted(record['files'].values())
        self._results['out_record'] = out_record
        return runtime


def registration_qc(transforms) -> dict:
    """Modality -> registration QC (:class:`~bids_synth.preprocessing.qc.RegistrationQC`)
    from the transforms' JSON sidecars; an input kept with ``--force`` has ``forced: true``."""
    out = {}
    for path in transforms:
        try:
            info = json.loads(Path(f'{path}.json').read_text())
        except (OSError, ValueError):
            continue
        if info.get('qc'):
            out[info.get('modality', Path(path).name)] = info['qc']
    return out


def _read_json(path) -> dict | None:
    if not isdefined(path) or not path:
        return None
    with open(path) as f:
        return json.load(f)


def _brain_masks(paths) -> dict:
    """modality -> {input, brain, mask_ml} for the inputs that were brain-extracted (report)."""
    out = {}
    for path in paths if isdefined(paths) else []:
        with open(path) as f:
            rec = json.load(f)
        if rec.get('brain_extraction', 'none') != 'none' and rec.get('brain_file'):
            out[rec['modality']] = {'input': rec.get('in_file'), 'brain': rec['brain_file'],
                                    'mask_ml': rec.get('mask_ml'),
                                    'method': rec['brain_extraction']}
    return out


def _read_reports(paths) -> dict:
    """modality -> conform record (what was done to each input before registration).

    Timings and the input's absolute path stay in the node's record (logs, benchmarks): the
    sidecars must not change between identical runs (``Sources`` names the inputs).
    """
    out = {}
    for path in paths if isdefined(paths) else []:
        with open(path) as f:
            rec = json.load(f)
        rec.pop('seconds', None)
        rec.pop('in_file', None)
        rec.pop('brain_file', None)
        out[rec.pop('modality')] = rec
    return out


def _opt(value):
    return value if isdefined(value) and value else None


def _estimate(method, n_samples) -> str:
    """What a desc-synth image is, for its Description."""
    if method == 'diffusion':
        spread = (f', the spread of {n_samples} residual samples in desc-synthstd'
                  if n_samples and n_samples > 1 else '')
        return f'the mean network\'s estimate of the posterior mean{spread}'
    return 'a deterministic estimate'

def write_synth_outputs(
    *, output_dir, bids_dir, subject, session, target, res, images, provenance, source_files,
    reference_file, preprocessing=None, native_refinement=None, dwi_scheme=None,
) -> dict:
    """Write every file of one synthesized modality; return the record (paths relative).

    The files are :func:`bids_synth.preprocessing.outputs.output_images` of each image (bold:
    boldmaps only, no time series; dwi: a series rendered for ``dwi_scheme``, a
    :meth:`~bids_synth.bids.gradients.GradientScheme.to_dict`, default the standard table,
    and the tensor maps). In ``record['files']`` the main image of each kind is ``<kind>``, the
    others ``<kind>_<name>`` (``template_fa``, ``native_bval``...).

    ``native_refinement`` (the :class:`~bids_synth.interfaces.refine.RefineNative` record) goes
    into the native image's sidecar only (``bids_synth.native_refinement``): the template-space
    image and the std map are not refined.
    """
    import nibabel as nib
    from bids.layout import parse_file_entities

    from ..bids.derivatives import (
        bids_uri,
        derivative_path,
        write_json_atomic,
        write_nifti_atomic,
        write_text_atomic,
    )
    from ..bids.gradients import GradientScheme, standard_scheme
    from ..bids.modalities import MODALITIES, from_bids_entities
    from ..preprocessing.outputs import output_images

    mod = MODALITIES[target]
    scheme = None
    if mod.family == 'dmri':
        scheme = GradientScheme.from_dict(dwi_scheme) if dwi_scheme else standard_scheme()
    out = Path(output_dir)
    used = set(provenance.get('inputs_used', []))
    sources = []
    for path in source_files:
        ents = parse_file_entities(path)
        ents['datatype'] = Path(path).parent.name
        if from_bids_entities(ents) in used:
            sources.append(bids_uri(bids_dir, path))
    n_samples = provenance.get('num_samples', 1)
    inputs_txt = ', '.join(sorted(used)) or 'no image (clinical values and the cohort prior only)'
    base = {
        'Description': (
            f'{target} synthesized by bids_synth ({provenance.get("method")}) from '
            f'{inputs_txt}; {_estimate(provenance.get("method"), n_samples)}. Not acquired: '
            'an imputation.'
            # multi-channel modalities: each file's own text says what it holds, and in what
            + (f' Intensities are in the model representation: {mod.description}.'
               if mod.n_channels == 1 else '')
        ),
        'Sources': sources,
        'SkullStripped': True,
    }
    forced = sorted(m for m, q in provenance.get('registration_qc', {}).items()
                    if q.get('forced'))
    if forced:
        base['Description'] += (f' WARNING: {", ".join(forced)} failed the registration QC and '
                                'was kept with --force (see bids_synth.registration_qc).')
    record = {'subject': subject, 'session': session, 'target': target, 'files': {},
              'source_files': [p for p in source_files], 'provenance': provenance}
    if native_refinement:
        record['native_refinement'] = native_refinement
    jobs = [(k, images.get(k), 'synthstd' if k.endswith('std') else 'synth')
            for k in ('template', 'native', 'template_std', 'native_std')]
    if mod.family != 'dmri':  # a dwi sample would need a gradient table of its own
        jobs += [(f'template_sample{i}', p, f'synthsample{i}')
                 for i, p in enumerate(images.get('template_samples') or [], start=1)]
    for kind, src, desc in jobs:
        if not src:
            continue
        space = 'MNI152NLin2009aSym' if kind.startswith('template') else None
        pieces = output_images(target, nib.load(src), desc, scheme)
        side = dict(base)
        if desc == 'synthstd':
            side['Description'] = (f'Voxelwise standard deviation over the {n_samples} samples '
                                   f'of the synthesized {target} (uncertainty). Diffusion '
                                   'models calibrate it on their validation subjects (mean '
                                   '+/- 1.645 std covering 90% of their voxels) and widen it '
                                   'for inputs unlike the training data (bids_synth.'
                                   'std_inflation, bids_synth.input_typicality).')
        elif desc != 'synth':
            side['Description'] = (f'One sample ({kind[len("template_sample"):]} of '
                                   f'{n_samples}) of the synthesized {target}: a single draw '
                                   'with realistic texture, for augmentation; the desc-synth '
                                   'image (the mean network) is the better estimate.')
        if space:
            side['SpatialReference'] = {'URI': f'https://templateflow.org/{space}'}
            side['Resolution'] = {str(res): f'{res} mm isotropic model grid of bids_synth'}
        else:
            side['SpatialReference'] = {'URI': bids_uri(bids_dir, reference_file)}
        if mod.family == 'fmri':
            side['TaskName'] = 'rest'
        side['bids_synth'] = dict(provenance, space=space or 'native', output=kind)
        if preprocessing:  # per input: SkullStripped as found, N4, brain extraction, xfm source
            side['bids_synth']['preprocessing'] = preprocessing
        if kind == 'native' and native_refinement:
            side['bids_synth']['native_refinement'] = native_refinement
            if native_refinement.get('applied'):
                guides = ' and '.join([native_refinement.get('guide_modality', '?')]
                                      + native_refinement.get('extra_guide_modalities', []))
                how = ('guided filter' if native_refinement.get('method') == 'guided' else
                       'the acquired ' + native_refinement.get('transfer_modality', guides)
                       + ' mapped into this contrast through its tissue means')
                side['Description'] += (
                    ' On this native grid the image was refined with the detail of the acquired '
                    f'{guides} ({how}; see bids_synth.native_refinement); intensities '
                    'stay in model units.')
        for piece in pieces:
            ppath = derivative_path(out, subject=subject, session=session, modality=target,
                                    space=space, res=res if space else None, desc=desc,
                                    entities=piece.entities, suffix=piece.suffix)
            pside = dict(side)
            if piece.description and desc == 'synth':
                what = piece.description.rstrip('.')
                pside['Description'] = f'{what[0].upper()}{what[1:]}. {side["Description"]}'
            elif piece.description:
                pside['Description'] += f' This file: {piece.description.rstrip(".")}.'
            pside.update(piece.sidecar)
            if piece.suffix == 'dwi':  # where the gradient table came from
                pside['bids_synth'] = dict(pside['bids_synth'],
                                           gradient_scheme=scheme.describe())
            write_nifti_atomic(piece.image, ppath)
            write_json_atomic(pside, ppath.with_name(ppath.name.replace('.nii.gz', '.json')))
            rkey = kind if piece.key == 'main' else f'{kind}_{piece.key}'
            record['files'][rkey] = str(ppath.relative_to(out))
            for ext, text in piece.texts.items():
                tpath = ppath.with_name(ppath.name.replace('.nii.gz', ext))
                write_text_atomic(text, tpath)
                record['files'][f'{kind}_{ext[1:]}'] = str(tpath.relative_to(out))
    return record
