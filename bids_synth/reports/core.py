"""HTML reports: one per subject (participant level) and one per fitted model (group level).

Figures are PNG mosaics drawn with nilearn, written under ``<output>/sub-<label>/figures/``;
the HTML page sits at ``<output>/sub-<label>.html`` (the fMRIPrep layout) and links them.
"""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

__all__ = ['mosaic', 'mask_mosaic', 'subject_report', 'group_report']

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;font-size:.9em}th{background:#f3f3f3}img{max-width:100%;margin:.3em 0}
.note{color:#666;font-size:.9em}code{background:#f6f6f6;padding:0 .2em}
.warn{color:#a40;font-weight:600}
"""

#: an input whose typicality score is this many times the validation subjects' is flagged
TYPICALITY_WARN = 2.0


def mosaic(img, out_png: str | Path, title: str = '', *, cmap: str = 'gray',
           contour=None) -> Path:
    """Save an axial mosaic of a 3D image (first volume of a 4D one) as PNG.

    ``contour``: an image whose non-zero voxels are outlined in red (e.g. a brain mask).
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np
    from nilearn import image, plotting

    img = nib.load(img) if isinstance(img, (str, Path)) else img
    if img.ndim == 4:
        img = image.index_img(img, 0)
    data = np.asarray(img.dataobj, dtype=np.float32)
    finite = data[np.isfinite(data) & (data != 0)]
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # oblique native grids: nilearn reorders, as wanted
        warnings.simplefilter('ignore', UserWarning)
        display = plotting.plot_img(
            img, display_mode='z', cut_coords=7, cmap=cmap, vmin=0, vmax=vmax,
            title=title or None, black_bg=True, annotate=False, colorbar=False,
            draw_cross=False,
        )
        if contour is not None:
            display.add_contours(contour, levels=[0.5], colors='r', linewidths=1.0)
    tmp = out_png.with_name(f'.tmp-{out_png.name}')
    display.savefig(str(tmp), dpi=80)
    display.close()
    plt.close('all')
    tmp.replace(out_png)
    return out_png


def mask_mosaic(in_file, brain_file, out_png: str | Path, title: str = '') -> Path:
    """Save an axial mosaic of an input with its brain-mask contour (red) as PNG.

    ``brain_file`` is the brain-extracted image on the input's grid (0 outside the brain), as
    the conform node writes it; its non-zero voxels are the mask.
    """
    import nibabel as nib
    import numpy as np

    brain = nib.load(str(brain_file))
    data = np.asarray(brain.dataobj)
    mask = nib.Nifti1Image((data.reshape(data.shape[:3]) > 0).astype(np.uint8), brain.affine)
    return mosaic(str(in_file), out_png, title, contour=mask)


def _table(rows: list[tuple], header: tuple) -> str:
    head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in header)
    body = ''.join(
        '<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>' for row in rows
    )
    return f'<table><tr>{head}</tr>{body}</table>'


def _write_html(path: Path, title: str, body: str) -> Path:
    from ..bids.derivatives import write_text_atomic

    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f'</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>'
            f'{body}</body></html>')
    write_text_atomic(page, path)
    return path


def subject_report(output_dir: str | Path, subject: str, records: list[dict]) -> Path:
    """Write ``sub-<subject>.html``: per session, inputs and synthesized outputs as mosaics,
    uncertainty, clinical values used and provenance.

    ``records`` are the dictionaries the derivatives sink writes for each synthesized image
    (keys: session, target, files, sources, provenance).
    """
    out = Path(output_dir)
    figdir = out / f'sub-{subject}' / 'figures'
    parts = []
    by_session: dict[str, list[dict]] = {}
    for rec in records:
        by_session.setdefault(rec.get('session') or '', []).append(rec)
    for ses, recs in sorted(by_session.items()):
        label = f'sub-{subject}' + (f'_ses-{ses}' if ses else '')
        parts.append(f'<h2>{html.escape(label)}</h2>')
        inputs_done = set()
        for rec in recs:
            for src in rec.get('source_files', []):
                if src in inputs_done:
                    continue
                inputs_done.add(src)
                name = Path(src).name.split('.')[0]
                png = mosaic(src, figdir / f'{name}_input.png', f'input: {name}')
                parts.append(f'<img src="{png.relative_to(out)}" alt="input {name}">')
        masks_done = set()
        for rec in recs:  # brain extraction (--skull-strip): the mask over the raw input
            for mod, info in sorted(rec.get('brain_masks', {}).items()):
                if mod in masks_done or not info.get('input') or not info.get('brain'):
                    continue
                masks_done.add(mod)
                name = Path(info['input']).name.split('.')[0]
                try:
                    png = mask_mosaic(info['input'], info['brain'],
                                      figdir / f'{name}_desc-brain_mask.png',
                                      f'brain mask: {name}')
                except (OSError, ValueError) as exc:  # the work dir was cleaned: say so
                    parts.append(f'<p class="note">Brain mask of {html.escape(name)} not '
                                 f'drawn: {html.escape(str(exc))}</p>')
                    continue
                vol = info.get('mask_ml')
                parts.append(f'<h4>Brain extraction: {html.escape(name)}</h4><p>'
                             f'{html.escape(str(info.get("method", "")))}, mask '
                             f'{vol if vol is not None else "?"} mL (red contour).</p>'
                             f'<img src="{png.relative_to(out)}" alt="brain mask {name}">')
        for rec in sorted(recs, key=lambda r: r['target']):
            prov = rec.get('provenance', {})
            parts.append(f'<h3>synthesized {html.escape(rec["target"])}</h3>')
            native = rec['files'].get('native')
            if native:
                png = mosaic(out / native, figdir / f'{label}_desc-synth{rec["target"]}.png',
                             f'synthesized {rec["target"]} (native space)')
                parts.append(f'<img src="{png.relative_to(out)}" alt="synthesized">')
            std = rec['files'].get('native_std')
            if std:
                png = mosaic(out / std, figdir / f'{label}_desc-synthstd{rec["target"]}.png',
                             f'uncertainty (std over samples) of {rec["target"]}', cmap='hot')
                parts.append(f'<h4>Uncertainty</h4><p>Voxelwise standard deviation over the '
                             f'{prov.get("num_samples", "?")} samples (bright: the model is '
                             'unsure; check these regions before using the image).</p>'
                             f'<img src="{png.relative_to(out)}" alt="uncertainty">')
            typ = prov.get('input_typicality') or {}
            widen = prov.get('std_inflation')
            if typ:
                odd = sorted(m for m, v in typ.items() if v > TYPICALITY_WARN)
                note = (f'<p class="warn">Inputs unlike the training data: '
                        f'{html.escape(", ".join(odd))} (another scanner or contrast, a failed '
                        f'conform?); the uncertainty was widened {widen:.2f}-fold. Check them '
                        'before trusting this image.</p>' if odd and widen else
                        '<p>Inputs look like the training data.</p>')
                parts.append(note + _table(sorted((m, f'{v:.2f}') for m, v in typ.items()),
                                           ('input', 'typicality (1: like the validation '
                                            'subjects)')))
            sample = rec['files'].get('template_sample1')
            if sample:
                png = mosaic(out / sample, figdir / f'{label}_desc-synthsample1{rec["target"]}.png',
                             f'one sample of {rec["target"]} (template space)')
                parts.append(f'<img src="{png.relative_to(out)}" alt="sample">')
            ref = rec.get('native_refinement')
            if ref:
                guides = ' and '.join([ref.get('guide_modality', '?')]
                                      + ref.get('extra_guide_modalities', []))
                how = (f'guided filter, radius {ref.get("radius_mm")} mm, eps {ref.get("eps")}'
                       if ref.get('method', 'guided') == 'guided' else
                       f'{ref.get("transfer_modality", "?")} mapped through its CSF/GM/WM means'
                       f' to the levels {ref.get("target_tissue_levels")}')
                what = (f'refined with the detail of the acquired {guides} ({how})'
                        if ref.get('applied') else f'not refined: {ref.get("reason", "")}')
                parts.append(f'<p>Native-space image: {html.escape(what)}.</p>')
            files = [(k, v) for k, v in sorted(rec['files'].items())]
            parts.append(_table(files, ('output', 'file')))
            clin = prov.get('clinical_used', {})
            if clin:
                parts.append('<p>Clinical values used:</p>'
                             + _table(sorted(clin.items()), ('variable', 'value')))
            weights = prov.get('fusion_weights')
            if weights:
                parts.append('<p>Fusion weights (how much the model leaned on each input):</p>'
                             + _table(sorted(weights.items()), ('input', 'weight')))
            keep = {k: v for k, v in prov.items()
                    if k not in ('clinical_used', 'software', 'fusion_weights',
                                 'input_typicality')}
            parts.append('<p>Provenance:</p>' + _table(
                [(k, json.dumps(v) if isinstance(v, (dict, list)) else v)
                 for k, v in sorted(keep.items())], ('field', 'value')))
            soft = prov.get('software', {})
            if soft:
                parts.append('<p class="note">Software: ' + html.escape(
                    ', '.join(f'{k} {v}' for k, v in sorted(soft.items()))) + '</p>')
    if not records:
        parts.append('<p>Nothing was synthesized for this subject.</p>')
    return _write_html(out / f'sub-{subject}.html', f'bids_synth: sub-{subject}', ''.join(parts))


def _flat_patterns(per_pattern: dict) -> dict:
    """``{'t <- a+b': metrics}`` from either that form or ``{t: {pattern: metrics}}``."""
    flat = {}
    for key, value in per_pattern.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            flat.update({f'{key} <- {pat}': m for pat, m in value.items()})
        else:
            flat[key] = value
    return flat


def group_report(output_dir: str | Path, model_dir: str | Path) -> Path:
    """Write ``group_<method>.html``: the fitted model's card and validation metrics."""
    from ..models.checkpoint import read_card

    card = read_card(model_dir)
    parts = [f'<p>Model <code>{html.escape(str(model_dir))}</code>, method '
             f'<b>{html.escape(card["method"])}</b>, sha256 <code>{card["sha256"]}</code>.</p>']
    val = card.get('validation', {})
    sections = (('Validation on held-out subjects (inside the brain mask)', 'target',
                 val.get('per_target', {})),
                ('Per missing pattern', 'target <- inputs',
                 _flat_patterns(val.get('per_pattern', {}))))
    for heading, first, metrics in sections:
        if not metrics:
            continue
        rows = [(k, f'{m.get("psnr", float("nan")):.2f}', f'{m.get("ssim", float("nan")):.3f}',
                 f'{m.get("mae", float("nan")):.4f}', m.get('n', ''))
                for k, m in sorted(metrics.items())]
        parts.append(f'<h2>{heading}</h2>'
                     + _table(rows, (first, 'PSNR (dB)', 'SSIM', 'MAE', 'n')))
    split = val.get('split')
    if split:
        parts.append('<p>Split by subject: ' + html.escape(json.dumps(split)) + '</p>')
    parts.append('<h2>Model card</h2><pre>' + html.escape(json.dumps(
        {k: v for k, v in card.items() if k != 'validation'}, indent=2, default=str)) + '</pre>')
    return _write_html(Path(output_dir) / f'group_{card["method"]}.html',
                       f'bids_synth: group model ({card["method"]})', ''.join(parts))
