"""PyTorch -> ONNX in fp32, fp16 and int8, each graph checked and compared with PyTorch before it is kept.

    python -m export.onnx --model alexnet_bn --num-classes 17 --checkpoint CK --output-dir OUT \\
        [--precisions fp32,fp16,int8] [--parity-images DIR] [--calibration-images DIR] [--calibration-cache FILE]
        [--int8-fallback auto|none|LAYER,...] [--explain] [--opset N] [--softmax]

Writes OUT/model.onnx, OUT/model.fp16.onnx, OUT/model.int8.onnx (and model.int8.calibration.json). Every graph
has the input ``input`` (float32 NCHW, batch dimension ``batch``), the output ``logits`` (and ``probabilities``
with ``--softmax``), and the preprocessing and labels in its metadata, so a deployer needs nothing but the file.
Parity is measured with ONNX Runtime on 256 parity views against PyTorch fp32 and judged by ``export.parity``'s
gates when the weights are trained; int8 is diagnosed and repaired by ``export.int8`` (``--explain`` also judges
NNCF's int8 of the same graph beside it: ``export.nncf_int8``); a failed gate leaves no file of that precision and
raises ``ParityGateError``.
"""
import contextlib
import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import onnx

from alexnet_zoo.checkpoint import LoadedModel, load_model
from alexnet_zoo.cli import ArgumentParser, UsageError, add_model_arguments, bounded, run_cli
from alexnet_zoo.data import data_config
from alexnet_zoo.files import PathLike, atomic_path, check_writable_dir, ensure_writable_dir, write_bytes_atomic
from alexnet_zoo.manifest import sha256_file

from .calibration import calibration_crops
from .contract import (CALIBRATION_FILE, DEFAULT_OPSET, FILENAMES, GRAPH_PRECISIONS, MAX_OPSET,
                       MIN_OPSET, check_graph, set_metadata)
from .contract import read_metadata  # noqa: F401  (export.onnx.read_metadata, as the docs once showed)
from .diagnose import DIAGNOSIS_VIEWS, TOP
from .diagnose import render as render_diagnosis
from .diagnose import table as diagnosis_table
from .export_manifest import write_export_manifest
from .int8 import Int8Result, int8_settings, make_int8, parse_fallback, settings_line
from .nncf_int8 import compare_with_nncf, format_comparison
from .parity import gate_failure, judge, sqnr_text, verdict
from .precision import CALIBRATION_METHODS, read_calibration_record, to_fp16
from .torch_export import base_metadata, torch_to_onnx
from .trt.preflight import zero_point_problems
from .views import ParityViews, ort_ms_b1, run_onnx

Progress = Optional[Callable[[str], None]]


class ParityGateError(RuntimeError):
    """A precision failed its parity gate; ``result`` holds every row (the failed ones were not written)."""

    def __init__(self, message: str, result: 'ExportResult'):
        super().__init__(message)
        self.result = result


@dataclass
class ExportResult:
    paths: Dict[str, Path] = field(default_factory=dict)  # precision -> written file
    rows: List[dict] = field(default_factory=list)  # per precision: file, size, opset, seconds, parity, verdict
    trained: bool = False  # gates judged
    parity_images: str = ''
    calibration: str = ''
    seconds: float = 0.0
    diagnosis: List[dict] = field(default_factory=list)  # int8 per-layer rows, worst first (when diagnosed)
    failed_paths: Dict[str, Path] = field(default_factory=dict)  # precision -> graph that failed, kept in failed_dir


def export_onnx(
        loaded: LoadedModel,
        output_dir: PathLike,
        precisions: Sequence[str] = GRAPH_PRECISIONS,
        calibration_images: Optional[PathLike] = None,
        calibration_method: str = 'minmax',
        opset: int = DEFAULT_OPSET,
        softmax: bool = False,
        progress: Progress = None,
        parity_images: Optional[PathLike] = None,
        int8_fallback: Union[str, Sequence[str]] = 'auto',
        explain: bool = False,
        calibration_cache: Optional[PathLike] = None,
        failed_dir: Optional[PathLike] = None,
) -> ExportResult:
    """Export ``loaded`` to ONNX in each of ``precisions`` under ``output_dir``; returns paths and parity rows.

    Parity is judged on ``parity_views`` (at least 256: the photographs', or ``parity_images``', centre crops plus
    random crops and flips). int8: see ``export.int8`` for ``int8_fallback`` and ``explain``; its ranges are
    written to ``model.int8.calibration.json``, which ``calibration_cache`` reads back instead of calibrating.
    A graph that fails its gate is not written to ``output_dir`` (a stale one is removed); with ``failed_dir``
    it is written there, for a benchmark to measure. Raises ValueError / FileNotFoundError / PermissionError
    (one line) before writing anything when an argument is wrong, and ParityGateError after the run when a
    trained model's graph missed its gate.
    """
    start = time.perf_counter()
    say = progress or (lambda message: None)
    precisions = parse_precisions(precisions)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f'opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}')
    if calibration_method not in CALIBRATION_METHODS:
        raise ValueError(f'unknown calibration method {calibration_method!r} '
                         f'(choose from {", ".join(CALIBRATION_METHODS)})')
    fallback = parse_fallback(int8_fallback)
    if calibration_cache is not None and not Path(calibration_cache).is_file():
        raise FileNotFoundError(f'calibration cache not found: {calibration_cache}')
    check_writable_dir(output_dir)  # the cheap checks first: the views and crops below take a while
    record = read_calibration_record(calibration_cache) if calibration_cache and 'int8' in precisions else None
    model = loaded.model.eval()
    result = ExportResult(trained=loaded.trained)
    crops, calibration = None, {}
    if 'int8' in precisions:
        crops, source = calibration_crops(model, calibration_images)
        calibration = {'method': calibration_method, 'crops': len(crops),
                       'source': f'{source}, {calibration_method} calibration'}
        result.calibration = calibration['source']
        if record is not None:  # the graph records how its ranges were computed, not where they were read
            calibration = {key: record[key] for key in ('method', 'crops', 'source')}
            result.calibration = f'{calibration["source"]} (ranges read from {Path(calibration_cache).name})'
    views = ParityViews.of(loaded, parity_images)
    output_dir = ensure_writable_dir(output_dir)
    failed_dir = ensure_writable_dir(failed_dir) if failed_dir is not None else None
    result.parity_images = views.description

    say(f'exporting {loaded.name} to ONNX (opset {opset})')
    t0 = time.perf_counter()
    export = lambda module: torch_to_onnx(module, data_config(module)['input_size'], opset, softmax)  # noqa: E731
    fp32 = export(model)
    fp32_seconds = time.perf_counter() - t0
    meta = base_metadata(loaded, model, opset, softmax)

    settings = {'opset': opset, 'softmax': softmax, 'calibration_method': calibration_method,
                'int8_fallback': int8_fallback if isinstance(int8_fallback, str) else list(int8_fallback),
                'checkpoint': {'name': Path(loaded.source).name, 'sha256': _checkpoint_sha256(loaded.source)}}
    try:
        with tempfile.TemporaryDirectory(prefix='alexnet-zoo-export-') as workdir:
            for precision in precisions:
                t0 = time.perf_counter()
                extra, int8 = {}, None
                if precision == 'fp32':
                    graph = onnx.ModelProto()
                    graph.CopyFrom(fp32)  # the metadata goes on the copy: int8 is quantized from the same bytes always
                    t0 -= fp32_seconds
                elif precision == 'fp16':
                    say('converting to fp16')
                    graph = to_fp16(fp32)
                else:
                    say(f'quantizing to int8 ({result.calibration})')
                    int8 = make_int8(model, fp32, export, crops, views.judge_graph('int8', loaded.trained), views.x,
                                     Path(workdir), calibration_method, fallback, explain,
                                     Path(calibration_cache) if calibration_cache else None, say)
                    graph = int8.graph
                    bad = zero_point_problems(graph)
                    if bad:
                        raise RuntimeError(f'int8 graph breaks TensorRT\'s Q/DQ rule: {bad[0]}')
                    extra = {'calibration': calibration, 'float_layers': int8.float_layers, 'equalized': int8.equalized}
                set_metadata(graph, {**meta, 'precision': precision, **extra})
                check_graph(graph, softmax)
                say(f'checking {FILENAMES[precision]} with ONNX Runtime')
                row = _write_checked(graph, output_dir / FILENAMES[precision], precision, views, loaded.trained,
                                     failed_dir)
                row.update(opset=opset, seconds=time.perf_counter() - t0)
                if int8 is not None:
                    row.update(float_layers=int8.float_layers, equalized=int8.equalized, attempts=int8.attempts,
                               int8_settings=int8_settings(int8, calibration['crops']))
                    if explain:  # seconds more: NNCF's int8 of the same graph, judged beside ours
                        say('quantizing with NNCF too, for comparison (--explain)')
                        row['compared'] = compare_with_nncf(
                            fp32, crops, int8, views.judge_graph('int8', loaded.trained), views.x, row['int8_settings'],
                            row['ms_b1'])
                    _write_int8_extras(int8, output_dir, row, views, result, calibration)
                result.rows.append(row)
                if row['passed'] is not False:
                    result.paths[precision] = output_dir / FILENAMES[precision]
                elif failed_dir is not None:
                    result.failed_paths[precision] = failed_dir / FILENAMES[precision]
    except BaseException:  # export.json lists what was written even when a later precision raised; that error wins
        with contextlib.suppress(Exception):
            _record_export(output_dir, result, meta['weights_sha256'], settings)
        raise
    _record_export(output_dir, result, meta['weights_sha256'], settings)
    result.seconds = time.perf_counter() - start
    failed = [f'{r["precision"]}: {gate_failure(r["precision"], r)}' for r in result.rows if r['passed'] is False]
    if failed:
        raise ParityGateError(f'parity gate failed, not written: {"; ".join(failed)}', result)
    return result


def _record_export(output_dir: Path, result: ExportResult, weights: str, settings: dict) -> None:
    """export.json, last: the files this export wrote (hashed as written, before their rename) and its settings."""
    written = {}
    for r in (r for r in result.rows if r['passed'] is not False):
        entry = {'precision': r['precision'], 'weights_sha256': weights, 'settings': settings}
        written[r['file']] = {**entry, 'sha256': r['sha256'], **_pick(r, 'int8_settings')}
        if r.get('calibration_sha256'):
            written[CALIBRATION_FILE] = {**entry, 'sha256': r['calibration_sha256']}
    if written:  # nothing new: the folder's export.json stays as it is
        write_export_manifest(output_dir, written)


def _pick(row: dict, key: str) -> dict:
    """``{key: row[key]}`` where the row has a value there, else nothing (to spread into a record)."""
    return {key: row[key]} if row.get(key) else {}


def _checkpoint_sha256(source: str) -> Optional[str]:
    """The checkpoint file's hash (a Hugging Face layout folder: its model.safetensors); None without a file."""
    path = Path(source)
    path = path / 'model.safetensors' if path.is_dir() else path
    return sha256_file(path) if path.is_file() else None


def parse_precisions(precisions: Union[str, Iterable[str]]) -> List[str]:
    """'fp32,int8' or ['int8', 'fp32'] -> ['fp32', 'int8'] (canonical order, no repeats); unknown ones raise."""
    items = precisions.split(',') if isinstance(precisions, str) else list(precisions)
    items = [p.strip().lower() for p in items if p.strip()]
    unknown = [p for p in items if p not in GRAPH_PRECISIONS]
    if unknown or not items:
        raise UsageError(f'unknown precision {", ".join(map(repr, unknown)) or "(none given)"} '
                         f'(choose from {", ".join(GRAPH_PRECISIONS)})')
    return [p for p in GRAPH_PRECISIONS if p in items]


def _write_checked(graph: onnx.ModelProto, path: Path, precision: str, views: ParityViews, trained: bool,
                   failed_dir: Optional[Path] = None) -> dict:
    """Write beside ``path``, run the written file in ONNX Runtime, judge it, and rename it into place unless it
    fails its gate (then into ``failed_dir`` if given). A failed gate also removes a stale ``path``."""
    row = {'precision': precision, 'file': path.name}
    try:
        with atomic_path(path) as tmp:
            onnx.save_model(graph, str(tmp))
            row['size_bytes'] = tmp.stat().st_size
            row['sha256'] = sha256_file(tmp)  # the bytes this export wrote, whatever replaces the file later
            row.update(views.figures(run_onnx(tmp, views.x)))
            row.update(judge(precision, row, trained))
            row['ms_b1'] = ort_ms_b1(tmp, views.x)
            if row['passed'] is False:
                if failed_dir is not None:
                    os.replace(tmp, failed_dir / path.name)
                raise _GateFailed()
    except _GateFailed:
        path.unlink(missing_ok=True)
    return row


class _GateFailed(Exception):
    """Internal: unwinds atomic_path so that the temporary file is removed, not renamed."""


def _write_int8_extras(int8: Int8Result, output_dir: Path, row: dict, views: ParityViews, result: ExportResult,
                       calibration: dict) -> None:
    """model.int8.calibration.json (ranges to reuse), and the per-layer diagnosis when there is one; the plain
    int8 graph's speed beside a remedied one's."""
    about = {'source': calibration['source'], 'crops': calibration['crops'], 'equalized': int8.equalized}
    ranges = int8.quantizer.calibration_file(about)
    write_bytes_atomic(output_dir / CALIBRATION_FILE, ranges)
    row['calibration_sha256'] = hashlib.sha256(ranges).hexdigest()  # for export.json
    if int8.float_layers or int8.equalized:  # what the remedy costs: the plain int8 graph's speed beside it
        row['plain_ms_b1'] = ort_ms_b1(int8.plain.SerializeToString(), views.x)
    if int8.diagnosis:
        result.diagnosis = int8.diagnosis
        summary = (f'{views.description}. Gate: {"pass" if row["passed"] else "FAIL"}; tried: '
                   + '; '.join(f'{a["what"]} ({a["sqnr_db"]:.1f} dB, {"pass" if a["passed"] else "fail"})'
                               for a in int8.attempts))
        files = render_diagnosis(int8.diagnosis, {'summary': summary, 'views': DIAGNOSIS_VIEWS,
                                                  'attempts': int8.attempts, **_pick(row, 'compared')})
        if row.get('compared'):
            files['.md'] += f'\n```\n{format_comparison(row["compared"])}\n```\n'.encode()
        for suffix, data in files.items():
            write_bytes_atomic(output_dir / f'model.int8.layers{suffix}', data)


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
    parser.add_argument('--calibration-method', default='minmax', choices=list(CALIBRATION_METHODS),
                        help='ONNX Runtime calibration method for int8 (default: minmax)')
    parser.add_argument('--calibration-cache', metavar='FILE',
                        help=f'int8 tensor ranges from an earlier export ({CALIBRATION_FILE}) instead of calibrating')
    parser.add_argument('--int8-fallback', default='auto', metavar='auto|none|LAYER[,LAYER...]',
                        help='when int8 misses its gate: auto (equalize, else keep up to 4 layers in float), none, '
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


if __name__ == '__main__':
    run_cli(main)
