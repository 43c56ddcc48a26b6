"""Per-layer times grouped by the model's stages (timm's ``feature_info``): where in the network the time goes,
whatever the runtime calls its layers.

A profiled layer is named by its runtime: ONNX Runtime by the ONNX node, OpenVINO by a name made from one
(``node_Conv_507/WithoutBiases``, a reorder before it ``input_abcd_acdb_node_Conv_507/WithoutBiases``, or the
node's output: ``logits``). The ONNX graph's nodes carry the PyTorch module they came from
(``export.int8.diagnose.module_path``), so a layer maps to a node, the node to a module, the module to a stage.
PyTorch's profiler names operators (``aten::convolution``), which name no module: no stage table for its rows.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import onnx

from export.contract import read_onnx
from export.int8.diagnose import module_path

STEM, HEAD, UNMAPPED = 'stem', 'head', 'unmapped'


def model_stages(model) -> List[dict]:
    """The model's feature_info modules in order, with their reduction; [] for a model without feature_info."""
    info = getattr(model, 'feature_info', None) or []
    return [{'module': f['module'], 'reduction': f.get('reduction')} for f in getattr(info, 'info', info)]


def _inside(path: str, modules: Sequence[str]) -> Optional[str]:
    """The longest stage module that ``path`` is, or is inside of."""
    found = [m for m in modules if path == m or path.startswith(m + '.')]
    return max(found, key=len) if path and found else None


def graph_stages(graph: onnx.GraphProto, modules: Sequence[str]) -> Dict[str, str]:
    """Each node's name and output names to its stage. A node inside a feature_info module belongs to it; any
    other (a layer between two stage modules, as timm's feature_info names the last of several, or a Q/DQ node
    without a module) to the next stage in graph order; those before the first stage to 'stem', after the last to
    'head'. {} when no node carries a module path inside a stage."""
    own = [_inside(module_path(node), modules) for node in graph.node]
    if not any(own):
        return {}
    stages, following = [], HEAD
    for stage in reversed(own):
        following = stage or following
        stages.append(following)
    stages.reverse()
    first = next(i for i, stage in enumerate(own) if stage)
    stages[:first] = [STEM] * first
    names = {}
    for node, stage in zip(graph.node, stages):
        for name in (node.name, *node.output):
            if name:
                names[name] = stage
    return names


def stage_of(layer: str, names: Dict[str, str]) -> Optional[str]:
    """A profiled layer's stage: by its name before any '/', else by the longest graph name it starts or ends
    with at a '_' (a runtime's suffix or a reorder's prefix); None when none matches."""
    base = layer.split('/')[0]
    if base in names:
        return names[base]
    found = [name for name in names if base.startswith(name + '_') or base.endswith('_' + name)]
    return names[max(found, key=len)] if found else None


def stage_times(layers: Sequence[dict], names: Dict[str, str], stages: Sequence[dict]) -> List[dict]:
    """ms, share and layer count per stage, in the network's order (stem, each stage, head), then the layers no
    graph name matched ('unmapped'); shares of the sum of every layer."""
    totals: Dict[str, List[float]] = {}
    for layer in layers:
        entry = totals.setdefault(stage_of(layer['name'], names) or UNMAPPED, [0, 0.0])
        entry[0] += 1
        entry[1] += layer['ms']
    total = sum(layer['ms'] for layer in layers)
    reductions = {s['module']: s['reduction'] for s in stages}
    order = [STEM, *reductions, HEAD, UNMAPPED]
    return [{'stage': stage, 'reduction': reductions.get(stage), 'layers': int(totals[stage][0]),
             'ms': totals[stage][1], 'share': totals[stage][1] / total if total else 0.0}
            for stage in order if stage in totals]


def stage_profile(graph: Optional[Path], layers: Sequence[dict], stages: Sequence[dict]) -> dict:
    """A profile's per-stage times ({'stages': [...]}), or why there are none ({'stages': None, 'stages_reason'});
    {} for a model without stages. ``graph``: the row's ONNX graph, None for a row that runs the PyTorch module."""
    if not stages:
        return {}
    if graph is None:
        return {'stages': None, 'stages_reason': 'the row runs the PyTorch module, whose profiler names operators '
                                                 '(aten::...), not modules'}
    names = graph_stages(read_onnx(graph).graph, [s['module'] for s in stages])
    if not names:
        return {'stages': None, 'stages_reason': f'the nodes of {Path(graph).name} name no module of a stage'}
    return {'stages': stage_times(layers, names, stages)}
