"""OpenVINO behind the one runner interface, on the CPU, reading the exported ONNX graph directly."""
import functools
from typing import Any, Dict, Optional, Tuple

import numpy as np

from export.contract import OUTPUT_NAME, weight_bytes
from export.runner import GraphRunner
from export.int8.uint8 import cpu_graph

from benchmarks.measure.environment import cpu_threads


@functools.lru_cache(maxsize=None)
def openvino_core():
    """The process's one ``ov.Core`` (OpenVINO's own advice: one Core per application). Its CPU plugin points the
    compiling thread's signal stack (sigaltstack) at a stack of its own and puts the previous one back when the Core
    is destroyed: two Cores destroyed in the order they were made leave the thread on the freed stack of the first,
    and the next Python signal handler that runs there (Ctrl-C's, or a SIGCHLD handler) kills the process with
    SIGSEGV. One Core, never destroyed, never hands a freed stack back."""
    import openvino as ov
    return ov.Core()


class OpenVINORunner(GraphRunner):
    """fp32: the fp32 graph with ``INFERENCE_PRECISION_HINT`` f32 (else OpenVINO may pick bf16 on AMX CPUs);
    bf16: the fp32 graph with the hint bf16 (only on CPUs with native bf16, else OpenVINO silently runs f32);
    fp16 and int8: their graphs (int8 from the Q/DQ nodes, its activations on uint8 as ``export.int8.uint8`` writes
    them), hint f32 for whatever stays in float.
    The model is compiled once per batch size with a static shape (what ``benchmark_app -shape`` does), latency
    hint (one stream), and the input tensor shares the prepared array's memory.
    """
    backend = 'openvino'

    def __init__(self, onnx_path, precision: str = 'fp32', device: str = 'cpu', threads: Optional[int] = None):
        self.require(precision, device)
        self.precision, self.device, self.graph = precision, str(device), onnx_path
        self.core = openvino_core()
        source = cpu_graph(onnx_path, precision)  # int8: on uint8 activations, as ONNX Runtime runs it
        self.model = self.core.read_model(source if isinstance(source, bytes) else str(source))
        self.config = {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_NUM_THREADS': threads or cpu_threads(),
                       'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32'}
        self.compiled: Dict[Tuple[int, ...], Any] = {}

    @classmethod
    def graph_for(cls, precision: str) -> Optional[str]:
        return 'fp32' if precision == 'bf16' else super().graph_for(precision)

    @classmethod
    def available(cls, precision: str, device: str) -> Optional[str]:
        if device != 'cpu':
            return f'the benchmark runs OpenVINO on the CPU only, not {device!r}'
        try:
            import openvino  # noqa: F401
        except ImportError:
            return 'openvino is not installed'
        if precision == 'bf16' and 'BF16' not in openvino_core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'):
            return 'bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); OpenVINO would silently run f32 here'
        return super().available(precision, device)

    def _compile(self, shape: Tuple[int, ...], **extra):
        model = self.model.clone()
        model.reshape({model.inputs[0].any_name: list(shape)})
        return self.core.compile_model(model, 'CPU', {**self.config, **extra})

    def _compiled_for(self, shape: Tuple[int, ...]):
        if shape not in self.compiled:
            self.compiled[shape] = self._compile(shape)
        return self.compiled[shape]

    def prepare(self, x: np.ndarray):
        import openvino as ov
        x = np.ascontiguousarray(x, dtype=np.float32)
        request = self._compiled_for(x.shape).create_infer_request()
        request.set_input_tensor(ov.Tensor(x, shared_memory=True))
        return request, x  # x stays referenced: the tensor shares its memory

    def run(self, prepared):
        # start_async + wait is the synchronous inference without infer()'s Python dictionary of output copies.
        request = prepared[0]
        request.start_async()
        request.wait()
        return request

    def fetch(self, request) -> np.ndarray:
        return np.array(request.get_tensor(OUTPUT_NAME).data, dtype=np.float32)

    def weight_bytes(self) -> Optional[int]:
        """bf16 runs the fp32 graph's float weights as 2 bytes each (OpenVINO converts them when compiling)."""
        return weight_bytes(self.graph, float_bytes=2 if self.precision == 'bf16' else None)

    def layer_times(self, x: np.ndarray, runs: int = 10):
        """OpenVINO's performance counters (``PERF_COUNT``) on a second compilation of the same shape."""
        import openvino as ov
        request = self._compile(x.shape, PERF_COUNT=True).create_infer_request()
        request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        layers: Dict[str, Dict[str, Any]] = {}
        for _ in range(runs):
            request.infer()
            for info in request.profiling_info:
                entry = layers.setdefault(info.node_name, {'name': info.node_name, 'type': info.node_type,
                                                           'kernel': info.exec_type, 'ms': 0.0})
                entry['ms'] += info.real_time.total_seconds() * 1e3 / runs
        return sorted((layer for layer in layers.values() if layer['ms'] > 0), key=lambda layer: -layer['ms'])

    def close(self) -> None:
        self.compiled.clear()
        self.model = self.core = None  # the shared Core itself lives on (openvino_core)
