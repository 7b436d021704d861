"""Nipype interfaces of clinical-value imputation: per session, then the output table."""

from __future__ import annotations

import json
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

__all__ = ['ImputeClinical', 'ImputedParticipants']


class _ImputeClinicalInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), desc='conformed available modalities')
    in_modalities = traits.List(traits.Str, desc='modality of each in_file')
    clinical = traits.Dict(desc='clinical values of the session (None: missing)')
    model = traits.Str(mandatory=True, desc='model directory')
    subject = traits.Str(mandatory=True)
    session = traits.Str('', usevalue=True)


class _ImputeClinicalOutputSpec(TraitedSpec):
    clinical = traits.Dict(desc='clinical values with the imputed ones filled in')
    imputed = traits.Dict(desc='column -> prediction (value, spread) of each imputed value')
    out_record = File(exists=True, desc='JSON record of the imputation')


class ImputeClinical(SimpleInterface):
    """Predict the session's missing clinical values with the model's tabular head.

    A model without a tabular part (fitted before it existed) passes the values through.
    """

    input_spec = _ImputeClinicalInputSpec
    output_spec = _ImputeClinicalOutputSpec

    def _run_interface(self, runtime):
        from ..models.imputer import SessionArrays
        from ..models.loading import load_imputer
        from ..models.tabular import impute_clinical, load_tabular
        from ..preprocessing.conform import load_conformed

        clinical = dict(self.inputs.clinical)
        record = {'subject': self.inputs.subject, 'session': self.inputs.session or None,
                  'imputed': {}, 'synthesized_for_features': [], 'model': self.inputs.model}
        tab = load_tabular(self.inputs.model)
        values, imputed = clinical, {}
        if tab is None:
            record['note'] = 'the model has no tabular head: nothing imputed'
        else:
            imputer = load_imputer(self.inputs.model)
            files = self.inputs.in_files if isdefined(self.inputs.in_files) else []
            images = {m: load_conformed(p) for m, p in zip(self.inputs.in_modalities, files)
                      if m in imputer.modalities}
            session = SessionArrays(self.inputs.subject, self.inputs.session or None, images,
                                    clinical)
            values, imputed, synthesized = impute_clinical(tab, imputer, session)
            record.update(imputed=imputed, synthesized_for_features=synthesized,
                          inputs_used=sorted(images))
        out_record = os.path.join(runtime.cwd, 'clinical_imputation.json')
        with open(out_record, 'w') as f:
            json.dump(record, f, indent=2, sort_keys=True)
        self._results.update(clinical=values, imputed=imputed, out_record=out_record)
        return runtime


class _ImputedParticipantsInputSpec(BaseInterfaceInputSpec):
    records = InputMultiObject(File(exists=True), desc='ImputeClinical records')
    bids_dir = traits.Str(mandatory=True)
    output_dir = traits.Str(mandatory=True)
    columns = traits.List(traits.Str, desc='clinical columns of the model')


class _ImputedParticipantsOutputSpec(TraitedSpec):
    out_file = File(desc='<out>/participants.tsv')


class ImputedParticipants(SimpleInterface):
    """Write ``<out>/participants.tsv`` + ``participants.json`` with the imputed cells marked."""

    input_spec = _ImputedParticipantsInputSpec
    output_spec = _ImputedParticipantsOutputSpec

    def _run_interface(self, runtime):
        from ..bids.imputed import write_imputed_participants

        records = []
        for path in self.inputs.records or []:
            with open(path) as f:
                records.append(json.load(f))
        out = write_imputed_participants(self.inputs.bids_dir, self.inputs.output_dir,
                                         records, columns=list(self.inputs.columns))
        if out is not None:
            self._results['out_file'] = str(out)
        return runtime
