"""bids-synth-generate: whole synthetic subjects as a raw BIDS dataset (cli.generate), and the
copula row generator behind it (models.copula)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bids_synth.bids.validation import find_validator, validate_dataset
from bids_synth.cli.generate import main
from bids_synth.errors import UsageError
from bids_synth.models.copula import CopulaGenerator, parse_where


def _rows(path):
    lines = (path / 'participants.tsv').read_text().splitlines()
    header = lines[0].split('\t')
    return [dict(zip(header, ln.split('\t'))) for ln in lines[1:]]


@pytest.fixture(scope='module')
def model(group_regression):
    return group_regression[0] / 'models' / 'regression'


@pytest.fixture(scope='module')
def cohort(model, tmp_path_factory):
    out = tmp_path_factory.mktemp('gen') / 'synthetic'
    code = main([str(model), str(out), '--n-subjects', '3', '--seed', '7',
                 '--where', 'diagnosis=AD', 'age=70:90'])
    return code, out


def test_generated_dataset(cohort, model, digest):
    code, out = cohort
    assert code == 0
    rows = _rows(out)
    assert [r['participant_id'] for r in rows] == ['sub-synth001', 'sub-synth002',
                                                   'sub-synth003']
    for r in rows:  # --where respected
        assert r['diagnosis'] == 'AD' and 70 <= float(r['age']) <= 90
        assert r['clinical_notes'] == 'n/a'  # text is not generated
    card = json.loads((model / 'model_card.json').read_text())
    schema = json.loads((out / 'participants.json').read_text())
    assert set(schema) - {'participant_id'} == set(json.loads(
        (model / 'tabular.json').read_text())['info']['schema'])
    assert schema['diagnosis']['Levels'].keys() == set(card['clinical_schema']['diagnosis']
                                                       ['levels'])
    for r in rows:
        sub = r['participant_id']
        for rel in (f'anat/{sub}_T1w', f'anat/{sub}_FLAIR', f'pet/{sub}_trc-FDG_pet'):
            side = json.loads((out / sub / f'{rel}.json').read_text())
            prov = side['bids_synth']
            assert prov['synthetic'] is True and prov['model_sha256'] == card['sha256']
            assert prov['clinical_used']['diagnosis'] == 'AD'
            import nibabel as nib

            img = nib.load(out / sub / f'{rel}.nii.gz')
            data = np.asarray(img.dataobj)
            assert data.ndim == 3 and np.isfinite(data).all() and (data != 0).mean() > 0.05
    assert not list(out.parent.glob('.synthetic.tmp-*'))  # the temporary folder was renamed


@pytest.mark.skipif(find_validator() is None, reason='bids-validator-deno not installed')
def test_generated_dataset_passes_validator(cohort):
    result = validate_dataset(cohort[1])
    assert result.ran and result.ok, result.errors[:5]


def test_same_seed_same_cohort(cohort, model, tmp_path, digest):
    _, first = cohort
    again = tmp_path / 'again'
    assert main([str(model), str(again), '--n-subjects', '3', '--seed', '7',
                 '--where', 'diagnosis=AD', 'age=70:90']) == 0
    a, b = digest(first), digest(again)

    def strip(d, root):  # sidecars carry software versions only; images and table must match
        return {k: v for k, v in d.items() if not k.endswith('.json')}

    assert strip(a, first) == strip(b, again)
    other = tmp_path / 'other'
    assert main([str(model), str(other), '--n-subjects', '3', '--seed', '8']) == 0
    assert _rows(other) != _rows(first)


def test_images_follow_the_clinical_row(tmp_path):
    """Each written image is the tabular model's draw for the subject's written row
    (:meth:`TabularModel.subject_images` with the subject's seed, resampled), and the draws
    follow the row: with the embedded default (24 phantom subjects), FDG in the AD
    hypometabolism regions is lower for AD rows than for CN rows."""
    import nibabel as nib

    from bids_synth.cli.generate import generate
    from bids_synth.interfaces.provenance import derive_seed
    from bids_synth.models.loading import load_imputer
    from bids_synth.models.tabular import load_tabular
    from bids_synth.preprocessing.regions import region_mask
    from bids_synth.preprocessing.templates import load_template
    from bids_synth.workflows.base import default_model_dir

    model = load_imputer(default_model_dir())
    tab = load_tabular(default_model_dir())
    assert tab.components is not None and 'FDG' in tab.components.modalities
    tpl = load_template(4)
    roi = np.zeros(tpl.shape, bool)
    for name in ('posterior_cingulate', 'precuneus', 'temporoparietal'):
        roi |= region_mask(name, tpl.affine, tpl.shape)
    roi &= tpl.mask.astype(bool)
    fdg = {}
    for dx in ('CN', 'AD'):
        out = generate(default_model_dir(), tmp_path / dx, n_subjects=3, seed=3,
                       where=[f'diagnosis={dx}'], modalities=['FDG'], progress=False)
        for row in _rows(out):
            sub = row['participant_id']
            side = json.loads((out / sub / 'pet' / f'{sub}_trc-FDG_pet.json').read_text())
            prov = side['bids_synth']
            assert prov['clinical_used']['diagnosis'] == dx and prov['image_source'] == 'joint'
            clinical = {k: (None if v == 'n/a' else float(v) if k in ('age', 'mmse',
                        'education_years') else v) for k, v in row.items()
                        if k != 'participant_id'}
            assert prov['subject_seed'] == derive_seed(3, sub.removeprefix('sub-'))
            images, how = tab.subject_images(clinical, model, ('FDG',),
                                             seed=prov['subject_seed'])
            pred = images['FDG'][0]
            fdg.setdefault(dx, []).append(float(pred[roi].mean()))
            img = nib.load(out / sub / 'pet' / f'{sub}_trc-FDG_pet.nii.gz')
            written = np.asarray(img.dataobj, dtype=np.float64)
            # the written image is that draw on another grid: the same integral
            # (signal x volume; trilinear resampling keeps it up to the rim)
            native = written.sum() * abs(np.linalg.det(img.affine[:3, :3]))
            template = pred.astype(np.float64).sum() * abs(np.linalg.det(tpl.affine[:3, :3]))
            assert abs(native - template) < 0.05 * template
    assert np.mean(fdg['AD']) < np.mean(fdg['CN']) - 0.05


def test_image_components_recover_a_relation_and_roundtrip(tmp_path):
    """The image generator keeps a cohort's image-table relation (an intensity that grows with
    age, another lower for one level) and its storage round trip (a Fortran-ordered mask, as
    nibabel gives) decodes the same."""
    from bids_synth.models.image_components import ImageComponents

    rng = np.random.default_rng(0)
    n = 30
    mask = np.asfortranarray(np.ones((6, 5, 4), bool))
    mask[0] = False
    age = rng.uniform(60, 85, n)
    ad = rng.random(n) < 0.4
    images = []
    for a, d in zip(age, ad):
        vol = rng.normal(0, 0.05, (1, 6, 5, 4))
        vol[0, 1:3] += 0.02 * (a - 70)
        vol[0, 4:] -= 0.3 * d
        images.append({'T1w': vol.astype(np.float32)})
    design = np.stack([(age - 70) / 8, ad, ~ad], 1).astype(float)
    comp = ImageComponents.fit(images, mask, ('T1w',), design)
    draws = [(a, d, comp.decode(np.array([(a - 70) / 8, d, not d], float),
                                comp.sample_scores(rng))['T1w'][0])
             for a, d in zip(rng.uniform(60, 85, 200), rng.random(200) < 0.5)]
    slope = np.polyfit([a for a, _, _ in draws], [v[1:3][mask[1:3]].mean() for *_, v in draws],
                       1)[0]
    assert abs(slope - 0.02) < 0.004
    diff = (np.mean([v[4:][mask[4:]].mean() for _, d, v in draws if d])
            - np.mean([v[4:][mask[4:]].mean() for _, d, v in draws if not d]))
    assert abs(diff + 0.3) < 0.06
    sha = comp.save(tmp_path / 'c.safetensors')
    back = ImageComponents.load(tmp_path / 'c.safetensors', sha)
    assert (back.mask == mask).all()
    s = comp.scores(images[0], design[0])
    np.testing.assert_allclose(back.decode(design[0], s)['T1w'],
                               comp.decode(design[0], s)['T1w'], atol=2e-3)
    # a participant's own design row and scores give back its images (up to the 1% of the
    # variance the axes leave out)
    err = comp.decode(design[0], s)['T1w'][0][mask] - images[0]['T1w'][0][mask]
    assert np.sqrt(np.mean(err ** 2)) < 0.2 * images[0]['T1w'][0][mask].std()


def test_bad_where_is_64_one_line(model, tmp_path, capsys):
    for where in (['diagnosis=XX'], ['nosuch=1'], ['age=80:70'], ['age'],
                  ['clinical_notes=x']):
        code = main([str(model), str(tmp_path / 'x'), '-n', '2', '--where', *where])
        err = capsys.readouterr().err
        assert code == 64, (where, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith('bids-synth-generate: error:'), err
        assert 'Traceback' not in err
    assert not (tmp_path / 'x').exists()


def test_output_and_model_errors(model, tmp_path, capsys):
    busy = tmp_path / 'busy'
    busy.mkdir()
    (busy / 'keep.txt').write_text('x')
    assert main([str(model), str(busy), '-n', '1']) == 73
    assert (busy / 'keep.txt').read_text() == 'x'
    assert main([str(tmp_path / 'nomodel'), str(tmp_path / 'o'), '-n', '1']) == 66
    old = tmp_path / 'old'
    shutil.copytree(model, old)
    card = json.loads((old / 'model_card.json').read_text())
    card.pop('tabular')
    (old / 'model_card.json').write_text(json.dumps(card))
    assert main([str(old), str(tmp_path / 'o'), '-n', '1']) == 65
    assert main([str(model), str(tmp_path / 'o'), '-n', '1', '--modalities', 'bold']) == 64
    err = capsys.readouterr().err
    assert 'group level' in err and 'Traceback' not in err


def test_default_model_generates(tmp_path):
    """No model given: the embedded default (which ships a tabular generator)."""
    out = tmp_path / 'd'
    assert main([str(out), '-n', '1', '--modalities', 'T1w', '--seed', '1']) == 0
    assert len(_rows(out)) == 1 and list(out.rglob('*_T1w.nii.gz'))


def test_copula_conditions_and_marginals():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(300):
        dx = rng.choice(['CN', 'AD'], p=[0.6, 0.4])
        age = rng.normal(75 if dx == 'AD' else 68, 4)
        rows.append({'age': round(float(age), 1), 'dx': str(dx),
                     'mmse': float(np.clip(round(29 - 5 * (dx == 'AD') + rng.normal(0, 1)),
                                           0, 30)) if rng.random() > 0.1 else None})
    schema = {'age': {'type': 'continuous'}, 'mmse': {'type': 'continuous'},
              'dx': {'type': 'categorical', 'levels': ['CN', 'AD']}}
    gen = CopulaGenerator.fit(rows, schema, seed=0)
    gen2 = CopulaGenerator.from_dict(json.loads(json.dumps(gen.to_dict())))
    a = gen.sample(400, np.random.default_rng(5))
    assert a == gen2.sample(400, np.random.default_rng(5))
    share_ad = np.mean([r['dx'] == 'AD' for r in a])
    assert 0.3 < share_ad < 0.5
    assert all(r['mmse'] == round(r['mmse']) for r in a)  # integer scores stay integers
    ad = [r['age'] for r in a if r['dx'] == 'AD']
    cn = [r['age'] for r in a if r['dx'] == 'CN']
    assert np.mean(ad) - np.mean(cn) > 3  # the dependence survives
    cond = gen.sample(50, np.random.default_rng(1), parse_where(['dx=AD', 'mmse=:26'], schema))
    assert all(r['dx'] == 'AD' and r['mmse'] <= 26 for r in cond)
    with pytest.raises(UsageError, match='outside'):
        gen.sample(5, np.random.default_rng(1), parse_where(['age=200:300'], schema))
