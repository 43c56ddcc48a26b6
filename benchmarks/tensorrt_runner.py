"""TensorRT behind the one runner interface: an engine from ``python -m export.trt`` on a CUDA device.

Device memory comes from torch CUDA tensors (no pycuda): their addresses are bound to the engine's input and
output tensors, and the engine runs on its own CUDA stream with ``execute_async_v3``.
"""
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

from export.trt import load_engine, require_gpu

from .runner import BackendUnavailable, Runner


class TensorRTRunner(Runner):
    backend = 'tensorrt'

    def __init__(self, engine_path: Union[str, Path], device: str = 'cuda'):
        if not str(device).startswith('cuda'):
            raise BackendUnavailable(f'TensorRT runs on CUDA devices only, not {device!r}')
        require_gpu()  # BackendUnavailable before anything else when there is no GPU to run on
        trt, self.engine, self.record = load_engine(engine_path)  # checks the build record first
        self.precision = self.record['precision']
        self.device = 'cuda'
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f'TensorRT could not create an execution context for {Path(engine_path).name}')

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f'expected an engine with one input and one output, got {inputs} and {outputs}')
        self.input_name, self.output_name = inputs[0], outputs[0]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                  trt.DataType.BF16: torch.bfloat16}
        try:
            self.input_dtype = dtypes[self.engine.get_tensor_dtype(self.input_name)]
            self.output_dtype = dtypes[self.engine.get_tensor_dtype(self.output_name)]
        except KeyError as e:
            raise ValueError(f'unsupported engine I/O type {e.args[0]}') from None
        self.batch_range = (self.record['input']['min'][0], self.record['input']['max'][0])
        self.stream = torch.cuda.Stream()  # TensorRT warns that the default stream costs extra synchronisations

    def prepare(self, x: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """Copy the batch to the GPU and allocate the logits, both on the engine's stream."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        low, high = self.batch_range
        if not low <= x.shape[0] <= high:
            raise ValueError(f'batch of {x.shape[0]} is outside the engine\'s profile ({low} to {high}); '
                             f'rebuild with other --min-batch/--max-batch')
        with torch.cuda.stream(self.stream):
            inputs = torch.from_numpy(x).to('cuda', dtype=self.input_dtype, non_blocking=False).contiguous()
            self.context.set_input_shape(self.input_name, tuple(inputs.shape))
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            outputs = torch.empty(out_shape, dtype=self.output_dtype, device='cuda')
        self.stream.synchronize()
        return inputs, outputs

    def run(self, prepared):
        """Bind this batch's shape and addresses, execute on the stream, and wait for it."""
        inputs, outputs = prepared
        self.context.set_input_shape(self.input_name, tuple(inputs.shape))
        self.context.set_tensor_address(self.input_name, inputs.data_ptr())
        self.context.set_tensor_address(self.output_name, outputs.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError('TensorRT execute_async_v3 failed (see its messages above)')
        self.stream.synchronize()
        return outputs

    def fetch(self, output) -> np.ndarray:
        return output.float().cpu().numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None
