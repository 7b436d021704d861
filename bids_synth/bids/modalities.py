"""The modality registry: the one place that knows BIDS suffixes and model representations.

Every other module asks this registry how a modality is found in a BIDS dataset (datatype,
suffix, extra entities such as the tracer) and how it is represented for the models (number and
names of channels, intensity convention). Nothing else hard-codes suffixes.

>>> MODALITIES['FDG'].query()['tracer']
['FDG', '18FFDG', 'fluorodeoxyglucose']
>>> MODALITIES['dwi'].channels[:7]
('b0', 'seg1', 'seg2', 'seg3', 'seg4', 'fa', 'md')
>>> MODALITIES['dwi'].channels[7:]
('logdxx', 'logdxy', 'logdxz', 'logdyy', 'logdyz', 'logdzz')
>>> MODALITIES['bold'].channels
('seg1', 'seg2', 'seg3', 'seg4', 'alff', 'falff', 'reho')
>>> resolve_modalities(['t2w', 'FLAIR'])
('T2w', 'FLAIR')
>>> from_bids_entities({'datatype': 'pet', 'suffix': 'pet', 'tracer': 'florbetapir'})
'AV45'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    'MODALITIES',
    'Modality',
    'UnknownModalityError',
    'from_bids_entities',
    'resolve_modalities',
    'BOLD_SEGMENTS',
    'DWI_SEGMENTS',
    'TENSOR_CHANNELS',
]

#: Number of time segments a bold run is split into (PDS).
BOLD_SEGMENTS = 4
#: Number of gradient segments the diffusion-weighted volumes are split into (PDS).
DWI_SEGMENTS = 4
#: dwi channels holding the log-Euclidean diffusion tensor (``preprocessing.tensor``): the
#: unique elements of logm(D / 1e-3 mm^2/s) in world (RAS+) axes, order xx xy xz yy yz zz.
TENSOR_CHANNELS = tuple(f'logd{e}' for e in ('xx', 'xy', 'xz', 'yy', 'yz', 'zz'))


class UnknownModalityError(ValueError):
    """A modality name that the registry does not know."""


@dataclass(frozen=True)
class Modality:
    """How one modality is found in BIDS and represented for the models.

    Attributes
    ----------
    name : str
        Registry key, also the name used on the command line (``--modalities``).
    family : str
        ``'smri'``, ``'pet'``, ``'fmri'`` or ``'dmri'``.
    datatype : str
        BIDS datatype folder (``anat``, ``pet``, ``func``, ``dwi``).
    suffix : str
        BIDS suffix.
    entities : dict
        Extra pybids query entities (e.g. ``{'tracer': [...]}`` for PET tracers, with aliases).
    channels : tuple of str
        Names of the channels of the model representation (one for sMRI and PET).
    description : str
        What the representation holds (written into sidecars and model cards).
    """

    name: str
    family: str
    datatype: str
    suffix: str
    entities: dict = field(default_factory=dict)
    channels: tuple[str, ...] = ('intensity',)
    description: str = ''
    #: entities that must be absent (e.g. plain T1w excludes contrast-enhanced T1w).
    absent: tuple[str, ...] = ()

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def query(self) -> dict:
        """pybids ``BIDSLayout.get`` keyword arguments that find this modality's raw images."""
        q = {'datatype': self.datatype, 'suffix': self.suffix, 'extension': ['.nii', '.nii.gz']}
        q.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.entities.items()})
        for ent in self.absent:
            q.setdefault(ent, None)  # pybids: None means "entity must be absent"
        return q

    @property
    def derivative_entities(self) -> dict:
        """Entities the synthesized file keeps (PET keeps ``trc-``, bold keeps ``task-``)."""
        if self.family == 'pet':
            return {'tracer': self.entities['tracer'][0]}
        if self.family == 'fmri':
            return {'task': 'rest'}
        if self.name == 'T1wCE':
            return {'ceagent': 'gadolinium'}
        return {}


_SMRI = 'one channel, intensity divided by the 99th percentile inside the brain mask'
_PET = ('one channel: static image (mean of the frames in the late window) as SUVR, divided by '
        'the mean uptake in the reference region')

MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality('T1w', 'smri', 'anat', 'T1w', description=_SMRI, absent=('ceagent',)),
        Modality('T2w', 'smri', 'anat', 'T2w', description=_SMRI),
        Modality('FLAIR', 'smri', 'anat', 'FLAIR', description=_SMRI),
        Modality(
            'T1wCE', 'smri', 'anat', 'T1w',
            entities={'ceagent': ('gadolinium', 'Gd', 'gadolinium-based')},
            description=_SMRI,
        ),
        Modality(
            'FDG', 'pet', 'pet', 'pet',
            entities={'tracer': ('FDG', '18FFDG', 'fluorodeoxyglucose')},
            description=_PET + ' (pons-free reference: cerebellar grey matter)',
        ),
        Modality(
            'AV45', 'pet', 'pet', 'pet',
            entities={'tracer': ('AV45', 'florbetapir', '18FAV45', 'FBP')},
            description=_PET + ' (reference: whole cerebellum)',
        ),
        Modality(
            'bold', 'fmri', 'func', 'bold',
            entities={'task': 'rest'},
            channels=tuple(f'seg{i + 1}' for i in range(BOLD_SEGMENTS))
            + ('alff', 'falff', 'reho'),
            description=(f'{BOLD_SEGMENTS} segment-wise temporal means of the run (PDS time '
                         'segments), then ALFF and fALFF (0.01-0.08 Hz) and ReHo (Kendall\'s '
                         'W over the 27-voxel neighbourhood) of the whole run; segment means '
                         'and ALFF divided by the 99th percentile of the first segment inside '
                         'the brain mask, fALFF and ReHo as they are (0-1)'),
        ),
        Modality(
            'dwi', 'dmri', 'dwi', 'dwi',
            channels=('b0',) + tuple(f'seg{i + 1}' for i in range(DWI_SEGMENTS))
            + ('fa', 'md') + TENSOR_CHANNELS,
            description=(f'mean b=0 volume (S0), means of the diffusion-weighted volumes in '
                         f'{DWI_SEGMENTS} gradient segments (acquisition order), tensor FA and '
                         'MD (MD in 10^-3 mm^2/s), then the 6 unique elements (xx xy xz yy yz '
                         'zz, world RAS+ axes) of the log-Euclidean diffusion tensor '
                         'logm(D / 10^-3 mm^2/s); b0 and segment means divided by the 99th '
                         'percentile of b0 inside the brain mask'),
        ),
    )
}

#: Modalities the default model and the phantom cover, in canonical order.
DEFAULT_TARGETS = ('T1w', 'T2w', 'FLAIR', 'FDG', 'AV45', 'bold', 'dwi')

_LOWER = {k.lower(): k for k in MODALITIES}
_ALIASES = {'fdg-pet': 'FDG', 'av45-pet': 'AV45', 'flair': 'FLAIR', 'dmri': 'dwi', 'fmri': 'bold'}


def resolve_modalities(names: Iterable[str]) -> tuple[str, ...]:
    """Map user-given names (any case, a few aliases) to registry keys, keeping order.

    Raises
    ------
    UnknownModalityError
        If a name is not a known modality; the message lists the known ones.
    """
    out = []
    for raw in names:
        key = _LOWER.get(raw.lower()) or _ALIASES.get(raw.lower())
        if key is None:
            raise UnknownModalityError(
                f'unknown modality {raw!r}; known: {", ".join(MODALITIES)}'
            )
        if key not in out:
            out.append(key)
    return tuple(out)


def from_bids_entities(entities: dict) -> str | None:
    """Which registry modality a file with these BIDS entities is (``None`` if none)."""
    for mod in MODALITIES.values():
        if entities.get('datatype') not in (None, mod.datatype):
            continue
        if entities.get('suffix') != mod.suffix:
            continue
        ok = True
        for key, allowed in mod.entities.items():
            if key == 'task':
                continue  # any task of a bold run is accepted; rest is preferred by the query
            allowed = allowed if isinstance(allowed, tuple) else (allowed,)
            value = entities.get(key)
            if value is None or str(value).lower() not in {a.lower() for a in allowed}:
                ok = False
                break
        if ok and any(entities.get(a) for a in mod.absent):
            ok = False
        if ok:
            return mod.name
    return None
