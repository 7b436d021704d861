"""Nipype interface that writes a subject's HTML report."""

from __future__ import annotations

import json

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

__all__ = ['SubjectReport']


class _SubjectReportInputSpec(BaseInterfaceInputSpec):
    records = InputMultiObject(File(exists=True), desc='JSON records of synthesized images')
    subject = traits.Str(mandatory=True)
    output_dir = traits.Str(mandatory=True)
    bids_dir = traits.Str()


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = File(exists=True)


class SubjectReport(SimpleInterface):
    """Write ``<output_dir>/sub-<label>.html``."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.core import subject_report

        records = []
        for path in self.inputs.records:
            with open(path) as f:
                records.append(json.load(f))
        out = subject_report(self.inputs.output_dir, self.inputs.subject, records)
        self._results['out_report'] = str(out)
        return runtime
