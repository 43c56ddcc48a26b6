"""ONNX graph -> TensorRT engine (``python -m export.trt``), and a preflight that checks a graph on the CPU.

TensorRT 10 and 11 build *strongly typed* networks: TensorRT 11 has no FP16/INT8 builder flags and no calibrators,
so the precision comes from the graph itself (``export.onnx`` writes fp32, fp16 and int8 Q/DQ graphs). A build
writes ``model.<precision>.plan`` and its build record ``model.<precision>.plan.json``; loading an engine checks the
record first, because TensorRT refuses (returns None for) an engine built by another TensorRT version or GPU.

TensorRT needs an NVIDIA GPU. Without one, ``--check-only`` lints the graph on the CPU (neither GPU nor TensorRT
needed): ONNX checker, opset range, every op in TensorRT's ONNX parser's supported list, a dynamic batch dimension,
Q/DQ zero points of 0, and tensor types TensorRT takes.

Modules: ``preflight`` (the CPU lint; onnx only), ``record`` (build records), ``runtime`` (GPU and TensorRT
checks, loading an engine), ``build`` (the engine build), ``__main__`` (the command). Importing this package
imports none of them.
"""
