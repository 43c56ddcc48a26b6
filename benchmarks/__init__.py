"""Parity and latency of every backend (PyTorch, torch.compile, ONNX Runtime, OpenVINO, TensorRT) behind one
runner interface; ``python -m benchmarks`` writes the report."""

__all__ = ['BACKENDS', 'PRECISIONS', 'exit_code', 'run_benchmark']


def __getattr__(name):
    # Imported on first use: export.trt imports benchmarks.runner and should not pay for torch and the harness.
    if name in __all__:
        from . import harness
        return getattr(harness, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
