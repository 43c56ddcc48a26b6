"""``python -m export.onnx``: the command line over ``export_onnx``, and what it prints."""
import sys
from typing import Sequence

from alexnet_zoo.checkpoint import LoadedModel, load_model
from alexnet_zoo.cli import ArgumentParser, UsageError, add_model_arguments, bounded

from export.contract import CALIBRATION_FILE, DEFAULT_OPSET, GRAPH_PRECISIONS, MAX_OPSET, MIN_OPSET
from export.int8.diagnose import TOP
from export.int8.diagnose import table as diagnosis_table
from export.int8.remedy import parse_fallback, settings_line
from export.int8.nncf_int8 import format_comparison
from export.parity import sqnr_text, verdict
from export.int8.quantizer import CALIBRATION_METHODS, DEFAULT_METHOD
from export.onnx.graphs import ExportResult, ParityGateError, export_onnx, parse_precisions


def format_table(result: ExportResult) -> str:
    """The rows as a fixed-width table, for the terminal and for docs."""
    header = ('precision', 'file', 'size MB', 'max |d|', 'rel err', 'SQNR dB', 'top-1', 'near-ties', 'top-5',
              'ORT ms b1', 'float layers', 'gate')
    lines = []
    for r in result.rows:
        gate = verdict(r['passed']) + (' (not written)' if r['passed'] is False else '')
        decisive = r['decisive_top1_agreement']
        remedy = ', '.join(r.get('float_layers') or []) or ('equalized' if r.get('equalized') else '–')
        speed = f'{r["ms_b1"]:.1f}' + (f' ({r["plain_ms_b1"]:.1f} all int8)' if r.get('plain_ms_b1') else '')
        lines.append((r['precision'], r['file'], f'{r["size_bytes"] / 1e6:.1f}', f'{r["max_abs_err"]:.2g}',
                      f'{r["max_rel_err"]:.2g}', sqnr_text(r), '–' if decisive is None else f'{100 * decisive:.1f} %',
                      f'{r["near_ties"]}/{r["views"]}', f'{100 * r["top5_agreement"]:.1f} %', speed, remedy, gate))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog='python -m export.onnx',
        description='Export a timm image classifier to ONNX in fp32, fp16 and int8, checking each graph against '
                    'PyTorch.')
    add_model_arguments(parser)
    parser.add_argument('--output-dir', required=True, help='where model.onnx, model.fp16.onnx, model.int8.onnx go')
    parser.add_argument('--precisions', default=','.join(GRAPH_PRECISIONS),
                        help=f'comma-separated subset of {",".join(GRAPH_PRECISIONS)} (default: all)')
    parser.add_argument('--parity-images', metavar='DIR',
                        help='judge parity on views of these images (default: the sample photographs); laid out as '
                             '<class>/<image> with the model\'s label names, accuracy is judged too')
    parser.add_argument('--calibration-images', metavar='DIR',
                        help='int8 calibration images (default: random crops of the sample photographs)')
    parser.add_argument('--calibration-method', default=DEFAULT_METHOD, choices=list(CALIBRATION_METHODS),
                        help='int8 activation ranges: percentile (the 99.999th of |x|: the rare extremes clipped), '
                             'minmax (the range seen), or mean (NNCF\'s: each crop\'s min and max, averaged) '
                             '(default: %(default)s)')
    parser.add_argument('--calibration-cache', metavar='FILE',
                        help=f'int8 tensor ranges from an earlier export ({CALIBRATION_FILE}) instead of calibrating')
    parser.add_argument('--int8-fallback', default='auto', metavar='auto|none|LAYER[,LAYER...]',
                        help='when int8 misses its gate: auto (equalize, then the other range estimates, else keep '
                             'up to a tenth of the weighted layers, at least 4, in float), none, '
                             'or these layers (module paths such as features.8, or ONNX node names) in float')
    parser.add_argument('--explain', action='store_true',
                        help='diagnose int8 per layer even when it passes (model.int8.layers.md/.json/.png), and '
                             'quantize with NNCF beside it for comparison (seconds more)')
    parser.add_argument('--opset', type=bounded(int, MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET,
                        help=f'ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default: {DEFAULT_OPSET})')
    parser.add_argument('--softmax', action='store_true', help='add a "probabilities" output after the logits')
    return parser


def main(argv: Sequence[str] = None) -> int:
    args = build_parser().parse_args(argv)
    precisions = parse_precisions(args.precisions)
    try:
        fallback = parse_fallback(args.int8_fallback)
    except ValueError as e:
        raise UsageError(str(e)) from None
    loaded = load_model(args.model, args.checkpoint, args.num_classes, args.pretrained)
    progress = lambda message: print(f'{message} ...', file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = export_onnx(loaded, args.output_dir, precisions, args.calibration_images, args.calibration_method,
                             args.opset, args.softmax, progress, args.parity_images, fallback, args.explain,
                             args.calibration_cache)
    except ParityGateError as e:
        _print_result(loaded, e.result)
        raise
    _print_result(loaded, result)
    return 0


def _print_result(loaded: LoadedModel, result: ExportResult) -> None:
    judged = 'parity gates judged' if result.trained else 'random weights: figures NOT judged'
    print(f'{loaded.name}, {loaded.num_classes} classes, weights: {loaded.source} ({judged})')
    print(f'parity: ONNX Runtime vs PyTorch fp32 on {result.parity_images}')
    if result.calibration:
        print(f'int8 calibration: {result.calibration}')
    for row in (r for r in result.rows if r.get('int8_settings')):
        print('int8 settings: ' + settings_line(row['int8_settings']))
        if row.get('symmetric_sqnr_db') is not None:  # the table's figures are the CPU runtimes' uint8 form
            print(f'int8 file as written (symmetric, TensorRT\'s form): SQNR {row["symmetric_sqnr_db"]:.1f} dB; '
                  f'ONNX Runtime and OpenVINO run it with uint8 activations: {sqnr_text(row)} dB')
    print(format_table(result))
    for row in (r for r in result.rows if r.get('compared')):
        print(format_comparison(row['compared']))
    for row in result.rows:
        for attempt in row.get('attempts', [])[1:]:
            print(f'int8 remedy tried: {attempt["what"]}: SQNR {attempt["sqnr_db"]:.1f} dB, '
                  f'{"pass" if attempt["passed"] else "; ".join(attempt["misses"])}')
        if row.get('equalized'):
            print('int8 equalized (function-preserving): ' + ', '.join(
                f'{e["layer"]} into {e["into"]} ({e["channels"]} channel(s), up to {e["max_scale"]}x)'
                for e in row['equalized']))
    if result.diagnosis:
        print(f'int8 per-layer diagnosis, worst {TOP} (all in model.int8.layers.md):')
        print(diagnosis_table(result.diagnosis, TOP))
    print(f'total {result.seconds:.1f} s; written: {", ".join(str(p) for p in result.paths.values()) or "nothing"}')
