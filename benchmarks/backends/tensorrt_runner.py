"""TensorRT behind the one runner interface: an engine from ``export.trt`` on a CUDA device.

Device memory comes from torch CUDA tensors (no pycuda): their addresses are bound to the engine's input and
output tensors by name, and the engine runs on its own CUDA stream with ``execute_async_v3``.
"""
import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import numpy as np
import torch

from export.contract import OUTPUT_NAME
from export.runner import GraphRunner, cuda_index
from export.trt import runtime

if TYPE_CHECKING:  # TensorRT's published stubs: the tests type-check the calls below against them
    import tensorrt


class TensorRTRunner(GraphRunner):
    backend = 'tensorrt'
    artifact = 'engine'

    def __init__(self, engine_path, precision: Optional[str] = None, device: str = 'cuda',
                 threads: Optional[int] = None):
        """precision: None takes the engine's (from its build record); threads: unused (the GPU computes);
        device: 'cuda' or 'cuda:N' for the current device (the one the engine is deserialized on)."""
        if not str(device).startswith('cuda'):
            raise runtime.TensorRTUnavailable(f'TensorRT runs on CUDA devices only, not {device!r}')
        self.require(precision or 'fp32', device)  # no GPU or no TensorRT: BackendUnavailable before anything else
        current_device(device)
        trt, engine, self.record = runtime.load_engine(engine_path)  # checks the build record first
        self.engine: 'tensorrt.ICudaEngine' = engine
        if precision and precision != self.record['precision']:
            raise ValueError(f'{Path(engine_path).name} is a {self.record["precision"]} engine, not {precision}')
        self.precision, self.device = self.record['precision'], 'cuda'
        self.context: 'tensorrt.IExecutionContext' = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f'TensorRT could not create an execution context for {Path(engine_path).name}')

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or OUTPUT_NAME not in self.outputs:
            raise ValueError(f'expected an engine with one input and an output {OUTPUT_NAME!r}, got {inputs} and '
                             f'{self.outputs}')
        self.input_name = inputs[0]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                  trt.DataType.BF16: torch.bfloat16}
        try:
            self.dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in [self.input_name, *self.outputs]}
        except KeyError as e:
            raise ValueError(f'unsupported engine I/O type {e.args[0]}') from None
        self.batch_range = (self.record['input']['min'][0], self.record['input']['max'][0])
        self.stream = torch.cuda.Stream()  # TensorRT warns that the default stream costs extra synchronisations
        self.bound: Optional[Tuple[int, ...]] = None  # data pointers bound to the context now

    @classmethod
    def devices(cls, precision: str, gpu: bool) -> Tuple[str, ...]:
        return ('cuda',)

    @classmethod
    def available(cls, precision: str, device: str) -> Optional[str]:
        try:
            runtime.require_gpu()
            runtime.import_tensorrt()
        except runtime.TensorRTUnavailable as e:
            return str(e)
        return super().available(precision, device)

    def prepare(self, x: np.ndarray) -> Dict[str, torch.Tensor]:
        """Copy the batch to the GPU and allocate every output, on the engine's stream."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        low, high = self.batch_range
        if not low <= x.shape[0] <= high:
            raise ValueError(f'batch of {x.shape[0]} is outside the engine\'s profile ({low} to {high}); '
                             f'rebuild with other --min-batch/--max-batch')
        with torch.cuda.stream(self.stream):
            tensors = {self.input_name: torch.from_numpy(x).to('cuda', self.dtypes[self.input_name]).contiguous()}
            self._check(self.context.set_input_shape(self.input_name, tuple(x.shape)),
                        f'set_input_shape({self.input_name!r}, {tuple(x.shape)})')
            for name in self.outputs:
                dims = self.context.get_tensor_shape(name)
                shape = tuple(dims[i] for i in range(len(dims)))
                if any(d < 0 for d in shape):  # TensorRT could not infer it from the input shape
                    raise RuntimeError(f'TensorRT left output {name!r} with unknown dimensions {shape} for an input of '
                                       f'shape {tuple(x.shape)}')
                tensors[name] = torch.empty(shape, dtype=self.dtypes[name], device='cuda')
        self.stream.synchronize()
        self.bound = None  # the shape changed with this batch: bind its addresses on the next run
        return tensors

    def run(self, prepared: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Execute on the stream and wait; shapes and addresses are bound only when the prepared batch changes."""
        pointers = tuple(t.data_ptr() for t in prepared.values())
        if pointers != self.bound:
            shape = tuple(prepared[self.input_name].shape)
            self._check(self.context.set_input_shape(self.input_name, shape), f'set_input_shape({self.input_name!r}, {shape})')
            for name, tensor in prepared.items():
                self._check(self.context.set_tensor_address(name, tensor.data_ptr()),
                            f'set_tensor_address({name!r}) for a tensor of shape {tuple(tensor.shape)}')
            self.bound = pointers
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError('TensorRT execute_async_v3 failed (see its messages above)')
        self.stream.synchronize()
        return prepared[OUTPUT_NAME]

    def fetch(self, output: torch.Tensor) -> np.ndarray:
        return output.float().cpu().numpy()

    def weight_bytes(self) -> Optional[int]:
        """The engine's size: its weights at the precisions TensorRT chose, and a little more."""
        return self.record['engine']['bytes']

    def layer_datatypes(self) -> Counter:
        """How many layer inputs and outputs the engine runs in each data type (``int8``, ``half``, ``float``...),
        from TensorRT's engine inspector (the engine is built with detailed profiling verbosity); call after
        ``prepare`` so that the shapes, and with them the formats, are known. A silent fp32 fallback shows here."""
        import tensorrt as trt
        inspector: 'tensorrt.EngineInspector' = self.engine.create_engine_inspector()
        for attribute in ('execution_context', 'context'):  # 11 renamed the property
            if hasattr(inspector, attribute):
                setattr(inspector, attribute, self.context)
                break
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        return Counter(datatype_of(str(tensor.get('Format/Datatype', '')))
                       for layer in info.get('Layers', []) if isinstance(layer, dict)
                       for tensor in layer.get('Inputs', []) + layer.get('Outputs', []))

    @staticmethod
    def _check(ok: bool, call: str) -> None:
        if not ok:
            raise RuntimeError(f'TensorRT {call} failed (see its messages above)')

    def close(self) -> None:
        self.context = None  # type: ignore[assignment]  # closed: any later use fails at once
        self.engine = None  # type: ignore[assignment]


DATATYPES = (('bf16', r'\bBF(?:loat)?16\b'), ('half', r'\b(?:FP16|Half)\b'), ('int8', r'\bInt8\b'),
             ('fp8', r'\bFP8\b'), ('float', r'\b(?:FP32|Float)\b'), ('int32', r'\bInt32\b'))


def datatype_of(format_text: str) -> str:
    """The data type named in one of the inspector's format strings ("Row major linear FP32", "Channel major FP16
    format where channel % 8 == 0", "Thirty-two wide channel vectorized row major Int8 format", "Float")."""
    for name, pattern in DATATYPES:
        if re.search(pattern, format_text, re.IGNORECASE):
            return name
    return 'other'


def current_device(device: str) -> int:
    """The CUDA device index ``device`` names, which must be the current device: an engine runs where it was
    deserialized, and this runner does not switch devices. One line otherwise."""
    index, asked = torch.cuda.current_device(), cuda_index(device)
    if ':' in str(device) and asked != index:
        raise ValueError(f'TensorRTRunner runs on the current CUDA device (cuda:{index}), not {device}: '
                         f'select it with CUDA_VISIBLE_DEVICES={asked} or torch.cuda.set_device({asked})')
    return index
