"""PyTorch module -> fp32 ONNX graph: BatchNorm folded where it is exact, a dynamic batch, the contract's names,
and the metadata a deployer needs (preprocessing, labels) in the file."""
import contextlib
import copy
import io
import re
import warnings
from typing import Dict, Sequence

import onnx
import torch
import torch.nn as nn

import alexnet_zoo
from alexnet_zoo.checkpoint import LoadedModel, weights_sha256
from alexnet_zoo.cli import first_line
from alexnet_zoo.data import data_config

from export.contract import BATCH_DIM, DEFAULT_OPSET, INPUT_NAME, output_names

DYNAMO_MIN_OPSET = 18  # below it the TorchScript exporter writes the requested opset directly


class _WithProbabilities(nn.Module):
    """The model, with softmax probabilities as a second output (the logits stay the first)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        return logits, logits.softmax(dim=-1)


def torch_to_onnx(model: nn.Module, input_size: Sequence[int], opset: int = DEFAULT_OPSET,
                  softmax: bool = False) -> onnx.ModelProto:
    """The fp32 graph with a dynamic batch dimension; BatchNorm layers that feed a Linear are folded into it.

    A model the exporter cannot take raises RuntimeError ``cannot export <model> to ONNX: <why>``.
    """
    name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    try:
        graph = _export(fold_batchnorm(model), input_size, opset, softmax)
    except Exception as e:  # torch.export's, the converter's and the TorchScript exporter's errors: many types
        raise RuntimeError(f'cannot export {name} to ONNX: {export_failure(e)}') from e
    strip_machine_paths(graph)
    got = next(o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx'))
    if got != opset:
        raise RuntimeError(f'the exporter wrote opset {got}, not the requested {opset}')
    return graph


def export_failure(error: BaseException) -> str:
    """Why an export failed, in one line: the exporter's own first line says at which of its steps ("Failed to
    convert ... step 3/3 ... Next steps:"), its innermost cause says why; the operator it was converting, if any."""
    op = re.search(r'target=torch\.ops\.([\w.]+)', str(error))
    while error.__cause__ is not None:
        error = error.__cause__
    return first_line(error) + (f' (converting {op.group(1)})' if op else '')


def _export(module: nn.Module, input_size: Sequence[int], opset: int, softmax: bool) -> onnx.ModelProto:
    """torch.onnx.export: the dynamo exporter from its first opset, the TorchScript one below it."""
    outputs = output_names(softmax)
    if softmax:
        module = _WithProbabilities(module)
    example = (torch.randn(2, *input_size),)  # batch 2, so that the exporter cannot specialise the batch to 1
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')  # exporter chatter (deprecations, "Obtain model graph...") is not for users
        if opset >= DYNAMO_MIN_OPSET:
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=[INPUT_NAME], output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},), opset_version=opset, optimize=True,
                verbose=False)
            graph = program.model_proto
        else:
            import onnxscript  # its optimizer drops the Identity nodes the TorchScript exporter leaves
            buffer = io.BytesIO()
            torch.onnx.export(
                module, example, buffer, dynamo=False, input_names=[INPUT_NAME], output_names=outputs,
                dynamic_axes={name: {0: BATCH_DIM} for name in [INPUT_NAME, *outputs]}, opset_version=opset)
            graph = onnxscript.optimizer.optimize(onnx.load_from_string(buffer.getvalue()))
    return graph


MACHINE_METADATA = ('pkg.torch.onnx.stack_trace',)  # source file paths of the exporting machine


def strip_machine_paths(graph: onnx.ModelProto) -> None:
    """Drop node metadata that names files of the exporting machine (the exporter's stack traces), so that the same
    weights give the same bytes wherever they are exported; the module paths (name_scopes) stay."""
    for node in graph.graph.node:
        kept = [p for p in node.metadata_props if p.key not in MACHINE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every BatchNorm whose output only feeds a Linear is folded into that Linear.

    y = W (s x + t) + b = (W s) x + (W t + b) holds exactly (up to float rounding), so the exported graph computes
    the same function with fewer nodes and one quantization step less per layer in int8. A BatchNorm that feeds a
    padded convolution does not fold exactly (the padding would be shifted too) and is left alone. ``model`` is
    returned unchanged when it has nothing to fold or torch.fx cannot trace it.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception:  # an untraceable model is exported as it is
        return model
    modules = dict(traced.named_modules())
    passthrough = (nn.Identity, nn.Dropout, nn.Flatten)
    folded = 0
    for node in list(traced.graph.nodes):
        if node.op != 'call_module' or not isinstance(modules[node.target], nn.Linear):
            continue
        linear, source, flattened = modules[node.target], node.args[0], False
        while (source.op == 'call_module' and isinstance(modules[source.target], passthrough)
               and len(source.users) == 1):
            if isinstance(modules[source.target], nn.Flatten):
                flat = modules[source.target]
                if (flat.start_dim, flat.end_dim) != (1, -1):
                    break
                flattened = True
            source = source.args[0]
        if source.op != 'call_module' or len(source.users) != 1:
            continue
        bn = modules[source.target]
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
            continue
        if isinstance(bn, nn.BatchNorm1d) == flattened or linear.in_features % bn.num_features:
            continue  # a BatchNorm1d before a Flatten, or a BatchNorm2d/3d without one: not a per-feature scale
        with torch.no_grad():
            scale = bn.running_var.double().add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            repeat = linear.in_features // bn.num_features  # a flattened channel covers H*W consecutive features
            scale, shift = scale.repeat_interleave(repeat), shift.repeat_interleave(repeat)
            weight = linear.weight.double()
            bias = linear.bias.double() if linear.bias is not None else torch.zeros(linear.out_features).double()
            new_bias = bias + weight @ shift
            linear.weight.copy_(weight * scale)
            if linear.bias is None:
                linear.bias = nn.Parameter(torch.zeros_like(linear.weight[:, 0]))
            linear.bias.copy_(new_bias)
        source.replace_all_uses_with(source.args[0])
        traced.graph.erase_node(source)
        folded += 1
    if not folded:
        return model
    traced.graph.lint()
    traced.recompile()
    return traced


def base_metadata(loaded: LoadedModel, model: nn.Module, opset: int, softmax: bool) -> Dict[str, object]:
    """What a deployer needs to feed the graph and read its output, from the file alone."""
    cfg = data_config(model)
    meta = {
        'model_name': loaded.name,
        'num_classes': loaded.num_classes,
        'input_size': list(cfg['input_size']),
        'mean': list(cfg['mean']),
        'std': list(cfg['std']),
        'crop_pct': cfg['crop_pct'],
        'crop_mode': cfg.get('crop_mode', 'center'),
        'interpolation': cfg['interpolation'],
        'input_layout': 'NCHW, RGB, float32, scaled to [0, 1] then normalized with mean and std',
        'opset': opset,
        'trained': loaded.trained,
        'softmax': softmax,
        'version': alexnet_zoo.__version__,
        'weights_sha256': weights_sha256(loaded.model),  # binds the graph to its checkpoint's weights
    }
    if loaded.label_names:
        meta['label_names'] = list(loaded.label_names)
    return meta
