"""int8 of an fp32 ONNX graph, made by ONNX Runtime's quantizer, never by hand-edited graphs: static quantization
in Q/DQ form after its pre-processing step, with symmetric int8 activations and per-channel symmetric int8 weights,
so every zero point is 0 (TensorRT's parser requires it)."""
import contextlib
import copy
import hashlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence

import onnx
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from alexnet_zoo.files import PathLike

# Entropy is not offered: quantize_static cannot set its histogram size, and with the default (128 bins for 128
# quantized bins) there is one candidate threshold, the full range, so it gives exactly what minmax gives, slower.
# Distribution is meant for float8.
CALIBRATION_METHODS = {
    'minmax': CalibrationMethod.MinMax,  # the range seen on the calibration crops
    'percentile': CalibrationMethod.Percentile,  # ORT's default 99.999th percentile of |x|, outliers clipped
    # NNCF's default activation range (its MEAN_MINMAX): each crop's own min and max, averaged over the crops. ORT's
    # MinMax with CalibMovingAverage averages the ranges of its feeds, so the crops are fed one at a time
    'mean': CalibrationMethod.MinMax,
}
METHOD_OPTIONS = {'mean': {'CalibMovingAverage': True}}
# The default: clipping the rare extreme values gave six of the seven networks measured more faithful int8 than the
# range seen (ONNX Runtime, the photographs' 256 views, SQNR of the CPU form: resnet18 32.9 -> 37.0 dB,
# mobilenetv3_small_100 2.2 -> 6.5, efficientnet_b0 -2.3 -> 5.2, tf_efficientnet_lite0 12.2 -> 12.9), and cost the
# main job's alexnet_bn 1.0 dB (37.9 -> 36.9, still far inside its gate); docs/export.md has the table
DEFAULT_METHOD = 'percentile'
METHOD_WORDS = {'minmax': 'minmax', 'percentile': 'percentile (99.999th)', 'mean': "mean of each crop's min and max"}

# Ops that get Q/DQ: those with int8 kernels in ONNX Runtime (QLinearConv, QLinearAdd, QLinearMul,
# QLinearGlobalAveragePool, QLinearSigmoid, ...) and OpenVINO's low-precision transformations, so that residual adds,
# squeeze-excitation multiplies and global pooling run in int8 between the convolutions instead of dequantizing
# around each. Every activation a weighted layer reads is among them, so that its Q/DQ sits after the activation,
# on the range the next layer reads: ReLU6 exports as Clip (without it, a convolution's output was quantized over
# its pre-activation range and the six units that matter got a handful of steps), hard-swish as HardSwish (ORT's
# pre-processing splits it into HardSigmoid and Mul), SiLU as Sigmoid and Mul, squeeze-excitation as
# GlobalAveragePool, Conv, Sigmoid/HardSigmoid and Mul; attention's products are MatMul.
# Left in float, on purpose: BatchNormalization and LayerNormalization (ORT would quantize their scale through a
# DequantizeLinear, which costs accuracy, and OpenVINO computes normalization in float/bf16 whatever the graph
# says), Softmax (probabilities in symmetric int8 steps of 1/127 lose the small ones that attention sums up), Erf
# (GELU's core: no int8 kernel in ONNX Runtime or OpenVINO, so Q/DQ around it would only add a rounding).
INT8_OP_TYPES = ('Conv', 'Gemm', 'MatMul', 'MaxPool', 'AveragePool', 'GlobalAveragePool', 'Relu', 'Clip',
                 'HardSwish', 'HardSigmoid', 'Reshape', 'Flatten', 'Add', 'Mul', 'Sigmoid', 'Concat')

# A graph with attention (Softmax and LayerNormalization: a transformer) gets Q/DQ on its weighted layers' inputs
# only, as NNCF's ModelType.TRANSFORMER does: its residual stream's adds carry the outliers that LayerNorm absorbs,
# and one per-tensor int8 step over them costs the whole network (timm's test_vit at 64 x 64, the photographs' 256
# views: 21.9 dB with every op above quantized, 34.3 with the weighted layers only; NNCF's TRANSFORMER graph 34.4),
# while its elementwise ops gain little from int8. Their outputs stay float too: ORT would round each projection's
# output to int8 before its bias, and Q times K's before the Softmax, which NNCF does not (vit_tiny_patch16_224:
# 39.8 -> 40.9 dB; the Q/DQ then sit where NNCF's do). Its attention products (MatMul) stay int8.
ATTENTION_OPS = frozenset({'Softmax', 'LayerNormalization'})
TRANSFORMER_OP_TYPES = ('Conv', 'Gemm', 'MatMul')

# NNCF's placement for a CNN with gates (hard-swish, SiLU, squeeze-excitation), which the remedy tries when the
# graph above fails, after keeping the squeeze-excitation in float alone: Q/DQ only where a weighted
# layer or a residual add reads. ONNX Runtime's Q/DQ convolution quantizes its own output, so in the graph above
# every hard-swish and SiLU reads a rounded pre-activation (ORT sets this per op type only:
# ``OpTypesToExcludeOutputQuantization``); here the activations read float and the Q/DQ sit after them, as NNCF's
# do. It costs ONNX Runtime its fused int8 convolutions (their outputs are float), so it is the remedy's last
# placement, not the default. A random-init mobilenetv3_small_100, mean ranges (docs/export.md): 14.1 dB, 16.7
# with the squeeze-excitation in float, 19.9 placed so as well (NNCF's own graphs 16.1 and 16.5); ONNX Runtime at
# batch 1: 3.5, 3.8 and 6.5 ms (fp32 2.6).
GATES = frozenset({'HardSigmoid', 'HardSwish', 'Sigmoid'})
NNCF_PLACEMENT_OP_TYPES = ('Conv', 'Gemm', 'MatMul', 'Add')


def attention_value_products(graph: onnx.ModelProto) -> list:
    """The MatMul nodes that read a Softmax (attention's probabilities times V), kept in float always: per-tensor
    int8 steps of a row of probabilities lose the small ones attention sums over its tokens (vit_tiny_patch16_224,
    196 tokens, on the photographs' views: 20.9 dB with them in int8, 39.2 without; NNCF's TRANSFORMER graph 43.4).
    Q times K, the projections and the MLP stay int8."""
    softmax_outputs = {out for node in graph.graph.node if node.op_type == 'Softmax' for out in node.output}
    return [node.name for node in graph.graph.node
            if node.op_type == 'MatMul' and softmax_outputs & set(node.input)]


def squeeze_excitation_nodes(graph: onnx.ModelProto) -> list:
    """The nodes of each squeeze-excitation after its pooling (convolutions, activation, gate, and the Mul that
    scales the pooled feature map with the gate), which NNCF keeps in float: a per-tensor int8 step over a gate's
    logits moves every channel's scale. A pooling that never reaches such a Mul (a classifier head, a decomposed
    normalization's mean) is no squeeze-excitation."""
    readers: dict = {}
    for node in graph.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.graph.node for out in node.output}
    gated = lambda mul: any(getattr(producer.get(name), 'op_type', None) in GATES for name in mul.input)  # noqa: E731
    found = []
    for pool in (n for n in graph.graph.node if n.op_type in ('GlobalAveragePool', 'ReduceMean')):
        frontier, branch, scaled = list(pool.output), [], False
        while frontier:
            for node in readers.get(frontier.pop(), []):
                if node in branch:
                    continue
                branch.append(node)
                if pool.input[0] in node.input:  # the branch ends here: scaling the feature map with a gate?
                    scaled = scaled or (node.op_type == 'Mul' and gated(node))
                else:
                    frontier += list(node.output)
        found += [n.name for n in branch] if scaled else []
    return found


def int8_op_types(graph: onnx.ModelProto) -> tuple:
    """The op types that get Q/DQ in ``graph``: INT8_OP_TYPES, or TRANSFORMER_OP_TYPES where it has attention."""
    found = {node.op_type for node in graph.graph.node}
    return TRANSFORMER_OP_TYPES if ATTENTION_OPS <= found else INT8_OP_TYPES


INT8_OPTIONS = {
    'ActivationSymmetric': True,  # activation zero points 0
    'WeightSymmetric': True,  # weight zero points 0 (ORT's default, stated because TensorRT depends on it)
    'QuantizeBias': False,  # biases stay float: TensorRT's DequantizeLinear takes int8, not the int32 ORT would use
}


class Int8Quantizer:
    """ONNX Runtime's static Q/DQ quantization of one fp32 graph: prepared once (``quant_pre_process``), calibrated
    once (the tensor ranges kept in ORT's calibration cache), then quantized as often as a remedy asks, with some
    nodes kept in float (``nodes_to_exclude``)."""

    def __init__(self, fp32: onnx.ModelProto, workdir: Path, method: str = DEFAULT_METHOD):
        self._calibrate_with(method, workdir)
        self.prepared_path = workdir / 'prepared.onnx'
        with quiet():
            quant_pre_process(fp32, self.prepared_path)
        self.prepared = onnx.load(str(self.prepared_path))
        if _keep_node_metadata(fp32, self.prepared):
            onnx.save(self.prepared, str(self.prepared_path))
        self.graph_sha256 = hashlib.sha256(self.prepared_path.read_bytes()).hexdigest()
        self.op_types = int8_op_types(self.prepared)
        self.always_float = attention_value_products(self.prepared)
        # a transformer's weighted layers hand on float outputs (TRANSFORMER_OP_TYPES' comment); a CNN's are
        # quantized where the next op reads them
        self.float_outputs = list(TRANSFORMER_OP_TYPES) if self.op_types == TRANSFORMER_OP_TYPES else []
        self.placement = 'onnxruntime'  # or 'nncf' (``placed_like_nncf``)
        self.float_squeeze_excitation = False  # (``with_float_squeeze_excitation``)

    def _calibrate_with(self, method: str, workdir: Path) -> None:
        if method not in CALIBRATION_METHODS:
            raise ValueError(f'unknown calibration method {method!r} (choose from {", ".join(CALIBRATION_METHODS)})')
        workdir.mkdir(parents=True, exist_ok=True)
        self.method, self.workdir, self.cache = method, workdir, workdir / 'calibration.json'

    def with_method(self, method: str, workdir: Path) -> 'Int8Quantizer':
        """This prepared graph, to be calibrated with ``method`` in ``workdir`` (ORT's pre-processing is not run
        again)."""
        other = copy.copy(self)
        other._calibrate_with(method, workdir)
        return other

    def with_float_squeeze_excitation(self) -> 'Int8Quantizer':
        """This quantizer, its ranges too, with each squeeze-excitation in float
        (``squeeze_excitation_nodes``)."""
        other = copy.copy(self)
        other.always_float = [*self.always_float, *squeeze_excitation_nodes(self.prepared)]
        other.float_squeeze_excitation = True
        return other

    def placed_like_nncf(self, workdir: Path) -> 'Int8Quantizer':
        """This prepared graph and range estimate with NNCF's placement (NNCF_PLACEMENT_OP_TYPES' comment), to be
        calibrated in ``workdir`` (the tensors calibrated differ)."""
        other = self.with_method(self.method, workdir)
        other.op_types, other.float_outputs = NNCF_PLACEMENT_OP_TYPES, list(TRANSFORMER_OP_TYPES)
        other.placement = 'nncf'
        return other

    def use_cache(self, path: Path) -> 'Int8Quantizer':
        """Ranges from an earlier export's calibration file instead of calibrating: it must be this graph's. The
        quantizer to use: this one, or this one placed as the ranges were (``placed_like_nncf``,
        ``with_float_squeeze_excitation``)."""
        record = read_calibration_record(path)
        made_for, method = record['graph_sha256'], record['method']
        if made_for != self.graph_sha256:
            raise ValueError(f'--calibration-cache {path} was computed for another graph (other weights, opset or '
                             f'exporter); calibrate again without it')
        if method != self.method:
            raise ValueError(f'--calibration-cache {path} holds {method} ranges, not {self.method}')
        quantizer = self.placed_like_nncf(self.workdir) if record.get('placement') == 'nncf' else self
        quantizer = quantizer.with_float_squeeze_excitation() if record.get('float_squeeze_excitation') else quantizer
        shutil.copyfile(path, quantizer.cache)
        return quantizer

    def quantize(self, reader: Optional[CalibrationDataReader] = None, exclude: Sequence[str] = ()) -> onnx.ModelProto:
        """The Q/DQ graph, ``exclude``'s nodes in float; calibrates on ``reader`` the first time only."""
        if reader is None and not self.cache.is_file():
            raise ValueError('int8 needs calibration images or a --calibration-cache')
        output = self.workdir / 'int8.onnx'
        if reader is not None and hasattr(reader, 'rewind'):
            reader.rewind()  # the reader may have fed another quantizer
        if reader is not None and self.method == 'mean' and hasattr(reader, 'with_batch_size'):
            reader = reader.with_batch_size(1)  # one range per crop, then their mean
        with quiet():
            quantize_static(
                self.prepared_path, output, reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(self.op_types),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted({*exclude, *self.always_float}),
                calibrate_method=CALIBRATION_METHODS[self.method],
                extra_options={**INT8_OPTIONS, **METHOD_OPTIONS.get(self.method, {}),
                               **({'OpTypesToExcludeOutputQuantization': self.float_outputs} if self.float_outputs
                                  else {})},
                calibration_cache_path=self.cache,
            )
        return onnx.load(str(output))

    def settings(self, crops: int) -> dict:
        """What makes this quantizer's graphs, in words (the record every int8 export keeps beside its graph): the
        tool, the Q/DQ format, the number formats, the calibration (``crops`` crops) and the op types given Q/DQ."""
        symmetric = {True: 'symmetric', False: 'asymmetric'}
        return {'tool': f'onnxruntime {onnxruntime.__version__} quantize_static', 'format': 'QDQ',
                'activations': f'int8, {symmetric[INT8_OPTIONS["ActivationSymmetric"]]}, per tensor',
                'weights': f'int8, {symmetric[INT8_OPTIONS["WeightSymmetric"]]}, per channel',
                'biases': 'int32' if INT8_OPTIONS['QuantizeBias'] else 'float',
                'calibration': f'{METHOD_WORDS[self.method]} over {crops} crops', 'op_types': list(self.op_types),
                **({'float_outputs': self.float_outputs} if self.float_outputs else {}),
                **({'float_always': self._float_always()} if self.always_float else {}),
                **({'placement': "NNCF's: the activations read float, Q/DQ where weighted layers and adds read"}
                   if self.placement == 'nncf' else {})}

    def _float_always(self) -> str:
        names = set(self.always_float)
        kinds = {'MatMul reading a Softmax (attention x V)': attention_value_products(self.prepared),
                 'squeeze-excitation nodes': squeeze_excitation_nodes(self.prepared)}
        return ', '.join(f'{len(names & set(nodes))} {words}' for words, nodes in kinds.items() if names & set(nodes))

    def calibration_file(self, about: dict) -> bytes:
        """ORT's calibration cache (which ``--calibration-cache`` and ORT's own ``quantize_static`` read back), with
        what it was computed from: the method, the images, the graph."""
        saved = json.loads(self.cache.read_text())
        saved['alexnet_zoo'] = {'method': self.method, 'placement': self.placement,
                                'float_squeeze_excitation': self.float_squeeze_excitation,
                                'graph_sha256': self.graph_sha256, **about}
        return (json.dumps(saved, indent=1, sort_keys=True) + '\n').encode()


def _keep_node_metadata(source: onnx.ModelProto, prepared: onnx.ModelProto) -> bool:
    """Give ``prepared``'s nodes the exporter's metadata (the PyTorch module each came from) that ORT's
    pre-processing drops when its optimizer rewrites the graph; matched by node name, else by output name (a node
    that ORT split, such as HardSwish into HardSigmoid and Mul, keeps its output's name on the last part)."""
    by_name = {n.name: n for n in source.graph.node if n.name}
    by_output = {out: n for n in source.graph.node for out in n.output}
    changed = False
    for node in prepared.graph.node:
        if node.metadata_props:
            continue
        origin = by_name.get(node.name) or next((by_output[o] for o in node.output if o in by_output), None)
        if origin is not None and origin.metadata_props:
            node.metadata_props.extend(origin.metadata_props)
            changed = True
    return changed


def read_calibration_record(path: PathLike) -> dict:
    """What an export's calibration file says it was computed from (method, crops, source, graph); one line if it
    is not such a file."""
    try:
        record = json.loads(Path(path).read_text())['alexnet_zoo']
        for key in ('method', 'crops', 'source', 'graph_sha256'):
            record[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f'--calibration-cache {path} is not a calibration file of export.onnx '
                         f'({type(e).__name__}: {e})') from None
    return record


@contextlib.contextmanager
def quiet():
    """ORT's quantizer prints calibration progress to stdout and warnings to the root logger; keep the CLI clean."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)
