"""Nipype interfaces that run a model: synthesize one missing modality, fit a model."""

from __future__ import annotations

import json
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

__all__ = ['Synthesize', 'FitModel']


class _SynthesizeInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), desc='conformed available modalities')
    in_modalities = traits.List(traits.Str, desc='modality of each in_file')
    target = traits.Str(mandatory=True, desc='modality to synthesize')
    clinical = traits.Dict(desc='clinical values of the session')
    clinical_imputed = traits.Dict(desc='column -> prediction, for the values of ``clinical`` '
                                   'that were imputed (provenance)')
    model = traits.Str(mandatory=True, desc='model directory')
    method = traits.Str('', usevalue=True, desc='expected method ("" = the model\'s)')
    seed = traits.Int(0, usevalue=True)
    num_samples = traits.Int(0, usevalue=True, desc='samples K (0 = the model card default)')
    write_samples = traits.Bool(False, usevalue=True, desc='also return each sample')
    steps = traits.Int(0, usevalue=True, desc='sampler steps (0 = card default)')
    sampler = traits.Str('', usevalue=True, desc='sampler ("" = card default)')
    device = traits.Enum('auto', 'cpu', 'cuda', usevalue=True)
    use_gpu = traits.Bool(False, usevalue=True, desc='GPU node for MultiProc scheduling')
    subject = traits.Str(mandatory=True)
    session = traits.Str('', usevalue=True)
    res = traits.Int(2, usevalue=True)


class _SynthesizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='synthesized mean, template space (4D channels last)')
    out_std = File(desc='voxelwise std over samples (only when num_samples > 1)')
    out_samples = traits.List(File(exists=True), desc='each sample (write_samples)')
    provenance = File(exists=True, desc='JSON: how the image was made')


class Synthesize(SimpleInterface):
    """Predict one missing modality of one session with a saved model."""

    input_spec = _SynthesizeInputSpec
    output_spec = _SynthesizeOutputSpec

    def _run_interface(self, runtime):
        from ..models.imputer import SessionArrays
        from ..models.loading import load_imputer
        from ..preprocessing.conform import load_conformed
        from ..preprocessing.templates import load_template
        from .provenance import model_provenance, resolve_device

        imputer = load_imputer(self.inputs.model, self.inputs.method or None)
        images = {
            mod: load_conformed(path)
            for mod, path in zip(self.inputs.in_modalities, self.inputs.in_files)
            if mod in imputer.modalities
        }
        session = SessionArrays(
            subject=self.inputs.subject,
            session=self.inputs.session or None,
            images=images,
            clinical=dict(self.inputs.clinical),
        )
        device = resolve_device(self.inputs.device)
        kwargs = {'seed': self.inputs.seed, 'device': device}
        if imputer.method == 'diffusion':
            kwargs['num_samples'] = self.inputs.num_samples or None
            kwargs['return_samples'] = bool(self.inputs.write_samples)
            if self.inputs.steps:
                kwargs['steps'] = self.inputs.steps
            if self.inputs.sampler:
                kwargs['sampler'] = self.inputs.sampler
        pred = imputer.predict(session, (self.inputs.target,), **kwargs)[self.inputs.target]
        template = load_template(self.inputs.res)
        out_file = os.path.join(runtime.cwd, f'{self.inputs.target}_synth.nii.gz')
        template.img(pred.mean).to_filename(out_file)
        self._results['out_file'] = out_file
        if pred.std is not None:
            out_std = os.path.join(runtime.cwd, f'{self.inputs.target}_synthstd.nii.gz')
            template.img(pred.std).to_filename(out_std)
            self._results['out_std'] = out_std
        if pred.samples is not None:
            self._results['out_samples'] = []
            for i, smp in enumerate(pred.samples, start=1):
                f = os.path.join(runtime.cwd, f'{self.inputs.target}_sample{i}.nii.gz')
                template.img(smp).to_filename(f)
                self._results['out_samples'].append(f)
        prov = model_provenance(imputer, self.inputs.model)
        prov.update(
            seed=self.inputs.seed,
            num_samples=1,
            device=device,
            inputs_used=sorted(images),
            clinical_used={
                k: v for k, v in session.clinical.items()
                if k in imputer.card().get('clinical_schema', {})
            },
        )
        if self.inputs.clinical_imputed:
            prov['clinical_imputed'] = dict(self.inputs.clinical_imputed)
        # method-specific provenance (diffusion: sampler, steps, fusion weights) wins
        prov.update({k: v for k, v in pred.extra.items() if k not in ('inputs_used', 'inputs')})
        prov_file = os.path.join(runtime.cwd, 'provenance.json')
        with open(prov_file, 'w') as f:
            json.dump(prov, f, indent=2, sort_keys=True, default=str)
        self._results['provenance'] = prov_file
        return runtime


class _FitModelInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), desc='conformed images of all sessions')
    in_modalities = traits.List(traits.Str, desc='modality of each in_file')
    in_sessions = traits.List(traits.Str, desc='"sub[/ses]" key of each in_file')
    clinical = traits.Dict(desc='session key -> clinical values')
    clinical_schema = traits.Dict(desc='clinical table schema')
    modalities = traits.List(traits.Str, desc='modalities the model covers')
    method = traits.Enum('diffusion', 'regression', usevalue=True)
    out_dir = traits.Str(mandatory=True, desc='model directory to write')
    init_from = traits.Str('', usevalue=True, desc='model to fine-tune (diffusion)')
    res = traits.Int(2, usevalue=True)
    seed = traits.Int(0, usevalue=True)
    train_steps = traits.Int(0, usevalue=True)
    train_config = traits.Str('', usevalue=True, desc='preset name or JSON file of overrides')
    contrast_augmentation = traits.Int(0, usevalue=True,
                                       desc='regression: contrast-randomized input copies')
    pds_refinement = traits.Bool(True, usevalue=True,
                                 desc='regression: fit PDS stage 2 for bold/dwi targets')
    use_gpu = traits.Bool(False, usevalue=True)
    device = traits.Enum('auto', 'cpu', 'cuda', usevalue=True)


class _FitModelOutputSpec(TraitedSpec):
    model_dir = traits.Str(desc='the fitted model directory')


class FitModel(SimpleInterface):
    """Fit (train) a model on the conformed sessions (group level)."""

    input_spec = _FitModelInputSpec
    output_spec = _FitModelOutputSpec

    def _run_interface(self, runtime):
        from ..training.fit import fit_model, sessions_from_files

        sessions = sessions_from_files(
            self.inputs.in_files, self.inputs.in_modalities, self.inputs.in_sessions,
            dict(self.inputs.clinical),
        )
        model_dir = fit_model(
            sessions,
            method=self.inputs.method,
            modalities=list(self.inputs.modalities),
            clinical_schema=dict(self.inputs.clinical_schema),
            out_dir=self.inputs.out_dir,
            res=self.inputs.res,
            seed=self.inputs.seed,
            train_steps=self.inputs.train_steps,
            train_config=self.inputs.train_config,
            init_from=self.inputs.init_from or None,
            device=self.inputs.device,
            contrast_augmentation=self.inputs.contrast_augmentation,
            pds_refinement=self.inputs.pds_refinement,
        )
        self._results['model_dir'] = str(model_dir)
        return runtime
