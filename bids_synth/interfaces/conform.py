"""Nipype interfaces around ``preprocessing.conform``: to template space and back."""

from __future__ import annotations

import json
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

__all__ = ['ConformInput', 'ToNative']


class _ConformInputInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='raw BIDS image')
    modality = traits.Str(mandatory=True, desc='registry modality name')
    metadata = traits.Dict(desc='BIDS sidecar metadata (dwi: bval/bvec paths)')
    res = traits.Int(2, usevalue=True, desc='template resolution (mm) of the model grid')
    omp_nthreads = traits.Int(1, usevalue=True, desc='threads for registration')
    force = traits.Bool(False, usevalue=True,
                        desc='keep a registration that fails the QC (flagged)')
    skull_strip = traits.Enum('auto', 'force', 'skip', usevalue=True,
                              desc='sMRI: N4 + deepbet brain extraction of skull-on inputs')
    precomputed = traits.Dict(desc='fMRIPrep/sMRIPrep outputs of this T1w (no registration)')


class _ConformInputOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='representation on the model grid (4D, channels last)')
    transform = File(exists=True, desc='native -> template transform (ANTs); its JSON sidecar '
                     'holds the registration QC')
    native_reference = File(exists=True, desc='native-space 3D reference image')
    brain_report = File(exists=True, desc='JSON: skull-stripping / precomputed inputs record')


class ConformInput(SimpleInterface):
    """Bring one raw image to the model's template space, in its model representation."""

    input_spec = _ConformInputInputSpec
    output_spec = _ConformInputOutputSpec

    def _run_interface(self, runtime):
        from ..preprocessing.conform import conform, save_conformed
        from ..preprocessing.templates import load_template

        template = load_template(self.inputs.res)
        result = conform(
            self.inputs.in_file,
            self.inputs.modality,
            template,
            runtime.cwd,
            metadata=dict(self.inputs.metadata),
            omp_nthreads=self.inputs.omp_nthreads,
            force=self.inputs.force,
            skull_strip=self.inputs.skull_strip,
            precomputed=dict(self.inputs.precomputed) or None,
        )
        out_file = os.path.join(runtime.cwd, f'{self.inputs.modality}_conformed.nii.gz')
        save_conformed(result, out_file, template)
        self._results['out_file'] = out_file
        self._results['transform'] = str(result.transform.path)
        self._results['native_reference'] = str(result.native_reference)
        report = os.path.join(runtime.cwd, f'{self.inputs.modality}_brain.json')
        with open(report, 'w') as f:
            json.dump({'modality': self.inputs.modality, 'in_file': str(self.inputs.in_file),
                       'transform_source': result.transform.source,
                       # the native image as conformed (brain-masked when extraction ran):
                       # the report draws its mask; the sidecars leave the path out
                       'brain_file': str(result.native_reference),
                       **(result.brain or {'SkullStripped': None})}, f, indent=2)
        self._results['brain_report'] = report
        return runtime


class _ToNativeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='template-space image (4D channels last)')
    transform = File(exists=True, mandatory=True, desc='the reference\'s native->template xfm')
    native_reference = File(exists=True, mandatory=True, desc='native reference grid')
    res = traits.Int(2, usevalue=True)
    modality = traits.Str('', usevalue=True, desc='registry key of the image: its tensor '
                          'channels are reoriented (empty: none)')


class _ToNativeOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ToNative(SimpleInterface):
    """Resample a template-space image onto the session's native reference grid."""

    input_spec = _ToNativeInputSpec
    output_spec = _ToNativeOutputSpec

    def _run_interface(self, runtime):
        from ..preprocessing.conform import load_conformed, to_native
        from ..preprocessing.templates import load_template

        template = load_template(self.inputs.res)
        array = load_conformed(self.inputs.in_file)
        img = to_native(
            array, template, self.inputs.transform, self.inputs.native_reference,
            modality=self.inputs.modality or None,
        )
        out_file = os.path.join(runtime.cwd, 'native.nii.gz')
        img.to_filename(out_file)
        self._results['out_file'] = out_file
        return runtime
