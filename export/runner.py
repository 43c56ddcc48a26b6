"""The one runner interface every backend implements (after Polygraphy's runners).

A runner is made from an artifact (a module, an ONNX file, an engine), a precision and a device. ``infer`` takes a
float32 NCHW batch and returns float32 logits, for parity. For timing, ``prepare`` places a batch where the runner
computes (device memory, an OpenVINO tensor, ...) once, and ``run`` performs one synchronous inference on it:
only ``run`` is inside the timed region. Inputs and outputs are bound by name (``input``, ``logits``), so a graph
with more outputs (``--softmax``'s ``probabilities``) runs too.

Each runner class answers ``available(precision, device)`` once, with the reason when it cannot run here, and says
what it is made from (``artifact``), so that the benchmark's registry needs no code that names a backend. The
interface lives beside the exporter (which needs ``BackendUnavailable``), below the benchmark that runs it.
"""
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from export.contract import GRAPH_PRECISIONS, weight_bytes


class BackendUnavailable(RuntimeError):
    """This backend/precision cannot run here; the message is the reason shown in the report's ``skipped``."""


class Runner:
    backend: str = ''
    artifact: str = 'module'  # what a runner is made from: 'module' (torch), 'onnx' (a graph), 'engine' (TensorRT)
    precision: str = 'fp32'
    device: str = 'cpu'

    @classmethod
    def devices(cls, precision: str, gpu: bool) -> Tuple[str, ...]:
        """Where a benchmark runs this backend at ``precision`` (``gpu``: a CUDA GPU is present)."""
        return ('cpu',)

    @classmethod
    def graph_for(cls, precision: str) -> Optional[str]:
        """The exported graph (fp32, fp16, int8) this backend runs for ``precision``; None if it runs no graph."""
        return None

    @classmethod
    def available(cls, precision: str, device: str) -> Optional[str]:
        """Why this backend cannot run ``precision`` on ``device`` here, or None; cheap, nothing is built."""
        return None

    @classmethod
    def require(cls, precision: str, device: str) -> None:
        """BackendUnavailable with the reason, for constructors."""
        reason = cls.available(precision, device)
        if reason:
            raise BackendUnavailable(reason)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW batch in, float32 logits (N, num_classes) out."""
        return self.fetch(self.run(self.prepare(x)))

    def prepare(self, x: np.ndarray) -> Any:
        """Place a float32 NCHW batch where this runner computes; done once, outside the timed region."""
        raise NotImplementedError

    def run(self, prepared: Any) -> Any:
        """One inference on prepared inputs, finished (synchronised) when it returns; the timed region."""
        raise NotImplementedError

    def fetch(self, output: Any) -> np.ndarray:
        """What ``run`` returned, as float32 logits on the host."""
        return np.asarray(output, dtype=np.float32)

    def weight_bytes(self) -> Optional[int]:
        """Bytes of weights one inference reads at least once, at the precision this runner computes in (what
        bounds a batch-1 inference by memory bandwidth); None when unknown."""
        return None

    def layer_times(self, x: np.ndarray, runs: int = 10) -> Optional[List[Dict[str, Any]]]:
        """Time per layer (ms per inference, largest first: name, type, kernel) from the runtime's own profiler
        on the batch ``x``, outside any timed region; None for a runtime without one."""
        return None

    def close(self) -> None:
        """Release sessions, engines and device memory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.backend}, {self.precision}, {self.device})'


NO_BF16_GRAPH = 'not supported: export.onnx writes no bf16 graph (bf16 is an execution precision: PyTorch, OpenVINO)'


class GraphRunner(Runner):
    """A runner made from an exported graph (or an engine built from one): the graph holds the precision."""
    artifact = 'onnx'
    graph = None  # the graph file, for its weight bytes

    def weight_bytes(self) -> Optional[int]:
        return weight_bytes(self.graph) if self.graph else None

    @classmethod
    def graph_for(cls, precision: str) -> Optional[str]:
        return precision if precision in GRAPH_PRECISIONS else None

    @classmethod
    def available(cls, precision: str, device: str) -> Optional[str]:
        return None if cls.graph_for(precision) else NO_BF16_GRAPH


def cuda_index(device: str) -> int:
    """0 for 'cpu' and 'cuda', N for 'cuda:N'; one line for anything else."""
    if ':' not in str(device):
        return 0
    try:
        return int(str(device).split(':', 1)[1])
    except ValueError:
        raise ValueError(f'not a device: {device!r} (cpu, cuda or cuda:N)') from None
