"""ONNX graph -> TensorRT engine (``python -m export.trt``), and a preflight that checks a graph on the CPU.

TensorRT 10 and 11 build *strongly typed* networks: TensorRT 11 has no FP16/INT8 builder flags and no calibrators,
so the precision comes from the graph itself (``export.onnx`` writes fp32, fp16 and int8 Q/DQ graphs). A build
writes ``model.<precision>.plan`` and its build record ``model.<precision>.plan.json``; loading an engine checks the
record first, because TensorRT refuses (returns None for) an engine built by another TensorRT version or GPU.

TensorRT needs an NVIDIA GPU. Without one, ``--check-only`` lints the graph on the CPU (neither GPU nor TensorRT
needed): ONNX checker, opset range, every op in TensorRT's ONNX parser's supported list, a dynamic batch dimension,
Q/DQ zero points of 0, and tensor types TensorRT takes.
"""
import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import numpy_helper

from alexnet_zoo.fileio import ArgumentParser, UsageError, atomic_path, ensure_writable_dir, run_cli
from benchmarks.runner import BackendUnavailable

from .graph import read_onnx

PathLike = Union[str, Path]

# Opsets TensorRT's ONNX parser accepts (onnx-tensorrt docs/operators.md): TensorRT 10.0 takes opset 9 to 20,
# TensorRT 10.15 and the 11.x parsers take 9 to 24. The preflight accepts the newest range.
OPSET_RANGE = (9, 24)

# Operators marked supported ("Y") in onnx-tensorrt's docs/operators.md for TensorRT 10.15 (default ONNX domain).
SUPPORTED_OPS = frozenset('''
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
    Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
    ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
    LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
    RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu
    Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum
    Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
'''.split())

# Tensor types TensorRT takes (same page). DOUBLE is only cast down with clamping, so the preflight rejects it.
_T = onnx.TensorProto
SUPPORTED_TYPES = frozenset({_T.FLOAT, _T.FLOAT16, _T.BFLOAT16, _T.INT32, _T.INT64, _T.INT8, _T.UINT8, _T.BOOL,
                             _T.INT4, _T.FLOAT8E4M3FN, _T.FLOAT4E2M1})
_DTYPE_ATTRS = ('to', 'dtype', 'output_dtype')  # attributes that name an output type (Cast, RandomNormal, ...)

NO_GPU = 'TensorRT needs an NVIDIA GPU; none found'
CPU_HINT = ' (use --check-only to lint the graph on CPU)'


class EngineRecordError(ValueError):
    """An engine whose build record is missing, unreadable, or does not match the engine or this machine."""


class TensorRTUnavailable(BackendUnavailable):
    """No NVIDIA GPU, no CUDA-enabled torch, or no TensorRT install; the message says which."""


@dataclass(frozen=True)
class BatchProfile:
    """The one optimization profile: the range of batch sizes the engine accepts, and the one it is tuned for."""
    min: int = 1
    opt: int = 8
    max: int = 64

    def __post_init__(self):
        if self.min < 1:
            raise UsageError(f'--min-batch must be at least 1, got {self.min}')
        if not self.min <= self.opt <= self.max:
            raise UsageError(f'batch sizes out of order: need min <= opt <= max, '
                             f'got {self.min}, {self.opt}, {self.max}')

    def shapes(self, chw: Sequence[int]) -> Dict[str, List[int]]:
        return {k: [getattr(self, k), *chw] for k in ('min', 'opt', 'max')}


@dataclass
class BuildResult:
    plan: Path
    record_path: Path
    record: dict


# ---------------------------------------------------------------------------------------------- reading graphs


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The single real input (initializers listed as inputs by old exporters excluded)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f'expected one graph input, found {len(inputs)}: {", ".join(i.name for i in inputs)}')
    return inputs[0]


def _dims(value: onnx.ValueInfoProto) -> List[Union[int, str, None]]:
    """Each dimension as an int (static), a str (named dynamic), or None (unnamed dynamic)."""
    dims = []
    for d in value.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField('dim_value') else (d.dim_param or None))
    return dims


def input_chw(model: onnx.ModelProto) -> Tuple[str, List[int]]:
    """Input name and its static dimensions after the dynamic batch one; the profile varies the batch alone."""
    value = graph_input(model)
    dims = _dims(value)
    if not dims or isinstance(dims[0], int):
        raise ValueError(f'input {value.name!r} has a static batch dimension ({dims[0] if dims else "scalar"}); '
                         f'export the graph with a dynamic batch')
    if not all(isinstance(d, int) for d in dims[1:]):
        raise ValueError(f'input {value.name!r} has dynamic dimensions besides the batch: {dims}')
    return value.name, dims[1:]


def graph_precision(model: onnx.ModelProto) -> str:
    """fp32 / fp16 / int8: what export.onnx wrote into metadata_props, else what the graph holds."""
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get('precision'):
        return meta['precision']
    if any(n.op_type in ('QuantizeLinear', 'DequantizeLinear') for n in model.graph.node):
        return 'int8'
    if any(t.data_type == _T.FLOAT16 for t in model.graph.initializer):
        return 'fp16'
    return 'fp32'


def sha256_of(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- the preflight


def _walk(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """Every node, including those in If/Loop/Scan bodies."""
    for node in nodes:
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _walk(g.node)


def _label(node: onnx.NodeProto) -> str:
    return f'{node.name!r} ({node.op_type})' if node.name else f'{node.op_type} -> {", ".join(node.output)}'


def _constant(name: str, model: onnx.ModelProto) -> Optional[np.ndarray]:
    """The value of a tensor that is an initializer or a Constant node's output; None if computed at run time."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == 'Constant' and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == 'value':
                    return numpy_helper.to_array(attr.t)
    return None


def _check_qdq(model: onnx.ModelProto, nodes: List[onnx.NodeProto]) -> List[str]:
    """TensorRT's parser takes Q/DQ only with zero points of 0 (symmetric int8)."""
    problems = []
    for node in nodes:
        if node.op_type not in ('QuantizeLinear', 'DequantizeLinear') or len(node.input) < 3 or not node.input[2]:
            continue
        zero_point = _constant(node.input[2], model)
        if zero_point is None:
            problems.append(f'node {_label(node)}: zero point {node.input[2]!r} is not a constant; '
                            f'TensorRT needs constant zero points of 0')
        elif np.any(zero_point != 0):
            nonzero = sorted(set(np.asarray(zero_point).ravel().tolist()) - {0})
            problems.append(f'node {_label(node)}: zero point {node.input[2]!r} is not 0 '
                            f'(values {nonzero[:5]}); TensorRT needs symmetric quantization (zero point 0)')
        elif zero_point.dtype == np.uint8:
            problems.append(f'node {_label(node)}: quantizes to uint8; TensorRT needs signed int8 with zero point 0')
    return problems


def _check_types(model: onnx.ModelProto, nodes: List[onnx.NodeProto]) -> List[str]:
    """One line per unsupported element type, naming the first tensors that have it."""
    found = defaultdict(list)  # elem_type -> tensor or node names
    g = model.graph
    for value in [*g.input, *g.output, *g.value_info]:
        if value.type.HasField('tensor_type'):
            found[value.type.tensor_type.elem_type].append(value.name)
    for t in g.initializer:
        found[t.data_type].append(t.name)
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                found[attr.t.data_type].append(f'{node.op_type} {node.output[0] if node.output else ""}'.strip())
            elif attr.name in _DTYPE_ATTRS and attr.type == onnx.AttributeProto.INT:
                found[attr.i].append(f'{node.op_type} {node.output[0] if node.output else ""}'.strip())
    problems = []
    for elem_type, names in sorted(found.items()):
        if elem_type in SUPPORTED_TYPES or elem_type == _T.UNDEFINED:
            continue
        type_name = onnx.TensorProto.DataType.Name(elem_type).lower()
        hint = '; export in float32' if elem_type == _T.DOUBLE else ''
        shown = ', '.join(repr(n) for n in names[:3]) + (f' and {len(names) - 3} more' if len(names) > 3 else '')
        problems.append(f'{len(names)} tensor(s) of type {type_name}, which TensorRT does not support: {shown}{hint}')
    return problems


def check_onnx(path: PathLike) -> List[str]:
    """Problems that would stop TensorRT 10/11 from parsing ``path`` into an engine with a dynamic batch.

    Runs on the CPU without TensorRT. An empty list means the graph passes every check; TensorRT's own parser has
    the last word (per-op restrictions such as attribute values are not all covered).
    """
    model = read_onnx(path)
    problems = []
    try:
        onnx.checker.check_model(str(path), full_check=True)  # by path: weights stored beside the graph too
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        problems.append(f'ONNX checker: {str(e).strip().splitlines()[0]}')
    else:  # the checker's shape inference passed; keep the inferred types for the type check
        model = onnx.shape_inference.infer_shapes(model)

    opsets = {o.domain or 'ai.onnx': o.version for o in model.opset_import}
    opset = opsets.get('ai.onnx')
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f'opset {opset}: TensorRT 10/11 parse opsets {OPSET_RANGE[0]} to {OPSET_RANGE[1]}')

    local_functions = {(f.domain, f.name): f for f in model.functions}
    nodes = list(_walk(model.graph.node))
    for f in local_functions.values():  # TensorRT's parser expands local functions: check their bodies
        nodes.extend(_walk(f.node))
    unsupported = defaultdict(list)
    for node in nodes:
        if (node.domain, node.op_type) in local_functions:
            continue
        if node.domain not in ('', 'ai.onnx'):
            unsupported[f'{node.domain}::{node.op_type}'].append(node)
        elif node.op_type not in SUPPORTED_OPS:
            unsupported[node.op_type].append(node)
    for op, op_nodes in sorted(unsupported.items()):
        shown = ', '.join(_label(n) for n in op_nodes[:3]) + (f' and {len(op_nodes) - 3} more' if len(op_nodes) > 3 else '')
        problems.append(f'op {op} is not in TensorRT\'s ONNX parser\'s supported list: {shown}')

    try:
        input_chw(model)
    except ValueError as e:
        problems.append(str(e))
    problems += _check_qdq(model, nodes)
    problems += _check_types(model, nodes)
    return problems


# ------------------------------------------------------------------------------------- GPU, TensorRT, records


def require_gpu(hint: str = '') -> Tuple[str, str]:
    """Name and compute capability of the current CUDA device, found without touching TensorRT.

    TensorRT on a machine without a GPU fails inside CUDA initialisation and then raises a TypeError, so the
    absence of a GPU is detected here first (through torch, which is already a dependency).
    """
    import torch
    if torch.version.cuda is None:
        raise TensorRTUnavailable(f'TensorRT needs CUDA; this PyTorch build has no CUDA support{hint}')
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(NO_GPU + hint)
    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f'{major}.{minor}'


def import_tensorrt(hint: str = ''):
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(f"TensorRT is not installed (pip install 'alexnet-zoo[trt]'){hint}") from None
    return tensorrt


_LOGGERS = {}


def trt_logger(trt):
    """One logger for every builder and runtime: TensorRT treats the logger as a process-wide singleton."""
    if trt not in _LOGGERS:
        _LOGGERS[trt] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt]


def record_path(plan: PathLike) -> Path:
    """``model.int8.plan`` -> ``model.int8.plan.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + '.json')


def read_record(plan: PathLike) -> dict:
    """The build record of ``plan``, checked against the engine file (no GPU or TensorRT needed)."""
    plan = Path(plan)
    if not plan.is_file():
        raise FileNotFoundError(f'engine not found: {plan}')
    path = record_path(plan)
    if not path.is_file():
        raise EngineRecordError(f'engine {plan.name} has no build record ({path.name}); rebuild it with export.trt')
    try:
        record = json.loads(path.read_text())
        for keys in (('engine', 'sha256'), ('engine', 'file'), ('tensorrt_version',), ('precision',), ('input', 'name'),
                     ('gpu', 'name'), ('gpu', 'compute_capability')):
            value = record
            for key in keys:
                value = value[key]
    except (ValueError, KeyError, TypeError) as e:
        raise EngineRecordError(f'build record {path.name} is unreadable ({type(e).__name__}: {e})') from None
    if sha256_of(plan) != record['engine']['sha256']:
        raise EngineRecordError(f'engine {plan.name} does not match its build record {path.name} '
                                f'(sha256 differs); rebuild it with export.trt')
    return record


def check_record(record: dict, tensorrt_version: str, gpu_name: str, compute_capability: str) -> None:
    """An engine runs only on the TensorRT version and GPU that built it: say so in one line if this is not it."""
    built = (record['tensorrt_version'], record['gpu']['name'], record['gpu']['compute_capability'])
    here = (tensorrt_version, gpu_name, compute_capability)
    if built != here:
        raise EngineRecordError(
            f'engine {record["engine"]["file"]} was built with TensorRT {built[0]} on {built[1]} '
            f'(compute {built[2]}); this machine has TensorRT {here[0]} on {here[1]} (compute {here[2]}): '
            f'rebuild it here with python -m export.trt')


def load_engine(plan: PathLike):
    """Deserialize ``plan`` after checking its build record; returns (tensorrt module, ICudaEngine, record)."""
    record = read_record(plan)
    gpu_name, capability = require_gpu()
    trt = import_tensorrt()
    check_record(record, trt.__version__, gpu_name, capability)
    runtime = trt.Runtime(trt_logger(trt))
    engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
    if engine is None:  # TensorRT returns None rather than raising; its logger printed the reason
        raise EngineRecordError(f'TensorRT could not deserialize {Path(plan).name} although its record matches '
                                f'this machine; rebuild it with python -m export.trt')
    return trt, engine, record


# ---------------------------------------------------------------------------------------------------- the build


def default_plan(onnx_path: PathLike, precision: str) -> Path:
    return Path(onnx_path).with_name(f'model.{precision}.plan')


def build_engine(onnx_path: PathLike, plan: Optional[PathLike] = None, profile: BatchProfile = BatchProfile(),
                 timing_cache: Optional[PathLike] = None, workspace_gb: Optional[float] = None) -> BuildResult:
    """Parse ``onnx_path`` with TensorRT's ONNX parser into a strongly typed network and build its engine.

    Writes ``plan`` and its build record atomically (both or neither) and, if ``timing_cache`` is given, reads it
    before the build and writes it back after. Checks the inputs, then the GPU, then TensorRT, before building.
    """
    model = read_onnx(onnx_path)
    input_name, chw = input_chw(model)
    precision = graph_precision(model)
    plan = Path(plan) if plan else default_plan(onnx_path, precision)
    if plan.suffix == '.json' or plan.resolve() == Path(onnx_path).resolve():
        raise UsageError(f'--output must be an engine path like model.{precision}.plan, got {plan}')
    if workspace_gb is not None and workspace_gb <= 0:
        raise UsageError(f'--workspace-gb must be positive, got {workspace_gb}')
    gpu_name, capability = require_gpu(CPU_HINT)
    trt = import_tensorrt(CPU_HINT)
    ensure_writable_dir(plan.parent)
    if timing_cache is not None:
        ensure_writable_dir(Path(timing_cache).parent)

    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    # Strongly typed: precision comes from the graph. TensorRT 11 keeps this flag for compatibility and ignores it.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    data = Path(onnx_path).read_bytes()
    if not parser.parse(data, str(Path(onnx_path).resolve())):  # the path locates weights stored beside the graph
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise ValueError(f'TensorRT could not parse {Path(onnx_path).name}: ' + '; '.join(
            f'node {e.node()}: {e.code()}: {" ".join(str(e.desc()).split())}' for e in errors))

    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    shapes = profile.shapes(chw)
    optimization_profile = builder.create_optimization_profile()
    optimization_profile.set_shape(input_name, shapes['min'], shapes['opt'], shapes['max'])
    if config.add_optimization_profile(optimization_profile) < 0:
        raise ValueError(f'TensorRT rejected the batch profile {shapes} for input {input_name!r}')
    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b'')
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise ValueError(f'timing cache {timing_cache} is unreadable or was written for another GPU or '
                             f'TensorRT version; delete it or name another --timing-cache')

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - started
    if serialized is None:
        raise RuntimeError(f'TensorRT could not build an engine from {Path(onnx_path).name} (see its messages above)')
    engine_bytes = bytes(memoryview(serialized))

    meta = {p.key: p.value for p in model.metadata_props}
    record = {
        'tensorrt_version': trt.__version__,
        'gpu': {'name': gpu_name, 'compute_capability': capability},
        'precision': precision,
        'strongly_typed': True,
        'input': {'name': input_name, **shapes},
        'outputs': [o.name for o in model.graph.output],
        'onnx': {'file': Path(onnx_path).name, 'sha256': hashlib.sha256(data).hexdigest(),
                 'model_name': meta.get('model_name')},
        'engine': {'file': plan.name, 'sha256': hashlib.sha256(engine_bytes).hexdigest(), 'bytes': len(engine_bytes)},
        'workspace_bytes': None if workspace_gb is None else int(workspace_gb * (1 << 30)),
        'build_seconds': round(build_seconds, 2),
        'built_at': datetime.now(timezone.utc).isoformat(timespec='seconds'),
    }
    rec_path = record_path(plan)
    with atomic_path(rec_path) as tmp_record, atomic_path(plan) as tmp_plan:  # engine renamed first, record last
        tmp_plan.write_bytes(engine_bytes)
        tmp_record.write_text(json.dumps(record, indent=2) + '\n')
    if cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return BuildResult(plan, rec_path, record)


# -------------------------------------------------------------------------------------------------------- the CLI


def main(argv: Sequence[str] = None) -> int:
    parser = ArgumentParser(prog='python -m export.trt', description=__doc__.split('\n\n')[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--onnx', type=Path, help='ONNX graph from export.onnx (model.onnx, model.fp16.onnx, model.int8.onnx)')
    what.add_argument('--verify', type=Path, metavar='PLAN',
                      help='check an engine against its build record and this machine, then deserialize it')
    parser.add_argument('--output', type=Path, help='engine path (default: model.<precision>.plan beside the ONNX file)')
    parser.add_argument('--min-batch', type=int, default=1)
    parser.add_argument('--opt-batch', type=int, default=8)
    parser.add_argument('--max-batch', type=int, default=64)
    parser.add_argument('--timing-cache', type=Path, help='TensorRT timing cache to read and write back')
    parser.add_argument('--workspace-gb', type=float, help='limit on TensorRT\'s build workspace (GiB)')
    parser.add_argument('--check-only', action='store_true',
                        help='lint the graph on the CPU (no GPU, no TensorRT): exit 0 if it would parse, else 1')
    args = parser.parse_args(argv)

    if args.verify:
        _, engine, record = load_engine(args.verify)
        shapes = record['input']
        print(f'ok: {args.verify} — TensorRT {record["tensorrt_version"]}, {record["gpu"]["name"]}, '
              f'{record["precision"]}, batch {shapes["min"][0]}..{shapes["max"][0]}, {engine.num_io_tensors} I/O tensors')
        return 0
    if args.check_only:
        problems = check_onnx(args.onnx)
        for problem in problems:
            print(f'error: {args.onnx}: {problem}', file=sys.stderr)
        if not problems:
            print(f'ok: {args.onnx} passes the TensorRT preflight')
        return 1 if problems else 0
    profile = BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
    result = build_engine(args.onnx, args.output, profile, args.timing_cache, args.workspace_gb)
    print(f'wrote {result.plan} and {result.record_path.name} ({result.record["precision"]}, '
          f'{result.record["build_seconds"]} s)')
    return 0


if __name__ == '__main__':
    run_cli(main)
