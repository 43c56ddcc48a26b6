"""TensorRT at run time: is there a GPU, is TensorRT installed, and loading an engine after checking its record.

TensorRT on a machine without a GPU fails inside CUDA initialisation and then raises a TypeError, so the absence
of a GPU is detected first, through torch (imported only when asked).
"""
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Tuple

from alexnet_zoo.files import PathLike

from export.runner import BackendUnavailable
from export.trt.record import EngineRecordError, check_record, read_record

if TYPE_CHECKING:  # TensorRT's published stubs: the tests type-check the calls below against them
    import tensorrt

NO_GPU = 'TensorRT needs an NVIDIA GPU; none found'


class TensorRTUnavailable(BackendUnavailable):
    """No NVIDIA GPU, no CUDA-enabled torch, or no TensorRT install; the message says which."""


def require_gpu(hint: str = '') -> Tuple[str, str]:
    """Name and compute capability of the current CUDA device, found without touching TensorRT."""
    import torch
    if torch.version.cuda is None:
        raise TensorRTUnavailable(f'TensorRT needs CUDA; this PyTorch build has no CUDA support{hint}')
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(NO_GPU + hint)
    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f'{major}.{minor}'


def import_tensorrt(hint: str = ''):
    try:
        module = importlib.import_module('tensorrt')
    except ImportError:
        module = None
    if not hasattr(module, 'Builder'):  # absent, or only its type stubs (a namespace package of .pyi files)
        raise TensorRTUnavailable(f"TensorRT is not installed (pip install 'alexnet-zoo[trt]'){hint}")
    return module


_LOGGERS = {}


def trt_logger(trt):
    """One logger for every builder and runtime: TensorRT treats the logger as a process-wide singleton."""
    if trt not in _LOGGERS:
        _LOGGERS[trt] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt]


def load_engine(plan: PathLike):
    """Deserialize ``plan`` after checking its build record; returns (tensorrt module, ICudaEngine, record)."""
    record = read_record(plan)
    gpu_name, capability = require_gpu()
    trt = import_tensorrt()
    check_record(record, trt.__version__, gpu_name, capability)
    runtime: 'tensorrt.Runtime' = trt.Runtime(trt_logger(trt))
    engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
    if engine is None:  # TensorRT returns None rather than raising; its logger printed the reason
        raise EngineRecordError(f'TensorRT could not deserialize {Path(plan).name} although its record matches '
                                f'this machine; rebuild it with python -m export.trt')
    return trt, engine, record
