"""PyTorch eager and ``torch.compile`` behind the one runner interface.

fp32 on the CPU; bf16 on CPUs with AMX (without it PyTorch emulates bf16, slower than fp32); fp16 on CUDA; int8 on
CPUs with VNNI or AMX for ``torch.compile`` only: the PT2E-quantized module (``export.int8.torch_int8``) that the
benchmark makes from the model and the calibration crops, compiled by Inductor. Reduced precision converts a copy
of the model once (weights and activations), never autocast per call: autocast re-casts all 62 M weights on every
call.
"""
import contextlib
import copy
import operator
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from export.runner import BackendUnavailable, Runner
from export.int8.torch_int8 import quiet, torch_int8_unavailable

# PyTorch's profiler (Kineto) prints start/stop markers and, without a GPU, 'ERROR: gpuGetDeviceCount failed' into a
# run that succeeded. It reads its log level once, at its first use in the process: a level above all of its
# messages, set before then, keeps it quiet, unless the user set one.
os.environ.setdefault('KINETO_LOG_LEVEL', '6')

from benchmarks.measure.environment import cpu_has_amx

NO_CUDA = 'no CUDA GPU (or no CUDA-enabled PyTorch) here'


class TorchRunner(Runner):
    """PyTorch eager on the model itself."""
    backend = 'torch'
    compile = False

    def __init__(self, model: torch.nn.Module, precision: str = 'fp32', device: str = 'cpu',
                 threads: Optional[int] = None):
        self.require(precision, device)
        self.precision, self.device = precision, str(device)
        self.dtype = torch.float32 if precision == 'int8' else torch_dtype(precision, self.device)
        # the int8 module is torch.export's graph (no .eval(); its inputs stay fp32): used as it comes
        self.model = model if precision == 'int8' else copy.deepcopy(model).eval().to(device=self.device, dtype=self.dtype)
        # fp32 on a GPU computes in fp32: cuDNN convolutions (and matmuls, where enabled) would use TF32
        self.math = exact_fp32 if self.device.startswith('cuda') and self.dtype == torch.float32 else contextlib.nullcontext
        self.compiled_shapes = set() if self.compile else None
        if self.compile:
            # dynamic=False: one static graph per batch size; the benchmark runs a few fixed sizes, each at its
            # fastest. Compilation happens in prepare(), outside the timed region.
            self.model = torch.compile(self.model, dynamic=False)

    @classmethod
    def devices(cls, precision: str, gpu: bool) -> Tuple[str, ...]:
        """fp16 on CUDA only, int8 on the CPU only; fp32 and bf16 on the CPU, and on CUDA too where a GPU is."""
        if precision == 'fp16':
            return ('cuda',)
        if precision == 'int8':
            return ('cpu',)
        return ('cpu', 'cuda') if gpu else ('cpu',)

    @classmethod
    def available(cls, precision: str, device: str) -> Optional[str]:
        if precision == 'int8':
            return torch_int8_unavailable(device) if cls.compile else EAGER_INT8
        try:
            torch_dtype(precision, device)
        except BackendUnavailable as e:
            return str(e)
        if str(device).startswith('cuda') and not torch.cuda.is_available():
            return NO_CUDA
        return None

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        prepared = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, self.dtype)
        if self.compiled_shapes is not None and prepared.shape not in self.compiled_shapes:
            # Inductor's freezing (weights constant-folded and pre-packed for oneDNN: 30 -> 21 ms at batch 1 on
            # CPU) is read when a graph compiles, and torch.compile(options=...) does not reach it: set it for
            # this first call only, so the process's global config is left as it was.
            import torch._inductor.config as inductor_config
            with inductor_config.patch(freezing=True), torch.inference_mode(), self.math(), quiet():
                self.model(prepared)
            self.compiled_shapes.add(prepared.shape)
        return prepared

    @torch.inference_mode()
    def run(self, prepared: torch.Tensor) -> torch.Tensor:
        with self.math():
            out = self.model(prepared)
            if self.device.startswith('cuda'):
                torch.cuda.synchronize()
        return out

    def fetch(self, output: torch.Tensor) -> np.ndarray:
        return output.float().cpu().numpy()

    def weight_bytes(self) -> int:
        """The parameters at the size they are held; for the int8 module, the tensors its graph reads (its int8
        weights are buffers, and the float originals it no longer uses stay among its parameters)."""
        graph = getattr(self.model, 'graph', None)
        if graph is None:
            return sum(p.numel() * p.element_size() for p in self.model.parameters())
        tensors = [operator.attrgetter(n.target)(self.model) for n in graph.nodes if n.op == 'get_attr']
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    def layer_times(self, x: np.ndarray, runs: int = 10) -> Optional[List[Dict[str, Any]]]:
        """PyTorch's profiler on the prepared batch: CPU time per operator (oneDNN's convolutions and linears,
        Inductor's fused kernels), largest first."""
        prepared = self.prepare(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for _ in range(runs):
                self.run(prepared)
        layers = [{'name': event.key, 'type': 'operator', 'kernel': _kernel(event.key),
                   'ms': event.self_cpu_time_total / 1e3 / runs}
                  for event in profiler.key_averages() if event.self_cpu_time_total > 0]
        return sorted(layers, key=lambda layer: -layer['ms'])

    def close(self) -> None:
        self.model = None


class TorchCompileRunner(TorchRunner):
    """``torch.compile`` (Inductor, frozen weights) on the model."""
    backend = 'torch-compile'
    compile = True


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for cuDNN and CUDA matmuls inside the block, the process's settings restored after: an fp32 row
    on an Ampere-or-newer GPU otherwise carries ~1e-3 relative error, ten times the fp32 gate."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


EAGER_INT8 = ('not supported: PyTorch\'s int8 is the torch-compile int8 row (PT2E + Inductor); eager mode would run '
              'its Q/DQ as simulated int8 in fp32')


def _kernel(name: str) -> str:
    """Who runs an operator: oneDNN (its int8 and fp32 primitives), Inductor's generated C++, or ATen."""
    if name.startswith('onednn::') or 'mkldnn' in name:
        return 'oneDNN'
    if name.startswith(('cpp_fused', 'graph_')) or 'Inductor' in name or 'CompiledFunction' in name:
        return 'Inductor'
    return 'ATen'


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
        raise BackendUnavailable(EAGER_INT8)
    raise ValueError(f'unknown precision: {precision}')
