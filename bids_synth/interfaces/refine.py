"""Nipype interface around ``preprocessing.refine``: sharpen a native-grid sMRI output."""

from __future__ import annotations

import json
import logging
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

__all__ = ['RefineNative']

LOGGER = logging.getLogger('bids_synth.interfaces.refine')


class _RefineNativeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='synthesized sMRI image on the native grid')
    guide = File(exists=True, mandatory=True,
                 desc='the native reference as conformed (N4 + brain mask when that ran)')
    transform = File(exists=True, mandatory=True, desc="the reference's native->template xfm")
    res = traits.Int(2, usevalue=True, desc='model grid spacing (mm)')
    guide_modality = traits.Str(mandatory=True, desc='modality of the guide (sMRI)')
    guide_uri = traits.Str(mandatory=True, desc='BIDS URI of the raw guide file')
    guide_report = File(exists=True, desc="the reference conform node's brain_report (JSON)")
    extra_guides = InputMultiObject(File(exists=True), desc='other sMRI inputs as conformed '
                                    '(native_reference of their conform nodes)')
    extra_transforms = InputMultiObject(File(exists=True), desc='their native->template xfms')
    extra_modalities = traits.List(traits.Str, desc='their modalities')
    extra_uris = traits.List(traits.Str, desc='BIDS URIs of their raw files')
    method = traits.Enum('transfer', 'guided', usedefault=True,
                         desc='transfer: the guide mapped into the target contrast through its '
                              'tissue means; guided: guided filter (preprocessing.refine)')
    radius_mm = traits.Float(desc='window half-width (mm); default refine.RADIUS_MM')
    eps = traits.Float(desc='regularization; default refine.EPS')


class _RefineNativeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='refined image (or in_file when not applicable)')
    refinement = File(exists=True, desc='JSON: whether and how the refinement was applied')


class RefineNative(SimpleInterface):
    """Native-grid refinement of a synthesized sMRI image with the acquired reference's
    detail (:func:`~bids_synth.preprocessing.refine.refine_native`, ``method``).

    Applied only when the guide is finer than the model grid (smallest voxel side under
    ``res``); otherwise ``out_file`` is ``in_file`` and the record says why. The other sMRI
    inputs of the session (``extra_guides``) are further guide channels.
    """

    input_spec = _RefineNativeInputSpec
    output_spec = _RefineNativeOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib

        from ..preprocessing.refine import EPS, RADIUS_MM, refine_native
        from ..preprocessing.templates import load_template

        radius = self.inputs.radius_mm if self.inputs.radius_mm else RADIUS_MM
        eps = self.inputs.eps if self.inputs.eps else EPS
        guide_img = nib.load(self.inputs.guide)
        zooms = [float(z) for z in guide_img.header.get_zooms()[:3]]
        record = {'guide': self.inputs.guide_uri, 'guide_modality': self.inputs.guide_modality}
        if min(zooms) >= float(self.inputs.res):
            record.update(applied=False, reason=f'the guide ({min(zooms):.2f} mm) is not finer '
                          f'than the {self.inputs.res} mm model grid')
            LOGGER.info('native refinement skipped: %s', record['reason'])
            self._results['out_file'] = self.inputs.in_file
        else:
            template = load_template(self.inputs.res)
            extra = list(zip(_list(self.inputs.extra_guides),
                             _list(self.inputs.extra_transforms)))
            img, info = refine_native(nib.load(self.inputs.in_file), self.inputs.guide,
                                      self.inputs.transform, template, work_dir=runtime.cwd,
                                      radius_mm=radius, eps=eps, extra_guides=extra,
                                      method=self.inputs.method)
            used = info.pop('extra_guides_used', [])
            uris, mods = list(self.inputs.extra_uris), list(self.inputs.extra_modalities)
            if used and len(uris) == len(extra) and len(mods) == len(extra):
                record['extra_guides'] = [uris[i] for i in used]
                record['extra_guide_modalities'] = [mods[i] for i in used]
            if 'transfer_channel' in info:  # which guide the transfer mapped
                channels = [self.inputs.guide_modality] + record.get('extra_guide_modalities',
                                                                     [])
                k = info.pop('transfer_channel')
                record['transfer_modality'] = channels[k] if k < len(channels) else str(k)
            out_file = os.path.join(runtime.cwd, 'refined.nii.gz')
            img.to_filename(out_file)
            self._results['out_file'] = out_file
            record = {
                'applied': True,
                'method': info.pop('method'),
                'description': _DESCRIPTIONS[self.inputs.method],
                **record,
                'guide_preprocessing': _guide_preprocessing(self.inputs.guide_report),
                **info,
                'inside': ('brain mask (template mask mapped to the native grid, where the '
                           'guide is non-zero)' if self.inputs.method == 'guided' else
                           'the guide\'s brain (within the template mask dilated by two '
                           'model-grid voxels, where the mapped guide is brighter than a '
                           'quarter of its darkest tissue mean)') + '; unchanged outside',
                'intensity_scale': 'unchanged: model units (sMRI / 99th percentile inside '
                                   'the brain mask), as the template-space output',
            }
        out = os.path.join(runtime.cwd, 'refinement.json')
        with open(out, 'w') as f:
            json.dump(record, f, indent=2)
        self._results['refinement'] = out
        return runtime


_DESCRIPTIONS = {
    'guided': 'guided filter (He et al., TPAMI 2013): out = a * guide + b, fitted in windows '
              'against the guide resampled through the model grid',
    'transfer': 'tissue-anchored intensity transfer: the guide segmented (Atropos, template '
                'priors), each voxel of the guide mapped piecewise-linearly from the guide\'s '
                'CSF/GM/WM means to the synthesized image\'s CSF/GM/WM levels; the channel '
                'that separates the tissues best is used',
}


def _list(value) -> list:
    from nipype.interfaces.base import isdefined

    return list(value) if isdefined(value) and value else []


def _guide_preprocessing(report) -> str:
    """What was done to the guide before it was registered, in words.

    >>> _guide_preprocessing(None)
    'as acquired'
    """
    from nipype.interfaces.base import isdefined

    if report is None or not isdefined(report) or not report:
        return 'as acquired'
    with open(report) as f:
        rec = json.load(f)
    if rec.get('transform_source', 'bids_synth') != 'bids_synth':
        return f'preprocessed T1w from {rec["transform_source"]}'
    done = (['N4 bias correction'] if rec.get('n4') else []) + (
        [f'brain extraction ({rec["brain_extraction"]})']
        if rec.get('brain_extraction', 'none') != 'none' else [])
    return ' + '.join(done) or 'as acquired'
