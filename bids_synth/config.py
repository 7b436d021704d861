"""Settings of one bids_synth run, in sections, serializable to TOML.

As in fMRIPrep the settings are grouped in sections (``execution``, ``workflow``, ``nipype``,
``seeds``) and written to a TOML file that crosses process boundaries and is copied into the
run's log folder. Unlike fMRIPrep there is no global state and importing this module has no side
effects: ``cli.run.main`` builds a :class:`Config` and passes it to the graph builders.

>>> cfg = Config.from_options({'bids_dir': '/data', 'output_dir': '/out',
...                            'analysis_level': 'participant', 'nprocs': 2})
>>> cfg.nipype.nprocs, cfg.execution.analysis_level
(2, 'participant')
>>> Config.loads(cfg.dumps()) == cfg
True
"""

from __future__ import annotations

import dataclasses as dc
import tomllib
import uuid
from datetime import datetime, timezone
from pathlib import Path

import tomli_w

__all__ = ['Config', 'Execution', 'Workflow', 'Nipype', 'Seeds']


def _run_id() -> str:
    now = datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')
    return f'{now}_{uuid.uuid4().hex[:8]}'


@dc.dataclass
class Execution:
    """Where things are and what is run."""

    bids_dir: str = ''
    """Input BIDS dataset (never modified)."""
    output_dir: str = ''
    """BIDS-Derivatives output folder."""
    analysis_level: str = 'participant'
    """``participant`` (impute) or ``group`` (fit the model)."""
    work_dir: str = ''
    """Nipype working directory; a rerun with the same folder resumes and recomputes nothing."""
    bids_database_dir: str = ''
    """Folder caching the pybids index (reused by later runs)."""
    participant_label: list[str] = dc.field(default_factory=list)
    session_label: list[str] = dc.field(default_factory=list)
    bids_filters: dict = dc.field(default_factory=dict)
    skip_bids_validation: bool = False
    dry_run: bool = False
    unreadable_as_missing: bool = False
    """Synthesize modalities whose file exists but cannot be read (off: they are errors)."""
    force: bool = False
    """Keep inputs that fail the registration QC (flagged in the sidecars)."""
    run_id: str = dc.field(default_factory=_run_id)
    verbose: int = 0
    write_graph: bool = False
    reports: bool = True
    derivatives: list[str] = dc.field(default_factory=list)
    """fMRIPrep/sMRIPrep output folders whose preprocessed T1w and transforms are used
    (``--derivatives``)."""
    complete_dataset: str = ''
    """Folder receiving the input dataset completed with the synthesized anatomical images
    (``--complete-dataset``); empty: none."""


@dc.dataclass
class Workflow:
    """What the graph computes."""

    modalities: list[str] = dc.field(default_factory=list)
    """Targets to synthesize (empty: every modality the model knows)."""
    method: str = ''
    """Imputation method (empty: the model's own; the group level defaults to diffusion)."""
    model: str = ''
    """Model directory (``--model``); empty: the group-level model in the output, else the
    embedded default."""
    device: str = 'auto'
    num_samples: int = 0
    """Samples per synthesized image (0: the model card's default; the regression has one)."""
    write_samples: bool = False
    """Also write each sample (``desc-synthsample<i>``), not only their mean and std."""
    steps: int = 0
    """Sampler steps (0: the model card's default)."""
    sampler: str = ''
    """Sampler (empty: the model card's default)."""
    clinical_columns: list[str] = dc.field(default_factory=list)
    impute_clinical: bool = True
    """Participant level: impute n/a clinical values with the model's tabular head
    (``--no-impute-clinical`` turns it off)."""
    res: int = 0
    """Template resolution for group-level fitting (0: the method's default)."""
    train_steps: int = 0
    """Group level: training steps for the diffusion model (0: the recipe's default)."""
    train_config: str = ''
    """Group level: a training preset name or a JSON file of recipe overrides ('': default)."""
    contrast_augmentation: int = 0
    """Group level, regression: contrast-randomized copies of each session's inputs in the
    ridge's moments (0: none)."""
    pds_refinement: bool = True
    """Group level, regression: fit PDS's second stage for bold/dwi targets (tissue and
    microstructure refinement, ``models.refinement``; ``--no-pds-refinement`` skips it)."""
    skull_strip: str = 'auto'
    """sMRI inputs: N4 + deepbet brain extraction when the skull is on (``auto``), always
    (``force``) or never (``skip``)."""
    dwi_scheme: str = ''
    """``--dwi-scheme``: the .bval/.bvec pair synthesized dwi series are rendered for (empty:
    the dataset's most common table, else the standard one; ``bids.gradients``)."""
    dwi_gradients: dict = dc.field(default_factory=dict)
    """The resolved table (``GradientScheme.to_dict``), set by the participant level."""
    native_refine: str = 'transfer'
    """Native-space sMRI outputs: refinement with the acquired sMRI reference's detail
    (``--native-refine``: ``transfer``, ``guided`` or ``none``; ``preprocessing.refine``)."""


@dc.dataclass
class Nipype:
    """Execution engine settings."""

    plugin: str = 'MultiProc'
    plugin_args: dict = dc.field(default_factory=dict)
    nprocs: int = 0
    omp_nthreads: int = 0
    mem_mb: int = 0
    stop_on_first_crash: bool = False

    def resolved_plugin_args(self) -> dict:
        args = dict(self.plugin_args)
        if self.plugin == 'MultiProc':
            if self.nprocs:
                args.setdefault('n_procs', self.nprocs)
            if self.mem_mb:
                args.setdefault('memory_gb', self.mem_mb / 1024)
            args.setdefault('raise_insufficient', False)
        return args


@dc.dataclass
class Seeds:
    """Random seeds (sampling noise, training)."""

    master: int = 0


@dc.dataclass
class Config:
    """All settings of a run."""

    execution: Execution = dc.field(default_factory=Execution)
    workflow: Workflow = dc.field(default_factory=Workflow)
    nipype: Nipype = dc.field(default_factory=Nipype)
    seeds: Seeds = dc.field(default_factory=Seeds)

    @classmethod
    def from_options(cls, options: dict) -> Config:
        """Distribute flat options (``vars(argparse.Namespace)``) into the sections."""
        cfg = cls()
        for section in (cfg.execution, cfg.workflow, cfg.nipype, cfg.seeds):
            names = {f.name for f in dc.fields(section)}
            for key, value in options.items():
                if key in names and value is not None:
                    setattr(section, key, value)
        if options.get('seed') is not None:
            cfg.seeds.master = int(options['seed'])
        return cfg

    def to_dict(self) -> dict:
        return dc.asdict(self)

    def dumps(self) -> str:
        return tomli_w.dumps(_drop_none(self.to_dict()))

    @classmethod
    def loads(cls, text: str) -> Config:
        data = tomllib.loads(text)
        return cls(
            execution=Execution(**data.get('execution', {})),
            workflow=Workflow(**data.get('workflow', {})),
            nipype=Nipype(**data.get('nipype', {})),
            seeds=Seeds(**data.get('seeds', {})),
        )

    def to_filename(self, path: str | Path) -> Path:
        from .bids.derivatives import write_text_atomic

        path = Path(path)
        write_text_atomic(self.dumps(), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.loads(Path(path).read_text())


def _drop_none(obj):
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
