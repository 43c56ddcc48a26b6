"""Activation equalization: a function-preserving rescaling that takes outlier channels out of int8's way.

A channel whose activations are K times the others' spends the shared per-tensor int8 scale on itself and
leaves the other channels a few levels each. ReLU and max-pool commute with a positive per-channel scale, so a
convolution's (or fully connected layer's) output channel c can be divided by s_c, and what reads it multiplied
back: a BatchNorm absorbs the scale into its statistics (exactly, eps included), a following layer of the same
kind into its input weights. This is the
identity that cross-layer equalization (AIMET, NNCF) uses; here s_c = max(1, range_c / median range), measured on
the calibration crops, so only channels wider than the median are narrowed. The weights are quantized per output
channel, so their int8 precision is unchanged. No layer leaves int8: full int8 speed.
"""
import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.Dropout)  # commute with a positive per-channel scale (eval mode)
LAYERS = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
MIN_SCALE = 1.5  # a block whose widest channel is narrowed by less is left alone


def equalize(model: nn.Module, crops: torch.Tensor) -> Tuple[nn.Module, List[Dict[str, float]]]:
    """A rescaled copy of ``model`` and, per rescaled convolution, its module path and largest factor."""
    model = copy.deepcopy(model).eval()
    names = {m: n for n, m in model.named_modules()}
    pairs = [(layer, absorber) for seq in model.modules() if isinstance(seq, nn.Sequential)
             for layer, absorber in _pairs(list(seq))]
    ranges = _channel_ranges(model, [conv for conv, _ in pairs], crops)
    done = []
    with torch.no_grad():
        for conv, absorber in pairs:
            r = ranges[conv]
            scale = torch.clamp(r / r.median().clamp_min(1e-12), min=1.0)
            if scale.max() < MIN_SCALE:
                continue
            conv.weight.div_(_per_channel(scale, conv.weight, 0))
            if conv.bias is not None:
                conv.bias.div_(scale)
            if isinstance(absorber, NORMS):
                var = absorber.running_var
                if absorber.weight is not None:  # gamma' = gamma sqrt(v + s^2 eps) / sqrt(v + eps): exact with eps
                    absorber.weight.mul_(torch.sqrt((var + scale ** 2 * absorber.eps) / (var + absorber.eps)))
                absorber.running_mean.div_(scale)
                var.div_(scale ** 2)
            else:
                absorber.weight.mul_(_per_channel(scale, absorber.weight, 1))
            done.append({'layer': names[conv], 'into': names[absorber], 'max_scale': round(float(scale.max()), 1),
                         'channels': int((scale > MIN_SCALE).sum())})
    return model, done


def _pairs(layers: List[nn.Module]) -> List[Tuple[nn.Module, nn.Module]]:
    """(layer, absorber): a Conv2d or Linear, then only ReLU/max-pool/dropout, then a BatchNorm with running
    statistics, or a layer of the same kind (ungrouped convolutions)."""
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, LAYERS):
            continue
        j = i + 1
        while j < len(layers) and isinstance(layers[j], PASS_THROUGH):
            j += 1
        nxt: Optional[nn.Module] = layers[j] if j < len(layers) else None
        if isinstance(nxt, NORMS) and nxt.track_running_stats and nxt.running_var is not None:
            out.append((layer, nxt))
        elif type(nxt) is type(layer) and getattr(nxt, 'groups', 1) == 1 and getattr(layer, 'groups', 1) == 1:
            out.append((layer, nxt))
    return out


def _per_channel(scale: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """``scale`` shaped to multiply ``weight`` along ``dim`` (output channels 0, input channels 1)."""
    shape = [1] * weight.dim()
    shape[dim] = -1
    return scale.view(shape)


def _channel_ranges(model: nn.Module, convs: List[nn.Module], crops: torch.Tensor) -> Dict[nn.Module, torch.Tensor]:
    """max |output| per channel of each layer over ``crops``: the range its int8 scale must cover."""
    ranges: Dict[nn.Module, torch.Tensor] = {}

    def record(module, _, output):
        peak = output.detach().abs().transpose(0, 1).flatten(1).amax(dim=1)  # per channel (dim 1)
        ranges[module] = torch.maximum(ranges[module], peak) if module in ranges else peak

    hooks = [conv.register_forward_hook(record) for conv in convs]
    try:
        with torch.no_grad():
            for batch in crops.split(32):
                model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return ranges
