"""participants.tsv / participants.json / sessions.tsv -> typed clinical table (bids.clinical)."""

from __future__ import annotations

import json
import logging
import math

import pytest

from bids_synth import errors
from bids_synth.bids.clinical import load_clinical

PARTICIPANTS = (
    'participant_id\tage\tsex\tdiagnosis\tapoe4\tmmse\tclinical_notes\n'
    'sub-01\t71.5\tF\tAD\t1\t22\tforgets appointments, lost twice while driving\n'
    'sub-02\t68\tM\tCN\t0\tn/a\tn/a\n'
    'sub-03\tn/a\tF\tMCI\t2\t27\t\n'
    'sub-04\t80\t\tCN\t0\t29\tno complaints\n'
)
DICTIONARY = {
    'age': {'Description': 'age at baseline', 'Units': 'year'},
    'sex': {'Description': 'sex', 'Levels': {'F': 'female', 'M': 'male'}},
    'apoe4': {'Description': 'APOE e4 allele count', 'Levels': {'0': 'none', '1': 'one',
                                                                 '2': 'two'}},
    'mmse': {'Description': 'Mini-Mental State Examination', 'Units': 'points'},
}


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / 'participants.tsv').write_text(PARTICIPANTS)
    (tmp_path / 'participants.json').write_text(json.dumps(DICTIONARY))
    (tmp_path / 'sub-01').mkdir()
    (tmp_path / 'sub-01' / 'sub-01_sessions.tsv').write_text(
        'session_id\tacq_time\tage\tmmse\n'
        'ses-1\t2020-01-01T10:00:00\t71.5\tn/a\n'
        'ses-2\t2022-01-01T10:00:00\t73.5\t19\n'
    )
    return tmp_path


def test_types_and_values(dataset):
    table = load_clinical(dataset)
    assert table.columns == ('age', 'sex', 'diagnosis', 'apoe4', 'mmse', 'clinical_notes')
    assert table.types == {'age': 'continuous', 'sex': 'categorical',
                           'diagnosis': 'categorical', 'apoe4': 'categorical',
                           'mmse': 'continuous', 'clinical_notes': 'text'}
    assert str(table.frame['age'].dtype) == 'float64'
    assert table.frame.loc['01', 'age'] == 71.5
    assert table.for_session('02', None) == {
        'age': 68.0, 'sex': 'M', 'diagnosis': 'CN', 'apoe4': '0', 'mmse': None,
        'clinical_notes': None}
    row = table.for_session('sub-04', None)
    assert row['sex'] is None and row['clinical_notes'] == 'no complaints'
    assert isinstance(row['age'], float) and isinstance(row['apoe4'], str)


def test_missing_mask(dataset):
    table = load_clinical(dataset)
    mask = table.missing
    assert mask.loc['02', 'mmse'] and mask.loc['03', 'age'] and mask.loc['04', 'sex']
    assert mask.loc['03', 'clinical_notes']  # an empty cell is missing too
    assert not mask.loc['01'].any()
    assert int(mask.to_numpy().sum()) == 5  # 02 mmse+notes, 03 age+notes, 04 sex
    assert math.isnan(table.frame.loc['03', 'age'])


def test_schema_levels_units_stats(dataset):
    schema = load_clinical(dataset).schema()
    assert schema['sex'] == {'type': 'categorical', 'levels': ['F', 'M'], 'description': 'sex'}
    assert schema['apoe4']['levels'] == ['0', '1', '2']
    assert schema['diagnosis']['levels'] == ['AD', 'CN', 'MCI']
    age = schema['age']
    assert age['type'] == 'continuous' and age['units'] == 'year'
    assert age['description'] == 'age at baseline'
    # participant ages 71.5, 68, 80 and session ages 71.5, 73.5
    values = [71.5, 68, 80, 71.5, 73.5]
    mean = sum(values) / len(values)
    assert age['mean'] == pytest.approx(mean)
    assert age['std'] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 5))
    assert schema['clinical_notes'] == {'type': 'text', 'description': None}


def test_sessions_override(dataset):
    table = load_clinical(dataset)
    assert table.for_session('01', '2')['age'] == 73.5
    assert table.for_session('01', 'ses-2')['mmse'] == 19.0
    # n/a in the session keeps the participant's value
    assert table.for_session('01', '1')['mmse'] == 22.0
    assert table.for_session('01', None)['age'] == 71.5
    assert table.for_session('99', None) == dict.fromkeys(table.columns)


def test_column_selection(dataset):
    table = load_clinical(dataset, columns=['mmse', 'age'])
    assert table.columns == ('mmse', 'age')
    assert table.for_session('01', '2') == {'mmse': 19.0, 'age': 73.5}
    with pytest.raises(errors.UsageError, match='weight') as info:
        load_clinical(dataset, columns=['age', 'weight'])
    assert info.value.exit_code == 64


def test_types_without_dictionary(tmp_path):
    notes = '\t'.join(f'long free text number {i} ' * 3 for i in range(15))
    rows = [f'sub-{i:02d}\t{60 + i}\t{"ab"[i % 2]}\t{notes.split(chr(9))[i]}' for i in range(15)]
    (tmp_path / 'participants.tsv').write_text(
        'participant_id\tage\tgroup\tdescription_free\n' + '\n'.join(rows) + '\n')
    table = load_clinical(tmp_path)
    assert table.types == {'age': 'continuous', 'group': 'categorical',
                           'description_free': 'text'}
    assert table.schema()['group']['levels'] == ['a', 'b']


@pytest.mark.parametrize(('text', 'line', 'what', 'bad'), [
    ('participant_id\tage\nsub-01\t70\nsub-02\t71\t5\n', 3, 'row has 3 fields', '02'),
    ('participant_id\tage\nsub-01\t70\nsub-02\t71\n02\t72\n', 4, 'duplicate participant_id',
     '02'),
    ('participant_id\tage\nsub-01\t70\nn/a\t70\n', 3, 'empty participant_id', None),
])
def test_malformed_rows_skip_only_their_subject(tmp_path, text, line, what, bad):
    """A bad row is one problem line; the other rows stay usable (issue 12, case 7)."""
    (tmp_path / 'participants.tsv').write_text(text)
    table = load_clinical(tmp_path)
    (message,) = table.problems
    assert message.startswith(f'{tmp_path / "participants.tsv"}:{line}: ') and what in message
    assert not table.is_bad('01', None) and table.for_session('01', None) == {'age': 70.0}
    if bad:
        assert table.is_bad(bad, None) and f'sub-{bad} skipped' in message


def test_missing_key_column_is_fatal(tmp_path):
    (tmp_path / 'participants.tsv').write_text('subject\tage\nsub-01\t70\n')
    with pytest.raises(errors.ClinicalTableError) as info:
        load_clinical(tmp_path)
    assert str(info.value).startswith(f'{tmp_path / "participants.tsv"}:1: no participant_id')
    assert info.value.exit_code == 65


def test_duplicate_names_first_line(tmp_path):
    (tmp_path / 'participants.tsv').write_text(
        'participant_id\tage\nsub-01\t70\nsub-02\t71\nsub-01\t72\n')
    (message,) = load_clinical(tmp_path).problems
    assert ':4: ' in message and 'sub-01 (first on line 2)' in message


@pytest.mark.parametrize(('cell', 'column', 'what'), [
    ('seventy', 'age', "'seventy' is not a number (Units \"year\" in participants.json)"),
    ('U', 'sex', "'U' is not one of the Levels in participants.json (M, F)"),
])
def test_values_checked_against_participants_json(tmp_path, cell, column, what):
    """Issue 12, cases 3 and 4: never retyped, never accepted silently; one line per cell."""
    rows = {'age': ['70', '71', '72'], 'sex': ['M', 'F', 'M']}
    rows[column][1] = cell
    (tmp_path / 'participants.tsv').write_text('participant_id\tage\tsex\n' + ''.join(
        f'sub-0{i + 1}\t{rows["age"][i]}\t{rows["sex"][i]}\n' for i in range(3)))
    (tmp_path / 'participants.json').write_text(
        '{"age": {"Units": "year"}, "sex": {"Levels": {"M": "male", "F": "female"}}}')
    table = load_clinical(tmp_path)
    assert table.types == {'age': 'continuous', 'sex': 'categorical'}
    (message,) = table.problems
    assert message == (f'{tmp_path / "participants.tsv"}:3: column {column!r}: {what} '
                       '(sub-02 skipped)')
    assert table.is_bad('02', None) and not table.is_bad('01', None)


def test_values_checked_against_the_model_card(tmp_path):
    (tmp_path / 'participants.tsv').write_text(
        'participant_id\tage\tsex\tsite\nsub-01\t70\tM\tX\nsub-02\t71\tO\tY\n')
    schema = {'age': {'type': 'continuous', 'units': 'year'},
              'sex': {'type': 'categorical', 'levels': ['M', 'F']}}
    table = load_clinical(tmp_path, schema=schema)
    (message,) = table.problems  # site is not the model's: not checked
    assert ":3: column 'sex': 'O' is not a level the model knows (M, F)" in message
    (tmp_path / 'participants.json').write_text('{"age": {"Units": "months"}}')
    with pytest.raises(errors.ClinicalTableError, match="'age' is in 'months' but the model"):
        load_clinical(tmp_path, schema=schema)
    (tmp_path / 'participants.json').write_text('{"age": {"Levels": {"70": "a", "71": "b"}}}')
    with pytest.raises(errors.ClinicalTableError, match="'age' is categorical"):
        load_clinical(tmp_path, schema=schema)


def test_malformed_json_and_sessions(tmp_path):
    (tmp_path / 'participants.tsv').write_text('participant_id\tage\nsub-01\t70\n')
    (tmp_path / 'participants.json').write_text('{\n  "age": {"Units": "year",}\n}\n')
    with pytest.raises(errors.ClinicalTableError, match=r'participants\.json:2: invalid JSON'):
        load_clinical(tmp_path)
    (tmp_path / 'participants.json').unlink()
    (tmp_path / 'sub-01').mkdir()
    sessions = tmp_path / 'sub-01' / 'sub-01_sessions.tsv'
    sessions.write_text('session_id\tage\nses-1\t70\nses-2\n')
    table = load_clinical(tmp_path)  # one subject's sessions file: one row reported, skipped
    (problem,) = table.problems
    assert problem.startswith(f'{sessions}:3: row has 1 fields') and 'ses-2 skipped' in problem
    assert table.for_session('01', '1') == {'age': 70.0}
    assert table.is_bad('01', '2') and not table.is_bad('01', '1')


def test_no_participants_file(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger='bids_synth.bids.clinical'):
        table = load_clinical(tmp_path)
    assert len(table) == 0 and table.columns == () and table.schema() == {}
    assert table.for_session('01', None) == {}
    assert 'participants.tsv' in caplog.text


def test_a_whole_column_coded_otherwise_is_one_fatal_line(tmp_path):
    """sex coded 0/1 for a model that knows M/F: not a typo per row, a coding mismatch."""
    (tmp_path / 'participants.tsv').write_text(
        'participant_id\tsex\nsub-01\t0\nsub-02\t1\nsub-03\t1\n')
    schema = {'sex': {'type': 'categorical', 'levels': ['M', 'F']}}
    with pytest.raises(errors.ClinicalTableError) as info:
        load_clinical(tmp_path, schema=schema)
    assert str(info.value).startswith(f"{tmp_path / 'participants.tsv'}: column 'sex': none of")
    assert '--clinical-columns' in str(info.value) and info.value.exit_code == 65
