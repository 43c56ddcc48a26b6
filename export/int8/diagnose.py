"""Where int8 hurts: per quantized tensor, the int8 graph against the fp32 graph, with ONNX Runtime's own QDQ
debugging tools (``onnxruntime.quantization.qdq_loss_debug``), each row named by its ONNX node and the PyTorch
module it came from (the exporter's ``pkg.torch.onnx.name_scopes`` node metadata).

Per row: ``sqnr_db``, the int8 graph's tensor against the fp32 graph's same tensor (the error accumulated up to
there); ``quant_sqnr_db``, that tensor's own int8 rounding (before against after its Q/DQ pair); and for a Conv
or Gemm, ``weight_sqnr_db``, its weights' quantization. Rows are sorted by the damage done *at* the tensor (the
lower of its rounding and its weights' SQNR): the accumulated figure falls along the network whatever the cause.
"""
import ast
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                     compute_signal_to_quantization_noice_ratio,
                                                     create_activation_matching,
                                                     modify_model_output_intermediate_tensors)

from export.int8.calibration import PhotoCalibrationReader
from export.contract import INPUT_NAME
from export.ort_session import session_options
from export.int8.quantizer import Int8Quantizer, int8_op_types, quiet

WEIGHTED_OPS = ('Conv', 'ConvTranspose', 'Gemm', 'MatMul')
DIAGNOSIS_VIEWS = 32  # every tensor of both graphs is kept in memory: 32 views of alexnet_bn take about 1 GB
TOP = 5


def module_path(node: Optional[onnx.NodeProto]) -> str:
    """The PyTorch module a node was exported from (``features.8``): for a layer with weights, the module that owns
    them (a convolution the exporter fused with its BatchNorm carries the BatchNorm's metadata, and its weights keep
    the convolution's name); else the exporter's node metadata."""
    if node is None:
        return ''
    if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1].endswith('.weight'):
        return node.input[1].removesuffix('.weight')
    for prop in node.metadata_props:
        if prop.key == 'pkg.torch.onnx.name_scopes':
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ''
            return scopes[-2] if len(scopes) > 1 else ''  # the last scope is the traced op itself
    return ''


def diagnose(quantizer: Int8Quantizer, int8: onnx.ModelProto, views: np.ndarray, workdir: Path) -> List[dict]:
    """One row per quantized tensor of ``int8`` (made by ``quantizer`` from its prepared graph), worst first."""
    prepared_path, prepared = quantizer.prepared_path, quantizer.prepared
    qdq_path = workdir / 'diagnosed.int8.onnx'
    onnx.save(int8, str(qdq_path))
    reader = PhotoCalibrationReader(views[:DIAGNOSIS_VIEWS], batch_size=DIAGNOSIS_VIEWS, input_name=INPUT_NAME)
    activations = {}
    with quiet():
        for kind, path in (('float', prepared_path), ('qdq', qdq_path)):
            augmented = workdir / f'augmented.{kind}.onnx'
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            reader.rewind()
            activations[kind] = collect_activations(str(augmented), reader, session_options=session_options())
            augmented.unlink()
        matched = create_activation_matching(activations['qdq'], activations['float'])
        errors = compute_activation_error(matched)
        weights = weight_sqnr(prepared, int8)
    del activations, matched
    producers = {out: node for node in prepared.graph.node for out in node.output}
    order = {node.name: i for i, node in enumerate(prepared.graph.node)}
    rows = []
    for tensor, error in errors.items():
        node = producers.get(tensor)
        weight = weights.get(node.input[1]) if node is not None and len(node.input) > 1 else None
        rows.append({
            'tensor': tensor,
            'node': node.name if node is not None else tensor,
            'op': node.op_type if node is not None else 'graph input',
            'module': module_path(node),
            'sqnr_db': _finite(error.get('xmodel_err')),
            'quant_sqnr_db': _finite(error['qdq_err']),
            'weight_sqnr_db': _finite(weight),
            'index': order.get(node.name, -1) if node is not None else -1,  # position in the graph
        })
    rows.sort(key=damage)
    return rows


def weight_sqnr(prepared: onnx.ModelProto, int8: onnx.ModelProto) -> Dict[str, float]:
    """Each quantized weight's SQNR, by float weight name: its DequantizeLinear's output against the float weight.

    ORT's ``create_weight_matching`` computes the same, but dequantizes channel by channel with a concatenation
    each time (45 s for alexnet_bn's first FC layer); this broadcasts the per-channel scale instead.
    """
    floats = {t.name: t for t in prepared.graph.initializer}
    stored = {t.name: t for t in int8.graph.initializer}
    out = {}
    for node in int8.graph.node:
        if node.op_type != 'DequantizeLinear' or node.input[0] not in stored or node.input[1] not in stored:
            continue
        name = node.input[0].removesuffix('_quantized')
        if name not in floats:
            continue
        q = numpy_helper.to_array(stored[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(stored[node.input[1]]).astype(np.float64)
        axis = next((a.i for a in node.attribute if a.name == 'axis'), 1)
        if scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        # arrays, also for a 0-d weight (a transformer's scalar constants), which ORT's function cannot take as such
        out[name] = compute_signal_to_quantization_noice_ratio(np.atleast_1d(numpy_helper.to_array(floats[name])),
                                                               np.atleast_1d(q * scale))
    return out


def damage(row: dict) -> float:
    """The SQNR lost at this tensor: the lower of its own rounding's and its weights' (lower is worse)."""
    return min(v for v in (row['quant_sqnr_db'], row['weight_sqnr_db'], float('inf')) if v is not None)


PASS_THROUGH_OPS = ('Relu', 'MaxPool', 'AveragePool', 'Reshape', 'Flatten')  # their output shares the input's range


def float_nodes(prepared: onnx.ModelProto, tensor: str) -> List[str]:
    """The quantizable nodes to keep in float so that ``tensor``'s values are never quantized: its producer, its
    consumers, and through ReLU, pooling and reshapes (whose outputs carry the same range) theirs."""
    op_types = int8_op_types(prepared)
    nodes = [n for n in prepared.graph.node if n.op_type in op_types and tensor in n.output]
    frontier, seen = [tensor], {tensor}
    while frontier:
        current = frontier.pop()
        for node in prepared.graph.node:
            if node.op_type not in op_types or current not in node.input or node in nodes:
                continue
            nodes.append(node)
            if node.op_type in PASS_THROUGH_OPS:
                frontier += [out for out in node.output if out not in seen]
                seen.update(node.output)
    return [n.name for n in nodes]


def resolve_layers(prepared: onnx.ModelProto, layers: Sequence[str]) -> Dict[str, List[str]]:
    """``--int8-fallback LAYER,...``: each module path (``features.8``, or a parent such as ``head.pre_logits``)
    or ONNX node name, to the quantizable nodes it names. ValueError listing what exists when one names nothing."""
    found = {}
    quantizable = [n for n in prepared.graph.node if n.op_type in int8_op_types(prepared)]
    for layer in layers:
        nodes = [n.name for n in quantizable
                 if n.name == layer or module_path(n) == layer or module_path(n).startswith(layer + '.')]
        if not nodes:
            known = sorted({module_path(n) for n in quantizable} - {''})
            raise ValueError(f'--int8-fallback: no quantized layer {layer!r} (module paths: {", ".join(known)}; '
                             f'or an ONNX node name)')
        found[layer] = nodes
    return found


def table(rows: List[dict], top: Optional[int] = None) -> str:
    """The rows as Markdown, worst first."""
    lines = ['| tensor | node | op | module | SQNR vs fp32 dB | its rounding dB | weights dB |',
             '| --- | --- | --- | --- | ---: | ---: | ---: |']
    for r in rows[:top]:
        cells = [r['tensor'], r['node'], r['op'], r['module'] or '–']
        cells += ['–' if r[k] is None else f'{r[k]:.1f}' for k in ('sqnr_db', 'quant_sqnr_db', 'weight_sqnr_db')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def render(rows: List[dict], about: dict) -> Dict[str, bytes]:
    """``model.int8.layers.json``, ``.md`` and ``.png`` (SQNR per tensor in graph order)."""
    json_bytes = (json.dumps({**about, 'layers': rows}, indent=2) + '\n').encode()
    markdown = (f'# int8 per-layer diagnosis\n\n{about.get("summary", "")}\n\n'
                f'Worst first: the lower of a tensor\'s own int8 rounding and its weights\' quantization. '
                f'{about.get("views", "")} parity views.\n\n{table(rows)}\n')
    return {'.json': json_bytes, '.md': markdown.encode(), '.png': _plot(rows)}


def _plot(rows: List[dict]) -> bytes:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ordered = sorted(rows, key=lambda r: r['index'])
    names = [f'{r["module"] or r["node"]} ({r["op"]})' for r in ordered]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.28 * len(names) + 1.5)))
    y = np.arange(len(names))
    for offset, key, label in ((-0.27, 'sqnr_db', 'vs fp32 graph'), (0.0, 'quant_sqnr_db', 'own rounding'),
                               (0.27, 'weight_sqnr_db', 'weights')):
        ax.barh(y + offset, [r[key] or 0.0 for r in ordered], height=0.27, label=label)
    ax.axvline(25, color='grey', linestyle=':', linewidth=1)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel('SQNR, dB (dotted: the int8 gate on the logits, 25 dB)')
    ax.legend(fontsize=8)
    ax.set_title('int8 per-tensor SQNR', fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or not np.isfinite(value) else round(float(value), 2)
