"""``python -m benchmarks.zoo REPORT.json ... --output docs/zoo.md``: two tables, one row per model, from the reports
``make report MODEL=...`` wrote: parity, int8 remedy, speed-ups with their intervals, each fastest row's bound; then
int8 beside fp32's labelled top-1 and NNCF's best graph, and its speed-up over its own runtime's fp32.

The figures are only comparable when the reports come from one machine in one sitting: the table names the CPU of
each report and refuses reports from different CPUs.
"""
import dataclasses
import json
import sys
from pathlib import Path
from typing import List, Optional

from alexnet_zoo.cli import ArgumentParser, UsageError, run_cli
from alexnet_zoo.files import write_text_atomic
from alexnet_zoo.packaged import PACKAGED
from export.contract import FILENAMES, read_metadata

from benchmarks.roofline.model_bytes import count_activations
from benchmarks.report.files import read_report
from benchmarks.report.schema import Report, plain
from benchmarks.report.summary import add_roofline, label

PRECISIONS = ('fp32', 'fp16', 'int8')
SPEEDUPS = (('openvino', 1), ('openvino', 32), ('onnxruntime', 1), ('onnxruntime', 32))


def zoo_row(read: Report) -> dict:
    """What the table shows for one model's report: every row placed again with the bytes this version counts on
    the report's graphs (so that reports written before a change of the count are held to the same one), then read
    as report.json's plain values."""
    folder = (read.graphs or {}).get('folder')
    graphs = {p: Path(folder) / FILENAMES[p] for p in PRECISIONS if folder and (Path(folder) / FILENAMES[p]).is_file()}
    counted = {'activation_bytes': count_activations(graphs)['activation_bytes'] or read.model.get('activation_bytes')}
    report = plain(add_roofline(dataclasses.replace(read, model={**read.model, **counted})))
    model = report['model']
    rows = report['results']
    parity = {}
    for precision in PRECISIONS:  # ONNX Runtime runs every exported graph as written: the export's own figures
        row = next((r for r in rows if r['backend'] == 'onnxruntime' and r['precision'] == precision), None)
        if row is not None:
            parity[precision] = row['parity']
    speedups = {}
    for backend, batch in SPEEDUPS:
        row = _timed_row(rows, backend, 'int8', batch)
        if row is not None and row.get('speedup_vs_torch_fp32') is not None:  # PyTorch eager was benchmarked
            speedups[(backend, batch)] = (row['speedup_vs_torch_fp32'], row['speedup_ci95'], row['parity']['passed'])
    int8 = read_metadata(graphs['int8']) if 'int8' in graphs else None
    return {'name': model['name'], 'params': _params(report), 'int8_table': int8_figures(report, folder),
            'gflops': model['flops_per_image'] / 1e9, 'parity': parity, 'speedups': speedups,
            'int8_written': int8 is not None,
            'float_layers': (int8 or {}).get('float_layers', []), 'equalized': (int8 or {}).get('equalized', []),
            'fastest': [(f['batch_size'], f['backend'], f['precision'], _times_bound(report, f))
                        for f in report['summary'].get('fastest_passing', [])],
            'cpu': report['environment'].get('cpu', {}).get('model') or report['environment'].get('cpu')}


def int8_figures(report: dict, folder: Optional[str]) -> dict:
    """int8 as ONNX Runtime runs it beside fp32's labelled top-1 and NNCF's best graph (from the graph folder's
    model.int8.layers.json, which ``export.onnx --explain`` writes), and each runtime's int8 latency over its own
    fp32's (ratio of medians, one report)."""
    rows = report['results']
    ours = _timed_row(rows, 'onnxruntime', 'int8')
    fp32 = (report.get('data') or {}).get('reference_accuracy') or {}
    layers = Path(folder) / 'model.int8.layers.json' if folder else None
    compared = json.loads(layers.read_text()).get('compared', []) if layers and layers.is_file() else []
    nncf = [r for r in compared if r['what'] != 'ours' and 'error' not in r]
    best = max(nncf, key=lambda r: (r.get('accuracy_top1') or 0, r['sqnr_db'])) if nncf else None
    over_fp32 = {}
    for backend, batch in SPEEDUPS:
        pair = _timed_row(rows, backend, 'fp32', batch), _timed_row(rows, backend, 'int8', batch)
        if None not in pair:
            over_fp32[(backend, batch)] = pair[0]['median_ms'] / pair[1]['median_ms']
    return {'fp32_top1': fp32.get('top1'), 'ours': ours and {**ours['parity'], 'top1': (ours.get('accuracy') or {})
                                                             .get('top1')},
            'nncf': best, 'ours_explained': next((r for r in compared if r['what'] == 'ours'), None),
            'over_fp32': over_fp32,
            'weights': 'ImageNet, fine-tuned' if report['model']['name'] in PACKAGED else 'random init'}


def _timed_row(rows: List[dict], backend: str, precision: str, batch: Optional[int] = None) -> Optional[dict]:
    """The first timed row of ``backend`` and ``precision`` (at ``batch``, if given), or None."""
    return next((r for r in rows if (r['backend'], r['precision']) == (backend, precision)
                 and batch in (None, r['batch_size']) and r.get('median_ms')), None)


def _params(report: dict) -> Optional[int]:
    """The model's parameters (reports before they were recorded: PyTorch fp32's weight bytes / 4)."""
    if report['model'].get('parameters'):
        return report['model']['parameters']
    row = next((r for r in report['results'] if (r['backend'], r['precision']) == ('torch', 'fp32')), None)
    return row['weight_bytes'] // 4 if row and row.get('weight_bytes') else None


def _times_bound(report: dict, fastest: dict) -> Optional[float]:
    row = next((r for r in report['results'] if label(r) == label(fastest) and r['batch_size'] == fastest['batch_size']),
               None)
    return ((row or {}).get('roofline') or {}).get('times_bound')


def markdown(rows: List[dict]) -> str:
    """The table and the legend."""
    head = ['model', 'params M', 'GFLOPs', 'fp32 SQNR dB / top-1', 'fp16', 'int8', 'int8 remedy (float layers)',
            'OV int8 b1', 'OV int8 b32', 'ORT int8 b1', 'ORT int8 b32', 'fastest b1, b32 (× bound)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for r in rows:
        cells = [f'`{r["name"]}`', f'{r["params"] / 1e6:.1f}' if r['params'] else '–', f'{r["gflops"]:.2f}']
        cells += [_parity(r['parity'].get(p)) for p in PRECISIONS]
        cells.append(_remedy(r))
        cells += [_speedup(r['speedups'].get(key)) for key in SPEEDUPS]
        cells.append('; '.join(f'{backend} {precision}' + (f' ({bound:.1f}×)' if bound else '')
                               for _, backend, precision, bound in r['fastest']) or '–')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def int8_markdown(rows: List[dict]) -> str:
    """The second table: our int8 beside fp32 and NNCF's best, and what it gains on each runtime."""
    head = ['model', 'weights', 'fp32 top-1', 'int8 SQNR dB / agreement / top-1', 'gate',
            'export\'s views: ours; NNCF\'s best', 'OV b1', 'OV b32', 'ORT b1', 'ORT b32']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for r in rows:
        t = r['int8_table']
        ours, nncf = t['ours'] or {}, t['nncf']
        cells = [f'`{r["name"]}`', t['weights'], _percent(t['fp32_top1']),
                 _figures(ours.get('sqnr_db'), ours.get('decisive_top1_agreement'), ours.get('top1')),
                 {True: 'pass', False: '**fail**'}.get(ours.get('passed'), '–'),
                 _beside(t['ours_explained'], nncf)]
        cells += [f'{t["over_fp32"][key]:.2f}×' if key in t['over_fp32'] else '–' for key in SPEEDUPS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _beside(ours: Optional[dict], nncf: Optional[dict]) -> str:
    """Ours and NNCF's best on the same views (the export's --explain), each SQNR / agreement / labelled top-1."""
    if ours is None:
        return '– (no --explain)'
    row = [_figures(r.get('sqnr_db'), r.get('decisive_top1_agreement'), r.get('accuracy_top1')) for r in (ours, nncf)
           if r is not None]
    return '; '.join(row) + (f' ({nncf["what"].split(" ", 2)[2]})' if nncf else '; NNCF failed')


def _percent(value: Optional[float]) -> str:
    return '–' if value is None else f'{value:.1%}'


def _figures(sqnr: Optional[float], agreement: Optional[float], top1: Optional[float]) -> str:
    return f'{"–" if sqnr is None else f"{sqnr:.1f}"} / {_percent(agreement)} / {_percent(top1)}'


def _parity(p: Optional[dict]) -> str:
    if p is None:
        return '–'
    verdict = '' if p.get('passed') is not False else ' **FAIL**'
    sqnr, top1 = p.get('sqnr_db'), p.get('decisive_top1_agreement')  # None: identical logits / no decisive view
    return (f'{"exact" if sqnr is None else f"{sqnr:.1f}"} / {"–" if top1 is None else f"{top1:.1%}"}'
            f'{verdict}')


def _remedy(r: dict) -> str:
    if not r['int8_written']:
        return 'fails: no int8 graph within the budget'
    if r['float_layers']:
        return f'float: {", ".join(r["float_layers"])}'
    if r['equalized']:
        return f'equalized ({len(r["equalized"])} pairs)'
    return 'plain'


def _speedup(s) -> str:
    if s is None:
        return '–'
    value, (low, high), passed = s
    return f'{value:.1f}× ({low:.1f}–{high:.1f})' + ('' if passed is not False else ' fail')


def check_one_cpu(rows: List[dict]) -> None:
    """Speed-ups measured on different CPUs do not belong in one table."""
    cpus = sorted({str(r['cpu']) for r in rows})
    if len(cpus) > 1:
        raise UsageError(f'the reports come from different CPUs ({"; ".join(cpus)}): their speed-ups do not compare')


def main(argv: Optional[List[str]] = None) -> int:
    parser = ArgumentParser(prog='python -m benchmarks.zoo', description=__doc__.split('\n\n')[0])
    parser.add_argument('reports', nargs='+', help='report.json files written by python -m benchmarks')
    parser.add_argument('--output', help='Markdown file to write (default: print the table)')
    args = parser.parse_args(argv)
    rows = [zoo_row(read_report(path, 'report')) for path in args.reports]
    check_one_cpu(rows)
    table = markdown(rows) + '\n' + int8_markdown(rows)
    if args.output:
        write_text_atomic(args.output, table)
    else:
        sys.stdout.write(table)
    return 0


if __name__ == '__main__':
    run_cli(main)
