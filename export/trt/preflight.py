"""The TensorRT preflight: would TensorRT 10/11 parse this graph into an engine with a dynamic batch?

Runs on the CPU with neither a GPU nor TensorRT (``python -m export.trt --check-only``): ONNX checker, opset range,
every op in TensorRT's ONNX parser's supported list, a dynamic batch dimension, Q/DQ zero points of 0, and tensor
types TensorRT takes. Imports onnx and numpy only. ``export.onnx`` checks its int8 graphs' zero points here too.
"""
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from alexnet_zoo.cli import first_line, printable
from alexnet_zoo.files import PathLike

from export.contract import QDQ_OPS, input_chw, read_onnx

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


def _walk(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """Every node, including those in If/Loop/Scan bodies."""
    for node in nodes:
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _walk(g.node)


def node_label(node: onnx.NodeProto) -> str:
    return f'{node.name!r} ({node.op_type})' if node.name else f'{node.op_type} -> {", ".join(node.output)}'


def constant(model: onnx.ModelProto, name: str) -> Optional[np.ndarray]:
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


def zero_points(model: onnx.ModelProto,
                nodes: Optional[Sequence[onnx.NodeProto]] = None) -> Dict[str, Optional[np.ndarray]]:
    """Every Q/DQ node's zero point, by node label: its value, or None where it is not a constant."""
    return {node_label(node): constant(model, node.input[2])
            for node in (model.graph.node if nodes is None else nodes)
            if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2]}


def zero_point_problems(model: onnx.ModelProto, nodes: Optional[Sequence[onnx.NodeProto]] = None) -> List[str]:
    """Q/DQ zero points that TensorRT's parser refuses: not constant, not 0, or uint8 (it needs symmetric int8)."""
    problems = []
    for label, zero_point in zero_points(model, nodes).items():
        if zero_point is None:
            problems.append(f'node {label}: zero point is not a constant; TensorRT needs constant zero points of 0')
        elif np.any(zero_point != 0):
            nonzero = sorted(set(np.asarray(zero_point).ravel().tolist()) - {0})
            problems.append(f'node {label}: zero point is not 0 (values {nonzero[:5]}); TensorRT needs symmetric '
                            f'quantization (zero point 0)')
        elif zero_point.dtype == np.uint8:
            problems.append(f'node {label}: quantizes to uint8; TensorRT needs signed int8 with zero point 0')
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
        problems.append(f'ONNX checker: {first_line(e)}')
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
        shown = ', '.join(node_label(n) for n in op_nodes[:3]) + (f' and {len(op_nodes) - 3} more' if len(op_nodes) > 3 else '')
        problems.append(f'op {op} is not in TensorRT\'s ONNX parser\'s supported list: {shown}')

    try:
        input_chw(model)
    except ValueError as e:
        problems.append(str(e))
    problems += zero_point_problems(model, nodes)
    problems += _check_types(model, nodes)
    return [printable(p) for p in problems]  # names come from the file: nothing a terminal acts on
