"""PyTorch -> ONNX in fp32, fp16 and int8, each graph checked and compared with PyTorch before it is kept.

    python -m export.onnx --model alexnet_bn --num-classes 17 --checkpoint CK --output-dir OUT \\
        [--precisions fp32,fp16,int8] [--parity-images DIR] [--calibration-images DIR] [--calibration-cache FILE]
        [--int8-fallback auto|none|LAYER,...] [--explain] [--opset N] [--softmax]

Writes OUT/model.onnx, OUT/model.fp16.onnx, OUT/model.int8.onnx (and model.int8.calibration.json). Every graph
has the input ``input`` (float32 NCHW, batch dimension ``batch``), the output ``logits`` (and ``probabilities``
with ``--softmax``), and the preprocessing and labels in its metadata, so a deployer needs nothing but the file.
Parity is measured with ONNX Runtime on 256 parity views against PyTorch fp32 and judged by ``export.parity``'s
gates when the weights are trained; int8 is diagnosed and repaired by ``export.int8.remedy`` (``--explain`` also judges
NNCF's int8 of the same graph beside it: ``export.int8.nncf_int8``); a failed gate leaves no file of that precision and
raises ``ParityGateError``.
"""
from export.contract import read_metadata  # noqa: F401  (export.onnx.read_metadata, as the docs once showed)
from export.onnx.cli import build_parser, format_table, main  # noqa: F401
from export.onnx.graphs import ExportResult, ParityGateError, export_onnx, parse_precisions  # noqa: F401
