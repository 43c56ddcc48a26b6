"""ONNX Runtime sessions, opened one way: the options every session of a graph uses, at export and in the benchmark.

All graph optimizations, sequential execution with ``threads`` intra-op threads (ONNX Runtime's own default, one
per core, when not given), and errors only in the log (a Q/DQ graph makes ONNX Runtime chatty about fusions and
buffer reuse, which is not the user's business). A figure export.onnx measures and a benchmark row then describe
the same session.
"""
from typing import Optional, Sequence, Union

import onnxruntime as ort

from alexnet_zoo.files import PathLike

CPU = ('CPUExecutionProvider',)


def session_options(threads: Optional[int] = None) -> ort.SessionOptions:
    """The options of every session (also for ONNX Runtime's tools that open their own, such as qdq_loss_debug)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return options


def ort_session(graph: Union[bytes, PathLike], threads: Optional[int] = None, providers: Sequence = CPU,
                profile_prefix: Optional[str] = None) -> ort.InferenceSession:
    """A session of a graph (serialized, or a file) on ``providers``; ``profile_prefix`` turns ONNX Runtime's
    profiler on, writing there."""
    options = session_options(threads)
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options, providers=list(providers))
