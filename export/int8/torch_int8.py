"""PyTorch's own int8 for CPUs, what a PyTorch user tries before exporting anything: PT2E static quantization with
torchao's x86 Inductor quantizer, calibrated on the same crops as the ONNX int8 graph, for ``torch.compile`` to
lower onto oneDNN's int8 kernels (VNNI, AMX).

``torch.export`` with a dynamic batch, ``prepare_pt2e`` (observers), the calibration crops, ``convert_pt2e`` (Q/DQ
around each quantized operator): the result runs in eager mode as simulated int8 (fp32 arithmetic, slow) and only
becomes int8 arithmetic once Inductor compiles it with ``freezing`` (weights constant-folded and pre-packed).
"""
import contextlib
import importlib.util
import logging
import warnings
from typing import Iterator, Optional

import numpy as np
import torch

CALIBRATION_BATCH = 16


def torch_int8_unavailable(device: str = 'cpu') -> Optional[str]:
    """Why PyTorch's int8 row cannot run here, or None."""
    if str(device) != 'cpu':
        return 'PyTorch int8 (PT2E, x86 Inductor quantizer) is a CPU path; on CUDA, int8 is TensorRT\'s'
    if importlib.util.find_spec('torchao') is None:
        return 'torchao is not installed (pip install torchao): it holds PyTorch\'s PT2E int8 quantizer'
    if not (torch.backends.cpu.get_cpu_capability() in ('AVX512', 'AMX') and
            (torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported())):
        return 'no VNNI or AMX on this CPU: oneDNN has no fast int8 kernels for Inductor to use'
    return None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torchao's and Inductor's notices about their own internals (deprecations, a tensor copy in the int8
    lowering), which a user can do nothing about, kept off the command's output."""
    pytree = logging.getLogger('torch.utils._pytree')
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            yield
    finally:
        pytree.setLevel(level)


def quantize_pt2e(model: torch.nn.Module, crops: np.ndarray) -> torch.nn.Module:
    """``model`` quantized to int8 by PT2E (symmetric per-channel weights, calibrated activations), ready for
    ``torch.compile``; ``model`` itself is left as it is."""
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    crops = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))
    batch = torch.export.Dim.AUTO
    with torch.no_grad(), quiet():
        exported = torch.export.export(model.eval(), (crops[:2],), dynamic_shapes=({0: batch},)).module()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for start in range(0, len(crops), CALIBRATION_BATCH):
            prepared(crops[start:start + CALIBRATION_BATCH])
        return convert_pt2e(prepared)
