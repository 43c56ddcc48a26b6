"""ONNX Runtime behind the one runner interface, on one of the exported graphs, CPU or CUDA execution provider."""
import json
import tempfile
from typing import Optional, Tuple

import numpy as np

from export.contract import INPUT_NAME, OUTPUT_NAME
from export.runner import GraphRunner, cuda_index

from .environment import cpu_threads

PROVIDERS = {'cpu': 'CPUExecutionProvider', 'cuda': 'CUDAExecutionProvider'}


class OnnxRuntimeRunner(GraphRunner):
    """fp32/fp16/int8 live in the graph. Every output is bound by name once (``run_with_iobinding`` on pre-made
    OrtValues), so a timed run copies nothing; one session with export.ort_session's options, ``threads`` intra-op
    threads. On the CPU the int8 graph's activations are fed to ONNX Runtime as uint8 (``uint8_activations``): the
    same numbers, on its u8s8 convolution and GEMM kernels."""
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
        if precision == 'int8' and self.ort_device == 'cpu':
            import onnx
            self.source = uint8_activations(onnx.load(str(onnx_path))).SerializeToString()
        else:
            self.source = onnx_path
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


def uint8_activations(model):
    """The int8 Q/DQ graph with its activations quantized as uint8, for ONNX Runtime on the CPU.

    A tensor that cannot be negative (after a ReLU or a ReLU6, and through max-pooling and reshapes) gets zero point
    0 and the range the int8 grid kept, [0, 127 x scale] (a ReLU6's clipped at 6), in 255 steps instead of 127: the
    bit that symmetric int8 spends on negative values it never sees (what NNCF's and ONNX Runtime's own unsigned
    activations do). The Quantize's range then clips where the ReLU or ReLU6 did, so Q -> DQ -> ReLU -> Q folds into
    the last Quantize (``_fold_activations``) and ONNX Runtime runs each convolution and its activation as one int8
    convolution (with a Clip left between them, the convolution ran in float, 3x slower than fp32 on
    EfficientNet-Lite0). Any other activation gets zero point 128: the int8 grid shifted, the same numbers. The
    graph on disk stays symmetric int8, as TensorRT requires; the row's parity is measured on what this runs.
    """
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}

    def constant(name: str):
        return numpy_helper.to_array(initializers[name]) if name in initializers else None

    def int8_zero(name: str) -> bool:
        init = initializers.get(name)
        return (init is not None and init.data_type == TensorProto.INT8 and not init.dims and
                int(numpy_helper.to_array(init)) == 0)
    tops = _fold_activations(graph, int8_zero, constant)
    nonnegative, quantized, scales = set(), {}, {}
    for node in graph.node:  # topological order
        if node.op_type == 'Relu' or node.output[0] in tops or (
                node.op_type in NONNEGATIVE_THROUGH and node.input and node.input[0] in nonnegative):
            nonnegative.update(node.output)
        if node.op_type != 'QuantizeLinear' or len(node.input) != 3 or not int8_zero(node.input[2]):
            continue
        out, scale = node.output[0], constant(node.input[1])
        node.input[2] = quantized[out] = ZERO_POINTS[out in nonnegative]
        if out in nonnegative and scale is not None and not scale.ndim:
            top = tops.get(out) or 127 * float(scale)
            node.input[1] = scales[out] = f'{out}_uint8_scale'
            step = min(top, 127 * float(scale)) / 255
            graph.initializer.append(helper.make_tensor(scales[out], TensorProto.FLOAT, [], [step]))
    for node in graph.node:
        if node.op_type == 'DequantizeLinear' and node.input[0] in quantized:
            node.input[2] = quantized[node.input[0]]
            node.input[1] = scales.get(node.input[0], node.input[1])
    for nonneg, name in ZERO_POINTS.items():
        if name in quantized.values():
            graph.initializer.append(helper.make_tensor(name, TensorProto.UINT8, [], [0 if nonneg else 128]))
    kept = [v for v in graph.value_info if v.name not in quantized]  # their declared type was int8
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return model


def _fold_activations(graph, int8_zero, constant) -> dict:
    """Quantize → Dequantize → ReLU (or Clip from 0) → Quantize becomes the last Quantize alone, which
    ``uint8_activations`` puts on uint8 with zero point 0: the clipping at 0 is the ReLU (what ONNX Runtime's own
    quantizer does for asymmetric activations), one rounding instead of two. {the last Quantize's output: the top
    of its range, a Clip's max (None after a ReLU)}."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dropped, tops = [], {}
    for act in [n for n in graph.node if n.op_type in ('Relu', 'Clip')]:
        dq, after = producer.get(act.input[0]), consumers.get(act.output[0], [])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == 'DequantizeLinear' else None
        if (q is None or q.op_type != 'QuantizeLinear' or len(after) != 1 or after[0].op_type != 'QuantizeLinear'
                or not int8_zero(after[0].input[2]) or len(consumers[q.output[0]]) != 1 or
                len(consumers[dq.output[0]]) != 1):
            continue
        top = None
        if act.op_type == 'Clip':
            low, high = [constant(name) if name else None for name in (list(act.input[1:3]) + ['', ''])[:2]]
            if low is None or float(low) != 0:
                continue  # only a ReLU6-like clip from 0, with constant bounds
            top = None if high is None else float(high)
        after[0].input[0] = q.input[0]
        dropped += [q, dq, act]
        tops[after[0].output[0]] = top
    for node in dropped:
        graph.node.remove(node)
    return tops


NONNEGATIVE_THROUGH = ('MaxPool', 'Reshape', 'Flatten', 'QuantizeLinear', 'DequantizeLinear')
ZERO_POINTS = {True: 'nonnegative_zero_point_uint8', False: 'activation_zero_point_uint8'}
