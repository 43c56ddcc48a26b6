"""The backends, one table: a runner class per backend, each answering where it runs, which graph it needs and
whether it can run here. Adding a backend is a runner class and an entry below (docs/architecture.md lists the few
other places that name a backend, and why)."""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Type, Union

from alexnet_zoo.cli import MAX_BATCH, parse_list, parse_sizes  # noqa: F401  (benchmarks.backends.registry.parse_list)
from export.runner import Runner

from benchmarks.backends.onnxruntime_runner import OnnxRuntimeRunner
from benchmarks.backends.openvino_runner import OpenVINORunner
from benchmarks.backends.tensorrt_runner import TensorRTRunner
from benchmarks.backends.torch_runner import TorchCompileRunner, TorchRunner

REGISTRY: Dict[str, Type[Runner]] = {cls.backend: cls for cls in (
    TorchRunner, TorchCompileRunner, OnnxRuntimeRunner, OpenVINORunner, TensorRTRunner)}
BACKENDS = tuple(REGISTRY)
PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')  # execution precisions; bf16 runs the fp32 graph or module
BASELINE = ('torch', 'fp32', 'cpu')  # speed-ups are against PyTorch eager fp32 on the CPU, same batch size


class Spec(NamedTuple):
    """One combination a run covers: a result row, or a skipped entry with the reason."""
    backend: str
    precision: str
    device: str

    @property
    def runner(self) -> Type[Runner]:
        return REGISTRY[self.backend]

    @property
    def graph(self) -> Optional[str]:
        """The exported graph this row needs (None for a row that runs the PyTorch module)."""
        return None if self.runner.artifact == 'module' else self.runner.graph_for(self.precision)

    def unavailable(self) -> Optional[str]:
        """Why this combination cannot run here (cheap: before anything is exported), or None."""
        return self.runner.available(self.precision, self.device)


def plan(backends: Sequence[str], precisions: Sequence[str], gpu: bool) -> List[Spec]:
    """Every (backend, precision, device) the run covers, in the order given."""
    return [Spec(backend, precision, device) for backend in backends for precision in precisions
            for device in REGISTRY[backend].devices(precision, gpu)]


def parse_batch_sizes(text: Union[str, Sequence[int]]) -> Tuple[int, ...]:
    return parse_sizes(text, 'batch size', MAX_BATCH)
