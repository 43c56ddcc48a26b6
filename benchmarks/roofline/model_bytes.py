"""The activation bytes of one image, for the roofline's memory bound (``ceilings.bytes_moved``): weights alone
bound an FC-heavy AlexNet, but a depthwise network (MobileNetV3, EfficientNet) moves far more activations.

Counted on the ONNX graph, not with forward hooks on PyTorch's leaf modules: the graph is what the graph rows run
(batch norms already folded into their convolutions) and it has every operation, where leaf hooks miss the norm of
timm's ``BatchNormAct2d`` (a module with children), the squeeze-excite multiply and the residual adds written in a
block's ``forward``, and count its ``Identity`` placeholders as traffic (mobilenetv3_small_100: 9.9 M elements by
leaf hooks, 4.4 M of them Identity; 6.6 M on its graph).
"""
import math
from pathlib import Path
from typing import Dict

import onnx

from alexnet_zoo.cli import first_line
from export.contract import read_onnx

# The layers whose input and output a runtime must still move when it fuses everything it can: oneDNN (OpenVINO,
# PyTorch) and ONNX Runtime fold normalization, activations, residual adds and the Q/DQ pairs into the convolution
# or matrix product before them, but a convolution reads its input and writes its output, and so does pooling.
MOVING_OPS = {'Conv', 'ConvTranspose', 'Gemm', 'MatMul', 'MaxPool', 'AveragePool', 'GlobalAveragePool', 'LRN'}
GRAPH_ORDER = ('fp32', 'fp16', 'int8')  # the graph counted: the first of these the run has


def activation_elements(model: onnx.ModelProto) -> int:
    """Elements of one image's activations that the graph's convolutions, matrix products and pooling read and
    write (``MOVING_OPS``): what a runtime moves at the least once it has fused the element-wise operations into
    them, so that no row can beat the bound it gives (counting every operation's input and output, the unfused
    execution, put efficientnet_b0's OpenVINO rows at 0.6× their bound). Weights (initializers, and tensors
    computed from initializers only: the int8 graph's dequantized weights) are not activations. A dimension that
    is not a number (the batch) counts 1; a tensor whose shape cannot be inferred counts 0."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    sizes = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        sizes[value.name] = math.prod(d.dim_value if d.HasField('dim_value') else 1 for d in dims)
    constants = {init.name for init in graph.initializer}
    total = 0
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == 'Constant' or all(name in constants for name in inputs):
            constants.update(node.output)
            continue
        if node.op_type in MOVING_OPS:
            total += sum(sizes.get(name, 0) for name in (*inputs, *node.output) if name and name not in constants)
    return total


def count_activations(graphs: Dict[str, Path]) -> dict:
    """The model's fp32 activation bytes per image (None where no graph was in the run, or where counting failed)
    and which graph they were counted on, or why not."""
    graph = next((graphs[p] for p in GRAPH_ORDER if p in graphs), None)
    if graph is None:
        return {'activation_bytes': None, 'activation_bytes_source': 'no ONNX graph in this run'}
    try:
        elements = activation_elements(read_onnx(graph))
    except Exception as e:  # shape inference refusing a graph: the roofline keeps the weights, saying why
        return {'activation_bytes': None, 'activation_bytes_source': f'not counted: {first_line(e)}'}
    return {'activation_bytes': 4 * elements, 'activation_bytes_source': f'{Path(graph).name} (ONNX shape inference)'}

