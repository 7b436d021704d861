"""Clinical-value imputation: the tabular head (models.tabular), its storage, and the
participant level (imputed cells marked in <out>/participants.tsv, used by the synthesis, the
input never written)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bids_synth.errors import ModelError
from bids_synth.models.copula import CopulaGenerator
from bids_synth.models.tabular import ClinicalHead, TabularModel, load_tabular

SCHEMA = {
    'age': {'type': 'continuous'},
    'mmse': {'type': 'continuous'},
    'dx': {'type': 'categorical', 'levels': ['CN', 'MCI', 'AD']},
    'notes': {'type': 'text'},
}


def _table(n, seed):
    """Rows where the image feature (a severity) drives dx and mmse; age is noise-coupled."""
    rng = np.random.default_rng(seed)
    sev = rng.uniform(0, 1, n)
    dx = np.where(sev < 0.35, 'CN', np.where(sev < 0.7, 'MCI', 'AD'))
    age = 70 + 8 * sev + rng.normal(0, 3, n)
    mmse = np.round(30 - 8 * sev + rng.normal(0, 0.7, n))
    rows = [{'age': float(a), 'mmse': float(m), 'dx': str(d), 'notes': None}
            for a, m, d in zip(age, mmse, dx)]
    feats = np.stack([sev + rng.normal(0, 0.05, n), rng.normal(0, 1, n)], 1)
    return rows, feats


def test_head_uses_the_images_and_beats_the_mean():
    rows, feats = _table(60, 0)
    test_rows, test_feats = _table(40, 1)
    head = ClinicalHead.fit(rows, feats, SCHEMA, seed=0)
    table_only = ClinicalHead.fit(rows, feats, SCHEMA, seed=0, use_images=False)
    assert set(head.columns) == {'age', 'mmse', 'dx'}  # text is never predicted
    err, err_tab, err_mean, hits, hits_tab = [], [], [], 0, 0
    mean = np.mean([r['mmse'] for r in rows])
    for row, f in zip(test_rows, test_feats):
        hidden = dict(row, mmse=None, dx=None)
        pred = head.predict(hidden, f)
        pred_tab = table_only.predict(hidden, None)
        assert set(pred) == {'mmse', 'dx'}
        err.append(abs(pred['mmse']['mean'] - row['mmse']))
        err_tab.append(abs(pred_tab['mmse']['mean'] - row['mmse']))
        err_mean.append(abs(mean - row['mmse']))
        probs = pred['dx']['probabilities']
        assert abs(sum(probs.values()) - 1) < 1e-3 and pred['dx']['value'] == max(
            probs, key=probs.get)
        assert pred['mmse']['std'] > 0 and pred['mmse']['value'] == round(pred['mmse']['value'])
        hits += pred['dx']['value'] == row['dx']
        hits_tab += pred_tab['dx']['value'] == row['dx']
    assert np.mean(err) < 0.6 * np.mean(err_mean)
    assert np.mean(err) < np.mean(err_tab)
    assert hits > hits_tab and hits >= 0.7 * len(test_rows)


def test_tabular_storage_roundtrip_and_tamper(tmp_path, group_regression):
    out, _ = group_regression
    src = out / 'models' / 'regression'
    card = json.loads((src / 'model_card.json').read_text())
    assert card['tabular']['file'] == 'tabular.json' and 'mmse' in card['tabular']['columns']
    model = tmp_path / 'model'
    shutil.copytree(src, model)
    tab = load_tabular(model)
    assert isinstance(tab, TabularModel) and isinstance(tab.generator, CopulaGenerator)
    row = {'age': 75.0, 'sex': 'F', 'diagnosis': 'AD', 'mmse': None}
    feats = np.zeros(len(tab.features['names']))
    assert tab.head.predict(row, feats) == load_tabular(src).head.predict(row, feats)
    text = (model / 'tabular.json').read_text()
    (model / 'tabular.json').write_text(text.replace('"std"', '"std" ', 1))
    with pytest.raises(ModelError, match='sha256'):
        load_tabular(model)
    (model / 'tabular.json').write_text(text)
    # the image generator's file is checked the same way
    comp = model / card['tabular']['images']['file']
    raw = comp.read_bytes()
    comp.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(ModelError, match='sha256'):
        load_tabular(model)
    # a model fitted before the tabular head existed: no head, loads, nothing imputed
    card.pop('tabular')
    (model / 'model_card.json').write_text(json.dumps(card))
    assert load_tabular(model) is None


@pytest.fixture(scope='module')
def imputed_run(phantom6, group_regression, tmp_path_factory, digest):
    """participant on a copy of phantom6 where sub-002's mmse and diagnosis are n/a."""
    from bids_synth.cli.run import main

    root = tmp_path_factory.mktemp('impute')
    bids = root / 'bids'
    shutil.copytree(phantom6.bids_dir, bids)
    lines = (bids / 'participants.tsv').read_text().splitlines()
    header = lines[0].split('\t')
    for i, line in enumerate(lines):
        cells = line.split('\t')
        if cells[0] == 'sub-002':
            for col in ('mmse', 'diagnosis'):
                cells[header.index(col)] = 'n/a'
            lines[i] = '\t'.join(cells)
    (bids / 'participants.tsv').write_text('\n'.join(lines) + '\n')
    before = digest(bids)
    model = group_regression[0] / 'models' / 'regression'
    missing = phantom6.missing[('002', None)]
    code = main([str(bids), str(root / 'out'), 'participant', '--participant-label', '002',
                 '--model', str(model), '-w', str(root / 'work'), '--nprocs', '2',
                 '--omp-nthreads', '1', '--skip-bids-validation', '--no-reports',
                 '--modalities', missing[0]])
    return {'code': code, 'bids': bids, 'out': root / 'out', 'before': before,
            'model': model, 'target': missing[0], 'header': header, 'lines': lines}


def test_imputed_cells_marked_and_input_untouched(imputed_run, digest):
    assert imputed_run['code'] == 0
    assert digest(imputed_run['bids']) == imputed_run['before']
    out = imputed_run['out']
    header = imputed_run['header']
    rows = [ln.split('\t') for ln in (out / 'participants.tsv').read_text().splitlines()]
    assert rows[0] == header
    given = [ln.split('\t') for ln in imputed_run['lines']]
    for got, src in zip(rows[1:], given[1:]):
        for col, a, b in zip(header, got, src):
            if got[0] == 'sub-002' and col in ('mmse', 'diagnosis'):
                assert b == 'n/a' and a != 'n/a'
            else:
                assert a == b, (got[0], col)  # every other cell copied as it was
    side = json.loads((out / 'participants.json').read_text())
    cells = side['bids_synth']['ImputedCells']
    assert set(cells) == {'sub-002'} and set(cells['sub-002']) == {'mmse', 'diagnosis'}
    assert cells['sub-002']['mmse']['std'] > 0
    probs = cells['sub-002']['diagnosis']['probabilities']
    assert set(probs) == {'CN', 'MCI', 'AD'} and abs(sum(probs.values()) - 1) < 1e-3
    row = dict(zip(header, rows[[r[0] for r in rows].index('sub-002')]))
    assert row['diagnosis'] == cells['sub-002']['diagnosis']['value']
    assert float(row['mmse']) == cells['sub-002']['mmse']['value']
    assert 'imputed' in side['mmse']['Description'] or 'filled in' in side['mmse']['Description']


def test_synthesis_used_the_imputed_values(imputed_run):
    """The written image is the model's prediction with the imputed values, and differs from
    the prediction without them (the imputed value changes the image)."""
    from bids_synth.bids.derivatives import synth_path
    from bids_synth.models.baseline import RegressionImputer
    from bids_synth.models.imputer import SessionArrays
    from bids_synth.preprocessing.conform import load_conformed

    out, target = imputed_run['out'], imputed_run['target']
    # main file: its first volume is channel 0 (bold: seg1; dwi: the b=0 volume, S0 = b0)
    path = synth_path(out, subject='002', session=None, modality=target,
                      space='MNI152NLin2009aSym', res=4)
    side = json.loads(path.with_name(path.name.replace('.nii.gz', '.json')).read_text())
    prov = side['bids_synth']
    assert set(prov['clinical_imputed']) == {'mmse', 'diagnosis'}
    assert prov['clinical_used']['diagnosis'] == prov['clinical_imputed']['diagnosis']['value']
    model = RegressionImputer.load(imputed_run['model'])
    work = imputed_run['out'].parent / 'work'
    images = {}
    for f in work.rglob('*_conformed.nii.gz'):
        mod = f.name.split('_conformed')[0]
        if 'conform_' in str(f.parent) and mod in prov['inputs_used']:
            images[mod] = load_conformed(f)
    assert set(images) == set(prov['inputs_used'])
    used = dict(prov['clinical_used'])
    with_imputed = model.predict(SessionArrays('002', None, images, used), (target,))
    without = model.predict(SessionArrays('002', None, images,
                                          dict(used, mmse=None, diagnosis=None)), (target,))
    written = load_conformed(path)
    mask = model.mask
    a, b = with_imputed[target].mean[0][mask], without[target].mean[0][mask]
    effect = np.abs(a - b).max()
    assert effect > 1e-4  # the imputed values change the image
    # ... and the written image is the one made with them
    assert np.abs(written[0][mask] - a).max() < 0.02 * effect


def test_no_impute_clinical_option(imputed_run, tmp_path):
    """--no-impute-clinical (and a model without a head) impute nothing."""
    from bids_synth.cli.parser import parse_args
    from bids_synth.cli.run import _impute_columns
    from bids_synth.config import Config

    card = json.loads((imputed_run['model'] / 'model_card.json').read_text())
    argv = [str(imputed_run['bids']), str(tmp_path / 'out'), 'participant']
    on = Config.from_options(parse_args(argv))
    off = Config.from_options(parse_args(argv + ['--no-impute-clinical']))
    assert 'mmse' in _impute_columns(on, card)
    assert _impute_columns(off, card) == []
    assert _impute_columns(on, {k: v for k, v in card.items() if k != 'tabular'}) == []


def test_ordinal_level_predicted_when_rare_in_training():
    """An ordered column (levels as participants.json lists them) whose middle level is rare in
    training (2 of 24 rows), predicted from 60 image-like features that all follow a severity
    (as the regional means do): the ordinal model wins on cross-validated log loss and
    predicts the middle level that a multinomial head, having seen it twice, would not."""
    rng = np.random.default_rng(1)
    loading = rng.normal(0, 1, 60)

    def table(sev):
        dx = np.where(sev < 0.4, 'CN', np.where(sev < 0.6, 'MCI', 'AD'))
        rows = [{'age': float(70 + rng.normal(0, 3)), 'dx': str(d)} for d in dx]
        return rows, sev[:, None] * loading[None] + rng.normal(0, 0.3, (len(sev), 60))

    schema = {'age': {'type': 'continuous'},
              'dx': {'type': 'categorical', 'levels': ['CN', 'MCI', 'AD']}}
    sev = np.concatenate([rng.uniform(0, 0.4, 14), rng.uniform(0.4, 0.6, 2),
                          rng.uniform(0.6, 1, 8)])
    rows, feats = table(sev)
    head = ClinicalHead.fit(rows, feats, schema, seed=0)
    assert head.models['dx']['kind'] == 'ordinal'
    assert head.models['dx']['multinomial_cv_loss'] > 0
    test_rows, test_feats = table(np.linspace(0.44, 0.56, 8))  # all MCI
    hits = [head.predict(dict(r, dx=None), f)['dx']['value'] == 'MCI'
            for r, f in zip(test_rows, test_feats)]
    assert sum(hits) >= 6
    p = head.predict(dict(test_rows[0], dx=None), test_feats[0])['dx']['probabilities']
    assert abs(sum(p.values()) - 1) < 1e-3


def test_storage_keeps_the_column_order():
    """The head's features and the copula's correlation are in the schema's column order:
    serialized (even by a writer that sorts keys, as the first tabular.json files were) and
    read back, they predict and correlate the same, with columns not in alphabetical order."""
    rows, feats = _table(40, 4)
    schema = {'mmse': SCHEMA['mmse'], 'dx': SCHEMA['dx'], 'age': SCHEMA['age']}
    head = ClinicalHead.fit(rows, feats, schema, seed=0)
    gen = CopulaGenerator.fit(rows, schema, seed=0)
    back = ClinicalHead.from_dict(json.loads(json.dumps(head.to_dict(), sort_keys=True)))
    assert list(back.schema) == list(schema)
    for r, f in zip(rows[:5], feats[:5]):
        hidden = dict(r, mmse=None, dx=None)
        assert back.predict(hidden, f) == head.predict(hidden, f)
    gback = CopulaGenerator.from_dict(json.loads(json.dumps(gen.to_dict(), sort_keys=True)))
    assert list(gback.columns) == list(gen.columns)
    np.testing.assert_allclose(gback.corr, gen.corr)
