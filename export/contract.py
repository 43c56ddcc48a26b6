"""The ONNX contract every tool relies on: names, file names, the metadata schema, reading and validating a graph.

``export.onnx`` writes graphs that keep it; ``export.trt``, the benchmark and a deployer read them through it. Kept
free of torch and timm, so that the TensorRT preflight and reading a graph's metadata stay light imports. What
TensorRT alone asks of a graph (Q/DQ zero points of 0) is in ``export.trt.preflight``; the folder's ``export.json``
in ``export.export_manifest``.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import onnx

from alexnet_zoo.cli import first_line
from alexnet_zoo.files import PathLike

INPUT_NAME, OUTPUT_NAME, PROBABILITIES_NAME, BATCH_DIM = 'input', 'logits', 'probabilities', 'batch'
GRAPH_PRECISIONS = ('fp32', 'fp16', 'int8')  # the precisions export.onnx writes a graph for
FILENAMES = {'fp32': 'model.onnx', 'fp16': 'model.fp16.onnx', 'int8': 'model.int8.onnx'}
CALIBRATION_FILE = 'model.int8.calibration.json'  # the int8 graph's tensor ranges, for --calibration-cache
# Opset 18 is what torch's exporter implements natively (lower opsets are down-converted, which fails for some
# ops), and ONNX Runtime, OpenVINO and TensorRT 10/11 all parse it (TensorRT 8.6 stops at 17: ask for 17 there).
# 13 is the first opset with per-channel Q/DQ.
DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 13, 25

# The metadata schema. Everything in metadata_props is a string: these keys hold JSON, the others plain text.
METADATA_KEYS = ('model_name', 'num_classes', 'input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation',
                 'input_layout', 'opset', 'trained', 'softmax', 'version', 'label_names', 'precision', 'calibration',
                 'float_layers', 'equalized', 'weights_sha256')
JSON_KEYS = ('num_classes', 'input_size', 'mean', 'std', 'crop_pct', 'label_names', 'opset', 'trained', 'softmax',
             'calibration', 'float_layers', 'equalized')
QDQ_OPS = ('QuantizeLinear', 'DequantizeLinear')


def output_names(softmax: bool) -> List[str]:
    return [OUTPUT_NAME, PROBABILITIES_NAME] if softmax else [OUTPUT_NAME]


def read_onnx(path: PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """The parsed graph; FileNotFoundError / ValueError (one line) for a missing or non-ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'ONNX file not found: {path}')
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:  # protobuf's DecodeError, a missing external-data file, ...
        raise ValueError(f'not an ONNX model: {path} ({first_line(e, 200)})') from None
    if not model.graph.node:  # protobuf parses many random byte strings as an empty model
        raise ValueError(f'not an ONNX model: {path} (no graph nodes)')
    return model


def set_metadata(graph: onnx.ModelProto, meta: Dict[str, object]) -> None:
    """Replace the model's metadata_props with ``meta`` (JSON for the JSON_KEYS, plain strings otherwise)."""
    unknown = sorted(set(meta) - set(METADATA_KEYS))
    if unknown:
        raise ValueError(f'metadata keys outside the schema: {unknown} (export.contract.METADATA_KEYS)')
    onnx.helper.set_model_props(graph, {k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in meta.items()})


def metadata(graph: onnx.ModelProto) -> Dict[str, object]:
    """A graph's metadata_props as a dict: strings, with the JSON_KEYS decoded."""
    meta = {}
    for prop in graph.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value) if prop.key in JSON_KEYS else prop.value
        except ValueError as e:
            raise ValueError(f'metadata {prop.key!r} is not JSON ({e})') from None
    return meta


def read_metadata(path: PathLike) -> Dict[str, object]:
    """An exported graph's metadata, read without its weights."""
    try:
        return metadata(read_onnx(path, load_external_data=False))
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f'{path}: {e}') from None


def graph_inputs(model: onnx.ModelProto) -> List[onnx.ValueInfoProto]:
    """The real inputs: old exporters also list the initializers as graph inputs."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The single real input."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise ValueError(f'expected one graph input, found {len(inputs)}: {", ".join(i.name for i in inputs)}')
    return inputs[0]


def dims(value: onnx.ValueInfoProto) -> List[Union[int, str, None]]:
    """Each dimension as an int (static), a str (named dynamic), or None (unnamed dynamic)."""
    return [d.dim_value if d.HasField('dim_value') else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


def input_chw(model: onnx.ModelProto) -> Tuple[str, List[int]]:
    """Input name and its static dimensions after the dynamic batch one; an engine profile varies the batch alone."""
    value = graph_input(model)
    shape = dims(value)
    if not shape or isinstance(shape[0], int):
        raise ValueError(f'input {value.name!r} has a static batch dimension ({shape[0] if shape else "scalar"}); '
                         f'export the graph with a dynamic batch')
    if not all(isinstance(d, int) for d in shape[1:]):
        raise ValueError(f'input {value.name!r} has dynamic dimensions besides the batch: {shape}')
    return value.name, shape[1:]


def contract_problems(graph: onnx.ModelProto, softmax: bool = False) -> List[str]:
    """How ``graph`` breaks the input/output contract: one input ``input``, outputs ``logits`` [+ probabilities],
    all float32 with the dynamic batch dimension ``batch``."""
    inputs, expected = graph_inputs(graph), output_names(softmax)
    problems = []
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(f'inputs are {[i.name for i in inputs]}, expected [{INPUT_NAME!r}]')
    if [o.name for o in graph.graph.output] != expected:
        problems.append(f'outputs are {[o.name for o in graph.graph.output]}, expected {expected}')
    for value in [*inputs, *graph.graph.output]:
        tensor = value.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f'{value.name} is {onnx.TensorProto.DataType.Name(tensor.elem_type)}, not FLOAT')
        if not tensor.shape.dim or tensor.shape.dim[0].dim_param != BATCH_DIM:
            problems.append(f'{value.name} has no dynamic batch dimension {BATCH_DIM!r}')
    return problems


def check_graph(graph: onnx.ModelProto, softmax: bool = False) -> None:
    """onnx's full check (it runs strict shape inference), then the contract; RuntimeError naming what broke."""
    onnx.checker.check_model(graph, full_check=True)
    problems = contract_problems(graph, softmax)
    if problems:
        raise RuntimeError('exported graph breaks its contract: ' + '; '.join(problems))


def graph_precision(model: onnx.ModelProto) -> str:
    """fp32 / fp16 / int8: what export.onnx wrote into the metadata, else what the graph holds."""
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get('precision'):
        return meta['precision']
    if any(n.op_type in QDQ_OPS for n in model.graph.node):
        return 'int8'
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return 'fp16'
    return 'fp32'


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def weight_bytes(path: PathLike, float_bytes: Optional[int] = None) -> int:
    """Bytes of the graph's initializers (what an inference reads at least once); ``float_bytes`` counts float
    initializers at that width instead (a runtime that executes the fp32 graph in bf16 reads 2 bytes each)."""
    total = 0
    for init in read_onnx(path).graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        width = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        total += count * (float_bytes if float_bytes and init.data_type in FLOAT_TYPES else width)
    return total
