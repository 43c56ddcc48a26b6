"""ONNX Runtime behind the one runner interface, on one of the exported graphs, CPU or CUDA execution provider."""
import json
import tempfile
from typing import Optional, Tuple

import numpy as np

from export.contract import INPUT_NAME, OUTPUT_NAME
from export.runner import GraphRunner, cuda_index
from export.int8.uint8 import cpu_graph

from benchmarks.measure.environment import cpu_threads

PROVIDERS = {'cpu': 'CPUExecutionProvider', 'cuda': 'CUDAExecutionProvider'}


class OnnxRuntimeRunner(GraphRunner):
    """fp32/fp16/int8 live in the graph. Every output is bound by name once (``run_with_iobinding`` on pre-made
    OrtValues), so a timed run copies nothing; one session with export.ort_session's options, ``threads`` intra-op
    threads. On the CPU the int8 graph runs with uint8 activations (``export.int8.uint8``), on ONNX Runtime's u8s8
    convolution and GEMM kernels."""
    backend = 'onnxruntime'

    def __init__(self, onnx_path, precision: str = 'fp32', device: str = 'cpu', threads: Optional[int] = None):
        self.require(precision, device)
        from export.ort_session import ort_session  # imports onnxruntime, which available() found installed
        self.precision, self.device, self.graph = precision, str(device), onnx_path
        self.ort_device = 'cuda' if self.device.startswith('cuda') else 'cpu'
        self.device_id = cuda_index(self.device)  # cuda:N runs on GPU N (the CUDA EP's device_id)
        self.threads = threads or cpu_threads()
        provider = PROVIDERS[self.ort_device]
        # fp32 on the CUDA EP computes in fp32: its use_tf32 defaults to on (~1e-3 error, beyond the fp32 gate)
        cuda_options = {'device_id': self.device_id, **({'use_tf32': 0} if precision == 'fp32' else {})}
        providers = [(provider, cuda_options)] if self.ort_device == 'cuda' else [provider]
        self.source = cpu_graph(onnx_path, precision) if self.ort_device == 'cpu' else onnx_path  # int8: on uint8
        self.session = ort_session(self.source, self.threads, providers)
        self.providers = providers
        self.outputs = self.session.get_outputs()
        if OUTPUT_NAME not in [o.name for o in self.outputs]:
            raise ValueError(f'{onnx_path} has no output {OUTPUT_NAME!r} (outputs: {[o.name for o in self.outputs]})')

    @classmethod
    def devices(cls, precision: str, gpu: bool) -> Tuple[str, ...]:
        return ('cpu', 'cuda') if gpu else ('cpu',)

    @classmethod
    def available(cls, precision: str, device: str) -> Optional[str]:
        reason = super().available(precision, device)
        if reason:
            return reason
        try:
            import onnxruntime as ort
        except ImportError:
            return 'onnxruntime is not installed'
        provider = PROVIDERS['cuda' if str(device).startswith('cuda') else 'cpu']
        if provider not in ort.get_available_providers():
            return f'{provider} not available in this onnxruntime build (the CUDA EP needs onnxruntime-gpu and a GPU)'
        return None

    def prepare(self, x: np.ndarray):
        import onnxruntime as ort
        x = np.ascontiguousarray(x, dtype=np.float32)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(x, self.ort_device, self.device_id))
        for output in self.outputs:
            classes = output.shape[-1]
            if isinstance(classes, int):  # pre-allocate the outputs too, so a run allocates nothing
                value = ort.OrtValue.ortvalue_from_shape_and_type((len(x), classes), np.float32, self.ort_device,
                                                                  self.device_id)
                binding.bind_ortvalue_output(output.name, value)
            else:
                binding.bind_output(output.name, self.ort_device, self.device_id)
        return binding, x  # x stays referenced: the CPU OrtValue shares its memory

    def run(self, prepared):
        self.session.run_with_iobinding(prepared[0])
        return prepared[0]

    def fetch(self, binding) -> np.ndarray:
        index = [o.name for o in self.outputs].index(OUTPUT_NAME)
        return np.asarray(binding.copy_outputs_to_cpu()[index], dtype=np.float32)

    def layer_times(self, x: np.ndarray, runs: int = 10):
        """ONNX Runtime's own profiler (``enable_profiling``) on a second session: node kernel times per run."""
        from export.ort_session import ort_session
        with tempfile.TemporaryDirectory(prefix='alexnet-zoo-ort-profile-') as folder:
            session = ort_session(self.source, self.threads, self.providers, profile_prefix=f'{folder}/profile')
            feed = {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}
            for _ in range(runs):
                session.run([OUTPUT_NAME], feed)
            with open(session.end_profiling()) as f:
                events = json.load(f)
        layers: dict = {}
        for e in events:
            if e.get('cat') == 'Node' and str(e.get('name', '')).endswith('_kernel_time'):
                name = e['name'][:-len('_kernel_time')]
                args = e.get('args') or {}
                entry = layers.setdefault(name, {'name': name, 'type': args.get('op_name', ''),
                                                 'kernel': args.get('provider', ''), 'ms': 0.0})
                entry['ms'] += e.get('dur', 0) / 1e3 / runs
        return sorted(layers.values(), key=lambda layer: -layer['ms'])

    def close(self) -> None:
        self.session = self.source = None
