"""The report's files: report.json (the schema), report.md (the table a person reads), report.csv, PNG plots.

Everything is rendered in memory first and each file is written atomically (temporary file beside, then
rename), so an interrupted run leaves the previous report or none, never half of one.
"""
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

from alexnet_zoo.files import PathLike, atomic_path
from export.parity import sqnr_text, verdict

from .plots import first_per_label, render_plots
from .summary import row_passed

SCHEMA_VERSION = 2  # 2: parity on >= 256 views with near-ties, non-finite counts, accuracy gates, int8 remedies
READABLE_SCHEMAS = (1, 2)  # --compare reads p50 and SQNR, which both carry
LATENCY_KEYS = ('mean', 'std', 'min', 'p50', 'p90', 'p95', 'p99', 'max')
PARITY_KEYS = ('views', 'max_abs_err', 'max_rel_err', 'sqnr_db', 'identical', 'nonfinite', 'cosine_min',
               'top1_agreement', 'decisive_top1_agreement', 'near_ties', 'near_tie_flips', 'top5_agreement',
               'judged', 'passed')


def row_key(row: dict):
    return row['backend'], row['precision'], row.get('device', 'cpu'), row['batch_size']


def finite(value: Any) -> Any:
    """JSON without NaN/Infinity (which strict parsers reject): a non-finite float becomes null. An SQNR of
    null means the logits were identical (no noise at all)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def read_report(path: PathLike) -> dict:
    """An earlier report.json, checked enough to compare against; one clear line if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'--compare file not found: {path}')
    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f'--compare {path} is not a benchmark report (not JSON: {e})') from None
    if not isinstance(report, dict) or report.get('schema_version') not in READABLE_SCHEMAS:
        raise ValueError(f'--compare {path} is not a benchmark report (no schema_version in {READABLE_SCHEMAS})')
    rows = report.get('results')
    try:
        if not isinstance(rows, list):
            raise TypeError('no results list')
        for row in rows:
            row_key(row)
            float(row['latency_ms']['p50'])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f'--compare {path} is not a benchmark report (bad results: {e})') from None
    return report


def compare_reports(old: dict, new: dict, name: str) -> dict:
    """Rows of both reports side by side, matched by backend, precision, device and batch size.

    ``speedup`` = old p50 / new p50 (above 1: faster now); ``throughput_ratio`` = new / old images per second.
    """
    old_rows = {row_key(r): r for r in old['results']}
    new_rows = {row_key(r): r for r in new['results']}
    rows = []
    for key in list(new_rows) + [k for k in old_rows if k not in new_rows]:
        o, n = old_rows.get(key), new_rows.get(key)
        old_p50 = o['latency_ms']['p50'] if o else None
        new_p50 = n['latency_ms']['p50'] if n else None
        rows.append({
            'backend': key[0], 'precision': key[1], 'device': key[2], 'batch_size': key[3],
            'old_p50_ms': old_p50, 'new_p50_ms': new_p50,
            'speedup': old_p50 / new_p50 if o and n and new_p50 else None,
            'throughput_ratio': (n['throughput_ips'] / o['throughput_ips']
                                 if o and n and o.get('throughput_ips') else None),
            'old_sqnr_db': o['parity'].get('sqnr_db') if o and o.get('parity') else None,
            'new_sqnr_db': n['parity'].get('sqnr_db') if n else None,
            'old_sqnr': sqnr_text(o['parity']) if o and o.get('parity') else '–',
            'new_sqnr': sqnr_text(n['parity']) if n else '–',
        })
    return {'file': name, 'old_created_at': old.get('created_at'),
            'old_cpu': (old.get('environment') or {}).get('cpu', {}).get('model'), 'rows': rows}


def write_report(report: dict, output_dir: PathLike) -> Dict[str, Path]:
    """Render every file in memory, then write each atomically; returns name -> path."""
    output_dir = Path(output_dir)
    report = finite(report)
    files = {'report.json': (json.dumps(report, indent=2, allow_nan=False) + '\n').encode(),
             'report.md': render_markdown(report).encode(),
             'report.csv': render_csv(report).encode()}
    files.update(render_plots(report))
    paths = {}
    for name, data in files.items():
        with atomic_path(output_dir / name) as tmp:
            tmp.write_bytes(data)
        paths[name] = output_dir / name
    return paths


def _fmt(value: Optional[float], digits: int = 2, kind: str = 'f') -> str:
    return '–' if value is None else f'{value:.{digits}{kind}}'


def _percent(value: Optional[float]) -> str:
    return '–' if value is None else f'{value:.1%}'


def _row_notes(row: dict) -> list:
    """What a reader must know beside a row's figures: non-finite logits, int8 remedies, a failed export."""
    notes = []
    if row['parity'].get('nonfinite'):
        notes.append(f'**{row["parity"]["nonfinite"]} non-finite logits** (NaN or Inf): fails its gate')
    if row.get('float_layers'):
        notes.append(f'int8 with {", ".join(row["float_layers"])} kept in float (export.onnx\'s remedy)')
    if row.get('equalized'):
        notes.append(f'int8 after activation equalization of {", ".join(row["equalized"])} (function-preserving)')
    if row.get('export_failure'):
        notes.append(f'**the graph failed its gate at export** ({row["export_failure"]}); measured from the failed '
                     f'file, not written')
    return notes


def _gate(row: dict) -> str:
    text = verdict(row_passed(row))
    return f'**{text}**' if text == 'FAIL' else text


def _graphs_line(graphs: dict) -> str:
    where = f'`{graphs["folder"]}`' if graphs.get('folder') else 'a temporary folder'
    parts = []
    if graphs.get('exported'):
        parts.append(f'exported by export.onnx into {where} for this run ({", ".join(graphs["exported"])})')
    if graphs.get('reused'):
        parts.append(f'reused from {where} ({", ".join(graphs["reused"])})')
    return '- ONNX graphs: ' + ('; '.join(parts) if parts else 'none needed')


def render_markdown(report: dict) -> str:
    env, model, images = report['environment'], report['model'], report['images']
    settings, timing = report['settings'], report['settings']['timing']
    cpu = env['cpu']
    features = ', '.join(k for k, v in cpu['features'].items() if v) or 'none of AVX2/AVX-512/VNNI/AMX'
    gpu = env['gpu']['name'] if env.get('gpu') else 'none'
    weights = ('trained weights: parity gates judged' if model['trained']
               else 'random weights: parity gates not judged (near-tied logits)')
    lines = [
        f'# Benchmark report: {model["name"]}',
        '',
        f'- model: `{model["name"]}`, {model["num_classes"]} classes, weights from {model["source"]} ({weights}); '
        f'median top-1/top-2 logit margin {model["margin_std"]:.2f} std',
        f'- parity: {images.get("views", images["count"])} views (centre crops, random crops and flips) of '
        f'{images["count"]} {images["source"]}',
        _graphs_line(report.get('graphs') or {}),
        f'- machine: {cpu["model"]}, {cpu["usable_cores"]} cores ({features}), {env["memory_gb"]} GB, GPU: {gpu}; '
        f'{env["os"]}, Python {env["python"]}',
        f'- {report["created_at"]}, {report.get("duration_s", "?")} s' + (' (`--quick`)' if settings['quick'] else ''),
    ]
    if report.get('command'):
        lines.append(f'- command: `{report["command"]}`')
    data = report.get('data')
    if data:
        reference = (data.get('reference_accuracy') or {}).get('top1')
        lines.append(f'- accuracy on `{data["path"]}`: {data.get("views", data["count"])} views of {data["count"]} '
                     f'labelled images, {len(data["classes"])} classes' +
                     (f'; PyTorch fp32 top-1 {reference:.1%}, a row must keep '
                      f'{report["settings"].get("accuracy_min_ratio", 0.99):.0%} of it' if reference is not None else ''))
    lines += ['', '## Results', '',
              'Latency in ms per batch (p50 = median); speed-up = PyTorch eager fp32 p50 / this p50 at the same batch '
              'size. Parity against PyTorch fp32 (SQNR; top-1 agreement on the decisive views, with the near-ties '
              'set aside and counted; max error relative to the largest logit) and against an fp64 PyTorch '
              'reference (SQNR). docs/export.md explains the gates.', '']
    header = ['backend', 'precision', 'device', 'batch', 'p50 ms', 'mean ± std ms', 'p99 ms', 'images/s',
              'speed-up', 'SQNR dB', 'top-1', 'near-ties', 'max rel err', 'SQNR fp64 dB']
    if data:
        header += ['acc top-1', 'acc top-5']
    header.append('gate')
    lines += ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    for r in sorted(report['results'], key=lambda r: r['batch_size']):
        lat, p = r['latency_ms'], r['parity']
        speedup = r.get('speedup_vs_torch_fp32')
        cells = [r['backend'], r['precision'], r['device'], str(r['batch_size']), _fmt(lat['p50']),
                 f'{lat["mean"]:.2f} ± {lat["std"]:.2f}', _fmt(lat['p99']), _fmt(r['throughput_ips'], 1),
                 '–' if speedup is None else f'{speedup:.1f}×', sqnr_text(p), _percent(p.get('decisive_top1_agreement')),
                 f'{p.get("near_ties", "–")}', _fmt(p['max_rel_err'], 1, 'e'), sqnr_text(r['parity_fp64'])]
        if data:
            acc = r.get('accuracy') or {}
            cells += [f'{acc["top1"]:.0%}' if acc else '–', f'{acc["top5"]:.0%}' if acc else '–']
        cells.append(_gate(r))
        lines.append('| ' + ' | '.join(cells) + ' |')
    notes = [f'- {r["backend"]} {r["precision"]} ({r["device"]}): {note}'
             for r in first_per_label(report['results']).values() for note in _row_notes(r)]
    if notes:
        lines += ['', *notes]

    summary = report['summary']
    lines += ['', '## Fastest row that passes its gates' if summary['gates_judged']
              else '## Fastest row (gates not judged)', '']
    for f in summary['fastest_passing']:
        speed = f['speedup_vs_torch_fp32']
        against = (f'{speed:.1f}× PyTorch eager fp32 ({f["baseline_p50_ms"]:.2f} ms)' if speed
                   else 'no PyTorch eager fp32 row to compare with')
        lines.append(f'- batch {f["batch_size"]}: {f["backend"]} {f["precision"]} ({f["device"]}), '
                     f'{f["p50_ms"]:.2f} ms, {against}')
    if summary['gates_judged']:
        lines.append(f'- gates: {"all judged rows pass" if summary["passed"] else str(summary["rows_failed"]) + " row(s) FAIL"}')

    lines += ['', '## Skipped', '']
    if report['skipped']:
        lines += ['| backend | precision | device | reason |', '| --- | --- | --- | --- |']
        lines += [f'| {s["backend"]} | {s["precision"]} | {s["device"]} | {s["reason"]} |' for s in report['skipped']]
    else:
        lines.append('Nothing: every requested combination ran.')

    comparison = report.get('comparison')
    if comparison:
        lines += ['', f'## Compared with `{comparison["file"]}` ({comparison.get("old_created_at")}, '
                      f'{comparison.get("old_cpu")})', '',
                  'speed-up = old p50 / new p50 (above 1: faster now).', '',
                  '| backend | precision | device | batch | old p50 ms | new p50 ms | speed-up | old SQNR | new SQNR |',
                  '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
        for c in comparison['rows']:
            lines.append(f'| {c["backend"]} | {c["precision"]} | {c["device"]} | {c["batch_size"]} | '
                         f'{_fmt(c["old_p50_ms"])} | {_fmt(c["new_p50_ms"])} | '
                         f'{"–" if c["speedup"] is None else format(c["speedup"], ".2f") + "×"} | '
                         f'{c["old_sqnr"]} | {c["new_sqnr"]} |')

    lines += ['', '## What is timed', '',
              f'- timed region: {timing["timed_region"]}.',
              f'- warm-up: at least {timing["warmup_iters"]} runs and {timing["warmup_s"]} s; then timed runs until '
              f'at least {timing["min_iters"]} runs and {timing["min_time_s"]} s; one perf_counter pair per run, '
              f'garbage collector paused.',
              f'- {env["threads"]} compute threads for every backend, one stream: PyTorch set_num_threads, ONNX '
              f'Runtime intra-op threads (sequential), OpenVINO INFERENCE_NUM_THREADS with the LATENCY hint.',
              '- throughput = images per second over the summed timed runs.',
              '', '## Plots', '',
              '![latency per backend and precision](latency.png)', '',
              '![latency vs batch size](latency_vs_batch.png)', '',
              '![parity](parity.png)', '',
              '## Software', '',
              ', '.join(f'{k} {v}' for k, v in env['packages'].items()), '']
    return '\n'.join(lines)


def render_csv(report: dict) -> str:
    fields = (['backend', 'precision', 'device', 'batch_size'] + [f'{k}_ms' for k in LATENCY_KEYS]
              + ['throughput_ips', 'iterations', 'speedup_vs_torch_fp32']
              + [f'parity_{k}' for k in PARITY_KEYS] + [f'parity_fp64_{k}' for k in PARITY_KEYS]
              + ['accuracy_top1', 'accuracy_top5', 'float_layers', 'equalized', 'export_failure'])
    out = io.StringIO()
    writer = csv.DictWriter(out, fields, lineterminator='\n')
    writer.writeheader()
    for r in report['results']:
        row = {k: r[k] for k in ('backend', 'precision', 'device', 'batch_size', 'throughput_ips', 'iterations',
                                 'speedup_vs_torch_fp32')}
        row.update({f'{k}_ms': r['latency_ms'][k] for k in LATENCY_KEYS})
        row.update({f'parity_{k}': r['parity'].get(k) for k in PARITY_KEYS})
        row.update({f'parity_fp64_{k}': r['parity_fp64'].get(k) for k in PARITY_KEYS})
        row.update(float_layers=' '.join(r.get('float_layers') or []), equalized=' '.join(r.get('equalized') or []),
                   export_failure=r.get('export_failure', ''))
        if r.get('accuracy'):
            row.update({'accuracy_top1': r['accuracy']['top1'], 'accuracy_top5': r['accuracy']['top5']})
        writer.writerow(row)
    return out.getvalue()
