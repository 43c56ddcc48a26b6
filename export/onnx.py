"""PyTorch -> ONNX in fp32, fp16 and int8, each graph checked and compared with PyTorch before it is kept.

    python -m export.onnx --model alexnet_bn --num-classes 17 --checkpoint CK --output-dir OUT \\
        [--precisions fp32,fp16,int8] [--calibration-images DIR] [--opset N] [--softmax]

Writes OUT/model.onnx, OUT/model.fp16.onnx, OUT/model.int8.onnx. Every graph has the input ``input`` (float32
NCHW, batch dimension ``batch``), the output ``logits`` (and ``probabilities`` with ``--softmax``), and the
preprocessing and labels in its metadata, so a deployer needs nothing but the file. Parity is measured with ONNX
Runtime on the sample photographs' centre crops against PyTorch fp32 and judged by ``benchmarks.parity``'s gates
when the weights are trained; a failed gate leaves no file of that precision and raises ``ParityGateError``.
"""
import contextlib
import copy
import io
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

import alexnet_zoo
from alexnet_zoo.checkpoint import LoadedModel, add_model_arguments, load_model
from alexnet_zoo.fileio import ArgumentParser, UsageError, atomic_path, ensure_writable_dir, run_cli
from alexnet_zoo.samples import data_config, sample_batch
from benchmarks.parity import GATES, compare, judge, margin_std

from .calibration import PhotoCalibrationReader, calibration_crops
from .graph import read_onnx
from .precision import CALIBRATION_METHODS, to_fp16, to_int8, zero_points

PRECISIONS = ('fp32', 'fp16', 'int8')
FILENAMES = {'fp32': 'model.onnx', 'fp16': 'model.fp16.onnx', 'int8': 'model.int8.onnx'}
# Opset 18 is what torch's exporter implements natively (lower opsets are down-converted, which fails for some
# ops), and ONNX Runtime, OpenVINO and TensorRT 10/11 all parse it (TensorRT 8.6 stops at 17: ask for 17 there).
# 13 is the first opset with per-channel Q/DQ.
DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 13, 25
DYNAMO_MIN_OPSET = 18  # below it the TorchScript exporter writes the requested opset directly
INPUT_NAME, OUTPUT_NAME, PROBABILITIES_NAME, BATCH_DIM = 'input', 'logits', 'probabilities', 'batch'
# metadata values stored as JSON (everything in metadata_props is a string); read_metadata decodes these
JSON_KEYS = ('num_classes', 'input_size', 'mean', 'std', 'crop_pct', 'label_names', 'opset', 'trained', 'softmax',
             'calibration')

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
        output_dir: Union[str, Path],
        precisions: Sequence[str] = PRECISIONS,
        calibration_images: Optional[Union[str, Path]] = None,
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
            bad = {name: zp for name, zp in zero_points(graph).items() if np.any(zp != 0)}
            if bad:
                raise RuntimeError(f'int8 graph has non-zero zero points (TensorRT cannot parse it): {sorted(bad)[:3]}')
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
    failed = [f'{r["precision"]}: {gate_failure(r)}' for r in result.rows if r['passed'] is False]
    if failed:
        raise ParityGateError(f'parity gate failed, not written: {"; ".join(failed)}', result)
    return result


def parse_precisions(precisions: Union[str, Iterable[str]]) -> List[str]:
    """'fp32,int8' or ['int8', 'fp32'] -> ['fp32', 'int8'] (canonical order, no repeats); unknown ones raise."""
    items = precisions.split(',') if isinstance(precisions, str) else list(precisions)
    items = [p.strip().lower() for p in items if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        raise UsageError(f'unknown precision {", ".join(map(repr, unknown)) or "(none given)"} '
                         f'(choose from {", ".join(PRECISIONS)})')
    return [p for p in PRECISIONS if p in items]


class _WithProbabilities(nn.Module):
    """The model, with softmax probabilities as a second output (the logits stay the first)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        return logits, logits.softmax(dim=-1)


def torch_to_onnx(model: nn.Module, input_size: Sequence[int], opset: int = DEFAULT_OPSET,
                  softmax: bool = False) -> onnx.ModelProto:
    """The fp32 graph with a dynamic batch dimension; BatchNorm layers that feed a Linear are folded into it."""
    module = fold_batchnorm(model)
    outputs = [OUTPUT_NAME, PROBABILITIES_NAME] if softmax else [OUTPUT_NAME]
    if softmax:
        module = _WithProbabilities(module)
    example = (torch.randn(2, *input_size),)  # batch 2, so that the exporter cannot specialise the batch to 1
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')  # exporter chatter (deprecations, "Obtain model graph...") is not for users
        if opset >= DYNAMO_MIN_OPSET:
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=[INPUT_NAME], output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},), opset_version=opset, optimize=True,
                verbose=False)
            graph = program.model_proto
        else:
            import onnxscript  # its optimizer drops the Identity nodes the TorchScript exporter leaves
            buffer = io.BytesIO()
            torch.onnx.export(
                module, example, buffer, dynamo=False, input_names=[INPUT_NAME], output_names=outputs,
                dynamic_axes={name: {0: BATCH_DIM} for name in [INPUT_NAME, *outputs]}, opset_version=opset)
            graph = onnxscript.optimizer.optimize(onnx.load_from_string(buffer.getvalue()))
    got = next(o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx'))
    if got != opset:
        raise RuntimeError(f'the exporter wrote opset {got}, not the requested {opset}')
    return graph


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every BatchNorm whose output only feeds a Linear is folded into that Linear.

    y = W (s x + t) + b = (W s) x + (W t + b) holds exactly (up to float rounding), so the exported graph computes
    the same function with fewer nodes and one quantization step less per layer in int8. A BatchNorm that feeds a
    padded convolution does not fold exactly (the padding would be shifted too) and is left alone. ``model`` is
    returned unchanged when it has nothing to fold or torch.fx cannot trace it.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception:  # an untraceable model is exported as it is
        return model
    modules = dict(traced.named_modules())
    passthrough = (nn.Identity, nn.Dropout, nn.Flatten)
    folded = 0
    for node in list(traced.graph.nodes):
        if node.op != 'call_module' or not isinstance(modules[node.target], nn.Linear):
            continue
        linear, source, flattened = modules[node.target], node.args[0], False
        while (source.op == 'call_module' and isinstance(modules[source.target], passthrough)
               and len(source.users) == 1):
            if isinstance(modules[source.target], nn.Flatten):
                flat = modules[source.target]
                if (flat.start_dim, flat.end_dim) != (1, -1):
                    break
                flattened = True
            source = source.args[0]
        if source.op != 'call_module' or len(source.users) != 1:
            continue
        bn = modules[source.target]
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
            continue
        if isinstance(bn, nn.BatchNorm1d) == flattened or linear.in_features % bn.num_features:
            continue  # a BatchNorm1d before a Flatten, or a BatchNorm2d/3d without one: not a per-feature scale
        with torch.no_grad():
            scale = bn.running_var.double().add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            repeat = linear.in_features // bn.num_features  # a flattened channel covers H*W consecutive features
            scale, shift = scale.repeat_interleave(repeat), shift.repeat_interleave(repeat)
            weight = linear.weight.double()
            bias = linear.bias.double() if linear.bias is not None else torch.zeros(linear.out_features).double()
            new_bias = bias + weight @ shift
            linear.weight.copy_(weight * scale)
            if linear.bias is None:
                linear.bias = nn.Parameter(torch.zeros_like(linear.weight[:, 0]))
            linear.bias.copy_(new_bias)
        source.replace_all_uses_with(source.args[0])
        traced.graph.erase_node(source)
        folded += 1
    if not folded:
        return model
    traced.graph.lint()
    traced.recompile()
    return traced


def base_metadata(loaded: LoadedModel, model: nn.Module, opset: int, softmax: bool) -> Dict[str, object]:
    """What a deployer needs to feed the graph and read its output, from the file alone."""
    cfg = data_config(model)
    meta = {
        'model_name': loaded.name,
        'num_classes': loaded.num_classes,
        'input_size': list(cfg['input_size']),
        'mean': list(cfg['mean']),
        'std': list(cfg['std']),
        'crop_pct': cfg['crop_pct'],
        'crop_mode': cfg.get('crop_mode', 'center'),
        'interpolation': cfg['interpolation'],
        'input_layout': 'NCHW, RGB, float32, scaled to [0, 1] then normalized with mean and std',
        'opset': opset,
        'trained': loaded.trained,
        'softmax': softmax,
        'version': alexnet_zoo.__version__,
    }
    if loaded.label_names:
        meta['label_names'] = list(loaded.label_names)
    return meta


def set_metadata(graph: onnx.ModelProto, meta: Dict[str, object]) -> None:
    """Replace the model's metadata_props with ``meta`` (JSON for the JSON_KEYS, plain strings otherwise)."""
    onnx.helper.set_model_props(graph, {k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in meta.items()})


def read_metadata(path: Union[str, Path]) -> Dict[str, object]:
    """An exported graph's metadata_props as a dict: strings, with the JSON_KEYS decoded."""
    graph = read_onnx(path, load_external_data=False)
    out = {}
    for prop in graph.metadata_props:
        out[prop.key] = json.loads(prop.value) if prop.key in JSON_KEYS else prop.value
    return out


def check_graph(graph: onnx.ModelProto, softmax: bool = False) -> None:
    """onnx's full check (it runs strict shape inference), then the input/output contract the other tools rely on."""
    onnx.checker.check_model(graph, full_check=True)
    expected_outputs = [OUTPUT_NAME, PROBABILITIES_NAME] if softmax else [OUTPUT_NAME]
    inputs = [i for i in graph.graph.input if i.name not in {t.name for t in graph.graph.initializer}]
    problems = []
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(f'inputs are {[i.name for i in inputs]}, expected [{INPUT_NAME!r}]')
    if [o.name for o in graph.graph.output] != expected_outputs:
        problems.append(f'outputs are {[o.name for o in graph.graph.output]}, expected {expected_outputs}')
    for value in [*inputs, *graph.graph.output]:
        tensor = value.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f'{value.name} is {onnx.TensorProto.DataType.Name(tensor.elem_type)}, not FLOAT')
        if not tensor.shape.dim or tensor.shape.dim[0].dim_param != BATCH_DIM:
            problems.append(f'{value.name} has no dynamic batch dimension {BATCH_DIM!r}')
    if problems:
        raise RuntimeError('exported graph breaks its contract: ' + '; '.join(problems))


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


def gate_failure(row: dict) -> str:
    """Which figures of a row missed its precision's gate, e.g. 'top-1 90.0 % < 95.0 %'."""
    gate, misses = GATES[row['precision']], []
    if row['top1_agreement'] < gate['top1_min']:
        misses.append(f'top-1 {100 * row["top1_agreement"]:.1f} % < {100 * gate["top1_min"]:.1f} %')
    if 'rel_err_max' in gate and row['max_rel_err'] > gate['rel_err_max']:
        misses.append(f'max |d| / max |logit| {row["max_rel_err"]:.2g} > {gate["rel_err_max"]:.0e}')
    if 'sqnr_min_db' in gate and row['sqnr_db'] < gate['sqnr_min_db']:
        misses.append(f'SQNR {row["sqnr_db"]:.1f} dB < {gate["sqnr_min_db"]:.0f} dB')
    return ', '.join(misses) or 'gate failed'


def format_table(result: ExportResult) -> str:
    """The rows as a fixed-width table, for the terminal and for docs."""
    header = ('precision', 'file', 'size MB', 'opset', 'max |d|', 'rel err', 'SQNR dB', 'top-1', 'top-5',
              'seconds', 'gate')
    lines = []
    for r in result.rows:
        verdict = 'not judged' if not r['judged'] else 'pass' if r['passed'] else 'FAIL (not written)'
        lines.append((r['precision'], r['file'], f'{r["size_bytes"] / 1e6:.1f}', str(r['opset']),
                      f'{r["max_abs_err"]:.2g}', f'{r["max_rel_err"]:.2g}', f'{r["sqnr_db"]:.1f}',
                      f'{100 * r["top1_agreement"]:.1f} %', f'{100 * r["top5_agreement"]:.1f} %',
                      f'{r["seconds"]:.1f}', verdict))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog='python -m export.onnx',
        description='Export a timm AlexNet to ONNX in fp32, fp16 and int8, checking each graph against PyTorch.')
    add_model_arguments(parser)
    parser.add_argument('--output-dir', required=True, help='where model.onnx, model.fp16.onnx, model.int8.onnx go')
    parser.add_argument('--precisions', default=','.join(PRECISIONS),
                        help=f'comma-separated subset of {",".join(PRECISIONS)} (default: all)')
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
