"""Top-level Nipype graphs of bids_synth.

Organization (participant level), per subject and session::

    conform_<mod>  (one per available input)  ──▶ merge_inputs ──▶ synth_<target> ──▶ ds_<target>
    conform_<reference> ── transform, native grid ──▶ native_<target> ───────────────▶ ds_<target>
    (sMRI target, sMRI reference)   native_<target> ──▶ refine_<target> ──▶ ds_<target>
    (guides: every acquired sMRI input, conformed)  ──▶ refine_<target>
                                                          ds_* ──▶ report (per subject)

Inputs are found at graph-build time (``bids.layout.collect_sessions``, as fMRIPrep's
``collect_data``), so nodes carry file names and the graph is known before anything runs. Only
the top-level and single-subject builders read the config.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.derivatives import bids_uri
from ..bids.modalities import MODALITIES
from ..interfaces.clinical import ImputeClinical, ImputedParticipants
from ..interfaces.conform import ConformInput, ToNative
from ..interfaces.derivatives import SynthDerivatives
from ..interfaces.provenance import derive_seed, resolve_device
from ..interfaces.refine import RefineNative
from ..interfaces.reports import SubjectReport
from ..interfaces.synthesis import FitModel, Synthesize

LOGGER = logging.getLogger('bids_synth.workflows')

__all__ = ['init_bids_synth_wf', 'init_single_subject_wf', 'init_session_synth_wf',
           'init_group_wf', 'session_key']


def session_key(inv) -> str:
    return f'{inv.subject}/{inv.session}' if inv.session else inv.subject


def _safe(label: str) -> str:
    return ''.join(c if c.isalnum() else '_' for c in label)


def init_bids_synth_wf(config, inventories, clinical, *, model: str, model_card: dict,
                       targets_of, impute_columns=()) -> pe.Workflow:
    """Participant level: one sub-workflow per subject.

    Parameters
    ----------
    config : bids_synth.config.Config
    inventories : list of SessionInventory
        Sessions to process (already selected).
    clinical : ClinicalTable
    model : str
        Model directory to use.
    model_card : dict
        Its card (modalities, template resolution, method).
    targets_of : callable
        ``targets_of(inventory) -> tuple`` of modalities to synthesize for a session.
    impute_columns : sequence of str
        Clinical columns the model's tabular head imputes (empty: no imputation). Each session
        with one of them missing gets an ``impute_clinical`` node whose values its synthesizing
        nodes use; ``ds_participants`` writes ``<out>/participants.tsv`` with them.
    """
    wf = pe.Workflow(name='bids_synth_wf', base_dir=config.execution.work_dir)
    by_subject: dict[str, list] = {}
    for inv in inventories:
        by_subject.setdefault(inv.subject, []).append(inv)
    if model_card.get('method') == 'regression' and config.workflow.num_samples > 1:
        LOGGER.warning('the regression is deterministic: one image per target, no '
                       'desc-synthstd (--num-samples %d ignored)', config.workflow.num_samples)
    sub_wfs = []
    for subject, sessions in sorted(by_subject.items()):
        sub_wf = init_single_subject_wf(
            config, subject, sessions, clinical, model=model, model_card=model_card,
            targets_of=targets_of, impute_columns=impute_columns,
        )
        if sub_wf is not None:
            wf.add_nodes([sub_wf])
            sub_wfs.append(sub_wf)
    imputing = [w for w in sub_wfs if w.get_node('outputnode') is not None]
    if imputing:
        merge_clinical = pe.Node(niu.Merge(len(imputing), ravel_inputs=True),
                                 name='merge_clinical')
        ds_participants = pe.Node(
            ImputedParticipants(bids_dir=str(config.execution.bids_dir),
                                output_dir=str(config.execution.output_dir),
                                columns=list(impute_columns)),
            name='ds_participants', run_without_submitting=True,
        )
        for i, sub_wf in enumerate(imputing, start=1):
            wf.connect([(sub_wf, merge_clinical, [('outputnode.clinical_records', f'in{i}')])])  # fmt:skip
        wf.connect([(merge_clinical, ds_participants, [('out', 'records')])])  # fmt:skip
    return wf


def needs_imputation(values: dict, impute_columns) -> bool:
    """Whether a session lacks a value of a column the tabular head imputes.

    >>> needs_imputation({'age': 70.0, 'mmse': None}, ['mmse']), needs_imputation({}, [])
    (True, False)
    """
    return any(values.get(c) is None for c in impute_columns)


def init_single_subject_wf(config, subject, sessions, clinical, *, model, model_card,
                           targets_of, impute_columns=()):
    """All sessions of one subject, plus the subject's report. ``None`` if nothing to do.

    A session with nothing to synthesize but a clinical value to impute gets only its conform
    and ``impute_clinical`` nodes; ``outputnode.clinical_records`` (present when a session
    imputes) lists the imputation records."""
    wf = pe.Workflow(name=f'sub_{_safe(subject)}_wf')
    res = int(model_card['template'].get('res', 2))
    num_samples = samples_of(model_card, config.workflow.num_samples)
    entries = []
    for inv in sessions:
        targets = targets_of(inv)
        values = clinical.for_session(inv.subject, inv.session)
        impute = needs_imputation(values, impute_columns)
        if not targets and not impute:
            continue
        ses_wf = init_session_synth_wf(
            inv,
            targets=targets,
            model=model,
            model_modalities=tuple(model_card['modalities']),
            clinical_values=values,
            impute_clinical=impute,
            res=res,
            method=config.workflow.method,
            seed=config.seeds.master,
            num_samples=num_samples,
            write_samples=config.workflow.write_samples and model_card.get('method') != 'regression',
            steps=config.workflow.steps,
            sampler=config.workflow.sampler,
            device=config.workflow.device,
            bids_dir=config.execution.bids_dir,
            output_dir=config.execution.output_dir,
            omp_nthreads=config.nipype.omp_nthreads,
            force=config.execution.force,
            skull_strip=config.workflow.skull_strip,
            precomputed=_precomputed(config, inv),
            native_refine=config.workflow.native_refine,
            dwi_scheme=config.workflow.dwi_gradients or None,
        )
        entries.append((inv, ses_wf, targets, impute))
    if not entries:
        return None
    imputing = [ses_wf for _, ses_wf, _, impute in entries if impute]
    if imputing:
        outputnode = pe.Node(niu.IdentityInterface(fields=['clinical_records']),
                             name='outputnode')
        merge_records = pe.Node(niu.Merge(len(imputing)), name='merge_records')
        for i, ses_wf in enumerate(imputing, start=1):
            wf.connect([(ses_wf, merge_records, [('outputnode.clinical_record', f'in{i}')])])  # fmt:skip
        wf.connect([(merge_records, outputnode, [('out', 'clinical_records')])])  # fmt:skip
    n_out = sum(len(t) for _, _, t, _ in entries)
    if not n_out:
        return wf
    merge_outputs = pe.Node(niu.Merge(n_out), name='merge_outputs')
    report = pe.Node(
        SubjectReport(subject=subject, output_dir=config.execution.output_dir,
                      bids_dir=config.execution.bids_dir),
        name='report',
    )
    idx = 1
    for inv, ses_wf, targets, _ in entries:
        for target in targets:
            wf.connect([(ses_wf, merge_outputs, [(f'outputnode.{target}', f'in{idx}')])])  # fmt:skip
            idx += 1
    if config.execution.reports:
        wf.connect([(merge_outputs, report, [('out', 'records')])])  # fmt:skip
    return wf


def samples_of(model_card: dict, asked: int) -> int:
    """Samples per image: ``asked``, else the card's default; always 1 for the regression.

    >>> samples_of({'method': 'regression'}, 4), samples_of({'sampler': {'num_samples': 4}}, 0)
    (1, 4)
    """
    if model_card.get('method') == 'regression':
        return 1
    return int(asked or model_card.get('sampler', {}).get('num_samples', 1))


def init_session_synth_wf(
    inv,
    *,
    targets,
    model,
    model_modalities,
    clinical_values,
    res,
    method,
    seed,
    num_samples,
    steps,
    sampler,
    device,
    bids_dir,
    write_samples=False,
    output_dir,
    omp_nthreads=1,
    force=False,
    skull_strip='auto',
    precomputed=None,
    native_refine='transfer',
    impute_clinical=False,
    dwi_scheme=None,
    name=None,
):
    """Synthesize the missing ``targets`` of one session.

    ``skull_strip`` goes to every sMRI conform node; ``precomputed`` (fMRIPrep/sMRIPrep outputs,
    :func:`~bids_synth.preprocessing.precomputed.find_precomputed`) to the T1w's.
    ``native_refine`` (``transfer``, ``guided``; ``none`` or False: off; True: ``transfer``):
    sMRI targets of a session whose reference is an sMRI image get a ``refine_<target>`` node
    (:class:`~bids_synth.interfaces.refine.RefineNative` with that method) between
    ``native_<target>`` and ``ds_<target>``: the native output takes the reference's detail.
    ``impute_clinical``: an ``impute_clinical`` node
    (:class:`~bids_synth.interfaces.clinical.ImputeClinical`) predicts the missing clinical
    values from the conformed inputs and the other values; every ``synth_<target>`` uses them.

    Outputs
    -------
    outputnode.<target>
        JSON record (path) of each synthesized target: files written and provenance.
    outputnode.clinical_record
        JSON record of the clinical imputation (``impute_clinical`` only).
    """
    name = name or f'ses_{_safe(inv.session or "none")}_wf'
    wf = pe.Workflow(name=name)
    fields = list(targets) + (['clinical_record'] if impute_clinical else [])
    outputnode = pe.Node(niu.IdentityInterface(fields=fields), name='outputnode')

    ref = inv.reference
    inputs = [m for m in inv.available if m in model_modalities]
    conform_nodes = {}
    for mod in dict.fromkeys(inputs + [ref.modality]):
        f = inv.files[mod]
        node = pe.Node(
            ConformInput(in_file=f.path, modality=mod, metadata=_plain(f.metadata), res=res,
                         omp_nthreads=omp_nthreads, force=force, skull_strip=skull_strip,
                         precomputed=_plain(precomputed or {}) if mod == 'T1w' else {}),
            name=f'conform_{mod}', n_procs=omp_nthreads,
            # sMRI: deepbet may run (1.3 GB peak measured on a 0.7 mm raw T1w)
            mem_gb=1.5 if MODALITIES[mod].family == 'smri' and skull_strip != 'skip' else 0.2,
        )
        conform_nodes[mod] = node
    # every transform (its sidecar has the registration QC) goes to the sidecars and report
    merge_qc = pe.Node(niu.Merge(len(conform_nodes)), name='merge_qc')
    for i, node in enumerate(conform_nodes.values(), start=1):
        wf.connect([(node, merge_qc, [('transform', f'in{i}')])])  # fmt:skip
    merge_inputs = pe.Node(niu.Merge(max(1, len(inputs))), name='merge_inputs')
    for i, mod in enumerate(inputs, start=1):
        wf.connect([(conform_nodes[mod], merge_inputs, [('out_file', f'in{i}')])])  # fmt:skip
    merge_brain = pe.Node(niu.Merge(len(conform_nodes)), name='merge_brain')
    for i, node in enumerate(conform_nodes.values(), start=1):
        wf.connect([(node, merge_brain, [('brain_report', f'in{i}')])])  # fmt:skip

    if impute_clinical:
        impute = pe.Node(
            ImputeClinical(in_modalities=inputs, clinical=_plain(clinical_values), model=model,
                           subject=inv.subject, session=inv.session or ''),
            name='impute_clinical', mem_gb=1,
        )
        if inputs:
            wf.connect([(merge_inputs, impute, [('out', 'in_files')])])  # fmt:skip
        wf.connect([(impute, outputnode, [('out_record', 'clinical_record')])])  # fmt:skip

    use_gpu = resolve_device(device) == 'cuda'  # MultiProc schedules GPU nodes apart
    smri_reference = MODALITIES[ref.modality].family == 'smri'
    if native_refine is True:
        native_refine = 'transfer'
    native_refine = None if native_refine in (False, None, 'none') else native_refine
    # the other acquired sMRI images: more guide channels of the native refinement
    extra_guides = [m for m in inputs if m != ref.modality and MODALITIES[m].family == 'smri']
    if native_refine and smri_reference and extra_guides:
        merge_guides = pe.Node(niu.Merge(len(extra_guides)), name='merge_guides')
        merge_guide_xfms = pe.Node(niu.Merge(len(extra_guides)), name='merge_guide_xfms')
        for i, mod in enumerate(extra_guides, start=1):
            wf.connect([
                (conform_nodes[mod], merge_guides, [('native_reference', f'in{i}')]),
                (conform_nodes[mod], merge_guide_xfms, [('transform', f'in{i}')]),
            ])  # fmt:skip
    for target in targets:
        synth = pe.Node(
            Synthesize(
                in_modalities=inputs, target=target,
                **({} if impute_clinical else {'clinical': _plain(clinical_values)}),
                model=model, method=method or '',
                seed=derive_seed(seed, inv.subject, inv.session or '', target),
                num_samples=num_samples, write_samples=write_samples, steps=steps,
                sampler=sampler or '', device=device,
                use_gpu=use_gpu and method != 'regression', subject=inv.subject,
                session=inv.session or '', res=res,
            ),
            name=f'synth_{target}', mem_gb=2,
        )
        native = pe.Node(ToNative(res=res, modality=target), name=f'native_{target}')
        native_std = pe.Node(ToNative(res=res), name=f'native_std_{target}')
        ds = pe.Node(
            SynthDerivatives(
                subject=inv.subject, session=inv.session or '', target=target,
                output_dir=output_dir, bids_dir=bids_dir, res=res,
                source_files=[inv.files[m].path for m in inputs],
                reference_file=ref.path,
                source_metadata=_plain({m: inv.files[m].metadata for m in inputs}),
                **({'dwi_scheme': dwi_scheme} if dwi_scheme and target == 'dwi' else {}),
            ),
            name=f'ds_{target}', run_without_submitting=True,
        )
        if inputs:
            wf.connect([(merge_inputs, synth, [('out', 'in_files')])])  # fmt:skip
        if impute_clinical:
            wf.connect([(impute, synth, [('clinical', 'clinical'),
                                         ('imputed', 'clinical_imputed')])])  # fmt:skip
        wf.connect([
            (synth, native, [('out_file', 'in_file')]),
            (conform_nodes[ref.modality], native, [('transform', 'transform'),
                                                   ('native_reference', 'native_reference')]),
            (synth, ds, [('out_file', 'template_file'), ('provenance', 'provenance')]),
            (merge_qc, ds, [('out', 'transforms')]),
            (merge_brain, ds, [('out', 'brain_reports')]),
            (ds, outputnode, [('out_record', target)]),
        ])  # fmt:skip
        if native_refine and smri_reference and MODALITIES[target].family == 'smri':
            refine = pe.Node(
                RefineNative(res=res, method=native_refine, guide_modality=ref.modality,
                             guide_uri=bids_uri(bids_dir, ref.path),
                             extra_modalities=extra_guides,
                             extra_uris=[bids_uri(bids_dir, inv.files[m].path)
                                         for m in extra_guides]),
                name=f'refine_{target}', mem_gb=1.5,
            )
            if extra_guides:
                wf.connect([
                    (merge_guides, refine, [('out', 'extra_guides')]),
                    (merge_guide_xfms, refine, [('out', 'extra_transforms')]),
                ])  # fmt:skip
            wf.connect([
                (native, refine, [('out_file', 'in_file')]),
                (conform_nodes[ref.modality], refine, [('native_reference', 'guide'),
                                                       ('transform', 'transform'),
                                                       ('brain_report', 'guide_report')]),
                (refine, ds, [('out_file', 'native_file'), ('refinement', 'refinement')]),
            ])  # fmt:skip
        else:
            wf.connect([(native, ds, [('out_file', 'native_file')])])  # fmt:skip
        if write_samples:
            wf.connect([(synth, ds, [('out_samples', 'template_samples')])])  # fmt:skip
        if num_samples > 1:
            wf.connect([
                (synth, native_std, [('out_std', 'in_file')]),
                (conform_nodes[ref.modality], native_std, [
                    ('transform', 'transform'), ('native_reference', 'native_reference')]),
                (synth, ds, [('out_std', 'template_std')]),
                (native_std, ds, [('out_file', 'native_std')]),
            ])  # fmt:skip
    return wf


def init_group_wf(config, inventories, clinical, *, method, modalities, res, model_dir,
                  init_from=None) -> pe.Workflow:
    """Group level: conform every usable input of every session, then fit one model."""
    wf = pe.Workflow(name='bids_synth_group_wf', base_dir=config.execution.work_dir)
    mods, keys, clinical_by_key = [], [], {}
    conform = []
    for inv in inventories:
        key = session_key(inv)
        clinical_by_key[key] = _plain(clinical.for_session(inv.subject, inv.session))
        for mod in inv.available:
            if mod not in modalities:
                continue
            f = inv.files[mod]
            node = pe.Node(
                ConformInput(in_file=f.path, modality=mod, metadata=_plain(f.metadata), res=res,
                             omp_nthreads=config.nipype.omp_nthreads,
                             force=config.execution.force,
                             skull_strip=config.workflow.skull_strip,
                             precomputed=_plain(_precomputed(config, inv) or {})
                             if mod == 'T1w' else {}),
                name=f'conform_{_safe(key)}_{mod}', n_procs=config.nipype.omp_nthreads,
            )
            conform.append(node)
            mods.append(mod)
            keys.append(key)
    if not conform:
        from ..errors import NoMatchError

        raise NoMatchError('group level: no readable input of the selected modalities')
    merge = pe.Node(niu.Merge(len(conform)), name='merge_conformed')
    for i, node in enumerate(conform, start=1):
        wf.connect([(node, merge, [('out_file', f'in{i}')])])  # fmt:skip
    fit = pe.Node(
        FitModel(
            in_modalities=mods, in_sessions=keys, clinical=clinical_by_key,
            clinical_schema=clinical.schema(), modalities=list(modalities), method=method,
            out_dir=str(model_dir), init_from=str(init_from or ''), res=res,
            seed=config.seeds.master, train_steps=config.workflow.train_steps,
            train_config=config.workflow.train_config,
            contrast_augmentation=config.workflow.contrast_augmentation,
            pds_refinement=config.workflow.pds_refinement,
            use_gpu=method == 'diffusion' and resolve_device(config.workflow.device) == 'cuda',
            device=config.workflow.device,
        ),
        name='fit_model', n_procs=config.nipype.omp_nthreads,
    )
    wf.connect([(merge, fit, [('out', 'in_files')])])  # fmt:skip
    return wf


def _precomputed(config, inv) -> dict | None:
    """fMRIPrep/sMRIPrep outputs of a session's T1w (``--derivatives``), or None."""
    derivatives = getattr(config.execution, 'derivatives', None)
    if not derivatives or 'T1w' not in inv.available:
        return None
    from ..preprocessing.precomputed import find_precomputed

    return find_precomputed(derivatives, inv.subject, inv.session)


def _plain(obj):
    """Make metadata JSON-plain (numpy scalars, paths) for node inputs and hashing."""
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, 'item')
                                 else str(o)))


def default_model_dir() -> Path:
    return Path(__file__).resolve().parent.parent / 'data' / 'default_model'
