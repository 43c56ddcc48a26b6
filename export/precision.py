"""Reduced precisions of an fp32 ONNX graph, made by maintained converters, never by hand-edited graphs.

fp16: ONNX Runtime's float16 conversion with fp32 inputs and outputs (``keep_io_types``).
int8: ONNX Runtime's static quantization in Q/DQ form, after its pre-processing step, with symmetric int8
activations and per-channel symmetric int8 weights, so every zero point is 0 (TensorRT's parser requires it).
"""
import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.onnx_model import OnnxModel

# Entropy is not offered: quantize_static cannot set its histogram size, and with the default (128 bins for 128
# quantized bins) there is one candidate threshold, the full range, so it gives exactly what minmax gives, slower.
# Distribution is meant for float8.
CALIBRATION_METHODS = {
    'minmax': CalibrationMethod.MinMax,  # the range seen on the calibration crops
    'percentile': CalibrationMethod.Percentile,  # ORT's default 99.999th percentile of |x|, outliers clipped
}

# Ops that get Q/DQ. Normalization and Softmax stay in float: ORT would quantize a BatchNormalization's scale to
# int8 through a DequantizeLinear, which costs accuracy, and probabilities in int8 steps of 1/127 say little.
INT8_OP_TYPES = ('Conv', 'Gemm', 'MatMul', 'MaxPool', 'AveragePool', 'Relu', 'Reshape', 'Flatten')

INT8_OPTIONS = {
    'ActivationSymmetric': True,  # activation zero points 0
    'WeightSymmetric': True,  # weight zero points 0 (ORT's default, stated because TensorRT depends on it)
    'QuantizeBias': False,  # biases stay float: TensorRT's DequantizeLinear takes int8, not the int32 ORT would use
}


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, fp32 input and outputs; ``model`` is left unchanged.

    ONNX Runtime's float16 converter (onnxconverter-common's, maintained inside ONNX Runtime) rather than
    onnxconverter-common's own: with ``keep_io_types`` the latter mistypes a node that reads a graph output, which
    is what the ``--softmax`` graph's Softmax does with ``logits``.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    converted = OnnxModel(copy)
    with warnings.catch_warnings(), _quiet():
        # one warning per tiny weight clamped to fp16's smallest normal value; expected, and not actionable
        warnings.simplefilter('ignore', UserWarning)
        converted.convert_float_to_float16(keep_io_types=True)
    converted.topological_sort()  # the converter appends the input casts at the end of the node list
    return converted.model


def to_int8(model: onnx.ModelProto, reader: CalibrationDataReader, method: str = 'minmax') -> onnx.ModelProto:
    """Q/DQ int8 graph calibrated on ``reader``'s feeds; ``model`` is left unchanged."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f'unknown calibration method {method!r} (choose from {", ".join(CALIBRATION_METHODS)})')
    with tempfile.TemporaryDirectory(prefix='alexnet-zoo-int8-') as tmp, _quiet():
        prepared, quantized = Path(tmp) / 'prepared.onnx', Path(tmp) / 'int8.onnx'
        quant_pre_process(model, prepared)
        quantize_static(
            prepared, quantized, reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            extra_options=dict(INT8_OPTIONS),
        )
        return onnx.load(quantized)


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer prints calibration progress to stdout and warnings to the root logger; keep the CLI clean."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)
