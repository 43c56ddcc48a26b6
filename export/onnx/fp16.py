"""fp16 of an fp32 ONNX graph: ONNX Runtime's float16 conversion with fp32 inputs and outputs (``keep_io_types``),
made by a maintained converter, never by hand-edited graphs."""
import warnings

import onnx
from onnxruntime.transformers.onnx_model import OnnxModel

from export.int8.quantizer import quiet


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, fp32 input and outputs; ``model`` is left unchanged.

    ONNX Runtime's float16 converter (onnxconverter-common's, maintained inside ONNX Runtime) rather than
    onnxconverter-common's own: with ``keep_io_types`` the latter mistypes a node that reads a graph output, which
    is what the ``--softmax`` graph's Softmax does with ``logits``.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    converted = OnnxModel(copy)
    with warnings.catch_warnings(), quiet():
        # one warning per tiny weight clamped to fp16's smallest normal value; expected, and not actionable
        warnings.simplefilter('ignore', UserWarning)
        converted.convert_float_to_float16(keep_io_types=True)
    converted.topological_sort()  # the converter appends the input casts at the end of the node list
    return converted.model
