"""Activation equalization: a function-preserving rescaling that takes outlier channels out of int8's way.

A channel whose activations are K times the others' spends the shared per-tensor int8 scale on itself and
leaves the other channels a few levels each. Output channel c of a producer (a convolution, fully connected layer,
or the affine part of a BatchNorm or LayerNorm) can be divided by s_c and what reads it multiplied back, wherever
only operations that commute with a positive per-channel scale (ReLU, max-pooling, dropout, identities) lie between:
a BatchNorm absorbs the scale into its statistics (exactly, eps included), an ungrouped convolution or a fully
connected layer into its input weights. This is the identity that cross-layer equalization (AIMET, NNCF) and
SmoothQuant use. s_c = max(1, range_c / median range), measured on the calibration crops where the consumer reads
the tensor, so only channels wider than the median are narrowed. The weights are quantized per output channel, so
their int8 precision is unchanged. No layer leaves int8: full int8 speed.

The pairs come from the model's traced graph (torch.fx, with timm's own leaf modules), not from its module
structure: timm's blocks call their layers from ``forward``, and a residual connection, a squeeze-excitation
multiply or a SiLU/GELU/hard-swish between two layers (none of which commutes with the scale) rules a pair out.
"""
import copy
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, LayerNorm2d
from timm.layers import get_notrace_functions, is_notrace_module

MIN_SCALE = 1.5  # a pair whose widest channel is narrowed by less is left alone
PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.Dropout, nn.Identity)  # commute with a positive per-channel scale (eval)
PASS_FUNCTIONS = (F.relu, torch.relu, F.max_pool2d, F.dropout, torch.nn.functional.relu_)
PASS_METHODS = ('relu', 'relu_', 'contiguous')
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)  # BatchNormAct2d too: its activation follows the normalization
LEAVES = (BatchNormAct2d, LayerNorm2d, nn.LayerNorm)


@dataclass
class Pair:
    producer: str  # module path whose output channels are divided
    consumer: str  # module path that multiplies them back
    dim: int  # the channel dimension of the tensor between them (1: N, C, ...; -1: channels last)


class _Tracer(torch.fx.Tracer):
    """torch.fx with timm's leaf modules and functions (what timm's own feature extraction traces with)."""

    def __init__(self):
        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions() if callable(f)))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or is_notrace_module(type(m)) or super().is_leaf_module(m, qualname)


def equalization_pairs(model: nn.Module) -> Tuple[List[Pair], str]:
    """Every (producer, consumer) pair the rescaling can go through, and why there are none when tracing fails."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # models with data-dependent control flow cannot be traced: no pairs, say why
        return [], f'{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__})'
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        dim = _producer_dim(node, modules)
        if dim is None:
            continue
        current = node
        while len(current.users) == 1:  # a tensor read twice (a residual branch) cannot be rescaled for one reader
            nxt = next(iter(current.users))
            if _passes(nxt, modules):
                current = nxt
                continue
            consumer = modules[nxt.target] if nxt.op == 'call_module' else None
            folded = current is node and isinstance(consumer, NORMS)  # conv -> BatchNorm: one Conv in the graph
            if consumer is not None and _consumer_dim(consumer) == dim and nxt.args[0] is current and not folded:
                pairs.append(Pair(node.target, nxt.target, dim))
            break
    return pairs, ''


def equalize(model: nn.Module, crops: torch.Tensor) -> Tuple[nn.Module, List[Dict[str, float]]]:
    """A rescaled copy of ``model`` and, per rescaled producer, its module path, consumer and largest factor."""
    model = copy.deepcopy(model).eval()
    pairs, _ = equalization_pairs(model)
    modules = dict(model.named_modules())
    ranges = _channel_ranges(model, pairs, crops)
    done = []
    with torch.no_grad():
        for pair in pairs:
            r = ranges[pair.consumer]
            scale = torch.clamp(r / r.median().clamp_min(1e-12), min=1.0)
            if scale.max() < MIN_SCALE:
                continue
            _divide_outputs(modules[pair.producer], scale)
            _multiply_inputs(modules[pair.consumer], scale)
            done.append({'layer': pair.producer, 'into': pair.consumer, 'max_scale': round(float(scale.max()), 1),
                         'channels': int((scale > MIN_SCALE).sum())})
    return model, done


def _producer_dim(node: torch.fx.Node, modules: Dict[str, nn.Module]):
    """The channel dimension of a module whose output channels can be divided by a positive scale, else None."""
    if node.op != 'call_module':
        return None
    m = modules[node.target]
    if isinstance(m, nn.Conv2d) or (isinstance(m, NORMS) and m.affine and not isinstance(m, BatchNormAct2d)):
        return 1
    if isinstance(m, BatchNormAct2d) and m.affine and isinstance(m.act, (nn.ReLU, nn.Identity)) \
            and isinstance(m.drop, nn.Identity):
        return 1
    if isinstance(m, LayerNorm2d) and m.elementwise_affine and m.bias is not None:
        return 1
    if isinstance(m, nn.Linear) or (type(m) is nn.LayerNorm and m.elementwise_affine and m.bias is not None
                                    and len(m.normalized_shape) == 1):
        return -1
    return None


def _consumer_dim(m: nn.Module):
    """The channel dimension along which ``m`` can multiply its input's channels back, else None."""
    if isinstance(m, nn.Conv2d) and m.groups == 1:
        return 1
    if isinstance(m, NORMS) and m.track_running_stats and m.running_var is not None:
        return 1
    if isinstance(m, nn.Linear):
        return -1
    return None


def _passes(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """Whether ``node`` commutes with a positive per-channel scale of its (only) tensor input."""
    if node.op == 'call_module':
        return isinstance(modules[node.target], PASS_MODULES)
    if node.op == 'call_function':
        return node.target in PASS_FUNCTIONS
    return node.op == 'call_method' and node.target in PASS_METHODS


def _divide_outputs(m: nn.Module, scale: torch.Tensor) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        m.weight.div_(_per_channel(scale, m.weight, 0))
    else:  # BatchNorm / LayerNorm: y = gamma * normalized + beta
        m.weight.div_(scale)
    if m.bias is not None:
        m.bias.div_(scale)


def _multiply_inputs(m: nn.Module, scale: torch.Tensor) -> None:
    if isinstance(m, NORMS):  # x/s normalized by statistics /s: gamma' = gamma sqrt(v + s^2 eps) / sqrt(v + eps)
        var = m.running_var
        if m.weight is not None:
            m.weight.mul_(torch.sqrt((var + scale ** 2 * m.eps) / (var + m.eps)))
        m.running_mean.div_(scale)
        var.div_(scale ** 2)
    else:
        m.weight.mul_(_per_channel(scale, m.weight, 1))


def _per_channel(scale: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """``scale`` shaped to multiply ``weight`` along ``dim`` (output channels 0, input channels 1)."""
    shape = [1] * weight.dim()
    shape[dim] = -1
    return scale.view(shape)


def _channel_ranges(model: nn.Module, pairs: List[Pair], crops: torch.Tensor) -> Dict[str, torch.Tensor]:
    """max |input| per channel of each consumer over ``crops``: the range the tensor's int8 scale must cover."""
    ranges: Dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def recorder(name: str, dim: int):
        def record(_, inputs):
            x = inputs[0].detach().abs()
            peak = x.movedim(dim, 0).flatten(1).amax(dim=1)
            ranges[name] = torch.maximum(ranges[name], peak) if name in ranges else peak
        return record

    hooks = [modules[p.consumer].register_forward_pre_hook(recorder(p.consumer, p.dim)) for p in pairs]
    try:
        with torch.no_grad():
            for batch in crops.split(32):
                model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return ranges
