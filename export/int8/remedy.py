"""int8 that passes when it should, fails when it should, and says why.

Quantize (ONNX Runtime, Q/DQ, symmetric) and judge on the parity views. When the gate fails (or ``explain`` asks),
diagnose per tensor. With the ``auto`` remedy a failed graph is repaired, cheapest first: activation equalization
(function-preserving, full int8 speed), then the range estimates it was not made with (percentile, minmax, NNCF's
mean of each crop's min and max: full int8 speed too), then, in a network with gates (hard-swish, SiLU,
squeeze-excitation), on the most faithful of those ranges, the squeeze-excitation in float, then NNCF's placement
too (the activations read float: ``Int8Quantizer.placed_like_nncf``), then the most damaging tensors kept in float,
one more at a time, re-judged each time, up to a budget that grows with the model (``float_budget``: a tenth of its
weighted layers, at least MIN_FLOAT_LAYERS). ``none`` only judges; a list of layers keeps those in float.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import onnx
import torch

from export.int8.calibration import PhotoCalibrationReader
from export.contract import INPUT_NAME
from export.int8.diagnose import WEIGHTED_OPS, diagnose, float_nodes, module_path, resolve_layers
from export.int8.equalize import equalize
from export.parity import decisive_views, gate_misses
from export.int8.quantizer import DEFAULT_METHOD, GATES, METHOD_WORDS, Int8Quantizer, squeeze_excitation_nodes

MIN_FLOAT_LAYERS = 4  # AlexNet's 8 weighted layers: up to half of them
FLOAT_SHARE = 0.1  # a 50-convolution network may keep 5 in float: most of its int8 speed is left
RANGE_METHODS = ('percentile', 'minmax', 'mean')  # the remedy tries those the graph was not made with, in order

Judge = Callable[[onnx.ModelProto], dict]  # a graph -> its parity figures with 'judged' and 'passed'


@dataclass
class Int8Result:
    graph: onnx.ModelProto
    figures: dict
    quantizer: Int8Quantizer  # whose calibration produced ``graph``
    float_layers: List[str] = field(default_factory=list)  # module paths (or node names) kept in float
    equalized: List[dict] = field(default_factory=list)
    diagnosis: Optional[List[dict]] = None
    attempts: List[dict] = field(default_factory=list)  # every graph judged, in order: what, SQNR, top-1, passed
    plain: Optional[onnx.ModelProto] = None  # the first quantization, before any remedy
    closest: Optional[tuple] = None  # (graph, figures, quantizer, float layers) of the most faithful failed remedy


def parse_fallback(text: Union[str, Sequence[str]]) -> Union[str, List[str]]:
    """'auto', 'none', or the layers named in 'features.8,node_relu_2'."""
    items = [s.strip() for s in (text.split(',') if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise ValueError('--int8-fallback is empty (auto, none, or LAYER[,LAYER...])')
    if items in (['auto'], ['none']):
        return items[0]
    if 'auto' in items or 'none' in items:
        raise ValueError('--int8-fallback takes auto, none, or a list of layers, not a mix')
    return items


def make_int8(
        model: torch.nn.Module,
        fp32: onnx.ModelProto,
        export: Callable[[torch.nn.Module], onnx.ModelProto],
        crops: np.ndarray,
        judge_graph: Judge,
        views: np.ndarray,
        workdir: Path,
        method: str = DEFAULT_METHOD,
        fallback: Union[str, List[str]] = 'auto',
        explain: bool = False,
        cache: Optional[Path] = None,
        say: Callable[[str], None] = lambda message: None,
) -> Int8Result:
    """The int8 graph of ``fp32`` that passes ``judge_graph`` if one can, else the best failed attempt.

    ``export`` turns a (rescaled) copy of ``model`` into its fp32 graph; ``crops`` calibrate; ``views`` are the
    parity views the diagnosis runs on.
    """
    layers = resolve_layers(fp32, fallback) if isinstance(fallback, list) else None  # a wrong name fails at once
    reader = PhotoCalibrationReader(crops, input_name=INPUT_NAME)
    quantizer = Int8Quantizer(fp32, workdir / 'plain', method)
    if cache is not None:
        quantizer = quantizer.use_cache(cache)
    graph = quantizer.quantize(reader)
    result = Int8Result(graph, judge_graph(graph), quantizer, _squeeze_excitation_layers(quantizer), plain=graph)
    _attempt(result, 'int8', result.figures)
    failed = result.figures['passed'] is False
    if explain or failed:
        say('diagnosing int8 per layer')
        result.diagnosis = diagnose(quantizer, graph, views, workdir)
    if layers is not None:
        return _with_float(result, quantizer, reader, judge_graph, layers)
    if not failed or fallback == 'none':
        return result

    repaired = _equalized(result, model, export, crops, reader, judge_graph, workdir, method, say)
    if repaired is None and cache is None:  # ranges read from --calibration-cache stay those ranges
        repaired = _other_ranges(result, reader, judge_graph, workdir, method, say)
        repaired = repaired or _gated(result, reader, judge_graph, workdir, say)
    final = repaired or _float_layers(result, quantizer, reader, judge_graph, say)
    if final.figures['passed'] is False and result.closest and _sqnr(result.closest[1]) > _sqnr(final.figures):
        # a failure reports its most faithful graph
        final.graph, final.figures, final.quantizer, final.float_layers = result.closest
    return final


def _sqnr(figures: dict) -> float:
    return figures.get('sqnr_db') if figures.get('sqnr_db') is not None else -math.inf


def _equalized(result: Int8Result, model, export, crops, reader, judge_graph: Judge, workdir: Path, method: str,
               say) -> Optional[Int8Result]:
    """The first remedy: activation equalization (function-preserving, full int8 speed); ``result`` if it passes."""
    say('int8 missed its gate: trying activation equalization')
    rescaled, equalized = equalize(model, torch.from_numpy(crops))
    if not equalized:
        return None
    eq_quantizer = Int8Quantizer(export(rescaled), workdir / 'equalized', method)
    eq_graph = eq_quantizer.quantize(reader)
    figures = judge_graph(eq_graph)
    _attempt(result, f'equalized {", ".join(e["layer"] for e in equalized)}', figures)
    if not figures['passed']:
        return None
    result.graph, result.figures, result.quantizer, result.equalized = eq_graph, figures, eq_quantizer, equalized
    return result


def _other_ranges(result: Int8Result, reader, judge_graph: Judge, workdir: Path,
                  method: str, say) -> Optional[Int8Result]:
    """The second remedy: the same graph calibrated with the other range estimates (RANGE_METHODS), which clip
    what one outlying crop or value stretched; full int8 speed. ``result`` with the first that passes."""
    for other in (m for m in RANGE_METHODS if m != method):
        say(f'int8 missed its gate: trying {METHOD_WORDS[other]} ranges')
        quantizer = result.quantizer.with_method(other, workdir / other)  # the plain graph's, prepared once
        if _tried(result, quantizer, reader, judge_graph, f'{other} ranges'):
            return result
    return None


def _gated(result: Int8Result, reader, judge_graph: Judge, workdir: Path, say) -> Optional[Int8Result]:
    """The third remedy, for a network with gates, on the most faithful range estimate tried: the squeeze-excitation
    in float (ONNX Runtime keeps its fused int8 convolutions), then NNCF's placement too
    (``Int8Quantizer.placed_like_nncf``: the activations read float)."""
    best = result.closest[2] if result.closest else result.quantizer
    if not GATES & {n.op_type for n in best.prepared.graph.node} or best.float_outputs:
        return None  # ReLU networks quantize after the activation already; a transformer is placed so already
    se = squeeze_excitation_nodes(best.prepared)
    tries = [('squeeze-excitation in float', best.with_float_squeeze_excitation())] if se else []
    placed = best.placed_like_nncf(workdir / 'nncf-placement')
    tries.append(("NNCF's placement", placed.with_float_squeeze_excitation() if se else placed))
    for what, quantizer in tries:
        say(f'int8 missed its gate: trying {what}')
        if _tried(result, quantizer, reader, judge_graph, f'{what}, {quantizer.method} ranges'):
            return result
    return None


def _squeeze_excitation_layers(quantizer: Int8Quantizer) -> List[str]:
    """The modules of the squeeze-excitation ``quantizer`` keeps in float (its ``float_layers``), if it does."""
    if not quantizer.float_squeeze_excitation:
        return []
    se = set(squeeze_excitation_nodes(quantizer.prepared))
    return sorted({module_path(n) or n.name for n in quantizer.prepared.graph.node if n.name in se})


def _tried(result: Int8Result, quantizer: Int8Quantizer, reader, judge_graph: Judge, what: str) -> bool:
    """Whether ``quantizer``'s graph passes: quantized, judged, and recorded as ``what`` among the attempts; then it
    becomes ``result``'s, else the most faithful failure is kept."""
    graph = quantizer.quantize(reader)
    figures = judge_graph(graph)
    _attempt(result, what, figures)
    float_layers = _squeeze_excitation_layers(quantizer)
    if figures['passed']:
        result.graph, result.figures, result.quantizer, result.float_layers = graph, figures, quantizer, float_layers
        return True
    if _sqnr(figures) > max(_sqnr(result.figures), _sqnr(result.closest[1]) if result.closest else -math.inf):
        result.closest = (graph, figures, quantizer, float_layers)
    return False


def _float_layers(result: Int8Result, quantizer: Int8Quantizer, reader, judge_graph: Judge, say) -> Int8Result:
    """The last remedy: the most damaging tensors' layers kept in float, one more at a time, up to the budget."""
    layers: dict = {}
    budget = float_budget(quantizer.prepared)
    for row in result.diagnosis:
        if len(layers) == budget:
            break
        nodes = float_nodes(quantizer.prepared, row['tensor'])
        if not nodes or set(nodes) <= {n for group in layers.values() for n in group}:
            continue  # this tensor is already kept in float
        layers.setdefault(row['module'] or row['node'], []).extend(nodes)
        say(f'int8 missed its gate: keeping {", ".join(layers)} in float')
        attempt = _with_float(result, quantizer, reader, judge_graph, layers, keep_failed=False)
        if attempt is not None:
            return attempt
    return result


def int8_settings(result: Int8Result, crops: int) -> dict:
    """Which settings made ``result``'s graph (its row's and export.json's ``int8_settings``): the quantizer's
    (tool, formats, calibration over ``crops`` crops, op types), the layers kept in float, the layers equalized."""
    return {**result.quantizer.settings(crops), 'float_layers': list(result.float_layers),
            'equalized': [e['layer'] for e in result.equalized]}


def settings_line(settings: dict) -> str:
    """``int8_settings`` in one line, as export.onnx prints it after the calibration (empty lists left out)."""
    parts = [f'{settings["tool"]}, {settings["format"]}', f'activations {settings["activations"]}',
             f'weights {settings["weights"]}', f'biases {settings["biases"]}', settings['calibration'],
             f'Q/DQ on {", ".join(settings["op_types"])}']
    parts += [f'{key.replace("_", " ")}: {", ".join(settings[key])}' for key in ('float_layers', 'equalized')
              if settings.get(key)]
    parts += [f'outputs in float: {", ".join(settings["float_outputs"])}'] if settings.get('float_outputs') else []
    parts += [f'in float always: {settings["float_always"]}'] if settings.get('float_always') else []
    parts += [f'placement: {settings["placement"]}'] if settings.get('placement') else []
    return '; '.join(parts)


def float_budget(prepared: onnx.ModelProto) -> int:
    """How many layers the remedy may keep in float: a share of the graph's weighted layers, at least
    MIN_FLOAT_LAYERS."""
    weighted = sum(1 for n in prepared.graph.node if n.op_type in WEIGHTED_OPS)
    return max(MIN_FLOAT_LAYERS, math.ceil(FLOAT_SHARE * weighted))


def _with_float(result: Int8Result, quantizer: Int8Quantizer, reader, judge_graph: Judge, layers: dict,
                keep_failed: bool = True) -> Optional[Int8Result]:
    """Re-quantize with ``layers`` ({name: nodes}) in float and judge; the new result if it passes (or if
    ``keep_failed``), else None."""
    nodes = sorted({n for group in layers.values() for n in group})
    graph = quantizer.quantize(reader, exclude=nodes)
    figures = judge_graph(graph)
    _attempt(result, f'float: {", ".join(layers)}', figures)
    if figures['passed'] is False and not keep_failed:
        return None
    names = sorted({module_path(n) or n.name for n in quantizer.prepared.graph.node if n.name in nodes}
                   | set(_squeeze_excitation_layers(quantizer)))
    result.graph, result.figures, result.float_layers = graph, figures, names
    return result


def _attempt(result: Int8Result, what: str, figures: dict) -> None:
    result.attempts.append({'what': what, 'sqnr_db': figures['sqnr_db'],
                            'decisive_top1_agreement': figures['decisive_top1_agreement'],
                            'decisive_views': decisive_views(figures),
                            'passed': figures['passed'], 'misses': gate_misses('int8', figures)})

