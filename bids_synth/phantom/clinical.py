"""The clinical story of a phantom cohort: coherent variables, longitudinal sessions, notes.

Diagnosis drives the rest: AD patients are older on average, carry more APOE4 alleles, are more
often amyloid-positive (APOE4 raises the odds further) and score lower on the MMSE (which also
falls with age and rises with education). A latent disease severity in [0, 1] links the clinical
values to the image effects and progresses between sessions for MCI and AD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ['Subject', 'Visit', 'draw_subject', 'clinical_note', 'PARTICIPANTS_JSON', 'COLUMNS']

COLUMNS = ('participant_id', 'age', 'sex', 'education_years', 'apoe4', 'mmse', 'diagnosis',
           'amyloid', 'clinical_notes')

PARTICIPANTS_JSON = {
    'age': {'Description': 'Age at the first (or only) session', 'Units': 'year'},
    'sex': {'Description': 'Sex', 'Levels': {'M': 'male', 'F': 'female'}},
    'education_years': {'Description': 'Years of formal education', 'Units': 'year'},
    'apoe4': {
        'Description': 'Number of APOE epsilon-4 alleles',
        'Levels': {'0': 'no e4 allele', '1': 'one e4 allele', '2': 'two e4 alleles'},
    },
    'mmse': {
        'Description': 'Mini-Mental State Examination total score at the first session (0-30)',
        'Units': 'score',
    },
    'diagnosis': {
        'Description': 'Clinical diagnosis at the first session',
        'Levels': {'CN': 'cognitively normal', 'MCI': 'mild cognitive impairment',
                   'AD': "Alzheimer's disease dementia"},
    },
    'amyloid': {
        'Description': 'Amyloid status (PET or CSF read)',
        'Levels': {'positive': 'amyloid-positive', 'negative': 'amyloid-negative'},
    },
    'clinical_notes': {'Description': 'Free-text clinical note written at the first session'},
}

_DX = ('CN', 'MCI', 'AD')
_DX_P = (0.4, 0.35, 0.25)
_APOE_P = {'CN': (0.72, 0.25, 0.03), 'MCI': (0.5, 0.4, 0.1), 'AD': (0.35, 0.45, 0.2)}
_AMY_LOGIT = {'CN': -1.4, 'MCI': 0.0, 'AD': 1.8}
_SEVERITY = {'CN': (0.0, 0.03), 'MCI': (0.3, 0.08), 'AD': (0.7, 0.12)}


@dataclass
class Visit:
    """One session: label (None when the cohort is cross-sectional), age, MMSE, severity."""

    session: str | None
    age: float
    mmse: int
    severity: float


@dataclass
class Subject:
    """True clinical values of one phantom subject (nothing missing here)."""

    label: str
    sex: str
    age: float
    education_years: int
    apoe4: int
    diagnosis: str
    amyloid: bool
    severity: float
    head_scale: float
    visits: list[Visit] = field(default_factory=list)

    @property
    def mmse(self) -> int:
        return self.visits[0].mmse


def _mmse(rng, diagnosis: str, age: float, education: float, severity: float) -> int:
    base = {'CN': 29.0, 'MCI': 27.0, 'AD': 24.5}[diagnosis]
    score = (base - 10.0 * max(severity - 0.6, 0.0) - 0.06 * (age - 70)
             + 0.15 * (education - 14) + rng.normal(0, 0.8 if diagnosis == 'CN' else 1.5))
    hi = {'CN': 30, 'MCI': 30, 'AD': 27}[diagnosis]
    lo = {'CN': 25, 'MCI': 21, 'AD': 8}[diagnosis]
    return int(np.clip(round(score), lo, hi))


def draw_subject(rng: np.random.Generator, label: str, n_sessions: int) -> Subject:
    """Draw one coherent subject with ``n_sessions`` visits 1-2 years apart."""
    dx = str(rng.choice(_DX, p=_DX_P))
    sex = 'M' if rng.random() < 0.5 else 'F'
    age = float(np.clip(rng.normal({'CN': 70, 'MCI': 73, 'AD': 75}[dx], 7), 55, 90))
    edu = int(np.clip(round(rng.normal(16 - (dx == 'AD'), 2.8)), 6, 22))
    apoe4 = int(rng.choice(3, p=_APOE_P[dx]))
    logit = _AMY_LOGIT[dx] + 1.2 * apoe4 + 0.03 * (age - 70)
    amyloid = bool(rng.random() < 1 / (1 + np.exp(-logit)))
    mu, sd = _SEVERITY[dx]
    sev = float(np.clip(rng.normal(mu, sd) + (0.05 if amyloid and dx != 'CN' else 0.0), 0, 0.95))
    # intracranial size: men ~8% larger volume, i.e. ~2.6% linear (plus individual spread)
    head = float(rng.normal(1.03 if sex == 'M' else 1.0, 0.025))
    subj = Subject(label, sex, round(age, 1), edu, apoe4, dx, amyloid, sev, head)
    rate = {'CN': 0.0, 'MCI': 0.06, 'AD': 0.1}[dx] * (1.3 if amyloid else 0.8)
    t = 0.0
    for k in range(n_sessions):
        if k:
            t += float(rng.uniform(1.0, 2.0))
        s = float(min(sev + rate * t, 1.0))
        visit_age = round(age + t, 1)
        mm = _mmse(rng, dx, visit_age, edu, s) if k == 0 else min(
            subj.visits[-1].mmse, _mmse(rng, dx, visit_age, edu, s) + 1)
        subj.visits.append(Visit(f'{k + 1}' if n_sessions > 1 else None, visit_age, mm, s))
    return subj


_OPEN = (
    '{age:.0f}-year-old {sexw} seen in the memory clinic.',
    '{Sexw}, aged {age:.0f}, referred for cognitive assessment.',
    'Patient is a {age:.0f} y/o {sexw}.',
    '{age:.0f}-year-old {sexw} enrolled as a study participant.',
)
_EDU = (
    '{edu} years of formal education.',
    'Education: {edu} years.',
    'Completed {edu} years of schooling.',
)
_DXT = {
    'CN': ('No objective cognitive impairment; classified as cognitively normal.',
           'Cognition within normal limits for age (CN).',
           'Neuropsychological testing unremarkable; diagnosis: cognitively normal.'),
    'MCI': ('Memory complaints corroborated by testing, daily activities preserved: mild '
            'cognitive impairment.',
            'Diagnosis: MCI (amnestic presentation).',
            'Findings consistent with mild cognitive impairment; independent in daily life.'),
    'AD': ("Progressive memory loss with functional decline; meets criteria for Alzheimer's "
           'disease dementia.',
           "Diagnosis: probable Alzheimer's disease (AD).",
           "Clinical picture of Alzheimer's dementia, needs help with complex tasks."),
}
_MMSE = ('MMSE {mmse}/30.', 'Mini-Mental State Examination score {mmse} of 30.',
         'Scored {mmse}/30 on the MMSE.')
_APOE = {
    0: ('APOE genotype: no e4 allele.', 'APOE4 non-carrier.'),
    1: ('Heterozygous APOE e4 carrier (one allele).', 'APOE4: one copy.'),
    2: ('Homozygous for APOE e4 (two alleles).', 'APOE4: two copies (e4/e4).'),
}
_AMY = {
    True: ('Amyloid PET read as positive.', 'Elevated amyloid burden (amyloid-positive).'),
    False: ('Amyloid PET negative.', 'No significant amyloid deposition (amyloid-negative).'),
}
_NA = {
    'apoe4': ('APOE genotyping not available.', 'Genotype pending.'),
    'amyloid': ('Amyloid status unknown.', 'No amyloid biomarker on file.'),
    'mmse': ('MMSE not administered at this visit.', 'Cognitive screening score missing.'),
    'education_years': ('Education history not recorded.',),
}


def clinical_note(rng: np.random.Generator, subj: Subject, known: dict) -> str:
    """Free-text note that agrees with the recorded values (and says what is unknown).

    ``known`` maps column names to the recorded value or ``None`` when it is ``n/a``.
    """
    def pick(options):
        return options[int(rng.integers(len(options)))]

    sexw = 'man' if subj.sex == 'M' else 'woman'
    parts = [pick(_OPEN).format(age=subj.age, sexw=sexw, Sexw=sexw.capitalize())]
    optional = []
    if known.get('education_years') is None:
        optional.append(pick(_NA['education_years']))
    else:
        optional.append(pick(_EDU).format(edu=known['education_years']))
    parts.append(pick(_DXT[subj.diagnosis]))
    if known.get('mmse') is None:
        optional.append(pick(_NA['mmse']))
    else:
        optional.append(pick(_MMSE).format(mmse=known['mmse']))
    optional.append(pick(_APOE[known['apoe4']]) if known.get('apoe4') is not None
                    else pick(_NA['apoe4']))
    optional.append(pick(_AMY[known['amyloid'] == 'positive'])
                    if known.get('amyloid') is not None else pick(_NA['amyloid']))
    order = rng.permutation(len(optional))
    return ' '.join(parts + [optional[i] for i in order])
