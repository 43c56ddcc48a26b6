"""The CPU-capable backends behind the one runner interface (``benchmarks.runner.Runner``).

Each runner does its set-up (conversion, compilation, sessions, input binding) in ``__init__``/``prepare`` so
that ``run`` is one synchronous inference and nothing else: no input copies, no output dictionaries. A
backend/precision/device that cannot run here raises ``BackendUnavailable`` with the reason for the report.
"""
import copy
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .runner import BackendUnavailable, Runner

PathLike = Union[str, Path]


def cpu_threads() -> int:
    """Cores this process may use: every runner gets the same number of compute threads (one stream)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_has_amx() -> bool:
    """AMX tiles: what makes bf16 fast on a CPU (without them PyTorch emulates bf16, slower than fp32)."""
    return bool(torch.cpu._is_amx_tile_supported())


class TorchRunner(Runner):
    """PyTorch eager or ``torch.compile`` (Inductor, frozen weights), fp32; bf16 on AMX CPUs; fp16 on CUDA.

    Reduced precision converts a copy of the model once (weights and activations), never autocast per call:
    autocast re-casts all 62 M weights on every call.
    """

    def __init__(self, model: torch.nn.Module, precision: str = 'fp32', device: str = 'cpu', compile: bool = False):
        self.backend = 'torch-compile' if compile else 'torch'
        self.precision, self.device = precision, str(device)
        self.dtype = torch_dtype(precision, self.device)
        if self.device.startswith('cuda') and not torch.cuda.is_available():
            raise BackendUnavailable('no CUDA GPU (or no CUDA-enabled PyTorch) here')
        model = copy.deepcopy(model).eval()
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.compiled_shapes = set() if compile else None
        if compile:
            # dynamic=False: one static graph per batch size; the benchmark runs a few fixed sizes, each at its
            # fastest. Compilation happens in prepare(), outside the timed region.
            self.model = torch.compile(self.model, dynamic=False)

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        prepared = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, self.dtype)
        if self.compiled_shapes is not None and prepared.shape not in self.compiled_shapes:
            # Inductor's freezing (weights constant-folded and pre-packed for oneDNN: 30 -> 21 ms at batch 1 on
            # CPU) is read when a graph compiles, and torch.compile(options=...) does not reach it: set it for
            # this first call only, so the process's global config is left as it was.
            import torch._inductor.config as inductor_config
            with inductor_config.patch(freezing=True), torch.inference_mode():
                self.model(prepared)
            self.compiled_shapes.add(prepared.shape)
        return prepared

    @torch.inference_mode()
    def run(self, prepared: torch.Tensor) -> torch.Tensor:
        out = self.model(prepared)
        if self.device.startswith('cuda'):
            torch.cuda.synchronize()
        return out

    def fetch(self, output: torch.Tensor) -> np.ndarray:
        return output.float().cpu().numpy()

    def close(self) -> None:
        self.model = None


def torch_dtype(precision: str, device: str) -> torch.dtype:
    """The dtype a PyTorch runner computes in, or BackendUnavailable saying why not here."""
    cuda = str(device).startswith('cuda')
    if precision == 'fp32':
        return torch.float32
    if precision == 'bf16':
        if not cuda and not cpu_has_amx():
            raise BackendUnavailable('bf16 needs a CPU with AMX; this one has none (PyTorch would emulate bf16, '
                                     'slower than fp32)')
        return torch.bfloat16
    if precision == 'fp16':
        if not cuda:
            raise BackendUnavailable('PyTorch fp16 runs on CUDA only; no GPU here' if not torch.cuda.is_available()
                                     else 'PyTorch fp16 runs on CUDA only (see the cuda row)')
        return torch.float16
    if precision == 'int8':
        raise BackendUnavailable('not supported: int8 is the ONNX Q/DQ graph, run by ONNX Runtime, OpenVINO and '
                                 'TensorRT')
    raise ValueError(f'unknown precision: {precision}')


def onnxruntime_reason(device: str) -> Optional[str]:
    """Why ONNX Runtime cannot run on ``device`` here, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return 'onnxruntime is not installed'
    provider = 'CUDAExecutionProvider' if str(device).startswith('cuda') else 'CPUExecutionProvider'
    if provider not in ort.get_available_providers():
        return f'{provider} not available in this onnxruntime build (the CUDA EP needs onnxruntime-gpu and a GPU)'
    return None


def openvino_reason(precision: str) -> Optional[str]:
    """Why OpenVINO cannot run ``precision`` on this CPU, or None."""
    try:
        import openvino as ov
    except ImportError:
        return 'openvino is not installed'
    if precision == 'bf16' and 'BF16' not in ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'):
        return 'bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); OpenVINO would silently run f32 here'
    return None


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on one of the exported graphs (fp32/fp16/int8 live in the graph), CPU or CUDA EP.

    Inputs and outputs are bound once (``run_with_iobinding`` on pre-made OrtValues), so a timed run copies
    nothing. One session, sequential execution, ``threads`` intra-op threads.
    """
    backend = 'onnxruntime'

    def __init__(self, onnx_path: PathLike, precision: str = 'fp32', device: str = 'cpu',
                 threads: Optional[int] = None):
        self.precision, self.device = precision, str(device)
        reason = onnxruntime_reason(self.device)
        if reason:
            raise BackendUnavailable(reason)
        import onnxruntime as ort
        provider = 'CUDAExecutionProvider' if self.device.startswith('cuda') else 'CPUExecutionProvider'
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the Q/DQ graph makes ORT chatty about fusions
        self.session = ort.InferenceSession(str(onnx_path), options, providers=[provider])
        self.input_name = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0]
        self.ort_device = 'cuda' if self.device.startswith('cuda') else 'cpu'

    def prepare(self, x: np.ndarray):
        import onnxruntime as ort
        x = np.ascontiguousarray(x, dtype=np.float32)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, self.ort_device))
        classes = self.output.shape[-1]
        if isinstance(classes, int):  # pre-allocate the logits too, so a run allocates nothing
            out = ort.OrtValue.ortvalue_from_shape_and_type((len(x), classes), np.float32, self.ort_device)
            binding.bind_ortvalue_output(self.output.name, out)
        else:
            binding.bind_output(self.output.name, self.ort_device)
        return binding, x  # x stays referenced: the CPU OrtValue shares its memory

    def run(self, prepared):
        self.session.run_with_iobinding(prepared[0])
        return prepared[0]

    def fetch(self, binding) -> np.ndarray:
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def close(self) -> None:
        self.session = None


class OpenVINORunner(Runner):
    """OpenVINO on the CPU, reading the ONNX graph directly.

    fp32: the fp32 graph with ``INFERENCE_PRECISION_HINT`` f32 (else OpenVINO may pick bf16 on AMX CPUs);
    bf16: the fp32 graph with the hint bf16 (only on CPUs with native bf16, else OpenVINO silently runs f32);
    fp16 and int8: their graphs (int8 from the Q/DQ nodes), hint f32 for whatever stays in float.
    The model is compiled once per batch size with a static shape (what ``benchmark_app -shape`` does), latency
    hint (one stream), and the input tensor shares the prepared array's memory.
    """
    backend = 'openvino'

    def __init__(self, onnx_path: PathLike, precision: str = 'fp32', device: str = 'cpu',
                 threads: Optional[int] = None):
        self.precision, self.device = precision, str(device)
        if self.device != 'cpu':
            raise BackendUnavailable(f'the benchmark runs OpenVINO on the CPU only, not {device!r}')
        reason = openvino_reason(precision)
        if reason:
            raise BackendUnavailable(reason)
        import openvino as ov
        self.core = ov.Core()
        self.model = self.core.read_model(str(onnx_path))
        self.config = {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_NUM_THREADS': threads or cpu_threads(),
                       'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32'}
        self.compiled: Dict[Tuple[int, ...], Any] = {}

    def _compiled_for(self, shape: Tuple[int, ...]):
        if shape not in self.compiled:
            model = self.model.clone()
            model.reshape({model.inputs[0].any_name: list(shape)})
            self.compiled[shape] = self.core.compile_model(model, 'CPU', self.config)
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
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    def close(self) -> None:
        self.compiled.clear()
        self.model = None
