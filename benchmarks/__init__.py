"""Parity and latency of every backend (PyTorch, torch.compile, ONNX Runtime, OpenVINO, TensorRT) behind one
runner interface; ``python -m benchmarks`` writes the report."""
from .harness import run_benchmark
from .registry import BACKENDS, PRECISIONS
from .summary import exit_code

__all__ = ['BACKENDS', 'PRECISIONS', 'exit_code', 'run_benchmark']
