"""The ONNX contract every tool relies on: names, file names, the metadata schema, reading and validating a graph.

``export.onnx`` writes graphs that keep it; ``export.trt``, the benchmark and a deployer read them through it. Kept
free of torch and timm, so that the TensorRT preflight and reading a graph's metadata stay light imports.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import numpy_helper

from alexnet_zoo.cli import first_line
from alexnet_zoo.files import PathLike, write_text_atomic
from alexnet_zoo.manifest import locked, sha256_file

INPUT_NAME, OUTPUT_NAME, PROBABILITIES_NAME, BATCH_DIM = 'input', 'logits', 'probabilities', 'batch'
GRAPH_PRECISIONS = ('fp32', 'fp16', 'int8')  # the precisions export.onnx writes a graph for
FILENAMES = {'fp32': 'model.onnx', 'fp16': 'model.fp16.onnx', 'int8': 'model.int8.onnx'}
CALIBRATION_FILE = 'model.int8.calibration.json'  # the int8 graph's tensor ranges, for --calibration-cache
EXPORT_MANIFEST = 'export.json'  # what export.onnx wrote into a folder: each file's sha256, weights and settings
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


def zero_points(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto] = None) -> Dict[str, Optional[np.ndarray]]:
    """Every Q/DQ node's zero point, by node label: its value, or None where it is not a constant."""
    return {node_label(node): constant(model, node.input[2])
            for node in (model.graph.node if nodes is None else nodes)
            if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2]}


def zero_point_problems(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto] = None) -> List[str]:
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


def node_label(node: onnx.NodeProto) -> str:
    return f'{node.name!r} ({node.op_type})' if node.name else f'{node.op_type} -> {", ".join(node.output)}'


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


def write_export_manifest(folder: PathLike, written: Dict[str, dict]) -> dict:
    """Record ``written`` (file name -> its sha256, the weights' hash and the export's settings) in the folder's
    ``export.json``, atomically and after the files, keeping the entries of earlier exports of the same weights
    whose files are still the ones they list. Two exports into one folder at once can then leave files of both,
    but never a manifest that vouches for a file it did not write: readers (``check_export``) notice the mix."""
    folder = Path(folder)
    with locked(folder):
        try:
            kept = read_export_manifest(folder)['files']
        except (FileNotFoundError, ValueError):
            kept = {}
        weights = {entry.get('weights_sha256') for entry in written.values()} or {None}
        files = {name: entry for name, entry in kept.items() if name not in written
                 and entry.get('weights_sha256') in weights  # one folder, one set of weights
                 and (folder / name).is_file() and sha256_file(folder / name) == entry.get('sha256')}
        manifest = {'kind': 'export', 'files': {**files, **written}}
        write_text_atomic(folder / EXPORT_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + '\n')
    return manifest


def read_export_manifest(folder: PathLike) -> dict:
    path = Path(folder) / EXPORT_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f'{Path(folder)} has no {EXPORT_MANIFEST}: its graphs were not written by this '
                                f'version of export.onnx (or were copied in by hand); export them again there')
    try:
        manifest = json.loads(path.read_text())
        files = manifest['files']
        if not isinstance(files, dict) or not all(isinstance(e, dict) and isinstance(e.get('sha256'), str)
                                                  for e in files.values()):
            raise ValueError('files must map names to entries with a sha256')
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f'{path} is not an export manifest ({first_line(e, 120)})') from None
    return manifest


def exported_graphs(folder: PathLike, precisions: Sequence[str]) -> Tuple[Dict[str, Path], Optional[dict]]:
    """The graphs export.onnx wrote in ``folder`` for ``precisions`` (an absent one left out), checked against the
    folder's ``export.json`` (see ``check_export``), and that manifest (None when no graph is there)."""
    folder = Path(folder)
    graphs = {p: folder / FILENAMES[p] for p in precisions if (folder / FILENAMES[p]).is_file()}
    return graphs, check_export(list(graphs.values()))


def check_export(graphs: Sequence[PathLike], required: bool = True) -> Optional[dict]:
    """Check ``graphs`` (files of one folder) against that folder's ``export.json`` before they are used: each
    listed and the very file it lists, all of the same weights. Without a manifest: an error when ``required``,
    else None (a single graph from another tool)."""
    paths = [Path(g) for g in graphs]
    if not paths:
        return None
    folder = paths[0].parent
    if not required and not (folder / EXPORT_MANIFEST).is_file():
        return None
    manifest = read_export_manifest(folder)
    files = manifest['files']
    for path in paths:
        entry = files.get(path.name)
        if entry is None:
            raise ValueError(f'{path} is not listed in {folder / EXPORT_MANIFEST}: not written by the export that '
                             f'wrote the others (an export was interrupted, or two ran at once); export again')
        if sha256_file(path) != entry['sha256']:
            raise ValueError(f'{path} is not the file {folder / EXPORT_MANIFEST} lists (written by another export '
                             f'at the same time, or changed since); export again')
    weights = {files[p.name].get('weights_sha256') for p in paths}
    if len(weights) > 1:
        raise ValueError(f'the graphs in {folder} come from different weights ({len(weights)} checkpoints); '
                         f'export them again from one')
    return manifest
