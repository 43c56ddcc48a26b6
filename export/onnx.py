"""PyTorch -> ONNX in fp32, fp16 and int8, each graph checked and compared with PyTorch before it is kept.

    python -m export.onnx --model alexnet_bn --num-classes 17 --checkpoint CK --output-dir OUT \\
        [--precisions fp32,fp16,int8] [--calibration-images DIR] [--opset N] [--softmax]

Writes OUT/model.onnx, OUT/model.fp16.onnx, OUT/model.int8.onnx. Every graph has the input ``input`` (float32
NCHW, batch dimension ``batch``), the output ``logits`` (and ``probabilities`` with ``--softmax``), and the
preprocessing and labels in its metadata, so a deployer needs nothing but the file. Parity is measured with ONNX
Runtime on the sample photographs' centre crops against PyTorch fp32 and judged by ``export.parity``'s gates
when the weights are trained; a failed gate leaves no file of that precision and raises ``ParityGateError``.
"""
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort
import torch

from alexnet_zoo.checkpoint import LoadedModel, load_model
from alexnet_zoo.cli import ArgumentParser, UsageError, add_model_arguments, run_cli
from alexnet_zoo.data import data_config, sample_batch
from alexnet_zoo.files import PathLike, atomic_path, ensure_writable_dir

from .calibration import PhotoCalibrationReader, calibration_crops
from .contract import (DEFAULT_OPSET, FILENAMES, GRAPH_PRECISIONS, INPUT_NAME, MAX_OPSET, MIN_OPSET, OUTPUT_NAME,
                       check_graph, set_metadata, zero_point_problems)
from .parity import compare, gate_failure, judge, margin_std, verdict
from .precision import CALIBRATION_METHODS, to_fp16, to_int8
from .torch_export import base_metadata, torch_to_onnx

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


def export_onnx(
        loaded: LoadedModel,
        output_dir: PathLike,
        precisions: Sequence[str] = GRAPH_PRECISIONS,
        calibration_images: Optional[PathLike] = None,
        calibration_method: str = 'minmax',
        opset: int = DEFAULT_OPSET,
        softmax: bool = False,
        progress: Progress = None,
) -> ExportResult:
    """Export ``loaded`` to ONNX in each of ``precisions`` under ``output_dir``; returns paths and parity rows.

    Raises ValueError / FileNotFoundError / PermissionError (one line) before writing anything when an argument
    is wrong, and ParityGateError after the run when a trained model's graph missed its gate.
    """
    start = time.perf_counter()
    say = progress or (lambda message: None)
    precisions = parse_precisions(precisions)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f'opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}')
    if calibration_method not in CALIBRATION_METHODS:
        raise ValueError(f'unknown calibration method {calibration_method!r} '
                         f'(choose from {", ".join(CALIBRATION_METHODS)})')
    model = loaded.model.eval()
    result = ExportResult(trained=loaded.trained)
    crops = None
    if 'int8' in precisions:
        crops, result.calibration = calibration_crops(model, calibration_images)
        result.calibration += f', {calibration_method} calibration'
    output_dir = ensure_writable_dir(output_dir)

    names, images = sample_batch(model)
    with torch.no_grad():
        reference = model(images).numpy()
    images = images.numpy()
    result.parity_images = (f'{len(names)} sample photographs (centre crops), PyTorch fp32 median top-1 margin '
                            f'{margin_std(reference):.2f} std')

    say(f'exporting {loaded.name} to ONNX (opset {opset})')
    t0 = time.perf_counter()
    fp32 = torch_to_onnx(model, data_config(model)['input_size'], opset, softmax)
    fp32_seconds = time.perf_counter() - t0
    meta = base_metadata(loaded, model, opset, softmax)

    for precision in precisions:
        t0 = time.perf_counter()
        if precision == 'fp32':
            graph = fp32
            t0 -= fp32_seconds
        elif precision == 'fp16':
            say('converting to fp16')
            graph = to_fp16(fp32)
        else:
            say(f'quantizing to int8 ({result.calibration})')
            graph = to_int8(fp32, PhotoCalibrationReader(crops, input_name=INPUT_NAME), calibration_method)
            bad = zero_point_problems(graph)
            if bad:
                raise RuntimeError(f'int8 graph breaks TensorRT\'s Q/DQ rule: {bad[0]}')
        extra = {'calibration': {'method': calibration_method, 'crops': len(crops),
                                 'source': result.calibration}} if precision == 'int8' else {}
        set_metadata(graph, {**meta, 'precision': precision, **extra})
        check_graph(graph, softmax)
        say(f'checking {FILENAMES[precision]} with ONNX Runtime')
        row = _write_checked(graph, output_dir / FILENAMES[precision], precision, opset, images, reference,
                             loaded.trained)
        row['seconds'] = time.perf_counter() - t0
        result.rows.append(row)
        if row['passed'] is not False:
            result.paths[precision] = output_dir / FILENAMES[precision]
    result.seconds = time.perf_counter() - start
    failed = [f'{r["precision"]}: {gate_failure(r["precision"], r)}' for r in result.rows if r['passed'] is False]
    if failed:
        raise ParityGateError(f'parity gate failed, not written: {"; ".join(failed)}', result)
    return result


def parse_precisions(precisions: Union[str, Iterable[str]]) -> List[str]:
    """'fp32,int8' or ['int8', 'fp32'] -> ['fp32', 'int8'] (canonical order, no repeats); unknown ones raise."""
    items = precisions.split(',') if isinstance(precisions, str) else list(precisions)
    items = [p.strip().lower() for p in items if p.strip()]
    unknown = [p for p in items if p not in GRAPH_PRECISIONS]
    if unknown or not items:
        raise UsageError(f'unknown precision {", ".join(map(repr, unknown)) or "(none given)"} '
                         f'(choose from {", ".join(GRAPH_PRECISIONS)})')
    return [p for p in GRAPH_PRECISIONS if p in items]


def _write_checked(graph: onnx.ModelProto, path: Path, precision: str, opset: int, images: np.ndarray,
                   reference: np.ndarray, trained: bool) -> dict:
    """Write beside ``path``, run it in ONNX Runtime, and rename it into place unless it fails its gate.

    A failed gate also removes a ``path`` left by an earlier run, so that no file of that precision remains.
    """
    row = {'precision': precision, 'file': path.name, 'opset': opset}
    try:
        with atomic_path(path) as tmp:
            onnx.save_model(graph, str(tmp))
            row['size_bytes'] = tmp.stat().st_size
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: ORT's buffer-reuse notes are not the user's business
            session = ort.InferenceSession(str(tmp), options, providers=['CPUExecutionProvider'])
            logits = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
            del session
            row.update(compare(reference, logits))
            row.update(judge(precision, row, trained))
            if row['passed'] is False:
                raise _GateFailed()
    except _GateFailed:
        path.unlink(missing_ok=True)
    return row


class _GateFailed(Exception):
    """Internal: unwinds atomic_path so that the temporary file is removed, not renamed."""


def format_table(result: ExportResult) -> str:
    """The rows as a fixed-width table, for the terminal and for docs."""
    header = ('precision', 'file', 'size MB', 'opset', 'max |d|', 'rel err', 'SQNR dB', 'top-1', 'top-5',
              'seconds', 'gate')
    lines = []
    for r in result.rows:
        gate = verdict(r['passed']) + (' (not written)' if r['passed'] is False else '')
        lines.append((r['precision'], r['file'], f'{r["size_bytes"] / 1e6:.1f}', str(r['opset']),
                      f'{r["max_abs_err"]:.2g}', f'{r["max_rel_err"]:.2g}', f'{r["sqnr_db"]:.1f}',
                      f'{100 * r["top1_agreement"]:.1f} %', f'{100 * r["top5_agreement"]:.1f} %',
                      f'{r["seconds"]:.1f}', gate))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog='python -m export.onnx',
        description='Export a timm AlexNet to ONNX in fp32, fp16 and int8, checking each graph against PyTorch.')
    add_model_arguments(parser)
    parser.add_argument('--output-dir', required=True, help='where model.onnx, model.fp16.onnx, model.int8.onnx go')
    parser.add_argument('--precisions', default=','.join(GRAPH_PRECISIONS),
                        help=f'comma-separated subset of {",".join(GRAPH_PRECISIONS)} (default: all)')
    parser.add_argument('--calibration-images', metavar='DIR',
                        help='int8 calibration images (default: random crops of the sample photographs)')
    parser.add_argument('--calibration-method', default='minmax', choices=list(CALIBRATION_METHODS),
                        help='ONNX Runtime calibration method for int8 (default: minmax)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default: {DEFAULT_OPSET})')
    parser.add_argument('--softmax', action='store_true', help='add a "probabilities" output after the logits')
    return parser


def main(argv: Sequence[str] = None) -> int:
    args = build_parser().parse_args(argv)
    precisions = parse_precisions(args.precisions)
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise UsageError(f'--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {args.opset}')
    loaded = load_model(args.model, args.checkpoint, args.num_classes, args.pretrained)
    progress = lambda message: print(f'{message} ...', file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = export_onnx(loaded, args.output_dir, precisions, args.calibration_images, args.calibration_method,
                             args.opset, args.softmax, progress)
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
    print(format_table(result))
    print(f'total {result.seconds:.1f} s; written: {", ".join(str(p) for p in result.paths.values()) or "nothing"}')


if __name__ == '__main__':
    run_cli(main)
