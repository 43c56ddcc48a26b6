"""Parity and latency of every backend (PyTorch, torch.compile, ONNX Runtime, OpenVINO, TensorRT) behind one
runner interface; ``python -m benchmarks`` writes the report."""
from benchmarks.run.harness import run_benchmark
from benchmarks.backends.registry import BACKENDS, PRECISIONS
from benchmarks.report.summary import exit_code

__all__ = ['BACKENDS', 'PRECISIONS', 'exit_code', 'run_benchmark']
